"""The estimator pipeline: both model kinds, unseen categories, missing values."""

from __future__ import annotations

import numpy as np
import pytest

from churnkit.data import load_table, prepare_features, synth_month
from churnkit.exceptions import DataError, ModelKindError
from churnkit.model import build_model, predict_proba, split_holdout, train_model


@pytest.fixture(scope="module")
def dataset():
    return load_table("", rows=1200, seed=2)


@pytest.mark.parametrize("kind", ["logreg", "hgb"])
def test_both_kinds_learn_the_signal(dataset, kind):
    from sklearn.metrics import roc_auc_score

    split = split_holdout(dataset, 0.25, seed=0)
    pipe = train_model(split, dataset.schema, kind, seed=0)
    auc = roc_auc_score(split.y_holdout, predict_proba(pipe, split.X_holdout))
    assert auc > 0.85
    assert pipe.named_steps["clf"].__class__.__name__ == (
        "LogisticRegression" if kind == "logreg" else "HistGradientBoostingClassifier"
    )


def test_unseen_categories_and_missing_values_score(dataset):
    split = split_holdout(dataset, 0.25, seed=0)
    pipe = train_model(split, dataset.schema, "logreg")
    raw = synth_month(rows=50, month=4, seed=9, drift="new_category")
    raw.loc[:10, "monthly_charges"] = np.nan
    raw.loc[:10, "contract"] = None
    X = prepare_features(raw, dataset.schema)
    p = predict_proba(pipe, X)
    assert p.shape == (50,) and np.isfinite(p).all()
    np.testing.assert_allclose(p, pipe.predict_proba(X)[:, 1], rtol=0, atol=1e-12)


def test_unknown_model_kind_names_choices(dataset):
    with pytest.raises(ModelKindError, match="'xgb'.*'logreg', 'hgb'"):
        build_model("xgb", dataset.schema)


def test_split_is_stratified_and_reproducible(dataset):
    a = split_holdout(dataset, 0.25, seed=5)
    b = split_holdout(dataset, 0.25, seed=5)
    assert a.X_holdout.equals(b.X_holdout)
    assert abs(a.y_holdout.mean() - dataset.y.mean()) < 0.02
    assert len(a.X_holdout) == 300


def test_tiny_table_is_refused():
    ds = load_table("", rows=6)
    with pytest.raises(DataError, match="too small"):
        split_holdout(ds)
