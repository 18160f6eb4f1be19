"""Capture file names: two replicas rotating in the same second never overwrite each other's scores."""

from __future__ import annotations

import os
import shutil

from churnkit.serve import capture
from churnkit.serve.capture import CaptureWriter, read_capture


def _write(folder, record: dict) -> None:
    writer = CaptureWriter(folder)
    writer.start()
    writer.write(record)
    writer.close()


def test_two_replicas_rotating_in_the_same_second_keep_both_files(tmp_path, monkeypatch):
    monkeypatch.setattr(capture, "file_stamp", lambda: "20261201T100000Z")  # the same second on both
    flat = tmp_path / "bucket-prefix"  # the remote copies land flat under the variant's prefix
    flat.mkdir()
    for replica, score in (("replica-a", 0.25), ("replica-b", 0.75)):
        monkeypatch.setattr(capture.socket, "gethostname", lambda name=replica: name)
        _write(tmp_path / replica, {"time": "2026-12-01T10:00:00.000Z", "request_id": replica, "model_name": "churn",
                                    "model_version": "1", "inputs": [{"tenure": 3}], "predictions": [score]})
        for path in (tmp_path / replica).glob("capture-*.jsonl"):
            shutil.copy(path, flat / path.name)
    names = sorted(p.name for p in flat.iterdir())
    assert len(names) == 2 and [n.split("-")[2:4] for n in names] == [["replica", "a"], ["replica", "b"]]
    assert all(f"-{os.getpid()}-" in n for n in names)
    assert sorted(read_capture(flat)["churn_probability"]) == [0.25, 0.75]


def test_two_writers_of_one_process_and_odd_host_names(tmp_path, monkeypatch):
    monkeypatch.setattr(capture, "file_stamp", lambda: "20261201T100000Z")
    monkeypatch.setattr(capture.socket, "gethostname", lambda: "pod/churn v2:8080")
    for i in range(2):
        _write(tmp_path / f"w{i}", {"time": "2026-12-01T10:00:00.000Z", "inputs": [{"tenure": i}], "predictions": [0.5]})
    (a,), (b,) = (list((tmp_path / f"w{i}").glob("capture-*.jsonl")) for i in range(2))
    assert a.name != b.name and a.name.startswith("capture-20261201T100000Z-pod-churn-v2-8080-")
