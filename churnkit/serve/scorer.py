"""Fast scoring of the fitted churn pipeline, with sklearn as the fallback.

Nothing here imports a web framework or MLflow, so the Azure ML ``score.py`` (which runs in its own
environment) uses exactly the same code as ``churnkit serve``. Input rules live in
:mod:`churnkit.serve.validation`.

:func:`compile_pipeline` turns the fitted ``build_model`` pipeline (median imputer + standard
scaler, constant imputer + one-hot, then logistic regression or histogram gradient boosting) into
numpy arrays: one dot product for the linear model, a vectorised walk over every tree at once for
boosting. Anything it does not recognise is scored by sklearn itself. Probabilities equal sklearn's
``predict_proba`` to 1e-6 (checked when the scorer is built, and by the tests).
"""

from __future__ import annotations

import dataclasses
import logging

import numpy as np

from churnkit.data import Schema
from churnkit.serve.validation import Batch, Validator

log = logging.getLogger("churnkit.serve")
#: Batches of at least this many rows use sklearn's compiled tree predictor instead of the numpy walk.
TREE_WALK_MAX_ROWS = 128


# --------------------------------------------------------------------------------------------------
# Compiled scoring
# --------------------------------------------------------------------------------------------------

class _Prep:
    """The fitted ColumnTransformer as arrays: imputation, scaling, and one-hot positions."""

    def __init__(self, num_pos, medians, means, scales, cat_pos, cat_maps, cat_offsets, cat_sizes, n_features):
        self.num_pos = np.asarray(num_pos, dtype=np.intp)
        self.medians = np.asarray(medians, dtype=np.float64)
        self.means = np.asarray(means, dtype=np.float64)
        self.scales = np.asarray(scales, dtype=np.float64)
        self.cat_pos = list(cat_pos)
        self.cat_maps = list(cat_maps)  # per column: {value: local one-hot index}; None -> the fill value's index
        self.cat_offsets = list(cat_offsets)
        self.cat_sizes = list(cat_sizes)
        self.n_num = len(self.num_pos)
        self.n_features = int(n_features)

    def scaled_numeric(self, batch: Batch) -> np.ndarray:
        x = batch.numeric[:, self.num_pos]
        x = np.where(np.isnan(x), self.medians, x)
        return (x - self.means) / self.scales

    def category_indexes(self, batch: Batch) -> list[np.ndarray]:
        """Per categorical column, the local one-hot index of each row (-1: unseen, all zeros)."""
        out = []
        for pos, mapping in zip(self.cat_pos, self.cat_maps):
            get = mapping.get
            out.append(np.fromiter((get(v, -1) for v in batch.categorical[pos]), dtype=np.intp, count=batch.rows))
        return out

    def dense(self, batch: Batch) -> np.ndarray:
        """The transformer's output matrix (numeric block, then one-hot blocks)."""
        X = np.zeros((batch.rows, self.n_features), dtype=np.float64)
        X[:, : self.n_num] = self.scaled_numeric(batch)
        rows = np.arange(batch.rows)
        for offset, idx in zip(self.cat_offsets, self.category_indexes(batch)):
            hit = idx >= 0
            X[rows[hit], offset + idx[hit]] = 1.0
        return X


class _Linear:
    """Logistic regression on the compiled features: one dot product plus per-category weights."""

    engine = "numpy-logreg"

    def __init__(self, prep: _Prep, coef: np.ndarray, intercept: float):
        self.prep = prep
        self.w_num = coef[: prep.n_num].copy()
        # Per categorical column: its one-hot weights plus a trailing 0.0 that index -1 (unseen) picks.
        self.w_cat = [np.append(coef[off: off + size], 0.0) for off, size in zip(prep.cat_offsets, prep.cat_sizes)]
        self.intercept = float(intercept)

    def predict(self, batch: Batch) -> np.ndarray:
        z = self.prep.scaled_numeric(batch) @ self.w_num + self.intercept
        for w, idx in zip(self.w_cat, self.prep.category_indexes(batch)):
            z += w[idx]
        return 1.0 / (1.0 + np.exp(-z))


class _Trees:
    """Histogram gradient boosting on the compiled features.

    Small batches (the real-time case): every tree walked at once, one level per numpy step. All
    trees' nodes go into flat arrays; a leaf points to itself, so walking ``max depth`` levels
    leaves every row at its leaf; trees are sorted deepest first, so level ``k`` only touches the
    trees deeper than ``k``. The compiled features never hold NaN (the imputers fill them), so
    sklearn's ``missing_go_to_left`` branch never applies. Large batches: sklearn's own compiled
    tree predictor on the same feature matrix, on one thread (OpenMP threads cost more than they
    save on a busy 2-core host, and the server scores one request at a time anyway).
    """

    engine = "numpy-trees"

    def __init__(self, prep: _Prep, clf, predictors: list, baseline: float):
        self.prep = prep
        self.clf = clf
        self.baseline = float(baseline)
        depth_of = [int(p.nodes["depth"].max()) for p in predictors]
        order = sorted(range(len(predictors)), key=lambda t: -depth_of[t])
        feats, thrs, children, values, roots = [], [], [], [], []
        start = 0
        for t in order:
            nodes = predictors[t].nodes
            ids = np.arange(start, start + len(nodes))
            leaf = nodes["is_leaf"].astype(bool)
            left = np.where(leaf, ids, nodes["left"].astype(np.int64) + start)
            right = np.where(leaf, ids, nodes["right"].astype(np.int64) + start)
            feats.append(np.where(leaf, 0, nodes["feature_idx"]).astype(np.intp))
            thrs.append(nodes["num_threshold"].astype(np.float64))
            children.append(np.stack([left, right], axis=1).ravel())
            values.append(nodes["value"].astype(np.float64))
            roots.append(start)
            start += len(nodes)
        self.feat = np.concatenate(feats)
        self.thr = np.concatenate(thrs)
        self.child = np.concatenate(children).astype(np.intp)  # child[2*node] left, child[2*node+1] right
        self.value = np.concatenate(values)
        self.roots = np.asarray(roots, dtype=np.intp)
        depths = sorted(depth_of, reverse=True)
        self.active = [sum(1 for d in depths if d > k) for k in range(depths[0] if depths else 0)]

    def walk(self, X: np.ndarray) -> np.ndarray:
        """Raw scores (log-odds) by the numpy walk."""
        n, d = X.shape
        flat = X.ravel()
        base = np.arange(n, dtype=np.intp) * d
        node = np.repeat(self.roots[:, None], n, axis=1)  # (trees, rows): a prefix of trees is contiguous
        for a in self.active:
            sub = node[:a]
            right = flat[self.feat[sub] + base] > self.thr[sub]
            node[:a] = self.child[2 * sub + right]
        return self.baseline + self.value[node].sum(axis=0)

    def predict(self, batch: Batch) -> np.ndarray:
        X = self.prep.dense(batch)
        if len(X) >= TREE_WALK_MAX_ROWS and self.clf is not None:  # None: loaded compiled, without sklearn
            raw = self.clf._raw_predict(X, n_threads=1)[:, 0]
        else:
            raw = self.walk(X)
        return 1.0 / (1.0 + np.exp(-raw))


class _Sklearn:
    """The fallback: the fitted pipeline itself on a typed DataFrame."""

    engine = "sklearn"

    def __init__(self, pipeline, schema: Schema):
        self.pipeline = pipeline
        self.schema = schema

    def predict(self, batch: Batch) -> np.ndarray:
        return self.pipeline.predict_proba(batch_frame(batch, self.schema))[:, 1]


def batch_frame(batch: Batch, schema: Schema):
    """The Batch as the typed DataFrame training used (numeric float64, categories object with NaN)."""
    import pandas as pd

    cols = {}
    num = {name: j for j, name in enumerate(schema.numeric)}
    cat = {name: j for j, name in enumerate(schema.categorical)}
    for name in schema.names:
        if name in num:
            cols[name] = pd.Series(batch.numeric[:, num[name]], dtype="float64")
        else:
            values = np.array([np.nan if v is None else v for v in batch.categorical[cat[name]]], dtype=object)
            cols[name] = pd.Series(values, dtype=object)
    return pd.DataFrame(cols)


def _compile_prep(prep, schema: Schema) -> _Prep:
    from sklearn.compose import ColumnTransformer
    from sklearn.impute import SimpleImputer
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    if not isinstance(prep, ColumnTransformer):
        raise TypeError(f"first step is {type(prep).__name__}, not ColumnTransformer")
    num_idx = {n: j for j, n in enumerate(schema.numeric)}
    cat_idx = {n: j for j, n in enumerate(schema.categorical)}
    num_pos, medians, means, scales = [], [], [], []
    cat_pos, cat_maps, cat_offsets, cat_sizes = [], [], [], []
    width = 0
    blocks = []
    for name, trans, columns in prep.transformers_:
        if trans == "drop" or (name == "remainder" and len(columns) == 0):
            continue
        if not isinstance(trans, Pipeline) or len(trans.steps) != 2:
            raise TypeError(f"transformer {name!r} is {type(trans).__name__}")
        imp, second = trans.steps[0][1], trans.steps[1][1]
        if type(imp) is not SimpleImputer or imp.add_indicator or not (imp.missing_values != imp.missing_values):
            raise TypeError(f"transformer {name!r} does not start with a plain NaN SimpleImputer")
        if type(second) is StandardScaler:
            if not (second.with_mean and second.with_std) or not np.all(np.isfinite(imp.statistics_.astype(float))):
                raise TypeError(f"transformer {name!r} scaler/imputer not supported")
            blocks.append(("num", columns, imp, second))
        elif type(second) is OneHotEncoder:
            if second.drop_idx_ is not None or getattr(second, "_infrequent_enabled", False) \
                    or second.handle_unknown != "ignore" or second.sparse_output or imp.strategy != "constant":
                raise TypeError(f"transformer {name!r} one-hot options not supported")
            blocks.append(("cat", columns, imp, second))
        else:
            raise TypeError(f"transformer {name!r} ends with {type(second).__name__}")
    # The numeric block must come first and be contiguous for _Prep.dense; build_model does that.
    kinds = [b[0] for b in blocks]
    if kinds != sorted(kinds, key=lambda k: k != "num"):
        raise TypeError("numeric transformers do not come first")
    for kind, columns, imp, second in blocks:
        if kind == "num":
            for j, col in enumerate(columns):
                num_pos.append(num_idx[col])
                medians.append(float(imp.statistics_[j]))
                means.append(float(second.mean_[j]))
                scales.append(float(second.scale_[j]))
            width += len(columns)
        else:
            for j, col in enumerate(columns):
                cats = [str(c) for c in second.categories_[j]]
                mapping = {c: k for k, c in enumerate(cats)}
                mapping[None] = mapping.get(str(imp.fill_value), -1)
                cat_pos.append(cat_idx[col])
                cat_maps.append(mapping)
                cat_offsets.append(width)
                cat_sizes.append(len(cats))
                width += len(cats)
    return _Prep(num_pos, medians, means, scales, cat_pos, cat_maps, cat_offsets, cat_sizes, width)


def compile_pipeline(pipeline, schema: Schema):
    """A numpy scorer for a fitted ``build_model`` pipeline; raises TypeError/ValueError/KeyError if unsupported."""
    from sklearn.ensemble import HistGradientBoostingClassifier
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline

    if not isinstance(pipeline, Pipeline) or len(pipeline.steps) != 2:
        raise TypeError(f"model is {type(pipeline).__name__}, not a two-step Pipeline")
    prep = _compile_prep(pipeline.steps[0][1], schema)
    clf = pipeline.steps[1][1]
    if len(getattr(clf, "classes_", ())) != 2:
        raise ValueError("classifier is not binary")
    if type(clf) is LogisticRegression:
        coef = np.asarray(clf.coef_, dtype=np.float64)
        if coef.shape != (1, prep.n_features):
            raise ValueError(f"coefficients {coef.shape} do not match {prep.n_features} features")
        return _Linear(prep, coef[0], float(np.asarray(clf.intercept_).ravel()[0]))
    if type(clf) is HistGradientBoostingClassifier:
        if clf.n_trees_per_iteration_ != 1 or type(clf._loss).__name__ != "HalfBinomialLoss":
            raise ValueError("boosting is not binary log-loss")
        if clf.n_features_in_ != prep.n_features:
            raise ValueError("feature count mismatch")
        predictors = [it[0] for it in clf._predictors]
        if any(p.nodes["is_categorical"].any() for p in predictors):
            raise ValueError("trees use native categorical splits")
        return _Trees(prep, clf, predictors, float(np.asarray(clf._baseline_prediction).ravel()[0]))
    raise TypeError(f"classifier {type(clf).__name__} has no compiled path")


def probe_rows(schema: Schema) -> list[dict]:
    """Rows covering each column's range, nulls and an unseen category (for the start-up self-check)."""
    rows = []
    for k in range(4):
        row = {}
        for c in schema.columns:
            if c.kind == "numeric":
                lo, hi = c.minimum or 0.0, c.maximum if c.maximum is not None else 1.0
                row[c.name] = [lo, hi, (lo + hi) / 2, None][k]
            else:
                cats = c.categories or ["?"]
                row[c.name] = [cats[0], cats[-1], "__unseen__", None][k]
        rows.append(row)
    return rows


class Scorer:
    """Validates requests and scores them, on the compiled path when the pipeline allows it.

    Parameters
    ----------
    pipeline : sklearn Pipeline
        The fitted model.
    schema : Schema
        Its training schema.
    threshold : float
        ``churn`` is ``churn_probability >= threshold``.
    max_rows : int
        Row limit per request.
    fast : bool
        False forces sklearn (for comparisons).
    """

    def __init__(self, pipeline, schema: Schema, threshold: float = 0.5, *, max_rows: int = 10_000, fast: bool = True):
        self.pipeline = pipeline
        self.schema = schema
        self.threshold = float(threshold)
        self.validator = Validator(schema, max_rows=max_rows)
        self.sklearn = _Sklearn(pipeline, schema)
        self.model = self.sklearn
        self.fallback_reason = "" if fast else "fast path disabled"
        if fast:
            try:
                compiled = compile_pipeline(pipeline, schema)
                self._self_check(compiled)
                self.model = compiled
            except Exception as exc:  # noqa: BLE001 - any unsupported shape or drift from sklearn: use sklearn
                self.fallback_reason = f"{type(exc).__name__}: {exc}"
                log.warning("scoring with sklearn (no compiled path): %s", self.fallback_reason)

    @classmethod
    def from_loaded(cls, loaded, **kw) -> Scorer:
        """Build from a :class:`churnkit.registry.LoadedModel` (its stored compiled model when it has one)."""
        if loaded.compiled is not None and kw.get("fast", True):
            return cls.from_compiled(loaded.compiled, loaded.schema, loaded.threshold, max_rows=kw.get("max_rows", 10_000))
        return cls(loaded.pipeline, loaded.schema, loaded.threshold, **kw)

    @classmethod
    def from_compiled(cls, compiled, schema: Schema, threshold: float = 0.5, *, max_rows: int = 10_000) -> Scorer:
        """A scorer over a compiled model checked against sklearn at export (:mod:`churnkit.serve.compiled`)."""
        self = cls.__new__(cls)
        self.pipeline, self.schema, self.threshold = None, schema, float(threshold)
        self.validator = Validator(schema, max_rows=max_rows)
        self.sklearn, self.model, self.fallback_reason = None, compiled, ""
        return self

    @property
    def engine(self) -> str:
        return self.model.engine

    def _self_check(self, compiled) -> None:
        lenient = dataclasses.replace(self.schema, columns=[dataclasses.replace(c, nullable=True) for c in self.schema.columns])
        batch = Validator(lenient).records(probe_rows(self.schema))
        got, want = compiled.predict(batch), self.sklearn.predict(batch)
        if not np.allclose(got, want, rtol=0, atol=1e-9):
            raise ValueError(f"compiled scores differ from sklearn by {float(np.max(np.abs(got - want))):.3g}")

    def predict_batch(self, batch: Batch) -> np.ndarray:
        """Churn probabilities of a validated batch."""
        return self.model.predict(batch)

    def predict_records(self, rows: list[dict]) -> np.ndarray:
        """Validate ``{column: value}`` rows and score them (raises SchemaError on bad input)."""
        return self.predict_batch(self.validator.records(rows))

    def predict_frame(self, frame) -> np.ndarray:
        """Score a DataFrame of raw or typed columns (no null rules: the imputers handle every gap)."""
        from churnkit.data import prepare_features

        typed = prepare_features(frame, self.schema)
        numeric = typed[self.schema.numeric].to_numpy(dtype=np.float64).reshape(len(typed), len(self.schema.numeric))
        cats = [[None if not isinstance(v, str) else v for v in typed[name].tolist()] for name in self.schema.categorical]
        return self.predict_batch(Batch(numeric=numeric, categorical=cats))

    def predictions(self, proba: np.ndarray) -> list[dict]:
        """The response items ``{"churn_probability": p, "churn": p >= threshold}``."""
        t = self.threshold
        return [{"churn_probability": p, "churn": p >= t} for p in proba.tolist()]
