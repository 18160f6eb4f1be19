"""Monitoring: drift statistics vs scipy, drift verdicts on synthetic months, performance, CLI, latency."""

from __future__ import annotations

import itertools
import json
import os
import time

import httpx
import mlflow
import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner
from scipy import stats
from scipy.spatial import distance

from churnkit import _drift as D
from churnkit import monitor as M
from churnkit.cli import main
from churnkit.data import synth_month, write_table
from churnkit.exceptions import MonitorError

# --------------------------------------------------------------------------------------------------
# Statistics against scipy and a plain reference computation
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("n,m,decimals", [(7, 11, 1), (500, 800, 2), (3000, 2999, 8), (2000, 2000, 1), (1, 1, 3)])
def test_wasserstein_matches_scipy(n, m, decimals):
    rng = np.random.default_rng(n)
    u = np.round(rng.normal(0, 1, n), decimals)  # rounding makes ties inside and across samples
    v = np.round(rng.normal(0.3, 1.4, m), decimals)
    ours = D.wasserstein_sorted(np.sort(u), np.sort(v))
    assert ours == pytest.approx(stats.wasserstein_distance(u, v), abs=1e-9, rel=1e-9)


def test_ks_small_sample_matches_scipy():
    rng = np.random.default_rng(1)
    ref, cur = rng.normal(0, 1, 400), rng.normal(0.25, 1, 300)
    res, _ = D.compare_numeric(ref, cur)
    want = stats.ks_2samp(ref, cur)
    assert res["method"] == "ks" and res["rule"] == "p_value < threshold"
    assert res["statistic"] == pytest.approx(want.statistic, abs=1e-9)
    assert res["p_value"] == pytest.approx(want.pvalue, abs=1e-9)
    assert res["drift"] is bool(want.pvalue < 0.05) is True


def test_large_sample_uses_normalized_wasserstein():
    rng = np.random.default_rng(2)
    ref, cur = rng.normal(50, 10, 5000), rng.normal(52, 10, 4000)  # +0.2 std
    res, _ = D.compare_numeric(ref, cur)
    want = stats.wasserstein_distance(ref, cur) / np.std(ref)
    assert res["method"] == "wasserstein_norm" and res["drift"]
    # float32 sorting on large samples moves the statistic by ~1e-7 relative, far below the 0.1 threshold
    assert res["statistic"] == pytest.approx(want, rel=1e-6)
    assert res["psi"] < 0.1 and res["psi_level"] == "ok"  # PSI alone would miss this shift


def test_chi2_and_jensen_shannon_match_scipy():
    rc, cc = [40, 25, 0, 9, 3], [31, 30, 4, 0, 3]
    stat, p, dof = D.chi2_homogeneity(rc, cc)
    kept = np.array([rc, cc])[:, [0, 1, 2, 3, 4]]
    want = stats.chi2_contingency(kept, correction=False)
    assert (stat, p, dof) == (pytest.approx(want.statistic, abs=1e-9), pytest.approx(want.pvalue, abs=1e-9), want.dof)
    assert D.jensen_shannon(rc, cc) == pytest.approx(distance.jensenshannon(rc, cc), abs=1e-9)
    assert D.chi2_homogeneity([5, 0], [7, 0]) == (0.0, 1.0, 0)


def test_categorical_small_sample_is_chi2_over_value_counts():
    rng = np.random.default_rng(3)
    ref = pd.Series(rng.choice(["a", "b", "c"], 600, p=[0.5, 0.3, 0.2]))
    cur = pd.Series(rng.choice(["a", "b", "c"], 500, p=[0.4, 0.3, 0.3]))
    res, _ = D.compare_categorical(ref, cur)
    table = pd.crosstab(np.r_[np.zeros(600), np.ones(500)], np.r_[ref, cur])
    want = stats.chi2_contingency(table.to_numpy(), correction=False)
    assert res["method"] == "chi2" and res["statistic"] == pytest.approx(want.statistic, abs=1e-9)
    assert res["p_value"] == pytest.approx(want.pvalue, abs=1e-9)


def _psi_reference(ref, cur, bins=10, floor=1e-4):
    """PSI written out plainly: quantile edges, a loop over bins, a missing bin, floored shares."""
    r_ok, c_ok = ref[~np.isnan(ref)], cur[~np.isnan(cur)]
    edges = sorted(set(np.quantile(r_ok, [i / bins for i in range(1, bins)])))
    bounds = [-np.inf] + edges + [np.inf]
    total = 0.0
    for lo, hi in itertools.pairwise(bounds):
        r = max(((r_ok > lo) & (r_ok <= hi)).sum() / len(ref), floor)
        c = max(((c_ok > lo) & (c_ok <= hi)).sum() / len(cur), floor)
        total += (c - r) * np.log(c / r)
    r, c = max(np.isnan(ref).mean(), floor), max(np.isnan(cur).mean(), floor)
    return total + (c - r) * np.log(c / r)


@pytest.mark.parametrize("n", [300, 4000])
def test_numeric_psi_matches_plain_computation(n):
    rng = np.random.default_rng(n)
    ref = np.floor(rng.exponential(20, n))  # many ties: duplicate quantile edges collapse
    cur = np.floor(rng.exponential(14, n + 37))
    ref[rng.random(n) < 0.05] = np.nan
    cur[:3] = np.nan
    res, _ = D.compare_numeric(ref, cur)
    assert res["psi"] == pytest.approx(_psi_reference(ref, cur), abs=1e-12)
    assert res["missing"]["reference"] == pytest.approx(np.isnan(ref).mean())


def test_categorical_psi_counts_new_and_vanished_categories():
    ref = pd.Series(["a"] * 50 + ["b"] * 30 + ["gone"] * 20 + [None] * 0)
    cur = pd.Series(["a"] * 40 + [" b "] * 30 + ["new"] * 25 + [""] * 5)  # " b " is "b"; "" is missing
    res, hist = D.compare_categorical(ref, cur)
    shares = {"a": (0.5, 0.4), "b": (0.3, 0.3), "gone": (0.2, 0.0), "new": (0.0, 0.25), "(missing)": (0.0, 0.05)}
    want = sum((max(c, 1e-4) - max(r, 1e-4)) * np.log(max(c, 1e-4) / max(r, 1e-4)) for r, c in shares.values())
    assert res["psi"] == pytest.approx(want, abs=1e-12)
    assert res["new_categories"] == ["new"] and res["vanished_categories"] == ["gone"]
    assert res["missing"] == {"reference": 0.0, "current": 0.05}
    assert set(hist["categories"]) == set(shares)


def test_low_cardinality_numeric_is_compared_as_categories():
    ref = np.array([0.0, 1.0] * 300)
    cur = np.array([0.0, 1.0, 2.0] * 200)
    res, _ = D.compare_numeric(ref, cur)
    assert res["kind"] == "numeric" and res["method"] == "chi2" and res["drift"]
    assert res["new_categories"] == ["2"]


def test_quantile_edges_equal_numpy():
    x = np.sort(np.random.default_rng(5).gamma(2.0, 3.0, 1001))
    assert np.array_equal(D.quantile_edges(x, 10), np.unique(np.quantile(x, np.linspace(0, 1, 11)[1:-1])))


# --------------------------------------------------------------------------------------------------
# Verdicts on synthetic months
# --------------------------------------------------------------------------------------------------


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


def test_messy_csv_is_typed_like_training_data(tmp_path):
    ref, cur = synth_month(1500, 1, 0), synth_month(1500, 2, 0)
    cur.loc[:40, "total_charges"] = "  "  # blanks in a numeric-as-text column
    write_table(ref, tmp_path / "ref.csv")
    write_table(cur, tmp_path / "cur.csv")
    inputs = M.load_monitor_inputs(str(tmp_path / "ref.csv"), str(tmp_path / "cur.csv"))
    report = M.build_monitor_report(inputs.reference, inputs.current)
    total = report.columns["total_charges"]
    assert total["kind"] == "numeric" and total["missing"]["current"] > total["missing"]["reference"]
    assert report.columns["senior_citizen"]["kind"] == "numeric" and "customer_id" not in report.columns


def test_history_months_with_the_same_file_name_are_kept_apart(tmp_path):
    for folder, month in (("a", 1), ("b", 2), ("c", 3)):
        write_table(synth_month(200, month, 0), tmp_path / folder / "may.csv")
    paths = [str(tmp_path / f / "may.csv") for f in "abc"]
    inputs = M.load_monitor_inputs(paths[0], ",".join(paths))
    assert list(inputs.months) == paths[:2]  # both earlier months, keyed by path since their names collide
    single = M.load_monitor_inputs(paths[0], ",".join(paths[1:]))
    assert list(single.months) == ["may"]


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
# With a registered model: prediction drift, performance vs the holdout, the CLI
# --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def champion(tmp_path_factory):
    """churn v1 registered as champion (holdout metrics as version tags) in a private runs folder."""
    from churnkit import registry
    from churnkit.config import load_config
    from churnkit.data import load_table
    from churnkit.evaluate import evaluate_holdout, gate
    from churnkit.model import split_holdout, train_model

    saved = {k: os.environ.pop(k, None) for k in ("MLFLOW_TRACKING_URI", "MLFLOW_RUN_ID", "CHURNKIT_RUNS_DIR")}
    config = load_config(tmp_path_factory.mktemp("monitor") / "runs")
    os.environ["CHURNKIT_RUNS_DIR"] = str(config.runs_dir)
    registry.setup_tracking(config)
    ds = load_table("", rows=1500, seed=0)
    split = split_holdout(ds, 0.25, 0)
    with mlflow.start_run():
        run_id = registry.log_candidate(train_model(split, ds.schema), ds, split, model="logreg", seed=0)
    cand = registry.load_candidate(run_id)
    ev = evaluate_holdout(cand.pipeline, cand.X_holdout, cand.y_holdout)
    registry.register_candidate(cand, gate(ev.challenger["roc_auc"]), metrics=ev.challenger, threshold=ev.threshold)
    model, baseline = M.load_monitored_model("churn", "champion", config=config)
    yield config, model, baseline, ev.challenger
    os.environ.pop("CHURNKIT_RUNS_DIR", None)
    for k, v in saved.items():
        if v is not None:
            os.environ[k] = v


def test_baseline_comes_from_the_registry(champion):
    config, model, baseline, holdout = champion
    assert model.version == "1" and baseline["roc_auc"] == pytest.approx(holdout["roc_auc"])
    assert model.uri == "models:/churn@champion"  # loaded pinned to v1, reported under the alias asked for
    assert M.load_monitored_model("churn", "no-such-alias", config=config) == (None, None)


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


@pytest.fixture(scope="module")
def served(champion, tmp_path_factory):
    """``churnkit serve`` of the champion on 127.0.0.1 with data capture on (stopped after the module)."""
    from serve_support import CHURNKIT, Server, clean_env

    config = champion[0]
    base = tmp_path_factory.mktemp("served")
    server = Server([CHURNKIT, "serve", "--model", "models:/churn@champion", "--runs-dir", str(config.runs_dir),
                     "--port", "0", "--capture-dir", str(base / "capture")], clean_env(), base / "serve.log")
    yield server, base / "capture"
    server.close()


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
    server, capture = served
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
    html = (tmp_path / "out" / "drift.html").read_text()
    assert html.count("data:image/png;base64,") >= 4 and "Recommendation" in html and "<script" not in html


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


# --------------------------------------------------------------------------------------------------
# Latency breakdown
# --------------------------------------------------------------------------------------------------

BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)


def _histogram_text(name, samples):
    lines = [f"# TYPE {name} histogram"]
    for le in BUCKETS:
        lines.append(f'{name}_bucket{{route="/invocations",le="{le}"}} {sum(s <= le for s in samples)}')
    lines += [f'{name}_bucket{{route="/invocations",le="+Inf"}} {len(samples)}',
              f'{name}_sum{{route="/invocations"}} {sum(samples)}', f'{name}_count{{route="/invocations"}} {len(samples)}']
    return lines


def metrics_text(model_s, overhead_s, rows_per_request=1, errors=0):
    n = len(model_s)
    lines = [
        "# HELP churnkit_requests_total Requests by route and status",
        f'churnkit_requests_total{{route="/invocations",status="200"}} {n}',
        f'churnkit_requests_total{{route="/invocations",status="500"}} {errors}',
        f"churnkit_prediction_rows_total {n * rows_per_request}",
        'churnkit_model_info{name="churn",version="3",sha256="ab"} 1',
        "churnkit_start_time_seconds 1000.0",
    ]
    lines += _histogram_text("churnkit_model_latency_seconds", model_s)
    lines += _histogram_text("churnkit_overhead_latency_seconds", overhead_s)
    return "\n".join(lines) + "\n"


def test_latency_breakdown_model_bound():
    text = metrics_text([0.02] * 50, [0.002] * 50)
    probe = [{"total_ms": 23.0, "model_ms": 20.0}] * 10
    out = M.latency_breakdown(text, probe, now=1060.0)
    assert out["requests"] == 50 and out["model_ms"]["mean"] == pytest.approx(20.0)
    assert 10.0 < out["model_ms"]["p50"] <= 25.0  # interpolated inside the (10 ms, 25 ms] bucket
    assert out["breakdown_ms"] == {"model": 20.0, "overhead": pytest.approx(2.0), "network_client": pytest.approx(1.0)}
    assert out["likely_cause"] == "model" and out["uptime_seconds"] == 60.0


def test_latency_breakdown_names_payload_cold_start_saturation_and_network():
    payload = M.latency_breakdown(metrics_text([0.003] * 20, [0.08] * 20, rows_per_request=2000),
                                  [{"total_ms": 85.0, "model_ms": 3.0, "bytes": 900_000}] * 5)
    assert payload["likely_cause"] == "payload size" and payload["rows_per_request"] == 2000
    cold = [{"total_ms": 900.0, "model_ms": 850.0}] + [{"total_ms": 6.0, "model_ms": 3.0}] * 9
    assert M.latency_breakdown(metrics_text([0.003] * 10, [0.002] * 10), cold)["likely_cause"] == "cold start"
    queued = [0.001] * 90 + [0.4] * 10
    sat = M.latency_breakdown(metrics_text([0.003] * 100, queued), [{"total_ms": 10.0, "model_ms": 3.0}] * 5)
    assert sat["likely_cause"] == "saturation"
    far = M.latency_breakdown(metrics_text([0.002] * 10, [0.001] * 10), [{"total_ms": 40.0, "model_ms": 2.0}] * 5)
    assert far["likely_cause"] == "network and client" and far["shares"]["network_client"] > 0.9


def test_latency_breakdown_without_measured_time_says_unknown():
    idle = M.latency_breakdown(metrics_text([0.0] * 5, [0.0] * 5), [])
    assert idle["shares"] == {"model": None, "overhead": None} and idle["likely_cause"] == "unknown"
    assert M.latency_breakdown("", [])["likely_cause"] == "unknown"


def test_latency_window_is_the_difference_of_two_scrapes():
    before = metrics_text([0.2] * 100, [0.2] * 100)
    after = metrics_text([0.2] * 100 + [0.01] * 10, [0.2] * 100 + [0.001] * 10)
    out = M.latency_breakdown(after, [], baseline_text=before)
    assert out["requests"] == 10 and out["model_ms"]["mean"] == pytest.approx(10.0)
    assert out["overhead_ms"]["mean"] == pytest.approx(1.0) and out["likely_cause"] == "model"


def test_measure_latency_probes_a_live_server(champion, served):
    model = champion[1]
    server, _ = served
    rows = M.probe_rows(synth_month(20, 2, 0), model.schema, 5)
    assert len(rows) == 5 and set(rows[0]) == set(model.schema.names)
    out = M.measure_latency(server.url + "/metrics", rows, requests=8)
    assert out["probe_requests"] == 8 and out["requests"] == 8 and out["error_rate"] == 0.0  # the probe window only
    assert out["rows_per_request"] == 5 and out["header_model_ms"] > 0 and out["overhead_ms"]["mean"] >= 0
    assert set(out["shares"]) == {"model", "overhead", "network_client"}
    assert sum(out["shares"].values()) == pytest.approx(1.0) and out["likely_cause"]
    lifetime = M.measure_latency(server.url, None)  # no probe: the server's whole lifetime
    assert lifetime["probe_requests"] == 0 and lifetime["requests"] >= 8 and lifetime["uptime_seconds"] > 0
    with pytest.raises(MonitorError, match="cannot reach the server"):
        M.measure_latency("http://127.0.0.1:9", rows, requests=1, timeout=2)
