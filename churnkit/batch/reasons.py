"""Why a customer scored high: each input column's contribution to the row's log-odds, and the top k.

Both methods decompose the compiled model's log-odds exactly: ``bias + sum(contributions) = logit(p)``
(the tests check it to 1e-9), on the model's own encoding (imputed, scaled, one-hot), summed back to
the input column a feature came from.

* **Logistic regression: exact.** A column's contribution is coefficient × (encoded value − its
  training mean). Numeric columns are centred at the scaler's ``mean_`` (the training mean, stored in
  the model: the scaled value itself); a categorical column's one-hot block at the category shares of
  the version's reference rows (its holdout, drawn from the training month: the encoder stores no
  counts), or uncentred when no reference is at hand (the bias then absorbs it).
* **Gradient-boosted trees: path attribution** (Saabas, "Interpreting random forests", 2014; the
  method of ``treeinterpreter``). Every node gets the training-count-weighted mean of the leaf values
  below it; walking a row down each tree, the change of that mean at each split is credited to the
  split's feature. Exact as a sum, cheap (one more walk over the trees: the cost of the level walk,
  independent of the number of columns), but unlike TreeSHAP it credits features by their position on
  the path, so it over-credits splits near the leaves. TreeSHAP would cost O(trees × leaves × depth²)
  per row, about two orders of magnitude more for the default 100 trees of 31 leaves.

A reason is a column whose contribution raises the customer's risk the most: ``reason_1`` is the
column with the largest contribution, ``reason_1_value`` the customer's value of it as text (null
when missing) and ``reason_1_contribution`` its contribution in log-odds.
"""

from __future__ import annotations

import io
import math

import numpy as np

from churnkit.data import Schema
from churnkit.exceptions import ScoreError
from churnkit.serve.validation import Batch

LINEAR = "exact: coefficient x (encoded value - training mean), log-odds"
PATHS = "path attribution (Saabas): change of the node mean at each split on the row's path, log-odds"


class Explainer:
    """Contributions of the input columns for a compiled model (``_Linear`` or ``_Trees``).

    Build it with :func:`build_explainer`; it travels as bytes (:meth:`to_bytes`) next to the compiled
    scorer, so worker processes and Spark executors explain without sklearn.
    """

    def __init__(self, model, schema: Schema, arrays: dict):
        self.model, self.schema, self.arrays = model, schema, arrays
        prep = model.prep
        self.engine = model.engine
        if self.engine not in ("numpy-logreg", "numpy-trees"):
            raise ScoreError(f"reasons need a compiled model, got engine {self.engine!r}")
        # Input column of each contribution column: numeric inputs (in compiled order), then categorical ones.
        self.names = [schema.numeric[j] for j in prep.num_pos.tolist()] + [schema.categorical[c] for c in prep.cat_pos]
        self.method = LINEAR if self.engine == "numpy-logreg" else PATHS
        if self.engine == "numpy-trees":
            self.mean = np.asarray(arrays["node_mean"], dtype=np.float64)
            if self.mean.shape != model.value.shape:
                raise ScoreError("reason arrays do not match the compiled trees; export the model again")
            self.bias = float(model.baseline + self.mean[model.roots].sum())
        else:
            self.centre = np.asarray(arrays["cat_centre"], dtype=np.float64)
            self.bias = float(model.intercept + self.centre.sum())

    def contributions(self, batch: Batch) -> np.ndarray:
        """(rows, inputs) log-odds contributions, columns in :attr:`names` order."""
        prep = self.model.prep
        if self.engine == "numpy-logreg":
            m = self.model
            num = prep.scaled_numeric(batch) * m.w_num  # centred at the training mean: scaled mean is 0
            cats = [w[idx] - c for w, idx, c in zip(m.w_cat, prep.category_indexes(batch), self.centre)]
            return np.column_stack([num, *cats]) if cats else num
        X = prep.dense(batch)
        per_feature = np.concatenate([self._paths(X[i:i + 4096]) for i in range(0, batch.rows, 4096)])
        num = per_feature[:, : prep.n_num]
        cats = [per_feature[:, off: off + size].sum(axis=1) for off, size in zip(prep.cat_offsets, prep.cat_sizes)]
        return np.column_stack([num, *cats]) if cats else num

    def _paths(self, X: np.ndarray) -> np.ndarray:
        """Per encoded feature, the summed change of node means along each row's paths (all trees at once)."""
        t = self.model
        n, d = X.shape
        flat, base = X.ravel(), np.arange(n, dtype=np.intp) * d
        node = np.repeat(t.roots[:, None], n, axis=1)
        out = np.zeros(n * d)
        rows = np.arange(n, dtype=np.intp)
        for a in t.active:
            sub = node[:a]
            f = t.feat[sub]
            nxt = t.child[2 * sub + (flat[f + base] > t.thr[sub])]
            out += np.bincount((rows * d + f).ravel(), weights=(self.mean[nxt] - self.mean[sub]).ravel(),
                               minlength=n * d)
            node[:a] = nxt
        return out.reshape(n, d)

    def to_bytes(self) -> bytes:
        buf = io.BytesIO()
        np.savez(buf, **self.arrays)
        return buf.getvalue()

    @classmethod
    def from_bytes(cls, model, schema: Schema, data: bytes) -> Explainer:
        a = np.load(io.BytesIO(data), allow_pickle=False)
        return cls(model, schema, {k: a[k] for k in a.files})


def node_means(trees, predictors: list) -> np.ndarray:
    """Training-count-weighted mean leaf value below each node, aligned with the compiled ``trees`` arrays."""
    depth_of = [int(p.nodes["depth"].max()) for p in predictors]
    order = sorted(range(len(predictors)), key=lambda k: -depth_of[k])  # the order _Trees.from_predictors uses
    counts = np.concatenate([predictors[k].nodes["count"].astype(np.float64) for k in order])
    if counts.shape != trees.value.shape:
        raise ScoreError("the fitted trees do not match the compiled scorer; export the model again")
    mean = trees.value.copy()
    child = trees.child
    for node in range(len(mean) - 1, -1, -1):  # children come after their parent (pre-order arrays)
        left, right = child[2 * node], child[2 * node + 1]
        if left == node:
            continue
        total = counts[left] + counts[right]
        mean[node] = (counts[left] * mean[left] + counts[right] * mean[right]) / total if total else 0.0
    return mean


def category_centres(model, schema: Schema, reference_batch: Batch | None) -> np.ndarray:
    """Per categorical column, the mean of its one-hot weights over the reference's category shares."""
    prep = model.prep
    if reference_batch is None or reference_batch.rows == 0:
        return np.zeros(len(prep.cat_pos))
    out = []
    for w, idx in zip(model.w_cat, prep.category_indexes(reference_batch)):
        out.append(float(w[idx].mean()))  # idx -1 (unseen) picks the trailing 0.0
    return np.asarray(out)


def build_explainer(model, schema: Schema, *, pipeline=None, reference_batch: Batch | None = None) -> Explainer:
    """The explainer of a compiled model.

    Parameters
    ----------
    model : compiled ``_Linear`` or ``_Trees`` (``Scorer.model``)
    schema : Schema
    pipeline : sklearn Pipeline, optional
        Needed for trees (the training counts of their nodes).
    reference_batch : Batch, optional
        The version's reference rows, validated; centres a linear model's categorical columns.

    Raises
    ------
    ScoreError
        The model has no compiled path (sklearn fallback), or trees without their pipeline.
    """
    engine = getattr(model, "engine", "sklearn")
    if engine == "numpy-logreg":
        return Explainer(model, schema, {"cat_centre": category_centres(model, schema, reference_batch)})
    if engine == "numpy-trees":
        if pipeline is None:
            raise ScoreError("reasons for tree models need the fitted pipeline (node training counts); load the "
                             "model from the registry or its MLflow folder, or pass --reasons 0")
        predictors = [it[0] for it in pipeline.steps[-1][1]._predictors]
        return Explainer(model, schema, {"node_mean": node_means(model, predictors)})
    raise ScoreError(f"reasons need a compiled linear or tree model; this model is scored by {engine!r}: pass "
                     "--reasons 0 to score it without reasons")


def _text(batch: Batch, schema: Schema, name: str, rows: np.ndarray) -> np.ndarray:
    """The customers' values of input ``name`` at ``rows`` as text (None when missing)."""
    if name in schema.numeric:
        values = batch.numeric[rows, schema.numeric.index(name)]
        return np.array([None if math.isnan(v) else f"{v:.10g}" for v in values.tolist()], dtype=object)
    col = batch.categorical[schema.categorical.index(name)]
    return np.array([col[r] for r in rows.tolist()], dtype=object)


def top_reasons(explainer: Explainer, batch: Batch, k: int) -> dict[str, np.ndarray]:
    """``{reason_i, reason_i_value, reason_i_contribution}`` for i = 1..k: the k largest contributions."""
    contrib = explainer.contributions(batch)
    n, m = contrib.shape
    k = min(int(k), m)
    if k <= 0 or n == 0:
        return {}
    # the k largest per row, largest first; ties broken by column order (stable) so every engine agrees
    top = np.argsort(-contrib, axis=1, kind="stable")[:, :k]
    names = np.asarray(explainer.names, dtype=object)
    out = {}
    for i in range(k):
        cols = top[:, i]
        values = np.empty(n, dtype=object)
        for j in np.unique(cols).tolist():
            hit = np.flatnonzero(cols == j)
            values[hit] = _text(batch, explainer.schema, explainer.names[j], hit)
        out[f"reason_{i + 1}"] = names[cols]
        out[f"reason_{i + 1}_value"] = values
        out[f"reason_{i + 1}_contribution"] = np.take_along_axis(contrib, cols[:, None], axis=1)[:, 0]
    return out
