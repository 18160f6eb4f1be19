"""The local endpoint's router: one port in front of a ``churnkit serve`` process per variant.

Run as its own process: ``python -m churnkit.deploy.router --state DIR [--port P]`` (the port defaults
to the endpoint's port in ``DIR/state.json``, so a supervisor can restart it with the same command; with
no ``state.json``, a stopped endpoint, it exits 0 at once; SIGTERM ends it after a graceful shutdown). It
forwards every predict route to a variant chosen by weight (httpx AsyncClient, one keep-alive pool per
variant), retries a request that failed to connect, timed out or got a 5xx on another live variant (the
failure is counted for the variant that failed; the client still gets an answer), and keeps a ring
buffer of per-request records of the last ten minutes for the rollout controller. A 4xx is the
variant's answer: passed to the client as is and counted as a client error, never retried.

Each try has its own timeout: ``try_factor`` times the p99 latency the *other* variants answered with
recently (at least ``try_floor`` seconds, at most ``timeout``), so a hung variant costs a client about
``try_floor`` seconds before the request is retried elsewhere, not the whole ``timeout``.

Bodies above ``max_body_bytes`` (``churnkit serve``'s default, 6 MiB) get 413 before they are read
(Content-Length) or as soon as the streamed body passes the limit. Logs go to a rotating file
(``--log-file``); one line per request only with ``--access-log``.

Admin API (under ``/-/``) on a separate port bound to 127.0.0.1 (``--admin-port``), each request with
``Authorization: Bearer <token>`` where the token is in ``DIR/admin.token`` (mode 0600); the public
port answers 404 for ``/-/`` paths. The router writes its pid and both ports to ``DIR/router.json``.

===============================  ==================================================================
GET /-/state                     weights, variants (url, version, in-flight, health, counts)
PUT /-/weights                   ``{"weights": {variant: int}}``; waits until variants whose weight
                                 went to 0 finished their in-flight requests (drain)
PUT /-/variants/{name}           ``{"url", "model_version", "weight"}``: add or replace a variant
DELETE /-/variants/{name}        stop routing to it, wait for its in-flight requests, then drop it
GET /-/stats?since=<ts>[&until=<ts>]  ``{"now", "variants": {v: {"requests", "errors", "timeouts",
                                 "latencies_ms", "scores"}}}`` from the ring buffer (unix seconds)
===============================  ==================================================================

``GET /ping`` and ``/health`` are the router's own (200 while some variant takes traffic),
``/metrics`` its own Prometheus counters; ``GET /version`` and every other route are forwarded.
"""

from __future__ import annotations

import argparse
import asyncio
import hmac
import json
import logging
import logging.handlers
import os
import random
import secrets
import sys
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger("churnkit.router")

WINDOW_SECONDS = 600.0
MAX_RECORDS = 500_000
#: Per-try timeout: TRY_FACTOR x the other variants' recent p99, at least TRY_FLOOR seconds.
TRY_FACTOR = 10.0
TRY_FLOOR = 2.0
#: Successful latencies kept per variant for the per-try timeout, and how many peers' are needed.
RECENT = 256
MIN_RECENT = 20
LOG_MAX_BYTES = 10 * 1024 * 1024
LOG_BACKUPS = 3
TOKEN_FILE = "admin.token"
ROUTER_FILE = "router.json"
HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade", "proxy-authorization",
              "proxy-authenticate", "content-length", "host"}


@dataclass
class Variant:
    """One upstream ``churnkit serve`` process as the router sees it."""

    name: str
    url: str
    model_version: str = "?"
    weight: int = 0
    in_flight: int = 0
    healthy: bool | None = None
    removing: bool = False
    requests: int = 0
    errors: int = 0
    client: object = None
    idle: asyncio.Event = field(default_factory=asyncio.Event)
    recent: deque = field(default_factory=lambda: deque(maxlen=RECENT))

    def to_dict(self) -> dict:
        return {"url": self.url, "model_version": self.model_version, "weight": self.weight,
                "in_flight": self.in_flight, "healthy": self.healthy, "removing": self.removing,
                "requests": self.requests, "errors": self.errors}


class Records:
    """Per-request records of the last ten minutes: (time, variant, outcome, latency ms, scores)."""

    def __init__(self, window: float = WINDOW_SECONDS, maxlen: int = MAX_RECORDS):
        self.window = window
        self.items: deque = deque(maxlen=maxlen)

    def add(self, variant: str, outcome: str, latency_ms: float, scores: tuple = ()) -> None:
        now = time.time()
        self.items.append((now, variant, outcome, latency_ms, scores))
        while self.items and self.items[0][0] < now - self.window:
            self.items.popleft()

    def stats(self, since: float, until: float | None = None) -> dict:
        """Aggregate records from ``since`` up to ``until`` (None: now) per variant (the ``/-/stats`` body).

        ``errors`` are 5xx and connection failures, ``timeouts`` tries that timed out, ``client_errors``
        4xx answers; latencies and scores come from the successful answers only.
        """
        out: dict[str, dict] = {}
        for t, variant, outcome, latency, scores in list(self.items):
            if t < since or (until is not None and t > until):
                continue
            v = out.setdefault(variant, {"requests": 0, "errors": 0, "timeouts": 0, "client_errors": 0,
                                         "latencies_ms": [], "scores": []})
            v["requests"] += 1
            if outcome == "error":
                v["errors"] += 1
            elif outcome == "timeout":
                v["timeouts"] += 1
            elif outcome == "client_error":
                v["client_errors"] += 1
            else:
                v["latencies_ms"].append(round(latency, 3))
                v["scores"].extend(scores)
        return {"now": time.time(), "variants": out}


def _scores(body: bytes) -> tuple:
    """Churn probabilities in a predict response (``{"predictions": [...]}`` or Vertex's bare list)."""
    try:
        import orjson

        data = orjson.loads(body)
    except Exception:
        return ()
    preds = data.get("predictions") if isinstance(data, dict) else data
    if not isinstance(preds, list):
        return ()
    return tuple(float(p["churn_probability"]) for p in preds
                 if isinstance(p, dict) and isinstance(p.get("churn_probability"), int | float))


class Router:
    """The routing state and behaviour; ``app()`` wraps it in Starlette."""

    def __init__(self, state_dir: Path, *, timeout: float = 30.0, drain_timeout: float = 60.0,
                 health_interval: float = 1.0, seed: int | None = None, try_floor: float = TRY_FLOOR,
                 try_factor: float = TRY_FACTOR, max_body_bytes: int | None = None, access_log: bool = False):
        if max_body_bytes is None:
            from churnkit.serve.contracts import DEFAULT_MAX_BODY_BYTES

            max_body_bytes = DEFAULT_MAX_BODY_BYTES
        self.state_dir = Path(state_dir)
        self.timeout = timeout
        self.try_floor = min(try_floor, timeout)
        self.try_factor = try_factor
        self.max_body_bytes = int(max_body_bytes)
        self.access_log = access_log
        self.drain_timeout = drain_timeout
        self.health_interval = health_interval
        self.variants: dict[str, Variant] = {}
        self.records = Records()
        self.rng = random.Random(seed)
        self.started = time.time()
        self.counts: dict[tuple[str, str], int] = {}
        self.retries = 0

    # ---- variants --------------------------------------------------------------------------------
    def load_state(self) -> None:
        """Take variants and weights from ``state.json`` (written by LocalTarget) at start-up."""
        path = self.state_dir / "state.json"
        if not path.exists():
            return
        state = json.loads(path.read_text())
        for name, v in (state.get("variants") or {}).items():
            if v.get("url"):
                self.put_variant(name, v["url"], str(v.get("model_version", "?")), int(v.get("weight", 0)))

    def check_variant(self, name: str, url, weight) -> None:
        """Refuse a variant whose url is not an http(s) URL or whose weight breaks the sum of 100 (ValueError)."""
        if not isinstance(url, str) or not url.startswith(("http://", "https://")):
            raise ValueError(f"variant {name!r}: url {url!r} is not an http:// or https:// URL")
        if type(weight) is not int or not 0 <= weight <= 100:
            raise ValueError(f"variant {name!r}: weight {weight!r} is not an integer from 0 to 100")
        total = sum(v.weight for n, v in self.variants.items() if n != name) + weight
        if total not in (0, 100):
            raise ValueError(f"variant {name!r} at weight {weight} would make the weights sum to {total}; they must "
                             "sum to 100 (add it at weight 0, then PUT /-/weights)")

    def put_variant(self, name: str, url: str, model_version: str, weight: int) -> Variant:
        import httpx

        old = self.variants.get(name)
        v = Variant(name, url.rstrip("/"), model_version, weight)
        v.client = httpx.AsyncClient(base_url=v.url, timeout=self.timeout,
                                     limits=httpx.Limits(max_connections=256, max_keepalive_connections=64))
        v.idle.set()
        self.variants[name] = v
        if old is not None and old.client is not None:
            asyncio.get_event_loop().create_task(self._close_when_idle(old))
        return v

    async def _close_when_idle(self, v: Variant) -> None:
        await self._drain([v])
        await v.client.aclose()

    async def _drain(self, variants: list[Variant]) -> list[str]:
        """Wait (up to drain_timeout) until ``variants`` have no request in flight; returns the ones still busy."""
        deadline = time.monotonic() + self.drain_timeout
        for v in variants:
            left = deadline - time.monotonic()
            if v.in_flight and left > 0:
                try:
                    await asyncio.wait_for(v.idle.wait(), left)
                except TimeoutError:
                    pass
        return [v.name for v in variants if v.in_flight]

    async def set_weights(self, weights: dict[str, int]) -> dict:
        unknown = sorted(set(weights) - set(self.variants))
        if unknown:
            raise ValueError(f"no variant named {unknown[0]!r}; variants: {sorted(self.variants)!r}")
        bad = {n: w for n, w in weights.items() if not isinstance(w, int) or isinstance(w, bool) or not 0 <= w <= 100}
        if bad or sum(weights.values()) != 100:
            raise ValueError(f"weights {weights!r} must be integers 0..100 summing to 100")
        dropped = [v for n, v in self.variants.items() if weights.get(n, 0) == 0 and v.weight > 0]
        for n, v in self.variants.items():
            v.weight = int(weights.get(n, 0))
        busy = await self._drain(dropped)
        return {"weights": self.weights(), "drained": [v.name for v in dropped if v.name not in busy], "busy": busy}

    async def delete_variant(self, name: str) -> dict:
        v = self.variants.get(name)
        if v is None:
            return {"deleted": name, "busy": []}
        v.removing = True
        v.weight = 0
        busy = await self._drain([v])
        self.variants.pop(name, None)
        await v.client.aclose()
        return {"deleted": name, "busy": busy}

    def weights(self) -> dict[str, int]:
        return {n: v.weight for n, v in self.variants.items()}

    # ---- routing ---------------------------------------------------------------------------------
    def try_timeout(self, v: Variant) -> float:
        """Seconds one try on ``v`` may take: ``try_factor`` x the p99 of the other variants' recent successful
        latencies, within [``try_floor``, ``timeout``]; ``timeout`` until the others answered ``MIN_RECENT`` times."""
        peers = [x for n, other in self.variants.items() if n != v.name for x in other.recent]
        if len(peers) < MIN_RECENT:
            return self.timeout
        peers.sort()
        p99 = peers[min(len(peers) - 1, int(0.99 * len(peers)))] / 1000.0
        return min(self.timeout, max(self.try_floor, self.try_factor * p99))

    def choose(self, exclude: set[str]) -> Variant | None:
        """A variant by weight among those not yet tried; a live weight-0 variant only as a last resort."""
        pool = [v for v in self.variants.values() if v.name not in exclude and not v.removing]
        weighted = [v for v in pool if v.weight > 0]
        if weighted:
            return self.rng.choices(weighted, weights=[v.weight for v in weighted])[0]
        spare = [v for v in pool if v.healthy is not False]
        return spare[0] if spare else None

    async def forward(self, method: str, path: str, query: bytes, headers: list, body: bytes):
        """Send the request to a variant, retrying on others; returns (status, headers, body, variant)."""
        import httpx

        tried: set[str] = set()
        last: tuple | None = None
        send_headers = [(k, v) for k, v in headers if k.lower() not in HOP_BY_HOP]
        target = path + (("?" + query.decode("latin-1")) if query else "")
        while True:
            v = self.choose(tried)
            if v is None:
                break
            tried.add(v.name)
            v.in_flight += 1
            v.idle.clear()
            started = time.perf_counter()
            outcome, response = "ok", None
            try:
                response = await v.client.request(method, target, headers=send_headers, content=body,
                                                  timeout=self.try_timeout(v))
                code = response.status_code
                outcome = "error" if code >= 500 else "client_error" if code >= 400 else "ok"
            except httpx.TimeoutException:
                outcome = "timeout"
            except httpx.HTTPError:
                outcome = "error"
            finally:
                v.in_flight -= 1
                if not v.in_flight:
                    v.idle.set()
            latency = (time.perf_counter() - started) * 1000.0
            v.requests += 1
            scores = ()
            if outcome == "ok":
                v.recent.append(latency)
                if response.status_code == 200 and method == "POST":
                    scores = _scores(response.content)
            self.records.add(v.name, outcome, latency, scores)
            status = str(response.status_code) if response is not None else outcome
            self.counts[(v.name, status)] = self.counts.get((v.name, status), 0) + 1
            if self.access_log:
                log.info("%s %s -> %s %s %.1f ms", method, path, v.name, status, latency)
            if outcome in ("ok", "client_error"):  # the variant's answer: a 4xx is the client's to see
                out = [(k, val) for k, val in response.headers.items() if k.lower() not in HOP_BY_HOP]
                return response.status_code, out + [("x-churnkit-variant", v.name)], response.content, v.name
            v.errors += 1
            self.retries += 1
            if response is not None:
                last = (response.status_code, list(response.headers.items()), response.content, v.name)
            log.warning("variant %s failed (%s) on %s %s; retrying on another variant", v.name, status, method, path)
        if last is not None:
            status, hdrs, content, name = last
            return status, [(k, val) for k, val in hdrs if k.lower() not in HOP_BY_HOP] + [("x-churnkit-variant", name)], \
                content, name
        body = json.dumps({"error": "no variant of this endpoint could answer", "details": sorted(tried)}).encode()
        return 503, [("content-type", "application/json")], body, ""

    async def check_health(self) -> None:
        """Ping every variant's /ping once per interval (shown in /-/state; routing follows weights)."""
        import httpx

        while True:
            for v in list(self.variants.values()):
                try:
                    r = await v.client.get("/ping", timeout=2.0)
                    v.healthy = r.status_code == 200
                except httpx.HTTPError:
                    v.healthy = False
            await asyncio.sleep(self.health_interval)

    def metrics_text(self) -> str:
        lines = ["# HELP churnkit_router_requests_total Requests forwarded, by variant and upstream status.",
                 "# TYPE churnkit_router_requests_total counter"]
        for (variant, status), n in sorted(self.counts.items()):
            lines.append(f'churnkit_router_requests_total{{variant="{variant}",status="{status}"}} {n}')
        lines += ["# TYPE churnkit_router_retries_total counter", f"churnkit_router_retries_total {self.retries}",
                  "# TYPE churnkit_router_variant_weight gauge"]
        lines += [f'churnkit_router_variant_weight{{variant="{n}"}} {v.weight}' for n, v in self.variants.items()]
        lines += ["# TYPE churnkit_router_in_flight gauge"]
        lines += [f'churnkit_router_in_flight{{variant="{n}"}} {v.in_flight}' for n, v in self.variants.items()]
        lines += ["# TYPE churnkit_start_time_seconds gauge", f"churnkit_start_time_seconds {self.started}"]
        return "\n".join(lines) + "\n"

    def state(self) -> dict:
        return {"pid": os.getpid(), "started": self.started, "weights": self.weights(),
                "max_body_bytes": self.max_body_bytes, "timeout": self.timeout, "try_floor": self.try_floor,
                "variants": {n: v.to_dict() for n, v in self.variants.items()}}


class BodyTooLarge(Exception):
    pass


#: Seconds a client has to send a request's body (408 after).
BODY_TIMEOUT = 30.0


async def read_body(request, limit: int, timeout: float = BODY_TIMEOUT) -> bytes:
    """The request body, refused (BodyTooLarge) from its Content-Length or as soon as the stream passes ``limit``;
    TimeoutError when it is not complete within ``timeout`` seconds."""
    length = request.headers.get("content-length", "")
    if length.isdigit() and int(length) > limit:
        raise BodyTooLarge(int(length))
    chunks, size = [], 0
    async with asyncio.timeout(timeout):
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise BodyTooLarge(size)
            chunks.append(chunk)
    return b"".join(chunks)


def read_token(state_dir: Path) -> str:
    """The admin token of the endpoint in ``state_dir`` (created, mode 0600, on first use)."""
    path = Path(state_dir) / TOKEN_FILE
    if not path.exists():
        Path(state_dir).mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(secrets.token_urlsafe(32))
    os.chmod(path, 0o600)
    return path.read_text().strip()


def create_app(router: Router, token: str | None = None, admin_port: int | None = None):
    """The router's Starlette app: the admin API under ``/-/`` and a forwarding catch-all.

    With ``admin_port``, ``/-/`` paths answer only on that port and only with ``Authorization: Bearer
    <token>`` (404 on any other port, 401 without the token); without it (tests) they answer everywhere.
    """
    from contextlib import asynccontextmanager

    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse, Response
    from starlette.routing import Route

    def error(message: str, status: int = 400) -> JSONResponse:
        return JSONResponse({"error": message, "details": []}, status_code=status)

    async def body_json(request: Request) -> dict | None:
        try:
            data = json.loads(await read_body(request, 1024 * 1024) or b"{}")
        except (ValueError, BodyTooLarge, TimeoutError):
            return None
        return data if isinstance(data, dict) else None

    async def get_state(request: Request):
        return JSONResponse(router.state())

    async def put_weights(request: Request):
        data = await body_json(request)
        if data is None or not isinstance(data.get("weights"), dict):
            return error('body must be {"weights": {variant: int, ...}}')
        try:
            return JSONResponse(await router.set_weights(data["weights"]))
        except ValueError as exc:
            return error(str(exc), 422)

    async def put_variant(request: Request):
        data = await body_json(request)
        name = request.path_params["name"]
        if data is None:
            return error('body must be {"url": "http://127.0.0.1:PORT", "model_version": str, "weight": int 0..100}')
        weight = data.get("weight", 0)
        try:
            router.check_variant(name, data.get("url"), weight)
        except ValueError as exc:
            return error(f"{exc}; body must be {{\"url\": \"http://127.0.0.1:PORT\", \"model_version\": str, "
                         f"\"weight\": int 0..100}}, got {repr(data)[:200]}", 422)
        v = router.put_variant(name, data["url"], str(data.get("model_version", "?")), weight)
        return JSONResponse(v.to_dict())

    async def delete_variant(request: Request):
        return JSONResponse(await router.delete_variant(request.path_params["name"]))

    async def get_stats(request: Request):
        bounds = {}
        for name, default in (("since", "0"), ("until", None)):
            text = request.query_params.get(name, default)
            try:
                bounds[name] = None if text is None else float(text)
            except ValueError:
                return error(f"{name} {text!r} is not a unix time stamp (float)")
        return JSONResponse(router.records.stats(bounds["since"], bounds["until"]))

    async def ping(request: Request):
        ok = any(v.weight > 0 and v.healthy is not False for v in router.variants.values())
        return Response(b"" if ok else b"no variant takes traffic", status_code=200 if ok else 503)

    async def health(request: Request):
        ok = any(v.weight > 0 for v in router.variants.values())
        public = {"weights": router.weights(), "variants": {n: {"model_version": v.model_version, "weight": v.weight,
                                                                 "healthy": v.healthy} for n, v in router.variants.items()}}
        return JSONResponse({"status": "ok" if ok else "no traffic", "router": True, **public},
                            status_code=200 if ok else 503)

    async def metrics(request: Request):
        return Response(router.metrics_text(), media_type="text/plain; version=0.0.4")

    async def forward(request: Request):
        try:
            body = await read_body(request, router.max_body_bytes)
        except TimeoutError:
            return JSONResponse({"error": f"the request body did not arrive within {BODY_TIMEOUT:g} s", "details": []},
                                status_code=408, headers={"connection": "close"})
        except BodyTooLarge as exc:
            return JSONResponse({"error": f"the body has more than {router.max_body_bytes} bytes ({exc.args[0]} so far); "
                                          "send fewer rows per request",
                                 "details": [f"body bytes {exc.args[0]} > max_body_bytes {router.max_body_bytes}"]},
                                status_code=413, headers={"connection": "close"})
        status, headers, content, _ = await router.forward(request.method, request.url.path,
                                                           request.scope.get("query_string", b""),
                                                           list(request.headers.items()), body)
        resp = Response(content, status_code=status)
        for k, v in headers:
            resp.headers.append(k, v)
        return resp

    @asynccontextmanager
    async def lifespan(app):
        router.load_state()
        task = asyncio.get_event_loop().create_task(router.check_health())
        try:
            yield
        finally:
            task.cancel()
            for v in list(router.variants.values()):
                await v.client.aclose()

    methods = ["GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS"]
    app = Starlette(lifespan=lifespan, routes=[
        Route("/-/state", get_state, methods=["GET"]),
        Route("/-/weights", put_weights, methods=["PUT"]),
        Route("/-/variants/{name}", put_variant, methods=["PUT"]),
        Route("/-/variants/{name}", delete_variant, methods=["DELETE"]),
        Route("/-/stats", get_stats, methods=["GET"]),
        Route("/ping", ping, methods=["GET"]),
        Route("/health", health, methods=["GET"]),
        Route("/metrics", metrics, methods=["GET"]),
        Route("/{path:path}", forward, methods=methods),
    ])
    if admin_port is None:
        return app
    expected = f"Bearer {token}".encode()

    async def guarded(scope, receive, send):
        """``/-/`` only on the admin port with the token; the public port knows no such path."""
        if scope["type"] == "http":
            admin = (scope.get("server") or (None, None))[1] == admin_port
            if scope["path"].startswith("/-/") or admin:
                status, message = 0, b""
                if not admin:
                    status, message = 404, b'{"error":"no such route","details":[]}'
                elif not scope["path"].startswith("/-/"):
                    status, message = 404, b'{"error":"the admin port serves /-/ paths only","details":[]}'
                else:
                    given = dict(scope["headers"]).get(b"authorization", b"")
                    if not hmac.compare_digest(given, expected):
                        status, message = 401, (b'{"error":"missing or wrong admin token; it is in the endpoint\'s '
                                                b'state folder (admin.token)","details":[]}')
                if status:
                    await send({"type": "http.response.start", "status": status,
                                "headers": [(b"content-type", b"application/json")]})
                    await send({"type": "http.response.body", "body": message})
                    return
        await app(scope, receive, send)

    return guarded


def _bind(host: str, port: int):
    import socket

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.set_inheritable(True)
    return sock


def _endpoint_port(state_dir: Path) -> int | None:
    """The endpoint's port recorded in ``state.json`` (what a restarted router listens on)."""
    try:
        state = json.loads((Path(state_dir) / "state.json").read_text())
    except (OSError, ValueError):
        return None
    port = state.get("port") or (state.get("router") or {}).get("port")
    return int(port) if port else None


def _logging(log_file: str | None, max_bytes: int, access_log: bool) -> None:
    handler: logging.Handler
    if log_file:
        handler = logging.handlers.RotatingFileHandler(log_file, maxBytes=max_bytes, backupCount=LOG_BACKUPS)
    else:
        handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO)
    for noisy in ("httpx", "httpcore"):  # one INFO line per upstream request otherwise
        logging.getLogger(noisy).setLevel(logging.INFO if access_log else logging.WARNING)


def main(argv: list[str] | None = None) -> None:
    """``python -m churnkit.deploy.router --state DIR [--port P] [--host 127.0.0.1] [--admin-port A]``."""
    import uvicorn

    parser = argparse.ArgumentParser(prog="python -m churnkit.deploy.router", description=__doc__.split("\n")[0])
    parser.add_argument("--state", required=True, help="The endpoint's state folder (state.json).")
    parser.add_argument("--port", type=int, default=None,
                        help="Public port (default: the endpoint's port in state.json).")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--admin-port", type=int, default=0,
                        help="Admin API port on 127.0.0.1 (default 0: a free one, written to router.json).")
    parser.add_argument("--timeout", type=float, default=30.0, help="Seconds a variant may take per request at most.")
    parser.add_argument("--try-floor", type=float, default=TRY_FLOOR,
                        help="Shortest per-try timeout (seconds) before a request is retried on another variant.")
    parser.add_argument("--drain-timeout", type=float, default=60.0)
    parser.add_argument("--max-body-bytes", type=int, default=None, help="Larger bodies get 413 (default: serve's 6 MiB).")
    parser.add_argument("--log-file", default=None, help="Rotating log file (default: DIR/router.log).")
    parser.add_argument("--log-max-bytes", type=int, default=LOG_MAX_BYTES, help="Rotate the log at this size.")
    parser.add_argument("--access-log", action="store_true", help="Log one line per forwarded request.")
    parser.add_argument("--header-timeout", type=float, default=10.0,
                        help="Seconds a client has to send its request headers; slower connections are closed.")
    args = parser.parse_args(argv)
    state_dir = Path(args.state)
    if not (state_dir / "state.json").exists():
        # A stopped endpoint (``churnkit endpoint stop`` removes the state) stays down: exit 0, which a
        # supervisor restarting on failure only (systemd ``Restart=on-failure``) leaves alone.
        print(f"{state_dir / 'state.json'} does not exist: the endpoint is stopped or was never deployed, so there is "
              "nothing to route; deploy it (churnkit deploy --target local) and start the router again",
              file=sys.stderr, flush=True)
        raise SystemExit(0)
    port = args.port if args.port is not None else _endpoint_port(state_dir)
    if port is None:
        parser.error(f"no --port given and {state_dir / 'state.json'} records no port for the endpoint")
    _logging(args.log_file or str(state_dir / "router.log"), args.log_max_bytes, args.access_log)
    router = Router(state_dir, timeout=args.timeout, drain_timeout=args.drain_timeout, try_floor=args.try_floor,
                    max_body_bytes=args.max_body_bytes, access_log=args.access_log)
    public, admin = _bind(args.host, port), _bind("127.0.0.1", args.admin_port)
    admin_port = admin.getsockname()[1]
    app = create_app(router, read_token(state_dir), admin_port)
    record = {"pid": os.getpid(), "port": public.getsockname()[1], "admin_port": admin_port, "host": args.host}
    tmp = state_dir / (ROUTER_FILE + ".tmp")
    tmp.write_text(json.dumps(record))
    tmp.replace(state_dir / ROUTER_FILE)
    log.warning("router on http://%s:%s (admin on 127.0.0.1:%s) for %s", args.host, record["port"], admin_port, state_dir)
    print(f"router on http://{args.host}:{record['port']} for {args.state}", file=sys.stderr, flush=True)
    from churnkit.serve.limits import protocol_class

    config = uvicorn.Config(app, loop="auto", http=protocol_class(args.header_timeout), access_log=False,
                            log_level="warning", timeout_graceful_shutdown=10, log_config=None)
    uvicorn.Server(config).run(sockets=[public, admin])


if __name__ == "__main__":  # pragma: no cover
    main()
