"""Rollouts on the local target: real ``churnkit serve`` processes behind the real router on 127.0.0.1.

One endpoint for the module: churn v1 (champion) serves; the challengers are registered model
versions whose pipelines misbehave (tests/rollout_models.py): one raises for a share of requests
(the server answers 500), one is ten times slower, one shifts its scores, and a retrained good one.
A client replays held-out rows through the router for the whole of every rollout and must see zero
failed requests; the controller must roll every bad challenger back at its first step.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import mlflow
import pytest
from click.testing import CliRunner

from churnkit import registry
from churnkit import rollout as ro
from churnkit.cli import main
from churnkit.config import load_config
from churnkit.data import load_table
from churnkit.deploy.base import CloudTarget
from churnkit.deploy.local import LocalTarget
from churnkit.deploy.telemetry import MetricsScraper
from churnkit.evaluate import gate
from churnkit.model import split_holdout, train_model
from churnkit.replay import Replayer
from conftest import free_port
from rollout_models import SERVE_ENV, misbehaving, trusting_misbehaving

FAST = dict(steps=[25, 100], interval=1.5, min_requests=30)
#: requests/s of 10 rows each that the client sends through the router (CHURNKIT_FULL_LOAD=1: four times more)
CLIENT_RATE = 480.0 if os.environ.get("CHURNKIT_FULL_LOAD") == "1" else 120.0


@pytest.fixture(scope="module")
def endpoint(tmp_path_factory):
    """A registry with v1 (champion, deployed) and the challengers; the local endpoint on a free port."""
    mp = pytest.MonkeyPatch()
    for var in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI", "MLFLOW_RUN_ID"):
        mp.delenv(var, raising=False)
    runs = tmp_path_factory.mktemp("rollout-local") / "runs"
    mp.setenv("CHURNKIT_RUNS_DIR", str(runs))
    for var, value in SERVE_ENV.items():  # the servers import and trust the misbehaving class
        mp.setenv(var, value)
    config = load_config(runs)
    registry.setup_tracking(config)
    mp.delenv("MLFLOW_TRACKING_URI", raising=False)  # mlflow exports it; the config must stay "embedded"
    dataset = load_table("", rows=1500, seed=0)
    split = split_holdout(dataset, seed=0)
    champion = train_model(split, dataset.schema, seed=0)
    retrained = train_model(split_holdout(dataset, seed=1), dataset.schema, seed=1)

    def register(pipeline) -> str:
        with trusting_misbehaving(), mlflow.start_run():
            run_id = registry.log_candidate(pipeline, dataset, split, model="logreg", seed=0)
        return registry.register_candidate(registry.load_candidate(run_id), gate(0.99, None, 0.5, -1.0), threshold=0.5)

    versions = {"good": register(champion),
                "errors": register(misbehaving(champion, error_share=0.3)),
                "slow": register(misbehaving(champion, delay=0.05)),
                "shifted": register(misbehaving(champion, shift=0.3)),
                "retrained": register(retrained)}
    target = LocalTarget("churn", port=free_port(), config=config, capture=False)
    try:
        target.deploy("models:/churn@champion")
        yield config, target, versions, split.X_holdout
    finally:
        target.stop()
        mp.undo()


def _challenger(version: str) -> None:
    registry.set_alias("challenger", version)


def _client(target, rows):
    """Concurrent client load through the router (what users would see)."""
    return Replayer(target.url, rows, CLIENT_RATE, workers=4, batch_size=10, progress=False).start()


def _quiet(msg):
    pass


class MetricsOnly:
    """The local target seen as a cloud target: no router window, only each variant's /metrics."""

    def __init__(self, target):
        self._target = target
        self._scraper = MetricsScraper()

    def telemetry(self, variants, since, until=None):
        return CloudTarget.telemetry(self, variants, since, until)

    def __getattr__(self, name):
        return getattr(self._target, name)


@pytest.mark.parametrize("kind, check, windows", [("errors", "error_rate", "router"), ("slow", "p99_ratio", "router"),
                                                   ("shifted", "prediction_psi", "metrics")])
def test_bad_challenger_is_rolled_back_at_its_first_step_without_failing_a_client_request(endpoint, kind, check, windows):
    config, target, versions, rows = endpoint
    champion = str(registry.get_champion().version)
    bad = versions[kind]
    _challenger(bad)
    client = _client(target, rows)
    try:
        rec = ro.rollout(target if windows == "router" else MetricsOnly(target), config=config, echo=_quiet, **FAST)
    finally:
        seen = client.stop()
    assert seen.failed == 0, seen.errors
    assert seen.requests > 100
    assert rec.decision == "rolled_back" and rec.reason.startswith("step 1 at 25%")
    assert len(rec.steps) == 1 and not rec.steps[0].ok  # judged and rolled back within its first bake
    failed = [c["name"] for c in rec.steps[0].checks if not c["ok"]]
    assert check in failed
    live = target.describe()
    assert live.weights == {f"v{champion}": 100}  # the challenger variant is gone
    assert registry.aliases() == {"champion": champion}
    tags = registry.client().get_model_version("churn", bad).tags
    assert tags["churnkit.rollout_decision"] == "rolled_back" and tags["churnkit.rollout_reason"] == rec.reason
    assert "rolled back (25% failed)" in registry.version_history(bad)[-1]["event"]
    assert f"after v{bad} was rolled back" in registry.version_history(champion)[-1]["event"]


def test_killed_controller_is_rolled_back_by_the_rerun(endpoint):
    config, target, versions, rows = endpoint
    champion = str(registry.get_champion().version)
    challenger = versions["retrained"]
    _challenger(challenger)
    code = ("import sys; from churnkit.rollout import rollout; from churnkit.deploy.local import LocalTarget; "
            "from churnkit.config import load_config; c = load_config(sys.argv[1]); "
            "rollout(LocalTarget('churn', port=int(sys.argv[2]), config=c, capture=False), config=c, "
            "steps=[10, 100], interval=300, min_requests=1)")
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    proc = subprocess.Popen([sys.executable, "-c", code, str(config.runs_dir), str(target.port)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    client = _client(target, rows)
    state_file = ro.state_path(config, "churn")
    try:
        deadline = time.monotonic() + 150  # the controller reads the reference and starts the variant first
        while time.monotonic() < deadline and proc.poll() is None:
            state = ro.read_state(state_file) or {}
            if state.get("phase") == "baking" and target.describe().weights.get(f"v{challenger}") == 10:
                break
            time.sleep(0.2)
        assert proc.poll() is None, proc.stderr.read()
        time.sleep(1.0)  # mid-bake
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
        assert target.describe().weights == {f"v{champion}": 90, f"v{challenger}": 10}  # split, nobody watching
        result = CliRunner().invoke(main, ["rollout", "--target", "local", "--json", "--runs-dir", str(config.runs_dir)])
    finally:
        seen = client.stop()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert result.exit_code == 0, result.output
    rec = json.loads(result.stdout)
    assert rec["decision"] == "rolled_back" and f"(pid {proc.pid}) stopped during step 1 (10%)" in rec["reason"]
    assert target.describe().weights == {f"v{champion}": 100}
    assert registry.aliases() == {"champion": champion, "challenger": challenger}  # not judged: may roll out again
    assert ro.read_state(state_file)["phase"] == "done"
    assert "stopped during step 1" in registry.version_history(challenger)[-1]["event"]
    assert seen.failed == 0, seen.errors


def test_good_challenger_is_promoted_and_rollback_restores_the_previous(endpoint):
    config, target, versions, rows = endpoint
    old = str(registry.get_champion().version)
    new = versions["retrained"]
    _challenger(new)
    client = _client(target, rows)
    runner = CliRunner()
    try:
        result = runner.invoke(main, ["rollout", "--target", "local", "--steps", "25,100", "--interval", "1.5",
                                      "--min-requests", "30", "--json", "--runs-dir", str(config.runs_dir)])
        promoted_weights = target.describe().weights
        promoted_tags = registry.client().get_model_version("churn", new).tags
        back = runner.invoke(main, ["rollback", "--target", "local", "--json", "--runs-dir", str(config.runs_dir)])
    finally:
        seen = client.stop()
    assert result.exit_code == 0, result.output
    rec = json.loads(result.stdout)  # stdout holds the JSON record and nothing else
    assert rec["decision"] == "promoted" and [s["weight"] for s in rec["steps"]] == [25, 100], rec
    assert all(s["ok"] and s["requests"] >= 30 and s["errors"] == 0 for s in rec["steps"])
    assert rec["steps"][0]["prediction_psi"] < 0.2
    assert promoted_weights == {f"v{new}": 100}
    assert promoted_tags["churnkit.rollout_decision"] == "promoted"
    run = registry.client().get_run(promoted_tags["churnkit.rollout_run_id"])
    assert run.data.tags["churnkit.rollout_decision"] == "promoted" and run.data.metrics["rollout_promoted"] == 1.0
    assert back.exit_code == 0, back.output
    undo = json.loads(back.stdout)
    assert undo["decision"] == "rolled_back" and undo["champion"] == old and undo["challenger"] == new
    assert target.describe().weights == {f"v{old}": 100}
    assert registry.aliases() == {"champion": old, "previous": new}
    assert seen.failed == 0, seen.errors
    assert set(seen.versions) == {old, new}  # the client was answered by both, never failed


