"""The pipeline's ``score_target``: validated before anything runs; 'none' leaves the job as it was."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from churnkit.exceptions import ParameterError
from churnkit.runner.pipeline import SCORE_TARGETS, score_step


def test_score_target_is_checked_and_taken_out_of_the_notebook_parameters():
    assert score_step({"model": "hgb"}) == ({"model": "hgb"}, "none")
    assert score_step({"score_target": "SageMaker", "model": "hgb"}) == ({"model": "hgb"}, "sagemaker")
    with pytest.raises(ParameterError, match="score_target 'gke' is not one of none, local") as err:
        score_step({"score_target": "gke"})
    assert err.value.valid == list(SCORE_TARGETS)


def test_cli_refuses_a_bad_score_target_before_any_kernel_starts(tmp_path):
    from churnkit.cli import main

    res = CliRunner().invoke(main, ["pipeline", "--runs-dir", str(tmp_path / "runs"), "-p", "score_target", "gke"])
    assert res.exit_code == 2 and "score_target 'gke'" in res.output and "Traceback" not in res.output
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").glob("*/*.ipynb"))
