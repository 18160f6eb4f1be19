"""Test support for batch scoring: a registry with churn v1 (logistic regression) and v2 (boosting), and
a Telco-shaped customer base with blanks, numbers stored as text, an unseen category and bad rows.

The registry is built once per test process through the library (train, log, gate, register); each
test copies its sqlite file (the artifacts are shared read-only).
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from pathlib import Path

_STORE: dict[str, Path] = {}
ID = "customer_id"


def _build(folder: Path) -> None:
    """Through bench/score.py's own set-up (so the benchmark's registry is exercised too)."""
    import importlib.util

    bench = Path(__file__).resolve().parent.parent / "bench" / "score.py"
    spec = importlib.util.spec_from_file_location("bench_score", bench)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.build_store(folder, rows=1500, seed=4, hgb_iterations=30, threshold=0.4)


def score_store(base: Path) -> Path:
    """A fresh runs folder whose registry holds churn v1 (logreg, champion) and v2 (hgb, challenger)."""
    saved = {k: os.environ.pop(k, None) for k in ("MLFLOW_TRACKING_URI", "MLFLOW_RUN_ID")}
    try:
        if "seed" not in _STORE:
            root = tempfile.mkdtemp(prefix="churnkit-score-store-")
            atexit.register(shutil.rmtree, root, ignore_errors=True)
            _build(Path(root) / "runs")
            _STORE["seed"] = Path(root) / "runs"
        runs = Path(base) / "runs"
        runs.mkdir(parents=True, exist_ok=True)
        shutil.copy(_STORE["seed"] / "mlflow.db", runs / "mlflow.db")
        return runs
    finally:
        os.environ.pop("MLFLOW_TRACKING_URI", None)
        for k, v in saved.items():
            if v is not None:
                os.environ[k] = v


def customer_base(rows: int = 1200, seed: int = 21, bad: bool = True):
    """A month of customers as the export has them: text numbers with blanks (total_charges), an unseen
    payment method, the label column (ignored), a padded category, and (``bad``) two rows to refuse."""
    from churnkit.data import synth_month

    frame = synth_month(rows=rows, month=5, seed=seed, drift="new_category")
    frame["tenure"] = frame["tenure"].astype(str)  # numbers stored as text
    frame.loc[7, "contract"] = "  One year "  # padded: stripped like training does
    frame.loc[11, "monthly_charges"] = None  # a gap the imputer fills
    if bad:
        frame.loc[3, "tenure"] = "three"  # not a number: refused
        frame.loc[5, ID] = None  # no id: refused
    return frame
