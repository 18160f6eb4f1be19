"""``churnkit serve`` in batch mode (SAGEMAKER_BATCH=true) as a real process: execution parameters, headerless CSV
lines and JSON Lines in the schema's column order, one answer line per input line in order, bad lines answered as
error lines, the payload limit from SAGEMAKER_MAX_PAYLOAD_IN_MB."""

from __future__ import annotations

import csv
import io
import json
import subprocess

import httpx
import numpy as np
import pytest
from serve_support import CHURNKIT, Server, clean_env, served_store

from churnkit.exceptions import ConfigError
from churnkit.serve.batch import BatchSettings, batch_settings

BATCH_ENV = {"SAGEMAKER_BATCH": "true", "SAGEMAKER_MAX_PAYLOAD_IN_MB": "1", "SAGEMAKER_MAX_CONCURRENT_TRANSFORMS": "3",
             "SAGEMAKER_BATCH_STRATEGY": "MULTI_RECORD"}


@pytest.fixture(scope="module")
def batch_server(tmp_path_factory):
    base = tmp_path_factory.mktemp("batch-serve")
    runs, loaded = served_store(base)
    # --max-body-bytes below the payload size: the job's MaxPayloadInMB wins in batch mode
    server = Server([CHURNKIT, "serve", "--model", "models:/churn@champion", "--runs-dir", str(runs), "--port", "0",
                     "--max-body-bytes", "1000", "--max-rows", "5"], clean_env(**BATCH_ENV), base / "serve.log")
    yield server, loaded, runs
    server.close()


def _month(rows=40):
    from churnkit.data import synth_month

    return synth_month(rows=rows, month=4, seed=5, drift="new_category")


def _csv_lines(frame, names) -> bytes:
    buf = io.StringIO()
    frame[names].to_csv(buf, header=False, index=False, lineterminator="\n")
    return buf.getvalue().encode()


def test_execution_parameters_follow_the_job(batch_server):
    server, _, _ = batch_server
    assert httpx.get(server.url + "/execution-parameters").json() == {
        "MaxConcurrentTransforms": 3, "BatchStrategy": "MultiRecord", "MaxPayloadInMB": 1}


def test_csv_and_jsonl_lines_one_answer_per_line_in_order(batch_server):
    from churnkit.serve.scorer import Scorer

    server, loaded, _ = batch_server
    frame = _month()
    names = loaded.schema.names
    want = Scorer.from_loaded(loaded).predict_frame(frame)
    body = _csv_lines(frame, names)  # headerless, blanks in total_charges, an unseen payment method
    resp = httpx.post(server.url + "/invocations", content=body, headers={"content-type": "text/csv", "accept": "text/csv"})
    assert resp.status_code == 200 and resp.headers["content-type"] == "text/csv"
    got = [float(line) for line in resp.text.splitlines()]
    assert len(got) == len(frame) > 5  # more rows than --max-rows: batch bodies are bounded by bytes
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-9)

    jsonl = "".join(json.dumps(dict(zip(names, row))) + "\n" for row in json.loads(frame[names].to_json(orient="values")))
    resp = httpx.post(server.url + "/invocations", content=jsonl, headers={"content-type": "application/jsonlines"})
    answers = [json.loads(line) for line in resp.text.splitlines()]
    np.testing.assert_allclose([a["churn_probability"] for a in answers], want, rtol=0, atol=1e-9)
    assert [a["churn"] for a in answers] == [p >= loaded.threshold for p in want]


def test_bad_lines_become_error_lines_and_the_rest_is_scored(batch_server):
    server, loaded, _ = batch_server
    frame = _month(6)
    names = loaded.schema.names
    lines = _csv_lines(frame, names).decode().splitlines()
    fields = next(csv.reader([lines[2]]))
    fields[names.index("tenure")] = "abc"
    lines[2] = ",".join(fields)
    lines[4] = "only,three,fields"
    resp = httpx.post(server.url + "/invocations", content="\n".join(lines) + "\n", headers={"content-type": "text/csv"})
    out = list(csv.reader(io.StringIO(resp.text)))
    assert resp.status_code == 200 and len(out) == 6
    assert out[2][0].startswith("error: ") and "tenure" in out[2][0] and "'abc'" in out[2][0]
    assert out[4][0].startswith("error: expected") and "got 3" in out[4][0]
    assert all(0.0 <= float(out[i][0]) <= 1.0 for i in (0, 1, 3, 5))


def test_payload_limit_and_formats(batch_server):
    server, loaded, _ = batch_server
    big = b"x" * (1024 * 1024 + 10)
    resp = httpx.post(server.url + "/invocations", content=big, headers={"content-type": "text/csv"})
    assert resp.status_code == 413 and "1048576" in resp.text
    resp = httpx.post(server.url + "/invocations", content=b"1,2\n", headers={"content-type": "text/csv", "accept": "image/png"})
    assert resp.status_code == 406 and "text/csv or application/jsonlines" in resp.json()["error"]
    # JSON requests keep the real-time contract in batch mode
    resp = httpx.post(server.url + "/invocations", json={"instances": [dict(zip(loaded.schema.names, [None] * 3))]})
    assert resp.status_code == 422


def test_bad_batch_variable_is_one_clear_line(tmp_path):
    runs, _ = served_store(tmp_path)
    env = clean_env(SAGEMAKER_BATCH="true", SAGEMAKER_MAX_PAYLOAD_IN_MB="500")
    proc = subprocess.run([CHURNKIT, "serve", "--model", "models:/churn@champion", "--runs-dir", str(runs), "--port", "0"],
                          env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1
    assert "SAGEMAKER_MAX_PAYLOAD_IN_MB '500'" in proc.stderr and "Traceback" not in proc.stderr


def test_settings_from_the_environment():
    assert batch_settings({}) == BatchSettings()  # off outside a transform job
    on = batch_settings({"SAGEMAKER_BATCH": "true", "SAGEMAKER_BATCH_STRATEGY": "SINGLE_RECORD"}, workers=4)
    assert on.execution_parameters() == {"MaxConcurrentTransforms": 4, "BatchStrategy": "SingleRecord", "MaxPayloadInMB": 6}
    with pytest.raises(ConfigError, match="SAGEMAKER_BATCH_STRATEGY 'EVERY_LINE'"):
        batch_settings({"SAGEMAKER_BATCH": "true", "SAGEMAKER_BATCH_STRATEGY": "EVERY_LINE"})
