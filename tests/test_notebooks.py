"""Every notebook runs headless with its defaults, in order, in one runs folder (as nbval would)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from churnkit import registry
from churnkit.runner import notebooks_dir, run_notebook

NOTEBOOKS = sorted(p.stem for p in notebooks_dir().glob("[0-9][0-9]-*.ipynb"))


@pytest.fixture(scope="module")
def shared_runs(tmp_path_factory):
    import os

    from churnkit.config import load_config

    saved = {k: os.environ.pop(k, None) for k in ("MLFLOW_TRACKING_URI", "MLFLOW_RUN_ID")}
    config = load_config(tmp_path_factory.mktemp("notebooks") / "runs")
    yield config
    try:  # a deployed local endpoint must not outlive the tests
        from churnkit.deploy import get_target

        get_target("local", config=config).stop()
    except ImportError:
        pass
    for k, v in saved.items():
        if v is not None:
            os.environ[k] = v


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_runs_with_defaults(name, shared_runs):
    from churnkit.runner import notebook_parameters

    # Defaults throughout, except a fixed local port, which another process on the machine may hold.
    params = {"port": 0} if any(p.name == "port" for p in notebook_parameters(name)) else {}
    res = run_notebook(name, params, config=shared_runs, progress=False)
    assert res.status == "FINISHED"
    nb = json.loads(Path(res.output_path).read_text())
    code = [c for c in nb["cells"] if c["cell_type"] == "code"]
    assert all(c["execution_count"] is not None for c in code)
    assert not [o for c in code for o in c["outputs"] if o.get("output_type") == "error"]
    run = registry.client(shared_runs).get_run(res.run_id)
    assert run.info.status == "FINISHED" and run.data.tags["churnkit.notebook"] == name
    if name == "02-evaluate":
        assert run.data.tags["churnkit.gate_passed"] == "true"
        assert run.data.tags["churnkit.registered_version"] == "1"
        assert run.data.metrics["holdout_roc_auc"] > 0.85
        assert [a.path for a in registry.client(shared_runs).list_artifacts(res.run_id)] == ["evaluation.png", "notebook"]
        figures = [o for c in code for o in c["outputs"] if "image/png" in o.get("data", {})]
        assert figures, "the evaluation plots are shown in the executed notebook"
    if name == "03-deploy":
        assert run.data.tags["churnkit.deployed_version"] == "1"
        assert json.loads(run.data.tags["churnkit.endpoint_weights"]) == {"v1": 100}
