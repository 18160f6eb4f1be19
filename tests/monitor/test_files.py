"""``churnkit monitor`` end to end (churnkit.monitor.files): the served capture, late labels, latency, errors."""

from __future__ import annotations

import json
import time

import httpx
import pandas as pd
import pytest
from click.testing import CliRunner

from churnkit.cli import main
from churnkit.data import synth_month, write_table


def _send(url, frame, batch=50):
    rows = json.loads(frame.drop(columns=["churn"]).to_json(orient="records"))
    with httpx.Client(base_url=url, timeout=30) as client:
        for i in range(0, len(rows), batch):
            assert client.post("/invocations", json={"instances": rows[i:i + batch]}).status_code == 200


def _captured(folder, rows, timeout=15.0):
    """The capture once it holds ``rows`` rows (the server flushes it within a second)."""
    from churnkit.serve.capture import read_capture

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if folder.is_dir() and len(frame := read_capture(folder)) >= rows:
            return frame
        time.sleep(0.2)
    raise AssertionError(f"capture at {folder} did not reach {rows} rows")


def test_cli_monitors_the_served_capture_with_late_labels_and_latency(champion, served, tmp_path):
    config = champion[0]
    server, capture, _ = served
    ref, cur = synth_month(2000, 1, 0), synth_month(1000, 2, 0, drift="covariate")
    write_table(ref, tmp_path / "ref.parquet")
    _send(server.url, cur)
    assert len(_captured(capture, 1000)) == 1000
    write_table(cur[["customer_id", "churn"]].sample(frac=1.0, random_state=1), tmp_path / "labels.csv")
    args = ["monitor", "--reference", str(tmp_path / "ref.parquet"), "--current", str(capture),
            "--labels", str(tmp_path / "labels.csv"), "--model", "models:/churn@champion",
            "--metrics-url", server.url, "--probe-requests", "5",
            "--runs-dir", str(config.runs_dir), "--report", str(tmp_path / "out" / "drift.html"), "--json"]
    res = CliRunner().invoke(main, args, catch_exceptions=False)
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)  # exactly one JSON object on stdout
    assert out["current_rows"] == 1000 and "churn_probability" not in out["columns"]
    assert out["prediction_drift"]["source"] == "capture" and out["prediction_drift"]["drift"]
    assert out["prediction_drift"]["served_versions"] == ["1"]
    assert not [w for w in out["recommendation"]["warnings"] if "model version" in w]
    assert out["performance"]["label_source"] == "labels joined on 'customer_id'"
    assert out["performance"]["labelled_rows"] == 1000 and out["recommendation"]["retrain"]
    assert out["latency"]["probe_requests"] == 5 and out["latency"]["requests"] == 5
    html = (tmp_path / "out" / "drift.html").read_text()  # four plots: PSI, distributions, scores, AUC by month
    assert html.count("data:image/png;base64,") == 4 and "Recommendation" in html and "<script" not in html


def test_cli_bad_input_exit_1_with_message(tmp_path):
    write_table(synth_month(200, 1, 0), tmp_path / "ref.csv")
    pd.DataFrame({"x": [1, 2, 3]}).to_csv(tmp_path / "other.csv", index=False)
    runner = CliRunner()
    missing = runner.invoke(main, ["monitor", "--reference", str(tmp_path / "ref.csv"), "--current",
                                   str(tmp_path / "nope.csv"), "--json"])
    assert missing.exit_code == 1 and "nope.csv" in missing.stderr and missing.stdout == ""
    disjoint = runner.invoke(main, ["monitor", "--reference", str(tmp_path / "ref.csv"), "--current",
                                    str(tmp_path / "other.csv")])
    assert disjoint.exit_code == 1 and "no feature column in common" in disjoint.stderr
    usage = runner.invoke(main, ["monitor", "--reference", str(tmp_path / "ref.csv")])
    assert usage.exit_code == 2


def test_cli_text_output_says_drift_and_exits_0(tmp_path):
    write_table(synth_month(1500, 1, 0), tmp_path / "a.csv")
    write_table(synth_month(1500, 2, 0, drift="covariate"), tmp_path / "b.csv")
    res = CliRunner().invoke(main, ["monitor", "--reference", str(tmp_path / "a.csv"), "--current", str(tmp_path / "b.csv"),
                                    "--drift-share", "0.25"])
    assert res.exit_code == 0 and "dataset drift: YES" in res.stdout and "recommendation: RETRAIN" in res.stdout


def test_log_monitor_report_attaches_metrics_json_and_html_to_the_active_run(champion):
    import mlflow

    from churnkit import registry
    from churnkit.monitor import build_monitor_report, log_monitor_report

    config, model, baseline, _ = champion
    report = build_monitor_report(synth_month(600, 1, 0), synth_month(600, 2, 0, drift="covariate"), model=model,
                                  baseline=baseline)
    assert log_monitor_report(report) is None  # no active run: nothing logged, no error
    registry.setup_tracking(config)
    with mlflow.start_run() as run:
        log_monitor_report(report)
    logged = registry.client().get_run(run.info.run_id).data.metrics
    perf = report.performance["metrics"]
    assert logged == {"share_of_drifted_columns": pytest.approx(report.share_of_drifted_columns),
                      "dataset_drift": float(report.dataset_drift), "retrain": float(report.recommendation["retrain"]),
                      "prediction_psi": pytest.approx(report.prediction_drift["psi"]),
                      "current_roc_auc": pytest.approx(perf["roc_auc"]), "current_pr_auc": pytest.approx(perf["pr_auc"])}
    files = {a.path for a in registry.client().list_artifacts(run.info.run_id, "monitor")}
    assert files == {"monitor/report.json", "monitor/report.html"}
    stored = json.loads(mlflow.artifacts.load_text(f"runs:/{run.info.run_id}/monitor/report.json"))
    assert stored == json.loads(json.dumps(report.to_dict()))
