"""The HTTP server: one scorer behind SageMaker's, Vertex AI's, Azure ML's and MLflow's routes.

=========================================  ======================================================
GET /ping, POST /invocations               SageMaker (and MLflow's scoring protocol)
AIP_HEALTH_ROUTE, AIP_PREDICT_ROUTE        Vertex AI custom container (when those are set)
GET /, POST /score                         Azure ML
GET /execution-parameters                  SageMaker Batch Transform (see :mod:`churnkit.serve.batch`)
GET /health, /version, /metrics            operations (Prometheus text on /metrics)
=========================================  ======================================================

In batch mode (``SAGEMAKER_BATCH=true``), CSV lines and JSON Lines posted to ``/invocations`` or
``/score`` get one answer line per input line (:func:`churnkit.serve.batch.score_lines`).

The predict routes are plain ASGI callables (no Request/Response objects on the hot path); every
client mistake is a 4xx ``{"error", "details"}``, an unexpected failure a logged 500 with a
generic body, never a stack trace.

Readiness: at start the app scores probe rows built from the model's training schema; a model that
cannot score makes every health route (``/ping``, ``/``, ``/health``, Vertex's) and every predict
route answer 503 with the reason, never 200 then 500. Bodies above ``OFFLOAD_BYTES`` are parsed and
scored in a worker thread, so the event loop keeps answering; slow clients are closed
(:mod:`churnkit.serve.limits`).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import sys
import time

import anyio.to_thread
import numpy as np

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from churnkit.clock import utcnow
from churnkit.exceptions import ConfigError, SchemaError
from churnkit.version import __version__
from churnkit.serve import batch as batch_mode
from churnkit.serve import contracts
from churnkit.serve.limits import DEFAULT_BODY_TIMEOUT, DEFAULT_HEADER_TIMEOUT, Disconnected, protocol_class, read_body
from churnkit.serve.metrics import CONTENT_TYPE, Metrics
from churnkit.serve.scorer import Scorer, probe_rows

log = logging.getLogger("churnkit.serve")

DEFAULT_MAX_BODY_BYTES = contracts.DEFAULT_MAX_BODY_BYTES
DEFAULT_MAX_ROWS = contracts.DEFAULT_MAX_ROWS
DEFAULT_PORT = 8080
PREDICT_ROUTES = ("/invocations", "/score")
_JSON = b"application/json"
_INTERNAL = contracts.dumps({"error": "internal error while scoring; the server log has the details", "details": []})
#: Bodies larger than this are parsed, validated and scored in a worker thread (the event loop stays free).
OFFLOAD_BYTES = 64 * 1024


def probe_model(scorer: Scorer) -> str:
    """Score probe rows of the model's schema; "" when the model scores, else why it cannot."""
    try:
        proba = np.asarray(scorer.predict_records(probe_rows(scorer.schema)[:3]), dtype=float)
        if proba.shape != (3,) or not np.all(np.isfinite(proba)) or proba.min() < 0 or proba.max() > 1:
            return f"probe rows scored {proba.tolist()!r}, not three probabilities from 0 to 1"
    except Exception as exc:  # noqa: BLE001 - any failure means the model cannot serve
        return f"{type(exc).__name__}: {exc}"
    return ""


class Service:
    """What every route shares: the loaded model, its scorer, metrics and data capture.

    ``not_ready`` is empty when the model scored the probe rows at start, else the reason it could not.
    """

    def __init__(self, loaded, scorer: Scorer, max_body_bytes: int, capture=None,
                 body_timeout: float = DEFAULT_BODY_TIMEOUT, batch: batch_mode.BatchSettings | None = None):
        self.loaded = loaded
        self.scorer = scorer
        self.batch = batch or batch_mode.BatchSettings()
        self.batch_validator = batch_mode.lenient_validator(scorer.validator) if self.batch.enabled else None
        self.max_body_bytes = max(int(max_body_bytes), self.batch.max_body_bytes if self.batch.enabled else 0)
        self.body_timeout = float(body_timeout)
        self.capture = capture
        self.metrics = Metrics(loaded.name, str(loaded.version), loaded.sha256)
        self.version_header = str(loaded.version).encode("latin-1", "replace")
        self.not_ready = probe_model(scorer)
        if self.not_ready:
            log.error("model %s v%s cannot score probe rows of its own schema, so the server reports not ready "
                      "(503): %s", loaded.name, loaded.version, self.not_ready)

    def not_ready_body(self) -> dict:
        return {"status": "not ready", "error": f"model {self.loaded.name} v{self.loaded.version} cannot score: "
                f"{self.not_ready}; deploy a version that scores (its training run's holdout)", "details": [self.not_ready]}

    def describe(self) -> dict:
        m = self.loaded
        return {"name": m.name, "version": str(m.version), "sha256": m.sha256, "uri": m.uri, "threshold": m.threshold,
                "churnkit": __version__, "engine": self.scorer.engine, "pinned": m.pinned,
                "manifest_sha256": m.manifest_sha256}


class _NotReady(Exception):
    pass


class PredictEndpoint:
    """ASGI app of one predict route (``vertex=True`` answers ``{"predictions": [...]}`` only)."""

    def __init__(self, service: Service, vertex: bool = False):
        self.service = service
        self.vertex = vertex

    async def __call__(self, scope, receive, send) -> None:
        svc = self.service
        content_type = length = request_id = accept = None
        for key, value in scope["headers"]:
            if key == b"content-type":
                content_type = value.decode("latin-1")
            elif key == b"accept":
                accept = value.decode("latin-1")
            elif key == b"content-length":
                length = value
            elif key == b"x-request-id":
                request_id = value.decode("latin-1")[:128]
        request_id = request_id or os.urandom(16).hex()
        status, model_seconds = 200, None
        close = False
        media = _JSON
        try:
            if svc.not_ready:
                raise _NotReady
            if length is not None and length.isdigit() and int(length) > svc.max_body_bytes:
                raise contracts.body_too_large(int(length), svc.max_body_bytes)
            body = await read_body(receive, svc.max_body_bytes, svc.body_timeout)
            if svc.batch_validator is not None and not self.vertex and batch_mode.is_batch_body(content_type):
                data, media, model_seconds = await self._score_lines(body, content_type, accept)
            else:
                data, model_seconds = await self._score(body, content_type, request_id)
        except Disconnected:
            return
        except _NotReady:
            status, data = 503, contracts.dumps(svc.not_ready_body())
        except SchemaError as exc:
            status, data = exc.status, contracts.dumps(contracts.error_body(exc))
            close = status in (408, 413)  # the rest of the body is not read: the connection cannot be reused
        except Exception:  # an internal failure: logged with its trace, never shown to the client
            log.exception("scoring failed (request id %s)", request_id)
            status, data, model_seconds = 500, _INTERNAL, None
        scope["churnkit.model_seconds"] = model_seconds
        scope["churnkit.status"] = status
        latency = b"%.3f" % ((model_seconds or 0.0) * 1000.0)
        await send({"type": "http.response.start", "status": status, "headers": [
            (b"content-type", media), (b"content-length", str(len(data)).encode()),
            (b"x-model-latency-ms", latency), (b"x-model-version", svc.version_header),
            (b"x-request-id", request_id.encode("latin-1", "replace")),
        ] + ([(b"connection", b"close")] if close else [])})
        await send({"type": "http.response.body", "body": data})

    async def _score(self, body: bytes, content_type, request_id: str) -> tuple[bytes, float]:
        """A body of any real-time contract scored (in a worker thread when large) and captured."""
        svc, m = self.service, self.service.loaded
        score = functools.partial(contracts.score_request, body, content_type, svc.scorer, m.name, str(m.version),
                                  max_body_bytes=svc.max_body_bytes, vertex=self.vertex)
        scored = await anyio.to_thread.run_sync(score) if len(body) > OFFLOAD_BYTES else score()
        svc.metrics.observe_scores(scored.proba)
        if svc.capture is not None:
            svc.capture.write({
                "time": utcnow(), "request_id": request_id,
                "model_name": m.name, "model_version": str(m.version),
                "inputs": scored.payload.records(svc.scorer.validator.names), "predictions": scored.proba.tolist(),
            })
        return contracts.dumps(scored.body), scored.model_seconds

    async def _score_lines(self, body: bytes, content_type, accept) -> tuple[bytes, bytes, float]:
        """A batch body scored line by line (in a worker thread when large); the answer, its type, model seconds."""
        svc = self.service
        score = functools.partial(batch_mode.score_lines, body, content_type, accept, svc.scorer, svc.batch_validator)
        t0 = time.perf_counter()
        scored = await anyio.to_thread.run_sync(score) if len(body) > OFFLOAD_BYTES else score()
        svc.metrics.observe_scores(scored.proba)
        if scored.refused:
            log.warning("batch request: %d of %d lines refused (answered as error lines)", scored.refused, scored.lines)
        return scored.body, scored.media_type.encode(), time.perf_counter() - t0


class Instrument:
    """ASGI middleware counting every request by route and status, and timing predict requests.

    ``POST`` to a predict route goes straight to its endpoint (which answers every error itself),
    past Starlette's router and exception middleware: those cost more than scoring one row.
    """

    def __init__(self, app, metrics: Metrics, routes: frozenset, predict: dict | None = None):
        self.app = app
        self.metrics = metrics
        self.routes = routes
        self.predict = predict or {}

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        t0 = time.perf_counter()
        path = scope["path"]
        endpoint = self.predict.get(path) if scope["method"] == "POST" else None
        if endpoint is not None:
            scope["churnkit.status"] = 500
            try:
                await endpoint(scope, receive, send)
            finally:
                self.metrics.observe_request(path, scope["churnkit.status"], time.perf_counter() - t0,
                                             scope.get("churnkit.model_seconds"))
            return
        status = [500]

        async def send_status(message):
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            path = scope["path"]
            self.metrics.observe_request(path if path in self.routes else "other", status[0],
                                         time.perf_counter() - t0, scope.get("churnkit.model_seconds"))


def _json(obj, status: int = 200, headers: dict | None = None) -> Response:
    return Response(contracts.dumps(obj), status_code=status, media_type="application/json", headers=headers)


def create_app(
    loaded,
    *,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    max_rows: int = DEFAULT_MAX_ROWS,
    capture_dir=None,
    capture_max_bytes: int | None = None,
    vertex_health_route: str | None = None,
    vertex_predict_route: str | None = None,
    fast: bool = True,
    body_timeout: float = DEFAULT_BODY_TIMEOUT,
    batch: batch_mode.BatchSettings | None = None,
) -> Starlette:
    """The Starlette app serving ``loaded`` (a :class:`churnkit.registry.LoadedModel`).

    Parameters
    ----------
    max_body_bytes, max_rows : int
        Larger requests get 413.
    capture_dir : path, optional
        Write every scored request there as JSON Lines (see :mod:`churnkit.serve.capture`).
    capture_max_bytes : int, optional
        Rotate capture files at this size (16 MiB by default).
    vertex_health_route, vertex_predict_route : str, optional
        Vertex AI's ``AIP_HEALTH_ROUTE`` / ``AIP_PREDICT_ROUTE``.
    fast : bool
        False scores with sklearn itself (for comparisons).
    body_timeout : float
        Seconds a client has to send a request's body (408 after).
    batch : BatchSettings, optional
        Batch mode (:func:`churnkit.serve.batch.batch_settings` reads it from SageMaker's variables); its
        payload size raises ``max_body_bytes`` when larger.
    """
    for name, route in (("vertex_health_route", vertex_health_route), ("vertex_predict_route", vertex_predict_route)):
        if route is not None and not route.startswith("/"):
            raise ConfigError(f"{name} {route!r} must start with '/'; check AIP_HEALTH_ROUTE / AIP_PREDICT_ROUTE")
    scorer = Scorer.from_loaded(loaded, max_rows=max_rows, fast=fast)
    capture = None
    if capture_dir:
        from churnkit.serve.capture import DEFAULT_MAX_BYTES, CaptureWriter

        remote = str(capture_dir) if str(capture_dir).startswith(("gs://", "s3://")) else None
        if remote:  # written locally, each closed file copied to the bucket
            import tempfile

            capture_dir = tempfile.mkdtemp(prefix="churnkit-capture-")
        capture = CaptureWriter(capture_dir, capture_max_bytes or DEFAULT_MAX_BYTES, remote=remote)
        capture.start()
    svc = Service(loaded, scorer, max_body_bytes, capture, body_timeout, batch)

    async def ok(request: Request) -> Response:
        if svc.not_ready:
            return _json(svc.not_ready_body(), 503)
        return _json({"status": "ok"})

    async def health(request: Request) -> Response:
        if svc.not_ready:
            return _json({**svc.not_ready_body(), "name": loaded.name, "version": str(loaded.version)}, 503)
        return _json({"status": "ok", "name": loaded.name, "version": str(loaded.version), "engine": scorer.engine,
                      "uptime_seconds": round(time.time() - svc.metrics.start_time, 3), "rows_scored": svc.metrics.rows,
                      "pid": os.getpid()})

    async def version(request: Request) -> Response:
        return _json(svc.describe())

    async def metrics(request: Request) -> Response:
        return Response(svc.metrics.render(), media_type=CONTENT_TYPE)

    async def execution_parameters(request: Request) -> Response:
        if svc.batch.enabled:
            return _json(svc.batch.execution_parameters())
        # outside a transform job: what one request may carry here (whole MB, at least 1)
        payload = max(1, svc.max_body_bytes // (1024 * 1024))
        return _json(batch_mode.BatchSettings(False, payload).execution_parameters())

    routes = []
    if vertex_predict_route:
        routes.append(Route(vertex_predict_route, PredictEndpoint(svc, vertex=True), methods=["POST"]))
    if vertex_health_route:
        routes.append(Route(vertex_health_route, ok, methods=["GET"]))
    routes += [Route(p, PredictEndpoint(svc), methods=["POST"]) for p in PREDICT_ROUTES]
    predict = {r.path: r.endpoint for r in routes if isinstance(r.endpoint, PredictEndpoint)}
    routes += [Route("/ping", ok), Route("/", ok), Route("/health", health), Route("/version", version),
               Route("/metrics", metrics), Route("/execution-parameters", execution_parameters)]
    paths = [r.path for r in routes]

    async def http_error(request: Request, exc: HTTPException) -> Response:
        what = "no such route" if exc.status_code == 404 else exc.detail
        return _json({"error": f"{what}: {request.method} {request.url.path}", "details": sorted(set(paths))},
                     exc.status_code, exc.headers)

    async def server_error(request: Request, exc: Exception) -> Response:
        log.error("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
        return Response(_INTERNAL, status_code=500, media_type="application/json")

    @contextlib.asynccontextmanager
    async def lifespan(app):
        try:
            yield
        finally:
            if capture is not None:
                capture.close()

    app = Starlette(
        routes=routes,
        middleware=[Middleware(Instrument, metrics=svc.metrics, routes=frozenset(paths), predict=predict)],
        exception_handlers={HTTPException: http_error, Exception: server_error},
        lifespan=lifespan,
    )
    app.state.service = svc
    return app


def environment_settings(environ) -> dict:
    """Container defaults from the environment: model URI, host, port and Vertex routes.

    Capture: ``CHURNKIT_CAPTURE_URI`` (a folder, ``gs://`` or ``s3://``; the Vertex target sets it).
    Model: ``CHURNKIT_MODEL_URI``, else ``AIP_STORAGE_URI`` (Vertex), else ``AZUREML_MODEL_DIR``
    (Azure ML custom container), else ``/opt/ml/model`` (SageMaker). Port: ``AIP_HTTP_PORT``, else 8080. Host: ``CHURNKIT_HOST`` (the image sets
    0.0.0.0), else 127.0.0.1.
    """
    port = environ.get("AIP_HTTP_PORT") or DEFAULT_PORT
    try:
        port = int(port)
    except ValueError:
        raise ConfigError(f"AIP_HTTP_PORT {port!r} is not a port number; set it to e.g. 8080") from None
    return {
        "model": (environ.get("CHURNKIT_MODEL_URI") or environ.get("AIP_STORAGE_URI")
                  or environ.get("AZUREML_MODEL_DIR") or "/opt/ml/model"),
        "host": environ.get("CHURNKIT_HOST") or "127.0.0.1",
        "port": port,
        "vertex_health_route": environ.get("AIP_HEALTH_ROUTE") or None,
        "vertex_predict_route": environ.get("AIP_PREDICT_ROUTE") or None,
        "capture": environ.get("CHURNKIT_CAPTURE_URI") or None,
    }


def run_server(app: Starlette, host: str = "127.0.0.1", port: int = DEFAULT_PORT,
               header_timeout: float = DEFAULT_HEADER_TIMEOUT, workers: int = 1) -> None:
    """Serve ``app`` with uvicorn until SIGINT/SIGTERM (uvloop, and httptools with a header read deadline);
    ``workers`` > 1 forks that many processes on one socket.

    Prints ``serving <name> v<version> on http://host:port`` to stderr once the socket listens
    (port 0 picks a free port and prints it). A connection whose request headers are not complete
    ``header_timeout`` seconds after it opened (or after its previous response) is closed.
    """
    import uvicorn

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    svc: Service = app.state.service

    class _Server(uvicorn.Server):
        async def startup(self, sockets=None):
            await super().startup(sockets)
            if self.started:
                bound = self.servers[0].sockets[0].getsockname()[1] if self.servers else port
                print(f"serving {svc.loaded.name} v{svc.loaded.version} on http://{host}:{bound}", file=sys.stderr, flush=True)

    config = uvicorn.Config(
        app, host=host, port=port, loop="auto", http=protocol_class(header_timeout), lifespan="on", access_log=False,
        log_level="warning", server_header=False, timeout_graceful_shutdown=10,
    )
    if workers > 1:  # pre-forked processes on one socket, /metrics summed over them (churnkit.serve.workers)
        from churnkit.serve.workers import run_workers

        return run_workers(app, config, workers, lambda bound, n: print(
            f"serving {svc.loaded.name} v{svc.loaded.version} on http://{host}:{bound} ({n} workers)",
            file=sys.stderr, flush=True))
    _Server(config).run()
