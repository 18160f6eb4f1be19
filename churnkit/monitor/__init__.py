"""Monitoring: data drift, prediction drift, delayed-label performance and a latency breakdown.

Modules, imports flowing one way (each uses only those listed before it):

- ``drift``: pure drift statistics of one column in two samples (KS, chi-squared, Wasserstein,
  Jensen-Shannon, PSI) and their documented thresholds;
- ``latency``: the model / overhead / network breakdown of a server's ``/metrics`` (parsed by
  :mod:`churnkit.serve.metrics`, which writes them);
- ``report``: :class:`MonitorReport`, :func:`build_monitor_report`, :func:`recommend`, performance once
  labels arrive (pure: frames and a loaded model in);
- ``inputs``: reading tables and the serving capture, the monitored model and its baseline, the
  latency probe of a live server;
- ``files``: the ``churnkit monitor`` command as a function and logging a report to MLflow;
- ``plots`` and ``html``: figures and the HTML report, imported only when drawn, so importing
  this package loads no matplotlib.

The capture's column names (``churn_probability`` ...) live with the capture writer in
:mod:`churnkit.serve.capture`.
"""

from churnkit.monitor.drift import counts_in_bins, population_stability_index, quantile_edges
from churnkit.monitor.latency import latency_breakdown
from churnkit.monitor.report import MonitorReport, build_monitor_report, recommend
from churnkit.monitor.inputs import (
    MonitorInputs,
    load_monitor_inputs,
    load_monitored_model,
    measure_latency,
    probe_rows,
    read_current,
)
from churnkit.monitor.files import log_monitor_report, monitor_files

__all__ = [
    "MonitorInputs",
    "MonitorReport",
    "build_monitor_report",
    "counts_in_bins",
    "latency_breakdown",
    "load_monitor_inputs",
    "load_monitored_model",
    "log_monitor_report",
    "measure_latency",
    "monitor_files",
    "population_stability_index",
    "probe_rows",
    "quantile_edges",
    "read_current",
    "recommend",
]
