"""The traffic replayer against a real HTTP server on 127.0.0.1 that answers 200, 500, slowly, or not at all."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pandas as pd
import pytest

from churnkit.exceptions import ParameterError
from churnkit.replay import Replayer, replay, request_bodies
from conftest import free_port

ROWS = pd.DataFrame({"tenure": [1.0, np.nan, 3.0, 4.0, 5.0], "contract": ["Month-to-month", "One year", None, "Two year", "x"]})


class _Handler(BaseHTTPRequestHandler):
    """/invocations answers 200 with the model version; /flaky 500 every third call; /slow sleeps 2 s."""

    calls: list[dict] = []

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["content-length"])))
        _Handler.calls.append(body)
        n = len(_Handler.calls)
        if self.path == "/slow":
            time.sleep(2.0)
        status = 500 if self.path == "/flaky" and n % 3 == 0 else 200
        payload = json.dumps({"predictions": [{"churn_probability": 0.5}] * len(body["instances"])}).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("x-model-version", "7")
        self.send_header("content-length", str(len(payload)))
        self.end_headers()
        try:
            self.wfile.write(payload)
        except BrokenPipeError:  # the client timed out (the timeout test)
            pass

    def log_message(self, *args):
        pass


@pytest.fixture
def server():
    _Handler.calls = []
    httpd = ThreadingHTTPServer(("127.0.0.1", free_port()), _Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()
    thread.join(5)


def test_bodies_batch_rows_and_send_nan_as_null():
    bodies = [json.loads(b) for b in request_bodies(ROWS, batch_size=2)]
    assert [len(b["instances"]) for b in bodies] == [2, 2, 1]
    assert bodies[0]["instances"][1] == {"tenure": None, "contract": "One year"}
    assert bodies[1]["instances"][0]["contract"] is None


def test_count_bounded_replay_sends_every_request_and_cycles_rows(server):
    res = replay(server, ROWS, rate=200, count=12, batch_size=2, workers=3, progress=False)
    assert (res.requests, res.succeeded, res.failed) == (12, 12, 0)
    assert res.rows == 2 + 2 + 1 + 2 + 2 + 1 + 2 + 2 + 1 + 2 + 2 + 1
    assert res.versions == {"7": 12} and res.statuses == {"200": 12} and len(res.latencies_ms) == 12
    assert len(_Handler.calls) == 12
    assert "12 requests (20 rows)" in res.summary() and "0 failed" in res.summary()


def test_rate_spaces_requests_out(server):
    res = replay(server, ROWS, rate=20, count=6, workers=4, progress=False)
    assert res.requests == 6 and res.seconds >= 5 / 20  # request 5 is scheduled at 0.25 s


def test_duration_bounded_replay_stops(server):
    res = replay(server, ROWS, rate=40, duration=0.5, progress=False)
    assert 1 <= res.requests <= 20 and res.failed == 0


def test_failures_are_counted_and_kept(server):
    res = replay(server, ROWS, rate=500, count=9, route="/flaky", workers=1, progress=False)
    assert (res.succeeded, res.failed) == (6, 3) and res.statuses == {"200": 6, "500": 3}
    assert res.errors[0].startswith("request ") and "HTTP 500" in res.errors[0]


def test_timeouts_and_refused_connections_are_failures(server):
    slow = replay(server, ROWS, rate=100, count=2, route="/slow", timeout=0.2, progress=False)
    assert slow.failed == 2 and slow.statuses == {"timeout": 2} and "timeout after 0.2 s" in slow.errors[0]
    dead = replay(f"http://127.0.0.1:{free_port()}", ROWS, rate=100, count=3, progress=False)
    assert dead.failed == 3 and dead.statuses == {"connection_error": 3} and "ConnectError" in dead.errors[0]


def test_background_replayer_runs_until_stopped(server):
    before = len(_Handler.calls)
    rep = Replayer(server, ROWS, rate=100, progress=False).start()
    deadline = time.monotonic() + 60
    while len(_Handler.calls) - before < 5 and time.monotonic() < deadline:  # it keeps sending on its own
        time.sleep(0.05)
    res = rep.stop()
    assert res.requests >= 5 and res.failed == 0 and res.requests == len(_Handler.calls) - before
    n = len(_Handler.calls)
    time.sleep(0.1)
    assert len(_Handler.calls) == n  # nothing is sent after stop()


def test_progress_bar_counts_requests(server, capsys):
    replay(server, ROWS, rate=500, count=5, progress=True)
    assert "5/5" in capsys.readouterr().err


def test_bad_arguments():
    with pytest.raises(ParameterError, match="needs count or duration"):
        replay("http://127.0.0.1:1", ROWS, rate=1)
    with pytest.raises(ParameterError, match="positive number of requests per second"):
        Replayer("http://127.0.0.1:1", ROWS, rate=0)
    with pytest.raises(ParameterError, match="no rows to replay"):
        request_bodies(ROWS.iloc[:0])
