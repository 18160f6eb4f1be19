"""The ``churnkit monitor`` command as functions: files in, a report out; a report into the MLflow run.

The outer edge of :mod:`churnkit.monitor`: it reads through :mod:`~churnkit.monitor.inputs`, builds
with :mod:`~churnkit.monitor.report` and renders through :mod:`~churnkit.monitor.html` (imported when
an HTML report is logged, so plotting loads only then).
"""

from __future__ import annotations

import math

from churnkit.monitor.inputs import load_monitor_inputs, load_monitored_model, measure_latency, probe_rows
from churnkit.monitor.report import build_monitor_report


def monitor_files(
    reference_path: str,
    current_path: str,
    *,
    labels_path: str = "",
    history: list[str] | tuple = (),
    model_uri: str = "",
    metrics_url: str = "",
    probe_requests: int = 20,
    config=None,
    **options,
):
    """The ``churnkit monitor`` command as a function: read the files, load the model, build a MonitorReport.

    ``options`` go to :func:`build_monitor_report` (drift_share, psi_act, max_auc_drop, label_column, ...).
    """
    paths = ",".join([*history, current_path])
    inputs = load_monitor_inputs(reference_path, paths, labels_path)
    model, baseline = load_monitored_model(model_uri=model_uri, config=config) if model_uri else (None, None)
    latency = None
    if metrics_url:
        payload = probe_rows(inputs.current, model.schema if model is not None else None, 5,
                             label_column=options.get("label_column", "churn"))
        latency = measure_latency(metrics_url, payload, requests=probe_requests)
    return build_monitor_report(inputs.reference, inputs.current, model=model, labels=inputs.labels,
                                baseline=baseline, months=inputs.months, latency=latency, **options)


def log_monitor_report(report, html: bool = True) -> None:
    """Attach a report to the active MLflow run: headline metrics, the JSON, and the HTML report."""
    import mlflow

    if mlflow.active_run() is None:
        return
    metrics = {"share_of_drifted_columns": report.share_of_drifted_columns, "dataset_drift": float(report.dataset_drift),
               "retrain": float(report.recommendation["retrain"])}
    if report.prediction_drift:
        metrics["prediction_psi"] = report.prediction_drift["psi"]
    perf = report.performance or {}
    if perf.get("metrics"):
        metrics |= {"current_roc_auc": perf["metrics"]["roc_auc"], "current_pr_auc": perf["metrics"]["pr_auc"]}
    mlflow.log_metrics({k: float(v) for k, v in metrics.items() if v is not None and math.isfinite(v)})
    mlflow.log_dict(report.to_dict(), "monitor/report.json")
    if html:
        from churnkit.monitor.html import render_html

        mlflow.log_text(render_html(report), "monitor/report.html")
