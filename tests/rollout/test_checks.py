"""Rollout decisions as pure functions on recorded windows; the record, the lock and the state file."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from churnkit import rollout as ro
from churnkit.rollout import checks
from churnkit.clock import utcnow
from churnkit.deploy.telemetry import Window, captured_in_folders, window_from_metrics
from churnkit.exceptions import ParameterError, RolloutLockedError

RNG = np.random.default_rng(7)


def window(requests=400, errors=0, timeouts=0, latency=5.0, scores=None, jitter=1.0, seed=0):
    """A recorded window: ``requests`` requests, latencies around ``latency`` ms, 10 scores per request."""
    rng = np.random.default_rng(seed)
    ok = requests - errors - timeouts
    lat = latency + rng.exponential(jitter, ok)
    if scores is None:
        scores = rng.beta(2, 5, ok * 10)
    return Window(requests, errors, timeouts, tuple(lat), tuple(scores))


# ---- plans ---------------------------------------------------------------------------------------

def test_strategies_and_explicit_steps():
    assert ro.plan_steps("canary") == [10, 100]
    assert ro.plan_steps("linear") == [25, 50, 75, 100]
    assert ro.plan_steps("linear", "10, 50,100") == [10, 50, 100]
    assert ro.plan_steps("canary", [5, 100]) == [5, 100]
    assert ro.plan_steps("canary", ["10", "50", "100"]) == [10, 50, 100]  # `-p steps 10,50,100` on a notebook


@pytest.mark.parametrize("steps, words", [
    ([50, 10, 100], "strictly increasing"), ([10, 50], "add 100"), ([0, 100], "from 1 to 100"),
    ([10, 150], "from 1 to 100"), ("10,x", "comma-separated"), ([10.5, 100], "integer"),
])
def test_bad_steps_name_the_value_and_the_fix(steps, words):
    with pytest.raises(ParameterError, match=words) as info:
        ro.plan_steps("canary", steps)
    assert info.value.name == "steps"


def test_unknown_strategy_lists_the_known_ones():
    with pytest.raises(ParameterError, match=r"'blue-green'.*'canary', 'linear'"):
        ro.plan_steps("blue-green")


def test_thresholds_refuse_nonsense():
    with pytest.raises(ParameterError, match="max_error_rate is a share"):
        ro.Thresholds(max_error_rate=5)
    with pytest.raises(ParameterError, match="failure_threshold must be an integer of at least 1"):
        ro.Thresholds(failure_threshold=0)
    with pytest.raises(ParameterError, match="max_p99_ratio"):
        ro.Thresholds(max_p99_ratio=float("nan"))


# ---- checks on recorded windows ------------------------------------------------------------------

def test_same_model_passes_every_check():
    v = ro.judge_step(window(seed=1), window(seed=2))
    assert v.enough and v.ok and v.failed == []
    assert [c.name for c in v.checks] == ["challenger_live", "error_rate", "client_errors", "scored_share", "p99_ratio",
                                          "prediction_psi"]
    assert v.check("prediction_psi").value < 0.05


def test_errors_fail_only_above_the_limit_and_the_champion():
    th = ro.Thresholds()
    v = ro.judge_step(window(), window(requests=400, errors=20), th)
    assert [c.name for c in v.failed] == ["error_rate"]
    assert "5.00% (20/400)" in v.reason and "limit 1.00%" in v.reason
    # one failure in 400 requests is within 1 %
    assert ro.judge_step(window(), window(requests=400, errors=1), th).ok
    # both variants failing alike is not the challenger's fault
    assert ro.judge_step(window(errors=40), window(errors=40, seed=3), th).check("error_rate").ok
    # timeouts count as failures
    assert not ro.judge_step(window(), window(timeouts=20), th).check("error_rate").ok


def test_ten_times_slower_fails_p99_but_noise_below_the_slack_does_not():
    slow = ro.judge_step(window(latency=5.0), window(latency=50.0))
    assert [c.name for c in slow.failed] == ["p99_ratio"]
    assert slow.check("p99_ratio").value > 5
    # 3 ms vs 6 ms is a ratio of ~2 but only 3 ms apart: under the 10 ms slack
    assert ro.judge_step(window(latency=2.0, jitter=0.1), window(latency=5.0, jitter=0.1)).ok
    assert not ro.judge_step(window(latency=2.0, jitter=0.1), window(latency=5.0, jitter=0.1),
                             ro.Thresholds(p99_slack_ms=0.0)).ok


def test_shifted_predictions_fail_psi():
    base = RNG.beta(2, 5, 4000)
    shifted = np.clip(base + 0.25, 0, 1)
    v = ro.judge_step(window(scores=base), window(scores=shifted))
    assert [c.name for c in v.failed] == ["prediction_psi"]
    assert v.check("prediction_psi").value > 0.2 and "limit 0.2" in v.reason


def test_too_few_scores_extend_the_bake_and_an_uncomputable_psi_does_not_pass():
    few = ro.judge_step(window(), window(requests=15), ro.Thresholds(min_requests=10))  # 150 scores
    assert not few.enough and not few.ok and "150 of 200 scores (challenger)" in few.reason
    psi = checks.check_prediction_psi(window(), window(requests=60, scores=RNG.random(50)), 0.2)
    assert not psi.ok and psi.value is None and "could not be computed" in psi.detail


def client_window(requests=400, client_errors=0, scores_per_answer=10, seed=0):
    """A window where ``client_errors`` requests were answered 4xx (no latency, no scores)."""
    rng = np.random.default_rng(seed)
    answered = requests - client_errors
    return Window(requests, 0, 0, tuple(5.0 + rng.exponential(1.0, answered)),
                  tuple(rng.beta(2, 5, answered * scores_per_answer)), client_errors=client_errors)


def test_a_challenger_answering_4xx_to_every_request_fails():
    """The same traffic goes to both variants: 4xx the champion does not give are the challenger's fault."""
    v = ro.judge_step(client_window(), client_window(client_errors=400, seed=1))
    assert v.enough and not v.ok
    assert {c.name for c in v.failed} == {"client_errors", "scored_share", "prediction_psi"}
    assert "client errors (4xx) 100.00% (400/400) vs champion 0.00%" in v.reason
    assert "prediction PSI could not be computed: 0 challenger" in v.reason
    early = ro.early_breach(client_window(), client_window(requests=60, client_errors=60), ro.Thresholds(min_requests=50))
    assert early is not None and "client_errors" in [c.name for c in early.failed]


def test_client_errors_both_variants_give_alike_are_not_the_challengers():
    v = ro.judge_step(client_window(client_errors=40), client_window(client_errors=42, seed=2))
    assert v.ok, v.reason
    assert v.check("client_errors").value == pytest.approx(42 / 400)
    assert not ro.judge_step(client_window(client_errors=40), client_window(client_errors=80, seed=2)).ok


def test_a_challenger_answering_without_scores_fails_the_scored_share():
    v = ro.judge_step(client_window(), client_window(scores_per_answer=0, seed=3))
    assert v.enough and {c.name for c in v.failed} == {"scored_share", "prediction_psi"}
    assert v.check("scored_share").value == 0.0
    half = checks.check_scored_share(client_window(), client_window(scores_per_answer=4, seed=4))
    assert not half.ok and half.value == pytest.approx(0.4)
    assert checks.check_scored_share(client_window(), client_window(seed=5)).ok


def test_a_timeout_ends_the_bake_at_once_whatever_min_requests():
    th = ro.Thresholds(min_requests=50)
    early = ro.early_breach(window(), window(requests=3, timeouts=1), th)
    assert early is not None and [c.name for c in early.failed] == ["timeouts"]
    assert "timeouts 33.33% (1/3)" in early.reason
    # the champion timing out as often is an outage, not the challenger's doing
    assert ro.early_breach(window(requests=30, timeouts=10), window(requests=3, timeouts=1), th) is None


def test_too_little_traffic_gives_no_verdict_yet():
    v = ro.judge_step(window(), window(requests=20))
    assert not v.enough and not v.ok and "20 of 50 requests (challenger)" in v.reason
    assert [c.name for c in v.checks] == ["challenger_live"]


def test_a_dead_challenger_fails_at_once_and_early():
    v = ro.judge_step(window(), window(requests=0), challenger_status="exited")
    assert [c.name for c in v.failed] == ["challenger_live"] and "'exited'" in v.reason
    early = ro.early_breach(window(), Window(), ro.Thresholds(), "exited")
    assert early is not None and not early.ok


def test_early_breach_only_for_errors_over_min_requests():
    th = ro.Thresholds(min_requests=50)
    assert ro.early_breach(window(), window(requests=10, errors=10), th) is None  # too few to judge
    assert ro.early_breach(window(), window(requests=60, errors=30), th).failed[0].name == "error_rate"
    assert ro.early_breach(window(latency=5), window(latency=500), th) is None  # latency waits for the bake


def test_failure_threshold_counts_failed_checks_over_the_rollout():
    bad = ro.judge_step(window(), window(errors=40))
    assert len(bad.failed) == 1
    assert ro.should_roll_back(0, bad, ro.Thresholds(failure_threshold=1))
    assert not ro.should_roll_back(0, bad, ro.Thresholds(failure_threshold=2))
    assert ro.should_roll_back(1, bad, ro.Thresholds(failure_threshold=2))
    good = ro.judge_step(window(), window(seed=5))
    assert not ro.should_roll_back(0, good, ro.Thresholds())


def test_window_from_router_stats():
    w = Window.from_dict({"requests": 3, "errors": 1, "timeouts": 1, "latencies_ms": [1, 2], "scores": [0.1]})
    assert w.failures == 2 and w.error_rate == pytest.approx(2 / 3) and w.p99_ms == pytest.approx(1.99)
    assert Window.from_dict(None).error_rate == 0.0 and Window().p99_ms is None


def test_psi_of_identical_and_constant_samples():
    x = RNG.random(1000)
    assert ro.psi(x, x) == pytest.approx(0.0)
    assert ro.psi(np.full(100, 0.5), np.full(100, 0.5)) == pytest.approx(0.0)
    assert ro.psi(np.full(100, 0.5), np.full(100, 0.9)) > 1


# ---- the decision record -------------------------------------------------------------------------

def test_record_has_the_design_shape_and_is_valid_json():
    verdict = ro.judge_step(window(), window(latency=50))
    step = ro.StepRecord.from_windows(10, window(), window(latency=50), verdict, ok=False, seconds=2.0,
                                      started=utcnow())
    rec = ro.RolloutRecord("rolled_back", verdict.reason, "1", "2", [step], finished=utcnow())
    d = json.loads(json.dumps(rec.to_dict(), allow_nan=False))
    assert list(d) == ["decision", "reason", "champion", "challenger", "steps", "started", "finished"]
    s = d["steps"][0]
    assert {k: type(s[k]).__name__ for k in ("weight", "requests", "errors", "p99_ms", "prediction_psi", "ok")} == {
        "weight": "int", "requests": "int", "errors": "int", "p99_ms": "float", "prediction_psi": "float", "ok": "bool"}
    assert s["ok"] is False and s["p99_ms"] > 50 and s["champion_p99_ms"] < 20
    assert ro.RolloutRecord.from_dict(d).to_dict() == d
    assert "rolled back v2; v1 serves" in rec.summary() and "FAIL" in rec.summary()
    assert list(rec.table()["weight"]) == [10]


def test_timeline_plot_has_one_panel_per_quantity():
    steps = [ro.StepRecord(w, 100, 0, 5.0, 0.01, True, 900, 0, 4.0, 2.0, checks=[
        {"name": "prediction_psi", "value": 0.01, "limit": 0.2, "ok": True, "detail": ""}]) for w in (10, 100)]
    fig = ro.plot_rollout(ro.RolloutRecord("promoted", "all steps passed", "1", "2", steps))
    assert [a.get_ylabel() for a in fig.axes] == ["traffic %", "requests / s", "p99 latency (ms)", "prediction PSI"]
    empty = ro.plot_rollout(ro.RolloutRecord("none", "nothing to roll out: no challenger", "1", None))
    assert empty.axes[0].texts[0].get_text() == "nothing to roll out: no challenger"


# ---- lock and state ------------------------------------------------------------------------------

def test_second_lock_on_an_endpoint_is_refused_naming_the_holder(tmp_path):
    path = tmp_path / "churn.lock"
    with ro.RolloutLock(path, "churn"):
        with pytest.raises(RolloutLockedError, match=rf"endpoint 'churn': pid {os.getpid()} ") as info:
            ro.RolloutLock(path, "churn").acquire()
        assert info.value.pid == os.getpid() and info.value.path == str(path)
    with ro.RolloutLock(path, "churn") as again:  # released: free again
        assert json.loads(path.read_text())["pid"] == os.getpid()
        assert again.stale_holder is None


def test_lock_of_a_killed_holder_is_taken_over(tmp_path):
    path = tmp_path / "churn.lock"
    code = (f"from churnkit.rollout import RolloutLock; import time; lock = RolloutLock({str(path)!r}).acquire(); "
            "print('locked', flush=True); time.sleep(60)")
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "locked"
        with pytest.raises(RolloutLockedError, match=f"pid {proc.pid} "):
            ro.RolloutLock(path).acquire()
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
        assert not ro.pid_alive(proc.pid)
        lock = ro.RolloutLock(path).acquire()
        assert lock.stale_holder["pid"] == proc.pid
        lock.release()
    finally:
        proc.kill()
        proc.wait()


def test_state_file_is_replaced_atomically(tmp_path):
    path = tmp_path / "rollout" / "churn.json"
    assert ro.read_state(path) is None
    ro.write_state(path, {"phase": "baking", "step": 1})
    ro.write_state(path, {"phase": "done", "step": 2})
    state = ro.read_state(path)
    assert state["phase"] == "done" and state["updated"].endswith("Z")
    assert [p.name for p in path.parent.iterdir()] == ["churn.json"]
    path.write_text("{half")
    assert ro.read_state(path) is None
    time.sleep(0)


def test_input_drift_compares_served_inputs_with_the_training_holdout():
    from churnkit.data import load_table, synth_month
    from churnkit.model import split_holdout

    holdout = split_holdout(load_table("", rows=1200)).X_holdout
    same = ro.check_input_drift(holdout, synth_month(400, month=2, seed=3).drop(columns=["churn"]), 0.2)
    assert same.ok and same.value == 0.0
    drifted = synth_month(400, month=2, seed=3, drift="covariate").drop(columns=["churn"])
    bad = ro.check_input_drift(holdout, drifted, 0.2)
    assert not bad.ok and bad.value > 0.2 and "tenure" in bad.detail and "limit share 0.2" in bad.detail
    none = ro.check_input_drift(holdout, None, 0.2)
    assert none.ok and none.value is None and "not judged" in none.detail
    verdict = ro.judge_step(window(), window(seed=4), ro.Thresholds(max_input_drift=0.2), extra=[bad])
    assert [c.name for c in verdict.failed] == ["input_drift"]
    with pytest.raises(ParameterError, match="max_input_drift is a share"):
        ro.Thresholds(max_input_drift=2)


def test_window_from_two_scrapes_of_the_servers_metrics():
    from churnkit.serve.metrics import Metrics

    m = Metrics("churn", "3", "abc")
    m.observe_request("/invocations", 200, 0.004, 0.003)
    m.observe_scores(np.array([0.1, 0.2]))
    before = m.render()
    for i in range(100):
        m.observe_request("/invocations", 500 if i < 5 else 200, 0.02, None if i < 5 else 0.015)
        m.observe_request("/ping", 200, 0.001, None)
        if i >= 5:
            m.observe_scores(np.array([0.12, 0.62]))
    w = window_from_metrics(before, m.render())
    assert (w.requests, w.errors, w.timeouts) == (100, 5, 0)
    assert len(w.latencies_ms) == 95 and w.p99_ms == pytest.approx(25.0)  # the 15 ms sits in the 25 ms bucket
    assert sorted(set(w.scores)) == [pytest.approx(0.125), pytest.approx(0.625)] and len(w.scores) == 190
    assert window_from_metrics("", before).requests == 1  # no earlier scrape: everything so far


def test_captured_inputs_come_from_the_local_capture_folders_since_the_step(tmp_path):

    from churnkit.serve.capture import CaptureWriter

    def record(t, tenure):
        return {"time": t, "request_id": "r", "model_name": "churn", "model_version": "1",
                "inputs": [{"tenure": tenure, "contract": "One year"}], "predictions": [0.3]}

    for variant, tenure in (("v1", 5), ("v2", 7)):
        writer = CaptureWriter(tmp_path / "capture" / variant)
        writer.start()
        writer.write(record("2026-01-01T00:00:00Z", 1))  # before the step
        writer.write(record("2026-01-01T00:10:00Z", tenure))
        writer.close()
    since = 1767225600.0 + 60  # 2026-01-01T00:01:00Z
    frame = captured_in_folders(tmp_path / "capture", ["v1", "v2"], since)
    assert sorted(frame["tenure"]) == [5, 7] and list(frame.columns) == ["tenure", "contract"]
    assert captured_in_folders(tmp_path / "capture", ["v9"], since) is None
    assert captured_in_folders(tmp_path / "nothing", ["v1"], since) is None


@pytest.mark.parametrize("kw, name", [({"interval": -1}, "interval"), ({"interval": "30"}, "interval"),
                                      ({"max_bake": 0}, "max_bake"), ({"replay_rate": -5}, "replay_rate")])
def test_bad_timing_arguments_are_refused_before_anything_moves(kw, name):
    from churnkit.exceptions import ParameterError
    from churnkit.rollout import rollout

    with pytest.raises(ParameterError, match=name) as err:
        rollout("no-such-target", **kw)  # refused before the target is even looked up
    assert err.value.name == name
