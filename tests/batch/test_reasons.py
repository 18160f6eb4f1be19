"""Reasons: contributions that add up to the model's log-odds, exact coefficients for logistic regression."""

from __future__ import annotations

import numpy as np
import pytest
from serve_support import models

from churnkit.data import prepare_features
from churnkit.batch.reasons import LINEAR, PATHS, Explainer, build_explainer, top_reasons
from churnkit.exceptions import ScoreError
from churnkit.serve.scorer import Scorer, compile_pipeline


def _batch(frame, schema):
    from churnkit.serve.validation import Batch

    typed = prepare_features(frame, schema)
    cats = [[v if isinstance(v, str) else None for v in typed[c]] for c in schema.categorical]
    return Batch(numeric=typed[schema.numeric].to_numpy(dtype=float), categorical=cats)


@pytest.mark.parametrize("kind", ["logreg", "hgb"])
def test_contributions_add_up_to_the_log_odds(kind):
    m = models()
    scorer = Scorer(m.pipelines[kind], m.schema)
    batch = _batch(m.raw, m.schema)  # blanks, text numbers and an unseen payment method
    explainer = build_explainer(scorer.model, m.schema, pipeline=m.pipelines[kind], reference_batch=_batch(m.holdout, m.schema))
    p = scorer.predict_batch(batch)
    contrib = explainer.contributions(batch)
    assert contrib.shape == (batch.rows, len(m.schema.names))
    np.testing.assert_allclose(explainer.bias + contrib.sum(axis=1), np.log(p / (1 - p)), rtol=0, atol=1e-9)
    assert explainer.method == (LINEAR if kind == "logreg" else PATHS)
    # travels as bytes to workers: same numbers after the round trip
    again = Explainer.from_bytes(scorer.model, m.schema, explainer.to_bytes())
    np.testing.assert_array_equal(again.contributions(batch), contrib)


def test_logistic_contributions_are_coefficient_times_centred_value():
    m = models()
    pipe = m.pipelines["logreg"]
    model = compile_pipeline(pipe, m.schema)
    ref = _batch(m.holdout, m.schema)
    explainer = build_explainer(model, m.schema, reference_batch=ref)
    batch = _batch(m.raw.iloc[:50], m.schema)
    encoded = np.asarray(pipe.steps[0][1].transform(prepare_features(m.raw.iloc[:50], m.schema)))
    centre = np.asarray(pipe.steps[0][1].transform(m.holdout)).mean(axis=0)
    centre[: model.prep.n_num] = 0.0  # numeric: the scaler's training mean, where the scaled value is 0
    coef = pipe.steps[1][1].coef_[0]
    per_feature = coef * (encoded - centre)
    contrib = explainer.contributions(batch)
    names = pipe.steps[0][1].get_feature_names_out()
    for j, name in enumerate(explainer.names):
        cols = [k for k, n in enumerate(names) if n.split("__")[-1] == name or n.split("__")[-1].startswith(name + "_")]
        assert cols
        np.testing.assert_allclose(contrib[:, j], per_feature[:, cols].sum(axis=1), rtol=0, atol=1e-9)


def test_top_reasons_are_the_largest_contributions_with_the_customers_values():
    m = models()
    scorer = Scorer(m.pipelines["logreg"], m.schema)
    explainer = build_explainer(scorer.model, m.schema, reference_batch=_batch(m.holdout, m.schema))
    batch = _batch(m.raw, m.schema)
    reasons = top_reasons(explainer, batch, 3)
    contrib = explainer.contributions(batch)
    for r in (0, 7, 42):
        ranked = sorted(range(contrib.shape[1]), key=lambda j: -contrib[r, j])[:3]
        assert [reasons[f"reason_{i}"][r] for i in (1, 2, 3)] == [explainer.names[j] for j in ranked]
        assert reasons["reason_1_contribution"][r] == contrib[r, ranked[0]]
        name = reasons["reason_1"][r]
        raw = m.raw[name].iloc[r]
        value = reasons["reason_1_value"][r]
        assert value is None or str(raw).strip() == value or float(raw) == float(value)


def test_a_model_without_a_compiled_path_has_no_reasons_but_a_clear_error():
    m = models()
    fallback = Scorer(m.pipelines["logreg"], m.schema, fast=False)
    with pytest.raises(ScoreError, match="--reasons 0"):
        build_explainer(fallback.model, m.schema)
