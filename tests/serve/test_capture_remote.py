"""Data capture copied to a bucket: what a container on Vertex AI writes for the rollout controller to read."""

from __future__ import annotations

import time

import httpx
import numpy as np
import pytest
from serve_support import CHURNKIT, Server, clean_env, json_rows, served_store
from storage_support import gcs_emulator

pytestmark = pytest.mark.emulator

from churnkit.serve.capture import CaptureWriter, read_capture

PREFIX = "churnkit/capture/churn/v1/"


@pytest.fixture(scope="module")
def gcs():
    with gcs_emulator() as (host, client):
        client.create_bucket("captures")
        yield host, client


def test_a_served_request_lands_in_the_bucket_with_its_scores(gcs, tmp_path):
    host, client = gcs
    runs, loaded = served_store(tmp_path)
    from churnkit.data import synth_month

    rows = json_rows(synth_month(rows=12, month=2, seed=5).drop(columns=["churn", "customer_id"]))
    env = clean_env(CHURNKIT_RUNS_DIR=runs, STORAGE_EMULATOR_HOST=host,
                    CHURNKIT_CAPTURE_URI=f"gs://captures/{PREFIX}")  # as the Vertex target sets it
    server = Server([CHURNKIT, "serve", "--model", "models:/churn@champion", "--port", "0"], env, tmp_path / "serve.log")
    try:
        served = []
        for i in range(0, 12, 4):
            resp = httpx.post(server.url + "/invocations", json={"instances": rows[i:i + 4]}, timeout=30)
            assert resp.status_code == 200, resp.text
            served += [p["churn_probability"] for p in resp.json()["predictions"]]
    finally:
        server.close()  # SIGTERM: the open capture file is closed and copied
    blobs = list(client.list_blobs("captures", prefix=PREFIX))
    assert len(blobs) == 1 and blobs[0].name.endswith(".jsonl"), [b.name for b in blobs]
    local = tmp_path / "copied"
    local.mkdir()
    blobs[0].download_to_filename(str(local / blobs[0].name.rsplit("/", 1)[1]))
    frame = read_capture(local)
    np.testing.assert_allclose(frame["churn_probability"].to_numpy(), served, rtol=0, atol=1e-12)
    assert set(frame["model_version"]) == {"1"} and len(frame) == 12


def test_a_quiet_server_still_hands_over_what_it_captured(gcs, tmp_path, monkeypatch):
    host, client = gcs
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", host)
    writer = CaptureWriter(tmp_path / "cap", remote="gs://captures/quiet/", rotate_seconds=0.3)
    writer.start()
    try:
        writer.write({"time": "2026-12-01T10:00:00.000Z", "request_id": "r1", "model_name": "churn",
                      "model_version": "1", "inputs": [{"tenure": 3}], "predictions": [0.25]})
        deadline = time.monotonic() + 30
        while writer.uploaded == 0 and time.monotonic() < deadline:  # no further record, no close()
            time.sleep(0.05)
        assert writer.uploaded == 1 and writer.upload_failures == 0
        assert [b.name.startswith("quiet/capture-") for b in client.list_blobs("captures", prefix="quiet/")] == [True]
    finally:
        writer.close()


def test_an_unreachable_bucket_is_counted_and_logged_not_raised(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", "http://127.0.0.1:9")  # nothing listens there
    writer = CaptureWriter(tmp_path / "cap", remote="gs://captures/down/", rotate_seconds=60, upload_deadline=3)
    writer.start()
    writer.write({"time": "2026-12-01T10:00:00.000Z", "request_id": "r1", "model_name": "churn",
                  "model_version": "1", "inputs": [{"tenure": 3}], "predictions": [0.25]})
    t0 = time.monotonic()
    writer.close(timeout=120)
    assert time.monotonic() - t0 < 30  # the SDK's retries end at the deadline, not after minutes
    assert writer.upload_failures == 1 and writer.uploaded == 0 and writer.written == 1
    assert "could not be copied to gs://captures/down/" in caplog.text
    assert len(list((tmp_path / "cap").glob("capture-*.jsonl"))) == 1  # kept on local disk
