"""churnkit score with the local engine: the registry's model over a Telco-shaped base, row accounting,
MLflow tracking, the scored base's drift, bad input on the command line, and a killed run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pandas as pd
import pytest
from batch_support import ID, customer_base, score_store
from click.testing import CliRunner

from churnkit.batch.output import read_scores
from churnkit.batch.run import score_base
from churnkit.cli import main
from churnkit.config import load_config
from churnkit.data import prepare_features


@pytest.fixture
def store(tmp_path, monkeypatch):
    runs = score_store(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("MLFLOW_RUN_ID", raising=False)
    monkeypatch.setenv("CHURNKIT_RUNS_DIR", str(runs))
    return load_config(runs)


def test_the_base_is_scored_ranked_explained_and_tracked(store, tmp_path):
    base = customer_base()
    folder = tmp_path / "base"
    folder.mkdir()
    base.iloc[:700].to_parquet(folder / "part-0.parquet")  # a folder of files, several batches each
    base.iloc[700:].to_parquet(folder / "part-1.parquet")
    from churnkit.batch import engine

    engine_rows = engine.BATCH_ROWS
    try:
        engine.BATCH_ROWS = 256
        result = score_base("models:/churn/1", str(folder), str(tmp_path / "scores"), id_column=ID, reasons=2,
                            month="2026-05", workers=2, progress=False, config=store)
    finally:
        engine.BATCH_ROWS = engine_rows
    s = result.summary
    assert (s.rows_in, s.rows_scored, s.rows_refused) == (1200, 1198, 2)
    got = read_scores(tmp_path / "scores").to_pandas().sort_values("rank")
    assert len(got) == 1198 and got["rank"].tolist() == list(range(1, 1199))
    assert got["churn_probability"].is_monotonic_decreasing and (got["churn"] == (got["churn_probability"] >= 0.4)).all()
    assert set(got["model_version"]) == {"1"} and set(got["run_id"]) == {result.run_id}
    assert got["reason_1"].isin(base.columns).all()
    assert {"reason_2_value", "reason_2_contribution"} <= set(got.columns) and "reason_3" not in got.columns
    # the compiled scorer gives sklearn's probabilities for the same rows
    from churnkit import registry

    loaded = registry.load_model("models:/churn/1", store)
    scored = base.dropna(subset=[ID]).drop(index=3).set_index(ID)
    want = loaded.pipeline.predict_proba(prepare_features(scored, loaded.schema))[:, 1]
    np.testing.assert_allclose(got.set_index(ID).loc[scored.index, "churn_probability"], want, rtol=0, atol=1e-9)
    errors = read_scores(tmp_path / "scores", errors=True).to_pandas()
    assert sorted(errors["input_row"].tolist()) == [3, 5]
    assert errors.set_index("input_row").loc[3, "reason"] == "column 'tenure': expected a finite number, got 'three'"
    # tracked: the run, its counts and the drift line
    assert result.drift_line.startswith("scored base ") and "of 12 columns" in result.drift_line
    assert "holdout of churn v1" in result.reference_source
    from churnkit.audit import list_runs

    entry = next(e for e in list_runs(store) if e["run_id"] == result.run_id)
    assert entry["notebook"] == "score" and entry["status"] == "FINISHED" and entry["model_version"] == "1"
    assert entry["metrics"]["rows_refused"] == 2 and entry["metrics"]["rows_scored"] == 1198
    assert result.deciles()["rows"].sum() == 1198 and len(result.top(5)) == 5
    from churnkit.audit import write_report

    index = write_report(store, tmp_path / "index.html").read_text()
    assert "scored v1 into score_month=2026-05/model_version=1" in index


def _cli(*args, runs=None):
    runner = CliRunner()
    return runner.invoke(main, [*args, *(["--runs-dir", str(runs)] if runs else [])])


def test_bad_input_is_one_line_and_leaves_the_previous_partition(store, tmp_path):
    csv = tmp_path / "base.csv"
    customer_base(rows=300, bad=False).to_csv(csv, index=False)
    out = tmp_path / "scores"
    first = _cli("score", "--model", "models:/churn/1", "--input", str(csv), "--output", str(out), "--id-column", ID,
                 "--month", "2026-05", runs=store.runs_dir)
    assert first.exit_code == 0, first.output
    before = read_scores(out).to_pandas().sort_values(ID).reset_index(drop=True)
    no_tenure = tmp_path / "no_tenure.csv"
    customer_base(rows=50, bad=False).drop(columns=["tenure", "contract"]).to_csv(no_tenure, index=False)
    twice = tmp_path / "twice.csv"
    pd.concat([customer_base(rows=50, bad=False)] * 2).to_csv(twice, index=False)
    foreign = tmp_path / "reports"
    foreign.mkdir()
    (foreign / "q3.xlsx").write_text("x")
    cases = [
        (["--input", str(csv), "--id-column", "CustomerNo"], "id column 'CustomerNo' is not in the input"),
        (["--input", str(no_tenure)], "lacks the column(s) ['tenure', 'contract']"),
        (["--input", str(twice)], "appear on more than one input row"),
        (["--input", str(tmp_path / "missing.csv")], "does not exist"),
        (["--model", "models:/churn@nonesuch"], "not found in the registry"),
        (["--output", str(foreign)], "is not a churnkit score output"),
        (["--month", "May"], "is not YYYY-MM"),
    ]
    for extra, message in cases:
        args = {"--model": "models:/churn/1", "--input": str(csv), "--output": str(out), "--id-column": ID,
                "--month": "2026-05"}
        args.update(dict(zip(extra[::2], extra[1::2])))
        res = _cli("score", *[x for kv in args.items() for x in kv], runs=store.runs_dir)
        assert res.exit_code == 1, (extra, res.output)
        assert message in res.output and "Traceback" not in res.output, (extra, res.output)
    after = read_scores(out).to_pandas().sort_values(ID).reset_index(drop=True)
    pd.testing.assert_frame_equal(before, after)
    assert sorted(p.name for p in foreign.iterdir()) == ["q3.xlsx"]
    assert not [p for p in out.iterdir() if p.name.startswith(".staging-")]


def test_plan_prints_what_would_be_written_and_writes_nothing(store, tmp_path):
    csv = tmp_path / "base.csv"
    customer_base(rows=100, bad=False).assign(region="north").to_csv(csv, index=False)
    res = _cli("score", "--model", "models:/churn/2", "--input", str(csv), "--output", str(tmp_path / "s"),
               "--id-column", ID, "--month", "2026-05", "--plan", runs=store.runs_dir)
    assert res.exit_code == 0, res.output
    plan = json.loads(res.output)
    assert plan["model"]["version"] == "2" and plan["model"]["scorer"] == "numpy-trees"
    assert plan["output"]["partition"] == "score_month=2026-05/model_version=2" and plan["output"]["state"] == "new"
    assert "region" in plan["input"]["ignored_columns"] and plan["reasons"]["method"].startswith("path attribution")
    assert not (tmp_path / "s").exists()


def test_a_killed_local_run_leaves_the_previous_partition_intact(store, tmp_path):
    csv = tmp_path / "base.csv"
    customer_base(rows=2000, bad=False).to_csv(csv, index=False)
    out = tmp_path / "scores"
    args = ["score", "--model", "models:/churn/1", "--input", str(csv), "--output", str(out), "--id-column", ID,
            "--month", "2026-05", "--runs-dir", str(store.runs_dir)]
    assert _cli(*args[:-2], runs=store.runs_dir).exit_code == 0
    before = read_scores(out).to_pandas().sort_values(ID).reset_index(drop=True)
    # the second run is killed (SIGKILL) once it has staged scored rows, before anything is swapped
    script = textwrap.dedent(f"""
        import os, signal, sys
        from churnkit.batch import engine, output
        engine.BATCH_ROWS = 500
        real = output.ScoreWriter.add
        def add(self, rows):
            n = real(self, rows)
            if len(self._parts) == 2:
                os.kill(os.getpid(), signal.SIGKILL)
            return n
        output.ScoreWriter.add = add
        from churnkit.cli import main
        sys.exit(main({args!r}))
    """)
    env = os.environ | {"PYTHONPATH": os.pathsep.join(sys.path)}
    log = tmp_path / "killed.log"
    with open(log, "w") as fh:
        proc = subprocess.run([sys.executable, "-c", script], env=env, stdout=fh, stderr=fh, timeout=300)
    assert proc.returncode == -signal.SIGKILL, log.read_text()[-2000:]
    assert list(out.glob(".staging-*"))  # it died mid-way
    after = read_scores(out).to_pandas().sort_values(ID).reset_index(drop=True)
    pd.testing.assert_frame_equal(before, after)
    # the next run cleans what the killed one left and replaces the partition
    res = _cli(*args[:-2], runs=store.runs_dir)
    assert res.exit_code == 0, res.output
    assert "replaced" in res.output and not list(out.glob(".staging-*"))


def test_the_spark_engine_without_pyspark_names_the_extra(store, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "pyspark", None)  # import pyspark raises ImportError
    res = _cli("score", "--model", "models:/churn/1", "--input", str(tmp_path / "x.csv"), "--output",
               str(tmp_path / "s"), "--engine", "spark", runs=store.runs_dir)
    assert res.exit_code == 1 and "pip install -e '.[spark]'" in res.output and "Traceback" not in res.output
    assert not (tmp_path / "s").exists()


def test_an_s3_input_is_read_with_the_default_chain_and_a_dead_endpoint_is_one_line(store, tmp_path, monkeypatch):
    """moto's S3 server stands in for S3; pyarrow's S3 filesystem finds it through AWS_ENDPOINT_URL, the
    variable the AWS SDKs document for a custom endpoint (docs.aws.amazon.com/sdkref/latest/guide/feature-ss-endpoints.html)."""
    import logging
    import socket

    import boto3
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        for k, v in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
                     "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}"}.items():
            monkeypatch.setenv(k, v)
        s3 = boto3.client("s3")
        s3.create_bucket(Bucket="acme-data")
        base = customer_base(rows=300)
        s3.put_object(Bucket="acme-data", Key="customers/2026-05/part-0.csv", Body=base.iloc[:200].to_csv(index=False))
        s3.put_object(Bucket="acme-data", Key="customers/2026-05/part-1.csv", Body=base.iloc[200:].to_csv(index=False))
        result = score_base("models:/churn/1", "s3://acme-data/customers/2026-05/", str(tmp_path / "scores"),
                            id_column=ID, reasons=1, month="2026-05", workers=1, progress=False, config=store)
        assert (result.summary.rows_in, result.summary.rows_refused) == (300, 2)
    finally:
        server.stop()
    # the same URI with nothing listening: one line, no traceback, nothing written
    res = _cli("score", "--model", "models:/churn/1", "--input", "s3://acme-data/customers/2026-05/", "--output",
               str(tmp_path / "scores"), "--id-column", ID, "--month", "2026-05", runs=store.runs_dir)
    assert res.exit_code == 1 and "cannot be read" in res.output and "Traceback" not in res.output, res.output
    assert len(read_scores(tmp_path / "scores")) == 298
