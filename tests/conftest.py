"""Shared fixtures: isolated runs folders with their own embedded MLflow store."""

from __future__ import annotations

import os
import socket

import pytest

os.environ.setdefault("MPLBACKEND", "Agg")
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")


@pytest.fixture
def runs_config(tmp_path, monkeypatch):
    """A fresh runs folder (embedded sqlite MLflow) for one test."""
    from churnkit.config import load_config

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("MLFLOW_RUN_ID", raising=False)
    monkeypatch.setenv("CHURNKIT_RUNS_DIR", str(tmp_path / "runs"))
    return load_config(tmp_path / "runs")


@pytest.fixture(scope="session")
def pipeline_runs(tmp_path_factory):
    """One pipeline run with defaults (small synthetic month): registers churn v1 as champion.

    Tests that only read this store share it; tests that change the registry use ``runs_config``.
    """
    from churnkit.config import load_config
    from churnkit.runner import run_pipeline

    saved = {k: os.environ.pop(k, None) for k in ("MLFLOW_TRACKING_URI", "MLFLOW_RUN_ID")}
    config = load_config(tmp_path_factory.mktemp("pipeline") / "runs")
    result = run_pipeline({"rows": 1500}, config=config, progress=False, echo=lambda *_: None,
                          steps=("01-train", "02-evaluate"))
    yield config, result
    for k, v in saved.items():
        if v is not None:
            os.environ[k] = v


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
