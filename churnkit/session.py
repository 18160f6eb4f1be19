"""Notebook runs in JupyterLab: every execution of a notebook is its own, honestly recorded MLflow run.

Headless runs belong to the runner (it creates the MLflow run, passes its id to the kernel and closes it
with the verdict of papermill). In a live kernel nobody does that, so this module keeps the run's
lifecycle inside the kernel, with IPython's own hooks:

- each call of :func:`start_interactive_run` (the notebook's first churnkit call) ends the run the kernel
  still holds as FINISHED and starts a new one, so change-a-parameter-and-Run-All never reuses a run;
- the run logs every value of the notebook's ``parameters`` cell as the kernel holds it, plus the
  reproducibility tags a headless run gets (commit, packages, notebook digest, declared defaults, data);
- a cell that raises ends the run FAILED at once, an interrupt (the stop button, or the interrupt
  JupyterLab sends before shutting a busy kernel down) ends it KILLED, each with the code cell and the
  error; a kernel shut down while idle ends it FINISHED, one stopped by SIGTERM mid-cell ends it KILLED;
- runs started from one JupyterLab server carry a ``churnkit.lab_session`` tag, so 02-evaluate can
  prefer the candidate trained in the same session (:func:`load_candidate`).
"""

from __future__ import annotations

import ast
import atexit
import json
import os
import signal
import socket
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from churnkit import tracking
from churnkit.clock import iso_from_ms
from churnkit.config import TAG, Config, log_level, quiet_outputs
from churnkit.registry import Candidate

FAILED_STATES = ("FAILED", "KILLED")


def headless() -> bool:
    """True in a kernel the runner started: it created the MLflow run, passes its id in ``MLFLOW_RUN_ID``
    (with ``CHURNKIT_OUTPUT_NOTEBOOK``) and records the outcome itself (see runner.py)."""
    return bool(os.environ.get("MLFLOW_RUN_ID"))


def quiet() -> None:
    """Keep messages meant for terminals out of cell outputs (headless and in JupyterLab), unless
    ``CHURNKIT_LOG_LEVEL`` asks for INFO or DEBUG (see :func:`churnkit.config.quiet_outputs`)."""
    quiet_outputs(log_level())


def lab_session() -> str:
    """An id of the JupyterLab (Jupyter server) process that started this kernel, "" outside one.

    The server sets ``JPY_SESSION_NAME`` (the notebook's path) and ``JPY_PARENT_PID`` (its own pid) for
    every kernel it starts; the pid's start time makes the id unique across server restarts.
    """
    if not os.environ.get("JPY_SESSION_NAME") or headless():
        return ""
    pid = os.environ.get("JPY_PARENT_PID") or str(os.getppid())
    try:
        started = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        started = "?"
    return f"{socket.gethostname()}:{pid}:{started}"


# --------------------------------------------------------------------------------------------------
# The run a kernel holds
# --------------------------------------------------------------------------------------------------

@dataclass
class _State:
    run_id: str | None = None
    notebook: str = ""
    path: Path | None = None
    code_ids: tuple = ()  # ids of the notebook file's code cells, in order (for "code cell N")
    parameters_id: str | None = None
    parameters_source: str | None = None  # the parameters cell as last executed (may be unsaved)
    start_cell: str | None = None  # id of the cell that called start_run
    busy: dict | None = None  # the cell executing now
    hooked: bool = False


_state = _State()


def _shell():
    try:
        from IPython import get_ipython
    except ImportError:
        return None
    return get_ipython()


def _current_cell() -> dict:
    """The executing cell's id (JupyterLab sends it with each execute request) and execution count."""
    shell = _shell()
    kernel = getattr(shell, "kernel", None)
    cell_id = None
    if kernel is not None:
        try:
            parent = kernel.get_parent("shell")
        except TypeError:
            parent = kernel.get_parent()
        cell_id = (parent or {}).get("metadata", {}).get("cellId")
    return {"cell_id": cell_id, "execution_count": getattr(shell, "execution_count", None)}


def notebook_path(notebook: str) -> Path | None:
    """The notebook file this kernel runs: JupyterLab's ``JPY_SESSION_NAME``, else the kit's notebook."""
    from churnkit.runner import find_notebook

    session = os.environ.get("JPY_SESSION_NAME", "")
    if session.endswith(".ipynb") and Path(session).is_file():
        return Path(session).resolve()
    try:
        return find_notebook(notebook)
    except Exception:
        return None


def _read_cells(path: Path | None) -> tuple[tuple, str | None]:
    if path is None:
        return (), None
    try:
        nb = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return (), None
    code = [c for c in nb.get("cells", []) if c.get("cell_type") == "code"]
    params = next((c.get("id") for c in code if "parameters" in c.get("metadata", {}).get("tags", [])), None)
    return tuple(c.get("id") for c in code), params


def _assigned_names(source: str | None) -> list[str]:
    try:
        body = ast.parse(source or "").body
    except SyntaxError:
        return []
    return [n.targets[0].id for n in body
            if isinstance(n, ast.Assign) and len(n.targets) == 1 and isinstance(n.targets[0], ast.Name)]


def parameter_values(path: Path | None) -> tuple[dict[str, Any], list]:
    """The parameters cell's values as this kernel holds them, and the file's declarations.

    Names come from the notebook file's ``parameters`` cell and from the cell as last executed (JupyterLab
    runs the edited cell before saving it); values from the kernel's namespace, defaults otherwise.
    """
    from churnkit.runner import notebook_parameters

    declared = []
    if path is not None:
        try:
            declared = notebook_parameters(path)
        except Exception:
            declared = []
    names = [p.name for p in declared]
    names += [n for n in _assigned_names(_state.parameters_source) if n not in names]
    shell = _shell()
    ns = shell.user_ns if shell is not None else {}
    defaults = {p.name: p.default for p in declared}
    values = {}
    from churnkit.runner.params import looks_secret

    for name in names:
        if looks_secret(name):  # credentials come from the environment, never from a run's record
            continue
        value = ns.get(name, defaults.get(name))
        if isinstance(value, (str, int, float, bool, list, dict, type(None))):
            values[name] = value
    return values, declared


def _param_text(value: Any) -> str:
    from churnkit.runner import secrets

    return secrets.redact_text(value if isinstance(value, str) else json.dumps(value))


def start_run(notebook: str, config: Config | None = None):
    """This notebook's MLflow run: the runner's under ``churnkit run``; in JupyterLab a new run for every
    execution of the cell that calls it (the previous one ended FINISHED, or FAILED/KILLED as it went)."""
    quiet()  # before MLflow is imported: no terminal-only warnings or bars in cell outputs
    tracking.setup_tracking(config)
    if headless():
        return tracking.start_run(notebook, config)
    return start_interactive_run(notebook)


def start_interactive_run(notebook: str):
    """End the run this kernel holds (FINISHED) and start this execution's own run; returns it.

    Call after ``tracking.setup_tracking``. The new run logs the parameters cell's values as MLflow
    params and carries the tags a headless run has, plus ``churnkit.interactive`` and
    ``churnkit.lab_session``.
    """
    import mlflow

    from churnkit.runner import reproducibility_tags

    _end_open_run("FINISHED")
    while mlflow.active_run() is not None:  # a run opened with MLflow's own API in this kernel
        mlflow.end_run()
    path = notebook_path(notebook)
    _state.code_ids, _state.parameters_id = _read_cells(path)
    params, declared = parameter_values(path)
    tags = {
        "mlflow.runName": notebook,
        TAG + "notebook": notebook,
        TAG + "interactive": "true",
        TAG + "parameters": _param_text(params),
        TAG + "status": "RUNNING",
    }
    if lab_session():
        tags[TAG + "lab_session"] = lab_session()
    if path is not None:
        try:
            tags |= reproducibility_tags(path, declared, params)
        except Exception:  # a notebook outside git or unreadable: the run still starts
            pass
    run = mlflow.start_run(run_name=notebook, tags=tags)
    if params:
        mlflow.log_params({k: _param_text(v)[:6000] for k, v in params.items()})
    _state.run_id, _state.notebook, _state.path = run.info.run_id, notebook, path
    if _state.busy is None:  # the first call: the hooks did not see this cell start
        _state.busy = _current_cell()
    _state.start_cell = _state.busy.get("cell_id")
    _install_hooks()
    return run


def _cell_label(cell: dict | None) -> tuple[str | None, str]:
    """``("3", "code cell 3")`` from the notebook file's cell ids, else the execution count."""
    cell = cell or {}
    cid = cell.get("cell_id")
    if cid and cid in _state.code_ids:
        n = _state.code_ids.index(cid) + 1
        return str(n), f"code cell {n}"
    count = cell.get("execution_count")
    return None, f"the cell In [{count}]" if count else "a cell"


def _end_open_run(status: str, error: BaseException | None = None, cell: dict | None = None) -> None:
    """Record ``status`` (and the failing cell and error) on the kernel's open run and close it."""
    run_id = _state.run_id
    if run_id is None:
        return
    _state.run_id = None
    import mlflow

    from churnkit.runner import secrets

    c = tracking.client()
    try:
        if error is not None:
            number, label = _cell_label(cell)
            evalue = secrets.redact_text(str(error))[:3000]
            c.set_tag(run_id, TAG + "error", f"{type(error).__name__}: {evalue}")
            if number:
                c.set_tag(run_id, TAG + "failed_cell", number)
            c.set_tag(run_id, TAG + "failed_cell_label", label)
        c.set_tag(run_id, TAG + "status", status)
        active = mlflow.active_run()
        if active is not None and active.info.run_id == run_id:
            mlflow.end_run(status=status)
        else:
            c.set_terminated(run_id, status)
    except Exception as exc:  # the store is gone (e.g. at exit): say so, never raise from a hook
        print(f"churnkit: could not record run {run_id} as {status}: {exc}")


def _in_this_run(cell_id: str | None) -> bool:
    """False for a cell above the one that started the run: the next execution's parameters, not this run's."""
    if not cell_id or _state.start_cell not in _state.code_ids or cell_id not in _state.code_ids:
        return True
    return _state.code_ids.index(cell_id) >= _state.code_ids.index(_state.start_cell)


def _pre_run_cell(info) -> None:
    cell_id = getattr(info, "cell_id", None)
    shell = _shell()
    _state.busy = {"cell_id": cell_id, "execution_count": getattr(shell, "execution_count", None)}
    if cell_id and cell_id == _state.parameters_id:
        _state.parameters_source = info.raw_cell


def _post_run_cell(result) -> None:
    cell, _state.busy = _state.busy, None
    error = result.error_in_exec or result.error_before_exec
    if error is None or _state.run_id is None or not _in_this_run((cell or {}).get("cell_id")):
        return
    _end_open_run("KILLED" if isinstance(error, KeyboardInterrupt) else "FAILED", error, cell)


def _at_exit() -> None:
    """Kernel shut down or restarted: an idle kernel's run FINISHED; one stopped mid-cell KILLED."""
    if _state.busy is not None:
        _end_open_run("KILLED", SystemExit("the kernel was shut down while the cell ran"), _state.busy)
    else:
        _end_open_run("FINISHED")


def _on_sigterm(signum, frame) -> None:
    """A kernel that ignored the interrupt is sent SIGTERM before SIGKILL: record the run, then die as asked."""
    _at_exit()
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    os.kill(os.getpid(), signal.SIGTERM)


def _install_hooks() -> None:
    if _state.hooked:
        return
    _state.hooked = True
    shell = _shell()
    if shell is not None:
        shell.events.register("pre_run_cell", _pre_run_cell)
        shell.events.register("post_run_cell", _post_run_cell)
    atexit.register(_at_exit)  # registered after MLflow's own exit handler, so it runs first
    try:
        if signal.getsignal(signal.SIGTERM) in (signal.SIG_DFL, None):
            signal.signal(signal.SIGTERM, _on_sigterm)
    except ValueError:  # not the main thread: no signal handler, the atexit hook still records
        pass


def capture_cell(cell_id: str | None, source: str, execution_count: int | None = None) -> None:
    """Note the cell about to run, as IPython's ``pre_run_cell`` does (scripts and tests without a kernel)."""
    _state.busy = {"cell_id": cell_id, "execution_count": execution_count}
    if cell_id and cell_id == _state.parameters_id:
        _state.parameters_source = source


# --------------------------------------------------------------------------------------------------
# Which candidate 02-evaluate takes
# --------------------------------------------------------------------------------------------------

@dataclass
class SessionCandidate(Candidate):
    """A :class:`registry.Candidate` plus what 02-evaluate tells its reader: which run, and why that one."""

    model_kind: str = ""
    trained: str = ""  # UTC time the training run started
    where: str = ""  # "in this JupyterLab session", "headless (pipeline ...)", ...
    choice: str = ""  # why this candidate was taken

    def summary(self) -> str:
        tags = self.tags
        lines = [
            f"candidate  run {self.run_id} (01-train, model {self.model_kind or '?'})",
            f"trained    {self.trained} {self.where}",
            f"data       {tags.get(TAG + 'data_source', '?')} ({tags.get(TAG + 'rows', '?')} rows)",
            f"sha256     {tags.get(TAG + 'data_sha256', '?')}",
            f"chosen     {self.choice}",
        ]
        return "\n".join(lines)


def _when(ms: int | None) -> str:
    return (iso_from_ms(ms) or "?").replace("T", " ").replace("Z", " UTC")


def _where(run, mine: str) -> str:
    tags = run.data.tags
    if mine and tags.get(TAG + "lab_session") == mine:
        return "in this JupyterLab session"
    if tags.get(TAG + "interactive") == "true":
        return "in another JupyterLab session" if tags.get(TAG + "lab_session") else "interactively"
    pipeline = tags.get(TAG + "pipeline_id")
    return f"headless (run folder {pipeline})" if pipeline else "outside a notebook"


def _short(run) -> str:
    return f"run {run.info.run_id[:8]} ({run.info.status.lower()}, trained {_when(run.info.start_time)})"


def choose_candidate(train_run_id: str = "") -> tuple[str, str]:
    """``(run id, why)`` of the candidate 02-evaluate takes.

    An explicit ``train_run_id`` wins. In a JupyterLab session the newest candidate trained in this
    session is preferred over newer ones from elsewhere; if there is none, the newest candidate in the
    store is taken and the reason says so plainly. Headless, the newest candidate (as before).
    """
    from churnkit import registry

    if train_run_id:
        return train_run_id, "passed as train_run_id"
    mine = lab_session()
    if not mine:
        return registry.latest_candidate_run(), "the newest candidate in the store (train_run_id empty)"
    import mlflow

    tracking.setup_tracking()
    runs = mlflow.search_runs(filter_string=f"tags.`{TAG}role` = 'candidate'",
                              order_by=["attributes.start_time DESC"], max_results=200, output_format="list")
    usable = [r for r in runs if r.info.status not in FAILED_STATES and r.data.tags.get(TAG + "model_uri")]
    ours = [r for r in runs if r.data.tags.get(TAG + "lab_session") == mine]
    if not usable:
        return registry.latest_candidate_run(), ""  # raises the "run 01-train first" error
    mine_ok = next((r for r in usable if r.data.tags.get(TAG + "lab_session") == mine), None)
    if mine_ok is not None:
        why = "the newest candidate trained in this JupyterLab session"
        if usable[0] is not mine_ok:
            why += f"; a newer one exists {_where(usable[0], mine)}: {_short(usable[0])}, pass train_run_id to take it"
        if ours and ours[0] is not mine_ok:
            why += f"; this session's newest 01-train {_short(ours[0])} was not used"
        return mine_ok.info.run_id, why
    newest = usable[0]
    why = f"no usable candidate was trained in this JupyterLab session, so took the newest in the store ({_where(newest, mine)})"
    if ours:
        err = ours[0].data.tags.get(TAG + "error", "")
        why += f"; this session's 01-train {_short(ours[0])}" + (f" stopped with {err[:120]}" if err else "")
    return newest.info.run_id, why


def load_candidate(train_run_id: str = "") -> SessionCandidate:
    """Load the candidate 02-evaluate scores (see :func:`choose_candidate`) with where and why it was chosen.

    The evaluating run is tagged ``churnkit.candidate_run_id``.
    """
    import mlflow

    from churnkit import registry

    run_id, why = choose_candidate(train_run_id)
    base = registry.load_candidate(run_id)
    run = tracking.client().get_run(base.run_id)
    picked = SessionCandidate(
        **{f.name: getattr(base, f.name) for f in fields(Candidate)},
        model_kind=run.data.params.get("model", ""),
        trained=_when(run.info.start_time),
        where=_where(run, lab_session()),
        choice=why,
    )
    if mlflow.active_run() is not None:
        mlflow.set_tag(TAG + "candidate_run_id", base.run_id)
    return picked
