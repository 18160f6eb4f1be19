"""The monitoring report: per-column drift, prediction drift, delayed-label performance, a recommendation.

:func:`build_monitor_report` compares a reference table (usually the training month) with a current
window (a table, or the serving data capture) and assembles the report ``churnkit monitor --json``
prints: per-column drift with the statistic suited to the column and the sample size (see
:mod:`churnkit.monitor.drift` for the defaults), the share of drifted columns, score drift when a model
is given, ROC AUC and friends once labels arrive, and a retrain recommendation with its reasons.
Pure: frames and an already loaded model in, a :class:`MonitorReport` out; reading files and the
registry sits above it (:mod:`churnkit.monitor.inputs`, :mod:`churnkit.monitor.files`).
"""

from __future__ import annotations

import math
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from churnkit.data import NEGATIVE, POSITIVE, Schema, infer_schema, map_label, prepare_features, to_numeric
from churnkit.evaluate import compute_metrics
from churnkit.exceptions import DataError, LabelError, MonitorError
from churnkit.monitor.drift import DriftThresholds, compare_categorical, compare_numeric
from churnkit.serve.capture import CAPTURE_COLUMNS, SCORE_COLUMN

DEFAULT_DRIFT_SHARE = 0.5
DEFAULT_MAX_AUC_DROP = 0.03
#: Rows of the reference used to infer column roles when no model schema is given.
SCHEMA_SAMPLE_ROWS = 2_000
#: Below this many rows (both sides together) columns are compared one after another.
PARALLEL_MIN_ROWS = 200_000


# --------------------------------------------------------------------------------------------------
# The report
# --------------------------------------------------------------------------------------------------

@dataclass
class MonitorReport:
    """What changed between reference and current data, and what to do about it.

    ``to_dict()`` is the machine-readable form (``churnkit monitor --json``); the plot methods and
    ``write_html`` are for people. ``histograms`` and the score arrays feed the plots only.
    """

    dataset_drift: bool
    drift_share: float
    share_of_drifted_columns: float
    reference_rows: int
    current_rows: int
    columns: dict[str, dict]
    prediction_drift: dict | None
    performance: dict | None
    recommendation: dict
    missing_columns: list[str] = field(default_factory=list)
    thresholds: dict = field(default_factory=dict)
    latency: dict | None = None
    seconds: float = 0.0
    histograms: dict[str, dict] = field(default_factory=dict, repr=False)
    reference_scores: np.ndarray | None = field(default=None, repr=False)
    current_scores: np.ndarray | None = field(default=None, repr=False)

    @property
    def drifted_columns(self) -> list[str]:
        return [name for name, col in self.columns.items() if col["drift"]]

    def to_dict(self) -> dict:
        """The JSON shape of DESIGN §7b (plus extra keys); NaN becomes null."""
        out = {
            "dataset_drift": self.dataset_drift,
            "drift_share": self.drift_share,
            "reference_rows": self.reference_rows,
            "current_rows": self.current_rows,
            "columns": self.columns,
            "prediction_drift": self.prediction_drift,
            "performance": self.performance,
            "recommendation": self.recommendation,
            "share_of_drifted_columns": self.share_of_drifted_columns,
            "drifted_columns": self.drifted_columns,
            "missing_columns": self.missing_columns,
            "latency": self.latency,
            "thresholds": self.thresholds,
            "seconds": round(self.seconds, 3),
        }
        return _json_safe(out)

    def table(self) -> pd.DataFrame:
        """One row per column, drifted first then by PSI (for the notebook and the text output)."""
        rows = [
            {"column": name, "kind": c["kind"], "method": c["method"], "statistic": c["statistic"],
             "p_value": c.get("p_value"), "threshold": c["threshold"], "drift": c["drift"], "psi": c["psi"],
             "psi_level": c["psi_level"], "new_categories": ", ".join(c["new_categories"])}
            for name, c in self.columns.items()
        ]
        frame = pd.DataFrame(rows).set_index("column")
        return frame.sort_values(["drift", "psi"], ascending=False, kind="stable")

    def summary(self) -> str:
        """A few lines a person reads first: drift verdict, scores, performance, recommendation."""
        n = len(self.columns)
        lines = [
            (f"dataset drift: {'YES' if self.dataset_drift else 'no'} — {len(self.drifted_columns)} of {n} columns "
             f"drifted ({self.share_of_drifted_columns:.0%}; drift_share {self.drift_share}); reference "
             f"{self.reference_rows} rows, current {self.current_rows} rows"),
        ]
        if self.drifted_columns:
            lines.append("drifted: " + ", ".join(self.drifted_columns))
        pd_ = self.prediction_drift
        if pd_:
            lines.append(f"prediction drift: {'YES' if pd_['drift'] else 'no'} ({pd_['method']} {pd_['statistic']:.4f}, "
                         f"PSI {pd_['psi']:.4f}, mean score {pd_['reference_mean']:.3f} -> {pd_['current_mean']:.3f})")
        perf = self.performance
        if perf and perf.get("metrics"):
            m, base = perf["metrics"], perf.get("baseline") or {}
            vs = f" vs holdout {base['roc_auc']:.4f}" if base.get("roc_auc") is not None else ""
            lines.append(f"performance on {perf['labelled_rows']} labelled rows: ROC AUC {m['roc_auc']:.4f}{vs}, "
                         f"PR AUC {m['pr_auc']:.4f}, lift@10% {m['lift_top_decile']:.2f}, "
                         f"calibration error {m['calibration_error']:.4f}")
        elif perf:
            lines.append(f"performance: not computed ({perf.get('reason')})")
        if self.latency:
            lat = self.latency
            lines.append(f"latency: likely cause {lat['likely_cause']!r} — {lat['explanation']}")
        rec = self.recommendation
        lines.append("recommendation: " + ("RETRAIN" if rec["retrain"] else "keep the model"))
        lines += [f"  - {r}" for r in rec["reasons"]] + [f"  ! {w}" for w in rec["warnings"]]
        return "\n".join(lines)

    # Plots (matplotlib Figures; imported lazily so the report itself needs no plotting stack)
    def plot_psi(self):
        from churnkit.monitor.plots import plot_psi

        return plot_psi(self)

    def plot_histograms(self, columns: list[str] | None = None, max_columns: int = 9):
        """Reference vs current distributions; the drifted columns (or ``columns``) by default."""
        from churnkit.monitor.plots import plot_histograms

        return plot_histograms(self, columns, max_columns)

    def plot_scores(self):
        from churnkit.monitor.plots import plot_scores

        return plot_scores(self)

    def plot_auc(self):
        from churnkit.monitor.plots import plot_auc

        return plot_auc(self)

    def write_html(self, path: str | Path) -> Path:
        """Write a self-contained HTML report (plots embedded as PNG)."""
        from churnkit.monitor.html import render_html

        out = Path(path)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(render_html(self), encoding="utf-8")
        return out


def _json_safe(obj):
    if isinstance(obj, dict):
        return {str(k): _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    if isinstance(obj, (bool, np.bool_)):
        return bool(obj)
    if isinstance(obj, (int, np.integer)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        return float(obj) if math.isfinite(obj) else None
    return obj


# --------------------------------------------------------------------------------------------------
# Assembly (pure: frames and an already loaded model in, report out)
# --------------------------------------------------------------------------------------------------

def build_monitor_report(
    reference: pd.DataFrame,
    current: pd.DataFrame,
    *,
    model=None,
    labels: pd.DataFrame | None = None,
    label_column: str = "churn",
    id_columns: list[str] | tuple = (),
    id_column: str = "",
    baseline: dict | None = None,
    months: dict[str, pd.DataFrame] | None = None,
    drift_share: float = DEFAULT_DRIFT_SHARE,
    psi_warn: float = 0.1,
    psi_act: float = 0.25,
    max_auc_drop: float = DEFAULT_MAX_AUC_DROP,
    small_sample: int = 1000,
    latency: dict | None = None,
    workers: int | None = None,
) -> MonitorReport:
    """Compare ``current`` with ``reference`` and recommend whether to retrain.

    Parameters
    ----------
    reference, current : DataFrame
        Raw tables (as read from CSV/Parquet or the data capture); typed here like the model's input.
    model : LoadedModel, optional
        Its schema decides the compared columns and kinds; its scores give prediction drift and, with
        labels, performance. Without it the roles are inferred from the reference.
    labels : DataFrame, optional
        Labels that arrived later, joined to ``current`` on ``id_column`` (or the one shared column);
        without it a ``label_column`` in ``current`` is used when present.
    baseline : dict, optional
        The model's holdout metrics (``roc_auc`` ...) that performance is compared with.
    months : dict, optional
        Earlier labelled months ``{name: frame}`` for the AUC-over-months view.
    drift_share : float
        Dataset drift when at least this share of the compared columns drifted.
    psi_warn, psi_act : float
        PSI levels: warn, and act (a column or the scores at ``psi_act`` is a reason to retrain).
    max_auc_drop : float
        Retrain when ROC AUC falls more than this below the baseline's.
    small_sample : int
        Up to this many rows a side, KS / chi-squared tests decide; above, Wasserstein / Jensen-Shannon.
    workers : int, optional
        Threads comparing columns at once on large tables (numpy sorts release the GIL); default
        ``min(4, cpu count)``, 1 for strictly sequential work.

    Raises
    ------
    MonitorError
        No column in common, or an empty table.
    """
    t0 = time.perf_counter()
    th = DriftThresholds(small_sample=int(small_sample), psi_warn=float(psi_warn), psi_act=float(psi_act))
    for name, frame in (("reference", reference), ("current", current)):
        if frame is None or len(frame) == 0:
            raise MonitorError(f"the {name} data has no rows; pass a table (or capture folder) with at least one row")
    schema = _feature_schema(reference, model, label_column, id_columns, id_column)
    present = [c for c in schema.names if c in current.columns and c in reference.columns and c not in id_columns]
    missing = [c for c in schema.names if c not in present and c not in id_columns]
    if not present:
        raise MonitorError(
            f"reference and current data have no feature column in common (reference features {schema.names[:20]!r}, "
            f"current columns {list(current.columns)[:20]!r}); pass tables with the same columns"
        )
    results = compare_columns(reference, current, [schema.column(n) for n in present], th, workers)
    columns = {name: res for name, (res, _) in zip(present, results)}
    histograms = {name: hist for name, (_, hist) in zip(present, results)}
    drifted = sum(c["drift"] for c in columns.values())
    share = drifted / len(columns)
    ref_scores, cur_scores, score_source = _scores(reference, current, model)
    prediction = None
    if ref_scores is not None and cur_scores is not None:
        res, hist = compare_numeric(ref_scores, cur_scores, th)
        prediction = {k: res[k] for k in ("method", "statistic", "p_value", "threshold", "rule", "drift", "psi", "psi_level")}
        prediction |= {"source": score_source, "reference_mean": float(np.nanmean(ref_scores)),
                       "current_mean": float(np.nanmean(cur_scores)), "model": _model_ref(model)}
        if score_source == "capture" and "model_version" in current.columns:
            prediction["served_versions"] = sorted(current["model_version"].dropna().astype(str).unique().tolist())
        histograms["__scores__"] = hist
    performance = _performance(current, cur_scores, labels, label_column, id_column, baseline, months, model,
                               max_auc_drop)
    report = MonitorReport(
        dataset_drift=bool(share >= drift_share), drift_share=float(drift_share), share_of_drifted_columns=share,
        reference_rows=len(reference), current_rows=len(current), columns=columns, prediction_drift=prediction,
        performance=performance, recommendation={}, missing_columns=missing,
        thresholds=th.to_dict() | {"drift_share": float(drift_share), "max_auc_drop": float(max_auc_drop)},
        latency=latency, histograms=histograms, reference_scores=ref_scores, current_scores=cur_scores,
    )
    report.recommendation = recommend(report, psi_act=th.psi_act)
    report.seconds = time.perf_counter() - t0
    return report


def compare_columns(reference: pd.DataFrame, current: pd.DataFrame, specs, th: DriftThresholds,
                    workers: int | None = None) -> list[tuple[dict, dict]]:
    """``(result, histogram)`` per column spec, in order; large tables use a few threads."""
    def one(spec):
        if spec.kind == "numeric":
            return compare_numeric(numeric_values(reference[spec.name]), numeric_values(current[spec.name]), th)
        return compare_categorical(reference[spec.name], current[spec.name], th)

    workers = min(4, os.cpu_count() or 1) if workers is None else max(1, int(workers))
    if workers == 1 or len(specs) < 2 or len(reference) + len(current) < PARALLEL_MIN_ROWS:
        return [one(spec) for spec in specs]
    with ThreadPoolExecutor(max_workers=min(workers, len(specs)), thread_name_prefix="churnkit-drift") as pool:
        return list(pool.map(one, specs))


def recommend(report: MonitorReport, psi_act: float = 0.25) -> dict:
    """``{"retrain": bool, "reasons": [...], "warnings": [...]}`` from a report's findings.

    Reasons to retrain: dataset drift (the drifted share reached ``drift_share``), a column's or the
    scores' PSI at or above ``psi_act``, ROC AUC more than ``max_auc_drop`` below the baseline.
    Warnings do not trigger retraining: PSI between warn and act, new categories, missing columns,
    labels that could not be used.
    """
    reasons, warnings = [], []
    cols = report.columns
    if report.dataset_drift:
        reasons.append(f"dataset drift: {len(report.drifted_columns)} of {len(cols)} columns drifted "
                       f"({report.share_of_drifted_columns:.0%} >= drift_share {report.drift_share:g}): "
                       + ", ".join(report.drifted_columns))
    act = {n: c["psi"] for n, c in cols.items() if c["psi_level"] == "act"}
    if act:
        reasons.append(f"PSI at or above psi_act {psi_act:g} in " + ", ".join(f"{n} ({v:.2f})" for n, v in _by_value(act)))
    pred = report.prediction_drift
    if pred and pred["psi_level"] == "act":
        reasons.append(f"prediction drift: churn score PSI {pred['psi']:.3f} >= psi_act {psi_act:g} "
                       f"(mean score {pred['reference_mean']:.3f} -> {pred['current_mean']:.3f})")
    elif pred and pred["drift"]:
        warnings.append(f"churn scores drifted ({pred['method']} {pred['statistic']:.3f}) but PSI {pred['psi']:.3f} "
                        f"is below psi_act")
    served = (pred or {}).get("served_versions")
    scorer = (pred or {}).get("model") or {}
    if served and scorer and served != [scorer["version"]]:
        warnings.append(f"the capture holds scores of model version(s) {served!r}; reference scores come from "
                        f"v{scorer['version']}: compare like with like or pass that version's --model")
    perf = report.performance
    if perf and perf.get("degraded"):
        reasons.append(f"ROC AUC {perf['metrics']['roc_auc']:.4f} on {perf['labelled_rows']} labelled rows is "
                       f"{perf['auc_drop']:.4f} below the holdout {perf['baseline']['roc_auc']:.4f} "
                       f"(max_auc_drop {perf['max_auc_drop']:g})")
    elif perf and perf.get("reason"):
        warnings.append(f"performance not computed: {perf['reason']}")
    warn = {n: c["psi"] for n, c in cols.items() if c["psi_level"] == "warn"}
    if warn:
        warnings.append("PSI between warn and act in " + ", ".join(f"{n} ({v:.2f})" for n, v in _by_value(warn)))
    if report.drifted_columns and not report.dataset_drift:
        warnings.append(f"{len(report.drifted_columns)} column(s) drifted, below drift_share: "
                        + ", ".join(report.drifted_columns))
    for n, c in cols.items():
        if c["new_categories"]:
            warnings.append(f"{n}: new categories the model never saw: {c['new_categories'][:10]!r}")
    if report.missing_columns:
        warnings.append(f"current data lacks column(s) {report.missing_columns!r}")
    return {"retrain": bool(reasons), "reasons": reasons, "warnings": warnings}


def _by_value(d: dict) -> list[tuple[str, float]]:
    return sorted(d.items(), key=lambda kv: -kv[1])


def numeric_values(col: pd.Series) -> np.ndarray:
    """A column as floats (NaN = missing) without a Python call per row.

    Native numbers convert directly (float32 stays float32); text is factorized once and only the
    distinct values go through :func:`churnkit.data.to_numeric` (blanks and stray text become NaN).
    """
    if pd.api.types.is_float_dtype(col.dtype) and not isinstance(col.dtype, pd.api.extensions.ExtensionDtype):
        return col.to_numpy()
    if pd.api.types.is_numeric_dtype(col.dtype) or pd.api.types.is_bool_dtype(col.dtype):
        return col.to_numpy(dtype=np.float64, na_value=np.nan)
    codes, uniques = pd.factorize(col, use_na_sentinel=True)
    values = to_numeric(pd.Series(np.asarray(uniques, dtype=object), dtype=object)).to_numpy()
    return np.append(values, np.nan)[codes]  # code -1 (missing) picks the appended NaN


def _feature_schema(reference, model, label_column, id_columns, id_column) -> Schema:
    if model is not None:
        return model.schema
    drop = [c for c in (*id_columns, id_column, *CAPTURE_COLUMNS) if c and c in reference.columns]
    if len(reference) > SCHEMA_SAMPLE_ROWS:
        try:  # roles from a sample: typing a million rows as text just to find the numbers costs seconds
            return infer_schema(reference.sample(SCHEMA_SAMPLE_ROWS, random_state=0), label_column, drop)
        except DataError:
            pass  # e.g. a mostly blank column looked empty in the sample: decide on every row
    try:
        return infer_schema(reference, label_column, drop)
    except DataError as exc:
        raise MonitorError(f"cannot tell the reference data's feature columns: {exc}") from exc


def _model_ref(model) -> dict | None:
    return None if model is None else {"name": model.name, "version": str(model.version), "uri": model.uri}


def _scores(reference, current, model) -> tuple[np.ndarray | None, np.ndarray | None, str | None]:
    """Reference and current churn scores: served scores (a capture) first, else the model's, else None.

    Prediction drift needs both; performance needs the current ones only, so a capture with late labels
    is judged even without a model.
    """
    def side(frame):
        if SCORE_COLUMN in frame.columns:
            return numeric_values(frame[SCORE_COLUMN])
        return None if model is None else score_frame(model, frame)

    cur = side(current)
    source = None if cur is None else ("capture" if SCORE_COLUMN in current.columns else "model")
    return side(reference), cur, source


def score_frame(model, frame: pd.DataFrame) -> np.ndarray:
    """Churn probability per row of a raw frame with the model's input columns."""
    return model.pipeline.predict_proba(prepare_features(frame, model.schema))[:, 1]


# --------------------------------------------------------------------------------------------------
# Performance once labels arrive
# --------------------------------------------------------------------------------------------------

def calibration_summary(y, p, bins: int = 10) -> dict[str, float]:
    """Expected calibration error over score deciles, mean score and observed churn rate."""
    y = np.asarray(y, dtype=float)
    p = np.asarray(p, dtype=float)
    order = np.argsort(p, kind="stable")
    groups = np.array_split(order, min(bins, len(p)))
    ece = sum(len(g) * abs(p[g].mean() - y[g].mean()) for g in groups if len(g)) / len(p)
    return {"calibration_error": float(ece), "mean_predicted": float(p.mean()), "observed_rate": float(y.mean())}


def labelled_metrics(y, p) -> dict[str, float]:
    """ROC AUC, PR AUC, lift at the top decile, log loss, Brier and calibration on one labelled sample."""
    return compute_metrics(y, p) | calibration_summary(y, p)


def _labels_for(current, labels, label_column, id_column) -> tuple[pd.Series | None, str]:
    """The label per current row (NaN where none arrived) and where it came from."""
    if labels is None:
        if label_column in current.columns:
            return current[label_column], f"column {label_column!r}"
        return None, ""
    if label_column not in labels.columns:
        raise LabelError(f"labels table has no column {label_column!r}; its columns are {list(labels.columns)!r}; "
                         "pass --label-column with the label's name")
    keys = [id_column] if id_column else [c for c in labels.columns if c != label_column and c in current.columns]
    if len(keys) != 1 or keys[0] not in current.columns or keys[0] not in labels.columns:
        raise MonitorError(
            f"cannot join labels to current data: shared columns {keys!r} (labels columns {list(labels.columns)!r}); "
            "pass id_column (--id-column) naming the customer id present in both"
        )
    key = keys[0]
    lookup = labels.assign(_k=labels[key].astype(str).str.strip()).drop_duplicates("_k", keep="last")
    mapped = current[key].astype(str).str.strip().map(lookup.set_index("_k")[label_column])
    return mapped, f"labels joined on {key!r}"


def _performance(current, cur_scores, labels, label_column, id_column, baseline, months, model, max_auc_drop):
    raw, source = _labels_for(current, labels, label_column, id_column)
    if raw is None:
        return None
    known = raw.notna().to_numpy() & ~raw.astype(str).str.strip().isin(["", "nan", "None"]).to_numpy()
    out = {"labelled_rows": int(known.sum()), "label_source": source, "max_auc_drop": float(max_auc_drop),
           "baseline": baseline or None, "metrics": None, "auc_drop": None, "degraded": False, "reason": None}
    if cur_scores is None:
        return out | {"reason": "labels found but no scores: pass a model (--model) or a capture with churn_probability"}
    unscored = known & ~np.isfinite(cur_scores)  # e.g. capture rows whose churn_probability is blank
    known &= ~unscored
    out |= {"labelled_rows": int(known.sum()), "unscored_labelled_rows": int(unscored.sum())}
    text = raw[known].astype(str).str.strip().str.lower()
    if text.isin(POSITIVE).nunique() < 2 and text.isin(POSITIVE | NEGATIVE).all():
        return out | {"reason": f"{out['labelled_rows']} labelled and scored row(s) hold fewer than two classes "
                                f"({int(unscored.sum())} labelled row(s) had no score); wait for more labels"}
    y = map_label(raw[known].reset_index(drop=True), label_column)  # unknown spellings raise LabelError
    metrics = labelled_metrics(y.to_numpy(), cur_scores[known])
    out["metrics"] = metrics
    if baseline and baseline.get("roc_auc") is not None:
        out["auc_drop"] = float(baseline["roc_auc"] - metrics["roc_auc"])
        out["degraded"] = bool(out["auc_drop"] > max_auc_drop)
    history = []
    for name, frame in (months or {}).items():
        if model is None or label_column not in frame.columns or frame[label_column].nunique() < 2:
            continue
        m = labelled_metrics(map_label(frame[label_column], label_column).to_numpy(), score_frame(model, frame))
        history.append({"month": str(name), "roc_auc": m["roc_auc"], "pr_auc": m["pr_auc"], "rows": int(m["rows"])})
    out["months"] = history + [{"month": "current", "roc_auc": metrics["roc_auc"], "pr_auc": metrics["pr_auc"],
                                "rows": int(metrics["rows"])}]
    return out
