"""MLflow tracking: the store a :class:`~churnkit.config.Config` names, notebook runs and provenance.

With :mod:`churnkit.registry` (model versions and aliases), the only modules that touch MLflow. Every
function takes the configuration explicitly; without one, settings are read from the environment at
that call (:func:`churnkit.config.load_config`), never from whatever this process used last.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import platform
import subprocess

from churnkit.config import EXPERIMENT_NAME, TAG, Config, load_config, scoped_environ
from churnkit.evaluate import GateResult
from churnkit.exceptions import RunNotFoundError


def mlflow_module():
    import mlflow

    return mlflow


_experiment_ids: dict[str, str] = {}  # a cache keyed by tracking URI, never a source of settings


def _point_mlflow(uri: str) -> None:
    """Set MLflow's tracking and registry URI for this process only.

    ``mlflow.set_tracking_uri`` also exports ``MLFLOW_TRACKING_URI``/``MLFLOW_REGISTRY_URI``; left there,
    the next :func:`load_config` would mistake our embedded store for a team server, so they are restored.
    """
    mlflow = mlflow_module()
    kept = {k: os.environ.get(k) for k in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")}
    with scoped_environ(kept):
        mlflow.set_tracking_uri(uri)
        mlflow.set_registry_uri(uri)


def setup_tracking(config: Config | None = None) -> str:
    """Point MLflow at ``config``'s store and make sure the ``churnkit`` experiment exists.

    Returns the experiment id. Idempotent and cheap after the first call per store.
    """
    config = config or load_config()
    _point_mlflow(config.tracking_uri)
    cached = _experiment_ids.get(config.tracking_uri)
    if cached is not None:
        return cached
    mlflow = mlflow_module()
    if config.embedded:
        config.runs_dir.mkdir(parents=True, exist_ok=True)
    quiet_store_setup()
    exp = mlflow.get_experiment_by_name(EXPERIMENT_NAME)
    if exp is None:
        try:
            exp_id = mlflow.create_experiment(EXPERIMENT_NAME, artifact_location=config.artifact_location)
        except Exception:  # another process created it meanwhile
            exp_id = mlflow.get_experiment_by_name(EXPERIMENT_NAME).experiment_id
    else:
        exp_id = exp.experiment_id
    mlflow.set_experiment(experiment_id=exp_id)
    _experiment_ids[config.tracking_uri] = exp_id
    return exp_id


def quiet_store_setup() -> None:
    """MLflow's INFO lines about creating and migrating its database tables: set-up detail, not news."""
    for name in ("mlflow.store.db.utils", "alembic.runtime.migration"):
        logging.getLogger(name).setLevel(logging.WARNING)


def client(config: Config | None = None):
    """An MlflowClient bound to ``config``'s store (set up first)."""
    from mlflow import MlflowClient

    config = config or load_config()
    setup_tracking(config)
    return MlflowClient(tracking_uri=config.tracking_uri, registry_uri=config.tracking_uri)


def start_run(notebook: str, config: Config | None = None):
    """Start (or resume) this notebook's MLflow run (the headless path; notebooks call
    :func:`churnkit.session.start_run`, which starts a new run per execution in JupyterLab).

    Under ``churnkit run`` the runner created the run and passed its id in ``MLFLOW_RUN_ID``; elsewhere
    a fresh run is started. Either way the run is active afterwards and returned.
    """
    setup_tracking(config)
    mlflow = mlflow_module()
    active = mlflow.active_run()
    if active is not None:
        return active
    run_id = os.environ.get("MLFLOW_RUN_ID")
    if run_id:
        return mlflow.start_run(run_id=run_id)
    return mlflow.start_run(run_name=notebook, tags={TAG + "notebook": notebook, TAG + "interactive": "true"})


def git_commit(cwd: str | os.PathLike | None = None) -> tuple[str, bool]:
    """The git commit of ``cwd`` (default: the current folder) and whether its work tree is dirty.

    Returns ``("unknown", False)`` outside git.
    """
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, check=True,
                             cwd=cwd).stdout.strip()
        dirty = bool(
            subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True,
                           timeout=5, cwd=cwd).stdout.strip()
        )
        return sha, dirty
    except Exception:
        return "unknown", False


def package_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for pkg in ("scikit-learn", "pandas", "numpy", "mlflow", "papermill", "churnkit"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = "not installed"
    return out


def pip_requirements() -> list[str]:
    """Explicit requirements for the logged model (inferring them costs seconds)."""
    v = package_versions()
    return [f"scikit-learn=={v['scikit-learn']}", f"pandas=={v['pandas']}", f"numpy=={v['numpy']}"]


def log_evaluation(evaluation, verdict: GateResult, figure=None) -> None:
    """Log holdout metrics, the gate verdict and the evaluation figure to the active run."""
    mlflow = mlflow_module()
    mlflow.log_metrics({f"holdout_{k}": v for k, v in evaluation.challenger.items()})
    if evaluation.champion is not None:
        mlflow.log_metrics({f"champion_holdout_{k}": v for k, v in evaluation.champion.items()})
    mlflow.log_metric("threshold", evaluation.threshold)
    mlflow.set_tags(
        {
            TAG + "gate_passed": str(verdict.passed).lower(),
            TAG + "gate_summary": verdict.summary()[:4000],
            TAG + "gate": json.dumps(verdict.to_dict()),
        }
    )
    if figure is not None:
        mlflow.log_figure(figure, "evaluation.png")


def has_store(config: Config) -> bool:
    """False for an embedded store not created yet: reading the runs must not create one."""
    return not config.embedded or (config.runs_dir / "mlflow.db").exists()


def iter_runs(config: Config | None = None, page: int = 1000):
    """Every MLflow run of the churnkit experiment, newest first (paged through the tracking store)."""
    config = config or load_config()
    if not has_store(config):
        return
    exp_id = setup_tracking(config)
    c, token = client(config), None
    while True:
        batch = c.search_runs([exp_id], order_by=["attributes.start_time DESC"], max_results=page,
                                   page_token=token)
        yield from batch
        token = batch.token
        if not token:
            return


def find_run(run_id: str, config: Config | None = None):
    """The MLflow run ``run_id``, or the only run whose id starts with it (``churnkit runs`` shows 8 characters).

    Raises
    ------
    RunNotFoundError
        No run, or several runs, match.
    """
    config = config or load_config()
    with contextlib.suppress(Exception):  # MLflow raises its own error types for an unknown or partial id
        if has_store(config):
            return client(config).get_run(run_id)
    matches = [r for r in iter_runs(config) if r.info.run_id.startswith(run_id)] if len(run_id) >= 4 else []
    if len(matches) == 1:
        return matches[0]
    uri = config.tracking_uri
    if matches:
        ids = ", ".join(repr(r.info.run_id) for r in matches[:5])
        raise RunNotFoundError(f"run id prefix {run_id!r} matches {len(matches)} runs ({ids}); give more characters")
    raise RunNotFoundError(f"run {run_id!r} is not in the tracking store {uri!r}; list run ids with `churnkit runs`")
