"""A monitoring report as one self-contained HTML file (plots embedded as base64 PNG, no scripts)."""

from __future__ import annotations

import base64
import html
import io
import math

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;margin:2em auto;max-width:1100px;color:#222}
h1{font-size:1.5em} h2{font-size:1.15em;margin-top:1.8em;border-bottom:1px solid #ddd}
table{border-collapse:collapse;font-size:.85em} td,th{padding:3px 8px;border-bottom:1px solid #eee;text-align:left}
th{background:#f6f6f6} .yes{color:#C44E52;font-weight:600} .no{color:#55A868}
.box{padding:.8em 1em;border-radius:6px;margin:1em 0} .retrain{background:#fbeaea} .keep{background:#eaf6ec}
.warn{background:#fdf6e3} img{max-width:100%} small{color:#666}
"""


def _png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90)
    return f'<img alt="plot" src="data:image/png;base64,{base64.b64encode(buf.getvalue()).decode()}">'


def _fmt(v) -> str:
    if v is None:
        return ""
    if isinstance(v, bool):
        return f'<span class="{"yes" if v else "no"}">{"yes" if v else "no"}</span>'
    if isinstance(v, float):
        return "n/a" if not math.isfinite(v) else f"{v:.4g}"
    return html.escape(str(v))


def _table(rows: list[dict]) -> str:
    if not rows:
        return "<p><small>none</small></p>"
    head = "".join(f"<th>{html.escape(str(k))}</th>" for k in rows[0])
    body = "".join("<tr>" + "".join(f"<td>{_fmt(v)}</td>" for v in r.values()) + "</tr>" for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def render_html(report) -> str:
    """The whole report: verdict and recommendation first, then columns, plots, scores, performance, latency."""
    rec = report.recommendation
    parts = [
        (f"<h1>churnkit monitoring report</h1><p>Reference {report.reference_rows} rows, current "
         f"{report.current_rows} rows; {len(report.drifted_columns)} of {len(report.columns)} columns drifted "
         f"({report.share_of_drifted_columns:.0%}, drift_share {report.drift_share:g}): dataset drift "
         f"{_fmt(report.dataset_drift)}.</p>"),
        f'<div class="box {"retrain" if rec["retrain"] else "keep"}"><b>Recommendation: '
        f'{"retrain" if rec["retrain"] else "keep the model"}</b><ul>'
        + "".join(f"<li>{html.escape(r)}</li>" for r in rec["reasons"]) + "</ul></div>",
    ]
    if rec["warnings"]:
        parts.append('<div class="box warn"><b>Warnings</b><ul>'
                     + "".join(f"<li>{html.escape(w)}</li>" for w in rec["warnings"]) + "</ul></div>")
    rows = [{"column": n, "kind": c["kind"], "method": c["method"], "statistic": c["statistic"], "p value": c.get("p_value"),
             "threshold": c["threshold"], "drift": c["drift"], "PSI": c["psi"], "PSI level": c["psi_level"],
             "new categories": ", ".join(c["new_categories"]), "vanished": ", ".join(c["vanished_categories"])}
            for n, c in sorted(report.columns.items(), key=lambda kv: (not kv[1]["drift"], -_num(kv[1]["psi"])))]
    parts += ["<h2>Columns</h2>", _table(rows), "<h2>PSI per column</h2>", _png(report.plot_psi()),
              "<h2>Distributions, reference vs current</h2>", _png(report.plot_histograms())]
    if report.prediction_drift:
        p = report.prediction_drift
        parts += ["<h2>Prediction drift</h2>", _table([{k: p[k] for k in ("source", "method", "statistic", "threshold",
                                                                         "drift", "psi", "reference_mean", "current_mean")}]),
                  _png(report.plot_scores())]
    perf = report.performance
    if perf:
        parts.append("<h2>Performance on labelled rows</h2>")
        if perf.get("metrics"):
            base = perf.get("baseline") or {}
            parts.append(_table([{"metric": k, "current": v, "holdout": base.get(k)} for k, v in perf["metrics"].items()]))
            parts.append(_png(report.plot_auc()))
        else:
            parts.append(f"<p>{html.escape(str(perf.get('reason')))}</p>")
    if report.latency:
        lat = report.latency
        parts += ["<h2>Latency</h2>", f"<p><b>{html.escape(lat['likely_cause'])}</b>: {html.escape(lat['explanation'])}</p>",
                  _table([{"part": k, "mean ms": v, "share": (lat["shares"] or {}).get(k)}
                          for k, v in lat["breakdown_ms"].items()])]
    parts.append(f"<p><small>Thresholds: {html.escape(str(report.thresholds))}. Computed in {report.seconds:.2f} s.</small></p>")
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>churnkit monitoring</title><style>{CSS}</style>"
            f"</head><body>{''.join(parts)}</body></html>")


def _num(v) -> float:
    return v if v is not None and math.isfinite(v) else -1.0
