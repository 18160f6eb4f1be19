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


def test_pipeline_ends_with_the_score_and_the_index_links_it(tmp_path, monkeypatch):
    from deploy_support import cloud_store

    from churnkit.audit.html import page
    from churnkit.audit.runs import collect
    from churnkit.batch.output import read_partition
    from churnkit.runner import pipeline_summary, run_pipeline

    runs_config = cloud_store(tmp_path, monkeypatch, {})  # a registry whose champion is churn v1
    # 01-train's month (an int) stays 01-train's; 06-score scores the champion, whatever the steps before did
    result = run_pipeline({"rows": 400, "month": 2, "score_target": "local", "reasons": 1}, config=runs_config,
                          progress=False, echo=lambda *_: None, steps=("01-train",))
    assert [s.notebook for s in result.steps] == ["01-train", "06-score"]
    scored = result.step("06-score")
    assert scored.parameters["model"] == "models:/churn/1" and scored.parameters["engine"] == "local"
    assert "month" not in scored.parameters or scored.parameters["month"] == ""
    summary = pipeline_summary(result)
    score = summary["score"]
    assert score["engine"] == "local" and score["output"] and "score    models:/churn/1 on local" in summary["text"]
    tags = scored.tags
    accounting = read_partition(score["output"], *[p.split("=", 1)[1] for p in tags["churnkit.score_partition"].split("/")])
    assert accounting["rows_in"] == accounting["rows_scored"] + accounting["rows_refused"] > 0
    runs, parents, versions = collect(runs_config, None)  # the index, without rendering every notebook to HTML
    index = page(runs, parents, versions, {}, out=runs_config.runs_dir / "index.html", ui="http://127.0.0.1:5000",
                 config=runs_config)
    assert 'class="score-output" href=' in index and "scored output</a> on local" in index
