"""What a deploy target reports about its variants' traffic, in one shape whatever the source.

A :class:`Window` is one variant's traffic over a time span (requests, errors, timeouts, latencies,
served churn scores) with the source of its numbers; :class:`TargetLimits` are the platform's
traffic and telemetry limits. Targets build windows from their own telemetry (the local router's ring
buffer, a server's ``/metrics``, a cloud's metrics service); the rollout controller judges them.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

#: Variant statuses that mean "serving": SageMaker InService, Azure Succeeded, Vertex deployed, local ready.
LIVE_STATUSES = ("ready", "running", "inservice", "succeeded", "live", "deployed")


def p99(values: Sequence[float]) -> float | None:
    """The 99th percentile (None for no values)."""
    return float(np.percentile(np.asarray(values, dtype=float), 99)) if len(values) else None


@dataclass(frozen=True)
class Window:
    """One variant's traffic over a time window, as the target recorded it.

    ``errors`` counts 5xx answers and connection failures, ``timeouts`` requests that timed out,
    ``client_errors`` 4xx answers (the same traffic goes to every variant, so a challenger answering
    4xx where the champion does not is the challenger's fault); ``latencies_ms`` and ``scores`` (churn
    probabilities, one per scored row) come from the successful requests. ``source`` names where the
    numbers come from.
    """

    requests: int = 0
    errors: int = 0
    timeouts: int = 0
    latencies_ms: tuple[float, ...] = ()
    scores: tuple[float, ...] = ()
    source: str = ""
    client_errors: int = 0

    @classmethod
    def from_dict(cls, d: dict | None, source: str = "") -> Window:
        d = d or {}
        return cls(int(d.get("requests", 0)), int(d.get("errors", 0)), int(d.get("timeouts", 0)),
                   tuple(float(x) for x in d.get("latencies_ms", ())), tuple(float(x) for x in d.get("scores", ())),
                   str(d.get("source", source)), int(d.get("client_errors", 0)))

    @property
    def answered(self) -> int:
        """Requests answered with predictions (neither 4xx, 5xx nor timed out)."""
        return max(self.requests - self.errors - self.timeouts - self.client_errors, 0)

    @property
    def failures(self) -> int:
        return self.errors + self.timeouts

    @property
    def error_rate(self) -> float:
        return self.failures / self.requests if self.requests else 0.0

    @property
    def p99_ms(self) -> float | None:
        return p99(self.latencies_ms)

    def to_dict(self) -> dict:
        return {"requests": self.requests, "errors": self.errors, "timeouts": self.timeouts,
                "latencies_ms": list(self.latencies_ms), "scores": list(self.scores), "source": self.source,
                "client_errors": self.client_errors}


@dataclass(frozen=True)
class TargetLimits:
    """A platform's limits the controller checks before sending any request.

    ``min_weight_step``: the smallest traffic share change the platform applies (percent);
    ``max_variants``: variants behind one endpoint; ``telemetry_period_s`` and ``telemetry_delay_s``:
    the metric resolution and ingestion delay, whose sum is the shortest bake the telemetry can judge;
    ``scores_delayed``: the served scores come from a capture delivered apart from the request metrics,
    so a window's scores can lag its request counts.
    """

    max_variants: int = 10
    min_weight_step: int = 1
    telemetry_period_s: float = 0.0
    telemetry_delay_s: float = 0.0
    notes: dict = field(default_factory=dict)
    scores_delayed: bool = False

    @property
    def min_bake_s(self) -> float:
        return self.telemetry_period_s + self.telemetry_delay_s


def window_from_metrics(before: str, after: str, source: str = "/metrics") -> Window:
    """The traffic between two scrapes of a churnkit server's ``/metrics`` (Prometheus text) as a Window.

    Requests and 5xx come from ``churnkit_requests_total`` on the predict routes; latencies and scores
    are rebuilt from the histograms' bucket counts (latency at each bucket's upper bound, model time
    only; a score at its bucket's middle), so p99 and PSI have the histograms' resolution. The server
    cannot see client timeouts, so ``timeouts`` is 0.
    """
    from churnkit.serve.metrics import MODEL, REQUESTS, SCORES, histogram, histogram_delta, is_predict_route, \
        parse_prometheus

    a, b = parse_prometheus(before or ""), parse_prometheus(after)

    def counter(samples, keep) -> float:
        return sum(v for labels, v in samples.get(REQUESTS, []) if keep(labels))

    def delta_buckets(name: str) -> list[tuple[float, int]]:
        """Per-bucket (not cumulative) counts between the two scrapes, by upper bound."""
        cumulative = histogram_delta(histogram(b, name), histogram(a, name))["buckets"]
        out, prev = [], 0.0
        for le, total in cumulative.items():
            out.append((le, round(total - prev)))
            prev = total
        return out

    def predict(labels):
        return is_predict_route(labels.get("route", ""))

    def server_error(labels):
        return predict(labels) and labels.get("status", "").startswith("5")

    def client_error(labels):
        return predict(labels) and labels.get("status", "").startswith("4")

    requests = int(counter(b, predict) - counter(a, predict))
    errors = int(counter(b, server_error) - counter(a, server_error))
    client_errors = int(counter(b, client_error) - counter(a, client_error))
    latencies, lower = [], 0.0
    for le, n in delta_buckets(MODEL):
        latencies += [1000.0 * (le if math.isfinite(le) else 2 * lower)] * max(n, 0)
        lower = le if math.isfinite(le) else lower
    scores, lower = [], 0.0
    for le, n in delta_buckets(SCORES):
        scores += [(lower + min(le, 1.0)) / 2] * max(n, 0)
        lower = min(le, 1.0)
    return Window(requests, errors, 0, tuple(latencies), tuple(scores), source, client_errors)


class MetricsScraper:
    """Per-variant windows from each variant's ``/metrics``, for targets whose variants expose it.

    Every :meth:`windows` call scrapes each variant and keeps the scrape; the window since ``since``
    is the latest scrape minus the last one taken at or before ``since`` (the first one otherwise).
    A variant that does not answer shows no traffic; its status check decides.
    """

    def __init__(self):
        self.history: dict[str, list[tuple[float, str]]] = {}

    def windows(self, urls: dict[str, str], since: float) -> dict[str, Window]:
        import httpx

        now, out = time.time(), {}
        for name, url in urls.items():
            try:
                text = httpx.get(url.rstrip("/") + "/metrics", timeout=10.0).text
            except httpx.HTTPError:
                continue
            seen = self.history.setdefault(name, [])
            seen.append((now, text))
            before = [t for ts, t in seen if ts <= since] or [seen[0][1]]
            out[name] = window_from_metrics(before[-1], text, source=f"{url.rstrip('/')}/metrics")
        return out


def scored_in_folder(capture_dir: Path, since: float, limit: int = 200):
    """Up to ``limit`` rows a ``churnkit serve --capture-dir`` folder captured since ``since``, with the score
    served for each (``churn_probability``) and the version that answered (None when nothing was captured)."""
    import pandas as pd

    from churnkit.serve.capture import read_capture

    if not Path(capture_dir).is_dir():
        return None
    frame = read_capture(capture_dir)
    frame = frame[frame["time"] >= pd.Timestamp(since, unit="s", tz="UTC")] if len(frame) else frame
    if not len(frame):
        return None
    if len(frame) > limit:  # evenly over the window, not only its start
        frame = frame.iloc[np.linspace(0, len(frame) - 1, limit).round().astype(int)]
    return frame.drop(columns=["time"]).reset_index(drop=True)


def captured_in_folders(capture_root: Path, variants: Sequence[str], since: float):
    """The model inputs ``variants`` served since ``since`` from ``churnkit serve --capture-dir`` folders
    ``<capture_root>/<variant>/`` (None when nothing was captured)."""
    import pandas as pd

    from churnkit.serve.capture import CAPTURE_COLUMNS, read_capture

    frames = [read_capture(capture_root / v) for v in variants if (capture_root / v).is_dir()]
    frames = [f for f in frames if len(f)]
    if not frames:
        return None
    frame = pd.concat(frames, ignore_index=True)
    frame = frame[frame["time"] >= pd.Timestamp(since, unit="s", tz="UTC")]
    return frame.drop(columns=[c for c in CAPTURE_COLUMNS if c in frame.columns])
