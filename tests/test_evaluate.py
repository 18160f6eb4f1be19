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


# ---- candidate and champion with different input columns --------------------------------------------

def _schema(**kinds):
    from churnkit.data import ColumnSpec, Schema

    return Schema(columns=[ColumnSpec(name=n, kind=k, dtype="object", nullable=False) for n, k in kinds.items()],
                  label="churn")


def test_schema_diff_lists_added_removed_and_changed_kind():
    from churnkit.evaluate import describe_schema_diff, schema_diff

    old = _schema(tenure="numeric", contract="categorical", support_calls="numeric")
    new = _schema(tenure="numeric", contract="numeric", region="categorical")
    diff = schema_diff(old, new)
    assert diff == {"added": ["region"], "removed": ["support_calls"],
                    "changed_kind": [{"column": "contract", "champion": "categorical", "candidate": "numeric"}],
                    "same": False}
    assert schema_diff(old.to_dict(), new.to_dict()) == diff  # stored schemas (MLmodel metadata) as well
    assert schema_diff(old, old)["same"] and describe_schema_diff(schema_diff(old, old)) == "same input columns as the champion"
    assert describe_schema_diff(diff) == ("input columns differ from the champion's: added ['region']; removed "
                                          "['support_calls']; 'contract' categorical -> numeric")


def test_champion_scored_on_its_own_columns_or_a_reason_instead_of_a_crash():
    import pandas as pd
    from sklearn.compose import ColumnTransformer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline

    from churnkit.evaluate import evaluate_holdout, gate

    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 200)
    frame = pd.DataFrame({"a": y + rng.normal(0, 0.5, 200), "b": rng.normal(0, 1, 200), "c": y + rng.normal(0, 1, 200)})

    def fit(cols):
        select = ColumnTransformer([("x", "passthrough", cols)])
        return Pipeline([("x", select), ("m", LogisticRegression())]).fit(frame[cols], y)

    champion, candidate = fit(["a", "b"]), fit(["a", "c"])
    champ_schema, cand_schema = _schema(a="numeric", b="numeric"), _schema(a="numeric", c="numeric")
    holdout = frame[["a", "c"]]
    # the holdout lacks b: no crash, a reason
    ev = evaluate_holdout(candidate, holdout, y, champion, champion_schema=champ_schema, candidate_schema=cand_schema)
    assert ev.champion is None and "expects column(s) ['b']" in ev.champion_error
    assert ev.schema_changes["added"] == ["c"] and ev.schema_changes["removed"] == ["b"]
    verdict = gate(ev.challenger["roc_auc"], ev.champion_auc, 0.5, 0.0, champion_error=ev.champion_error)
    assert not verdict.passed and any("allow_schema_change" in r for r in verdict.reasons)
    ok = gate(ev.challenger["roc_auc"], ev.champion_auc, 0.5, 0.0, champion_error=ev.champion_error,
              allow_schema_change=True)
    assert ok.passed and "allowed by allow_schema_change" in ok.summary()
    # every missed threshold is still listed next to the schema reason
    both = gate(0.4, None, 0.5, 0.0, champion_error=ev.champion_error)
    assert len(both.reasons) == 2
    # rows with every column (an imported model's sample): the champion is compared on the columns it expects
    ev = evaluate_holdout(candidate, holdout, y, champion, champion_schema=champ_schema, candidate_schema=cand_schema,
                          champion_rows=frame)
    want = skm.roc_auc_score(y, champion.predict_proba(frame[["a", "b"]])[:, 1])
    assert ev.champion_error is None and ev.champion["roc_auc"] == pytest.approx(want)
