"""Figures of a monitoring report: PSI bars, reference-vs-current distributions, scores, AUC by month.

Figures are built with ``matplotlib.figure.Figure`` (no pyplot state): a notebook shows the returned
figure once, the HTML report saves it as PNG, and nothing leaks between calls.
"""

from __future__ import annotations

import math

import numpy as np

REF_COLOR, CUR_COLOR = "#4C72B0", "#DD8452"
LEVEL_COLORS = {"ok": "#55A868", "warn": "#E5AE38", "act": "#C44E52", "n/a": "#999999"}


def _figure(width: float, height: float):
    import sys

    from matplotlib.figure import Figure

    if "ipykernel" in sys.modules:
        _show_figures_inline(Figure)
    return Figure(figsize=(width, height), layout="constrained")


def _show_figures_inline(figure_type) -> None:
    """Let a notebook cell that returns a Figure show it as PNG (pyplot's inline backend may never load)."""
    try:
        from IPython import get_ipython
        from IPython.core.pylabtools import select_figure_formats
    except ImportError:
        return
    shell = get_ipython()
    if shell is not None and figure_type not in shell.display_formatter.formatters["image/png"].type_printers:
        select_figure_formats(shell, {"png"})


def plot_psi(report):
    """Horizontal PSI bars per column (colored ok/warn/act) with the warn and act lines."""
    th = report.thresholds
    items = sorted(((n, c["psi"], c["psi_level"], c["drift"]) for n, c in report.columns.items()),
                   key=lambda t: -(t[1] if math.isfinite(t[1]) else -1))
    fig = _figure(7, 0.32 * len(items) + 1.4)
    ax = fig.subplots()
    names = [f"{n} *" if drift else n for n, _, _, drift in items]
    values = [v if math.isfinite(v) else 0.0 for _, v, _, _ in items]
    ax.barh(names[::-1], values[::-1], color=[LEVEL_COLORS[lv] for _, _, lv, _ in items][::-1])
    ax.axvline(th["psi_warn"], ls="--", c=LEVEL_COLORS["warn"], label=f"warn {th['psi_warn']:g}")
    ax.axvline(th["psi_act"], ls="--", c=LEVEL_COLORS["act"], label=f"act {th['psi_act']:g}")
    ax.set(title="Population stability index per column (* = drift verdict)", xlabel="PSI")
    ax.legend(loc="lower right", fontsize=8)
    return fig


def _draw_hist(ax, hist: dict, title: str) -> None:
    if "edges" in hist:
        edges = np.asarray(hist["edges"])
        ax.stairs(hist["reference"], edges, fill=True, alpha=0.45, color=REF_COLOR, label="reference")
        ax.stairs(hist["current"], edges, fill=False, lw=1.8, color=CUR_COLOR, label="current")
    elif "categories" in hist:
        x = np.arange(len(hist["categories"]))
        ax.bar(x - 0.2, hist["reference"], 0.4, color=REF_COLOR, label="reference")
        ax.bar(x + 0.2, hist["current"], 0.4, color=CUR_COLOR, label="current")
        ax.set_xticks(x, [str(c)[:14] for c in hist["categories"]], rotation=35, ha="right", fontsize=7)
    ax.set_title(title, fontsize=9)
    ax.set_ylabel("share of rows", fontsize=8)


def plot_histograms(report, columns: list[str] | None = None, max_columns: int = 9):
    """Reference vs current per column: the drifted ones (or ``columns``), the highest PSI first."""
    if columns is None:
        ranked = sorted(report.columns, key=lambda n: (not report.columns[n]["drift"], -_finite(report.columns[n]["psi"])))
        columns = [n for n in ranked if report.columns[n]["drift"]] or ranked[:3]
    columns = [c for c in columns if report.histograms.get(c)][:max_columns]
    cols = min(3, max(len(columns), 1))
    rows = max(1, math.ceil(len(columns) / cols))
    fig = _figure(4.2 * cols, 3.0 * rows)
    axes = np.atleast_1d(fig.subplots(rows, cols)).ravel()
    for ax, name in zip(axes, columns):
        c = report.columns[name]
        _draw_hist(ax, report.histograms[name], f"{name}: {c['method']} {c['statistic']:.3g}, PSI {c['psi']:.2f}")
    for ax in axes[len(columns):]:
        ax.set_axis_off()
    if columns:
        axes[0].legend(fontsize=8)
    return fig


def plot_scores(report):
    """Distribution of churn scores, reference vs current (prediction drift)."""
    fig = _figure(6, 3.4)
    ax = fig.subplots()
    hist = report.histograms.get("__scores__")
    pred = report.prediction_drift
    if not hist or pred is None:
        ax.text(0.5, 0.5, "no scores: pass a model or a capture", ha="center", va="center")
        ax.set_axis_off()
        return fig
    _draw_hist(ax, hist, f"churn scores: {pred['method']} {pred['statistic']:.3g}, PSI {pred['psi']:.3f}")
    ax.set_xlabel("churn probability")
    ax.legend(fontsize=8)
    return fig


def plot_auc(report):
    """ROC AUC by labelled month against the holdout baseline and the retrain line."""
    fig = _figure(6, 3.4)
    ax = fig.subplots()
    perf = report.performance or {}
    months = perf.get("months") or []
    if not months:
        ax.text(0.5, 0.5, "no labelled months yet", ha="center", va="center")
        ax.set_axis_off()
        return fig
    ax.plot([m["month"] for m in months], [m["roc_auc"] for m in months], marker="o", label="ROC AUC")
    base = (perf.get("baseline") or {}).get("roc_auc")
    if base is not None:
        ax.axhline(base, c="grey", ls=":", label=f"holdout {base:.3f}")
        ax.axhline(base - perf["max_auc_drop"], c=LEVEL_COLORS["act"], ls="--",
                   label=f"retrain below {base - perf['max_auc_drop']:.3f}")
    ax.set(title="ROC AUC over labelled months", ylabel="ROC AUC")
    ax.legend(fontsize=8)
    return fig


def _finite(v) -> float:
    return v if v is not None and math.isfinite(v) else -1.0
