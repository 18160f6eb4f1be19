"""Test support for the deploy tests: a small registry with two versions of ``churn``.

Built once per test process through the library (train, log, gate, register): v1 becomes champion,
v2 challenger. Tests copy the sqlite file so each test's tags and history stay its own; the model
artifacts are shared read-only.
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from pathlib import Path

_STORE: dict[str, Path] = {}


def _build(folder: Path) -> None:
    import mlflow

    from churnkit import registry
    from churnkit.config import TAG, load_config
    from churnkit.data import load_table
    from churnkit.evaluate import gate
    from churnkit.model import split_holdout, train_model

    config = load_config(folder)
    registry.setup_tracking(config)
    for seed in (0, 1):
        dataset = load_table("", rows=1500, seed=seed)
        split = split_holdout(dataset, seed=seed)
        pipeline = train_model(split, dataset.schema, seed=seed)
        with mlflow.start_run(run_name="01-train", tags={TAG + "notebook": "01-train"}):
            run_id = registry.log_candidate(pipeline, dataset, split, model="logreg", seed=seed)
        candidate = registry.load_candidate(run_id, config)
        registry.register_candidate(candidate, gate(0.99, None, 0.5, -1.0), threshold=0.5, config=config)


def registry_store(base: Path) -> Path:
    """A fresh runs folder whose embedded registry holds churn v1 (champion) and v2 (challenger)."""
    saved = {k: os.environ.pop(k, None) for k in ("MLFLOW_TRACKING_URI", "MLFLOW_RUN_ID")}
    try:
        if "seed" not in _STORE:
            root = tempfile.mkdtemp(prefix="churnkit-deploy-store-")
            atexit.register(shutil.rmtree, root, ignore_errors=True)  # the copies point at its artifacts until then
            seed_dir = Path(root) / "runs"
            _build(seed_dir)
            _STORE["seed"] = seed_dir
        runs = Path(base) / "runs"
        runs.mkdir(parents=True, exist_ok=True)
        shutil.copy(_STORE["seed"] / "mlflow.db", runs / "mlflow.db")
        return runs
    finally:
        for k, v in saved.items():
            if v is not None:
                os.environ[k] = v


def cloud_store(tmp_path: Path, monkeypatch, env: dict[str, str]):
    """A registry store for one cloud test: the cloud's variables set, the embedded MLflow in use."""
    from churnkit import registry
    from churnkit.config import load_config

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    runs = registry_store(tmp_path)
    monkeypatch.setenv("CHURNKIT_RUNS_DIR", str(runs))  # registry calls without a config read it
    config = load_config(runs)
    registry.setup_tracking(config)
    return config
