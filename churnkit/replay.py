"""Traffic replayer: send held-out rows to a scoring endpoint at a given rate, and report what the client saw.

For demos and for testing a rollout before real users see it: :func:`replay` runs in the caller's
thread until ``count`` requests were sent or ``duration`` seconds passed; :class:`Replayer` runs the
same loop in the background until :meth:`Replayer.stop`. Requests follow a fixed schedule (request
*i* leaves at ``start + i / rate``) served by ``workers`` threads, so a slow server lowers the rate
achieved instead of piling up requests. Every failure (non-2xx, timeout, connection error) is
counted and a few are kept verbatim; nothing is retried, so the result is the user's view.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from churnkit.exceptions import ParameterError

KEPT_ERRORS = 20


def request_bodies(rows: pd.DataFrame, batch_size: int = 10) -> list[bytes]:
    """JSON bodies ``{"instances": [{col: value}, ...]}`` of ``batch_size`` rows each (NaN as null)."""
    if rows.empty:
        raise ParameterError("no rows to replay; pass a non-empty table of model inputs", name="rows")
    if int(batch_size) < 1:
        raise ParameterError(f"batch_size must be at least 1, got {batch_size!r}", name="batch_size")
    records = json.loads(rows.to_json(orient="records", date_format="iso"))
    return [json.dumps({"instances": records[i:i + batch_size]}).encode() for i in range(0, len(records), batch_size)]


@dataclass
class ReplayResult:
    """What the client saw: counts by outcome, latencies, and which model version answered."""

    url: str
    rate: float
    requests: int = 0
    succeeded: int = 0
    failed: int = 0
    rows: int = 0
    seconds: float = 0.0
    statuses: dict[str, int] = field(default_factory=dict)
    versions: dict[str, int] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    latencies_ms: list[float] = field(default_factory=list)
    model_ms: list[float] = field(default_factory=list)  # the server's X-Model-Latency-Ms of each answer

    @property
    def achieved_rate(self) -> float:
        return self.requests / self.seconds if self.seconds > 0 else 0.0

    def percentile_ms(self, q: float) -> float | None:
        return float(np.percentile(self.latencies_ms, q)) if self.latencies_ms else None

    def summary(self) -> str:
        p99 = self.percentile_ms(99)
        return (f"{self.requests} requests ({self.rows} rows) in {self.seconds:.1f} s "
                f"({self.achieved_rate:.1f}/s, asked {self.rate:g}/s): {self.succeeded} ok, {self.failed} failed"
                + (f", p99 {p99:.1f} ms" if p99 is not None else "")
                + (f"; answered by {dict(sorted(self.versions.items()))}" if self.versions else ""))

    def to_dict(self) -> dict:
        return {"url": self.url, "rate": self.rate, "requests": self.requests, "succeeded": self.succeeded,
                "failed": self.failed, "rows": self.rows, "seconds": round(self.seconds, 3),
                "achieved_rate": round(self.achieved_rate, 3), "statuses": self.statuses, "versions": self.versions,
                "errors": self.errors, "p50_ms": self.percentile_ms(50), "p99_ms": self.percentile_ms(99)}


class Replayer:
    """Replay ``rows`` to ``url`` + ``route`` at ``rate`` requests per second on ``workers`` threads.

    Parameters
    ----------
    url : str
        The endpoint's base URL (``http://127.0.0.1:8000``).
    rows : DataFrame
        Model inputs (raw or typed columns); cycled when more requests are asked than rows.
    rate : float
        Requests per second (each carries ``batch_size`` rows).
    count, duration : int, float, optional
        Stop after this many requests / seconds (whichever first). A background replayer may leave
        both unset and is then stopped by :meth:`stop`.
    progress : bool, optional
        A tqdm progress bar on stderr; default: when stderr is a terminal.
    """

    def __init__(self, url: str, rows: pd.DataFrame, rate: float = 50.0, *, count: int | None = None,
                 duration: float | None = None, workers: int = 4, batch_size: int = 10, timeout: float = 10.0,
                 route: str = "/invocations", progress: bool | None = None):
        if not (isinstance(rate, (int, float)) and rate > 0):
            raise ParameterError(f"replay rate must be a positive number of requests per second, got {rate!r}", name="rate")
        if int(workers) < 1:
            raise ParameterError(f"workers must be at least 1, got {workers!r}", name="workers")
        self.url = url.rstrip("/") + route
        self.bodies = request_bodies(rows, batch_size)
        size = int(batch_size)
        self.batch_rows = [min(size, len(rows) - i) for i in range(0, len(rows), size)]  # rows in each body
        self.rate, self.count, self.duration = float(rate), count, duration
        self.workers, self.timeout = int(workers), float(timeout)
        self.progress = sys.stderr.isatty() if progress is None else progress
        self.result = ReplayResult(url=self.url, rate=self.rate)
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._next = 0
        self._threads: list[threading.Thread] = []
        self._bar = None
        self._start = 0.0

    # ---- scheduling ------------------------------------------------------------------------------
    def _take(self) -> int | None:
        """The next request index, or None when the replay is over."""
        with self._lock:
            i = self._next
            if self._stop.is_set() or (self.count is not None and i >= self.count):
                return None
            if self.duration is not None and i / self.rate >= self.duration:
                return None
            self._next += 1
            return i

    def _record(self, ok: bool, status: str, ms: float | None, version: str | None, rows: int, error: str = "",
                model_ms: str | None = None) -> None:
        r = self.result
        with self._lock:
            r.requests += 1
            r.statuses[status] = r.statuses.get(status, 0) + 1
            if ok:
                r.succeeded += 1
                r.rows += rows
                r.latencies_ms.append(ms)
                if model_ms:
                    r.model_ms.append(float(model_ms))
                if version:
                    r.versions[version] = r.versions.get(version, 0) + 1
            else:
                r.failed += 1
                if len(r.errors) < KEPT_ERRORS:
                    r.errors.append(error)
            if self._bar is not None:
                self._bar.update(1)
                if not ok:
                    self._bar.set_postfix(failed=r.failed, refresh=False)

    def _worker(self) -> None:
        import httpx

        with httpx.Client(timeout=self.timeout, headers={"content-type": "application/json"}) as client:
            while (i := self._take()) is not None:
                delay = self._start + i / self.rate - time.monotonic()
                if delay > 0 and self._stop.wait(delay):
                    return
                body = self.bodies[i % len(self.bodies)]
                rows = self.batch_rows[i % len(self.bodies)]
                t0 = time.perf_counter()
                try:
                    resp = client.post(self.url, content=body)
                except httpx.TimeoutException as exc:
                    self._record(False, "timeout", None, None, rows, f"request {i}: timeout after {self.timeout} s ({exc})")
                    continue
                except httpx.HTTPError as exc:
                    self._record(False, "connection_error", None, None, rows, f"request {i}: {type(exc).__name__}: {exc}")
                    continue
                ms = (time.perf_counter() - t0) * 1000.0
                ok = 200 <= resp.status_code < 300
                self._record(ok, str(resp.status_code), ms, resp.headers.get("x-model-version"), rows,
                             "" if ok else f"request {i}: HTTP {resp.status_code}: {resp.text[:200]}",
                             resp.headers.get("x-model-latency-ms"))

    # ---- control ---------------------------------------------------------------------------------
    def start(self) -> "Replayer":
        """Start the workers in the background and return at once."""
        if self._threads:
            return self
        if self.progress:
            from tqdm import tqdm  # the text bar: JupyterLab shows it too, without ipywidgets

            self._bar = tqdm(total=self.count, unit="req", desc="replay", file=sys.stderr)
        self._start = time.monotonic()
        self._threads = [threading.Thread(target=self._worker, name=f"replay-{n}", daemon=True) for n in range(self.workers)]
        for t in self._threads:
            t.start()
        return self

    def wait(self) -> ReplayResult:
        """Block until the count or duration is reached (or :meth:`stop` is called)."""
        for t in self._threads:
            t.join()
        return self._finish()

    def stop(self) -> ReplayResult:
        """Stop sending (requests in flight complete) and return the result."""
        self._stop.set()
        return self.wait()

    def _finish(self) -> ReplayResult:
        self.result.seconds = time.monotonic() - self._start if self._start else 0.0
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        return self.result

    def __enter__(self) -> "Replayer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def replay(url: str, rows: pd.DataFrame, rate: float = 50.0, *, count: int | None = None, duration: float | None = None,
           workers: int = 4, batch_size: int = 10, timeout: float = 10.0, route: str = "/invocations",
           progress: bool | None = None) -> ReplayResult:
    """Replay ``rows`` to ``url`` at ``rate`` requests/s until ``count`` requests or ``duration`` seconds.

    Raises
    ------
    ParameterError
        Neither ``count`` nor ``duration`` given (a replay in the foreground must end), or a bad rate.
    """
    if count is None and duration is None:
        raise ParameterError("replay needs count or duration (or both) so it ends; e.g. duration=30", name="duration")
    return Replayer(url, rows, rate, count=count, duration=duration, workers=workers, batch_size=batch_size,
                    timeout=timeout, route=route, progress=progress).start().wait()
