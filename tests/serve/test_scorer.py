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
def test_compiled_path_equals_sklearn_on_every_holdout_row(st, kind):
    pipeline = st.pipelines[kind]
    s = Scorer(pipeline, st.schema)
    assert s.engine == {"logreg": "numpy-logreg", "hgb": "numpy-trees"}[kind], s.fallback_reason
    frame = _holdout_with_gaps(st)
    assert frame.isna().any().all()  # every column has gaps somewhere
    want = pipeline.predict_proba(frame)[:, 1]
    whole = s.predict_frame(frame)  # one batch: HGB takes sklearn's tree predictor on our features
    np.testing.assert_allclose(whole, want, rtol=0, atol=1e-6)
    small = np.concatenate([s.predict_frame(frame.iloc[i:i + 50]) for i in range(0, len(frame), 50)])
    assert 50 < scorer.TREE_WALK_MAX_ROWS  # small batches take the numpy tree walk
    np.testing.assert_allclose(small, want, rtol=0, atol=1e-6)


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
