"""A runs folder holding everything the reviewer's view shows, built once per test session.

- pipeline P: 01-train and 02-evaluate (registers churn v1 as champion), then a stand-in deploy
  notebook in the same folder, tagged as 03-deploy tags its run and the version (no real endpoint starts);
- churn v2 registered as challenger from the same candidate, and a rollout run (as `churnkit rollout`
  records it, no notebook) that rolled v2 back;
- a failed notebook run (ValueError in code cell 3);
- an output notebook MLflow never heard of (the process was killed hard), with a credential printed.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

FIXTURES = Path(__file__).parent / "fixtures"
PLANTED_KEY = "AKIA" + "Z7EXAMPLEQ4KEYID"

_cache: dict[str, AuditStore] = {}


@dataclass
class AuditStore:
    config: object
    pipeline: object  # runner.PipelineResult
    deploy: object  # runner.RunResult
    failed: object  # NotebookExecutionError
    rollout_run_id: str
    orphan: Path


def audit_store(root: Path) -> AuditStore:
    """Build the store under ``root`` the first time; later calls return the same one."""
    if "store" not in _cache:
        saved = {k: os.environ.pop(k, None) for k in ("MLFLOW_TRACKING_URI", "MLFLOW_RUN_ID")}
        try:
            _cache["store"] = _build(root)
        finally:
            os.environ.update({k: v for k, v in saved.items() if v is not None})
    return _cache["store"]


def _build(root: Path) -> AuditStore:
    from churnkit import registry
    from churnkit.config import load_config
    from churnkit.evaluate import gate
    from churnkit.exceptions import NotebookExecutionError
    from churnkit.runner import run_notebook, run_pipeline

    config = load_config(root / "runs")
    pipeline = run_pipeline({"rows": 1500}, config=config, progress=False, echo=lambda *_: None,
                            steps=("01-train", "02-evaluate"))
    client = registry.client(config)

    deploy = run_notebook(FIXTURES / "sleep.ipynb", {"seconds": 0}, config=config, folder=pipeline.folder,
                          pipeline_id=pipeline.pipeline_id, parent_run_id=pipeline.run_id, progress=False)
    # the tags churnkit.deploy.log_deployment and record_deploy leave (an alias URI: the version comes from v1's tag)
    for key, value in {"deploy_target": "local", "endpoint": "churn", "deployed_uri": "models:/churn@champion",
                       "endpoint_weights": json.dumps({"v1": 100})}.items():
        client.set_tag(deploy.run_id, "churnkit." + key, value)
    registry.set_version_tag("1", "deploy_notebook", str(deploy.output_path), config=config)

    candidate = registry.load_candidate(pipeline.step("01-train").run_id, config)
    evaluate_nb = str(pipeline.step("02-evaluate").output_path)
    version = registry.register_candidate(candidate, gate(0.93, 0.93, 0.85, 0.0), output_notebook=evaluate_nb,
                                           config=config)
    assert version == "2"
    exp = registry.setup_tracking(config)
    rollout = client.create_run(exp, tags={"mlflow.runName": "rollout", "churnkit.notebook": "rollout",
                                           "churnkit.pipeline_id": pipeline.pipeline_id})
    for key, value in {"rollout_decision": "rolled_back", "rollout_reason": "p99 latency 3.1x the champion's at 10%",
                       "champion_version": "1", "challenger_version": "2"}.items():
        client.set_tag(rollout.info.run_id, "churnkit." + key, value)
    client.set_terminated(rollout.info.run_id, "FINISHED")
    registry.set_version_tag("2", "rollout_decision", "rolled_back", config=config)
    registry.set_version_tag("2", "rollout_run_id", rollout.info.run_id, config=config)

    try:
        run_notebook(FIXTURES / "crash.ipynb", {"how": "raise"}, config=config, progress=False)
        raise AssertionError("the crash fixture should fail")
    except NotebookExecutionError as exc:
        failed = exc

    orphan = config.runs_dir / "20200101T000000Z-dead00" / "crash.ipynb"
    orphan.parent.mkdir()
    shutil.copy(failed.output_path, orphan)
    nb = json.loads(orphan.read_text())
    nb["metadata"]["papermill"].update(end_time=None, exception=None, start_time="2020-01-01T00:00:00+00:00")
    nb["cells"] = [c for c in nb["cells"] if "papermill-error-cell-tag" not in c["metadata"].get("tags", [])]
    for cell in (c for c in nb["cells"] if c["cell_type"] == "code"):
        cell["outputs"] = [o for o in cell["outputs"] if o["output_type"] != "error"]
    nb["cells"][-1]["outputs"] = [{"output_type": "stream", "name": "stdout", "text": [f"key {PLANTED_KEY}\n"]}]
    orphan.write_text(json.dumps(nb))
    return AuditStore(config, pipeline, deploy, failed, rollout.info.run_id, orphan)
