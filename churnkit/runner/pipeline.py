"""The monthly job: train, evaluate (gate, register), deploy and roll out, in one run folder.

With ``score_target`` other than ``"none"`` the job ends by scoring the customer base with the champion
(06-score: ``local`` or ``spark`` here, or a cloud's batch service: ``sagemaker``, ``azureml``, ``vertex``).

Each step is a notebook run (:func:`churnkit.runner.execution.run_notebook`) nested under one parent
MLflow run; a step runs only when the one before left it something to do. 03-deploy and 04-rollout get
the version 02-evaluate registered by number (``model_version``), and pipelines on one model in one runs
folder run one at a time (:mod:`churnkit.runner.lock`).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from churnkit import tracking
from churnkit.config import DEFAULT_MODEL_NAME, TAG, Config, load_config
from churnkit.exceptions import ParameterError
from churnkit.runner.execution import (
    KERNEL_ENV,
    KILLED_BY,
    RunResult,
    as_tracking_error,
    new_run_folder,
    remove_if_empty,
    run_notebook,
)
from churnkit.runner.approval import approved_release, hand_off
from churnkit.runner.kernel import WarmKernel
from churnkit.runner.lock import pipeline_lock
from churnkit.runner.params import find_notebook, notebook_parameters, split_parameters
from churnkit.signals import RunTerminated, sigterm_raises

PIPELINE_STEPS = ("01-train", "02-evaluate", "03-deploy", "04-rollout")
SCORE_STEP = "06-score"
#: Where the job's last step scores the base: nowhere, an engine, or a cloud's batch service.
SCORE_TARGETS = ("none", "local", "spark", "sagemaker", "azureml", "vertex")


def score_step(parameters: dict[str, Any]) -> tuple[dict[str, Any], str]:
    """``parameters`` without ``score_target``, and the target (``"none"`` when absent).

    Raises
    ------
    ParameterError
        A target not in :data:`SCORE_TARGETS`.
    """
    params = dict(parameters)
    target = str(params.pop("score_target", "none") or "none").strip().lower()
    if target not in SCORE_TARGETS:
        raise ParameterError(f"score_target {target!r} is not one of {', '.join(SCORE_TARGETS)}; 'none' ends the "
                             "pipeline after the rollout", name="score_target", valid=list(SCORE_TARGETS))
    return params, target


@dataclass
class PipelineResult:
    pipeline_id: str
    folder: Path
    steps: list[RunResult]
    run_id: str
    #: the approve command the registered candidate waits for (team mode with approval required), else ""
    awaiting: str = ""

    def step(self, name: str) -> RunResult | None:
        return next((s for s in self.steps if s.notebook == name), None)


def run_pipeline(
    parameters: dict[str, Any] | None = None,
    *,
    config: Config | None = None,
    progress: bool | None = None,
    echo=print,
    steps: tuple[str, ...] = PIPELINE_STEPS,
    wait: float = 0.0,
    approved: str = "",
) -> PipelineResult:
    """The monthly job in one run folder and parent MLflow run: train, evaluate (gate, register), then
    deploy when a version was registered and roll out when it is a challenger and a champion serves.

    ``steps`` limits the job to a prefix of :data:`PIPELINE_STEPS` (e.g. train and evaluate only).
    ``wait`` is how long to queue behind another pipeline on the same model before giving up.
    ``approved`` (a candidate version number) deploys and rolls out the production version approved
    from it instead (team mode: the second half of a pipeline that stopped "awaiting approval").

    Raises
    ------
    PipelineLockedError
        Another pipeline on the same model (same runs folder) is running; the message names it.
    """

    if tuple(steps) != PIPELINE_STEPS[:len(steps)] or not steps:
        raise ParameterError(f"pipeline steps {tuple(steps)!r} are not a prefix of {PIPELINE_STEPS!r}", name="steps")
    config = config or load_config()
    routed, target = score_step(dict(parameters or {}))
    split_for = PIPELINE_STEPS if approved else tuple(steps)  # --approved: the monthly job's -p list, checked whole
    if target == "none":
        per_step = split_parameters(routed, split_for)
    else:  # a name the training steps declare is theirs (01-train's month, model); 06-score gets the others
        known = {p.name for s in split_for for p in notebook_parameters(s)}
        per_step = split_parameters({k: v for k, v in routed.items() if k in known}, split_for)
        per_step |= split_parameters({k: v for k, v in routed.items() if k not in known}, (SCORE_STEP,))
    if approved:  # training parameters were checked, then not needed
        steps = PIPELINE_STEPS[2:]
        per_step = {step: per_step[step] for step in (*steps, SCORE_STEP) if step in per_step}
    if target != "none":  # the month's table, unless 06-score is given its own input
        steps = (*steps, SCORE_STEP)
        per_step[SCORE_STEP]["engine"] = target
        if "input" not in per_step[SCORE_STEP] and routed.get("data_path"):
            per_step[SCORE_STEP]["input"] = routed["data_path"]
    model_name = str(next((p["model_name"] for p in per_step.values() if "model_name" in p), DEFAULT_MODEL_NAME))
    if approved:  # by number: the production version approved from this candidate, nothing else
        production, version = approved_release(model_name, approved, config)
        for step in steps:
            if step != SCORE_STEP:  # 06-score scores the champion after the rollout (_champion_uri)
                per_step[step].update(model_name=production, model_version=version)
    with pipeline_lock(config, model_name, wait=wait, echo=echo):
        return _run_locked(parameters, per_step, config, progress, echo, steps)


def _run_locked(parameters, per_step, config: Config, progress, echo, steps) -> PipelineResult:
    kernels: dict[str, WarmKernel] = {}  # each step's kernel, started while the step before it runs
    try:
        _warm(kernels, steps[0])  # starts while the store is set up
        return _run_steps(parameters, per_step, config, progress, echo, steps, kernels)
    finally:
        for kernel in kernels.values():
            kernel.shutdown()


def _warm(kernels: dict[str, WarmKernel], step: str) -> None:
    if step not in kernels:
        kernels[step] = WarmKernel(find_notebook(step).parent, {**os.environ, **KERNEL_ENV})


def _worth_warming(step: str, results: list[RunResult]) -> bool:
    """False when ``step`` is already known to be skipped (a rollout with no challenger registered)."""
    if step != "04-rollout":
        return True
    ev = next((r for r in results if r.notebook == "02-evaluate"), None)
    version = ev.tags.get(TAG + "registered_version", "") if ev else ""
    aliases = json.loads(ev.tags.get(TAG + "aliases", "{}")) if ev else {}
    return bool(version) and str(aliases.get("challenger", "")) == version


def _run_steps(parameters, per_step, config: Config, progress, echo, steps, kernels) -> PipelineResult:
    exp_id = tracking.setup_tracking(config)  # the store first: a store that fails leaves no empty run folder
    client = tracking.client(config)
    folder = new_run_folder(config)
    try:
        parent = client.create_run(exp_id, tags={"mlflow.runName": "pipeline", TAG + "pipeline_id": folder.name,
                                                 TAG + "notebook": "pipeline",
                                                 TAG + "parameters": json.dumps(parameters or {}),
                                                 **tracking.owner_tags()})
    except BaseException as exc:
        remove_if_empty(folder)
        raise as_tracking_error(exc, config) from None
    results: list[RunResult] = []
    awaiting, released = "", {}
    status = "FAILED"
    inflight: BaseException | None = None
    with sigterm_raises():  # SIGTERM between two steps also ends the parent run KILLED
        try:
            for i, step in enumerate(steps):
                if step == "03-deploy" and _registered_version(results):  # team mode: stop for review, or copy
                    awaiting, released = hand_off(_model_name(results), _registered_version(results), config,
                                                  folder.name)
                given = released or (per_step[step] if "02-evaluate" not in steps else {})
                skipped = f"awaiting approval: `{awaiting}`" if awaiting else _skip_reason(step, results, given, config)
                if skipped:
                    if step in kernels:
                        kernels.pop(step).shutdown()
                    echo(f"· {step} skipped: {skipped}")
                    continue
                if i + 1 < len(steps) and _worth_warming(steps[i + 1], results):
                    _warm(kernels, steps[i + 1])
                params = dict(per_step[step])
                if step == "02-evaluate" and results:
                    params["train_run_id"] = results[0].run_id
                if step in ("03-deploy", "04-rollout") and _registered_version(results):  # the version it registered
                    params["model_version"] = _registered_version(results)
                if step in ("03-deploy", "04-rollout"):  # ...or its production copy, in team mode
                    params.update(released)
                if step == SCORE_STEP:  # what serves after the rollout: the champion, by number
                    params["model"] = _champion_uri(per_step, config)
                echo(f"▶ {step} → {folder / (step + '.ipynb')}")
                kernel = kernels.pop(step, None)
                try:
                    res = run_notebook(step, params, config=config, folder=folder, parent_run_id=parent.info.run_id,
                                       pipeline_id=folder.name, progress=progress, kernel=kernel)
                finally:
                    if kernel is not None:
                        kernel.shutdown()  # run_notebook stops it; this covers a failure before it started
                echo(f"  ✓ {step} finished in {res.seconds:.1f} s")
                results.append(res)
            status = "FINISHED"
        except BaseException as exc:
            inflight = exc
            if isinstance(exc, (KeyboardInterrupt, RunTerminated)) or getattr(exc, "ename", "") in KILLED_BY:
                status = "KILLED"
            raise
        finally:
            if not results:
                remove_if_empty(folder)
            if not tracking.server_down(config):  # a dead server: the next command reconciles the run
                try:
                    client.set_tag(parent.info.run_id, TAG + "status", status)
                    client.set_terminated(parent.info.run_id, status)
                except Exception as exc:
                    error = as_tracking_error(exc, config)
                    if error is exc:
                        raise
                    if isinstance(inflight, RunTerminated):
                        error.exit_code = 128 + inflight.signum
                    raise error from None
    return PipelineResult(folder.name, folder, results, parent.info.run_id, awaiting)


def _registered_version(results: list[RunResult]) -> str:
    ev = next((r for r in results if r.notebook == "02-evaluate"), None)
    return ev.tags.get(TAG + "registered_version", "") if ev else ""


def _model_name(results: list[RunResult]) -> str:
    ev = next((r for r in results if r.notebook == "02-evaluate"), None)
    return ev.tags.get(TAG + "model_name", "") or ev.parameters.get("model_name", DEFAULT_MODEL_NAME) if ev else ""


def _champion_uri(per_step: dict, config: Config) -> str:
    """``models:/<name>/<champion version>`` after the steps so far (the rollout may have promoted)."""
    from churnkit import registry

    name = str(next((p["model_name"] for p in per_step.values() if "model_name" in p), DEFAULT_MODEL_NAME))
    found = registry.find_version(f"models:/{name}@champion", config)
    if found is None:
        raise ParameterError(f"score_target is set but model {name!r} has no champion to score with; register one "
                             "(a pipeline whose gate passes) or pass -p score_target none", name="score_target")
    return f"models:/{name}/{found.version}"


def _skip_reason(step: str, results: list[RunResult], given: dict | None = None,
                 config: Config | None = None) -> str:
    """Why ``step`` does not run: deploying needs a registered version (or one ``given``: a production version
    approved from it), rolling out a challenger and a serving endpoint (03-deploy's live weights)."""

    done = {r.notebook: r for r in results}
    ev = done.get("02-evaluate")
    if given:
        version, aliases = str(given.get("model_version", "")), _approved_aliases(given, config)
    else:
        version = ev.tags.get(TAG + "registered_version", "") if ev else ""
        aliases = json.loads(ev.tags.get(TAG + "aliases", "{}")) if ev else {}
    if step == "03-deploy" and not version:
        return "no version was registered"
    if step == "04-rollout":
        if not version or str(aliases.get("challenger", "")) != version:
            return "no challenger was registered"
        deployed = done.get("03-deploy")
        weights = json.loads(deployed.tags.get(TAG + "endpoint_weights", "{}")) if deployed else {}
        if not any(int(w) > 0 for w in weights.values()):
            return "no champion serves on the endpoint"
    return ""


def _approved_aliases(given: dict, config: Config | None) -> dict:
    from churnkit.registry import aliases

    return aliases(given["model_name"], config) if given.get("model_name") else {}


def pipeline_summary(result: PipelineResult) -> dict:
    """What CI and people need from a pipeline run: metrics, gate verdict, the registered version."""

    ev = result.step("02-evaluate")
    metrics = {k.removeprefix("holdout_"): v for k, v in (ev.metrics if ev else {}).items()
               if k.startswith("holdout_")}
    champion = {k.removeprefix("champion_holdout_"): v for k, v in (ev.metrics if ev else {}).items()
                if k.startswith("champion_holdout_")}
    gate = json.loads(ev.tags.get(TAG + "gate", "{}")) if ev else {}
    version = (ev.tags.get(TAG + "registered_version") if ev else "") or None
    aliases = json.loads(ev.tags.get(TAG + "aliases", "{}")) if ev else {}
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
        lines += [f"  note: {n}" for n in gate.get("notes", [])]
    model_name = ev.parameters.get("model_name", "churn") if ev else "churn"
    if version:
        role = next((a for a, v in aliases.items() if str(v) == version), "a candidate" if result.awaiting else "registered")
        lines.append(f"model    registered {model_name} v{version} as {role}")
        if result.awaiting:
            lines.append(f"approval awaiting approval: `{result.awaiting}` (with --note \"why\"); then "
                         f"`churnkit pipeline --approved {version} -p model_name {model_name}` deploys it")
    elif ev is not None:
        lines.append(f"model    nothing registered; {model_name!r} registry unchanged (aliases {aliases})")
    dep, out, scored = result.step("03-deploy"), result.step("04-rollout"), result.step(SCORE_STEP)
    deployment = rollout = score = None
    if dep is not None:
        deployment = {k: dep.tags.get(TAG + k, "") for k in ("deployed_uri", "deploy_target", "endpoint")}
        deployment["weights"] = json.loads(dep.tags.get(TAG + "endpoint_weights", "{}"))
        lines.append(f"deploy   {deployment['deployed_uri']} on {deployment['deploy_target']} endpoint "
                     f"{deployment['endpoint']!r}: weights {deployment['weights']}")
    if out is not None:
        rollout = {"decision": out.tags.get(TAG + "rollout_decision", ""),
                   "reason": out.tags.get(TAG + "rollout_reason", ""), "run_id": out.run_id}
        lines.append(f"rollout  {rollout['decision']}: {rollout['reason']}")
    if scored is not None:
        score = {"engine": scored.parameters.get("engine", ""), "model": scored.parameters.get("model", ""),
                 "output": scored.tags.get(TAG + "score_output", ""), "run_id": scored.run_id,
                 "notebook": str(scored.output_path)}
        lines.append(f"score    {score['model']} on {score['engine']}: {score['output'] or scored.output_path}")
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
        "awaiting_approval": result.awaiting or None,
        "score": score,
        "text": "\n".join(lines),
    }
