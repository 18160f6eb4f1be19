"""Reading what the monitor compares (churnkit.monitor.inputs): tables, months, the registry, a live server."""

from __future__ import annotations

import time

import pytest

from churnkit import monitor as M
from churnkit.data import synth_month, write_table
from churnkit.exceptions import MonitorError


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


def test_baseline_comes_from_the_registry(champion):
    config, model, baseline, holdout = champion
    assert model.version == "1" and baseline["roc_auc"] == pytest.approx(holdout["roc_auc"])
    assert model.uri == "models:/churn@champion"  # loaded pinned to v1, reported under the alias asked for
    assert M.load_monitored_model("churn", "no-such-alias", config=config) == (None, None)


def test_measure_latency_probes_a_live_server(champion, served):
    model = champion[1]
    server, _, started = served
    rows = M.probe_rows(synth_month(20, 2, 0), model.schema, 5)
    assert len(rows) == 5 and set(rows[0]) == set(model.schema.names)
    earlier = M.measure_latency(server.url, None)["requests"]  # whatever other tests sent before
    out = M.measure_latency(server.url + "/metrics", rows, requests=8)
    assert out["probe_requests"] == 8 and out["requests"] == 8 and out["error_rate"] == 0.0  # the probe window only
    assert out["rows_per_request"] == 5 and out["header_model_ms"] > 0
    # the parts add up: model time from the response header, overhead from the server, the rest is outside
    model_ms, over_ms = out["header_model_ms"], out["overhead_ms"]["mean"]
    assert out["breakdown_ms"] == {"model": pytest.approx(model_ms), "overhead": pytest.approx(over_ms),
                                   "network_client": pytest.approx(max(out["client_ms"]["mean"] - model_ms - over_ms, 0.0))}
    assert sum(out["shares"].values()) == pytest.approx(1.0)
    assert out["likely_cause"] in {"cold start", "saturation", "payload size", "model", "network and client",
                                   "server overhead"}  # measured: never "unknown"
    lifetime = M.measure_latency(server.url, None)  # no probe: the server's whole lifetime
    assert lifetime["probe_requests"] == 0 and lifetime["requests"] == earlier + 8
    assert 0 < lifetime["uptime_seconds"] <= time.time() - started
    with pytest.raises(MonitorError, match="cannot reach the server"):
        M.measure_latency("http://127.0.0.1:9", rows, requests=1, timeout=2)
