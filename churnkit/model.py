"""The churn estimator: one sklearn Pipeline from typed features to a churn probability."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from sklearn.compose import ColumnTransformer
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler

from churnkit.data import Dataset, Schema
from churnkit.exceptions import DataError, ModelKindError

MODEL_KINDS = ("logreg", "hgb")


def build_model(model: str, schema: Schema, seed: int = 0) -> Pipeline:
    """Return an unfitted Pipeline: impute + scale numbers, impute + one-hot categories, then the classifier.

    Unknown categories at scoring time are ignored by the encoder (all-zero one-hot), as in training.
    """
    if model not in MODEL_KINDS:
        raise ModelKindError(f"unknown model kind {model!r}; use one of {MODEL_KINDS!r} (parameter model)")
    numeric = Pipeline([("impute", SimpleImputer(strategy="median")), ("scale", StandardScaler())])
    categorical = Pipeline(
        [
            ("impute", SimpleImputer(strategy="constant", fill_value="missing")),
            ("onehot", OneHotEncoder(handle_unknown="ignore", sparse_output=False)),
        ]
    )
    prep = ColumnTransformer(
        [("num", numeric, schema.numeric), ("cat", categorical, schema.categorical)],
        remainder="drop",
        verbose_feature_names_out=False,
    )
    if model == "logreg":
        clf = LogisticRegression(max_iter=2000, C=1.0)
    else:
        clf = HistGradientBoostingClassifier(max_iter=200, learning_rate=0.06, random_state=seed)
    return Pipeline([("prep", prep), ("clf", clf)])


@dataclass(frozen=True)
class Split:
    X_train: pd.DataFrame
    y_train: pd.Series
    X_holdout: pd.DataFrame
    y_holdout: pd.Series


def split_holdout(dataset: Dataset, holdout_size: float = 0.25, seed: int = 0) -> Split:
    """Stratified train/holdout split; the holdout is what the gate judges on."""
    counts = dataset.y.value_counts()
    if counts.min() < 2 or dataset.rows < 8:
        raise DataError(
            f"table {dataset.source!r} is too small to hold out a test set ({dataset.rows} rows, "
            f"class counts {counts.to_dict()!r}); pass at least a few dozen rows of each class"
        )
    Xtr, Xho, ytr, yho = train_test_split(
        dataset.X, dataset.y, test_size=holdout_size, random_state=seed, stratify=dataset.y
    )
    return Split(Xtr.reset_index(drop=True), ytr.reset_index(drop=True), Xho.reset_index(drop=True), yho.reset_index(drop=True))


def train_model(split: Split, schema: Schema, model: str = "logreg", seed: int = 0) -> Pipeline:
    """Fit the pipeline on the training part of ``split``; returns the fitted Pipeline."""
    return build_model(model, schema, seed).fit(split.X_train, split.y_train.to_numpy())


def predict_proba(pipeline: Pipeline, X: pd.DataFrame) -> np.ndarray:
    """Churn probability per row (class 1)."""
    return pipeline.predict_proba(X)[:, 1]
