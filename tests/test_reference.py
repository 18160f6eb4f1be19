"""The rollout reference kept with each registered version: written at registration inside the model folder
(covered by its manifest), read back verified, built for versions registered before references."""

from __future__ import annotations

import json
import shutil

import mlflow
import numpy as np
import pytest
from click.testing import CliRunner

from churnkit import registry
from churnkit.cli import main
from churnkit.config import TAG, load_config
from churnkit.data import load_table, write_table
from churnkit.evaluate import gate
from churnkit.exceptions import IntegrityError, ReferenceMissingError
from churnkit.model import split_holdout, train_model
from churnkit.reference import REFERENCE_FILE, read_reference, reference_from_candidate, version_reference
from churnkit.serve.scorer import Scorer


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """v1 registered with a reference, v2 registered without one (as before references); the tests run in order."""
    monkeypatch = pytest.MonkeyPatch()
    for var in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI", "MLFLOW_RUN_ID"):
        monkeypatch.delenv(var, raising=False)
    runs = tmp_path_factory.mktemp("reference") / "runs"
    monkeypatch.setenv("CHURNKIT_RUNS_DIR", str(runs))
    config = load_config(runs)
    registry.setup_tracking(config)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    out = {}
    for month, with_reference in ((1, True), (2, False)):
        ds = load_table("", rows=800, month=month, seed=month)
        split = split_holdout(ds, seed=month)
        with mlflow.start_run():
            run_id = registry.log_candidate(train_model(split, ds.schema, seed=month), ds, split, model="logreg",
                                            seed=month)
        cand = registry.load_candidate(run_id)
        files = reference_from_candidate(cand, registry.load_champion()).files() if with_reference else None
        out[month] = (registry.register_candidate(cand, gate(0.99, None, 0.5, -1.0), threshold=0.5, files=files), cand)
    yield config, out
    monkeypatch.undo()


def test_registration_writes_the_reference_into_the_folder_before_its_manifest(store):
    config, out = store
    v1, cand = out[1]
    local, tags = registry.resolve_model(f"models:/churn/{v1}")
    manifest = json.loads((local / "churnkit-files.json").read_text())
    assert REFERENCE_FILE in manifest["files"]  # the manifest covers it: a copy of the folder carries it
    assert tags[TAG + "files_sha256"] == registry.client().get_run(cand.run_id).data.tags[TAG + "files_sha256"]
    ref = read_reference(v1)
    loaded = registry.load_model(f"models:/churn/{v1}")  # still verifies against the recorded manifest
    expected = Scorer.from_loaded(loaded).predict_frame(cand.X_holdout)
    assert ref.n == len(cand.X_holdout) and np.allclose(ref.scores, expected, atol=1e-12)
    assert ref.champion_version is None and ref.offline_divergence is None  # the first version had no champion
    assert ref.mean == pytest.approx(float(np.mean(expected)))


def test_a_legacy_version_gets_its_reference_from_its_recorded_holdout_and_says_so(store):
    config, out = store
    v1, v2 = out[1][0], out[2][0]
    assert read_reference(v2) is None
    ref = version_reference(v2, champion_version=v1)
    assert "built at rollout from the holdout its training run recorded" in ref.origin
    assert ref.champion_version == v1 and ref.offline_divergence["rows"] == ref.n


def test_without_a_holdout_the_error_names_the_command_and_the_command_builds_it(store, tmp_path):
    config, out = store
    v1, (v2, cand) = out[1][0], out[2]
    holdout_dir = config.runs_dir / "artifacts"
    gone = [p for p in holdout_dir.rglob("holdout.parquet") if cand.run_id in str(p)]
    assert gone
    saved = tmp_path / "saved.parquet"
    shutil.copy(gone[0], saved)
    gone[0].unlink()
    with pytest.raises(ReferenceMissingError, match=f"churnkit reference build --model-name churn --version {v2}"):
        version_reference(v2, champion_version=v1)
    table = cand.X_holdout.assign(churn=np.where(cand.y_holdout.to_numpy() == 1, "Yes", "No"))
    path = write_table(table, tmp_path / "holdout.csv")
    before = registry.client().get_model_version("churn", v2).tags[TAG + "files_sha256"]
    result = CliRunner().invoke(main, ["reference", "build", "--version", v2, "--holdout", str(path), "--json",
                                       "--runs-dir", str(config.runs_dir)])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["n"] == len(table)
    after = registry.client().get_model_version("churn", v2).tags[TAG + "files_sha256"]
    assert after != before
    ref = read_reference(v2)  # stored with the version now, covered by the new manifest
    assert ref.n == len(table) and ref.champion_version == v1
    registry.load_model(f"models:/churn/{v2}")  # the folder still verifies
    assert "churnkit-reference.json" in registry.version_history(v2)[-1]["event"]


def test_a_tampered_or_removed_reference_is_refused_naming_the_file(store):
    config, out = store
    v1 = out[1][0]
    local, _ = registry.resolve_model(f"models:/churn/{v1}")
    path = local / REFERENCE_FILE
    original = path.read_bytes()
    try:
        path.write_bytes(original.replace(b'"mean": ', b'"mean": 9', 1))
        with pytest.raises(IntegrityError, match=f"{REFERENCE_FILE!r} was changed"):
            read_reference(v1)
        path.unlink()
        with pytest.raises(IntegrityError, match=f"{REFERENCE_FILE!r} is missing"):
            version_reference(v1)  # never silently rebuilt from the holdout
    finally:
        path.write_bytes(original)
    assert read_reference(v1).n > 0
