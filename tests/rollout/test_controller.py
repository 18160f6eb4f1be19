"""The rollout controller against a small in-memory deploy target (fast; real registry, fake traffic).

``FakeTarget`` keeps variants and weights in memory and synthesises each variant's request window from
the weights over time and a per-version behaviour (latency, error share, score shift, status), the
way httpx's MockTransport stands in for a network. The real-process tests are in tests/rollout/test_local.py.
"""

from __future__ import annotations

import os
import signal
import time

import numpy as np
import pytest

from churnkit import registry
from churnkit import rollout as ro
from churnkit.config import load_config
from churnkit.deploy.base import CloudTarget, DeployTarget, EndpointState, VariantState
from churnkit.deploy.telemetry import MetricsScraper, TargetLimits, Window
from churnkit.exceptions import RolloutError, RolloutLockedError
from deploy_support import registry_store

FAST = dict(interval=0.3, min_requests=30)


class FakeTarget(DeployTarget):
    """Variants in memory; ``telemetry`` makes ``rate`` requests/s split by the weights in force."""

    name = "fake"

    def __init__(self, endpoint="churn", config=None, behaviour=None, rate=2000.0):
        super().__init__(endpoint, config)
        self.variants: dict[str, VariantState] = {}
        self.behaviour = behaviour or {}
        self.rate = rate
        self.history: list[tuple[float, dict[str, int]]] = []
        self.calls: list[tuple] = []

    def describe(self) -> EndpointState:
        return EndpointState(self.name, self.endpoint, {n: VariantState(**vars(v)) for n, v in self.variants.items()},
                             url="http://fake.invalid")

    def _set(self, weights):
        for n, w in weights.items():
            self.variants[n].weight = w
        self.history.append((time.time(), dict(weights)))

    def _apply_deploy(self, release, asked, before):
        self.calls.append(("deploy", release.variant))
        if self.behaviour.get(release.version, {}).get("deploy_fails"):
            raise RuntimeError(f"{release.variant} exited with status 1")
        self.variants[release.variant] = VariantState(release.variant, release.version, 0, "ready", "")
        self._set(asked)

    def _apply_traffic(self, asked, before):
        self.calls.append(("set_traffic", dict(asked)))
        self._set(asked)

    def _apply_remove(self, variant, asked, before):
        self.calls.append(("remove", variant))
        del self.variants[variant]
        self._set(asked)

    def stop(self):
        self.variants.clear()
        return self.describe()

    def _plan_deploy(self, *a):
        return []

    _plan_traffic = _plan_remove = _plan_stop = _plan_deploy

    def captured_inputs(self, variants, since):
        return self.inputs

    inputs = None

    def expected_scores(self, version):
        """The version's holdout scores through the serving scorer (its rollout reference), read once."""
        from churnkit.reference import version_reference

        cache = self.__dict__.setdefault("_expected", {})
        if version not in cache:
            cache[version] = version_reference(version, config=self.config).scores
        return cache[version]

    def telemetry(self, variants, since, until=None):
        now = time.time()
        rng = np.random.default_rng(int(since * 1000) % 2**32)
        out: dict[str, dict] = {}
        marks = [(t, w) for t, w in self.history] + [(now, None)]
        for (t0, weights), (t1, _) in zip(marks, marks[1:]):
            lo, hi = max(t0, since), t1
            if hi <= lo:
                continue
            for name, w in weights.items():
                v = self.variants.get(name)
                n = int(self.rate * (hi - lo) * w / 100)
                if v is None or n == 0:
                    continue
                b = self.behaviour.get(v.model_version, {})
                errors = int(n * b.get("errors", 0.0))
                lat = b.get("latency", 5.0) + rng.exponential(1.0, n - errors)
                # scores_lag: the capture holding the scores arrives that many seconds after the request counts
                scored = n - errors if "scores_lag" not in b else \
                    int(self.rate * max(0.0, min(hi, now - b["scores_lag"]) - lo) * w / 100 * (1 - b.get("errors", 0.0)))
                # scores as the version scores its own holdout (what its reference expects), maybe shifted
                pool = self.expected_scores(v.model_version)
                scores = np.clip(rng.choice(pool, scored * b.get("scores_per_answer", 5)) + b.get("shift", 0.0), 0, 1)
                acc = out.setdefault(name, {"requests": 0, "errors": 0, "timeouts": 0, "latencies_ms": [], "scores": []})
                acc["requests"] += n
                acc["errors"] += errors
                acc["latencies_ms"] += lat.tolist()
                acc["scores"] += scores.tolist()
        return {n: Window.from_dict(w, "fake") for n, w in out.items() if n in variants}


@pytest.fixture
def store(tmp_path, monkeypatch):
    """churn v1 (champion, deployed at 100 %) and v2 (challenger) in a fresh registry; a fake endpoint."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("MLFLOW_RUN_ID", raising=False)
    runs = registry_store(tmp_path)
    for var in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI"):  # mlflow.set_tracking_uri exports them
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("CHURNKIT_RUNS_DIR", str(runs))
    config = load_config(runs)
    registry.setup_tracking(config)

    def make(**behaviour):
        target = FakeTarget(config=config, behaviour=behaviour)
        target.deploy("models:/churn@champion")
        return target

    return config, make


def run(target, config, **kw):
    return ro.rollout(target, config=config, echo=lambda m: None, **(FAST | kw))


def test_good_challenger_is_promoted_and_old_variant_removed(store):
    config, make = store
    target = make()
    rec = run(target, config, steps=[20, 60, 100])
    assert rec.decision == "promoted" and rec.reason.startswith("all 3 steps passed")
    assert [s.weight for s in rec.steps] == [20, 60, 100] and all(s.ok for s in rec.steps)
    assert target.describe().weights == {"v2": 100}
    assert registry.aliases() == {"champion": "2", "previous": "1"}
    tags = registry.client().get_model_version("churn", "2").tags
    assert tags["churnkit.rollout_decision"] == "promoted" and tags["churnkit.rollout_run_id"] == rec.run_id
    assert "promoted over v1 (20% ok, 60% ok, 100% ok)" in registry.version_history("2")[-1]["event"]
    assert "replaced by v2, kept as previous" in registry.version_history("1")[-1]["event"]
    run_ = registry.client().get_run(rec.run_id)
    assert run_.data.tags["churnkit.rollout_decision"] == "promoted" and run_.data.metrics["rollout_promoted"] == 1.0
    assert {a.path for a in registry.client().list_artifacts(rec.run_id, "rollout")} == {
        "rollout/decision.json", "rollout/timeline.png"}
    assert ro.read_state(ro.state_path(config, "churn"))["phase"] == "done"
    # the weights went 20 → 60 → 100 and only then was v1 removed
    seq = [c for c in target.calls if c[0] != "deploy"]
    assert seq == [("set_traffic", {"v1": 80, "v2": 20}), ("set_traffic", {"v1": 40, "v2": 60}),
                   ("set_traffic", {"v1": 0, "v2": 100}), ("remove", "v1")]


def test_failure_threshold_tolerates_failed_checks_below_it(store):
    config, make = store
    target = make(**{"2": {"latency": 60.0}})
    rec = run(target, config, steps=[30, 100], failure_threshold=3)
    assert rec.decision == "promoted"
    assert [s.ok for s in rec.steps] == [False, False]  # each step failed p99 once: 2 < 3


def test_a_divergence_beyond_the_offline_one_holds_the_traffic_for_review(store):
    config, make = store
    target = make(**{"1": {"shift": 0.3}})  # the champion answers otherwise than offline evaluation saw it
    rec = run(target, config, steps=[30, 100])
    assert rec.decision == "held" and "beyond the offline divergence plus chance" in rec.reason
    assert "held for review" in rec.reason and len(rec.steps) == 1
    assert rec.steps[0].checks[-1]["name"] == "champion_divergence" or any(
        c["verdict"] == "hold" for c in rec.steps[0].checks)
    assert target.describe().weights == {"v1": 70, "v2": 30}  # left as it was for a person to decide
    assert ro.read_state(ro.state_path(config, "churn"))["phase"] == "held"
    assert "held for review" in registry.version_history("2")[-1]["event"]
    back = ro.rollback(target, config=config, echo=lambda m: None)
    assert back.decision == "rolled_back" and back.reason.startswith("held during step 1 (30%) for review")
    assert target.describe().weights == {"v1": 100}
    assert registry.aliases() == {"champion": "1", "challenger": "2"}  # not judged broken: it may roll out again
    strict = run(make(**{"1": {"shift": 0.3}}), config, steps=[30, 100], on_divergence="rollback")
    assert strict.decision == "rolled_back" and "champion_divergence" in [
        c["name"] for c in strict.steps[0].checks if c["verdict"] == "fail"]


def test_errors_end_the_bake_early(store):
    config, make = store
    target = make(**{"2": {"errors": 0.5}})
    rec = run(target, config, steps=[50, 100], interval=30.0)
    assert rec.decision == "rolled_back"
    # ended by the early check (liveness and errors only), not judged at the end of the 30 s bake
    assert [c["name"] for c in rec.steps[0].checks] == ["challenger_live", "error_rate"]


def test_dead_challenger_is_a_breach(store, monkeypatch):
    config, make = store
    target = make()
    orig = target.describe

    def describe():
        state = orig()
        if "v2" in state.variants and target.variants["v2"].weight > 0:
            state.variants["v2"].status = "exited"
        return state

    monkeypatch.setattr(target, "describe", describe)
    rec = run(target, config, interval=5.0)
    assert rec.decision == "rolled_back" and "challenger variant status 'exited'" in rec.reason
    assert target.variants.keys() == {"v1"} and target.variants["v1"].weight == 100


def test_challenger_that_cannot_deploy_is_rolled_back(store):
    config, make = store
    target = make(**{"2": {"deploy_fails": True}})
    rec = run(target, config)
    assert rec.decision == "rolled_back" and "could not be deployed" in rec.reason and rec.steps == []
    assert target.describe().weights == {"v1": 100} and registry.aliases() == {"champion": "1"}


def test_input_drift_is_judged_when_asked(store):
    from churnkit.data import synth_month

    config, make = store
    target = make()
    drifted = synth_month(300, month=4, seed=9, drift="covariate").drop(columns=["churn"])
    target.inputs = drifted
    rec = run(target, config, max_input_drift=0.2)
    assert rec.decision == "rolled_back" and "input drift in" in rec.reason
    assert [c["name"] for c in rec.steps[0].checks if not c["ok"]] == ["input_drift"]


def test_too_little_traffic_rolls_back_at_the_cap(store):
    config, make = store
    target = make()
    target.rate = 20.0
    rec = run(target, config, min_requests=500, max_bake=0.8)
    assert rec.decision == "rolled_back" and rec.reason.startswith("inconclusive: ") and "cap" in rec.reason
    assert "of 500 requests (challenger)" in rec.reason and registry.aliases() == {"champion": "1"}
    registry.set_alias("challenger", "2")
    slow = make()
    slow.rate = 20.0
    held = run(slow, config, min_requests=500, max_bake=0.8, on_inconclusive="hold")
    assert held.decision == "held" and held.reason.startswith("inconclusive: ")
    assert registry.aliases()["challenger"] == "2" and registry.aliases()["champion"] == "1"  # never promoted


class CaptureTarget(FakeTarget):
    """Scores from a capture delivered apart from the request counts, as on the clouds."""

    def limits(self):
        return TargetLimits(scores_delayed=True)


def test_scores_lagging_the_request_counts_are_waited_for_on_a_capture_target(store):
    config, make = store
    lagging = {v: {"scores_lag": 0.6} for v in ("1", "2")}  # both variants' capture arrives 0.6 s late
    target = CaptureTarget(config=config, behaviour=lagging)
    target.deploy("models:/churn@champion")
    rec = run(target, config, steps=[50, 100], max_bake=5.0)
    assert rec.decision == "promoted", rec.summary()
    assert all(s.seconds > 0.6 for s in rec.steps)  # judged once the scores had arrived, not at 0.3 s


def test_missing_scores_are_a_verdict_at_once_where_they_come_with_the_requests(store):
    config, make = store
    target = make(**{v: {"scores_lag": 0.6} for v in ("1", "2")})  # FakeTarget: scores_delayed False
    rec = run(target, config, steps=[50, 100], max_bake=5.0)
    assert rec.decision == "rolled_back" and rec.steps[0].seconds < 0.6


def test_answers_without_scores_roll_back_at_the_cap_on_a_capture_target(store):
    config, _ = store
    target = CaptureTarget(config=config, behaviour={"2": {"scores_per_answer": 0}})
    target.deploy("models:/churn@champion")
    rec = run(target, config, steps=[50, 100], max_bake=1.2)
    assert rec.decision == "rolled_back" and rec.steps[0].seconds >= 1.2  # waited for a capture up to the cap
    assert [c["name"] for c in rec.steps[0].checks if not c["ok"]] == ["scored_share", "prediction_psi"]
    assert "0% of the champion's scores per answer" in rec.reason


def test_nothing_to_roll_out_without_challenger(store):
    config, make = store
    target = make()
    registry.delete_alias("challenger")
    rec = run(target, config)
    assert rec.to_dict()["decision"] == "none" and rec.reason == "nothing to roll out: no challenger"
    assert rec.champion == "1" and rec.challenger is None and target.describe().weights == {"v1": 100}
    assert registry.client().get_run(rec.run_id).data.tags["churnkit.rollout_decision"] == "none"


def test_champion_must_be_deployed(store):
    config, make = store
    with pytest.raises(RolloutError, match=r"champion v1 .* not deployed .*churnkit deploy --target fake"):
        run(FakeTarget(config=config), config)


def test_second_rollout_on_the_endpoint_is_refused(store):
    config, make = store
    target = make()
    with ro.RolloutLock(ro.rollout_dir(config) / "churn.lock", "churn"):
        with pytest.raises(RolloutLockedError, match="another rollout holds the lock on endpoint 'churn'"):
            run(target, config)


def _left_state(config, phase: str, steps=(10, 100), reason: str = "") -> None:
    """The state file of a controller (pid 999999) killed in ``phase`` of rolling v2 out over v1."""
    rec = ro.RolloutRecord("rolled_back", reason, "1", "2")
    ro.write_state(ro.state_path(config, "churn"), {
        "endpoint": "churn", "target": "fake", "model_name": "churn", "champion": "1", "challenger": "2",
        "steps": list(steps), "step": 0, "phase": phase, "reason": reason, "record": rec.to_dict(), "failed_checks": 0,
        "pid": 999999})


def _interrupted(config, target, phase="baking"):
    """What a controller killed in the middle of step 1 leaves: a split endpoint and its state file."""
    target.deploy("models:/churn/2", "v2", 0)
    target.set_traffic({"v1": 90, "v2": 10})
    _left_state(config, phase)


def test_resume_rebakes_the_interrupted_step(store):
    config, make = store
    target = make()
    _interrupted(config, target)
    rec = run(target, config, resume=True)
    assert rec.decision == "promoted" and [s.weight for s in rec.steps] == [10, 100]


def test_rerun_finishes_an_interrupted_promotion(store):
    config, make = store
    target = make()
    _interrupted(config, target, phase="promoting")
    rec = run(target, config)
    assert rec.decision == "promoted" and target.describe().weights == {"v2": 100}
    assert registry.aliases() == {"champion": "2", "previous": "1"}


def test_rerun_finishes_an_interrupted_manual_rollback(store):
    config, make = store
    target = make()
    target.deploy("models:/churn/2", "v2", 100)
    registry.promote("2")
    _left_state(config, "undoing", steps=[100], reason="manual rollback")
    done = ro.rollback(target, config=config, echo=lambda m: None)
    assert done.decision == "rolled_back" and target.describe().weights == {"v1": 100}
    assert registry.aliases() == {"champion": "1", "previous": "2"}


def test_split_traffic_without_a_rollout_is_returned_to_the_champion_first(store):
    config, make = store
    target = make()
    target.deploy("models:/churn/2", "v2", 30)
    rec = run(target, config)
    assert rec.decision == "promoted"
    assert target.calls[2] == ("set_traffic", {"v1": 100, "v2": 0})
    assert any("traffic was split {'v1': 70, 'v2': 30} with no rollout running" in h["event"]
               for h in registry.version_history("1"))


def test_rollback_without_previous_says_so(store):
    config, make = store
    with pytest.raises(RolloutError, match="no version of 'churn' holds the 'previous' alias"):
        ro.rollback(make(), config=config, echo=lambda m: None)


class CloudLike(FakeTarget):
    """A cloud target read through its variants' /metrics, whose variants have no URL serving it."""

    telemetry = CloudTarget.telemetry
    _scraper = MetricsScraper()


def test_target_without_windows_or_metrics_urls_is_refused_before_any_change(store):
    config, make = store
    target = CloudLike(config=config)
    target.deploy("models:/churn@champion")
    with pytest.raises(RolloutError, match=r"variant 'v1' on fake endpoint 'churn' has no URL serving the kit's /metrics"):
        run(target, config)
    assert target.describe().weights == {"v1": 100} and ("deploy", "v2") not in target.calls
    assert registry.aliases() == {"champion": "1", "challenger": "2"}


class TerminatedWhileBaking(FakeTarget):
    """SIGTERM arrives as the first step's weights go live, and again while the controller rolls back."""

    def _apply_traffic(self, asked, before):
        super()._apply_traffic(asked, before)
        if asked.get("v2") == 10 or asked == {"v1": 100}:
            os.kill(os.getpid(), signal.SIGTERM)


def test_sigterm_while_baking_rolls_back_and_a_second_one_cannot_cut_the_rollback_short(store):
    from churnkit.signals import RunTerminated

    config, _ = store
    target = TerminatedWhileBaking(config=config)
    target.deploy("models:/churn@champion")
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(RunTerminated):
        run(target, config)
    assert signal.getsignal(signal.SIGTERM) is before
    assert target.describe().weights == {"v1": 100} and ("remove", "v2") in target.calls
    assert registry.aliases() == {"champion": "1", "challenger": "2"}  # not judged: it keeps its alias
    assert ro.read_state(ro.state_path(config, "churn"))["phase"] == "done"


def test_cli_reports_a_terminated_rollout_with_the_signal_exit_code(monkeypatch, tmp_path):
    from click.testing import CliRunner

    from churnkit.signals import RunTerminated
    from churnkit.cli import main

    def terminated(*args, **kwargs):
        raise RunTerminated(signal.SIGTERM)

    monkeypatch.setattr(ro, "rollout", terminated)
    res = CliRunner().invoke(main, ["rollout", "--target", "local", "--runs-dir", str(tmp_path)])
    assert res.exit_code == 128 + signal.SIGTERM and res.exc_info[0] is SystemExit
    assert "error: RunTerminated: the command received SIGTERM and was stopped" in res.stderr
