"""Registration only on a passed gate, aliases, undo on failure, integrity of artifacts."""

from __future__ import annotations

import mlflow
import pytest

from churnkit import artifact, registry
from churnkit.data import load_table
from churnkit.evaluate import evaluate_holdout, gate
from churnkit.exceptions import IntegrityError, RegistryError
from churnkit.model import split_holdout, train_model


def _candidate(config, seed=0, rows=800, model="logreg"):
    registry.setup_tracking(config)
    ds = load_table("", rows=rows, seed=seed)
    split = split_holdout(ds, 0.25, seed)
    pipe = train_model(split, ds.schema, model, seed)
    with mlflow.start_run():
        run_id = registry.log_candidate(pipe, ds, split, model=model, seed=seed)
    return registry.load_candidate(run_id)


def _state(name="churn"):
    c = registry.client()
    models = {m.name: dict(m.aliases) for m in c.search_registered_models()}
    versions = sorted((v.name, v.version) for v in c.search_model_versions(f"name='{name}'")) if models else []
    return models, versions


def _register(cand, **kw):
    ev = evaluate_holdout(cand.pipeline, cand.X_holdout, cand.y_holdout)
    verdict = gate(ev.challenger["roc_auc"], **kw)
    return registry.register_candidate(cand, verdict, metrics=ev.challenger, threshold=ev.threshold), verdict


def test_first_version_is_champion_then_challenger_then_promote(runs_config):
    cand = _candidate(runs_config)
    assert cand.schema.names[0] == "gender" and len(cand.X_holdout) == 200
    v1, _ = _register(cand)
    assert v1 == "1" and registry.aliases() == {"champion": "1"}
    mv = registry.get_champion()
    assert mv.tags["churnkit.artifact_sha256"] == cand.artifact_sha256
    assert mv.tags["churnkit.data_sha256"] and mv.tags["churnkit.rows"] == "800"
    assert float(mv.tags["churnkit.holdout_roc_auc"]) > 0.85
    assert "registered as champion" in registry.version_history("1")[0]["event"]

    v2, _ = _register(_candidate(runs_config, seed=1))
    assert v2 == "2" and registry.aliases() == {"champion": "1", "challenger": "2"}

    registry.promote("2", reason="rollout passed")
    assert registry.aliases() == {"champion": "2", "previous": "1"}


def test_refused_candidate_leaves_registry_exactly_as_it_was(runs_config):
    _register(_candidate(runs_config))
    before = _state()
    version, verdict = _register(_candidate(runs_config, seed=1), auc_threshold=0.999)
    assert version is None and not verdict.passed
    assert _state() == before


def test_refused_first_candidate_creates_nothing(runs_config):
    version, _ = _register(_candidate(runs_config), auc_threshold=0.999)
    assert version is None
    assert registry.client(runs_config).search_registered_models() == []


def test_failure_half_way_is_undone(runs_config, monkeypatch):
    cand = _candidate(runs_config)
    from mlflow import MlflowClient

    def boom(self, *a, **k):
        raise RuntimeError("registry went away")

    monkeypatch.setattr(MlflowClient, "set_registered_model_alias", boom)
    with pytest.raises(RegistryError, match="was undone"):
        _register(cand)
    monkeypatch.undo()
    assert registry.client(runs_config).search_registered_models() == []  # undo() restored the environment too


def test_tampered_artifact_is_refused(runs_config):
    _register(_candidate(runs_config))
    model = registry.load_model("models:/churn@champion", runs_config)
    assert model.version == "1" and model.threshold > 0 and model.schema.names
    target = artifact.model_file(model.path)
    target.write_bytes(target.read_bytes() + b"\0")
    with pytest.raises(IntegrityError, match="does not match"):
        registry.load_model("models:/churn@champion", runs_config)


def test_unknown_uris(runs_config, tmp_path):
    registry.setup_tracking(runs_config)
    with pytest.raises(RegistryError, match="not found"):
        registry.load_model("models:/churn@champion", runs_config)
    with pytest.raises(RegistryError, match="neither a folder"):
        registry.load_model("s3://bucket/model", runs_config)
    with pytest.raises(RegistryError, match="no MLmodel"):
        registry.load_model(str(tmp_path), runs_config)


def test_hgb_candidate_round_trips(runs_config):
    cand = _candidate(runs_config, model="hgb")
    assert type(cand.pipeline.named_steps["clf"]).__name__ == "HistGradientBoostingClassifier"
    assert cand.pipeline.predict_proba(cand.X_holdout).shape == (200, 2)


def test_newest_candidate_is_found_while_its_run_is_still_open(runs_config):
    """In JupyterLab, 01-train's kernel keeps its run RUNNING while 02-evaluate looks for it."""
    registry.setup_tracking(runs_config)
    ds = load_table("", rows=400)
    split = split_holdout(ds, 0.25, 0)
    pipe = train_model(split, ds.schema, "logreg", 0)
    mlflow.start_run()
    try:
        run_id = registry.log_candidate(pipe, ds, split, model="logreg", seed=0)
        assert registry.latest_candidate_run() == run_id
    finally:
        mlflow.end_run("FAILED")
    with pytest.raises(RegistryError, match="run 01-train first"):
        registry.latest_candidate_run()  # a failed run is never picked


def test_log_candidate_keeps_a_notebook_parameter_of_the_same_name(runs_config):
    """01-train's `rows` parameter (synthetic rows) was logged when the run started; a table of another size
    must not make MLflow refuse the candidate ("Changing param values is not allowed")."""
    registry.setup_tracking(runs_config)
    ds = load_table("", rows=400, seed=0)
    split = split_holdout(ds, 0.25, 0)
    pipe = train_model(split, ds.schema, "logreg", 0)
    with mlflow.start_run() as run:
        mlflow.log_params({"rows": "4000", "model": "logreg"})
        registry.log_candidate(pipe, ds, split, model="logreg", seed=0)
    params = registry.client().get_run(run.info.run_id).data.params
    assert params["rows"] == "4000" and params["seed"] == "0" and params["features"] == str(len(ds.schema.columns))
    assert registry.client().get_run(run.info.run_id).data.tags["churnkit.rows"] == "400"
