"""Shared fixtures: isolated runs folders with their own embedded MLflow store."""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import pytest

os.environ.setdefault("MPLBACKEND", "Agg")
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")

#: Fixtures that start a service outside Python's reach, and the marker (pyproject) a test using one gets.
SERVICE_FIXTURES = {"postgres_mlflow": "postgres", "cloud_world": "emulator"}
#: Modules whose tests mostly start notebook kernels, pipelines, servers or other processes: ``integration``.
#: ``make test-fast`` leaves these and the service markers out; ``make test`` (CI) runs everything.
INTEGRATION_MODULES = {
    "tests/test_notebooks.py", "tests/test_session.py", "tests/test_ci_templates.py", "tests/test_cli.py",
    "tests/test_importer.py", "tests/test_tracking_server.py", "tests/test_registry_concurrency.py",
    "tests/test_loadtest.py", "tests/test_terraform.py", "tests/test_bench.py",
    "tests/runner/test_execution.py", "tests/runner/test_params.py", "tests/runner/test_secrets.py",
    "tests/runner/test_lock.py", "tests/runner/test_kernel.py", "tests/audit/test_runs.py", "tests/deploy/test_local.py",
    "tests/rollout/test_local.py", "tests/rollout/test_hardening.py", "tests/serve/test_limits.py",
    "tests/serve/test_loading_integrity.py",
    "tests/serve/test_workers.py", "tests/serve/test_azureml_score.py",
    # real servers, child processes, Spark, emulators and containers of the later suites
    "tests/test_approval.py", "tests/test_model_trust.py", "tests/test_benign_corpus.py", "tests/test_reference.py",
    "tests/rollout/test_judgment_local.py", "tests/batch/test_score.py", "tests/batch/test_spark.py",
    "tests/batch/test_cloud_sagemaker.py", "tests/batch/test_cloud_vertex.py", "tests/batch/test_cloud_azureml.py",
    "tests/batch/test_terraform_batch.py", "tests/serve/test_batch_mode.py", "tests/runner/test_pipeline_score.py",
}


def pytest_collection_modifyitems(config, items):
    root = Path(str(config.rootpath))
    for item in items:
        for fixture in SERVICE_FIXTURES.keys() & set(getattr(item, "fixturenames", ())):
            item.add_marker(SERVICE_FIXTURES[fixture])
        try:
            module = Path(str(item.path)).relative_to(root).as_posix()
        except ValueError:
            continue
        if module in INTEGRATION_MODULES:
            item.add_marker("integration")


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


# --------------------------------------------------------------------------------------------------
# Executed notebooks carry no stray stderr
# --------------------------------------------------------------------------------------------------

_scanned: dict[Path, float] = {}  # executed notebook -> the mtime it had when it was last scanned


def stray_stderr(path: Path) -> list[str]:
    """The stderr stream outputs of a notebook papermill executed, as ``"code cell N: first line"``.

    A reviewer reads these notebooks: a warning or a progress bar meant for a terminal is noise there.
    Notebooks papermill did not execute (no ``metadata.papermill``) have nothing to say and are skipped.
    """
    try:
        nb = json.loads(path.read_text())
    except (OSError, ValueError):
        return []
    if "papermill" not in nb.get("metadata", {}):
        return []
    found, code = [], 0
    for cell in nb.get("cells", []):
        if cell.get("cell_type") != "code":
            continue
        code += 1
        for out in cell.get("outputs", []):
            if out.get("output_type") == "stream" and out.get("name") == "stderr":
                text = "".join(out.get("text", "")).strip().splitlines() or [""]
                found.append(f"code cell {code}: {text[0][:200]}")
    return found


_listings: dict[str, tuple[int, list[str], list[str]]] = {}  # folder -> (mtime, sub-folders, notebooks)
_SKIPPED = ("artifacts", ".ipynb_checkpoints", "mlruns")


def executed_notebooks(base: Path):
    """Notebook files under ``base``, except MLflow's copies of them (``artifacts/``) and checkpoints.

    A folder is listed again only when its mtime changed (an entry was added or removed); otherwise its last
    listing is used, so the scan after each test costs a stat per folder rather than a listing.
    """
    stack = [str(base)]
    while stack:
        folder = stack.pop()
        try:
            mtime = os.stat(folder).st_mtime_ns
        except OSError:
            continue
        cached = _listings.get(folder)
        if cached is None or cached[0] != mtime:
            subfolders, notebooks = [], []
            try:
                with os.scandir(folder) as entries:
                    for entry in entries:
                        if entry.is_dir(follow_symlinks=False):
                            if entry.name not in _SKIPPED:
                                subfolders.append(entry.path)
                        elif entry.name.endswith(".ipynb"):
                            notebooks.append(entry.path)
            except OSError:
                continue
            cached = _listings[folder] = (mtime, subfolders, notebooks)
        stack.extend(cached[1])
        yield from map(Path, cached[2])


@pytest.fixture(autouse=True)
def no_stray_stderr_in_executed_notebooks(tmp_path_factory):
    """After each test, every notebook it executed (anywhere under pytest's base temporary folder, by the runner
    in-process or by the CLI in a subprocess) is scanned: a stderr output fails the test that produced it."""
    yield
    problems = []
    for path in executed_notebooks(tmp_path_factory.getbasetemp()):
        try:
            mtime = path.stat().st_mtime
        except OSError:
            continue
        if _scanned.get(path) == mtime:
            continue
        _scanned[path] = mtime
        problems += [f"{path}: {line}" for line in stray_stderr(path)]
    if problems:
        pytest.fail("stray stderr in executed notebooks:\n" + "\n".join(problems), pytrace=False)
