"""The five end-to-end rollout cases every cloud runs (imported by tests/rollout/test_cloud_<cloud>.py,
whose ``cloud`` fixture names the cloud): a challenger that returns errors, one ten times slower and one
with shifted scores are rolled back at their first step; a controller killed mid-step is finished
consistently by the rerun; a good challenger is promoted. Every verdict is made by the real controller
from the cloud's own telemetry, read by the real target code from the emulators; a client replays
held-out rows through the endpoint the whole time and must never see a failed request.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from churnkit import registry
from churnkit import rollout as ro
from churnkit.replay import Replayer
from cloud_rollout_support import DELAY, PERIOD, Publisher, make_target

#: steps, bake and traffic floor of every simulated rollout (a bake of 3 metric periods, judged 2 s later); the
#: p99 slack absorbs a loaded test machine's noise (the slow challenger adds 50 ms to every call)
FAST = dict(steps=[25, 100], interval=3.0, min_requests=20, p99_slack_ms=25.0)
CLIENT_RATE = 60.0
TESTS = Path(__file__).resolve().parents[1]


def _quiet(msg):
    pass


@pytest.fixture(scope="module")
def sim(cloud_world, cloud, tmp_path_factory):
    """``(config, target, publisher, spec, versions)`` for ``cloud``, with client traffic running."""
    config, inner, versions, rows, em = cloud_world
    spec = {"cloud": cloud, "endpoint": inner.endpoint, "port": inner.port, "runs_dir": str(config.runs_dir)}
    folder = tmp_path_factory.mktemp(f"sim-{cloud}")
    if cloud == "sagemaker":
        spec["moto_url"] = em.moto_url or em.start_moto()
    elif cloud == "azureml":
        spec["azurite_url"] = em.azurite_url or em.start_azurite()
        spec["points_file"] = str(folder / "azure-monitor-points.jsonl")
    else:
        spec["gcs_url"] = em.gcs_url or em.start_gcs()
        spec["points_file"] = str(folder / "monitoring-points.jsonl")
        spec["monitoring_url"] = em.start_monitoring(Path(spec["points_file"]))
    target = make_target(spec)
    publisher = Publisher(spec, target, em).start()
    client = Replayer(inner.url, rows, CLIENT_RATE, workers=4, batch_size=10, progress=False).start()
    try:
        yield config, target, publisher, spec, versions
    finally:
        seen = client.stop()
        publisher.stop()
        assert seen.failed == 0, seen.errors  # the client never saw a failed request
        assert seen.requests > 100


def _challenger(version: str) -> None:
    registry.set_alias("challenger", version)


def _champion() -> str:
    return str(registry.get_champion().version)


@pytest.mark.parametrize("kind, check", [("errors", "error_rate"), ("slow", "p99_ratio"), ("shifted", "prediction_psi")])
def test_bad_challenger_is_rolled_back_from_the_clouds_telemetry(sim, cloud, kind, check):
    config, target, publisher, spec, versions = sim
    champion, bad = _champion(), versions[kind]
    _challenger(bad)
    started = time.time()
    rec = ro.rollout(target, config=config, echo=_quiet, **FAST)
    assert rec.decision == "rolled_back" and rec.reason.startswith("step 1 at 25%"), rec.summary()
    (step,) = rec.steps
    failed = [c["name"] for c in step.checks if not c["ok"]]
    assert check in failed, (step.checks, step.sources)
    assert step.requests >= 1 and step.champion_requests >= FAST["min_requests"]
    # the window judged was complete: it ended at least the ingestion delay before the verdict
    assert time.time() - started >= PERIOD + DELAY
    source = {"sagemaker": "CloudWatch AWS/SageMaker", "azureml": "Azure Monitor",
              "vertex": "Cloud Monitoring"}[cloud]
    assert source in step.sources["challenger"] and source in step.sources["champion"]
    assert target.describe().weights == {f"v{champion}": 100}
    assert registry.aliases()["champion"] == champion and registry.aliases().get("challenger") != bad
    tags = registry.client().get_model_version("churn", bad).tags
    assert tags["churnkit.rollout_decision"] == "rolled_back"


def test_killed_controller_is_finished_consistently_by_the_rerun(sim, cloud):
    config, target, publisher, spec, versions = sim
    # a challenger that no other case promotes (the kill comes before any verdict, so which one does not matter)
    champion, challenger = _champion(), versions["shifted"]
    _challenger(challenger)
    code = ("import json, sys; from churnkit.rollout import rollout; from cloud_rollout_support import make_target; "
            "spec = json.loads(sys.argv[1]); t = make_target(spec); "
            "rollout(t, config=t.config, steps=[10, 100], interval=300, min_requests=1)")
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env["PYTHONPATH"] = os.pathsep.join([str(TESTS), env.get("PYTHONPATH", "")])
    proc = subprocess.Popen([sys.executable, "-c", code, json.dumps(spec)], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    state_file = ro.state_path(config, "churn")
    try:
        deadline = time.monotonic() + 180  # the controller reads the reference and starts the variant first
        while time.monotonic() < deadline and proc.poll() is None:
            state = ro.read_state(state_file) or {}
            if state.get("phase") == "baking" and target.describe().weights.get(f"v{challenger}") == 10:
                break
            time.sleep(0.2)
        assert proc.poll() is None, (proc.returncode, proc.stdout.read(), registry.aliases(), ro.read_state(state_file))
        time.sleep(1.0)  # mid-bake
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
        assert target.describe().weights == {f"v{champion}": 90, f"v{challenger}": 10}  # split, nobody watching
        rec = ro.rollout(target, config=config, echo=_quiet, **FAST)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert rec.decision == "rolled_back" and f"(pid {proc.pid}) stopped during step 1 (10%)" in rec.reason
    assert target.describe().weights == {f"v{champion}": 100}
    aliases = registry.aliases()
    assert (aliases["champion"], aliases["challenger"]) == (champion, challenger)  # not judged: may roll out again
    assert ro.read_state(state_file)["phase"] == "done"


def test_good_challenger_is_promoted_from_the_clouds_telemetry(sim, cloud):
    config, target, publisher, spec, versions = sim
    old, new = _champion(), versions[f"good-{cloud}"]
    _challenger(new)
    # at 100 % one serve process takes all the client traffic and is compared with the champion's window at
    # 50 %: on a loaded two-core test machine that alone can double p99, so the ratio limit is 3 here (the
    # slow challenger's is five times and more)
    rec = ro.rollout(target, config=config, echo=_quiet, **(FAST | dict(steps=[50, 100], max_p99_ratio=3.0)))
    assert rec.decision == "promoted", rec.summary()
    assert [s.weight for s in rec.steps] == [50, 100]
    assert all(s.ok and s.requests >= FAST["min_requests"] and s.errors == 0 for s in rec.steps), rec.summary()
    assert rec.steps[0].prediction_psi is not None and rec.steps[0].prediction_psi < 0.2
    assert target.describe().weights == {f"v{new}": 100}
    assert registry.aliases() == {"champion": new, "previous": old}
    logged = registry.client().get_run(registry.client().get_model_version("churn", new).tags["churnkit.rollout_run_id"])
    assert logged.data.tags["churnkit.rollout_decision"] == "promoted"
