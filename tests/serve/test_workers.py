"""``churnkit serve --workers 2``: requests reach both processes and /metrics counts them all."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from serve_support import CHURNKIT, Server, clean_env, json_rows, models, served_store

from churnkit.exceptions import ConfigError
from churnkit.serve.workers import cpu_count, resolve_workers


def _metric(text: str, name: str, **labels) -> float:
    from churnkit.serve.metrics import parse_prometheus

    return sum(v for lab, v in parse_prometheus(text).get(name, []) if all(lab.get(k) == x for k, x in labels.items()))


@pytest.fixture(scope="module")
def two_workers(tmp_path_factory):
    from churnkit.serve.loading import export_model

    base = tmp_path_factory.mktemp("workers")
    _, loaded = served_store(base)
    folder = export_model(loaded, base / "model")
    server = Server([CHURNKIT, "serve", "--model", str(folder), "--port", "0", "--workers", "2"], clean_env(),
                    base / "serve.log")
    yield server
    server.close()


def test_requests_reach_both_workers_and_metrics_total_every_request(two_workers):
    url = two_workers.url
    assert "(2 workers)" in two_workers.output()
    body = {"instances": json_rows(models().raw.drop(columns=["customer_id", "churn"]).head(2))}

    def health(_):
        return httpx.get(url + "/health", headers={"connection": "close"}, timeout=10).json()["pid"]

    def predict(_):
        return httpx.post(url + "/invocations", json=body, headers={"connection": "close"}, timeout=10).status_code

    pids: set[int] = set()
    sent_health = 0
    with ThreadPoolExecutor(8) as pool:
        while len(pids) < 2 and sent_health < 400:  # new connections: the kernel hands them to either process
            pids.update(pool.map(health, range(40)))
            sent_health += 40
        statuses = list(pool.map(predict, range(60)))
    assert len(pids) == 2, f"one worker answered all {sent_health} requests"
    assert statuses == [200] * 60

    deadline = time.monotonic() + 10
    while True:  # each worker writes its counters within 50 ms of its last request
        text = httpx.get(url + "/metrics", timeout=10).text
        done = _metric(text, "churnkit_requests_total", route="/invocations") == 60
        if done or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert _metric(text, "churnkit_requests_total", route="/invocations", status="200") == 60
    assert _metric(text, "churnkit_requests_total", route="/health", status="200") == sent_health
    assert _metric(text, "churnkit_prediction_rows_total") == 120
    assert _metric(text, "churnkit_model_latency_seconds_count") == 60
    assert _metric(text, "churnkit_workers") == 2


def test_worker_counts():
    assert resolve_workers("3") == 3
    assert resolve_workers("auto") == cpu_count() >= 1
    assert resolve_workers(None, default="auto") == cpu_count()
    for bad in ("0", "-1", "many"):
        with pytest.raises(ConfigError, match="not a positive whole number or 'auto'"):
            resolve_workers(bad)
