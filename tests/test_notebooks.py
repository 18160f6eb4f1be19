"""Every notebook runs headless with its defaults, in order, in one runs folder (as nbval would).

00-import (an existing model instead of training one) runs in its own runs folder: with its defaults it
registers a demo model, which the training path's assertions (01-train → 02-evaluate registers v1) must not see.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from churnkit import registry
from churnkit.runner import notebooks_dir, run_notebook

NOTEBOOKS = sorted(p.stem for p in notebooks_dir().glob("[0-9][0-9]-*.ipynb") if not p.stem.startswith("00-"))


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


def test_import_notebook_runs_with_defaults(tmp_path, monkeypatch):
    """00-import with its defaults writes a demo .joblib and sample, scans, gates and registers it as v1."""
    from churnkit.config import load_config

    for var in ("MLFLOW_TRACKING_URI", "MLFLOW_RUN_ID"):
        monkeypatch.delenv(var, raising=False)
    config = load_config(tmp_path / "runs")
    res = run_notebook("00-import", {}, config=config, progress=False)
    assert res.status == "FINISHED"
    nb = json.loads(Path(res.output_path).read_text())
    code = [c for c in nb["cells"] if c["cell_type"] == "code"]
    assert not [o for c in code for o in c["outputs"] if o.get("output_type") == "error"]
    run = registry.client(config).get_run(res.run_id)
    assert run.data.tags["churnkit.notebook"] == "00-import"
    assert run.data.tags["churnkit.registered_version"] == "1" and run.data.tags["churnkit.gate_passed"] == "true"
    assert run.data.metrics["holdout_roc_auc"] > 0.85
    mv = registry.client(config).get_model_version("churn", "1")
    assert mv.tags["churnkit.imported"] == "true" and mv.tags["churnkit.source_file"] == "churn-model.joblib"
    assert json.loads(mv.tags["churnkit.scanner_verdict"])["safe"] is True
    # the demo files are kept with the run, in its folder
    assert (Path(res.output_path).parent / "import-demo" / "churn-model.joblib").is_file()
