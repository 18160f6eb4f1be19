"""The pipeline lock: held by a real process, refused naming it, queued behind it, released when it dies."""

from __future__ import annotations

import json
import signal
import subprocess
import sys

import pytest

from churnkit.config import load_config
from churnkit.exceptions import PipelineLockedError
from churnkit.runner.lock import lock_path, pipeline_lock

HOLDER = """
import sys, time
from churnkit.config import load_config
from churnkit.runner.lock import pipeline_lock
with pipeline_lock(load_config(sys.argv[1]), sys.argv[2]):
    print("held", flush=True)
    time.sleep(float(sys.argv[3]))
"""


def _hold(runs, model: str, seconds: float) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(runs), model, str(seconds)], stdout=subprocess.PIPE,
                            text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_refused_naming_the_holder_then_free_when_it_dies(tmp_path):
    config = load_config(tmp_path / "runs")
    holder = _hold(config.runs_dir, "churn", 600)
    try:
        with pytest.raises(PipelineLockedError) as info, pipeline_lock(config, "churn"):
            pass
        message = str(info.value)
        assert f"pid {holder.pid} on " in message and "another pipeline on model 'churn'" in message
        assert "--wait" in message and info.value.holder["pid"] == holder.pid
        with pipeline_lock(config, "other-model"):  # one lock per model
            pass
    finally:
        holder.send_signal(signal.SIGKILL)  # killed: the kernel releases the flock with the process
        holder.wait()
    with pipeline_lock(config, "churn") as path:
        assert json.loads(path.read_text())["command"]
    assert lock_path(config, "churn").read_text() == ""


def test_wait_queues_behind_the_holder(tmp_path):
    config = load_config(tmp_path / "runs")
    holder = _hold(config.runs_dir, "churn", 1.5)
    said = []
    with pipeline_lock(config, "churn", wait=120, echo=said.append) as path:
        assert json.loads(path.read_text())["pid"] != holder.pid  # ours now: the holder left its block
    assert holder.wait(timeout=60) == 0
    assert said and f"held by pid {holder.pid}" in said[0]


def test_model_names_cannot_escape_the_locks_folder(tmp_path):
    config = load_config(tmp_path / "runs")
    assert lock_path(config, "../../etc/x").parent == config.runs_dir / ".locks"
