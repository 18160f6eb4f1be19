"""churnkit: notebook-first experiment-to-production kit for a scikit-learn churn model.

The notebooks call the few names re-exported here; everything else lives in the modules.
"""

from churnkit.data import Dataset, Schema, describe_dataset, load_table, synth_month
from churnkit.deploy import get_target, log_deployment, model_uri_for, open_target, plan_table
from churnkit.evaluate import evaluate_holdout, gate, plot_evaluation
from churnkit.exceptions import ChurnkitError
from churnkit.model import split_holdout, train_model
from churnkit.monitor import (
    build_monitor_report,
    load_monitor_inputs,
    load_monitored_model,
    log_monitor_report,
    measure_latency,
    probe_rows,
)
from churnkit.registry import (
    load_candidate,
    load_champion,
    load_model,
    log_candidate,
    log_evaluation,
    record_registration,
    register_candidate,
    start_run,
)
from churnkit.rollout import plot_rollout, rollout_history
from churnkit.rollout import rollout as run_rollout

__version__ = "0.1.0"

__all__ = [
    "ChurnkitError",
    "Dataset",
    "Schema",
    "__version__",
    "build_monitor_report",
    "describe_dataset",
    "evaluate_holdout",
    "gate",
    "get_target",
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
    "plan_table",
    "plot_evaluation",
    "plot_rollout",
    "probe_rows",
    "record_registration",
    "register_candidate",
    "rollout_history",
    "run_rollout",
    "split_holdout",
    "start_run",
    "synth_month",
    "train_model",
]
