"""Headless notebook execution with papermill, and the audit trail in runs/.

Each notebook run gets a folder ``runs/<UTC timestamp>-<short id>/`` (shared by the notebooks of one
pipeline), an output notebook ``NN-name.ipynb`` there, and one MLflow run (parameters logged, output
notebook attached, nested under the pipeline's parent run). The output notebook is written even when
a cell fails; the MLflow run is then marked FAILED and the error names the notebook and the cell.

Robustness (see churnkit/_runguard.py): credentials are redacted from every write of the output
notebook; a run stopped by SIGTERM, a dead kernel or ``cell_timeout`` keeps its partial notebook with
the stopping cell marked, and its MLflow run ends KILLED or FAILED. Every run records what is needed
to reproduce it (git commit and dirty flag, package versions, parameters and defaults, data sha256),
and :func:`rerun_notebook` executes a past run again with the same parameters.
"""

from __future__ import annotations

import ast
import hashlib
import io
import json
import os
import shlex
import sys
import time
import tokenize
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from churnkit import secrets
from churnkit._runguard import RunTerminated, mark_interrupted, redacted_writes, sigterm_raises
from churnkit.config import Config, load_config, scoped_environ
from churnkit.exceptions import NotebookExecutionError, NotebookNotFoundError, ParameterError, RunNotFoundError

SECRET_WORDS = ("token", "secret", "password", "passwd", "key", "credential")
PIPELINE_STEPS = ("01-train", "02-evaluate", "03-deploy", "04-rollout")
KILLED_BY = ("RunTerminated", "KeyboardInterrupt")  # interruptions that end a run KILLED, not FAILED


def notebooks_dir() -> Path:
    """Where the kit's notebooks live: ``CHURNKIT_NOTEBOOKS_DIR`` or ``notebooks/`` beside the package."""
    env = os.environ.get("CHURNKIT_NOTEBOOKS_DIR")
    return Path(env) if env else Path(__file__).resolve().parent.parent / "notebooks"


def find_notebook(name: str | os.PathLike) -> Path:
    """Resolve ``01-train``, ``01-train.ipynb``, ``train`` or a path to a notebook file."""
    p = Path(name)
    if p.suffix == ".ipynb" and p.exists():
        return p.resolve()
    folder = notebooks_dir()
    available = sorted(q.stem for q in folder.glob("[0-9][0-9]-*.ipynb"))
    stem = p.stem if p.suffix == ".ipynb" else str(name)
    for cand in available:
        if stem == cand or cand.split("-", 1)[1] == stem:
            return folder / f"{cand}.ipynb"
    raise NotebookNotFoundError(f"no notebook named {str(name)!r}; available: {', '.join(map(repr, available))}")


# --------------------------------------------------------------------------------------------------
# Parameters
# --------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Parameter:
    name: str
    default: Any
    comment: str
    source: str

    @property
    def type_name(self) -> str:
        return type(self.default).__name__


def _parameters_cell(nb: dict, path: Path) -> dict:
    tagged = [c for c in nb["cells"] if "parameters" in c.get("metadata", {}).get("tags", [])]
    if len(tagged) != 1:
        raise ParameterError(f"notebook {str(path)!r} has {len(tagged)} cells tagged 'parameters'; it needs exactly one")
    return tagged[0]


def notebook_parameters(notebook: str | os.PathLike) -> list[Parameter]:
    """The notebook's declared parameters: name, literal default, and the comment on its line."""
    path = find_notebook(notebook)
    nb = json.loads(path.read_text())
    cell = _parameters_cell(nb, path)
    source = "".join(cell["source"]) if isinstance(cell["source"], list) else cell["source"]
    try:
        body = ast.parse(source).body
    except SyntaxError as exc:
        raise ParameterError(f"the parameters cell of {path.name} is not valid Python (line {exc.lineno}: {exc.msg}); "
                             "it holds literal assignments only, e.g. seed = 0") from None
    comments: dict[int, str] = {}
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.COMMENT:
            comments[tok.start[0]] = tok.string.lstrip("#").strip()
    params = []
    for node in body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            try:
                default = ast.literal_eval(node.value)
            except (ValueError, TypeError):
                raise ParameterError(f"parameter {node.targets[0].id!r} in {path.name} is not a literal "
                                     f"({ast.get_source_segment(source, node.value)!r}); use a literal default",
                                     name=node.targets[0].id) from None
            params.append(Parameter(node.targets[0].id, default, comments.get(node.lineno, ""), ast.get_source_segment(source, node.value)))
    return params


def looks_secret(name: str) -> bool:
    low = name.lower()
    return any(w in low for w in SECRET_WORDS)


def _coerce(raw: Any, default: Any, name: str) -> Any:
    if not isinstance(raw, str):
        value = raw
    elif isinstance(default, bool):
        low = raw.strip().lower()
        if low not in ("true", "false", "1", "0", "yes", "no"):
            raise ParameterError(f"parameter {name!r} expects true/false, got {raw!r}", name=name)
        value = low in ("true", "1", "yes")
    elif isinstance(default, int):
        try:
            value = int(raw)
        except ValueError:
            raise ParameterError(f"parameter {name!r} expects an integer, got {raw!r}", name=name) from None
    elif isinstance(default, float):
        try:
            value = float(raw)
        except ValueError:
            raise ParameterError(f"parameter {name!r} expects a number, got {raw!r}", name=name) from None
    elif isinstance(default, list):
        text = raw.strip()
        if text.startswith("["):
            try:
                value = json.loads(text)
            except json.JSONDecodeError:
                raise ParameterError(f"parameter {name!r} expects a JSON list or comma-separated names, got {raw!r}", name=name) from None
        else:
            value = [v.strip() for v in text.split(",") if v.strip()]
    else:
        value = raw
    if default is not None and not isinstance(value, type(default)) and not (isinstance(default, float) and isinstance(value, int)):
        raise ParameterError(
            f"parameter {name!r} expects {type(default).__name__} (default {default!r}), got {value!r}", name=name
        )
    return value


def check_parameters(parameters: dict[str, Any], declared: list[Parameter], notebook: str = "") -> dict[str, Any]:
    """Validate and type parameters against the notebook's declarations, before any kernel starts.

    Raises
    ------
    ParameterError
        Unknown name (lists the valid ones), a value of the wrong type, or a name or value that looks
        like a credential (credentials come from the environment or the cloud SDK's default chain).
    """
    by_name = {p.name: p for p in declared}
    out = {}
    for name, raw in parameters.items():
        if looks_secret(name):
            raise ParameterError(
                f"parameter {name!r} looks like a credential; credentials are never notebook parameters: "
                "set them in the environment or the cloud SDK's default credential chain",
                name=name,
            )
        if name not in by_name:
            valid = sorted(by_name)
            where = f" of {notebook}" if notebook else ""
            raise ParameterError(f"unknown parameter {name!r}; valid parameters{where}: {', '.join(valid)}", name=name, valid=valid)
        out[name] = _coerce(raw, by_name[name].default, name)
        text = out[name] if isinstance(out[name], str) else json.dumps(out[name])
        found = secrets.find_secrets(text)
        if found:
            raise ParameterError(
                f"parameter {name!r} has a value that looks like a credential ({found[0].kind}): "
                f"{secrets.redact_text(text)!r}; credentials are never notebook parameters: set them in the "
                "environment or the cloud SDK's default credential chain",
                name=name,
            )
    return out


# --------------------------------------------------------------------------------------------------
# Execution
# --------------------------------------------------------------------------------------------------

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
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    folder = config.runs_dir / f"{stamp}-{uuid.uuid4().hex[:6]}"
    folder.mkdir(parents=True, exist_ok=False)
    return folder


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

    Raises
    ------
    ParameterError
        Before any kernel starts, for unknown, mistyped or secret-looking parameters.
    NotebookExecutionError
        When a cell fails, times out, the kernel dies or the process gets SIGTERM; the (partial) output
        notebook is written first and the MLflow run marked FAILED (KILLED for SIGTERM and Ctrl-C).
    """
    import papermill as pm

    from churnkit import registry
    from churnkit.session import kernel_config

    config = config or load_config()
    path = find_notebook(notebook)
    declared = notebook_parameters(path)
    params = check_parameters(dict(parameters or {}), declared, path.stem)
    folder = folder or new_run_folder(config)
    pipeline_id = pipeline_id or folder.name
    output = folder / path.name
    registry.setup_tracking(config)
    client = registry.client()
    run_tags = {
        "mlflow.runName": path.stem,
        registry.TAG + "notebook": path.stem,
        registry.TAG + "pipeline_id": pipeline_id,
        registry.TAG + "output_notebook": str(output),
        registry.TAG + "parameters": json.dumps(params),
        **reproducibility_tags(path, declared, params),
        **(tags or {}),
    }
    if cell_timeout:
        run_tags[registry.TAG + "cell_timeout"] = str(cell_timeout)
    if parent_run_id:
        run_tags["mlflow.parentRunId"] = parent_run_id
    with sigterm_raises():
        run = client.create_run(registry.setup_tracking(config), tags=run_tags)
        run_id = run.info.run_id
        for k, v in params.items():
            client.log_param(run_id, k, json.dumps(v) if not isinstance(v, str) else v)
        env = {
            "MLFLOW_RUN_ID": run_id,
            "MLFLOW_TRACKING_URI": config.tracking_uri,
            "CHURNKIT_RUNS_DIR": str(config.runs_dir),
            "CHURNKIT_OUTPUT_NOTEBOOK": str(output),
            "CHURNKIT_PIPELINE_ID": pipeline_id,
            "MPLBACKEND": "module://matplotlib_inline.backend_inline",  # figures shown in the output notebook
            "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
        }
        started = time.perf_counter()
        status, error, interrupt = "FINISHED", None, None
        with redacted_writes(output) as redactions:
            try:
                with scoped_environ(env):
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
        seconds = time.perf_counter() - started
        found = _finish(client, run_id, output, status, seconds, error, redactions)
    if isinstance(interrupt, KeyboardInterrupt):
        raise interrupt
    if error is not None:
        raise error
    final = client.get_run(run_id)
    return RunResult(path.stem, output, run_id, status, params, seconds, dict(final.data.tags),
                     dict(final.data.metrics), found)


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
    from churnkit import registry

    found = dict(redactions or {})
    if output.exists():
        # Every write already went through redaction; this pass also covers a write papermill might
        # make outside its I/O layer in a future version. It finds nothing in the normal case.
        for kind, n in secrets.redact_file(output).items():
            found[kind] = max(found.get(kind, 0), n)
        client.log_artifact(run_id, str(output), "notebook")
    client.log_metric(run_id, "notebook_seconds", seconds)
    if found:
        client.set_tag(run_id, registry.TAG + "redactions", json.dumps(found, sort_keys=True))
    if error is not None:
        client.set_tag(run_id, registry.TAG + "error", f"{error.ename}: {error.evalue}"[:4000])
        if error.cell_index is not None:
            client.set_tag(run_id, registry.TAG + "failed_cell", str(error.cell_index))
    client.set_tag(run_id, registry.TAG + "status", status)
    client.set_terminated(run_id, "KILLED" if status == "KILLED" else status)
    return found


def reproducibility_tags(path: Path, declared: list[Parameter], params: dict[str, Any]) -> dict[str, str]:
    """What a run needs to be reproduced: commit, dirty flag, packages, notebook and data digests, seed.

    ``churnkit.defaults`` holds the notebook's declared defaults, so the effective parameters of a run
    are ``defaults | parameters`` even after the notebook changes.
    """
    from churnkit import registry
    from churnkit.data import file_sha256

    commit, dirty = registry.git_commit(path.parent)
    defaults = {p.name: p.default for p in declared}
    effective = defaults | params
    tags = {
        registry.TAG + "git_commit": commit,
        registry.TAG + "git_dirty": str(dirty).lower(),
        registry.TAG + "packages": json.dumps(registry.package_versions()),
        registry.TAG + "notebook_path": str(path),
        registry.TAG + "notebook_sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
        registry.TAG + "defaults": json.dumps(defaults),
    }
    if "seed" in effective:
        tags[registry.TAG + "seed"] = str(effective["seed"])
    data_path = effective.get("data_path")
    if isinstance(data_path, str) and data_path and Path(data_path).is_file():
        tags[registry.TAG + "data_sha256"] = file_sha256(data_path)
    return tags


def rerun_parameters(run_id: str, config: Config | None = None) -> tuple[Path, dict[str, Any]]:
    """The notebook and the parameters of a past notebook run, from its MLflow tags.

    ``run_id`` may be the unique prefix that `churnkit runs` shows.

    Raises
    ------
    RunNotFoundError
        The run is not in the tracking store, is a pipeline run, or was not started by the runner.
    """
    from churnkit import registry
    from churnkit.audit import find_run

    run = find_run(run_id, config)
    tags = run.data.tags
    name, raw = tags.get(registry.TAG + "notebook"), tags.get(registry.TAG + "parameters")
    if name == "pipeline":
        words = ["churnkit", "pipeline"]
        for k, v in json.loads(raw or "{}").items():
            words += ["-p", k, v if isinstance(v, str) else json.dumps(v)]
        raise RunNotFoundError(f"run {run_id!r} is a pipeline run, not a notebook run; run it again with "
                               f"`{shlex.join(words)}`")
    if not name or raw is None:
        raise RunNotFoundError(f"run {run_id!r} was not started by `churnkit run` (no churnkit.notebook/parameters "
                               "tags); pass the id of a notebook run from `churnkit runs`")
    source = tags.get(registry.TAG + "notebook_path", "")
    return (Path(source) if source and Path(source).is_file() else find_notebook(name)), json.loads(raw)


def rerun_notebook(run_id: str, overrides: dict[str, Any] | None = None, **options) -> RunResult:
    """Execute a past run's notebook again with the same parameters, into a new run folder.

    ``overrides`` replace single parameters; ``options`` are those of :func:`run_notebook`. The new run
    is tagged ``churnkit.rerun_of`` with the original run id.
    """
    from churnkit import registry
    from churnkit.audit import find_run

    run_id = find_run(run_id, options.get("config")).info.run_id  # a prefix becomes the full id
    path, params = rerun_parameters(run_id, options.get("config"))
    tags = {registry.TAG + "rerun_of": run_id} | options.pop("tags", {})
    return run_notebook(path, params | dict(overrides or {}), tags=tags, **options)


def split_parameters(parameters: dict[str, Any], steps: tuple[str, ...]) -> dict[str, dict[str, Any]]:
    """Route each pipeline parameter to every step that declares it; unknown names are errors."""
    declared = {s: notebook_parameters(s) for s in steps}
    out: dict[str, dict[str, Any]] = {s: {} for s in steps}
    valid = sorted({p.name for ps in declared.values() for p in ps})
    for name, value in parameters.items():
        takers = [s for s in steps if any(p.name == name for p in declared[s])]
        if looks_secret(name) or not takers:
            check_parameters({name: value}, [p for ps in declared.values() for p in ps], "the pipeline")
            raise ParameterError(f"unknown parameter {name!r}; valid: {', '.join(valid)}", name=name, valid=valid)
        for s in takers:
            out[s].update(check_parameters({name: value}, declared[s], s))
    return out


@dataclass
class PipelineResult:
    pipeline_id: str
    folder: Path
    steps: list[RunResult]
    run_id: str

    def step(self, name: str) -> RunResult | None:
        return next((s for s in self.steps if s.notebook == name), None)


def run_pipeline(
    parameters: dict[str, Any] | None = None,
    *,
    config: Config | None = None,
    progress: bool | None = None,
    echo=print,
    steps: tuple[str, ...] = PIPELINE_STEPS,
) -> PipelineResult:
    """The monthly job in one run folder and parent MLflow run: train, evaluate (gate, register), then
    deploy when a version was registered and roll out when it is a challenger and a champion serves.

    ``steps`` limits the job to a prefix of :data:`PIPELINE_STEPS` (e.g. train and evaluate only).
    """
    from churnkit import registry

    if tuple(steps) != PIPELINE_STEPS[:len(steps)] or not steps:
        raise ParameterError(f"pipeline steps {tuple(steps)!r} are not a prefix of {PIPELINE_STEPS!r}", name="steps")
    config = config or load_config()
    per_step = split_parameters(dict(parameters or {}), tuple(steps))
    folder = new_run_folder(config)
    exp_id = registry.setup_tracking(config)
    client = registry.client()
    parent = client.create_run(exp_id, tags={"mlflow.runName": "pipeline", registry.TAG + "pipeline_id": folder.name,
                                             registry.TAG + "notebook": "pipeline",
                                             registry.TAG + "parameters": json.dumps(parameters or {})})
    results: list[RunResult] = []
    status = "FAILED"
    with sigterm_raises():  # SIGTERM between two steps also ends the parent run KILLED
        try:
            for step in steps:
                skipped = _skip_reason(step, results)
                if skipped:
                    echo(f"· {step} skipped: {skipped}")
                    continue
                params = dict(per_step[step])
                if step == "02-evaluate" and results:
                    params["train_run_id"] = results[0].run_id
                echo(f"▶ {step} → {folder / (step + '.ipynb')}")
                res = run_notebook(step, params, config=config, folder=folder, parent_run_id=parent.info.run_id,
                                   pipeline_id=folder.name, progress=progress)
                echo(f"  ✓ {step} finished in {res.seconds:.1f} s")
                results.append(res)
            status = "FINISHED"
        except BaseException as exc:
            if isinstance(exc, (KeyboardInterrupt, RunTerminated)) or getattr(exc, "ename", "") in KILLED_BY:
                status = "KILLED"
            raise
        finally:
            client.set_tag(parent.info.run_id, registry.TAG + "status", status)
            client.set_terminated(parent.info.run_id, status)
    return PipelineResult(folder.name, folder, results, parent.info.run_id)


def _skip_reason(step: str, results: list[RunResult]) -> str:
    """Why ``step`` does not run: deploying needs a registered version, rolling out a challenger and a
    serving endpoint (03-deploy's live weights)."""
    from churnkit import registry

    done = {r.notebook: r for r in results}
    ev = done.get("02-evaluate")
    version = ev.tags.get(registry.TAG + "registered_version", "") if ev else ""
    if step == "03-deploy" and not version:
        return "no version was registered"
    if step == "04-rollout":
        aliases = json.loads(ev.tags.get(registry.TAG + "aliases", "{}")) if ev else {}
        if not version or str(aliases.get("challenger", "")) != version:
            return "no challenger was registered"
        deployed = done.get("03-deploy")
        weights = json.loads(deployed.tags.get(registry.TAG + "endpoint_weights", "{}")) if deployed else {}
        if not any(int(w) > 0 for w in weights.values()):
            return "no champion serves on the endpoint"
    return ""


def pipeline_summary(result: PipelineResult) -> dict:
    """What CI and people need from a pipeline run: metrics, gate verdict, the registered version."""
    from churnkit import registry

    ev = result.step("02-evaluate")
    metrics = {k.removeprefix("holdout_"): v for k, v in (ev.metrics if ev else {}).items()
               if k.startswith("holdout_")}
    champion = {k.removeprefix("champion_holdout_"): v for k, v in (ev.metrics if ev else {}).items()
                if k.startswith("champion_holdout_")}
    gate = json.loads(ev.tags.get(registry.TAG + "gate", "{}")) if ev else {}
    version = (ev.tags.get(registry.TAG + "registered_version") if ev else "") or None
    aliases = json.loads(ev.tags.get(registry.TAG + "aliases", "{}")) if ev else {}
    lines = [f"pipeline {result.pipeline_id}: {result.folder}"]
    if metrics:
        shown = ("roc_auc", "pr_auc", "log_loss", "brier", "lift_top_decile")
        lines.append("holdout  " + "  ".join(f"{k} {metrics[k]:.4f}" for k in shown if k in metrics))
    if champion:
        lines.append("champion " + "  ".join(f"{k} {champion[k]:.4f}" for k in ("roc_auc", "pr_auc") if k in champion))
    if gate:
        if gate.get("passed"):
            lines.append(f"gate     PASSED (roc_auc {gate['challenger_auc']:.4f} > {gate['auc_threshold']})")
        else:
            lines.append("gate     REFUSED")
            lines += [f"  - {r}" for r in gate.get("reasons", [])]
    model_name = ev.parameters.get("model_name", "churn") if ev else "churn"
    if version:
        role = next((a for a, v in aliases.items() if str(v) == version), "registered")
        lines.append(f"model    registered {model_name} v{version} as {role}")
    else:
        lines.append(f"model    nothing registered; {model_name!r} registry unchanged (aliases {aliases})")
    dep, out = result.step("03-deploy"), result.step("04-rollout")
    deployment = rollout = None
    if dep is not None:
        deployment = {k: dep.tags.get(registry.TAG + k, "") for k in ("deployed_uri", "deploy_target", "endpoint")}
        deployment["weights"] = json.loads(dep.tags.get(registry.TAG + "endpoint_weights", "{}"))
        lines.append(f"deploy   {deployment['deployed_uri']} on {deployment['deploy_target']} endpoint "
                     f"{deployment['endpoint']!r}: weights {deployment['weights']}")
    if out is not None:
        rollout = {"decision": out.tags.get(registry.TAG + "rollout_decision", ""),
                   "reason": out.tags.get(registry.TAG + "rollout_reason", ""), "run_id": out.run_id}
        lines.append(f"rollout  {rollout['decision']}: {rollout['reason']}")
    return {
        "pipeline_id": result.pipeline_id,
        "folder": str(result.folder),
        "notebooks": {s.notebook: str(s.output_path) for s in result.steps},
        "metrics": metrics,
        "champion_metrics": champion or None,
        "gate": gate,
        "registered_version": version,
        "aliases": aliases,
        "deployment": deployment,
        "rollout": rollout,
        "text": "\n".join(lines),
    }
