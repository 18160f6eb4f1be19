"""Settings precedence: --runs-dir > CHURNKIT_RUNS_DIR > runs/; MLFLOW_TRACKING_URI > embedded sqlite."""

from __future__ import annotations

import pytest

from churnkit.config import default_runs_dir, load_config
from churnkit.exceptions import ConfigError


def test_precedence(tmp_path):
    env = {"CHURNKIT_RUNS_DIR": str(tmp_path / "env")}
    assert load_config(tmp_path / "cli", env).runs_dir == (tmp_path / "cli").resolve()
    cfg = load_config(None, env)
    assert cfg.runs_dir == (tmp_path / "env").resolve()
    assert cfg.embedded and cfg.tracking_uri == f"sqlite:///{tmp_path / 'env' / 'mlflow.db'}"
    assert cfg.artifact_location.startswith("file://") and cfg.artifact_location.endswith("/env/artifacts")
    assert load_config(None, {}).runs_dir == default_runs_dir().resolve()


def test_team_server(tmp_path):
    cfg = load_config(tmp_path, {"MLFLOW_TRACKING_URI": "http://mlflow.internal:5000"})
    assert not cfg.embedded and cfg.tracking_uri == "http://mlflow.internal:5000" and cfg.artifact_location is None


def test_runs_dir_that_is_a_file(tmp_path):
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(ConfigError, match="not a folder"):
        load_config(f, {})


def test_tracking_setup_does_not_leak_into_the_environment(tmp_path, monkeypatch):
    import os

    from churnkit import tracking as registry

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("MLFLOW_REGISTRY_URI", raising=False)
    cfg = load_config(tmp_path / "a", {})
    registry.setup_tracking(cfg)
    assert "MLFLOW_TRACKING_URI" not in os.environ and "MLFLOW_REGISTRY_URI" not in os.environ
    assert load_config(tmp_path / "b").embedded  # still our own embedded store, not a "team server"
    import mlflow

    assert mlflow.get_tracking_uri() == cfg.tracking_uri
    other = load_config(tmp_path / "b", {})
    registry.setup_tracking()  # no config: read from the environment now, not the store set up last
    assert mlflow.get_tracking_uri() == load_config().tracking_uri != cfg.tracking_uri
    registry.setup_tracking(other)
    assert mlflow.get_tracking_uri() == other.tracking_uri


def test_scoped_environ_sets_unsets_and_restores(monkeypatch):
    import os

    from churnkit.config import scoped_environ

    monkeypatch.setenv("CK_A", "1")
    monkeypatch.delenv("CK_B", raising=False)
    with scoped_environ({"CK_A": None, "CK_B": "2"}):
        assert "CK_A" not in os.environ and os.environ["CK_B"] == "2"
    assert os.environ["CK_A"] == "1" and "CK_B" not in os.environ


def test_sqlite_tracking_uri_keeps_artifacts_under_runs_whatever_the_cwd(tmp_path, monkeypatch):
    """A sqlite MLFLOW_TRACKING_URI is a local store: its artifacts go to runs/, never ./mlruns of the kernel."""
    import mlflow

    from churnkit import registry

    notebooks = tmp_path / "notebooks"
    notebooks.mkdir()
    monkeypatch.chdir(notebooks)
    uri = f"sqlite:///{tmp_path / 'team.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    cfg = load_config(tmp_path / "runs")
    assert not cfg.embedded and cfg.artifact_location == (tmp_path / "runs" / "artifacts").as_uri()
    registry.setup_tracking(cfg)
    with mlflow.start_run():
        mlflow.log_text("x", "probe.txt")
    assert list((tmp_path / "runs" / "artifacts").rglob("probe.txt"))
    assert not (notebooks / "mlruns").exists()
