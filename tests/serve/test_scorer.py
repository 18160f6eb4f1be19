"""Scoring in-process: the compiled paths equal sklearn on every row; validation and body parsing rules."""

from __future__ import annotations

import numpy as np
import pytest
from serve_support import expected_proba, json_rows, models

from churnkit.exceptions import RequestError, SchemaError
from churnkit.serve import contracts, scorer
from churnkit.serve.scorer import Scorer


@pytest.fixture(scope="module")
def st():
    return models()


def _holdout_with_gaps(st):
    """The holdout plus copies with NaN in every column kind and categories never seen in training."""
    import pandas as pd

    X = st.holdout
    gaps = X.copy()
    for j, name in enumerate(st.schema.names):
        gaps.loc[gaps.index % len(st.schema.names) == j, name] = np.nan
    unseen = X.copy()
    for name in st.schema.categorical:
        unseen.loc[unseen.index % 3 == 0, name] = "never-seen-" + name
    return pd.concat([X, gaps, unseen], ignore_index=True)


@pytest.mark.parametrize("kind", ["logreg", "hgb"])
def test_compiled_path_equals_sklearn_on_every_holdout_row(st, kind, monkeypatch):
    pipeline = st.pipelines[kind]
    s = Scorer(pipeline, st.schema)
    assert s.engine == {"logreg": "numpy-logreg", "hgb": "numpy-trees"}[kind], s.fallback_reason
    frame = _holdout_with_gaps(st)
    assert frame.isna().any().all()  # every column has gaps somewhere
    want = pipeline.predict_proba(frame)[:, 1]
    whole = s.predict_frame(frame)  # one batch
    np.testing.assert_allclose(whole, want, rtol=0, atol=1e-9)
    small = np.concatenate([s.predict_frame(frame.iloc[i:i + 50]) for i in range(0, len(frame), 50)])
    np.testing.assert_allclose(small, want, rtol=0, atol=1e-9)
    monkeypatch.setattr(scorer, "BITS_CHUNK", 128)  # the tree bitvectors score a batch in several chunks
    np.testing.assert_allclose(s.predict_frame(frame), want, rtol=0, atol=1e-9)


@pytest.mark.parametrize("kind", ["logreg", "hgb"])
def test_one_row_requests_equal_sklearn_with_gaps_and_unseen_categories(st, kind):
    """One row takes its own path (plain Python for the linear model, leaf bitvectors for the trees)."""
    pipeline = st.pipelines[kind]
    s = Scorer(pipeline, st.schema)
    frame = _holdout_with_gaps(st).iloc[::7]
    want = pipeline.predict_proba(frame)[:, 1]
    got = np.array([s.predict_frame(frame.iloc[[i]])[0] for i in range(len(frame))])
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-9)


def _trees_pipeline(st, **params):
    from sklearn.base import clone

    p = clone(st.pipelines["hgb"]).set_params(**{f"clf__{k}": v for k, v in params.items()})
    X = st.holdout
    return p.fit(X, (np.arange(len(X)) * 7919 % 13 < 5).astype(int))  # a noisy label: deep, wide trees


@pytest.mark.parametrize("leaves, width", [(31, 32), (60, 64), (100, None)])
def test_tree_leaf_bitvectors_by_tree_width(st, leaves, width):
    """Up to 32 leaves: 32-bit lanes; up to 64: 64-bit; wider trees are walked level by level."""
    pipeline = _trees_pipeline(st, max_leaf_nodes=leaves, max_iter=15, min_samples_leaf=2, early_stopping=False)
    s = Scorer(pipeline, st.schema)
    assert s.engine == "numpy-trees", s.fallback_reason
    bits = s.model.bits
    assert (bits.table.dtype.itemsize * 8 if bits is not None else None) == width
    frame = _holdout_with_gaps(st)
    want = pipeline.predict_proba(frame)[:, 1]
    one = np.array([s.predict_frame(frame.iloc[[i]])[0] for i in range(0, len(frame), 11)])
    np.testing.assert_allclose(one, want[::11], rtol=0, atol=1e-9)
    small = np.concatenate([s.predict_frame(frame.iloc[i:i + 40]) for i in range(0, len(frame), 40)])
    np.testing.assert_allclose(small, want, rtol=0, atol=1e-9)


def test_models_too_large_for_bitvectors_are_walked(st, monkeypatch):
    monkeypatch.setattr(scorer, "BITS_MAX_BYTES", 1024)
    s = Scorer(st.pipelines["hgb"], st.schema)
    assert s.engine == "numpy-trees" and s.model.bits is None
    frame = _holdout_with_gaps(st).iloc[:60]
    want = st.pipelines["hgb"].predict_proba(frame)[:, 1]
    np.testing.assert_allclose(s.predict_frame(frame), want, rtol=0, atol=1e-9)
    np.testing.assert_allclose(s.predict_frame(frame.iloc[[3]]), want[3:4], rtol=0, atol=1e-9)


def test_trees_without_any_split_score_their_baseline(st):
    """A boosting model whose trees never split (one leaf each) still scores through the bitvectors."""
    pipeline = _trees_pipeline(st, max_iter=3, min_samples_leaf=len(st.holdout), early_stopping=False)
    s = Scorer(pipeline, st.schema)
    assert s.engine == "numpy-trees" and s.model.bits is not None
    frame = st.holdout.head(5)
    want = pipeline.predict_proba(frame)[:, 1]
    np.testing.assert_allclose(s.predict_frame(frame.iloc[[0]]), want[:1], rtol=0, atol=1e-12)
    np.testing.assert_allclose(s.predict_frame(frame), want, rtol=0, atol=1e-12)


@pytest.mark.parametrize("z", [-800.0, -30.0, 0.0, 30.0, 800.0])
def test_one_row_sigmoid_has_no_overflow(z):
    want = 1.0 / (1.0 + np.exp(-np.float64(z))) if abs(z) < 700 else float(z > 0)
    assert scorer._sigmoid(z) == pytest.approx(want, abs=1e-15)


def test_unsupported_pipeline_falls_back_to_sklearn(st):
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.pipeline import Pipeline

    prep = st.pipelines["logreg"].steps[0][1]
    forest = Pipeline([("prep", prep), ("clf", RandomForestClassifier(n_estimators=5, random_state=0))])
    forest.fit(st.holdout, np.arange(len(st.holdout)) % 2)
    s = Scorer(forest, st.schema)
    assert s.engine == "sklearn" and "RandomForestClassifier" in s.fallback_reason
    np.testing.assert_allclose(s.predict_frame(st.holdout), forest.predict_proba(st.holdout)[:, 1], atol=1e-12)


def test_records_from_raw_export_rows_match_sklearn(st):
    s = Scorer(st.pipelines["logreg"], st.schema, 0.4)
    rows = json_rows(st.raw)  # customer_id and churn included: accepted and ignored
    got = s.predict_records(rows)
    np.testing.assert_allclose(got, expected_proba(st.pipelines["logreg"], st.schema, st.raw), atol=1e-6)
    items = s.predictions(got[:3])
    assert [i["churn"] for i in items] == [p >= 0.4 for p in got[:3]]


def _row(st):
    return dict(json_rows(st.raw.iloc[[1]])[0])


def _problems(st, rows):
    with pytest.raises(SchemaError) as info:
        Scorer(st.pipelines["logreg"], st.schema, max_rows=50).validator.records(rows)
    return info.value


@pytest.mark.parametrize("change, status, detail", [
    ({"tenure": "abc"}, 422, "column 'tenure': expected a number, got 'abc' (row 0)"),
    ({"tenure": None}, 422, "column 'tenure': null is not accepted here"),
    ({"contract": None}, 422, "column 'contract': null is not accepted here"),
    ({"tenure": [1]}, 422, "column 'tenure': expected a number, got list"),
    ({"contract": {"a": 1}}, 422, "column 'contract': expected text, got dict"),
    ({"monthly_charges": "inf"}, 422, "expected a finite number"),
    ({"monthly_charges": 10**400}, 422, "too large"),
    ({"favourite_colour": "blue"}, 422, "column 'favourite_colour': unknown column 'favourite_colour'"),
])
def test_validation_names_column_and_problem(st, change, status, detail):
    exc = _problems(st, [_row(st) | change])
    assert exc.status == status
    assert any(detail in d for d in exc.details), exc.details


def test_missing_column_is_named_and_rows_are_grouped(st):
    rows = [{k: v for k, v in _row(st).items() if k != "tenure"} for _ in range(8)]
    exc = _problems(st, rows)
    assert exc.details == ["column 'tenure': missing (rows 0, 1, 2, 3, 4 and 3 more)"]


def test_lenient_values_are_read_like_training(st):
    s = Scorer(st.pipelines["logreg"], st.schema)
    base = _row(st) | {"total_charges": "29.85", "monthly_charges": 29.85, "senior_citizen": 0}
    variants = [
        base | {"total_charges": " 29.85 ", "monthly_charges": "29.85", "senior_citizen": False},
        base | {"contract": f"  {base['contract']} "},
    ]
    want = s.predict_records([base])[0]
    for v in variants:
        assert s.predict_records([v])[0] == want
    assert s.predict_records([base | {"total_charges": None}])[0] == s.predict_records([base | {"total_charges": " "}])[0]
    assert 0 < s.predict_records([base | {"payment_method": "Barter"}])[0] < 1  # unseen category


def test_row_limits(st):
    assert _problems(st, []).status == 422
    assert _problems(st, [_row(st)] * 51).status == 413


@pytest.mark.parametrize("body, content_type, status", [
    (b"{not json", "application/json", 400),
    (b'{"rows": []}', "application/json", 400),
    (b'{"instances": [], "dataframe_records": []}', "application/json", 400),
    (b'"a string"', "application/json", 400),
    (b'{"instances": 5}', "application/json", 400),
    (b"\xff\xfe\x00", "text/csv", 400),
    (b'a,"b\n', "text/csv", 400),
    (b"<xml/>", "application/xml", 415),
])
def test_unreadable_bodies(st, body, content_type, status):
    s = Scorer(st.pipelines["logreg"], st.schema)
    with pytest.raises(RequestError) as info:
        contracts.parse_body(body, content_type, s.validator)
    assert info.value.status == status and info.value.details


def test_body_and_header_limits_in_score_request(st):
    s = Scorer(st.pipelines["logreg"], st.schema)
    with pytest.raises(RequestError) as info:
        contracts.score_request(b"x" * 101, "application/json", s, "churn", "1", max_body_bytes=100)
    assert info.value.status == 413
