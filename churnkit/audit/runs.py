"""The reviewer's view of runs/: every notebook run, newest first, and a static HTML index of them.

Runs are read from MLflow (the tags the runner and the notebooks set) and from the runs folder itself,
so a notebook whose run never reached MLflow (the process was killed hard, the server was down) is
still listed. ``churnkit runs`` prints :func:`list_runs`; ``churnkit report`` writes :func:`write_report`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from churnkit.config import DEFAULT_MODEL_NAME, TAG, Config, load_config
from churnkit.clock import iso_from_ms, iso_from_text
from churnkit.runner import failed_cell
from churnkit.runner.approval import production_review, review_lines
from churnkit.tracking import has_store, iter_runs
RUN_KEYS = ("run_id", "pipeline_id", "notebook", "status", "started", "finished", "parameters", "metrics",
            "output_notebook", "model_version")
ENTRY_KEYS = (*RUN_KEYS, "model_name", "event", "gate", "rollout", "error", "passed_parameters", "experiment_id",
              "parent_run_id", "git_commit", "git_dirty", "rerun_of", "redactions", "deployment", "source", "score")
KEY_PARAMETERS = ("data_path", "model", "seed", "auc_threshold", "min_improvement", "deploy_target", "strategy")
KEY_METRICS = {"holdout_roc_auc": "auc", "holdout_pr_auc": "pr_auc", "champion_holdout_roc_auc": "champion_auc",
               "rollout_steps": "steps", "rows_scored": "scored", "rows_refused": "refused", "notebook_seconds": "s"}
FAILED = ("FAILED", "KILLED", "INCOMPLETE")


def _json(text: str | None, default: Any) -> Any:
    try:
        return json.loads(text) if text else default
    except ValueError:
        return default


# --------------------------------------------------------------------------------------------------
# One entry per run
# --------------------------------------------------------------------------------------------------

def _outcome(tags: dict, gate: dict | None) -> tuple[str | None, str | None]:
    """``(model_version, event)``: what this run did to the registry or an endpoint."""
    decision = tags.get(TAG + "rollout_decision", "")
    challenger = tags.get(TAG + "challenger_version")
    if decision in ("promoted", "rolled_back") and challenger:
        return str(challenger), f"{decision.replace('_', ' ')} v{challenger}"
    uri = tags.get(TAG + "deployed_uri", "")
    deployed = tags.get(TAG + "deployed_version") or (uri.rsplit("/", 1)[-1] if uri.count("/") == 2 else "")
    if deployed.isdigit():
        return deployed, f"deployed v{deployed}" + _where(_deployment(tags))
    version = tags.get(TAG + "registered_version")
    if version:
        held = [a for a, v in _json(tags.get(TAG + "aliases"), {}).items() if str(v) == version]
        return version, f"registered v{version}" + (f" as {held[0]}" if held else "")
    if gate is not None and not gate["passed"]:
        return None, "not registered (gate refused)"
    scored = tags.get(TAG + "scored_version")
    if scored:  # a batch scoring run (churnkit score, 06-score)
        return scored, f"scored v{scored} into {tags.get(TAG + 'score_partition', '')}".rstrip()
    return None, None


def _score(tags: dict) -> dict | None:
    """Where a scoring run wrote (its output folder and partition) and on what engine or service, or None."""
    if not tags.get(TAG + "score_output"):
        return None
    return {"output": tags[TAG + "score_output"], "partition": tags.get(TAG + "score_partition", ""),
            "engine": tags.get(TAG + "score_engine", "")}


def _deployment(tags: dict) -> dict | None:
    """What a deploy run did to its endpoint (tags of churnkit.deploy.log_deployment), or None."""
    if not tags.get(TAG + "deploy_target"):
        return None
    return {"target": tags[TAG + "deploy_target"], "endpoint": tags.get(TAG + "endpoint"),
            "uri": tags.get(TAG + "deployed_uri"), "weights": _json(tags.get(TAG + "endpoint_weights"), {})}


def _where(deployment: dict | None) -> str:
    if not deployment:
        return ""
    return f" to {deployment['target']}" + (f" endpoint {deployment['endpoint']!r}" if deployment["endpoint"] else "")


def _fill_deployments(runs: list[dict], versions: list[dict]) -> None:
    """A deploy run that named an alias (``models:/churn@challenger``) learns its version from the version
    tag ``churnkit.deploy_notebook`` that the deployment set."""
    deployed_by = {v["tags"].get(TAG + "deploy_notebook"): v for v in versions}
    for e in runs:
        v = deployed_by.get(e["output_notebook"]) if e["output_notebook"] else None
        if v is not None and e["model_version"] is None:
            e["model_version"], e["model_name"] = v["version"], v["name"]
            e["event"] = f"deployed v{v['version']}" + _where(e.get("deployment"))


def _error(status: str, tags: dict, output: str | None) -> dict | None:
    if status not in FAILED:
        return None
    text = tags.get(TAG + "error", "")
    ename, _, evalue = text.partition(": ")
    cell = int(tags[TAG + "failed_cell"]) if tags.get(TAG + "failed_cell", "").isdigit() else None
    if not text and output:  # a run recorded before failures were tagged: read the notebook
            cell, ename, evalue = failed_cell(output)
    return {"cell": cell, "ename": ename or None, "evalue": evalue or ""}


def run_entry(run) -> dict:
    """The ``churnkit runs --json`` entry of one MLflow run (the contract's keys first, then extras)."""
    tags = dict(run.data.tags)
    passed = _json(tags.get(TAG + "parameters"), None)
    if passed is None:  # a run started in JupyterLab: its logged parameters are all there is
        passed = dict(run.data.params)
    gate = None
    if TAG + "gate_passed" in tags:
        gate = {"passed": tags[TAG + "gate_passed"] == "true", "summary": tags.get(TAG + "gate_summary", "")}
    rollout = None
    if tags.get(TAG + "rollout_decision"):
        rollout = {"decision": tags[TAG + "rollout_decision"], "reason": tags.get(TAG + "rollout_reason", ""),
                   "champion": tags.get(TAG + "champion_version"), "challenger": tags.get(TAG + "challenger_version")}
    version, event = _outcome(tags, gate)
    output = tags.get(TAG + "output_notebook") or None
    status = run.info.status
    return {
        "run_id": run.info.run_id,
        "pipeline_id": tags.get(TAG + "pipeline_id") or None,
        "notebook": tags.get(TAG + "notebook") or tags.get("mlflow.runName") or "",
        "status": status,
        "started": iso_from_ms(run.info.start_time),
        "finished": iso_from_ms(run.info.end_time),
        "parameters": _json(tags.get(TAG + "defaults"), {}) | passed,
        "metrics": dict(run.data.metrics),
        "output_notebook": output,
        "model_version": version,
        "model_name": tags.get(TAG + "model_name") or passed.get("model_name") or DEFAULT_MODEL_NAME,
        "event": event,
        "gate": gate,
        "rollout": rollout,
        "error": _error(status, tags, output),
        "passed_parameters": passed,
        "experiment_id": run.info.experiment_id,
        "parent_run_id": tags.get("mlflow.parentRunId"),
        "git_commit": tags.get(TAG + "git_commit"),
        "git_dirty": tags.get(TAG + "git_dirty") == "true" if TAG + "git_dirty" in tags else None,
        "rerun_of": tags.get(TAG + "rerun_of"),
        "redactions": _json(tags.get(TAG + "redactions"), {}),
        "deployment": _deployment(tags),
        "source": "mlflow",
        "score": _score(tags),
    }


def folder_entry(path: Path) -> dict:
    """An entry for an output notebook that MLflow does not know, from papermill's own metadata."""
    try:
        meta = json.loads(path.read_text(encoding="utf-8")).get("metadata", {}).get("papermill", {})
    except (OSError, ValueError):
        meta = {}
    status = "FAILED" if meta.get("exception") else ("FINISHED" if meta.get("end_time") else "INCOMPLETE")

    started = iso_from_text(meta.get("start_time")) or iso_from_ms(int(path.stat().st_mtime * 1000))
    cell, ename, evalue = failed_cell(path)
    return dict.fromkeys(ENTRY_KEYS) | {
        "pipeline_id": path.parent.name, "notebook": path.stem, "status": status, "started": started,
        "finished": iso_from_text(meta.get("end_time")), "parameters": meta.get("parameters") or {}, "metrics": {},
        "output_notebook": str(path), "model_name": DEFAULT_MODEL_NAME,
        "error": {"cell": cell, "ename": ename, "evalue": evalue or ""} if status in FAILED else None,
        "passed_parameters": meta.get("parameters") or {}, "redactions": {}, "source": "folder",
    }


def collect(config: Config | None = None, limit: int | None = None) -> tuple[list[dict], dict[str, dict], list[dict]]:
    """``(notebook runs newest first, {pipeline_id: pipeline parent run entry}, registered versions)``.

    With ``limit``, reading MLflow stops soon after the newest ``limit`` notebook runs (a team server
    holds years of runs); a little further, so their pipelines' parent runs are found too.
    """
    from churnkit import registry

    config = config or load_config()
    runs, parents, known, cutoff, extra = [], {}, set(), "", 0
    for run in iter_runs(config):
        entry = run_entry(run)
        if entry["output_notebook"]:
            known.add(os.path.abspath(entry["output_notebook"]))
        if entry["notebook"] == "pipeline":
            parents.setdefault(entry["pipeline_id"], entry)
        else:
            runs.append(entry)
        if limit and len(runs) >= limit:
            extra += 1
            waiting = {e["pipeline_id"] for e in runs} - set(parents) - {None}
            if not waiting or extra > 50:
                cutoff = entry["started"] or ""  # older runs were not read: nor are older folders
                break
    stamp = cutoff.replace("-", "").replace(":", "")  # 2026-11-27T17:24:36Z -> 20261127T172436Z
    if config.runs_dir.is_dir():
        for path in config.runs_dir.glob("*/*.ipynb"):
            if os.path.abspath(path) not in known and path.parent.name[:16] >= stamp:
                runs.append(folder_entry(path))
    versions = registry.list_versions(config=config) if has_store(config) else []
    _fill_deployments(runs, versions)
    runs.sort(key=lambda e: e["started"] or "", reverse=True)
    return (runs[:limit] if limit else runs), parents, versions


def production_lines(config: Config | None = None) -> list[str]:
    """The production hand-off below ``churnkit runs``' table: each production version's source, approver, time,
    note, gate and rollout events; a version without an approval in a model that requires one is FLAGGED."""
    from churnkit import registry

    config = config or load_config()
    if not has_store(config):
        return []
    return review_lines(production_review(registry.list_versions(config=config), config))


def list_runs(config: Config | None = None, limit: int | None = None) -> list[dict]:
    """Every notebook run, newest first: MLflow runs plus output notebooks MLflow does not know.

    Each entry has the ``churnkit runs --json`` keys (DESIGN §7b) followed by extras: ``model_name``,
    ``event`` ("registered v2 as challenger", "deployed v2", "promoted v2", "rolled back v2"), ``gate``,
    ``rollout``, ``error`` (``{"cell", "ename", "evalue"}`` of a failed run), ``passed_parameters``
    (``parameters`` holds the effective values, defaults included), ``git_commit``, ``rerun_of``...
    """
    return collect(config, limit)[0]


# --------------------------------------------------------------------------------------------------
# The text table
# --------------------------------------------------------------------------------------------------

def _short(value: Any, width: int = 28) -> str:
    """``value`` as text of at most ``width`` characters; a path or URI shows its last part."""
    text = value if isinstance(value, str) else json.dumps(value)
    if isinstance(value, str) and "/" in value and not any(c.isspace() for c in value):
        text = value.rstrip("/").rsplit("/", 1)[-1] or value
    return text if len(text) <= width else text[: width - 1] + "…"


def key_parameters(entry: dict) -> str:
    """``model=hgb seed=0 auc_threshold=0.9``: the well-known parameters, then anything else passed."""
    params, passed = entry["parameters"], entry.get("passed_parameters") or {}
    names = [k for k in KEY_PARAMETERS if k in params and params[k] not in ("", None)]
    names += [k for k in passed if k not in names and not k.endswith("_run_id")]
    return " ".join(f"{k}={_short(params.get(k, passed.get(k)), 24)}" for k in names)


def key_metrics(entry: dict, seconds: bool = True) -> str:
    """``auc 0.9326 pr_auc 0.8769 7.0s``: the metrics a reviewer looks at first."""
    m = entry["metrics"]
    shown = [(k, label) for k, label in KEY_METRICS.items() if k in m and (seconds or label != "s")]
    return " ".join(f"{label} {m[k]:.4g}" if label != "s" else f"{m[k]:.1f}s" for k, label in shown)


def format_table(entries: list[dict]) -> str:
    """The compact listing ``churnkit runs`` prints; a failed run gets a second line with its cell and error."""
    if not entries:
        return "no runs yet: run `churnkit pipeline` (or `churnkit run NOTEBOOK`) first"
    head = ("STARTED (UTC)", "RUN", "PIPELINE", "NOTEBOOK", "STATUS", "PARAMETERS", "METRICS", "MODEL")
    rows = []
    for e in entries:
        model = f"{e['model_name']} {e['event']}" if e.get("event") and e.get("model_version") else (e.get("event") or "")
        rows.append(((e["started"] or "").replace("T", " ")[:16], (e["run_id"] or "-")[:8], e["pipeline_id"] or "-",
                     e["notebook"], e["status"], key_parameters(e) or "-", key_metrics(e) or "-", model or "-"))
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
    widths[5] = min(widths[5], 48)
    rows = [(*r[:5], _short(r[5], widths[5]), *r[6:]) for r in rows]
    lines = ["  ".join(h.ljust(w) for h, w in zip(head, widths, strict=True)).rstrip()]
    for e, r in zip(entries, rows, strict=True):
        lines.append("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())
        if e.get("error"):
            where, detail = failure(e["error"])
            lines.append(f"  ✗ {where}: {_short(detail, 100)}  ({e['output_notebook'] or 'run in a live kernel'})")
    return "\n".join(lines)


def failure(error: dict) -> tuple[str, str]:
    """``(where, what)`` of a failed run: ``("code cell 3", "ValueError: ...")``; a notebook whose process
    ended before papermill's last save has no recorded error."""
    detail = f"{error['ename']}: {error.get('evalue') or ''}".rstrip(": ") if error.get("ename") else ""
    if error.get("cell") is not None:
        return f"code cell {error['cell']}", detail
    if detail:
        return "before its first cell", detail
    return "did not finish", "no error was recorded (the process ended before papermill's last save)"


# --------------------------------------------------------------------------------------------------
# The HTML index
# --------------------------------------------------------------------------------------------------
