"""The report (churnkit.monitor.report): drift verdicts on synthetic months, the JSON shape, performance."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from churnkit import monitor as M
from churnkit.data import synth_month
from churnkit.exceptions import MonitorError


def test_no_drift_on_a_random_split_of_one_table():
    frame = synth_month(rows=8000, month=1, seed=11)
    shuffled = frame.sample(frac=1.0, random_state=0)
    report = M.build_monitor_report(shuffled.iloc[:4000], shuffled.iloc[4000:])
    assert report.drifted_columns == [] and not report.dataset_drift
    assert max(c["psi"] for c in report.columns.values()) < 0.1
    assert report.recommendation["retrain"] is False
    assert "customer_id" not in report.columns and "churn" not in report.columns  # ID and label excluded


def test_covariate_shift_month_drifts():
    report = M.build_monitor_report(synth_month(4000, month=1, seed=0), synth_month(4000, month=2, seed=0, drift="covariate"))
    assert {"tenure", "monthly_charges", "contract"} <= set(report.drifted_columns)
    assert not {"gender", "partner", "dependents"} & set(report.drifted_columns)
    assert report.columns["tenure"]["psi_level"] == "act" and report.recommendation["retrain"]
    assert any("tenure" in r for r in report.recommendation["reasons"])


def test_split_by_tenure_drifts_in_small_samples():
    frame = synth_month(1600, month=1, seed=3)
    tenure = pd.to_numeric(frame["tenure"])
    report = M.build_monitor_report(frame[tenure < 12].head(700), frame[tenure >= 12].head(700), drift_share=0.3)
    assert report.columns["tenure"]["method"] == "ks" and report.columns["contract"]["method"] == "chi2"
    assert {"tenure", "total_charges", "contract"} <= set(report.drifted_columns)
    assert report.dataset_drift and report.share_of_drifted_columns >= 0.3


def test_new_category_is_detected():
    report = M.build_monitor_report(synth_month(3000, 1, 0), synth_month(3000, 2, 0, drift="new_category"))
    col = report.columns["payment_method"]
    assert col["new_categories"] == ["Digital wallet"] and col["drift"] and col["kind"] == "categorical"
    assert any("Digital wallet" in w for w in report.recommendation["warnings"])


def test_json_shape_and_nan_free():
    report = M.build_monitor_report(synth_month(600, 1, 0), synth_month(500, 2, 0, drift="covariate"))
    out = json.loads(json.dumps(report.to_dict(), allow_nan=False))
    assert list(out)[:8] == ["dataset_drift", "drift_share", "reference_rows", "current_rows", "columns",
                             "prediction_drift", "performance", "recommendation"]
    assert out["reference_rows"] == 600 and out["current_rows"] == 500 and out["drift_share"] == 0.5
    col = out["columns"]["tenure"]
    assert {"kind", "method", "statistic", "threshold", "drift", "psi", "new_categories"} <= set(col)
    assert out["prediction_drift"] is None and set(out["recommendation"]) >= {"retrain", "reasons"}


def test_served_scores_alone_give_performance_without_a_model():
    ref, cur = synth_month(800, 1, 0), synth_month(600, 2, 0)
    y = (cur["churn"] == "Yes").to_numpy()
    cur["churn_probability"] = np.where(y, 0.7, 0.3) + np.random.default_rng(0).normal(0, 0.1, len(cur))
    report = M.build_monitor_report(ref, cur, baseline={"roc_auc": 0.95})
    assert report.prediction_drift is None and "churn_probability" not in report.columns
    perf = report.performance
    assert perf["metrics"]["roc_auc"] > 0.9 and perf["auc_drop"] == pytest.approx(0.95 - perf["metrics"]["roc_auc"])


def test_labelled_rows_without_a_served_score_are_left_out_of_performance():
    ref, cur = synth_month(800, 1, 0), synth_month(600, 2, 0)
    y = (cur["churn"] == "Yes").to_numpy()
    cur["churn_probability"] = np.where(y, 0.8, 0.2)
    cur.loc[:49, "churn_probability"] = np.nan  # capture lines that carried no score
    perf = M.build_monitor_report(ref, cur).performance
    assert perf["labelled_rows"] == 550 and perf["unscored_labelled_rows"] == 50
    assert perf["metrics"]["roc_auc"] == pytest.approx(1.0) and perf["metrics"]["rows"] == 550
    cur["churn_probability"] = np.nan
    perf = M.build_monitor_report(ref, cur).performance
    assert perf["metrics"] is None and "600 labelled row(s) had no score" in perf["reason"]


def test_no_common_columns_is_a_clear_error():
    with pytest.raises(MonitorError, match="no feature column in common"):
        M.build_monitor_report(synth_month(100, 1, 0), pd.DataFrame({"x": [1, 2], "y": ["a", "b"]}))

# --------------------------------------------------------------------------------------------------
# With the registered champion (tests/monitor/conftest.py): prediction drift, performance vs the holdout
# --------------------------------------------------------------------------------------------------

def test_prediction_drift_and_performance_on_covariate_month(champion):
    _, model, baseline, _ = champion
    months = {"month 2": synth_month(1500, 2, 1)}
    report = M.build_monitor_report(synth_month(3000, 1, 0), synth_month(3000, 3, 0, drift="covariate"),
                                    model=model, baseline=baseline, months=months)
    pred = report.prediction_drift
    assert pred["source"] == "model" and pred["drift"] and pred["current_mean"] > pred["reference_mean"] + 0.1
    perf = report.performance
    assert perf["labelled_rows"] == 3000 and perf["metrics"]["roc_auc"] > 0.8
    assert set(perf["metrics"]) >= {"roc_auc", "pr_auc", "lift_top_decile", "calibration_error", "brier"}
    assert [m["month"] for m in perf["months"]] == ["month 2", "current"]
    assert perf["auc_drop"] == pytest.approx(baseline["roc_auc"] - perf["metrics"]["roc_auc"])
    assert any(r.startswith("prediction drift") for r in report.recommendation["reasons"])


def test_concept_drift_is_caught_by_labels_only(champion):
    _, model, baseline, _ = champion
    report = M.build_monitor_report(synth_month(3000, 1, 0), synth_month(3000, 2, 0, drift="concept"),
                                    model=model, baseline=baseline)
    assert not report.dataset_drift and not report.prediction_drift["drift"]
    assert report.performance["degraded"] and report.performance["auc_drop"] > 0.03
    assert report.recommendation["retrain"] and any("ROC AUC" in r for r in report.recommendation["reasons"])
