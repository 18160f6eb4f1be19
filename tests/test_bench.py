"""The benchmarks' set-up steps against the library as it is now (the timed parts are run by hand: `make bench`).

A benchmark that no longer runs measures nothing; these run the parts that call the library (training,
logging, registering, exporting) on small data, each against its own store.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench"


def _bench(name: str):
    """``bench/<name>.py`` as a module; its ``from serve import ...`` finds bench/serve.py, not tests/serve."""
    saved = sys.modules.pop("serve", None)  # the tests' own serve package, when already imported
    sys.path.insert(0, str(BENCH))
    try:
        spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCH / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module
    finally:
        sys.path.remove(str(BENCH))
        sys.modules.pop("serve", None)
        if saved is not None:
            sys.modules["serve"] = saved


@pytest.fixture
def no_store_from_env(monkeypatch, tmp_path):
    """The benches name their own store: the environment's must not be the one that answers."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("CHURNKIT_RUNS_DIR", str(tmp_path / "elsewhere"))
    yield
    import mlflow

    mlflow.set_tracking_uri(None)


def test_serve_bench_trains_and_finds_its_model_folder(tmp_path, no_store_from_env):
    folder, pipeline, schema, raw = _bench("serve").train("logreg", 600, tmp_path / "runs")
    assert (Path(folder) / "MLmodel").exists() and len(raw) > 0 and schema.numeric
    assert not (tmp_path / "elsewhere").exists()


def test_capacity_bench_exports_both_compiled_folders(tmp_path, no_store_from_env):
    import json

    folders = _bench("capacity").export_models(tmp_path)
    for kind, engine in (("logreg", "numpy-logreg"), ("hgb", "numpy-trees")):
        manifest = json.loads((folders[kind] / "churnkit-model.json").read_text())
        assert manifest["scorer"]["engine"] == engine


def test_pipeline_bench_peer_registers_in_its_own_store(tmp_path, no_store_from_env):
    from churnkit import registry
    from churnkit.config import load_config

    config = load_config(tmp_path / "peer")
    seconds = _bench("pipeline").in_process(800, config)
    assert seconds > 0 and registry.get_champion(config=config) is not None
    assert not (tmp_path / "elsewhere").exists()
