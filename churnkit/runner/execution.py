"""Headless notebook execution with papermill, and its record in runs/ and MLflow.

Each notebook run gets a folder ``runs/<UTC timestamp>-<short id>/`` (shared by the notebooks of one
pipeline), an output notebook ``NN-name.ipynb`` there, and one MLflow run (parameters logged, output
notebook attached, nested under the pipeline's parent run). The output notebook is written even when
a cell fails; the MLflow run is then marked FAILED and the error names the notebook and the cell.

Robustness (see :mod:`churnkit.runner.guard`): credentials are redacted from every write of the output
notebook; a run stopped by SIGTERM, a dead kernel or ``cell_timeout`` keeps its partial notebook with
the stopping cell marked, and its MLflow run ends KILLED or FAILED. Every run records what is needed
to reproduce it (git commit and dirty flag, package versions, parameters and defaults, data sha256),
and :func:`rerun_notebook` executes a past run again with the same parameters.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shlex
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from churnkit import tracking
from churnkit.clock import file_stamp
from churnkit.config import TAG, Config, load_config, scoped_environ
from churnkit.exceptions import NotebookExecutionError, RunNotFoundError, TrackingServerError
from churnkit.runner import secrets
from churnkit.runner.guard import mark_interrupted, redacted_writes
from churnkit.runner.params import Parameter, check_parameters, find_notebook, notebook_parameters
from churnkit.signals import RunTerminated, sigterm_raises

KILLED_BY = ("RunTerminated", "KeyboardInterrupt")  # interruptions that end a run KILLED, not FAILED


@dataclass
class RunResult:
    notebook: str
    output_path: Path
    run_id: str
    status: str
    parameters: dict
    seconds: float
    tags: dict = field(default_factory=dict)
    metrics: dict = field(default_factory=dict)
    redactions: dict = field(default_factory=dict)


def new_run_folder(config: Config) -> Path:
    stamp = file_stamp()
    folder = config.runs_dir / f"{stamp}-{uuid.uuid4().hex[:6]}"
    folder.mkdir(parents=True, exist_ok=False)
    return folder


def remove_if_empty(folder: Path) -> None:
    """Remove a run folder nothing was written to (a run that failed before its first notebook)."""
    with contextlib.suppress(OSError):
        folder.rmdir()  # only an empty folder: a partial notebook is a record and stays


def as_tracking_error(exc: BaseException, config: Config, note: str = "") -> BaseException:
    """``exc``, or a one-line TrackingServerError when it means the tracking server stopped answering."""
    err = tracking.server_error(exc, config) if isinstance(exc, Exception) else None
    if err is None:
        return exc
    return TrackingServerError(f"{err}{note}", uri=err.uri) if note else err


def failed_cell(output_path: str | os.PathLike) -> tuple[int | None, str | None, str | None]:
    """``(code cell number, ename, evalue)`` of the first failing cell of an executed notebook.

    Code cells are counted from 1 as the notebook's author sees them (papermill's injected cell is not
    counted); the last error output of the cell is the one reported. ``(None, None, None)`` when no
    cell failed or the file cannot be read.
    """
    try:
        nb = json.loads(Path(output_path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None, None, None
    code_index = 0
    for cell in nb.get("cells", []):
        tags = cell.get("metadata", {}).get("tags", [])
        if cell.get("cell_type") != "code" or "injected-parameters" in tags:
            continue
        code_index += 1
        errors = [o for o in cell.get("outputs", []) if o.get("output_type") == "error"]
        if errors:
            return code_index, errors[-1].get("ename"), errors[-1].get("evalue")
    return None, None, None


def run_notebook(
    notebook: str | os.PathLike,
    parameters: dict[str, Any] | None = None,
    *,
    config: Config | None = None,
    folder: Path | None = None,
    parent_run_id: str | None = None,
    pipeline_id: str | None = None,
    progress: bool | None = None,
    cell_timeout: int | None = None,
    tags: dict[str, str] | None = None,
    kernel=None,
) -> RunResult:
    """Execute a notebook headless with papermill and record it (output notebook + MLflow run).

    Parameters
    ----------
    notebook : str or path
        ``01-train``, ``train``, ``01-train.ipynb`` or the path of any notebook file.
    parameters : dict, optional
        Values for the notebook's ``parameters`` cell (strings are typed from the defaults).
    cell_timeout : int, optional
        Seconds a cell may run; a cell that takes longer is stopped and the run marked FAILED.
    tags : dict, optional
        Extra MLflow tags for the run (e.g. ``churnkit.rerun_of``).
    kernel : churnkit.runner.kernel.WarmKernel, optional
        A kernel started ahead in the notebook's folder (the pipeline's); it runs this notebook and is shut
        down after it. Without one papermill starts the kernel.

    Raises
    ------
    ParameterError
        Before any kernel starts, for unknown, mistyped or secret-looking parameters.
    NotebookExecutionError
        When a cell fails, times out, the kernel dies or the process gets SIGTERM; the (partial) output
        notebook is written first and the MLflow run marked FAILED (KILLED for SIGTERM and Ctrl-C).
    """
    pm = import_papermill()


    config = config or load_config()
    path = find_notebook(notebook)
    declared = notebook_parameters(path)
    params = check_parameters(dict(parameters or {}), declared, path.stem)
    client = tracking.client(config)  # the store first: a store that fails leaves no empty run folder
    own_folder = folder is None
    folder = folder or new_run_folder(config)
    pipeline_id = pipeline_id or folder.name
    output = folder / path.name
    run_tags = {
        "mlflow.runName": path.stem,
        TAG + "notebook": path.stem,
        TAG + "pipeline_id": pipeline_id,
        TAG + "output_notebook": str(output),
        TAG + "parameters": json.dumps(params),
        **reproducibility_tags(path, declared, params),
        **tracking.owner_tags(),
        **(tags or {}),
    }
    if cell_timeout:
        run_tags[TAG + "cell_timeout"] = str(cell_timeout)
    if parent_run_id:
        run_tags["mlflow.parentRunId"] = parent_run_id
    with sigterm_raises():
        try:
            run = client.create_run(tracking.setup_tracking(config), tags=run_tags)
            run_id = run.info.run_id
            for k, v in params.items():
                client.log_param(run_id, k, json.dumps(v) if not isinstance(v, str) else v)
        except BaseException as exc:
            if own_folder:
                remove_if_empty(folder)
            raise as_tracking_error(exc, config) from None
        env = {
            "MLFLOW_RUN_ID": run_id,
            "MLFLOW_TRACKING_URI": config.tracking_uri,
            "CHURNKIT_RUNS_DIR": str(config.runs_dir),
            "CHURNKIT_OUTPUT_NOTEBOOK": str(output),
            "CHURNKIT_PIPELINE_ID": pipeline_id,
            **KERNEL_ENV,
        }
        if kernel is not None and Path(kernel.cwd) != path.parent:  # started for another folder: not this one's
            kernel.shutdown()
            kernel = None
        started = time.perf_counter()
        status, error, interrupt = "FINISHED", None, None
        with redacted_writes(output) as redactions:
            try:
                with scoped_environ(env):
                    if kernel is not None:
                        try:
                            kernel.prepare(env)
                        except (TimeoutError, RuntimeError):  # it did not come up: papermill starts one as usual
                            kernel.shutdown()
                            kernel = None
                    pm.execute_notebook(
                        str(path),
                        str(output),
                        parameters=params,
                        kernel_name="python3",
                        progress_bar=sys.stderr.isatty() if progress is None else progress,
                        cwd=str(path.parent),
                        execution_timeout=cell_timeout,
                        report_mode=False,
                        # Stop the kernel at once when the run ends: a kernel busy in a timed-out or
                        # terminated cell would otherwise hold the exit for 5 s, past a CI runner's grace
                        # period before SIGKILL. The runner, not the kernel, closes the MLflow run.
                        shutdown_kernel="immediate",
                        config=kernel_config(),  # IPC sockets, not TCP: no unencrypted-TCP warning per kernel
                        **({"km": kernel.km} if kernel is not None else {}),
                    )
            except pm.PapermillExecutionError as exc:
                status = "FAILED"
                cell, _, _ = failed_cell(output)
                evalue = secrets.redact_text(str(exc.evalue))
                error = NotebookExecutionError(
                    f"notebook {path.stem} failed in code cell {cell if cell is not None else exc.exec_count} "
                    f"({exc.ename}: {evalue}); the output notebook with the error is {output}",
                    output_path=str(output), cell_index=cell, ename=exc.ename, evalue=evalue, run_id=run_id,
                )
            except BaseException as exc:  # timeout, kernel death, SIGTERM, Ctrl-C: keep the partial record
                interrupt = exc
                status = "KILLED" if isinstance(exc, (KeyboardInterrupt, RunTerminated)) else "FAILED"
                ename, evalue = _interruption(exc, cell_timeout)
                cell = failed_cell(output)[0] if mark_interrupted(output, ename, evalue) else None
                where = f"in code cell {cell}" if cell is not None else "before its first cell"
                error = NotebookExecutionError(
                    f"notebook {path.stem} was stopped {where} ({ename}: {evalue}); partial output notebook: {output}",
                    output_path=str(output), cell_index=cell, ename=ename, evalue=evalue, run_id=run_id,
                )
                if isinstance(exc, RunTerminated):
                    error.exit_code = 128 + exc.signum  # what a shell reports for a process ended by the signal
            finally:
                if kernel is not None:
                    kernel.shutdown()
        seconds = time.perf_counter() - started
        try:
            found = _finish(client, run_id, output, status, seconds, error, redactions)
        except Exception as exc:  # the server went away during the run: one line, the partial record named
            failure = as_tracking_error(exc, config, f"; the output notebook is {output}")
            if isinstance(interrupt, RunTerminated) and isinstance(failure, TrackingServerError):
                failure.exit_code = 128 + interrupt.signum  # still what a shell reports for the signal
            raise failure from None
    if isinstance(interrupt, KeyboardInterrupt):
        raise interrupt
    if error is not None:
        raise error
    try:
        final = client.get_run(run_id)
    except Exception as exc:
        raise as_tracking_error(exc, config) from None
    return RunResult(path.stem, output, run_id, status, params, seconds, dict(final.data.tags),
                     dict(final.data.metrics), found)


#: Environment of every kernel the runner starts, besides the run's own variables.
KERNEL_ENV = {
    "MPLBACKEND": "module://matplotlib_inline.backend_inline",  # figures shown in the output notebook
    "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
}


def import_papermill():
    """papermill, imported without ``rfc3987_syntax`` when nothing in this process has loaded jsonschema yet.

    papermill imports nbformat, whose validator imports jsonschema; jsonschema's format checkers then import
    ``rfc3987_syntax``, which compiles some forty Lark grammars: about 2 s of CPU, two thirds of importing
    papermill, paid by every ``churnkit run`` and ``pipeline``. Neither nbformat, nbclient nor papermill checks
    formats (they validate without a format checker), so the grammars are never used here. The import is made
    to fail for the moment jsonschema loads, and allowed again after: the one effect left in this process is
    that jsonschema's ``iri`` and ``iri-reference`` formats go unchecked, as they do without that package.
    """
    import sys

    if "jsonschema" in sys.modules or "rfc3987_syntax" in sys.modules:
        import papermill

        return papermill
    sys.modules["rfc3987_syntax"] = None  # an ImportError for ``import rfc3987_syntax``
    try:
        import papermill
    finally:
        if sys.modules.get("rfc3987_syntax", 0) is None:
            del sys.modules["rfc3987_syntax"]
    return papermill


def kernel_config():
    """traitlets config for kernels churnkit starts: IPC sockets in Jupyter's private runtime folder.

    Over the default TCP transport every kernel logs "Kernel is running over TCP without encryption"; a
    kernel on this machine needs no network port at all. The socket path is absolute because the kernel
    runs in the notebook's folder, not the caller's.
    """
    import uuid

    from jupyter_core.paths import jupyter_runtime_dir
    from traitlets.config import Config as TraitletsConfig

    runtime = Path(jupyter_runtime_dir())
    runtime.mkdir(mode=0o700, parents=True, exist_ok=True)
    sockets = runtime / f"kernel-{uuid.uuid4().hex[:12]}-ipc"
    return TraitletsConfig({"KernelManager": {"transport": "ipc", "ip": str(sockets)}})


def _interruption(exc: BaseException, cell_timeout: int | None) -> tuple[str, str]:
    """``(ename, evalue)`` for a run stopped from outside its cells, in words a reviewer acts on."""
    from nbclient.exceptions import CellTimeoutError, DeadKernelError

    if isinstance(exc, CellTimeoutError):
        return "CellTimeoutError", f"the cell ran longer than the cell timeout ({cell_timeout} s) and was stopped"
    if isinstance(exc, DeadKernelError):
        return "DeadKernelError", "the kernel died while the cell ran (crash, os._exit, or killed for lack of memory)"
    if isinstance(exc, RunTerminated):
        return "RunTerminated", f"the run {exc} (a cancelled CI job, `kill`) and was stopped"
    if isinstance(exc, KeyboardInterrupt):
        return "KeyboardInterrupt", "the run was interrupted (Ctrl-C)"
    return type(exc).__name__, secrets.redact_text(str(exc))


def _finish(client, run_id: str, output: Path, status: str, seconds: float,
            error: NotebookExecutionError | None = None, redactions: dict | None = None) -> dict:
    """Attach the output notebook and close the MLflow run; returns the redactions by kind."""

    found = dict(redactions or {})
    if output.exists():
        # Every write already went through redaction; this pass also covers a write papermill might
        # make outside its I/O layer in a future version. It finds nothing in the normal case.
        for kind, n in secrets.redact_file(output).items():
            found[kind] = max(found.get(kind, 0), n)
        client.log_artifact(run_id, str(output), "notebook")
    client.log_metric(run_id, "notebook_seconds", seconds)
    if found:
        client.set_tag(run_id, TAG + "redactions", json.dumps(found, sort_keys=True))
    if error is not None:
        client.set_tag(run_id, TAG + "error", f"{error.ename}: {error.evalue}"[:4000])
        if error.cell_index is not None:
            client.set_tag(run_id, TAG + "failed_cell", str(error.cell_index))
    client.set_tag(run_id, TAG + "status", status)
    client.set_terminated(run_id, "KILLED" if status == "KILLED" else status)
    return found


def reproducibility_tags(path: Path, declared: list[Parameter], params: dict[str, Any]) -> dict[str, str]:
    """What a run needs to be reproduced: commit, dirty flag, packages, notebook and data digests, seed.

    ``churnkit.defaults`` holds the notebook's declared defaults, so the effective parameters of a run
    are ``defaults | parameters`` even after the notebook changes.
    """
    from churnkit.data import file_sha256

    commit, dirty = tracking.git_commit(path.parent)
    defaults = {p.name: p.default for p in declared}
    effective = defaults | params
    tags = {
        TAG + "git_commit": commit,
        TAG + "git_dirty": str(dirty).lower(),
        TAG + "packages": json.dumps(tracking.package_versions()),
        TAG + "notebook_path": str(path),
        TAG + "notebook_sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
        TAG + "defaults": json.dumps(defaults),
    }
    if "seed" in effective:
        tags[TAG + "seed"] = str(effective["seed"])
    data_path = effective.get("data_path")
    if isinstance(data_path, str) and data_path and Path(data_path).is_file():
        tags[TAG + "data_sha256"] = file_sha256(data_path)
    return tags


def rerun_parameters(run_id: str, config: Config | None = None) -> tuple[Path, dict[str, Any]]:
    """The notebook and the parameters of a past notebook run, from its MLflow tags.

    ``run_id`` may be the unique prefix that `churnkit runs` shows.

    Raises
    ------
    RunNotFoundError
        The run is not in the tracking store, is a pipeline run, or was not started by the runner.
    """

    run = tracking.find_run(run_id, config)
    tags = run.data.tags
    name, raw = tags.get(TAG + "notebook"), tags.get(TAG + "parameters")
    if name == "pipeline":
        words = ["churnkit", "pipeline"]
        for k, v in json.loads(raw or "{}").items():
            words += ["-p", k, v if isinstance(v, str) else json.dumps(v)]
        raise RunNotFoundError(f"run {run_id!r} is a pipeline run, not a notebook run; run it again with "
                               f"`{shlex.join(words)}`")
    if not name or raw is None:
        raise RunNotFoundError(f"run {run_id!r} was not started by `churnkit run` (no churnkit.notebook/parameters "
                               "tags); pass the id of a notebook run from `churnkit runs`")
    source = tags.get(TAG + "notebook_path", "")
    return (Path(source) if source and Path(source).is_file() else find_notebook(name)), json.loads(raw)


def rerun_notebook(run_id: str, overrides: dict[str, Any] | None = None, **options) -> RunResult:
    """Execute a past run's notebook again with the same parameters, into a new run folder.

    ``overrides`` replace single parameters; ``options`` are those of :func:`run_notebook`. The new run
    is tagged ``churnkit.rerun_of`` with the original run id.
    """

    run_id = tracking.find_run(run_id, options.get("config")).info.run_id  # a prefix becomes the full id
    path, params = rerun_parameters(run_id, options.get("config"))
    tags = {TAG + "rerun_of": run_id} | options.pop("tags", {})
    return run_notebook(path, params | dict(overrides or {}), tags=tags, **options)
