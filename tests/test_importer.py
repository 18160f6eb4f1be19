"""Bring your own model: files made the way teams make them (joblib.dump, pickle, skops, an MLflow folder),
imported into a real embedded registry, served by a real ``churnkit serve`` on 127.0.0.1, rolled out on the
local target; every bad input is refused with the registry left as it was.
"""

from __future__ import annotations

import json
from pathlib import Path

import joblib
import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from churnkit import registry
from churnkit.cli import main
from churnkit.data import prepare_features, read_table, synth_month, write_table
from churnkit.exceptions import LabelError, ModelImportError
from churnkit.importer import import_model, read_sample, write_demo_model
from serve_support import CHURNKIT, Server, clean_env, json_rows
from test_scan import os_system_pickle, planted
from model_trust_support import convert_in_process  # noqa: F401 - fixture

# The conversion runs in this process: these tests are about registration, samples and gates. The
# isolated child has its own tests (test_model_trust.py, test_benign_corpus.py).
pytestmark = pytest.mark.usefixtures("convert_in_process")

NUMERIC = ["tenure", "monthly_charges", "support_calls", "senior_citizen"]
_FILES: dict = {}


def files(base: Path) -> dict:
    """Model files and samples, written once: the demo Pipeline, a bare estimator, an HGB pipeline, samples."""
    if not _FILES:
        from sklearn.linear_model import LogisticRegression

        from churnkit.data import load_table
        from churnkit.model import build_model

        model, sample = write_demo_model(base / "demo", rows=1200)
        train = load_table("", rows=1200, month=1, seed=7)
        bare = LogisticRegression(max_iter=1000).fit(train.X[NUMERIC], train.y)  # feature_names_in_ = NUMERIC
        joblib.dump(bare, base / "bare.joblib")
        matrix = LogisticRegression(max_iter=1000).fit(train.X[NUMERIC].to_numpy(), train.y)  # no column names
        joblib.dump(matrix, base / "matrix.joblib")
        hgb = build_model("hgb", train.schema, seed=7).set_params(clf__max_iter=30).fit(train.X, train.y)
        joblib.dump(hgb, base / "hgb.joblib", compress=3)
        unlabelled = read_table(sample).drop(columns=["churn"])
        write_table(unlabelled, base / "unlabelled.csv")
        _FILES.update(dict(pipeline=Path(model), sample=Path(sample), bare=base / "bare.joblib", bare_model=bare,
                           matrix=base / "matrix.joblib", hgb=base / "hgb.joblib", hgb_model=hgb,
                           unlabelled=base / "unlabelled.csv", base=base))
    return _FILES


@pytest.fixture
def f(tmp_path_factory):
    return files(tmp_path_factory.getbasetemp() / "import-files")


_TEMPLATE: dict = {}


def _fresh_runs(base: Path, mp) -> object:
    """A runs folder holding a copy of an initialised, empty MLflow store (creating one costs seconds)."""
    import shutil

    from churnkit.config import load_config

    for var in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI", "MLFLOW_RUN_ID"):
        mp.delenv(var, raising=False)
    if "db" not in _TEMPLATE:
        template = base.parent / "import-store-template" / "runs"
        registry.setup_tracking(load_config(template))
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        _TEMPLATE["db"] = template / "mlflow.db"
    runs = base / "runs"
    runs.mkdir(parents=True)
    shutil.copy(_TEMPLATE["db"], runs / "mlflow.db")  # artifacts stay under the template's folder
    mp.setenv("CHURNKIT_RUNS_DIR", str(runs))
    config = load_config(runs)
    registry.setup_tracking(config)
    mp.delenv("MLFLOW_TRACKING_URI", raising=False)
    return config


@pytest.fixture
def store(tmp_path, monkeypatch):
    """A fresh, empty registry for one test."""
    return _fresh_runs(tmp_path, monkeypatch)


@pytest.fixture(scope="module")
def populated(tmp_path_factory):
    """One registry for the bad-input tests: churn v1 (the demo pipeline) is champion; it must stay exactly so."""
    mp = pytest.MonkeyPatch()
    config = _fresh_runs(tmp_path_factory.mktemp("populated"), mp)
    fs = files(tmp_path_factory.getbasetemp() / "import-files")
    assert import_model(fs["pipeline"], fs["sample"], config=config).version == "1"
    yield config
    mp.undo()


def unchanged(config) -> bool:
    """The populated registry still holds v1 only, as champion."""
    return [v["version"] for v in versions(config)] == ["1"] and registry.aliases() == {"champion": "1"}


def versions(config) -> list[dict]:
    return registry.list_versions("churn", config=config)


def cli(*args):
    return CliRunner().invoke(main, ["import", *map(str, args)])


def test_pipeline_is_registered_like_a_trained_version(f, store):
    import matplotlib.pyplot as plt

    open_before = plt.get_fignums()
    result = import_model(f["pipeline"], f["sample"], "churn", config=store)
    assert result.version == "1" and result.aliases == {"champion": "1"}
    assert plt.get_fignums() == open_before and result.figure.axes  # drawn and returned, not kept by pyplot
    assert result.verdict.passed and result.evaluation.challenger["roc_auc"] > 0.85
    mv = registry.client().get_model_version("churn", "1")
    tags = mv.tags
    from churnkit.data import file_sha256

    assert tags["churnkit.imported"] == "true" and tags["churnkit.source_file"] == "churn-model.joblib"
    assert tags["churnkit.source_sha256"] == file_sha256(f["pipeline"])
    assert json.loads(tags["churnkit.scanner_verdict"])["safe"] is True and "churnkit.trusted" not in tags
    for key in ("artifact_sha256", "threshold", "holdout_roc_auc", "gate", "data_sha256", "train_run_id", "sklearn_version"):
        assert tags["churnkit." + key], key
    # the registered artifact is skops with the churnkit schema, loaded through the kit's own verified path
    loaded = registry.load_model("models:/churn@champion", store)
    assert loaded.path.joinpath("model.skops").is_file() and loaded.schema.names == result.columns
    original = joblib.load(f["pipeline"])
    X = prepare_features(read_table(f["sample"]), loaded.schema)
    assert np.allclose(loaded.pipeline.predict_proba(X)[:, 1], original.predict_proba(X)[:, 1], atol=1e-9, rtol=0)
    assert float(tags["churnkit.threshold"]) == pytest.approx(result.threshold)
    # the reviewer's view shows the import like any other run
    run = registry.client().get_run(result.run_id)
    assert run.data.tags["churnkit.notebook"] == "00-import" and run.data.tags["churnkit.registered_version"] == "1"
    assert run.data.tags["churnkit.role"] == "imported"  # so 02-evaluate never mistakes it for a 01-train candidate


def test_mlflow_folder_and_skops_file_are_imported(f, store, tmp_path):
    import mlflow.sklearn
    import skops.io

    model = joblib.load(f["pipeline"])
    folder = tmp_path / "mlflow-model"
    mlflow.sklearn.save_model(model, folder, serialization_format="cloudpickle", pip_requirements=["scikit-learn"])
    first = import_model(folder, f["sample"], config=store)
    assert first.version == "1" and first.scan.format == "pickle" and first.tags["churnkit.source_file"] == "mlflow-model"
    skops.io.dump(model, tmp_path / "model.skops")
    second = import_model(tmp_path / "model.skops", f["sample"], config=store, min_improvement=-1.0)
    assert second.version == "2" and second.scan.format == "skops" and second.aliases["challenger"] == "2"
    assert second.evaluation.champion["roc_auc"] == pytest.approx(second.evaluation.challenger["roc_auc"])


def test_unlabelled_sample_needs_no_gate_and_records_it(f, store):
    with pytest.raises(LabelError, match="--no-gate"):
        import_model(f["pipeline"], f["unlabelled"], config=store)
    assert versions(store) == []
    result = import_model(f["pipeline"], f["unlabelled"], no_gate=True, threshold=0.4, config=store)
    assert result.version == "1" and result.evaluation is None and result.verdict.summary().startswith("SKIPPED")
    tags = registry.client().get_model_version("churn", "1").tags
    assert tags["churnkit.no_gate"] == "true" and tags["churnkit.sample_labelled"] == "false"
    assert tags["churnkit.threshold"] == "0.4"


def test_sklearn_version_mismatch_is_reported_and_recorded(f, store, tmp_path):
    import sklearn

    data = (f["bare"]).read_bytes()
    current = sklearn.__version__.encode()
    older = b"1.0." + b"0" * (len(current) - 4)  # same length: the pickle stays valid
    assert current in data
    path = tmp_path / "old.joblib"
    path.write_bytes(data.replace(current, older))
    result = import_model(path, f["sample"], config=store, auc_threshold=0.6)
    warning = result.tags["churnkit.sklearn_version_mismatch"]
    assert older.decode() in warning and sklearn.__version__ in warning and "LogisticRegression" in warning
    assert "warning  LogisticRegression was saved with scikit-learn" in result.summary()
    assert registry.client().get_model_version("churn", "1").tags["churnkit.source_sklearn_version"] == older.decode()


def test_trusted_file_is_recorded(store, tmp_path, f):
    import operator

    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import FunctionTransformer

    frame = read_table(f["sample"])
    X = prepare_features(frame, read_sample(f["sample"], NUMERIC).schema)
    model = make_pipeline(FunctionTransformer(operator.abs), LogisticRegression(max_iter=500))
    model.fit(X, frame["churn"].eq("Yes"))
    joblib.dump(model, tmp_path / "custom.joblib")
    refused = cli(tmp_path / "custom.joblib", "--sample", f["sample"], "--runs-dir", store.runs_dir)
    assert refused.exit_code == 1 and "_operator.abs" in refused.stderr and versions(store) == []
    ok = cli(tmp_path / "custom.joblib", "--sample", f["sample"], "--trust", "--auc-threshold", "0.6", "--json",
             "--runs-dir", store.runs_dir)
    assert ok.exit_code == 0, ok.output
    out = json.loads(ok.stdout)
    assert out["version"] == "1" and out["tags"]["churnkit.trusted"] == "true" and out["scan"]["refused"] == ["_operator.abs"]


# ---- served probabilities equal the original object's --------------------------------------------

@pytest.mark.parametrize("kind", ["bare", "hgb"])
def test_served_probabilities_equal_the_original_predict_proba(kind, f, store, tmp_path):
    result = import_model(f[kind], f["sample"], config=store, auc_threshold=0.6)
    assert result.version == "1" and result.wrapped is (kind == "bare")
    raw = read_table(f["sample"]).iloc[:300]  # as exported: numbers as text, blanks, IDs and the label
    original = f[kind + "_model"]
    typed = prepare_features(raw, result.schema)
    want = original.predict_proba(typed[NUMERIC] if kind == "bare" else typed)[:, 1]
    server = Server([CHURNKIT, "serve", "--model", "models:/churn/1", "--port", "0", "--runs-dir",
                     str(store.runs_dir)], clean_env(MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR="false"),
                    tmp_path / "serve.log")
    try:
        import httpx

        resp = httpx.post(server.url + "/invocations", json={"instances": json_rows(raw)}, timeout=30)
    finally:
        server.close()
    assert resp.status_code == 200, resp.text
    body = resp.json()
    got = np.array([p["churn_probability"] for p in body["predictions"]])
    assert body["model"] == {"name": "churn", "version": "1"}
    assert np.max(np.abs(got - want)) < 1e-6
    if kind == "bare":  # a bare estimator falls back to sklearn scoring, said once at start-up
        assert "scoring with sklearn" in server.log_path.read_text()


# ---- bad input: a clear error, exit 1 or 2, the registry unchanged --------------------------------

def _bad_model(kind: str, tmp_path: Path, f) -> Path:
    from sklearn.linear_model import LinearRegression, LogisticRegression

    path = tmp_path / f"{kind}.joblib"
    X = pd.DataFrame({"tenure": [1.0, 2.0, 3.0, 4.0, 5.0, 6.0], "monthly_charges": [5.0, 3.0, 1.0, 2.0, 4.0, 6.0]})
    if kind == "dict":
        joblib.dump({"coef": [1, 2]}, path)
    elif kind == "regressor":
        joblib.dump(LinearRegression().fit(X, [0, 1, 0, 1, 0, 1]), path)
    elif kind == "three_classes":
        joblib.dump(LogisticRegression().fit(X, [0, 1, 2, 0, 1, 2]), path)
    elif kind == "corrupted":
        path.write_bytes(b"\x80\x05" + bytes(range(256)) * 4)
    elif kind == "truncated":
        data = f["hgb"].read_bytes()
        path.write_bytes(data[: len(data) // 3])
    return path


@pytest.mark.parametrize("kind, message", [
    ("dict", "not a classifier with predict_proba"),
    ("regressor", "not a classifier with predict_proba"),
    ("three_classes", "3 classes"),
    ("corrupted", "corrupted"),
    ("truncated", "truncated|corrupted"),
])
def test_bad_model_files_are_refused(kind, message, f, populated, tmp_path):
    res = cli(_bad_model(kind, tmp_path, f), "--sample", f["sample"], "--runs-dir", populated.runs_dir)
    assert res.exit_code == 1, res.output
    assert res.stderr.startswith("error: ")
    import re

    assert re.search(message, res.stderr), res.stderr
    assert unchanged(populated)


@pytest.mark.parametrize("kind", ["os.system", "subprocess.Popen", "builtins.eval"])
def test_malicious_pickles_are_refused_without_running(kind, f, populated, tmp_path):
    path, marker, name = planted(kind, tmp_path)
    res = cli(path, "--sample", f["sample"], "--runs-dir", populated.runs_dir)
    assert res.exit_code == 1 and f"UnsafeModelError: model file '{path}' imports '{name}'" in res.stderr, res.stderr
    assert not marker.exists()
    assert unchanged(populated)


def test_os_system_pickle_names_the_global_as_written(tmp_path):
    path = tmp_path / "m.pkl"
    path.write_bytes(os_system_pickle(tmp_path / "x"))
    from churnkit.importer import scan_model_file

    assert scan_model_file(path).refused == ["os.system"]


def test_sample_problems_are_named(f, populated, tmp_path):
    frame = read_table(f["sample"])
    # missing columns: every one listed
    write_table(frame.drop(columns=["tenure", "contract"]), tmp_path / "missing.csv")
    res = cli(f["pipeline"], "--sample", tmp_path / "missing.csv", "--runs-dir", populated.runs_dir)
    assert res.exit_code == 1 and "lacks 2 column(s) the model needs: ['tenure', 'contract']" in res.stderr
    # label column absent
    res = cli(f["pipeline"], "--sample", f["sample"], "--label-column", "Churn", "--runs-dir", populated.runs_dir)
    assert res.exit_code == 1 and "label column 'Churn' is not in the sample" in res.stderr and "'churn'" in res.stderr
    # scoring fails on one value: the row and the column are named
    broken = frame.copy()
    broken.loc[17, "monthly_charges"] = ""  # the bare model has no imputer: a blank cannot be scored
    write_table(broken, tmp_path / "broken.csv")
    with pytest.raises(ModelImportError, match=r"sample row 17, column 'monthly_charges' \(value nan\)"):
        import_model(f["bare"], tmp_path / "broken.csv", config=populated)
    # a model fitted on a bare matrix needs its columns
    res = cli(f["matrix"], "--sample", f["sample"], "--runs-dir", populated.runs_dir)
    assert res.exit_code == 1 and "--columns a,b,c" in res.stderr
    # usage: a sample that does not exist
    res = cli(f["pipeline"], "--sample", tmp_path / "nope.csv", "--runs-dir", populated.runs_dir)
    assert res.exit_code == 2
    assert unchanged(populated)


def test_matrix_model_with_columns(f, store):
    res = cli(f["matrix"], "--sample", f["sample"], "--columns", ",".join(NUMERIC), "--auc-threshold", "0.6",
              "--json", "--runs-dir", store.runs_dir)
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    assert out["version"] == "1" and out["wrapped"] is True and out["columns"] == NUMERIC
    assert [c["name"] for c in out["schema"]["columns"]] == NUMERIC


def test_import_with_other_columns_than_the_champion(f, store):
    import_model(f["pipeline"], f["sample"], config=store)
    removed = ["gender", "partner", "dependents", "contract", "internet_service", "paperless_billing",
               "payment_method", "total_charges"]
    refused = import_model(f["bare"], f["sample"], config=store, auc_threshold=0.6)
    # the sample has every column, so the champion is compared on the columns it expects
    ev = refused.evaluation
    assert refused.version is None and ev.champion is not None and ev.champion_error is None
    assert refused.schema_changes["removed"] == removed and refused.schema_changes["added"] == []
    assert "input columns differ from the champion's: removed" in refused.summary()
    assert refused.verdict.reasons == [
        (f"challenger roc_auc {ev.challenger['roc_auc']:.4f} minus champion roc_auc {ev.champion['roc_auc']:.4f} on the "
         f"same holdout is {ev.challenger['roc_auc'] - ev.champion['roc_auc']:+.4f}, below min_improvement 0.0")]
    assert [v["version"] for v in versions(store)] == ["1"]
    accepted = import_model(f["bare"], f["sample"], config=store, auc_threshold=0.6, min_improvement=-1.0)
    assert accepted.version == "2"
    tags = registry.client().get_model_version("churn", "2").tags
    assert json.loads(tags["churnkit.schema_changes"])["removed"] == removed


# ---- 02-evaluate with a candidate whose columns differ --------------------------------------------

def _logged_candidate(data_path: str = "") -> str:
    """A 01-train run's candidate, logged through the library (what 01-train does, without its kernel)."""
    import mlflow

    from churnkit.data import load_table
    from churnkit.model import split_holdout, train_model

    dataset = load_table(data_path, rows=1500, seed=0)
    split = split_holdout(dataset, seed=0)
    with mlflow.start_run(run_name="01-train", tags={registry.TAG + "notebook": "01-train"}):
        return registry.log_candidate(train_model(split, dataset.schema), dataset, split, model="logreg", seed=0)


def test_schema_changing_candidate_through_02_evaluate(store, tmp_path):
    """A new export (support_calls gone, region added) is judged by 02-evaluate with a clear verdict, not a crash."""
    from churnkit.evaluate import gate
    from churnkit.runner import run_notebook

    champion = registry.load_candidate(_logged_candidate())
    assert registry.register_candidate(champion, gate(0.99, None, 0.5, -1.0), threshold=0.5) == "1"
    month = synth_month(rows=1500, month=2, seed=4).drop(columns=["support_calls"])
    month["region"] = np.where(month.index % 3 == 0, "north", "south")
    write_table(month, tmp_path / "new-export.csv")
    train_run_id = _logged_candidate(str(tmp_path / "new-export.csv"))

    def evaluate(**params):
        res = run_notebook("02-evaluate", {"train_run_id": train_run_id, **params}, config=store, progress=False)
        assert res.status == "FINISHED"
        return registry.client().get_run(res.run_id).data.tags

    refused = evaluate()
    summary = refused["churnkit.gate_summary"]
    assert refused["churnkit.gate_passed"] == "false" and refused["churnkit.registered_version"] == ""
    assert "the champion expects column(s) ['support_calls'] that this holdout does not have" in summary
    assert "added ['region']" in summary and "removed ['support_calls']" in summary and "allow_schema_change" in summary
    assert registry.aliases() == {"champion": "1"}
    allowed = evaluate(allow_schema_change=True)
    assert allowed["churnkit.registered_version"] == "2" and allowed["churnkit.gate_passed"] == "true"
    assert "allowed by allow_schema_change" in allowed["churnkit.gate_summary"]


# ---- import → deploy local → rollout --------------------------------------------------------------

def test_import_deploy_and_roll_out_on_the_local_target(f, local_endpoint_cleanup, tmp_path):
    from churnkit.data import load_table
    from churnkit.model import build_model
    from conftest import free_port

    config = local_endpoint_cleanup
    runs = str(config.runs_dir)
    retrained = build_model("logreg", load_table("", rows=1200, month=1, seed=8).schema, seed=8)
    month = load_table("", rows=1200, month=1, seed=8)
    joblib.dump(retrained.fit(month.X, month.y), tmp_path / "retrained.joblib")
    assert cli(f["pipeline"], "--sample", f["sample"], "--runs-dir", runs).exit_code == 0
    port = str(free_port())
    res = CliRunner().invoke(main, ["deploy", "--target", "local", "--model", "models:/churn@champion", "--port", port,
                                    "--runs-dir", runs])
    assert res.exit_code == 0, res.output
    res = cli(tmp_path / "retrained.joblib", "--sample", f["sample"], "--min-improvement", "-0.05", "--runs-dir", runs)
    assert res.exit_code == 0 and "registered churn v2 as challenger" in res.stdout, res.output
    res = CliRunner().invoke(main, ["deploy", "--target", "local", "--model", "models:/churn@challenger", "--port", port,
                                    "--runs-dir", runs])
    assert res.exit_code == 0, res.output
    # replayed rows come from the imported version's sample (its registered holdout); latency on a shared host is
    # judged loosely here: the point is the flow of an imported model, test_rollout_local judges latency
    res = CliRunner().invoke(main, ["rollout", "--target", "local", "--steps", "50,100", "--interval", "1.5",
                                    "--min-requests", "30", "--replay-rate", "100", "--max-p99-ratio", "4", "--json",
                                    "--runs-dir", runs])
    assert res.exit_code == 0, res.output
    record = json.loads(res.stdout)
    assert record["decision"] == "promoted" and record["challenger"] == "2" and record["champion"] == "1", record
    assert [s["weight"] for s in record["steps"]] == [50, 100]
    assert all(s["ok"] and s["errors"] == 0 and s["requests"] >= 30 for s in record["steps"])
    assert registry.aliases() == {"champion": "2", "previous": "1"}
    tags = registry.client().get_model_version("churn", "2").tags
    assert tags["churnkit.imported"] == "true" and tags["churnkit.rollout_decision"] == "promoted"
    # an imported challenger with other input columns (4 numeric ones of the export): the replayed rows carry
    # every column of its sample, so the champion (the whole export's columns) answers them as well
    res = cli(f["bare"], "--sample", f["sample"], "--auc-threshold", "0.6", "--min-improvement", "-0.3", "--runs-dir", runs)
    assert res.exit_code == 0 and "registered churn v3 as challenger" in res.stdout, res.output
    assert "input columns differ from the champion's: removed" in res.stdout
    res = CliRunner().invoke(main, ["deploy", "--target", "local", "--model", "models:/churn@challenger", "--port", port,
                                    "--runs-dir", runs])
    assert res.exit_code == 0, res.output
    from churnkit.rollout import rollout

    record = rollout("local", steps=[50, 100], interval=1.5, min_requests=30, replay_rate=60, max_p99_ratio=4.0,
                     config=config, echo=lambda msg: None)
    assert record.challenger == "3" and record.steps and record.steps[0].errors == 0
    assert record.replay.failed == 0 and record.replay.succeeded > 30, record.replay.errors
    assert set(record.replay.versions) == {"2", "3"}  # both schemas answered the same replayed rows
