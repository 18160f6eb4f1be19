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

import bisect
import dataclasses
import logging
import math

import numpy as np

from churnkit.data import Schema
from churnkit.serve.validation import Batch, Validator

log = logging.getLogger("churnkit.serve")
#: Trees too wide for leaf bitvectors: batches of at least this many rows use sklearn's tree predictor
#: (when the pipeline is loaded) instead of the numpy level walk.
TREE_WALK_MAX_ROWS = 128
#: Rows scored at once by the leaf bitvectors (bounds the temporary rows x inputs x trees array).
BITS_CHUNK = 1024
#: Memory the leaf bitvectors may take (a table row per split threshold per tree); larger models are walked.
BITS_MAX_BYTES = 64 << 20


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
        # The same numbers as Python lists, for one row (numpy's per-call cost exceeds the arithmetic).
        self._num = list(zip(self.num_pos.tolist(), self.medians.tolist(), self.means.tolist(), self.scales.tolist()))
        self._cat = list(zip(self.cat_pos, self.cat_maps, self.cat_offsets))

    def scaled_one(self, batch: Batch) -> list[float]:
        """The scaled numeric features of a one-row batch."""
        x = batch.numeric[0].tolist()
        out = []
        for pos, median, mean, scale in self._num:
            v = x[pos]
            out.append(((median if math.isnan(v) else v) - mean) / scale)
        return out

    def indexes_one(self, batch: Batch) -> list[int]:
        """Per categorical column, the one-hot index of a one-row batch's value (-1: unseen)."""
        cats = batch.categorical
        return [mapping.get(cats[pos][0], -1) for pos, mapping, _ in self._cat]

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


def _sigmoid(z: float) -> float:
    """1 / (1 + e^-z) for one number, without overflow."""
    if z >= 0:
        return 1.0 / (1.0 + math.exp(-z))
    e = math.exp(z)
    return e / (1.0 + e)


class _Linear:
    """Logistic regression on the compiled features: one dot product plus per-category weights."""

    engine = "numpy-logreg"

    def __init__(self, prep: _Prep, w_num: np.ndarray, w_cat: list[np.ndarray], intercept: float):
        self.prep = prep
        self.w_num = np.asarray(w_num, dtype=np.float64)
        self.w_cat = [np.asarray(w, dtype=np.float64) for w in w_cat]
        self.intercept = float(intercept)
        self._w_num = self.w_num.tolist()
        self._w_cat = [w.tolist() for w in self.w_cat]

    def predict(self, batch: Batch) -> np.ndarray:
        if batch.rows == 1:
            z = self.intercept + sum(w * v for w, v in zip(self._w_num, self.prep.scaled_one(batch)))
            for w, k in zip(self._w_cat, self.prep.indexes_one(batch)):
                z += w[k]
            return np.asarray([_sigmoid(z)])
        z = self.prep.scaled_numeric(batch) @ self.w_num + self.intercept
        for w, idx in zip(self.w_cat, self.prep.category_indexes(batch)):
            z += w[idx]
        return 1.0 / (1.0 + np.exp(-z))


class _Trees:
    """Histogram gradient boosting on the compiled features.

    All trees' nodes live in flat arrays (``feat``, ``thr``, ``child``, ``value``; a leaf points to
    itself). Two ways to score them, both without sklearn:

    * **Leaf bitvectors**, for every batch size (one row in plain Python ints). Each tree's leaves
      are numbered left to right; a split that sends a row right rules out the leaves of its left
      subtree, and the row's leaf is the lowest leaf no such split ruled out (the QuickScorer idea).
      Per numeric feature, its splits sorted by threshold give a table of prefix ANDs: row ``p``
      holds, for every tree, the leaves left once the ``p`` lowest thresholds sent the row right; per
      categorical column, one row per category. A row costs one ``bisect`` per numeric feature, one
      AND per input and a count of trailing zeros per tree, whatever the trees' depth: several times
      faster than sklearn's own predictor. Trees with more than 64 leaves have no bitvectors.
    * **The level walk** (those wide trees): every tree walked at once, one level per numpy step;
      trees sorted deepest first, so level ``k`` touches only the trees deeper than ``k``. Large
      batches of wide trees use sklearn's predictor when the pipeline is at hand, on one thread.

    The compiled features never hold NaN (the imputers fill them), so sklearn's
    ``missing_go_to_left`` branch never applies.
    """

    engine = "numpy-trees"

    def __init__(self, prep: _Prep, clf, feat, thr, child, value, roots, active, baseline: float):
        self.prep, self.clf, self.baseline = prep, clf, float(baseline)
        self.feat = np.asarray(feat, dtype=np.intp)
        self.thr = np.asarray(thr, dtype=np.float64)
        self.child = np.asarray(child, dtype=np.intp)  # child[2*node] left, child[2*node+1] right
        self.value = np.asarray(value, dtype=np.float64)
        self.roots = np.asarray(roots, dtype=np.intp)
        self.active = [int(a) for a in active]
        self._check()
        self.bits = _LeafBits.build(self) if len(self.roots) else None

    def _check(self) -> None:
        """Raise ValueError unless the arrays are trees the walk and the bitvectors can score: indexes in
        range, every node reached once from its root, leaves pointing to themselves, trees sorted deepest
        first with ``active`` matching their depths (a file that is not loops or misroutes nothing)."""
        n = len(self.feat)
        if not (len(self.thr) == len(self.value) == n and len(self.child) == 2 * n):
            raise ValueError(f"node arrays differ in length (feat {n}, thr {len(self.thr)}, value {len(self.value)}, "
                             f"child {len(self.child)} = 2 per node)")
        if n and (self.child.min() < 0 or self.child.max() >= n or self.roots.min() < 0 or self.roots.max() >= n):
            raise ValueError(f"a child or root index lies outside the {n} nodes")
        if n and (self.feat.min() < 0 or self.feat.max() >= self.prep.n_features):
            raise ValueError(f"a split feature lies outside the {self.prep.n_features} compiled features")
        if not np.all(np.isfinite(self.value)):
            raise ValueError("a leaf value is not finite")
        child, seen, depths = self.child.tolist(), bytearray(n), []
        for root in self.roots.tolist():
            stack, deepest = [(root, 0)], 0
            while stack:
                node, depth = stack.pop()
                if seen[node]:
                    raise ValueError(f"node {node} is reached twice: the arrays do not form trees")
                seen[node] = 1
                left, right = child[2 * node], child[2 * node + 1]
                if left == node or right == node:
                    if left != right:
                        raise ValueError(f"node {node} points to itself on one side only")
                    deepest = max(deepest, depth)
                else:
                    stack += [(left, depth + 1), (right, depth + 1)]
            depths.append(deepest)
        want = [sum(1 for d in depths if d > k) for k in range(max(depths, default=0))]
        if depths != sorted(depths, reverse=True) or self.active != want:
            raise ValueError(f"trees are not sorted deepest first, or active {self.active[:5]}... does not match "
                             "their depths")

    @classmethod
    def from_predictors(cls, prep: _Prep, clf, predictors: list, baseline: float) -> _Trees:
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
        depths = sorted(depth_of, reverse=True)
        active = [sum(1 for d in depths if d > k) for k in range(depths[0] if depths else 0)]
        return cls(prep, clf, np.concatenate(feats), np.concatenate(thrs), np.concatenate(children),
                   np.concatenate(values), roots, active, baseline)

    def walk(self, X: np.ndarray) -> np.ndarray:
        """Raw scores (log-odds) by the level walk."""
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
        n, prep, bits = batch.rows, self.prep, self.bits
        if bits is not None and n == 1:
            return np.asarray([_sigmoid(self.baseline + bits.raw_one(prep.scaled_one(batch), prep.indexes_one(batch)))])
        if bits is not None:
            scaled, indexes = prep.scaled_numeric(batch), prep.category_indexes(batch)
            raw = self.baseline + np.concatenate([bits.raw(scaled[i:i + BITS_CHUNK], [c[i:i + BITS_CHUNK] for c in indexes])
                                                  for i in range(0, n, BITS_CHUNK)])
        elif n >= TREE_WALK_MAX_ROWS and self.clf is not None:  # None: loaded compiled, without sklearn
            raw = self.clf._raw_predict(prep.dense(batch), n_threads=1)[:, 0]
        else:
            X = prep.dense(batch)
            raw = np.concatenate([self.walk(X[i:i + BITS_CHUNK]) for i in range(0, n, BITS_CHUNK)])
        return 1.0 / (1.0 + np.exp(-raw))


class _LeafBits:
    """The leaf bitvectors of :class:`_Trees` (see there), indexed by the row's inputs.

    A numeric feature keeps its table of prefix ANDs, found by ``bisect`` on its split thresholds.
    A categorical column's one-hot features are folded into one table row per category (plus one
    for an unseen value), found by the category's index. ``leaf_value[leaf_base[tree] + n]`` is the
    value of the tree's leaf number ``n``.
    """

    def __init__(self, numeric, categorical, table, leaf_base, leaf_value):
        self.numeric = numeric  # [(numeric position, ascending thresholds (list), first table row)]
        self.categorical = categorical  # [(categorical position, first table row, unseen row offset)]
        self.table = table  # (rows, trees) uint32 or uint64
        self.one = table.dtype.type(1)
        self.leaf_base = leaf_base
        self.leaf_value = leaf_value
        # One row: each table row as one Python int (tree t in bits [t*w, (t+1)*w)), ANDed without numpy;
        # the leaf of tree t is found from its lane's trailing zeros + 1 (no borrow crosses lanes: none is 0).
        self.ints = [int.from_bytes(r.tobytes(), "little") for r in table]
        self.lane_ones = int.from_bytes(np.ones(table.shape[1], dtype=table.dtype).tobytes(), "little")
        self.nbytes = table.shape[1] * table.dtype.itemsize
        width = table.dtype.itemsize * 8
        self.by_count = np.zeros((table.shape[1], width + 1))  # [tree, trailing zeros + 1] -> leaf value
        counts = np.diff(np.append(leaf_base + 1, len(leaf_value)))
        for t, (b, k) in enumerate(zip((leaf_base + 1).tolist(), counts.tolist())):
            self.by_count[t, 1:k + 1] = leaf_value[b:b + k]
        self.by_count_flat = self.by_count.ravel()
        self.lane_start = np.arange(table.shape[1]) * (width + 1)  # tree t's row in by_count_flat

    @staticmethod
    def _splits(trees: _Trees) -> tuple[dict, list, list, int] | None:
        """Per feature ``[(threshold, tree, mask)]``, leaf values, each tree's first leaf, the widest tree;
        None when a tree has more than 64 leaves."""
        child, feat, thr, value = trees.child.tolist(), trees.feat.tolist(), trees.thr.tolist(), trees.value.tolist()
        leaf_value, leaf_base, splits, widest = [], [], {}, 1
        for t, root in enumerate(trees.roots.tolist()):
            leaf_base.append(len(leaf_value))
            span = {}  # node -> (its subtree's first leaf number, leaf count), leaves numbered left to right
            stack = [(root, False)]
            while stack:
                n, done = stack.pop()
                left, right = child[2 * n], child[2 * n + 1]
                if left == n:
                    span[n] = (len(leaf_value) - leaf_base[-1], 1)
                    leaf_value.append(value[n])
                elif done:
                    span[n] = (span[left][0], span[left][1] + span[right][1])
                else:
                    stack += [(n, True), (right, False), (left, False)]
            count = span[root][1]
            if count > 64:
                return None
            widest = max(widest, count)
            full = (1 << count) - 1
            for n in span:
                left = child[2 * n]
                if left != n:  # sent right: the left subtree's leaves are ruled out
                    first, k = span[left]
                    splits.setdefault(feat[n], []).append((thr[n], t, full & ~(((1 << k) - 1) << first)))
        return splits, leaf_base, leaf_value, widest

    @classmethod
    def build(cls, trees: _Trees) -> _LeafBits | None:
        found = cls._splits(trees)
        if found is None:
            return None
        splits, leaf_base, leaf_value, widest = found
        # 32-bit masks when every tree fits (HGB's default is 31 leaves): half the memory each row touches
        dtype = np.uint32 if widest <= 32 else np.uint64
        n_trees, ones = len(trees.roots), np.iinfo(dtype).max
        prep = trees.prep
        rows = 1 + sum(len({s[0] for s in splits[f]}) + 1 for f in splits if f < prep.n_num) + sum(prep.cat_sizes) \
            + len(prep.cat_sizes)
        if 2 * rows * n_trees * np.dtype(dtype).itemsize > BITS_MAX_BYTES:  # the table and its Python ints
            log.info("%d trees x %d table rows exceed %d MiB of leaf bitvectors: the level walk scores them",
                     n_trees, rows, BITS_MAX_BYTES >> 20)
            return None
        blocks = {}  # feature -> (ascending thresholds, prefix-AND table)
        for f, items in splits.items():
            ts = sorted({s[0] for s in items})
            pos = {v: k + 1 for k, v in enumerate(ts)}
            block = np.full((len(ts) + 1, n_trees), ones, dtype=dtype)
            for threshold, t, mask in items:
                block[pos[threshold], t] &= dtype(mask)
            blocks[f] = (ts, np.bitwise_and.accumulate(block, axis=0))
        parts, rows = [np.full((1, n_trees), ones, dtype=dtype)], 1  # row 0: no split taken
        numeric, categorical = [], []
        for j in range(prep.n_num):
            if j in blocks:
                ts, block = blocks[j]
                numeric.append((j, ts, rows))
                parts.append(block)
                rows += len(block)
        for c, (offset, size) in enumerate(zip(prep.cat_offsets, prep.cat_sizes)):
            used = [f for f in range(offset, offset + size) if f in blocks]
            if not used:
                continue
            folded = np.full((size + 1, n_trees), ones, dtype=dtype)  # row ``size``: unseen, all zeros
            for k in range(size + 1):
                for f in used:
                    ts, block = blocks[f]
                    folded[k] &= block[bisect.bisect_left(ts, 1.0 if f == offset + k else 0.0)]
            categorical.append((c, rows, size))
            parts.append(folded)
            rows += len(folded)
        return cls(numeric, categorical, np.concatenate(parts), np.asarray(leaf_base, dtype=np.intp) - 1,
                   np.asarray(leaf_value, dtype=np.float64))

    def raw_one(self, scaled: list[float], indexes: list[int]) -> float:
        """The trees' summed leaf values for one row (scaled numeric values, category indexes)."""
        bl, ints = bisect.bisect_left, self.ints
        v = ints[0]
        for j, ts, off in self.numeric:
            v &= ints[off + bl(ts, scaled[j])]
        for c, off, unseen in self.categorical:
            k = indexes[c]
            v &= ints[off + (k if k >= 0 else unseen)]
        lanes = np.frombuffer((v ^ (v - self.lane_ones)).to_bytes(self.nbytes, "little"), dtype=self.table.dtype)
        return float(np.add.reduce(self.by_count_flat.take(self.lane_start + np.bitwise_count(lanes))))

    def raw(self, scaled: np.ndarray, indexes: list[np.ndarray]) -> np.ndarray:
        """The trees' summed leaf values for each row."""
        cols = [np.zeros(len(scaled), dtype=np.intp)]
        cols += [off + np.searchsorted(ts, scaled[:, j], side="left") for j, ts, off in self.numeric]
        cols += [off + np.where(indexes[c] >= 0, indexes[c], unseen) for c, off, unseen in self.categorical]
        rows = np.stack(cols, axis=1)
        v = np.bitwise_and.reduce(self.table[rows], axis=1)  # (rows, trees)
        return self.leaf_value[self.leaf_base + np.bitwise_count(v ^ (v - self.one))].sum(axis=1)


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
        # Per categorical column: its one-hot weights plus a trailing 0.0 that index -1 (unseen) picks.
        w_cat = [np.append(coef[0, off: off + size], 0.0) for off, size in zip(prep.cat_offsets, prep.cat_sizes)]
        return _Linear(prep, coef[0, : prep.n_num].copy(), w_cat, float(np.asarray(clf.intercept_).ravel()[0]))
    if type(clf) is HistGradientBoostingClassifier:
        if clf.n_trees_per_iteration_ != 1 or type(clf._loss).__name__ != "HalfBinomialLoss":
            raise ValueError("boosting is not binary log-loss")
        if clf.n_features_in_ != prep.n_features:
            raise ValueError("feature count mismatch")
        predictors = [it[0] for it in clf._predictors]
        if any(p.nodes["is_categorical"].any() for p in predictors):
            raise ValueError("trees use native categorical splits")
        return _Trees.from_predictors(prep, clf, predictors, float(np.asarray(clf._baseline_prediction).ravel()[0]))
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
