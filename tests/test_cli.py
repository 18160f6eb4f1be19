"""The command line: exit codes, messages, and the pipeline's report."""

from __future__ import annotations

import json

import pandas as pd
from click.testing import CliRunner

from churnkit.cli import main


def invoke(*args):
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def test_params_lists_defaults_and_comments():
    res = invoke("params", "01-train")
    assert res.exit_code == 0
    line = next(line for line in res.output.splitlines() if line.startswith("label_column"))
    assert '"churn"' in line and "Yes/No" in line


def test_unknown_notebook_is_usage_error():
    res = invoke("params", "07-dance")
    assert res.exit_code == 2 and "no notebook named '07-dance'" in res.output


def test_synth_writes_a_table(tmp_path):
    out = tmp_path / "m3.parquet"
    res = invoke("data", "synth", "--rows", "300", "--month", "3", "--seed", "1", "--drift", "covariate", "--out", str(out))
    assert res.exit_code == 0, res.output
    frame = pd.read_parquet(out)
    assert len(frame) == 300 and set(frame["churn"]) == {"Yes", "No"}
    bad = invoke("data", "synth", "--rows", "0", "--out", str(tmp_path / "x.csv"))
    assert bad.exit_code == 2


def test_pipeline_unknown_parameter_is_exit_2(runs_config):
    res = invoke("pipeline", "-p", "colour", "red", "--runs-dir", str(runs_config.runs_dir))
    assert res.exit_code == 2 and "unknown parameter 'colour'" in res.output
    assert not list(runs_config.runs_dir.glob("*/*.ipynb"))


def test_run_failure_names_notebook_and_cell(runs_config, tmp_path):
    bad = tmp_path / "bad.csv"
    pd.DataFrame({"a": ["x", "y", "z"], "churn": ["churned", "stayed", "stayed"]}).to_csv(bad, index=False)
    res = invoke("run", "01-train", "-p", "data_path", str(bad), "--runs-dir", str(runs_config.runs_dir))
    assert res.exit_code == 1
    assert "failed in code cell 2: LabelError" in res.output and "'stayed'" in res.output
    assert "failed cell: 2" in res.output
    assert "output notebook:" in res.output and "01-train.ipynb" in res.output


def test_pipeline_registers_then_refuses_and_exits_0(runs_config, local_endpoint_cleanup, tmp_path):
    table = tmp_path / "telco.csv"
    frame = __import__("churnkit.data", fromlist=["synth_month"]).synth_month(rows=1200, seed=4)
    frame = frame.rename(columns={"churn": "Churn", "customer_id": "customerID"})
    frame.to_csv(table, index=False)
    first = invoke("pipeline", "-p", "data_path", str(table), "-p", "label_column", "Churn", "-p", "port", "0",
                   "--runs-dir", str(runs_config.runs_dir))
    assert first.exit_code == 0, first.output
    assert "gate     PASSED" in first.output and "registered churn v1 as champion" in first.output
    assert "03-deploy finished" in first.output and "04-rollout skipped" in first.output

    second = invoke("pipeline", "-p", "data_path", str(table), "-p", "label_column", "Churn", "-p", "auc_threshold",
                    "0.999", "-p", "min_improvement", "0.01", "--runs-dir", str(runs_config.runs_dir), "--json")
    assert second.exit_code == 0
    summary = json.loads(second.stdout)
    assert summary["registered_version"] is None and summary["gate"]["passed"] is False
    assert len(summary["gate"]["reasons"]) == 2
    assert summary["aliases"] == {"champion": "1"}
    assert summary["metrics"]["roc_auc"] > 0.85
