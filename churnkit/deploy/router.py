"""The local endpoint's router: one port in front of a ``churnkit serve`` process per variant.

Run as its own process: ``python -m churnkit.deploy.router --state DIR --port P``. It forwards every
predict route to a variant chosen by weight (httpx AsyncClient, one keep-alive pool per variant),
retries a request that failed to connect, timed out or got a 5xx on another live variant (the
failure is counted for the variant that failed; the client still gets an answer), and keeps a ring
buffer of per-request records of the last ten minutes for the rollout controller.

Admin API (under ``/-/``, never forwarded):

===============================  ==================================================================
GET /-/state                     weights, variants (url, version, in-flight, health, counts)
PUT /-/weights                   ``{"weights": {variant: int}}``; waits until variants whose weight
                                 went to 0 finished their in-flight requests (drain)
PUT /-/variants/{name}           ``{"url", "model_version", "weight"}``: add or replace a variant
DELETE /-/variants/{name}        stop routing to it, wait for its in-flight requests, then drop it
GET /-/stats?since=<unix ts>     ``{"now", "variants": {v: {"requests", "errors", "timeouts",
                                 "latencies_ms", "scores"}}}`` from the ring buffer
===============================  ==================================================================

``GET /ping`` and ``/health`` are the router's own (200 while some variant takes traffic),
``/metrics`` its own Prometheus counters; ``GET /version`` and every other route are forwarded.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import random
import sys
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger("churnkit.router")

WINDOW_SECONDS = 600.0
MAX_RECORDS = 500_000
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

    def stats(self, since: float) -> dict:
        """Aggregate records at or after ``since`` per variant (the ``/-/stats`` body)."""
        out: dict[str, dict] = {}
        for t, variant, outcome, latency, scores in list(self.items):
            if t < since:
                continue
            v = out.setdefault(variant, {"requests": 0, "errors": 0, "timeouts": 0, "latencies_ms": [], "scores": []})
            v["requests"] += 1
            if outcome == "error":
                v["errors"] += 1
            elif outcome == "timeout":
                v["timeouts"] += 1
            else:  # ok or a client error (4xx): the variant answered
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
                 health_interval: float = 1.0, seed: int | None = None):
        self.state_dir = Path(state_dir)
        self.timeout = timeout
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
                response = await v.client.request(method, target, headers=send_headers, content=body)
                outcome = "error" if response.status_code >= 500 else "ok"
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
            if outcome == "ok" and response.status_code == 200 and method == "POST":
                scores = _scores(response.content)
            self.records.add(v.name, outcome, latency, scores)
            status = str(response.status_code) if response is not None else outcome
            self.counts[(v.name, status)] = self.counts.get((v.name, status), 0) + 1
            if outcome == "ok":
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
                "variants": {n: v.to_dict() for n, v in self.variants.items()}}


def create_app(router: Router):
    """The router's Starlette app: the admin API under ``/-/`` and a forwarding catch-all."""
    from contextlib import asynccontextmanager

    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse, Response
    from starlette.routing import Route

    def error(message: str, status: int = 400) -> JSONResponse:
        return JSONResponse({"error": message, "details": []}, status_code=status)

    async def body_json(request: Request) -> dict | None:
        try:
            data = json.loads(await request.body() or b"{}")
        except ValueError:
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
        weight = (data or {}).get("weight", 0)
        if data is None or not isinstance(data.get("url"), str) or type(weight) is not int or not 0 <= weight <= 100:
            return error('body must be {"url": "http://127.0.0.1:PORT", "model_version": str, "weight": int 0..100}, '
                         f"got {repr(data)[:200]}")
        v = router.put_variant(request.path_params["name"], data["url"], str(data.get("model_version", "?")), weight)
        return JSONResponse(v.to_dict())

    async def delete_variant(request: Request):
        return JSONResponse(await router.delete_variant(request.path_params["name"]))

    async def get_stats(request: Request):
        try:
            since = float(request.query_params.get("since", "0"))
        except ValueError:
            return error(f"since {request.query_params.get('since')!r} is not a unix time stamp (float)")
        return JSONResponse(router.records.stats(since))

    async def ping(request: Request):
        ok = any(v.weight > 0 and v.healthy is not False for v in router.variants.values())
        return Response(b"" if ok else b"no variant takes traffic", status_code=200 if ok else 503)

    async def health(request: Request):
        ok = any(v.weight > 0 for v in router.variants.values())
        return JSONResponse({"status": "ok" if ok else "no traffic", "router": True, **router.state()},
                            status_code=200 if ok else 503)

    async def metrics(request: Request):
        return Response(router.metrics_text(), media_type="text/plain; version=0.0.4")

    async def forward(request: Request):
        status, headers, content, _ = await router.forward(request.method, request.url.path,
                                                           request.scope.get("query_string", b""),
                                                           list(request.headers.items()), await request.body())
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
    return Starlette(lifespan=lifespan, routes=[
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


def main(argv: list[str] | None = None) -> None:
    """``python -m churnkit.deploy.router --state DIR --port P [--host 127.0.0.1]``."""
    import uvicorn

    parser = argparse.ArgumentParser(prog="python -m churnkit.deploy.router", description=__doc__.split("\n")[0])
    parser.add_argument("--state", required=True, help="The endpoint's state folder (state.json).")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--timeout", type=float, default=30.0, help="Seconds a variant may take per request.")
    parser.add_argument("--drain-timeout", type=float, default=60.0)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    router = Router(Path(args.state), timeout=args.timeout, drain_timeout=args.drain_timeout)
    print(f"router on http://{args.host}:{args.port} for {args.state}", file=sys.stderr, flush=True)
    uvicorn.run(create_app(router), host=args.host, port=args.port, loop="auto", http="auto",  # uvloop/httptools when installed
                access_log=False, log_level="warning", timeout_graceful_shutdown=10)


if __name__ == "__main__":  # pragma: no cover
    main()
