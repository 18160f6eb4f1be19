"""What the controller does with telemetry that comes in periods and arrives late (as every cloud's does):
it refuses a bake shorter than the target can resolve, judges a step only on a window that is complete,
never counts "no data yet" as healthy, and rolls back when telemetry stops arriving. The target is the
in-memory FakeTarget of test_controller.py with a declared metric period and ingestion delay; its
telemetry drops what has not been "ingested" yet."""

from __future__ import annotations

import time

import pytest

from churnkit import registry
from churnkit import rollout as ro
from churnkit.deploy.cloud_telemetry import complete_periods
from churnkit.deploy.telemetry import TargetLimits, Window
from churnkit.exceptions import ParameterError
from rollout.test_controller import FakeTarget, store  # noqa: F401, F811 - the fixture


class LateTarget(FakeTarget):
    """FakeTarget whose telemetry has a metric period and an ingestion delay; ``silent_after`` stops it."""

    name = "late"

    def __init__(self, *a, period=0.5, delay=1.0, **kw):
        super().__init__(*a, **kw)
        self.period, self.delay = period, delay
        self.asked: list[tuple[float, float | None, float]] = []  # (since, until, asked at)
        self.silent_after: float | None = None

    def limits(self):
        return TargetLimits(telemetry_period_s=self.period, telemetry_delay_s=self.delay)

    def telemetry(self, variants, since, until=None):
        now = time.time()
        self.asked.append((since, until, now))
        if self.silent_after is not None and now > self.silent_after:
            return {}
        start, end = complete_periods(since, until, self.period, self.delay)
        if end <= start:
            return {}  # no complete, ingested period yet
        full = super().telemetry(variants, start)
        share = (end - start) / max(now - start, 1e-9)  # only what had arrived by ``end``
        return {n: Window(int(w.requests * share), int(w.errors * share), 0,
                          w.latencies_ms[: int(len(w.latencies_ms) * share)], w.scores[: int(len(w.scores) * share)],
                          "late metrics") for n, w in full.items()}


def test_a_bake_shorter_than_the_telemetry_resolution_is_refused_before_anything_moves(store):  # noqa: F811
    config, _ = store
    target = LateTarget(config=config, period=60, delay=120)
    target.deploy("models:/churn@champion")
    before = list(target.calls)
    with pytest.raises(ParameterError, match=r"interval 30 s is shorter than the late telemetry can judge: at least "
                                             r"180 s \(metric period 60 s \+ ingestion delay 120 s\); pass interval=180 \(--interval 180\)"):
        ro.rollout(target, config=config, interval=30, echo=lambda m: None)
    assert target.calls == before  # no deploy, no traffic
    assert registry.aliases() == {"champion": "1", "challenger": "2"}
    with pytest.raises(ParameterError, match="at least 180 s"):
        ro.plan_rollout(target, config=config, interval=179)
    assert ro.plan_rollout(target, config=config)["interval"] == 180.0  # the default rises to the minimum
    assert ro.bake_interval(LateTarget(config=config, period=1, delay=2), None) == 30.0  # never below 30 s


def test_a_step_is_judged_only_on_a_complete_window(store):  # noqa: F811
    config, _ = store
    target = LateTarget(config=config, period=0.5, delay=1.0)
    target.deploy("models:/churn@champion")
    rec = ro.rollout(target, config=config, steps=[50, 100], interval=1.5, min_requests=30, echo=lambda m: None)
    assert rec.decision == "promoted", rec.summary()
    starts = [t for t, w in target.history if w.get("v2") in (50, 100)]
    for step, started in zip(rec.steps, starts):
        # the window judged spans the whole interval and ended an ingestion delay before it was read
        judged = [(s, u, at) for s, u, at in target.asked if s >= started - 1e-6 and u is not None and u - s >= 1.5]
        assert judged, target.asked
        since, until, at = judged[0]
        assert at - until >= target.delay - 0.05
        assert step.seconds >= 1.5 and step.sources["challenger"] == "late metrics"
    # while a window was incomplete it was never judged: before interval + delay no verdict exists
    assert all(s.requests >= 30 for s in rec.steps)


def test_no_data_is_not_enough_traffic_and_stopped_telemetry_rolls_back_with_that_reason(store):  # noqa: F811
    config, _ = store
    target = LateTarget(config=config, period=0.5, delay=1.0)
    target.deploy("models:/churn@champion")
    target.silent_after = time.time() + 0.5  # telemetry stops arriving after the probe
    rec = ro.rollout(target, config=config, steps=[50, 100], interval=1.5, max_bake=3.0, min_requests=30,
                     echo=lambda m: None)
    assert rec.decision == "rolled_back"
    assert "no telemetry arrived for v2" in rec.reason and "never judged healthy" in rec.reason, rec.reason
    assert not rec.steps[0].ok
    assert target.describe().weights == {"v1": 100}


def test_complete_periods_cover_only_whole_ingested_periods():
    now = time.time()
    start, end = complete_periods(now - 300.5, None, 60, 120)
    assert start % 60 == 0 and end % 60 == 0 and start >= now - 300.5 and end <= now - 120
    s2, e2 = complete_periods(now - 10, now, 60, 120)  # nothing complete and ingested yet
    assert e2 <= s2


def test_rollout_plan_lists_traffic_and_telemetry_per_step_without_credentials(store, monkeypatch):  # noqa: F811
    import json

    from click.testing import CliRunner

    from churnkit.cli import main

    config, _ = store
    for k, v in {"AWS_REGION": "eu-west-1", "CHURNKIT_AWS_ROLE_ARN": "arn:aws:iam::123456789012:role/churnkit",
                 "CHURNKIT_AWS_BUCKET": "acme-churn", "CHURNKIT_AWS_IMAGE_URI": "img:1",
                 "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent", "AWS_CONFIG_FILE": "/nonexistent",
                 "AWS_EC2_METADATA_DISABLED": "true"}.items():
        monkeypatch.setenv(k, v)
    for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(k, raising=False)
    runner = CliRunner()
    res = runner.invoke(main, ["rollout", "--target", "sagemaker", "--steps", "10,100", "--interval", "300", "--plan",
                               "--runs-dir", str(config.runs_dir)])
    assert res.exit_code == 0, res.output
    plan = json.loads(res.stdout)  # one JSON object, nothing else
    assert (plan["champion"], plan["challenger"], plan["min_bake_s"]) == ("1", "2", 180.0)
    assert "Unable to locate credentials" in plan["live_state"] and "as if champion v1 served 100%" in plan["live_state"]
    assert [r["operation"] for r in plan["deploy"]] == ["PutObject", "CreateModel", "CreateEndpointConfig", "UpdateEndpoint"]
    assert [s["weight"] for s in plan["steps"]] == [10, 100]
    first = plan["steps"][0]
    assert first["traffic"][0]["request"]["DesiredWeightsAndCapacities"] == [
        {"VariantName": "v1", "DesiredWeight": 90.0}, {"VariantName": "v2", "DesiredWeight": 10.0}]
    metrics = first["telemetry"][0]["request"]
    assert first["telemetry"][0]["operation"] == "GetMetricData" and metrics["StartTime"] < metrics["EndTime"]
    assert {(q["Label"], q["MetricStat"]["Stat"]) for q in metrics["MetricDataQueries"]} >= {("v2|ModelLatency", "p99"),
                                                                                             ("v2|Invocations", "Sum")}
    assert first["judged_after_s"] == 420.0
    assert plan["on_breach"][0]["request"]["DesiredWeightsAndCapacities"][0] == {"VariantName": "v1", "DesiredWeight": 100.0}
    short = runner.invoke(main, ["rollout", "--target", "sagemaker", "--interval", "30", "--plan",
                                 "--runs-dir", str(config.runs_dir)])
    assert short.exit_code != 0 and "at least 180 s" in short.output
    default = runner.invoke(main, ["rollout", "--target", "sagemaker", "--steps", "10,100", "--plan",
                                   "--runs-dir", str(config.runs_dir)])  # no --interval: the target's minimum
    assert default.exit_code == 0, default.output
    assert json.loads(default.stdout)["interval"] == 180.0


def test_platform_limits_are_checked_before_any_request(store):  # noqa: F811
    from churnkit.exceptions import RolloutError

    config, _ = store

    class Full(LateTarget):
        def limits(self):
            return TargetLimits(max_variants=1, min_weight_step=5, telemetry_period_s=0.1, telemetry_delay_s=0.1)

    target = Full(config=config)
    target.deploy("models:/churn@champion")
    before = list(target.calls)
    with pytest.raises(RolloutError, match=r"already has 1 variants \(\['v1'\]\), its limit of 1; remove one"):
        ro.rollout(target, config=config, interval=1.0, echo=lambda m: None)
    target.limits = lambda: TargetLimits(max_variants=10, min_weight_step=5)
    with pytest.raises(RolloutError, match=r"steps \[12\] are not multiples of 5%"):
        ro.rollout(target, config=config, steps=[12, 100], interval=1.0, echo=lambda m: None)
    assert target.calls == before  # nothing deployed, no traffic moved


def test_capture_lines_cut_mid_write_are_skipped_not_fatal():
    from churnkit.deploy.cloud_telemetry import json_lines

    data = b'{"predictions": [0.2]}\n{"predictions": [0.7]}\n{"predicti'  # the writer was stopped mid-line
    assert json_lines(data) == [{"predictions": [0.2]}, {"predictions": [0.7]}]
    assert json_lines("") == []
