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


@pytest.fixture
def local_endpoint_cleanup(runs_config):
    """Stops any local endpoint a pipeline under test deployed into ``runs_config``."""
    yield runs_config
    from churnkit.deploy import get_target

    get_target("local", config=runs_config).stop()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def postgres_mlflow(tmp_path_factory):
    """A real ``mlflow server`` backed by a throwaway PostgreSQL cluster, for the whole session.

    Skips with the reason only where PostgreSQL is not installed.
    """
    from tracking_support import MlflowServer, Postgres

    try:
        pg = Postgres().start()
    except FileNotFoundError as exc:
        pytest.skip(str(exc))
    base = tmp_path_factory.mktemp("pg-mlflow")
    server = None
    try:
        server = MlflowServer(pg.create_database("mlflow"), base / "artifacts", base / "server.log").start()
        yield server
    finally:
        try:
            if server is not None:
                server.stop()
        finally:
            pg.stop()
