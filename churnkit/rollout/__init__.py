"""Progressive rollout with automatic rollback, on any deploy target.

Modules, bottom to top: ``checks`` (pure decisions: step plans, the checks of a step, verdicts),
``record`` (the decision record, its MLflow run and the timeline figure), ``store`` (the per-endpoint
lock and state file), ``controller`` (:func:`rollout` and :func:`rollback`). What a target reports
(``Window``) comes from :mod:`churnkit.deploy.telemetry`.
"""

from churnkit.rollout.checks import (
    CANARY_STEPS,
    DECISIONS,
    LINEAR_STEPS,
    MIN_PSI_SCORES,
    STRATEGIES,
    Check,
    Thresholds,
    Verdict,
    check_error_rate,
    check_input_drift,
    check_live,
    check_p99,
    check_prediction_psi,
    early_breach,
    enough_traffic,
    judge_step,
    plan_steps,
    psi,
    should_roll_back,
)
from churnkit.rollout.controller import (
    DEFAULT_INTERVAL,
    bake_interval,
    check_bake,
    check_limits,
    plan_rollout,
    rollback,
    rollout,
)
from churnkit.rollout.record import RolloutRecord, StepRecord, log_record, plot_rollout, record_outcome, rollout_history
from churnkit.rollout.store import RolloutLock, pid_alive, read_state, rollout_dir, state_path, write_state

__all__ = [
    "CANARY_STEPS",
    "DECISIONS",
    "DEFAULT_INTERVAL",
    "LINEAR_STEPS",
    "MIN_PSI_SCORES",
    "STRATEGIES",
    "Check",
    "RolloutLock",
    "RolloutRecord",
    "StepRecord",
    "Thresholds",
    "Verdict",
    "bake_interval",
    "check_bake",
    "check_error_rate",
    "check_input_drift",
    "check_limits",
    "check_live",
    "check_p99",
    "check_prediction_psi",
    "early_breach",
    "enough_traffic",
    "judge_step",
    "log_record",
    "pid_alive",
    "plan_rollout",
    "plan_steps",
    "plot_rollout",
    "psi",
    "read_state",
    "record_outcome",
    "rollback",
    "rollout",
    "rollout_dir",
    "rollout_history",
    "should_roll_back",
    "state_path",
    "write_state",
]
