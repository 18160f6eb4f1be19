"""``churnkit loadtest`` against a real ``churnkit serve``: client view, server split, and the ramp's sizing."""

from __future__ import annotations

import json
import subprocess

import pytest
from serve_support import CHURNKIT, Server, clean_env, served_store

from churnkit.exceptions import ParameterError


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    from churnkit.serve.loading import export_model

    base = tmp_path_factory.mktemp("loadtest")
    _, loaded = served_store(base)
    srv = Server([CHURNKIT, "serve", "--model", str(export_model(loaded, base / "model")), "--port", "0",
                  "--workers", "1"], clean_env(), base / "serve.log")
    yield srv
    srv.close()


def test_constant_rate_reports_client_and_server_latency(server):
    from churnkit.loadtest import loadtest

    res = loadtest(server.url + "/invocations", rate=40, duration=1.5)
    assert res.requests == 60 and res.errors == 0 and res.statuses == {"200": 60}
    assert res.p50_ms is not None and res.p99_ms >= res.p50_ms > 0
    assert res.server["model_ms"]["count"] == 60 and res.server["overhead_ms"]["count"] == 60  # this window only
    assert res.header_model_ms is not None and res.header_model_ms > 0
    assert "achieved" in res.summary() and "model mean" in res.summary()


def test_ramp_sizes_the_target_and_stops_at_the_objective(server):
    from churnkit.loadtest import ramp

    generous = ramp(server.url, start_rate=20, step_duration=1.0, p99_objective_ms=5000, max_steps=2, headroom=0.25)
    assert [s.rate for s in generous.steps] == [20.0, 30.0] and generous.held is generous.steps[-1]
    assert generous.target_invocations_per_instance == int(generous.steps[-1].achieved_rate * 60 * 0.75)
    assert f"--target-invocations-per-instance {generous.target_invocations_per_instance}" in generous.summary()

    strict = ramp(server.url, start_rate=20, step_duration=0.5, p99_objective_ms=0.001)
    assert strict.held is None and len(strict.steps) == 1 and strict.target_invocations_per_instance is None
    assert strict.stopped_because.startswith("p99 ") and "no step held the objective" in strict.summary()
    with pytest.raises(ParameterError, match="headroom"):
        ramp(server.url, 10, 1, headroom=1.5)


def test_cli_json_and_a_dead_endpoint(server, tmp_path):
    out = subprocess.run([CHURNKIT, "loadtest", server.url, "--rate", "20", "--duration", "1", "--json"],
                         capture_output=True, text=True, env=clean_env(), timeout=120)
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    assert doc["requests"] == 20 and doc["errors"] == 0 and doc["server"]["model_ms"]["count"] == 20

    from churnkit.loadtest import loadtest

    dead = loadtest("http://127.0.0.1:9", rate=10, duration=0.5)  # nothing listens on the discard port
    assert dead.requests == 5 and dead.errors == 5 and dead.statuses == {"connection_error": 5} and dead.server == {}
