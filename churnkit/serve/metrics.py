"""The server's Prometheus metrics, kept in plain Python (one process, one event loop: no locks).

``churnkit_requests_total{route,status}``, ``churnkit_model_latency_seconds`` (scoring only),
``churnkit_overhead_latency_seconds`` (request time minus model time: HTTP, parsing, validation,
encoding), ``churnkit_prediction_rows_total``, ``churnkit_churn_probability`` (served scores),
``churnkit_model_info`` and ``churnkit_start_time_seconds``.
"""

from __future__ import annotations

import bisect
import math
import re
import time

import numpy as np

MODEL = "churnkit_model_latency_seconds"
OVERHEAD = "churnkit_overhead_latency_seconds"
REQUESTS = "churnkit_requests_total"
ROWS = "churnkit_prediction_rows_total"
SCORES = "churnkit_churn_probability"
START = "churnkit_start_time_seconds"
PREDICT_ROUTES = ("/invocations", "/score")  # plus any route with "predict" in it (Vertex's AIP_PREDICT_ROUTE)

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
LATENCY_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
PROBABILITY_BUCKETS = tuple(round(0.05 * k, 2) for k in range(1, 21))


def _label(value) -> str:
    return str(value).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


class Histogram:
    """Cumulative-bucket histogram in the Prometheus exposition format."""

    def __init__(self, name: str, help_text: str, buckets: tuple[float, ...]):
        self.name, self.help, self.bounds = name, help_text, tuple(buckets)
        self.counts = [0] * (len(self.bounds) + 1)
        self.sum = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.sum += value
        self.count += 1

    def observe_many(self, values: np.ndarray) -> None:
        idx = np.searchsorted(self.bounds, values, side="left")
        for i, c in enumerate(np.bincount(idx, minlength=len(self.counts)).tolist()):
            self.counts[i] += c
        self.sum += float(np.sum(values))
        self.count += len(values)

    def render(self) -> list[str]:
        lines = [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} histogram"]
        total = 0
        for bound, c in zip([*(repr(float(b)) for b in self.bounds), "+Inf"], self.counts):
            total += c
            lines.append(f'{self.name}_bucket{{le="{bound}"}} {total}')
        lines += [f"{self.name}_sum {self.sum!r}", f"{self.name}_count {self.count}"]
        return lines


class Metrics:
    """Everything /metrics reports for one served model."""

    def __init__(self, name: str, version: str, sha256: str):
        self.info = {"name": name, "version": version, "sha256": sha256}
        self.start_time = time.time()
        self.requests: dict[tuple[str, int], int] = {}
        self.rows = 0
        self.model_latency = Histogram(MODEL, "Time spent scoring (model only).", LATENCY_BUCKETS)
        self.overhead_latency = Histogram(
            OVERHEAD, "Request time minus model time (HTTP, parsing, validation).", LATENCY_BUCKETS
        )
        self.probability = Histogram(SCORES, "Churn probabilities served.", PROBABILITY_BUCKETS)

    def observe_request(self, route: str, status: int, seconds: float, model_seconds: float | None) -> None:
        key = (route, status)
        self.requests[key] = self.requests.get(key, 0) + 1
        if model_seconds is not None:
            self.model_latency.observe(model_seconds)
            self.overhead_latency.observe(max(0.0, seconds - model_seconds))

    def observe_scores(self, proba: np.ndarray) -> None:
        self.rows += len(proba)
        if len(proba) == 1:
            self.probability.observe(float(proba[0]))
        else:
            self.probability.observe_many(proba)

    def render(self) -> str:
        lines = ["# HELP churnkit_requests_total Requests by route and HTTP status.",
                 "# TYPE churnkit_requests_total counter"]
        for (route, status), n in sorted(self.requests.items()):
            lines.append(f'churnkit_requests_total{{route="{_label(route)}",status="{status}"}} {n}')
        lines += self.model_latency.render() + self.overhead_latency.render()
        lines += ["# HELP churnkit_prediction_rows_total Rows scored.", "# TYPE churnkit_prediction_rows_total counter",
                  f"churnkit_prediction_rows_total {self.rows}"]
        lines += self.probability.render()
        labels = ",".join(f'{k}="{_label(v)}"' for k, v in self.info.items())
        lines += ["# HELP churnkit_model_info The model being served.", "# TYPE churnkit_model_info gauge",
                  f"churnkit_model_info{{{labels}}} 1",
                  "# HELP churnkit_start_time_seconds Process start time (unix seconds).",
                  "# TYPE churnkit_start_time_seconds gauge", f"churnkit_start_time_seconds {self.start_time!r}"]
        return "\n".join(lines) + "\n"


# ---- reading the exposition back (the rollout's /metrics telemetry, the latency diagnosis) ------------

_LINE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)(?:\s+-?\d+)?\s*$")
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


def is_predict_route(route: str) -> bool:
    return route in PREDICT_ROUTES or "predict" in route


def parse_prometheus(text: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    """Prometheus text exposition -> ``{sample name: [(labels, value), ...]}`` (comments skipped)."""
    out: dict[str, list[tuple[dict[str, str], float]]] = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        m = _LINE.match(line)
        if not m:
            continue
        name, labels, value = m.groups()
        try:
            v = float(value)
        except ValueError:
            continue
        out.setdefault(name, []).append(({k: v.replace('\\"', '"') for k, v in _LABEL.findall(labels or "")}, v))
    return out


def histogram(samples: dict, name: str) -> dict:
    """Buckets (upper bound -> cumulative count), sum and count, added up over every label set."""
    buckets: dict[float, float] = {}
    for labels, v in samples.get(name + "_bucket", []):
        le = float(labels.get("le", "inf").replace("+Inf", "inf"))
        buckets[le] = buckets.get(le, 0.0) + v
    return {"buckets": dict(sorted(buckets.items())), "sum": sum(v for _, v in samples.get(name + "_sum", [])),
            "count": sum(v for _, v in samples.get(name + "_count", []))}


def histogram_delta(after: dict, before: dict | None) -> dict:
    """What a histogram counted between two scrapes (``after`` minus ``before``)."""
    if not before:
        return after
    return {"buckets": {le: c - before["buckets"].get(le, 0.0) for le, c in after["buckets"].items()},
            "sum": after["sum"] - before["sum"], "count": after["count"] - before["count"]}


def histogram_quantile(q: float, buckets: dict[float, float]) -> float:
    """Prometheus' histogram_quantile: linear interpolation inside the bucket holding rank q."""
    items = sorted(buckets.items())
    if not items or items[-1][1] <= 0:
        return float("nan")
    rank = q * items[-1][1]
    prev_le, prev_c = 0.0, 0.0
    for le, c in items:
        if c >= rank:
            if math.isinf(le):
                return prev_le
            return prev_le + (le - prev_le) * ((rank - prev_c) / (c - prev_c) if c > prev_c else 1.0)
        prev_le, prev_c = le, c
    return prev_le
