"""Quiet outputs: nothing meant for a terminal on the CLI's stderr or in executed notebooks, unless asked.

Every executed notebook of the whole suite is also scanned for stderr outputs by the autouse fixture
``no_stray_stderr_in_executed_notebooks`` (conftest.py); the first test here checks that scanner itself.
"""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner
from conftest import stray_stderr

from churnkit.cli import main


def _notebook(outputs: list[dict], executed: bool = True) -> dict:
    return {"cells": [{"cell_type": "markdown", "metadata": {}, "source": "# t"},
                      {"cell_type": "code", "metadata": {}, "source": "x = 1", "outputs": [], "execution_count": 1},
                      {"cell_type": "code", "metadata": {}, "source": "x", "outputs": outputs, "execution_count": 2}],
            "metadata": {"papermill": {"parameters": {}}} if executed else {}, "nbformat": 4, "nbformat_minor": 5}


def test_the_scanner_finds_stderr_in_an_executed_notebook_only(tmp_path):
    warning = {"output_type": "stream", "name": "stderr",
               "text": ["/venv/tqdm/auto.py:21: TqdmWarning: IProgress not found. Please update jupyter\n"]}
    stdout = {"output_type": "stream", "name": "stdout", "text": ["fine\n"]}
    path = tmp_path / "x.ipynb"
    path.write_text(json.dumps(_notebook([stdout, warning])))
    first_line = "/venv/tqdm/auto.py:21: TqdmWarning: IProgress not found. Please update jupyter"
    assert stray_stderr(path) == [f"code cell 2: {first_line}"]
    path.write_text(json.dumps(_notebook([stdout])))
    assert stray_stderr(path) == []
    path.write_text(json.dumps(_notebook([warning], executed=False)))  # a source notebook: not a run's record
    assert stray_stderr(path) == []


def test_cli_stderr_has_no_progress_bars_unless_verbose(tmp_path, monkeypatch):
    """``churnkit import`` downloads the version's artifacts to check them: MLflow would draw a bar per download."""
    from churnkit.importer import write_demo_model

    for var in ("MLFLOW_TRACKING_URI", "MLFLOW_RUN_ID", "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "CHURNKIT_LOG_LEVEL"):
        monkeypatch.delenv(var, raising=False)  # the suite's own quieting is restored after the test
    model, sample = write_demo_model(tmp_path, rows=600)
    args = ["import", model, "--sample", sample, "--label-column", "churn", "--runs-dir", str(tmp_path / "runs")]
    verbose = CliRunner().invoke(main, ["--verbose", *args])
    assert verbose.exit_code == 0, verbose.output
    assert "Downloading artifacts" in verbose.stderr and "registered churn v1" in verbose.stdout
    monkeypatch.delenv("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", raising=False)
    quiet = CliRunner().invoke(main, args)
    assert quiet.exit_code == 0, quiet.output
    assert "registered churn v2" in quiet.stdout and quiet.stderr == ""


def test_a_log_level_that_is_no_level_is_one_clear_line(monkeypatch):
    monkeypatch.setenv("CHURNKIT_LOG_LEVEL", "loud")
    result = CliRunner().invoke(main, ["params", "01-train"])
    assert result.exit_code == 1
    assert result.output.strip() == ("error: ConfigError: CHURNKIT_LOG_LEVEL='loud' is not a log level; use one of "
                                     "DEBUG, INFO, WARNING, ERROR or unset it")


@pytest.mark.parametrize(("given", "verbose", "level"), [("", False, "WARNING"), ("", True, "INFO"),
                                                         ("debug", False, "DEBUG"), ("debug", True, "DEBUG"),
                                                         ("error", True, "INFO")])
def test_log_level_comes_from_verbose_then_the_environment(given, verbose, level):
    from churnkit.config import log_level

    assert log_level(verbose, {"CHURNKIT_LOG_LEVEL": given}) == level
