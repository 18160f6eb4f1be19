"""The serve process under slow, large and broken conditions, with real sockets on 127.0.0.1.

A server whose model cannot score reports not-ready (503 with the reason) on every health route
instead of 200-then-500; slowloris connections (headers or a body at a byte at a time) are closed by
the header and body deadlines; a CSV body with too many rows is refused before it is parsed; a large
body is parsed off the event loop, so ``/ping`` answers while it is scored.
"""

from __future__ import annotations

import dataclasses
import json
import socket
import threading
import time

import httpx
import numpy as np
import pytest
from conftest import free_port
from serve_support import CHURNKIT, Server, clean_env, json_rows, models, served_store

MAX_ROWS = 100


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    base = tmp_path_factory.mktemp("limits")
    runs, loaded = served_store(base)
    return base, runs, loaded


@pytest.fixture(scope="module")
def server(store):
    base, runs, _ = store
    srv = Server([CHURNKIT, "serve", "--model", "models:/churn@champion", "--runs-dir", str(runs), "--port", "0",
                  "--max-rows", str(MAX_ROWS), "--header-timeout", "1", "--body-timeout", "2"],
                 clean_env(), base / "serve.log")
    yield srv
    srv.close()


class InThread:
    """``create_app(loaded)`` served by uvicorn (the serve command's protocol) in a thread on a free port."""

    def __init__(self, app):
        import uvicorn

        from churnkit.serve.limits import protocol_class

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, http=protocol_class(5.0),
                                                    log_level="warning", lifespan="on"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self):
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started and time.monotonic() < deadline:
            time.sleep(0.05)
        assert self.server.started
        return self

    def __exit__(self, *exc):
        self.server.should_exit = True
        self.thread.join(15)


def _unscorable(loaded):
    """``loaded`` with a classifier fitted on one feature more than the pipeline produces: it cannot score."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline

    (prep_name, prep), (clf_name, clf) = loaded.pipeline.steps
    width = clf.coef_.shape[1] + 1
    rng = np.random.default_rng(0)
    wrong = LogisticRegression().fit(rng.normal(size=(20, width)), np.arange(20) % 2)
    return dataclasses.replace(loaded, pipeline=Pipeline([(prep_name, prep), (clf_name, wrong)]))


def test_a_model_that_cannot_score_reports_not_ready_with_the_reason(store):
    from churnkit.serve.app import create_app

    _, _, loaded = store
    app = create_app(_unscorable(loaded), vertex_health_route="/vertex/health", vertex_predict_route="/vertex/predict")
    row = json_rows(models().raw.iloc[:1])
    with InThread(app) as srv, httpx.Client(base_url=srv.url, timeout=10) as c:
        for route in ("/ping", "/", "/health", "/vertex/health"):
            r = c.get(route)
            assert r.status_code == 503, (route, r.text)
            assert r.json()["status"] == "not ready" and "features" in r.json()["error"], r.text
        for route in ("/invocations", "/score", "/vertex/predict"):
            r = c.post(route, json={"instances": row})
            assert r.status_code == 503 and "cannot score" in r.json()["error"], (route, r.text)
    good = create_app(loaded)
    with InThread(good) as srv, httpx.Client(base_url=srv.url, timeout=10) as c:
        assert c.get("/ping").status_code == 200 and c.get("/health").json()["status"] == "ok"
        assert c.post("/invocations", json={"instances": row}).status_code == 200


def _closed(sock: socket.socket) -> bool:
    """True when the server closed ``sock`` (reads EOF or a reset); False while it is open."""
    try:
        return sock.recv(4096) == b"" or _drain_then_eof(sock)
    except (BlockingIOError, TimeoutError):
        return False
    except (ConnectionResetError, BrokenPipeError):
        return True


def _drain_then_eof(sock: socket.socket) -> bool:
    while True:
        if sock.recv(4096) == b"":
            return True


def test_slowloris_headers_are_closed_by_the_header_deadline(server):
    socks = []
    for _ in range(20):
        s = socket.create_connection(("127.0.0.1", server.port))
        s.sendall(b"POST /invocations HTTP/1.1\r\nHost: x\r\n")
        s.settimeout(0.01)
        socks.append(s)
    try:
        open_ = list(socks)
        deadline = time.monotonic() + 20  # the header deadline is 1 s; nothing stays open for 20
        while open_ and time.monotonic() < deadline:
            for s in list(open_):
                try:
                    s.send(b"X")  # a byte at a time, as slowloris does
                except OSError:
                    open_.remove(s)
                    continue
                if _closed(s):
                    open_.remove(s)
            time.sleep(0.25)
        assert open_ == [], f"{len(open_)} of 20 slow-header connections still open"
        assert httpx.get(server.url + "/ping").status_code == 200  # the server still serves
    finally:
        for s in socks:
            s.close()


def test_a_slow_body_gets_408_and_the_connection_closed(server):
    s = socket.create_connection(("127.0.0.1", server.port))
    try:
        s.sendall(b"POST /invocations HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n")
        s.settimeout(0.01)
        got, deadline = b"", time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                s.send(b" ")
                chunk = s.recv(4096)
                if chunk == b"":
                    break
                got += chunk
            except (BlockingIOError, TimeoutError):
                pass
            except (ConnectionResetError, BrokenPipeError):
                break
            time.sleep(0.25)
        assert got.startswith(b"HTTP/1.1 408"), got[:200]
        assert b"did not arrive within 2 s" in got and b"connection: close" in got.lower()
    finally:
        s.close()


def test_csv_with_too_many_rows_is_refused_before_it_is_parsed(server):
    names = models().schema.names
    body = (",".join(names) + "\n" + "\n".join(["x,"] * (MAX_ROWS + 4))).encode() + b"\n\xff\xfe,"  # not UTF-8 at the end
    r = httpx.post(server.url + "/invocations", content=body, headers={"content-type": "text/csv"})
    assert r.status_code == 413, r.text  # counted before parsing: the body is never decoded (that would be a 400)
    assert r.json()["details"] == [f"rows: {MAX_ROWS + 5} > max_rows {MAX_ROWS}"]


def test_a_large_body_is_scored_off_the_event_loop(store, tmp_path):
    base, runs, _ = store
    srv = Server([CHURNKIT, "serve", "--model", "models:/churn@champion", "--runs-dir", str(runs), "--port", "0",
                  "--max-rows", "200000", "--max-body-bytes", str(200 * 1024 * 1024)], clean_env(), tmp_path / "big.log")
    try:
        rows = json_rows(models().raw)
        body = json.dumps({"instances": rows * 300}).encode()  # 90,000 rows: seconds of parsing and validation
        done: dict[str, float] = {}

        def big():
            r = httpx.post(srv.url + "/invocations", content=body, headers={"content-type": "application/json"},
                           timeout=120)
            done["big"] = time.monotonic()
            done["status"] = r.status_code

        t = threading.Thread(target=big)
        t.start()
        time.sleep(0.2)  # the body is on its way; the server is parsing it
        pings, answered = [], []
        while t.is_alive() and len(pings) < 20:
            pings.append(httpx.get(srv.url + "/ping", timeout=120).status_code)
            answered.append(time.monotonic())
        t.join(120)
        assert done["status"] == 200 and pings and set(pings) == {200}
        # at least one /ping was answered while the large body was still being handled
        assert min(answered) < done["big"], "every /ping waited for the large body (event loop blocked)"
    finally:
        srv.close()


TWELVE_MB = b'{"instances": [' + b" " * (12 * 1024 * 1024) + b"]}"


def test_a_body_above_the_limit_gets_a_413_that_http_client_and_httpx_can_read(server):
    """The 413 is answered from the Content-Length before the body is read; the lingering close lets a client
    that is still sending finish and read it (a plain close resets the connection under it)."""
    import http.client

    for _ in range(3):  # each on a fresh connection: the answer closes it
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
        try:
            conn.request("POST", "/invocations", body=TWELVE_MB, headers={"content-type": "application/json"})
            response = conn.getresponse()
            assert response.status == 413
            assert response.getheader("connection") == "close"
            body = json.loads(response.read())
            assert "max_body_bytes" in body["details"][0] and "fewer rows" in body["error"], body
        finally:
            conn.close()
    r = httpx.post(server.url + "/invocations", content=TWELVE_MB, headers={"content-type": "application/json"},
                   timeout=30)
    assert r.status_code == 413 and "max_body_bytes" in r.json()["details"][0], r.text
    assert httpx.get(server.url + "/ping").status_code == 200


def test_the_lingering_close_is_bounded_in_bytes_and_in_idle_time(store):
    """A client that never stops sending is cut off after the byte cap; one that stops without closing is closed
    after the idle cap; both read the 413 first."""
    import uvicorn

    from churnkit.serve.app import create_app
    from churnkit.serve.limits import protocol_class

    _, _, loaded = store
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(loaded, max_body_bytes=1024), host="127.0.0.1", port=port,
                                           http=protocol_class(5.0, linger_bytes=256 * 1024, linger_seconds=30,
                                                               linger_idle=0.5),
                                           log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    head = (b"POST /invocations HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: 1000000000\r\n\r\n")
    try:
        endless = socket.create_connection(("127.0.0.1", port))
        endless.sendall(head)
        sent, cut = 0, False
        while sent < 64 * 1024 * 1024:  # far beyond the 256 KiB the server discards
            try:
                endless.sendall(b" " * 65536)
            except (ConnectionResetError, BrokenPipeError):
                cut = True
                break
            sent += 65536
        assert cut, f"the server read {sent} bytes of a refused body and still reads"

        idle = socket.create_connection(("127.0.0.1", port))
        idle.sendall(head + b" " * 4096)
        idle.settimeout(10)
        answer = b""
        while not answer.endswith(b"}"):
            answer += idle.recv(65536)
        assert answer.startswith(b"HTTP/1.1 413") and b"max_body_bytes 1024" in answer, answer[:300]
        assert idle.recv(65536) == b""  # the write side is shut at once: the client sees the end of the answer
        deadline = time.monotonic() + 20  # the idle cap is 0.5 s; nothing stays open for 20
        while server.server_state.connections and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not server.server_state.connections, "a lingering connection outlived its idle cap"
        endless.close()
        idle.close()
    finally:
        server.should_exit = True
        thread.join(15)
