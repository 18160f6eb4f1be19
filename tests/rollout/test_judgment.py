"""The rollout judgment on recorded windows and references (pure: no registry, no servers)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from churnkit import rollout as ro
from churnkit.deploy.telemetry import Window
from churnkit.exceptions import IntegrityError, ParameterError
from churnkit.reference import Reference, check_schema, score_divergence
from churnkit.rollout import checks
from churnkit.rollout.record import StepRecord

M = 1000  # holdout rows of a demo month


def reference(scores, champion_scores=None, version="3", champion="2") -> Reference:
    div = None if champion_scores is None else score_divergence(champion_scores, scores)
    return Reference(np.asarray(scores), {"tenure": "numeric"}, "numpy-logreg", None,
                     None if champion_scores is None else champion, None if champion_scores is None else
                     np.asarray(champion_scores), div, version=version)


def live(scores, requests=None, latency=5.0, seed=0) -> Window:
    rng = np.random.default_rng(seed)
    requests = requests or len(scores)
    return Window(requests, 0, 0, tuple(latency + rng.exponential(1.0, requests)), tuple(np.asarray(scores, float)))


def logistic(z):
    return 1 / (1 + np.exp(-z))


def world(seed=0, n=5000):
    """Two models' scores on the same customers: the champion's concept and a new one (concept drift)."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 3))
    old = logistic(-1.0 + 1.4 * x[:, 0] - 0.4 * x[:, 1])
    new = logistic(-2.0 - 0.8 * x[:, 0] + 2.2 * x[:, 2])
    return old, new


def test_chance_level_matches_the_chi_squared_approximation_and_simulation():
    # (1/N + 1/M) chi2_9 99th percentile: about 0.12 at 200 vs 2000 and 0.02 at 2000 vs 2000
    assert checks.chance_psi(200, 2000) == pytest.approx(0.119, abs=0.002)
    assert checks.chance_psi(2000, 2000) == pytest.approx(0.0217, abs=0.001)
    rng = np.random.default_rng(1)
    ref = rng.beta(2, 5, 2000)
    edges = checks.decile_edges(ref)
    false = np.mean([checks.psi_on_edges(ref, rng.beta(2, 5, 200), edges) > checks.chance_psi(200, 2000)
                     for _ in range(600)])
    assert false <= 0.025  # the 99th percentile holds by chance (binomial slack on 600 draws)


def test_a_concept_drift_retrain_passes_although_it_differs_from_the_champion():
    old, new = world()
    ref = reference(new[:M], old[:M])
    assert ref.offline_divergence["psi"] > 0.2  # today's rule would roll it back
    rng = np.random.default_rng(2)
    idx_ch, idx_cp = rng.choice(np.arange(M, 5000), 500), rng.choice(np.arange(M, 5000), 2000)
    v = ro.judge_step(live(old[idx_cp], 200), live(new[idx_ch], 50), reference=ref)
    assert v.ok, v.reason
    by = {c.name: c for c in v.checks}
    assert by["prediction_psi"].verdict == "pass" and by["champion_divergence"].verdict == "pass"
    assert by["champion_divergence"].expected == pytest.approx(ref.offline_divergence["psi"])
    legacy = ro.judge_step(live(old[idx_cp], 200), live(new[idx_ch], 50))  # PSI against the champion, limit 0.2
    assert not legacy.ok and legacy.check("prediction_psi").value > 0.2


def test_a_units_skewed_challenger_fails_against_its_own_reference():
    old, new = world()
    ref = reference(new[:M], old[:M])
    skewed = logistic(np.log(new[M:M + 500] / (1 - new[M:M + 500])) - 2.5)  # what charges in cents do to a logit
    v = ro.judge_step(live(old[M:M + 2000], 200), live(skewed, 50), reference=ref)
    psi = v.check("prediction_psi")
    assert not psi.ok and psi.verdict == "fail" and psi.value > psi.limit
    assert "v3 its own holdout: 1000 scores through the serving scorer" in psi.detail
    assert psi.n == 500 and psi.reference.startswith("v3 its own holdout")
    assert not v.check("calibration").ok


def test_a_live_divergence_beyond_the_offline_one_holds_unless_asked_to_roll_back():
    old, new = world()
    ref = reference(new[:M], new[:M] * 0.98 + 0.01)  # offline: the two models nearly agree
    v = ro.judge_step(live(old[M:M + 2000], 200), live(new[M:M + 500], 50), reference=ref)
    div = v.check("champion_divergence")
    assert div.verdict == "hold" and div.ok and v.held == [div] and not v.failed and not v.ok
    assert "beyond the offline divergence plus chance" in v.reason
    strict = ro.judge_step(live(old[M:M + 2000], 200), live(new[M:M + 500], 50), reference=ref,
                           thresholds=ro.Thresholds(on_divergence="rollback"))
    assert [c.name for c in strict.failed] == ["champion_divergence"]


def test_calibration_catches_a_small_uniform_shift_psi_may_forgive():
    old, new = world()
    ref = reference(new[:M], old[:M])
    v = ro.judge_step(live(old[M:M + 2000], 200), live(np.clip(new[M:M + 2000] + 0.06, 0, 1), 200), reference=ref)
    cal = v.check("calibration")
    assert not cal.ok and cal.value > cal.limit >= 0.03 and cal.expected == pytest.approx(ref.mean)


def test_ks_is_reported_beside_the_psi_and_never_decides():
    old, new = world()
    ref = reference(new[:M], old[:M])
    v = ro.judge_step(live(old[M:M + 2000], 200), live(new[M:M + 500], 50), reference=ref)
    ks = v.check("prediction_ks")
    assert ks.ok and ks.verdict in ("pass", "warn") and 0 <= ks.value <= 1 and ks.n == 500


def test_no_offline_divergence_is_said_not_silently_passed():
    _, new = world()
    ref = reference(new[:M])
    v = ro.judge_step(live(new[M:M + 2000], 200), live(new[M:M + 500], 50), reference=ref)
    div = v.check("champion_divergence")
    assert div.verdict == "not_judged" and "not judged" in div.detail


def test_serving_parity_matches_to_a_millionth():
    x = np.linspace(0, 1, 50)
    assert ro.check_parity(x, x + 5e-7).verdict == "pass"
    bad = ro.check_parity(x, x[::-1])
    assert not bad.ok and bad.value > 0.5 and bad.n == 50 and "re-scored with the registered artifact" in bad.detail
    assert ro.check_parity(None, None).verdict == "not_judged"


def test_the_error_budget_is_split_across_looks():
    one, three = ro.Thresholds(looks=1), ro.Thresholds(looks=3)
    assert checks.chance_psi(300, M, alpha=three.alpha / three.looks) > checks.chance_psi(300, M, alpha=one.alpha)
    old, new = world()
    ref = reference(new[:M], old[:M])
    rng = np.random.default_rng(5)
    false = 0
    for k in range(300):
        ch = live(rng.choice(new[M:], 300), 60, seed=k)
        cp = live(rng.choice(old[M:], 1200), 240, seed=k)
        false += any(not ro.judge_step(cp, ch, three, reference=ref).check(n).ok
                     for n in ("prediction_psi",))
    assert false <= 9  # three looks at alpha/3 each spend about alpha in all


@pytest.mark.parametrize("kw, words", [
    (dict(max_prediction_psi=-0.1), "non-negative"),
    (dict(max_prediction_psi=float("nan")), "non-negative"),
    (dict(max_prediction_psi=0.05), "below the chance level of PSI for min_scores 200 (0."),
    (dict(alpha=0.0), "alpha"),
    (dict(looks=0), "looks"),
    (dict(on_divergence="ignore"), "on_divergence"),
    (dict(on_inconclusive="promote"), "on_inconclusive"),
])
def test_limits_out_of_range_are_refused_naming_the_value(kw, words):
    with pytest.raises(ParameterError) as err:
        ro.Thresholds(**kw)
    assert words in str(err.value)


def test_psi_limit_error_names_the_chance_level_and_the_fix():
    with pytest.raises(ParameterError) as err:
        ro.Thresholds(max_prediction_psi=0.05, min_scores=200)
    level = checks.chance_psi(200, math.inf, alpha=0.01 / 3)
    assert f"{level:.3f}" in str(err.value) and "raise min_scores to" in str(err.value)


def test_a_schema_other_than_the_reference_is_refused():
    from churnkit.data import ColumnSpec, Schema

    ref = reference(np.linspace(0, 1, 10))
    tenure = ColumnSpec("tenure", "numeric", "float64", False)
    check_schema(ref, Schema([tenure], "churn"))
    with pytest.raises(IntegrityError, match=r"added \['plan'\]"):
        check_schema(ref, Schema([tenure, ColumnSpec("plan", "categorical", "object", False)], "churn"))


def test_reference_file_round_trips_and_a_damaged_one_names_the_file():
    old, new = world()
    ref = reference(new[:M], old[:M])
    back = Reference.from_dict(json.loads(ref.to_bytes()), version="3")
    assert back.n == M and back.champion_version == "2" and np.allclose(back.scores, ref.scores)
    assert back.offline_divergence == ref.offline_divergence
    damaged = json.loads(ref.to_bytes()) | {"n": 5}
    with pytest.raises(IntegrityError, match="churnkit-reference.json.*n 5"):
        Reference.from_dict(damaged, source="churnkit-reference.json")


def test_step_record_carries_the_checks_and_both_divergences():
    old, new = world()
    ref = reference(new[:M], old[:M])
    cp, ch = live(old[M:M + 2000], 200), live(new[M:M + 500], 50)
    v = ro.judge_step(cp, ch, reference=ref)
    step = StepRecord.from_windows(10, cp, ch, v, ok=v.ok, seconds=1.0, started="")
    d = json.loads(json.dumps(step.to_dict()))
    assert d["prediction_psi"] == pytest.approx(v.check("prediction_psi").value, abs=1e-4)
    assert d["champion_divergence"] > d["offline_divergence"] * 0.5 and d["offline_divergence"] > 0.2
    for c in d["checks"]:
        assert {"name", "value", "limit", "reference", "n", "verdict"} <= set(c)
    assert {c["name"] for c in d["checks"]} >= {"prediction_psi", "prediction_ks", "calibration", "champion_divergence",
                                                "error_rate", "client_errors", "p99_ratio"}
