"""What the rollout controller reads and keeps: the per-endpoint lock and state file, request windows
(the local router's ring buffer or each variant's ``/metrics``) and captured inputs."""

from __future__ import annotations

import json
import math
import os
import socket
import sys
from pathlib import Path
from typing import Sequence

from churnkit._rollout_checks import Window, utcnow
from churnkit.config import Config
from churnkit.exceptions import RolloutError, RolloutLockedError



def rollout_dir(config: Config) -> Path:
    return config.runs_dir / "rollout"


def state_path(config: Config, endpoint: str) -> Path:
    """``<runs_dir>/rollout/<endpoint>.json``: the controller's state, rewritten at every transition."""
    return rollout_dir(config) / f"{endpoint}.json"


def read_state(path: Path) -> dict | None:
    try:
        return json.loads(Path(path).read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def write_state(path: Path, state: dict) -> None:
    """Replace the state file atomically (a reader never sees half a file)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(state | {"updated": utcnow()}, indent=2, default=str))
    os.replace(tmp, path)


def pid_alive(pid: int) -> bool:
    """True when a process with ``pid`` exists (on this host)."""
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class RolloutLock:
    """An exclusive lock on one endpoint's rollouts: ``fcntl.flock`` on a file holding the holder's pid.

    The kernel releases a ``flock`` when its holder dies (even by ``kill -9``), so a lock file left
    by a dead controller never blocks: the next one takes it over and ``stale_holder`` names the
    dead pid. A live holder makes :meth:`acquire` raise :class:`RolloutLockedError` naming it.
    """

    def __init__(self, path: str | os.PathLike, endpoint: str = ""):
        self.path = Path(path)
        self.endpoint = endpoint or self.path.stem
        self.stale_holder: dict | None = None
        self._fh = None

    def holder(self) -> dict:
        try:
            return json.loads(self.path.read_text() or "{}")
        except (FileNotFoundError, json.JSONDecodeError):
            return {}

    def acquire(self) -> "RolloutLock":
        import fcntl

        self.path.parent.mkdir(parents=True, exist_ok=True)
        fh = open(self.path, "a+")  # noqa: SIM115 - held open as long as the lock is
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.close()
            h = self.holder()
            who = f"pid {h.get('pid', '?')} on {h.get('host', '?')} since {h.get('started', '?')} ({h.get('command', '?')})"
            if h.get("host") == socket.gethostname() and not pid_alive(h.get("pid", -1)):
                who += "; that pid is gone, so a process it started still holds the file open"
            raise RolloutLockedError(
                f"another rollout holds the lock on endpoint {self.endpoint!r}: {who}; wait for it to finish or "
                f"stop it (kill {h.get('pid', '<pid>')}), then retry; lock file {str(self.path)!r}",
                pid=h.get("pid"), path=str(self.path),
            ) from None
        previous = self.holder()
        if previous.get("pid") and previous.get("pid") != os.getpid():
            self.stale_holder = previous
        fh.seek(0)
        fh.truncate()
        fh.write(json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "started": utcnow(),
                             "command": " ".join(sys.argv)[:300]}))
        fh.flush()
        self._fh = fh
        return self

    def release(self) -> None:
        import fcntl

        if self._fh is None:
            return
        self._fh.seek(0)
        self._fh.truncate()
        self._fh.flush()
        fcntl.flock(self._fh.fileno(), fcntl.LOCK_UN)
        self._fh.close()
        self._fh = None

    def __enter__(self) -> "RolloutLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()



def read_windows(target, since: float) -> dict[str, Window]:
    """``{variant: Window}`` of the requests each variant served since ``since`` (unix time).

    Uses ``target.read_window(since)`` (the local router's per-request ring buffer); targets without
    it are read through their variants' ``/metrics`` (:class:`MetricsWindows`).

    Raises
    ------
    RolloutError
        The target cannot report per-variant windows.
    """
    reader = getattr(target, "read_window", None)
    if reader is None:
        raise RolloutError(f"the {getattr(target, 'name', type(target).__name__)!r} target keeps no request window; "
                           "read its variants' /metrics with MetricsWindows instead")
    raw = reader(since) or {}
    return {name: Window.from_dict(w) for name, w in (raw.get("variants") or {}).items()}


def _is_predict_route(route: str) -> bool:
    return route in ("/invocations", "/score") or "predict" in route


def window_from_metrics(before: str, after: str) -> Window:
    """The traffic between two scrapes of a churnkit server's ``/metrics`` (Prometheus text) as a Window.

    Requests and 5xx come from ``churnkit_requests_total`` on the predict routes; latencies and scores
    are rebuilt from the histograms' bucket counts (latency at each bucket's upper bound, model time
    only; a score at its bucket's middle), so p99 and PSI have the histograms' resolution. The server
    cannot see client timeouts, so ``timeouts`` is 0.
    """
    from churnkit.monitor import histogram, histogram_delta, parse_prometheus

    a, b = parse_prometheus(before or ""), parse_prometheus(after)

    def counter(samples, keep) -> float:
        return sum(v for labels, v in samples.get("churnkit_requests_total", []) if keep(labels))

    def delta_buckets(name: str) -> list[tuple[float, int]]:
        """Per-bucket (not cumulative) counts between the two scrapes, by upper bound."""
        cumulative = histogram_delta(histogram(b, name), histogram(a, name))["buckets"]
        out, prev = [], 0.0
        for le, total in cumulative.items():
            out.append((le, round(total - prev)))
            prev = total
        return out

    def predict(labels):
        return _is_predict_route(labels.get("route", ""))

    requests = int(counter(b, predict) - counter(a, predict))
    errors = int(counter(b, lambda x: predict(x) and x.get("status", "").startswith("5"))
                 - counter(a, lambda x: predict(x) and x.get("status", "").startswith("5")))
    latencies, lower = [], 0.0
    for le, n in delta_buckets("churnkit_model_latency_seconds"):
        latencies += [1000.0 * (le if math.isfinite(le) else 2 * lower)] * max(n, 0)
        lower = le if math.isfinite(le) else lower
    scores, lower = [], 0.0
    for le, n in delta_buckets("churnkit_churn_probability"):
        scores += [(lower + min(le, 1.0)) / 2] * max(n, 0)
        lower = min(le, 1.0)
    return Window(requests, errors, 0, tuple(latencies), tuple(scores))


class MetricsWindows:
    """Per-variant windows from each variant's ``/metrics`` (targets without a router ring buffer).

    :meth:`start` scrapes every variant URL; :meth:`read` scrapes again and returns the difference.
    Works wherever the variant URLs reach the kit's server (Kubernetes services, the local serve
    processes); managed cloud endpoints route only predict calls, so there it raises RolloutError.
    """

    def __init__(self, target, variants: Sequence[str]):
        self.target, self.variants = target, list(variants)
        self.before: dict[str, str] = {}

    def _scrape(self, variants: Sequence[str] | None = None) -> dict[str, str]:
        import httpx

        live = self.target.describe()
        out = {}
        for name in variants or self.variants:
            v = live.variants.get(name)
            url = (v.url if v is not None else "") or ""
            if not url.startswith(("http://", "https://")):
                raise RolloutError(
                    f"variant {name!r} on {self.target.name} endpoint {self.target.endpoint!r} has no URL serving the "
                    f"kit's /metrics (url {url!r}), so the controller cannot judge it; use SageMaker's guardrails "
                    "(churnkit deploy --guardrails) or a target whose variants expose /metrics")
            try:
                out[name] = httpx.get(url.rstrip("/") + "/metrics", timeout=10.0).text
            except httpx.HTTPError:
                out[name] = ""  # a variant that does not answer shows no traffic; its status check decides
        return out

    def check(self, variant: str) -> None:
        """Raise RolloutError now when ``variant`` has no URL serving /metrics (before anything changes)."""
        self._scrape([variant])

    def start(self) -> None:
        self.before = self._scrape()

    def read(self) -> dict[str, Window]:
        after = self._scrape()
        return {name: window_from_metrics(self.before.get(name, ""), text) for name, text in after.items() if text}


def captured_inputs(target, variants: Sequence[str], since: float):
    """The model inputs ``variants`` served since ``since``, from the target's data capture (None if it has none).

    Uses ``target.read_inputs(variants, since)`` when the target has it, else the local target's
    capture folders ``<state_dir>/capture/<variant>/``.
    """
    import pandas as pd

    reader = getattr(target, "read_inputs", None)
    if reader is not None:
        return reader(variants, since)
    folder = getattr(target, "state_dir", None)
    if folder is None:
        return None
    from churnkit.serve.capture import read_capture

    capture = Path(folder) / "capture"
    frames = [read_capture(capture / v) for v in variants if (capture / v).is_dir()]
    frames = [f for f in frames if len(f)]
    if not frames:
        return None
    frame = pd.concat(frames, ignore_index=True)
    frame = frame[frame["time"] >= pd.Timestamp(since, unit="s", tz="UTC")]
    return frame.drop(columns=["churn_probability", "model_version", "time"])
