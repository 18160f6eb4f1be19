"""Several server processes on one port, with /metrics that count for all of them.

``churnkit serve --workers N`` (``auto``: one per CPU the process may use) loads the model once,
binds the socket once, then forks N workers that accept on it (the model's arrays are shared
copy-on-write). The parent restarts a worker that dies and forwards SIGTERM/SIGINT to all of them.

Metrics across workers work like Prometheus' multiprocess mode: each worker keeps its counters in
memory and writes a snapshot file (``worker-<pid>.json``) to a shared folder shortly after each
burst of requests (at most every 50 ms) and whenever it renders /metrics; /metrics adds every
worker's snapshot, so any worker answers with the totals.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import sys
import tempfile
from pathlib import Path

from churnkit.exceptions import ConfigError
from churnkit.serve.metrics import Histogram, Metrics

FLUSH_DELAY = 0.05  # seconds between a request and its worker's snapshot
ENV_WORKERS = "CHURNKIT_WORKERS"


def cpu_count() -> int:
    """CPUs this process may run on (the container's share where the scheduler limits it)."""
    try:
        return max(len(os.sched_getaffinity(0)), 1)
    except AttributeError:  # pragma: no cover - not Linux
        return max(os.cpu_count() or 1, 1)


def resolve_workers(value, default: str = "1") -> int:
    """``N`` or ``"auto"`` (one per CPU) as a worker count; ``None`` reads ``CHURNKIT_WORKERS``, else ``default``.

    Raises
    ------
    ConfigError
        Not a positive integer or ``auto``.
    """
    raw = str(value if value not in (None, "") else os.environ.get(ENV_WORKERS) or default).strip().lower()
    if raw == "auto":
        return cpu_count()
    if not raw.isdigit() or int(raw) < 1:
        raise ConfigError(f"workers {raw!r} is not a positive whole number or 'auto'; e.g. --workers 2 or --workers auto")
    return int(raw)


# ---- metrics across workers -------------------------------------------------------------------------
def _hist_state(h: Histogram) -> dict:
    return {"counts": list(h.counts), "sum": h.sum, "count": h.count}


class SharedMetrics(Metrics):
    """A worker's Metrics that snapshot to a shared folder and render the sum over every worker."""

    folder: Path
    _pending: bool

    @classmethod
    def adopt(cls, metrics: Metrics, folder) -> SharedMetrics:
        """Turn the app's Metrics object into a shared one in place (the middleware holds that object)."""
        metrics.__class__ = cls
        metrics.folder = Path(folder)
        metrics._pending = False
        metrics.flush()
        return metrics  # type: ignore[return-value]

    def state(self) -> dict:
        return {"requests": [[r, s, n] for (r, s), n in self.requests.items()], "rows": self.rows,
                "start_time": self.start_time, "model": _hist_state(self.model_latency),
                "overhead": _hist_state(self.overhead_latency), "probability": _hist_state(self.probability)}

    def flush(self) -> None:
        self._pending = False
        path = self.folder / f"worker-{os.getpid()}.json"
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.state()))
        os.replace(tmp, path)

    def observe_request(self, route: str, status: int, seconds: float, model_seconds: float | None) -> None:
        super().observe_request(route, status, seconds, model_seconds)
        if not self._pending:
            self._pending = True
            try:
                import asyncio

                asyncio.get_running_loop().call_later(FLUSH_DELAY, self.flush)
            except RuntimeError:  # outside the event loop (tests calling directly): write now
                self.flush()

    def render(self) -> str:
        self.flush()
        total = Metrics(self.info["name"], self.info["version"], self.info["sha256"])
        total.start_time = self.start_time
        for path in sorted(self.folder.glob("worker-*.json")):
            try:
                state = json.loads(path.read_text())
            except (OSError, ValueError):  # a worker replacing its file right now: its previous one is gone
                continue
            for route, status, n in state["requests"]:
                total.requests[(route, status)] = total.requests.get((route, status), 0) + n
            total.rows += state["rows"]
            total.start_time = min(total.start_time, state["start_time"])
            for hist, key in ((total.model_latency, "model"), (total.overhead_latency, "overhead"),
                              (total.probability, "probability")):
                s = state[key]
                hist.counts = [a + b for a, b in zip(hist.counts, s["counts"])]
                hist.sum += s["sum"]
                hist.count += s["count"]
        return Metrics.render(total) + (f"# HELP churnkit_workers Server processes counted above.\n"
                                        f"# TYPE churnkit_workers gauge\nchurnkit_workers "
                                        f"{len(list(self.folder.glob('worker-*.json')))}\n")


# ---- the pre-fork server --------------------------------------------------------------------------------
def bind(host: str, port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        raise ConfigError(f"cannot listen on {host}:{port} ({exc.strerror}); pick another --port or stop what uses it") from exc
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def run_workers(app, config, workers: int, announce) -> None:
    """Serve ``app`` with ``workers`` forked uvicorn servers on one socket until SIGTERM/SIGINT.

    ``config`` is the uvicorn.Config every worker runs; ``announce(port)`` prints the serve line once
    the socket listens.
    """
    import uvicorn

    sock = bind(config.host, config.port)
    folder = Path(tempfile.mkdtemp(prefix="churnkit-metrics-"))
    metrics = app.state.service.metrics
    children: dict[int, int] = {}
    stopping = False
    restarts = 10 * workers  # a worker that keeps dying (e.g. out of memory) ends the server instead

    def spawn(slot: int) -> None:
        pid = os.fork()
        if pid:
            children[pid] = slot
            return
        code = 0
        try:  # the worker: default signal handling until uvicorn installs its own
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            SharedMetrics.adopt(metrics, folder)
            uvicorn.Server(config).run(sockets=[sock])
        except BaseException:  # noqa: BLE001 - a worker reports and exits; the parent restarts it
            import traceback

            traceback.print_exc()
            code = 1
        finally:
            sys.stderr.flush()
            os._exit(code)

    def stop(signum, frame) -> None:
        nonlocal stopping
        stopping = True
        for pid in list(children):
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    try:
        for slot in range(workers):
            spawn(slot)
        announce(sock.getsockname()[1], workers)
        while children:
            try:
                pid, status = os.wait()
            except ChildProcessError:
                break
            except InterruptedError:  # pragma: no cover - PEP 475 retries os.wait
                continue
            slot = children.pop(pid, None)
            if slot is not None and not stopping and restarts <= 0:
                print("workers keep exiting; stopping the server (see the errors above)", file=sys.stderr, flush=True)
                stop(signal.SIGTERM, None)
            elif slot is not None and not stopping:
                restarts -= 1
                print(f"worker {pid} exited ({status}); starting another", file=sys.stderr, flush=True)
                spawn(slot)
    finally:
        sock.close()
        shutil.rmtree(folder, ignore_errors=True)
