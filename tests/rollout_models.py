"""Misbehaving model versions for the rollout tests, registered through the library like any other.

:class:`Misbehaving` wraps a fitted classifier inside the usual two-step pipeline and sleeps, raises
for a share of calls (the server answers 500), or shifts its churn probabilities; the failures and the
shift happen in a serving process only (``churnkit serve``): a container that behaves otherwise than the
registered model, so its live scores leave the reference built from the same model offline. The pipeline is
stored with skops like any churnkit model; :data:`SERVE_ENV` lets a ``churnkit serve`` process import
this module and trust its class (the operator's ``CHURNKIT_TRUSTED_TYPES``); its classifier has no
compiled scoring path, so the server scores it with sklearn.
"""

from __future__ import annotations

import os
import itertools
import random
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.pipeline import Pipeline


_CALLS = itertools.count()  # predict_proba calls in this process
_SELF_CHECK_CALLS = 2


class Misbehaving(ClassifierMixin, BaseEstimator):
    """A fitted classifier made slow (``delay`` s per call), flaky (``error_share``) or biased (``shift``)."""

    def __init__(self, clf=None, delay=0.0, error_share=0.0, shift=0.0):
        self.clf = clf
        self.delay = delay
        self.error_share = error_share
        self.shift = shift

    def fit(self, X, y):
        return self

    @property
    def classes_(self):
        return self.clf.classes_

    def __sklearn_is_fitted__(self):
        return True

    def predict_proba(self, X):
        if self.delay:
            time.sleep(self.delay)
        n = next(_CALLS)
        # the server's start-up self-check (its first calls) passes, so the failures reach live traffic
        serving = sys.argv[1:2] == ["serve"]  # `python -m churnkit.cli serve ...`, not the controller's reference
        if self.error_share and serving and n >= _SELF_CHECK_CALLS and random.random() < self.error_share:
            raise RuntimeError("injected scoring failure")
        p = self.clf.predict_proba(X)[:, 1]
        if self.shift and serving:
            p = np.clip(p + self.shift, 0.0, 1.0)
        return np.column_stack([1.0 - p, p])

    def predict(self, X):
        return (self.predict_proba(X)[:, 1] >= 0.5).astype(int)


def misbehaving(pipeline: Pipeline, **how) -> Pipeline:
    """``pipeline`` with its classifier wrapped in :class:`Misbehaving` (the fitted steps are shared)."""
    (prep_name, prep), (clf_name, clf) = pipeline.steps
    return Pipeline([(prep_name, prep), (clf_name, Misbehaving(clf, **how))])


MISBEHAVING = f"{__name__}.Misbehaving"
#: Environment for the processes that load these models: this module importable, its class trusted.
SERVE_ENV = {"CHURNKIT_TRUSTED_TYPES": MISBEHAVING,
             "PYTHONPATH": os.pathsep.join(p for p in (str(Path(__file__).parent), os.environ.get("PYTHONPATH", "")) if p)}


@contextmanager
def trusting_misbehaving():
    """Make ``registry.log_candidate`` record :class:`Misbehaving` among the model's skops trusted types."""
    import mlflow.sklearn

    from churnkit.artifact import TRUSTED_TYPES

    original = mlflow.sklearn.log_model

    def log_model(*args, **kwargs):
        kwargs.update(skops_trusted_types=[*TRUSTED_TYPES, MISBEHAVING])
        return original(*args, **kwargs)

    mlflow.sklearn.log_model = log_model
    try:
        yield
    finally:
        mlflow.sklearn.log_model = original
