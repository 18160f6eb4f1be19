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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from churnkit import tracking
from churnkit.config import DEFAULT_MODEL_NAME, TAG, Config, load_config
from churnkit.exceptions import ParameterError
from churnkit.runner.execution import (
    KILLED_BY,
    RunResult,
    as_tracking_error,
    new_run_folder,
    remove_if_empty,
    run_notebook,
)
from churnkit.runner.lock import pipeline_lock
from churnkit.runner.params import notebook_parameters, split_parameters
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
) -> PipelineResult:
    """The monthly job in one run folder and parent MLflow run: train, evaluate (gate, register), then
    deploy when a version was registered and roll out when it is a challenger and a champion serves.

    ``steps`` limits the job to a prefix of :data:`PIPELINE_STEPS` (e.g. train and evaluate only).
    ``wait`` is how long to queue behind another pipeline on the same model before giving up.

    Raises
    ------
    PipelineLockedError
        Another pipeline on the same model (same runs folder) is running; the message names it.
    """

    if tuple(steps) != PIPELINE_STEPS[:len(steps)] or not steps:
        raise ParameterError(f"pipeline steps {tuple(steps)!r} are not a prefix of {PIPELINE_STEPS!r}", name="steps")
    config = config or load_config()
    routed, target = score_step(dict(parameters or {}))
    if target == "none":
        per_step = split_parameters(routed, tuple(steps))
    else:  # a name the training steps declare is theirs (01-train's month, model); 06-score gets the others
        known = {p.name for s in steps for p in notebook_parameters(s)}
        per_step = split_parameters({k: v for k, v in routed.items() if k in known}, tuple(steps))
        per_step |= split_parameters({k: v for k, v in routed.items() if k not in known}, (SCORE_STEP,))
        steps = (*steps, SCORE_STEP)
    if target != "none":  # the month's table, unless 06-score is given its own input
        per_step[SCORE_STEP]["engine"] = target
        if "input" not in per_step[SCORE_STEP] and routed.get("data_path"):
            per_step[SCORE_STEP]["input"] = routed["data_path"]
    model_name = str(next((p["model_name"] for p in per_step.values() if "model_name" in p), DEFAULT_MODEL_NAME))
    with pipeline_lock(config, model_name, wait=wait, echo=echo):
        return _run_locked(parameters, per_step, config, progress, echo, steps)


def _run_locked(parameters, per_step, config: Config, progress, echo, steps) -> PipelineResult:
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
    status = "FAILED"
    inflight: BaseException | None = None
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
                if step in ("03-deploy", "04-rollout"):  # the version this pipeline registered, by number
                    params["model_version"] = _registered_version(results)
                if step == SCORE_STEP:  # what serves after the rollout: the champion, by number
                    params["model"] = _champion_uri(per_step, config)
                echo(f"▶ {step} → {folder / (step + '.ipynb')}")
                res = run_notebook(step, params, config=config, folder=folder, parent_run_id=parent.info.run_id,
                                   pipeline_id=folder.name, progress=progress)
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
    return PipelineResult(folder.name, folder, results, parent.info.run_id)


def _registered_version(results: list[RunResult]) -> str:
    ev = next((r for r in results if r.notebook == "02-evaluate"), None)
    return ev.tags.get(TAG + "registered_version", "") if ev else ""


def _champion_uri(per_step: dict, config: Config) -> str:
    """``models:/<name>/<champion version>`` after the steps so far (the rollout may have promoted)."""
    from churnkit import registry

    name = str(next((p["model_name"] for p in per_step.values() if "model_name" in p), DEFAULT_MODEL_NAME))
    found = registry.find_version(f"models:/{name}@champion", config)
    if found is None:
        raise ParameterError(f"score_target is set but model {name!r} has no champion to score with; register one "
                             "(a pipeline whose gate passes) or pass -p score_target none", name="score_target")
    return f"models:/{name}/{found.version}"


def _skip_reason(step: str, results: list[RunResult]) -> str:
    """Why ``step`` does not run: deploying needs a registered version, rolling out a challenger and a
    serving endpoint (03-deploy's live weights)."""

    done = {r.notebook: r for r in results}
    ev = done.get("02-evaluate")
    version = ev.tags.get(TAG + "registered_version", "") if ev else ""
    if step == "03-deploy" and not version:
        return "no version was registered"
    if step == "04-rollout":
        aliases = json.loads(ev.tags.get(TAG + "aliases", "{}")) if ev else {}
        if not version or str(aliases.get("challenger", "")) != version:
            return "no challenger was registered"
        deployed = done.get("03-deploy")
        weights = json.loads(deployed.tags.get(TAG + "endpoint_weights", "{}")) if deployed else {}
        if not any(int(w) > 0 for w in weights.values()):
            return "no champion serves on the endpoint"
    return ""


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
        role = next((a for a, v in aliases.items() if str(v) == version), "registered")
        lines.append(f"model    registered {model_name} v{version} as {role}")
    else:
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
        "score": score,
        "text": "\n".join(lines),
    }
