"""A team tracking server that stops answering, plugin noise, and a fresh embedded store shared by processes.

Real processes throughout: an ``mlflow server`` (sqlite-backed) killed while ``churnkit pipeline`` runs
against it, and several processes creating one embedded store at the same instant.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from serve_support import CHURNKIT, REPO, clean_env
from tracking_support import MlflowServer, free_port

PYTHON = str(Path(sys.executable))


@pytest.fixture(scope="module")
def sqlite_server(tmp_path_factory):
    base = tmp_path_factory.mktemp("mlflow-server")
    server = MlflowServer(f"sqlite:///{base / 'server.db'}", base / "artifacts", base / "server.log").start()
    yield server
    server.stop()


def test_no_plugin_noise_against_a_server(sqlite_server, tmp_path):
    """The sagemaker extra's MLflow plugin must not log its header warning on each request."""
    done = subprocess.run([CHURNKIT, "runs", "--runs-dir", str(tmp_path / "runs")], capture_output=True, text=True,
                          env=clean_env(MLFLOW_TRACKING_URI=sqlite_server.url), cwd=str(REPO), timeout=120)
    assert done.returncode == 0, done.stderr
    assert "list index out of range" not in done.stderr
    assert "resolving request headers" not in done.stderr


def test_dead_server_fails_in_one_line_and_leaves_no_empty_run_folder(tmp_path):
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    runs = tmp_path / "runs"
    done = subprocess.run([CHURNKIT, "run", "01-train", "--runs-dir", str(runs)], capture_output=True, text=True,
                          env=clean_env(MLFLOW_TRACKING_URI=url), cwd=str(REPO), timeout=300)
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert done.returncode == 1, done.stderr
    assert len(lines) == 1 and lines[0].startswith("error: TrackingServerError: ") and url in lines[0], done.stderr
    assert not runs.exists() or not [p for p in runs.iterdir() if p.is_dir()]


@pytest.mark.probe
@pytest.mark.parametrize("sigterm", [False, True], ids=["server-stops", "server-stops-then-SIGTERM"])
def test_server_stopped_mid_pipeline_then_runs_reconciled(tmp_path, sigterm):
    base = tmp_path
    server = MlflowServer(f"sqlite:///{base / 'server.db'}", base / "artifacts", base / "server.log").start()
    runs = base / "runs"
    env = clean_env(MLFLOW_TRACKING_URI=server.url)
    out = open(base / "pipeline.out", "w")  # noqa: SIM115
    err = open(base / "pipeline.err", "w")  # noqa: SIM115
    proc = subprocess.Popen([CHURNKIT, "pipeline", "--runs-dir", str(runs), "-p", "port", str(free_port())],
                            stdout=out, stderr=err, env=env, cwd=str(REPO), text=True)
    try:
        deadline = time.monotonic() + 600
        while "▶ 02-evaluate" not in (base / "pipeline.out").read_text() and proc.poll() is None:
            assert time.monotonic() < deadline, "the pipeline never reached 02-evaluate"
            time.sleep(0.2)
        time.sleep(1.0)  # inside 02-evaluate: its kernel and the runner both talk to the server
        server.stop()
        if sigterm:  # CI cancels the job while MLflow's client retries: the runner stops, its record named
            time.sleep(1.0)
            proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=400)  # a hang guard: MLflow's own defaults would keep it retrying ~12 minutes
    finally:
        if proc.poll() is None:
            proc.kill()
        out.close()
        err.close()
    stderr = (base / "pipeline.err").read_text()
    # jupyter's kernel prints its own transport warning on start; everything else is the kit's one line
    lines = [line for line in stderr.splitlines() if line.strip() and not line.startswith("[IPKernelApp] WARNING")]
    assert code == (128 + signal.SIGTERM if sigterm else 1), stderr
    assert len(lines) == 1 and "Traceback" not in stderr, stderr
    named = lines[0].startswith("error: TrackingServerError: ") and server.url in lines[0]
    assert named or (sigterm and lines[0].startswith("error: RunTerminated: ")), stderr
    server.start()  # the server is back: the next command against it reconciles what the dead pipeline left
    try:
        done = subprocess.run([CHURNKIT, "runs", "--json", "--runs-dir", str(runs)], capture_output=True, text=True,
                              env=env, cwd=str(REPO), timeout=180)
        assert done.returncode == 0, done.stderr
        from mlflow import MlflowClient

        client = MlflowClient(tracking_uri=server.url)
        exp = client.get_experiment_by_name("churnkit")
        found = client.search_runs([exp.experiment_id])
        by_name = {r.data.tags.get("churnkit.notebook"): r for r in found}
        assert {"pipeline", "01-train", "02-evaluate"} <= set(by_name)
        assert not [r for r in found if r.info.status == "RUNNING"]
        for name in ("pipeline", "02-evaluate"):
            run = by_name[name]
            assert run.info.status == "FAILED" and run.data.tags["churnkit.status"] == "FAILED"
            assert f"pid {proc.pid} " in run.data.tags["churnkit.error"]
        assert by_name["01-train"].info.status == "FINISHED"
        assert json.loads(done.stdout) is not None
    finally:
        server.stop()


RACER = """
import sys, time
from pathlib import Path
from churnkit import tracking
from churnkit.config import load_config
go = Path(sys.argv[2])
Path(sys.argv[3]).touch()
while not go.exists():
    time.sleep(0.005)
print(tracking.setup_tracking(load_config(sys.argv[1])))
"""


def test_processes_creating_one_fresh_embedded_store(tmp_path):
    """Four processes set up one fresh runs folder at the same instant: one database, no migration race."""
    runs, go = tmp_path / "runs", tmp_path / "go"
    procs = [subprocess.Popen([PYTHON, "-c", RACER, str(runs), str(go), str(tmp_path / f"ready-{i}")],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=clean_env(), cwd=str(tmp_path))
             for i in range(4)]
    deadline = time.monotonic() + 180
    while len(list(tmp_path.glob("ready-*"))) < 4:
        assert time.monotonic() < deadline and all(p.poll() is None for p in procs), [p.communicate() for p in procs]
        time.sleep(0.05)
    go.touch()
    results = [p.communicate(timeout=180) for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0, 0], [r[1][-2000:] for r in results]
    assert len({r[0].strip() for r in results}) == 1  # one experiment, the same id everywhere
    assert not [r for r in results if "alembic" in r[1].lower() and "Traceback" in r[1]]
