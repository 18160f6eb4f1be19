"""churnkit: notebook-first experiment-to-production kit for a scikit-learn churn model.

The notebooks call the few names listed here; everything else lives in the modules. Names are
resolved on first use, so ``import churnkit.serve`` (the container's cold start) loads only the
serving layer and never MLflow, matplotlib or the deploy targets.
"""

import importlib

from churnkit.version import __version__ as __version__

_EXPORTS = {
    "ChurnkitError": "churnkit.exceptions",
    "Dataset": "churnkit.data",
    "Schema": "churnkit.data",
    "describe_dataset": "churnkit.data",
    "load_table": "churnkit.data",
    "synth_month": "churnkit.data",
    "get_target": "churnkit.deploy",
    "log_deployment": "churnkit.deploy",
    "model_uri_for": "churnkit.deploy",
    "open_target": "churnkit.deploy",
    "plan_table": "churnkit.deploy",
    "describe_schema_diff": "churnkit.evaluate",
    "evaluate_holdout": "churnkit.evaluate",
    "gate": "churnkit.evaluate",
    "plot_evaluation": "churnkit.evaluate",
    "schema_diff": "churnkit.evaluate",
    "import_model": "churnkit.importer",
    "scan_model_file": "churnkit.importer",
    "write_demo_model": "churnkit.importer",
    "split_holdout": "churnkit.model",
    "train_model": "churnkit.model",
    "build_monitor_report": "churnkit.monitor",
    "cloud_latency": "churnkit.monitor.cloud",
    "cloud_latency_summary": ("churnkit.monitor.cloud", "summary"),
    "plot_cloud_latency": "churnkit.monitor.cloud",
    "load_monitor_inputs": "churnkit.monitor",
    "load_monitored_model": "churnkit.monitor",
    "log_monitor_report": "churnkit.monitor",
    "measure_latency": "churnkit.monitor",
    "probe_rows": "churnkit.monitor",
    "expect_alias": "churnkit.registry",
    "load_candidate": "churnkit.session",
    "load_champion": "churnkit.registry",
    "load_model": "churnkit.registry",
    "log_candidate": "churnkit.registry",
    "log_evaluation": "churnkit.tracking",
    "record_registration": "churnkit.registry",
    "register_candidate": "churnkit.registry",
    "start_run": "churnkit.session",
    "plot_rollout": "churnkit.rollout",
    "plan_rollout": "churnkit.rollout",
    "rollout_history": "churnkit.rollout",
    "run_rollout": ("churnkit.rollout", "rollout"),
    "score_base": "churnkit.batch.run",
    "score_paths": "churnkit.batch.run",
}

__all__ = [
    "ChurnkitError",
    "Dataset",
    "Schema",
    "__version__",
    "build_monitor_report",
    "cloud_latency",
    "cloud_latency_summary",
    "describe_dataset",
    "describe_schema_diff",
    "evaluate_holdout",
    "expect_alias",
    "gate",
    "get_target",
    "import_model",
    "load_candidate",
    "load_champion",
    "load_model",
    "load_monitor_inputs",
    "load_monitored_model",
    "load_table",
    "log_candidate",
    "log_deployment",
    "log_evaluation",
    "log_monitor_report",
    "measure_latency",
    "model_uri_for",
    "open_target",
    "plan_rollout",
    "plan_table",
    "plot_cloud_latency",
    "plot_evaluation",
    "plot_rollout",
    "probe_rows",
    "record_registration",
    "register_candidate",
    "rollout_history",
    "run_rollout",
    "scan_model_file",
    "schema_diff",
    "score_base",
    "score_paths",
    "split_holdout",
    "start_run",
    "synth_month",
    "train_model",
    "write_demo_model",
]


def __getattr__(name: str):
    target = _EXPORTS.get(name)
    if target is None:
        raise AttributeError(f"module 'churnkit' has no attribute {name!r}")
    module, attr = target if isinstance(target, tuple) else (target, name)
    value = getattr(importlib.import_module(module), attr)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__
