"""Holdout metrics, evaluation plots and the promotion gate (pure functions; no I/O)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np
from sklearn import metrics as skm

DEFAULT_AUC_THRESHOLD = 0.85
DEFAULT_MIN_IMPROVEMENT = 0.0


def lift_top_decile(y_true, proba) -> float:
    """Churn rate among the 10 % highest scores divided by the overall churn rate."""
    y = np.asarray(y_true, dtype=float)
    p = np.asarray(proba, dtype=float)
    k = max(1, int(np.ceil(0.1 * len(p))))
    top = np.argsort(-p, kind="stable")[:k]
    base = y.mean()
    return float(y[top].mean() / base) if base > 0 else float("nan")


def compute_metrics(y_true, proba) -> dict[str, float]:
    """ROC AUC, PR AUC, log loss, Brier score and top-decile lift on one labelled sample."""
    y = np.asarray(y_true, dtype=int)
    p = np.clip(np.asarray(proba, dtype=float), 1e-15, 1 - 1e-15)
    return {
        "roc_auc": float(skm.roc_auc_score(y, p)),
        "pr_auc": float(skm.average_precision_score(y, p)),
        "log_loss": float(skm.log_loss(y, p, labels=[0, 1])),
        "brier": float(skm.brier_score_loss(y, p)),
        "lift_top_decile": lift_top_decile(y, p),
        "positive_rate": float(y.mean()),
        "rows": float(len(y)),
    }


def choose_threshold(y_true, proba) -> float:
    """The decision threshold that maximises F1 on the sample (stored with the model version)."""
    precision, recall, thresholds = skm.precision_recall_curve(np.asarray(y_true, dtype=int), proba)
    f1 = 2 * precision * recall / np.maximum(precision + recall, 1e-12)
    best = int(np.argmax(f1[:-1])) if len(thresholds) else 0
    return float(thresholds[best]) if len(thresholds) else 0.5


@dataclass(frozen=True)
class GateResult:
    """The gate's verdict: ``passed`` and every reason it failed (empty when it passed)."""

    passed: bool
    reasons: list[str] = field(default_factory=list)
    challenger_auc: float = float("nan")
    champion_auc: float | None = None
    auc_threshold: float = DEFAULT_AUC_THRESHOLD
    min_improvement: float = DEFAULT_MIN_IMPROVEMENT
    #: what the verdict rests on besides the thresholds (a champion not compared, a gate skipped on purpose)
    notes: list[str] = field(default_factory=list)

    @property
    def improvement(self) -> float | None:
        return None if self.champion_auc is None else self.challenger_auc - self.champion_auc

    def to_dict(self) -> dict:
        return asdict(self) | {"improvement": self.improvement}

    def summary(self) -> str:
        notes = "".join(f"; {n}" for n in self.notes)
        if self.passed and not np.isfinite(self.challenger_auc):
            return "SKIPPED" + (": " + "; ".join(self.notes) if self.notes else "")
        if self.passed:
            vs = "" if self.champion_auc is None else f", champion {self.champion_auc:.4f} ({self.improvement:+.4f})"
            return f"PASSED: holdout roc_auc {self.challenger_auc:.4f} > {self.auc_threshold}{vs}{notes}"
        return "REFUSED: " + "; ".join(self.reasons) + notes


def gate(
    challenger_auc: float,
    champion_auc: float | None = None,
    auc_threshold: float = DEFAULT_AUC_THRESHOLD,
    min_improvement: float = DEFAULT_MIN_IMPROVEMENT,
    *,
    champion_error: str | None = None,
    allow_schema_change: bool = False,
) -> GateResult:
    """Decide whether a candidate may be registered.

    Passes only if ``challenger_auc > auc_threshold`` and, when a champion serves, the challenger's
    AUC minus the champion's AUC on the same holdout is at least ``min_improvement``. Every failed
    condition is listed in ``reasons``.

    ``champion_error`` says why a serving champion could not be scored on the holdout (its input
    columns are not there: see :func:`evaluate_holdout`). That is a reason to refuse, since the
    comparison cannot be made, unless ``allow_schema_change`` says the schema change is deliberate;
    then the absolute threshold alone decides and the verdict notes it.
    """
    reasons = []
    notes = []
    if champion_error and champion_auc is None:
        if allow_schema_change:
            notes.append(f"champion not compared ({champion_error}); allowed by allow_schema_change")
        else:
            reasons.append(
                f"{champion_error}; the candidate cannot be compared with the champion: to replace the champion "
                "by a model with another input schema deliberately, pass allow_schema_change=True "
                "(-p allow_schema_change true, or churnkit import --allow-schema-change)"
            )
    if not np.isfinite(challenger_auc):
        reasons.append(f"holdout roc_auc is {challenger_auc!r}, not a number; check the holdout has both classes")
    elif not challenger_auc > auc_threshold:
        reasons.append(f"holdout roc_auc {challenger_auc:.4f} is not above auc_threshold {auc_threshold}")
    if champion_auc is not None and np.isfinite(challenger_auc):
        delta = challenger_auc - champion_auc
        if delta < min_improvement:
            reasons.append(
                f"challenger roc_auc {challenger_auc:.4f} minus champion roc_auc {champion_auc:.4f} on the same "
                f"holdout is {delta:+.4f}, below min_improvement {min_improvement}"
            )
    return GateResult(
        passed=not reasons,
        reasons=reasons,
        challenger_auc=float(challenger_auc),
        champion_auc=None if champion_auc is None else float(champion_auc),
        auc_threshold=float(auc_threshold),
        min_improvement=float(min_improvement),
        notes=notes,
    )


def schema_diff(champion_schema, candidate_schema) -> dict:
    """Input columns the candidate adds, removes, or reads as another kind than the champion.

    Takes :class:`churnkit.data.Schema` objects or their ``to_dict()``. Returns
    ``{"added": [...], "removed": [...], "changed_kind": [{"column", "champion", "candidate"}], "same": bool}``.
    """
    old = _kinds(champion_schema)
    new = _kinds(candidate_schema)
    changed = [{"column": n, "champion": old[n], "candidate": k} for n, k in new.items() if n in old and old[n] != k]
    added = [n for n in new if n not in old]
    removed = [n for n in old if n not in new]
    return {"added": added, "removed": removed, "changed_kind": changed, "same": not (added or removed or changed)}


def describe_schema_diff(diff: dict | None) -> str:
    """One line for people: ``columns added [...]; removed [...]; changed kind ...`` (or "same input columns")."""
    if not diff:
        return ""
    if diff["same"]:
        return "same input columns as the champion"
    parts = []
    if diff["added"]:
        parts.append(f"added {diff['added']!r}")
    if diff["removed"]:
        parts.append(f"removed {diff['removed']!r}")
    for c in diff["changed_kind"]:
        parts.append(f"{c['column']!r} {c['champion']} -> {c['candidate']}")
    return "input columns differ from the champion's: " + "; ".join(parts)


def _kinds(schema) -> dict[str, str]:
    if isinstance(schema, dict):
        return {c["name"]: c["kind"] for c in schema["columns"]}
    return {c.name: c.kind for c in schema.columns}


# --------------------------------------------------------------------------------------------------
# Plots (matplotlib figures; the notebook shows them, registry logs them)
# --------------------------------------------------------------------------------------------------

def plot_evaluation(y_true, proba, threshold: float = 0.5, champion_proba=None):
    """One 2 x 2 figure: ROC, precision-recall, calibration and the confusion matrix at ``threshold``.

    Sized for a notebook's width (about 1000 x 820 px inline) with labels at a readable size.
    """
    import matplotlib

    matplotlib.use("Agg") if not _in_notebook() else None
    import matplotlib.pyplot as plt
    from sklearn.calibration import calibration_curve

    y = np.asarray(y_true, dtype=int)
    with plt.rc_context({"font.size": 11, "axes.titlesize": 13, "axes.labelsize": 11, "legend.fontsize": 10}):
        fig, grid = plt.subplots(2, 2, figsize=(10, 8.2))
        axes = grid.ravel()
        curves = [("challenger", proba)] + ([("champion", champion_proba)] if champion_proba is not None else [])
        for name, p in curves:
            fpr, tpr, _ = skm.roc_curve(y, p)
            axes[0].plot(fpr, tpr, label=f"{name} AUC {skm.roc_auc_score(y, p):.3f}")
            prec, rec, _ = skm.precision_recall_curve(y, p)
            axes[1].plot(rec, prec, label=f"{name} AP {skm.average_precision_score(y, p):.3f}")
            frac, mean = calibration_curve(y, p, n_bins=10, strategy="quantile")
            axes[2].plot(mean, frac, marker="o", label=name)
        axes[0].plot([0, 1], [0, 1], ls=":", c="grey")
        axes[0].set(title="ROC", xlabel="false positive rate", ylabel="true positive rate")
        axes[1].set(title="Precision-recall", xlabel="recall", ylabel="precision")
        axes[2].plot([0, 1], [0, 1], ls=":", c="grey")
        axes[2].set(title="Calibration", xlabel="mean predicted", ylabel="observed churn rate")
        for ax in axes[:3]:
            ax.legend(loc="best")
            ax.tick_params(labelsize=10)
        cm = skm.confusion_matrix(y, (np.asarray(proba) >= threshold).astype(int), labels=[0, 1])
        axes[3].imshow(cm, cmap="Blues")
        for (i, j), v in np.ndenumerate(cm):
            axes[3].text(j, i, f"{v:,}", ha="center", va="center", fontsize=13,
                         color="white" if v > cm.max() / 2 else "black")
        axes[3].set(title=f"Confusion at {threshold:.2f}", xticks=[0, 1], yticks=[0, 1],
                    xticklabels=["stay", "churn"], yticklabels=["stay", "churn"], xlabel="predicted", ylabel="actual")
        fig.tight_layout()
    return fig


def _in_notebook() -> bool:
    import sys

    return "ipykernel" in sys.modules


@dataclass
class Evaluation:
    """Challenger (and champion, when one serves) scored on the same holdout."""

    challenger: dict[str, float]
    champion: dict[str, float] | None
    proba: np.ndarray
    champion_proba: np.ndarray | None
    y_true: np.ndarray
    threshold: float
    #: why the serving champion could not be scored on this holdout (None when it was, or none serves)
    champion_error: str | None = None
    #: :func:`schema_diff` of champion and candidate when both schemas were given
    schema_changes: dict | None = None

    @property
    def champion_auc(self) -> float | None:
        return None if self.champion is None else self.champion["roc_auc"]

    def table(self):
        """Metrics side by side (a pandas DataFrame for the notebook)."""
        import pandas as pd

        cols = {"challenger": self.challenger}
        if self.champion is not None:
            cols["champion"] = self.champion
            cols["difference"] = {k: self.challenger[k] - self.champion[k] for k in self.challenger}
        return pd.DataFrame(cols).round(4)


def evaluate_holdout(pipeline, X_holdout, y_holdout, champion_pipeline=None, *, champion_schema=None,
                     candidate_schema=None, champion_rows=None) -> Evaluation:
    """Score the challenger, and the champion if given, on the same holdout rows.

    With ``champion_schema`` the champion is scored on the columns it expects, typed as it was
    trained (the candidate may have added, removed or retyped columns). When the holdout lacks one
    of them, or scoring fails, the champion is left out and ``champion_error`` says why (the gate
    turns that into a reason); ``schema_changes`` is :func:`schema_diff` when both schemas are given.
    ``champion_rows``: the same customers with every column the table had (an imported model's
    sample), so a champion with other columns can still be scored; default ``X_holdout``.
    """
    y = np.asarray(y_holdout, dtype=int)
    p = pipeline.predict_proba(X_holdout)[:, 1]
    cp, champion_error, changes = None, None, None
    if champion_schema is not None and candidate_schema is not None:
        changes = schema_diff(champion_schema, candidate_schema)
    rows = X_holdout if champion_rows is None else champion_rows
    if champion_pipeline is not None and champion_schema is not None:
        missing = [c for c in champion_schema.names if c not in rows.columns]
        if missing:
            champion_error = (f"the champion expects column(s) {missing!r} that this holdout does not have "
                              f"({describe_schema_diff(changes) or 'the input schemas differ'})")
        else:
            from churnkit.data import prepare_features

            try:
                cp = champion_pipeline.predict_proba(prepare_features(rows, champion_schema))[:, 1]
            except Exception as exc:  # noqa: BLE001 - any failure of the old model on new rows is a gate reason
                champion_error = f"scoring the champion on this holdout failed: {type(exc).__name__}: {exc}"
    elif champion_pipeline is not None:
        cp = champion_pipeline.predict_proba(rows)[:, 1]
    return Evaluation(
        challenger=compute_metrics(y, p),
        champion=None if cp is None else compute_metrics(y, cp),
        proba=p,
        champion_proba=cp,
        y_true=y,
        threshold=choose_threshold(y, p),
        champion_error=champion_error,
        schema_changes=changes,
    )
