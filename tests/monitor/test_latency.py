"""The latency breakdown (churnkit.monitor.latency) over constructed /metrics text and probe timings."""

from __future__ import annotations

import pytest

from churnkit import monitor as M

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
    # every sample in the (10 ms, 25 ms] bucket: rank q * 50 interpolated linearly inside it
    assert out["model_ms"]["p50"] == pytest.approx(10.0 + 15.0 * 0.5)
    assert out["model_ms"]["p99"] == pytest.approx(10.0 + 15.0 * 0.99)
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
    assert far["likely_cause"] == "network and client"
    assert far["breakdown_ms"] == {"model": 2.0, "overhead": pytest.approx(1.0), "network_client": pytest.approx(37.0)}
    assert far["shares"]["network_client"] == pytest.approx(37.0 / 40.0)


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
