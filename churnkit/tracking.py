"""MLflow tracking: the store a :class:`~churnkit.config.Config` names, notebook runs and provenance.

With :mod:`churnkit.registry` (model versions and aliases), the only modules that touch MLflow. Every
function takes the configuration explicitly; without one, settings are read from the environment at
that call (:func:`churnkit.config.load_config`), never from whatever this process used last.

- An embedded store is created under a file lock (``runs/.mlflow-init.lock``): two pipelines starting
  on a fresh runs folder do not race through MLflow's database migrations.
- A team server gets bounded HTTP retries (:data:`HTTP_SETTINGS`, unless already set in the
  environment): a server that stops answering fails a command within about a minute with one
  :class:`~churnkit.exceptions.TrackingServerError` line naming it, not after MLflow's default minutes.
- Runs record the host and pid of the process that runs them; a run left RUNNING by a process that
  is gone (killed, or its server went away) is marked FAILED by the next command on that store and host.
- The ``sagemaker_mlflow`` plugin's request-header provider (meant for ``arn:`` tracking URIs) is
  dropped for every other store: it logs a warning on each request otherwise.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import platform
import socket
import subprocess

from churnkit.config import EXPERIMENT_NAME, TAG, Config, load_config, scoped_environ
from churnkit.evaluate import GateResult
from churnkit.exceptions import PermissionDeniedError, RunNotFoundError, TrackingServerError

#: MLflow's own client settings (read from the environment at each request) that the kit sets for a
#: tracking server when the environment does not: 2 retries 1 s and 2 s apart, 20 s per request at most,
#: instead of MLflow's 7 retries with backoff up to minutes and 120 s per request.
HTTP_SETTINGS = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_BACKOFF_JITTER": "0.5",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "20",
    # MLflow prints "View run ... at: <server URL>" on stdout when a run ends; `--json` keeps stdout to its object
    "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "true",
}
INIT_LOCK = ".mlflow-init.lock"


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


def configure_http(config: Config) -> None:
    """MLflow client settings for a tracking server: bounded retries (:data:`HTTP_SETTINGS`), no plugin noise.

    MLflow reads its HTTP settings from the environment at every request (``mlflow.environment_variables``),
    so they are set in this process's environment, only where the user has not set them; notebook
    kernels started by the runner inherit them. This is the one place the kit writes the environment.
    """
    if config.embedded:
        return
    for key, value in HTTP_SETTINGS.items():
        os.environ.setdefault(key, value)
    import logging

    # urllib3 warns on every retry; the retries are the kit's budget and a final failure is reported once
    logging.getLogger("urllib3.connectionpool").setLevel(logging.ERROR)
    if not config.tracking_uri.startswith("arn:"):
        from mlflow.tracking.request_header.registry import _request_header_provider_registry as providers

        # MLflow keeps providers in a plain list; the plugin's provider raises on a non-ARN URI and MLflow
        # logs "Encountered unexpected error during resolving request headers: list index out of range".
        providers._registry = [p for p in providers._registry if not type(p).__module__.startswith("sagemaker_mlflow")]


@contextlib.contextmanager
def _init_lock(config: Config):
    """An exclusive lock on ``runs/.mlflow-init.lock`` while an embedded store is created or migrated."""
    if not config.embedded:
        yield
        return
    import fcntl

    config.runs_dir.mkdir(parents=True, exist_ok=True)
    with open(config.runs_dir / INIT_LOCK, "a+") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def setup_tracking(config: Config | None = None) -> str:
    """Point MLflow at ``config``'s store and make sure the ``churnkit`` experiment exists.

    Returns the experiment id. Idempotent and cheap after the first call per store. The first call of
    a process also reconciles runs that processes now gone left RUNNING (:func:`reconcile_runs`).

    Raises
    ------
    TrackingServerError
        The tracking server does not answer (one line naming it).
    """
    config = config or load_config()
    configure_http(config)
    _point_mlflow(config.tracking_uri)
    cached = _experiment_ids.get(config.tracking_uri)
    if cached is not None:
        return cached
    mlflow = mlflow_module()
    if config.embedded:
        config.runs_dir.mkdir(parents=True, exist_ok=True)
    quiet_store_setup()
    try:
        with _init_lock(config):  # the first process creates the database; the others wait, then find it
            exp = mlflow.get_experiment_by_name(EXPERIMENT_NAME)
            if exp is None:
                try:
                    exp_id = mlflow.create_experiment(EXPERIMENT_NAME, artifact_location=config.artifact_location)
                except Exception:  # another process (on a team server) created it meanwhile
                    exp_id = mlflow.get_experiment_by_name(EXPERIMENT_NAME).experiment_id
            else:
                exp_id = exp.experiment_id
        mlflow.set_experiment(experiment_id=exp_id)
    except Exception as exc:
        raise (server_error(exc, config) or exc) from None
    _experiment_ids[config.tracking_uri] = exp_id
    if not config.output_notebook:  # a notebook kernel belongs to a live runner: nothing to reconcile
        reconcile_runs(config, exp_id)
    return exp_id


def quiet_store_setup() -> None:
    """MLflow's INFO lines about creating and migrating its database tables: set-up detail, not news (shown
    when churnkit logs at INFO or DEBUG: ``--verbose``, ``CHURNKIT_LOG_LEVEL``)."""
    if logging.getLogger("churnkit").getEffectiveLevel() <= logging.INFO:
        return
    for name in ("mlflow.store.db.utils", "alembic.runtime.migration"):
        logging.getLogger(name).setLevel(logging.WARNING)


# --------------------------------------------------------------------------------------------------
# A tracking server that stops answering
# --------------------------------------------------------------------------------------------------

_down: set[str] = set()  # tracking URIs that failed to answer in this process


def _unreachable(exc: BaseException) -> bool:
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        name = type(exc).__name__
        text = str(exc)
        if name in ("ConnectionError", "ConnectTimeout", "ReadTimeout", "Timeout", "MaxRetryError",
                    "NewConnectionError", "ConnectionRefusedError", "RemoteDisconnected", "ProtocolError"):
            return True
        if "Max retries exceeded" in text or ("API request to" in text and "failed" in text):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def server_error(exc: BaseException, config: Config | None = None) -> TrackingServerError | None:
    """A one-line :class:`TrackingServerError` when ``exc`` means the tracking server did not answer, else None."""
    if isinstance(exc, TrackingServerError):
        return exc
    if not _unreachable(exc):
        return None
    config = config or load_config()
    if config.embedded:
        return None
    _down.add(config.tracking_uri)
    retries = os.environ.get("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "?")
    timeout = os.environ.get("MLFLOW_HTTP_REQUEST_TIMEOUT", "?")
    return TrackingServerError(
        f"the MLflow tracking server {config.tracking_uri!r} did not answer ({retries} retries, {timeout} s per "
        "request); start it or fix MLFLOW_TRACKING_URI, then run the command again (runs it left RUNNING are "
        "marked FAILED by the next command)", uri=config.tracking_uri)


# --------------------------------------------------------------------------------------------------
# Who the server sees, and what it refused
# --------------------------------------------------------------------------------------------------

#: The auth app's "who am I" route (mlflow/server/auth/routes.py GET_CURRENT_USER in MLflow 3.17.2):
#: ``{"is_basic_auth": true, "user": {"id", "is_admin", "username"}}`` for the credentials sent.
CURRENT_USER_ROUTE = "/api/2.0/mlflow/users/current"
#: What each registry request needs on a basic-auth server (validators in mlflow/server/auth/__init__.py:
#: creating a version, tags and aliases need ``update`` = EDIT; deleting a version or an alias needs MANAGE).
NEEDED = {
    "registered-models/alias": ("EDIT (MANAGE to move or delete an alias)", "set an alias on"),
    "model-versions/create": ("EDIT", "create a version of"),
    "model-versions/set-tag": ("EDIT", "tag a version of"),
    "model-versions/delete-tag": ("EDIT", "untag a version of"),
    "model-versions/delete": ("MANAGE", "delete a version of"),
    "registered-models/set-tag": ("EDIT", "tag"),
    "registered-models/create": ("the workspace's create permission", "create"),
    "runs/": ("EDIT on the experiment", "log to the experiment of"),
    "experiments/": ("EDIT on the experiment", "write to the experiment of"),
}
GRANTOR = ("an MLflow admin grants it (`churnkit team init --apply` with the admin's credentials, or the "
           "permissions API); credentials come from MLFLOW_TRACKING_USERNAME/MLFLOW_TRACKING_PASSWORD or "
           "MLFLOW_TRACKING_TOKEN")


def tracking_username(config: Config | None = None) -> str:
    """The user name the kit sends (``MLFLOW_TRACKING_USERNAME``), else the OS user for a local store."""
    import getpass

    name = os.environ.get("MLFLOW_TRACKING_USERNAME", "").strip()
    if name:
        return name
    try:
        return getpass.getuser()
    except Exception:  # no passwd entry (some containers)
        return "unknown"


def current_user(config: Config | None = None) -> str:
    """The identity the registry records: the server's own answer on a basic-auth server (so a name cannot be
    claimed without its password), else :func:`tracking_username`."""
    config = config or load_config()
    if config.embedded or not config.tracking_uri.startswith(("http://", "https://")):
        return tracking_username(config)
    from mlflow.utils.credentials import get_default_host_creds
    from mlflow.utils.rest_utils import http_request

    configure_http(config)
    try:
        resp = http_request(get_default_host_creds(config.tracking_uri), CURRENT_USER_ROUTE, "GET")
    except Exception as exc:
        raise (server_error(exc, config) or exc) from None
    if resp.status_code == 401:
        raise permission_error_from(401, CURRENT_USER_ROUTE, config, resource="the tracking server")
    if resp.status_code == 200:
        with contextlib.suppress(ValueError, KeyError, TypeError):
            return str(resp.json()["user"]["username"])
    return tracking_username(config)  # a server without the auth app: no identity of its own


def _status(exc: BaseException) -> tuple[int, str]:
    """(HTTP status, message) of an MLflow client error in ``exc``'s chain, (0, "") when there is none."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        text = str(exc)
        code = getattr(exc, "get_http_status_code", None)
        status = code() if callable(code) else 0
        if getattr(exc, "error_code", "") in ("PERMISSION_DENIED", "UNAUTHENTICATED"):
            status = 403 if exc.error_code == "PERMISSION_DENIED" else 401
        for s in (401, 403):
            if f"error code {s} " in text:
                status = s
        if status in (401, 403):
            return status, text
        exc = exc.__cause__ or exc.__context__
    return 0, ""


def permission_error_from(status: int, text: str, config: Config | None = None, *, resource: str = ""):
    """A one-line :class:`PermissionDeniedError` for a 401/403 answer to the request ``text`` names."""
    user = tracking_username(config) if os.environ.get("MLFLOW_TRACKING_USERNAME") else "(no MLFLOW_TRACKING_USERNAME)"
    if status == 401:
        return PermissionDeniedError(
            f"the tracking server did not accept the credentials of {user!r} (HTTP 401); set "
            "MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD (or MLFLOW_TRACKING_TOKEN) to an account an "
            "MLflow admin created (`churnkit team init`)", user=user, resource=resource)
    permission, verb = next(((p, v) for route, (p, v) in NEEDED.items() if route in text), ("READ or more", "use"))
    what = resource or "this resource"
    return PermissionDeniedError(
        f"user {user!r} may not {verb} {what} (HTTP 403): that needs {permission} on {what}; {GRANTOR}",
        user=user, permission=permission.split(" ")[0], resource=resource)


def permission_error(exc: BaseException, config: Config | None = None, *, resource: str = ""):
    """A :class:`PermissionDeniedError` when ``exc`` is the server's 401/403, else None."""
    if isinstance(exc, PermissionDeniedError):
        return exc
    status, text = _status(exc)
    return permission_error_from(status, text, config, resource=resource) if status else None


def server_down(config: Config) -> bool:
    """True once a request to ``config``'s tracking server failed in this process (clean-up skips MLflow)."""
    return config.tracking_uri in _down


# --------------------------------------------------------------------------------------------------
# Runs whose process is gone
# --------------------------------------------------------------------------------------------------

def _pid_namespace() -> str:
    """This process's PID namespace (containers on one host name share pid numbers, not processes)."""
    try:
        return os.readlink("/proc/self/ns/pid")
    except OSError:
        return ""


def owner_tags() -> dict[str, str]:
    """Tags naming the process that runs (and must close) an MLflow run: host, pid and its PID namespace."""
    return {TAG + "host": socket.gethostname(), TAG + "pid": str(os.getpid()), TAG + "pid_namespace": _pid_namespace()}


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def reconcile_runs(config: Config, exp_id: str | None = None) -> list[str]:
    """Mark FAILED the runs left RUNNING by a process of this host that no longer exists; returns their ids.

    Runs of other hosts or PID namespaces (their pid means nothing here) and interactive JupyterLab runs (no
    pid) are left alone.
    """
    from mlflow import MlflowClient

    host = socket.gethostname()
    c = MlflowClient(tracking_uri=config.tracking_uri, registry_uri=config.tracking_uri)
    try:
        runs = c.search_runs([exp_id or _experiment_ids[config.tracking_uri]],
                             filter_string=f"attributes.status = 'RUNNING' and tags.`{TAG}host` = '{host}'",
                             max_results=200)
    except Exception:  # reconciling is housekeeping: never the reason a command fails
        return []
    done = []
    namespace = _pid_namespace()
    for run in runs:
        pid = run.data.tags.get(TAG + "pid", "")
        if run.data.tags.get(TAG + "pid_namespace", "") != namespace:  # another container: its pids are not ours
            continue
        if not pid.isdigit() or _alive(int(pid)):
            continue
        with contextlib.suppress(Exception):
            c.set_tag(run.info.run_id, TAG + "status", "FAILED")
            c.set_tag(run.info.run_id, TAG + "error", f"the process that ran it (pid {pid} on {host}) ended without "
                      "closing the run (killed, or the tracking server stopped answering); marked FAILED later")
            c.set_terminated(run.info.run_id, "FAILED")
            done.append(run.info.run_id)
    return done


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
