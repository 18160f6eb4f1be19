"""Metrics agree with sklearn; the gate lists every reason it refused."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn import metrics as skm

from churnkit.evaluate import choose_threshold, compute_metrics, evaluate_holdout, gate, lift_top_decile, plot_evaluation


@pytest.fixture
def scores():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 400)
    p = np.clip(0.3 * y + rng.random(400) * 0.7, 0, 1)
    return y, p


def test_metrics_match_sklearn(scores):
    y, p = scores
    m = compute_metrics(y, p)
    assert m["roc_auc"] == pytest.approx(skm.roc_auc_score(y, p), abs=1e-12)
    assert m["pr_auc"] == pytest.approx(skm.average_precision_score(y, p), abs=1e-12)
    assert m["brier"] == pytest.approx(skm.brier_score_loss(y, p), abs=1e-12)
    assert m["log_loss"] == pytest.approx(skm.log_loss(y, np.clip(p, 1e-15, 1 - 1e-15)), abs=1e-12)
    assert m["rows"] == 400


def test_lift_top_decile():
    y = np.array([1] * 10 + [0] * 90)
    p = np.linspace(1, 0, 100)  # the 10 churners score highest
    assert lift_top_decile(y, p) == pytest.approx(10.0)
    assert lift_top_decile(y, p[::-1]) == 0.0


def test_threshold_maximises_f1(scores):
    y, p = scores
    t = choose_threshold(y, p)
    f1 = skm.f1_score(y, p >= t)
    for other in (0.2, 0.4, 0.6, 0.8):
        assert f1 >= skm.f1_score(y, p >= other) - 1e-12


def test_gate_passes_first_model():
    v = gate(0.9)
    assert v.passed and v.reasons == [] and "PASSED" in v.summary()


def test_gate_lists_every_reason():
    v = gate(0.80, champion_auc=0.83, auc_threshold=0.85, min_improvement=0.0)
    assert not v.passed
    assert len(v.reasons) == 2
    assert "0.8000 is not above auc_threshold 0.85" in v.reasons[0]
    assert "-0.0300" in v.reasons[1] and "min_improvement 0.0" in v.reasons[1]


def test_gate_threshold_is_strict_and_improvement_inclusive():
    assert not gate(0.85, auc_threshold=0.85).passed
    assert gate(0.91, champion_auc=0.89, min_improvement=0.01).passed
    assert not gate(0.895, champion_auc=0.89, min_improvement=0.01).passed
    assert gate(0.88, champion_auc=0.89, min_improvement=-0.02).passed


def test_gate_nan_auc():
    v = gate(float("nan"))
    assert not v.passed and "not a number" in v.reasons[0]


def test_evaluate_holdout_and_plot(scores):
    from sklearn.linear_model import LogisticRegression

    y, p = scores
    X = np.c_[p, np.random.default_rng(1).random(400)]
    a = LogisticRegression().fit(X, y)
    b = LogisticRegression().fit(X[:, 1:], y)

    class Second:  # the champion sees the same rows through its own pipeline
        def predict_proba(self, X):
            return b.predict_proba(X[:, 1:])

    ev = evaluate_holdout(a, X, y, Second())
    assert ev.champion_auc < ev.challenger["roc_auc"]
    table = ev.table()
    assert list(table.columns) == ["challenger", "champion", "difference"]
    fig = plot_evaluation(ev.y_true, ev.proba, ev.threshold, ev.champion_proba)
    assert len(fig.axes) >= 4
