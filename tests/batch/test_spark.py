"""The Spark engine against the local engine: the same rows, scores within 1e-9, the same ranks and reasons,
on a Telco-shaped base with blanks, text numbers and refused rows; reruns replace; a dead job replaces nothing.

One ``local[2]`` session for the module (Java 17 from the machine); small data.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from batch_support import ID, customer_base, score_store

from churnkit.batch.output import read_scores
from churnkit.batch.run import score_base
from churnkit.config import load_config
from churnkit.exceptions import ScoreError

pytest.importorskip("pyspark", reason="the spark extra is not installed: pip install -e '.[spark]'")

COMPARED = ["churn_probability", "churn", "rank", "percentile", "decile"]


@pytest.fixture(scope="module")
def spark():
    from churnkit.batch.spark import local_session

    session = local_session("local[2]", **{"spark.sql.shuffle.partitions": "2", "spark.ui.enabled": "false",
                                           "spark.sql.execution.arrow.maxRecordsPerBatch": "500"})
    session.sparkContext.setLogLevel("ERROR")
    yield session
    session.stop()


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    import os

    base = tmp_path_factory.mktemp("spark-store")
    runs = score_store(base)
    saved = {k: os.environ.pop(k, None) for k in ("MLFLOW_TRACKING_URI", "MLFLOW_RUN_ID", "CHURNKIT_RUNS_DIR")}
    os.environ["CHURNKIT_RUNS_DIR"] = str(runs)
    yield load_config(runs)
    for k, v in saved.items():
        os.environ.pop(k, None)
        if v is not None:
            os.environ[k] = v


@pytest.fixture(scope="module")
def base_csv(tmp_path_factory):
    path = tmp_path_factory.mktemp("spark-base") / "base.csv"
    customer_base(rows=1200).to_csv(path, index=False)
    return path


@pytest.mark.parametrize("version", ["1", "2"], ids=["logreg", "hgb"])
def test_spark_writes_the_rows_the_local_engine_writes(spark, store, base_csv, tmp_path, version):
    kw = dict(id_column=ID, reasons=3, month="2026-05", config=store)
    local = score_base(f"models:/churn/{version}", str(base_csv), str(tmp_path / "local"), workers=2,
                       progress=False, **kw)
    remote = score_base(f"models:/churn/{version}", str(base_csv), str(tmp_path / "spark"), engine="spark",
                        spark=spark, **kw)
    a = read_scores(tmp_path / "local").to_pandas().set_index(ID).sort_index()
    b = read_scores(tmp_path / "spark").to_pandas().set_index(ID).sort_index()
    assert list(a.columns) == list(b.columns)
    assert a.index.tolist() == b.index.tolist() and len(a) == 1198
    np.testing.assert_allclose(a["churn_probability"], b["churn_probability"], rtol=0, atol=1e-9)
    for col in COMPARED[1:]:
        assert a[col].tolist() == b[col].tolist(), col
    reasons = [c for c in a.columns if c.startswith("reason_") and not c.endswith("_contribution")]
    pd.testing.assert_frame_equal(a[reasons], b[reasons])
    np.testing.assert_allclose(a["reason_1_contribution"], b["reason_1_contribution"], rtol=0, atol=1e-9)
    ea = read_scores(tmp_path / "local", errors=True).to_pandas().sort_values("reason")
    eb = read_scores(tmp_path / "spark", errors=True).to_pandas().sort_values("reason")
    assert ea["reason"].tolist() == eb["reason"].tolist() and len(eb) == 2
    assert (remote.summary.rows_in, remote.summary.rows_scored, remote.summary.rows_refused) == (1200, 1198, 2)
    assert [d["rows"] for d in remote.summary.deciles] == [d["rows"] for d in local.summary.deciles]
    assert remote.drift_line.startswith("scored base") and remote.engine == "spark"


def test_a_spark_rerun_replaces_the_partition(spark, store, tmp_path):
    out = tmp_path / "scores"
    kw = dict(id_column=ID, reasons=0, month="2026-05", config=store, engine="spark", spark=spark)
    first = tmp_path / "first.csv"
    customer_base(rows=400).to_csv(first, index=False)
    score_base("models:/churn/1", str(first), str(out), **kw)
    second = tmp_path / "second.parquet"
    customer_base(rows=150, seed=9, bad=False).to_parquet(second)
    result = score_base("models:/churn/1", str(second), str(out), **kw)
    got = read_scores(out).to_pandas()
    assert len(got) == 150 and sorted(got["rank"]) == list(range(1, 151)) and result.summary.replaced
    assert len(read_scores(out, errors=True)) == 0  # the first run's refused rows went with its partition
    assert not [p for p in out.iterdir() if p.name.startswith((".staging-", ".trash-"))]


def test_a_spark_job_that_dies_replaces_nothing(spark, store, tmp_path, monkeypatch):
    out = tmp_path / "scores"
    csv = tmp_path / "base.csv"
    customer_base(rows=300, bad=False).to_csv(csv, index=False)
    kw = dict(id_column=ID, reasons=0, month="2026-05", config=store, engine="spark", spark=spark)
    score_base("models:/churn/1", str(csv), str(out), **kw)
    before = read_scores(out).to_pandas().sort_values(ID).reset_index(drop=True)
    from churnkit.batch import spark as engine

    real = engine.build_archive

    def tampered(prepared, folder):  # the executors find a model file changed after export: they refuse it
        path = real(prepared, folder)
        import tarfile

        root = folder / "archive"
        (root / "model" / "MLmodel").write_text((root / "model" / "MLmodel").read_text() + "\n# changed\n")
        with tarfile.open(path, "w:gz") as tar:
            for item in sorted(root.iterdir()):
                tar.add(item, arcname=item.name)
        return path

    monkeypatch.setattr(engine, "build_archive", tampered)
    with pytest.raises(ScoreError, match="the Spark job failed .*IntegrityError.*nothing was replaced"):
        score_base("models:/churn/1", str(csv), str(out), **kw)
    after = read_scores(out).to_pandas().sort_values(ID).reset_index(drop=True)
    pd.testing.assert_frame_equal(before, after)
    assert not [p for p in out.iterdir() if p.name.startswith(".staging-")]
