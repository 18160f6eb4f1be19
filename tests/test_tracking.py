"""Tracking set-up: runs whose process is gone are reconciled; only this host's and namespace's runs."""

from __future__ import annotations

import subprocess
import sys

from churnkit import tracking
from churnkit.config import TAG


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_reconcile_marks_runs_of_gone_processes_failed(runs_config):
    exp_id = tracking.setup_tracking(runs_config)
    c = tracking.client(runs_config)
    mine = tracking.owner_tags()
    dead = c.create_run(exp_id, tags=mine | {TAG + "pid": str(_dead_pid())}).info.run_id
    alive = c.create_run(exp_id, tags=mine).info.run_id
    elsewhere = c.create_run(exp_id, tags=mine | {TAG + "pid": str(_dead_pid()),
                                                  TAG + "pid_namespace": "pid:[1]"}).info.run_id
    interactive = c.create_run(exp_id, tags={TAG + "interactive": "true"}).info.run_id
    assert tracking.reconcile_runs(runs_config, exp_id) == [dead]
    assert c.get_run(dead).info.status == "FAILED"
    assert c.get_run(dead).data.tags[TAG + "status"] == "FAILED"
    assert "ended without closing the run" in c.get_run(dead).data.tags[TAG + "error"]
    assert [c.get_run(r).info.status for r in (alive, elsewhere, interactive)] == ["RUNNING"] * 3


def test_server_errors_are_recognised_only_for_a_server(runs_config):
    import requests

    from churnkit.config import load_config

    refused = requests.exceptions.ConnectionError("Max retries exceeded with url: /api/2.0/mlflow/runs/create")
    server = load_config(runs_config.runs_dir, environ={"MLFLOW_TRACKING_URI": "http://127.0.0.1:9"})
    error = tracking.server_error(refused, server)
    assert error is not None and "'http://127.0.0.1:9' did not answer" in str(error) and "\n" not in str(error)
    assert tracking.server_down(server)
    assert tracking.server_error(refused, runs_config) is None  # the embedded store has no server
    assert tracking.server_error(ValueError("bad value"), server) is None
