"""A rollout that cannot be fooled, on the local target with real processes on 127.0.0.1.

One endpoint for the module: churn v1 (champion) serves through the router on a free port. The
challengers are registered like any version: one trained on a column the traffic does not carry (it
answers 422 to every request), and a good retrained one whose ``churnkit serve`` process is frozen
with SIGSTOP (a hung server). The router is killed under a rollout's feet and must come back on the
endpoint's port, not the default one.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time

import httpx
import mlflow
import numpy as np
import pytest
from click.testing import CliRunner

from churnkit import registry
from churnkit import rollout as ro
from churnkit.cli import main
from churnkit.config import load_config
from churnkit.data import load_table, synth_month
from churnkit.deploy.local import LocalTarget, _alive
from churnkit.evaluate import gate
from churnkit.model import split_holdout, train_model
from conftest import free_port

FAST = dict(steps=[25, 100], interval=1.5, min_requests=30)


@pytest.fixture(scope="module")
def endpoint(tmp_path_factory):
    mp = pytest.MonkeyPatch()
    for var in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI", "MLFLOW_RUN_ID"):
        mp.delenv(var, raising=False)
    base = tmp_path_factory.mktemp("rollout-hardening")
    runs = base / "runs"
    mp.setenv("CHURNKIT_RUNS_DIR", str(runs))
    config = load_config(runs)
    registry.setup_tracking(config)
    mp.delenv("MLFLOW_TRACKING_URI", raising=False)
    dataset = load_table("", rows=1500, seed=0)
    split = split_holdout(dataset, seed=0)
    wider_frame = synth_month(rows=1500, seed=0)
    wider_frame["late_payments"] = np.random.default_rng(0).integers(0, 9, len(wider_frame))  # traffic lacks it
    wider = load_table(wider_frame)
    wider_split = split_holdout(wider, seed=0)

    def register(pipeline, data, data_split) -> str:
        with mlflow.start_run():
            run_id = registry.log_candidate(pipeline, data, data_split, model="logreg", seed=0)
        return registry.register_candidate(registry.load_candidate(run_id), gate(0.99, None, 0.5, -1.0), threshold=0.5)

    versions = {"champion": register(train_model(split, dataset.schema, seed=0), dataset, split),
                "wider": register(train_model(wider_split, wider.schema, seed=0), wider, wider_split),
                "retrained": register(train_model(split_holdout(dataset, seed=1), dataset.schema, seed=1), dataset, split)}
    target = LocalTarget("churn", port=free_port(), config=config, capture=False)
    try:
        target.deploy("models:/churn@champion")
        yield config, target, versions, json.loads(split.X_holdout.to_json(orient="records"))
    finally:
        target.stop()
        mp.undo()


class Clients:
    """Threads posting 10 rows per request through the router, recording (status, seconds) per request."""

    def __init__(self, url: str, rows: list[dict], threads: int = 4):
        self.url, self.rows = url, rows
        self.results: list[tuple[int, float]] = []
        self.stop_event = threading.Event()
        self.lock = threading.Lock()
        self.threads = [threading.Thread(target=self._run, args=(i,), daemon=True) for i in range(threads)]

    def _run(self, i: int) -> None:
        with httpx.Client(timeout=120) as client:
            n = i * 10
            while not self.stop_event.is_set():
                batch = [self.rows[(n + k) % len(self.rows)] for k in range(10)]
                t0 = time.monotonic()
                try:
                    status = client.post(self.url + "/invocations", json={"instances": batch}).status_code
                except httpx.HTTPError:
                    status = 0
                with self.lock:
                    self.results.append((status, time.monotonic() - t0))
                n += 40
                time.sleep(0.01)

    def __enter__(self):
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc):
        self.stop_event.set()
        for t in self.threads:
            t.join(150)


def _quiet(msg):
    pass


def test_a_challenger_answering_4xx_is_rolled_back_not_promoted(endpoint):
    config, target, versions, rows = endpoint
    champion = str(registry.get_champion().version)
    registry.set_alias("challenger", versions["wider"])
    with Clients(target.url, rows):
        rec = ro.rollout(target, config=config, echo=_quiet, **FAST)
    assert rec.decision == "rolled_back", rec.summary()
    assert rec.reason.startswith("step 1 at 25%") and len(rec.steps) == 1
    step = rec.steps[0]
    failed = {c["name"] for c in step.checks if not c["ok"]}
    assert "client_errors" in failed, step.checks
    assert step.client_errors == step.requests >= 30 and step.champion_client_errors == 0
    assert target.describe().weights == {f"v{champion}": 100}
    assert registry.aliases() == {"champion": champion}


def test_a_hung_challenger_costs_clients_one_try_and_is_rolled_back_at_once(endpoint):
    config, target, versions, rows = endpoint
    champion = str(registry.get_champion().version)
    hung = versions["retrained"]
    target.deploy(f"models:/churn/{hung}", weight=0)
    pid = target.read_state()["variants"][f"v{hung}"]["pid"]
    registry.set_alias("challenger", hung)
    interval = 20.0
    with Clients(target.url, rows) as clients:
        time.sleep(1.0)  # the router learns the champion's latency (the per-try timeout derives from it)
        os.kill(pid, signal.SIGSTOP)
        try:
            rec = ro.rollout(target, config=config, echo=_quiet, steps=[25, 100], interval=interval, min_requests=30)
        finally:
            with np.errstate(all="ignore"):
                if _alive(pid):
                    os.kill(pid, signal.SIGCONT)
        time.sleep(0.5)
    assert rec.decision == "rolled_back" and rec.reason.startswith("step 1 at 25%"), rec.summary()
    step = rec.steps[0]
    failed = {c["name"] for c in step.checks if not c["ok"]}
    assert failed & {"timeouts", "challenger_live"}, step.checks
    assert step.seconds < interval  # the bake ended at once, it did not wait for its interval
    statuses = [s for s, _ in clients.results]
    assert statuses and set(statuses) == {200}, sorted(set(statuses))  # retried on the champion
    slowest = max(d for _, d in clients.results)
    assert slowest < target.request_timeout, f"a client waited {slowest:.1f} s: the router's whole timeout"
    assert not _alive(pid)  # the frozen process was ended by the rollback
    assert target.describe().weights == {f"v{champion}": 100}


def test_a_killed_router_is_reported_then_restarted_on_the_endpoints_port(endpoint):
    config, target, versions, rows = endpoint
    port = target.live_port
    assert port == target.port != 8000
    old = target.read_state()["router"]["pid"]
    os.killpg(old, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while _alive(old) and time.monotonic() < deadline:
        time.sleep(0.05)
    runner = CliRunner()
    text = runner.invoke(main, ["endpoint", "status", "--target", "local", "--runs-dir", str(config.runs_dir)])
    assert text.exit_code == 0 and "router" in text.output and "is not running" in text.output, text.output
    assert f"port {port}" in text.output
    as_json = runner.invoke(main, ["endpoint", "status", "--target", "local", "--json", "--runs-dir", str(config.runs_dir)])
    state = json.loads(as_json.stdout)
    assert state["details"]["router"] == "dead" and state["details"]["port"] == port and state["drift"]

    # no --port given (the CLI's default is 8000): the endpoint's port comes from its state
    champion = f"v{registry.get_champion().version}"
    moved = runner.invoke(main, ["endpoint", "traffic", "--target", "local", f"{champion}=100", "--runs-dir",
                                 str(config.runs_dir)])
    assert moved.exit_code == 0, moved.output
    assert target.read_state()["router"]["port"] == port and target.read_state()["router"]["pid"] != old
    assert httpx.post(f"http://127.0.0.1:{port}/invocations", json={"instances": rows[:2]}).status_code == 200

    # killed mid-rollout: the controller's next telemetry read brings it back on the same port
    again = target.read_state()["router"]["pid"]
    os.killpg(again, signal.SIGKILL)
    while _alive(again):
        time.sleep(0.05)
    fresh = LocalTarget("churn", config=config)  # default port 8000, as `churnkit rollout` builds it
    fresh.telemetry([champion], time.time())
    assert fresh.url == f"http://127.0.0.1:{port}" and target.read_state()["router"]["port"] == port
    assert httpx.get(f"http://127.0.0.1:{port}/ping").status_code == 200
