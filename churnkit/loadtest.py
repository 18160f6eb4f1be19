"""Load test and sizing of one scoring endpoint, with the kit's replayer as the load generator.

:func:`loadtest` sends rows at a fixed rate for a duration (:class:`churnkit.replay.Replayer`: a fixed
schedule, so a slow server lowers the achieved rate instead of piling up requests) and reports what
the client saw (throughput, p50/p99, errors) next to what the server measured: model and overhead
latency from ``/metrics`` (the window's histogram deltas) and the ``X-Model-Latency-Ms`` headers.

:func:`ramp` raises the rate step by step until the endpoint misses the p99 objective, errors, or
falls behind the asked rate; the last step it held is the rate one instance sustains, and the
target-tracking value for autoscaling is that rate per minute less a headroom (SageMaker's
``SageMakerVariantInvocationsPerInstance`` and Vertex's request count are per instance per minute).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from churnkit.exceptions import ParameterError

DEFAULT_HEADROOM = 0.3  # keep 30 % of what one instance holds for bursts and scale-out time
MAX_ERROR_RATE = 0.01
MIN_ACHIEVED = 0.9  # a step that reaches less than 90 % of the asked rate has saturated the endpoint


def _metrics(base: str) -> str | None:
    import httpx

    try:
        resp = httpx.get(base + "/metrics", timeout=10.0)
    except httpx.HTTPError:
        return None
    return resp.text if resp.status_code == 200 else None


def _server_side(before: str | None, after: str | None) -> dict:
    """Model and overhead latency (mean, p50, p99 in ms) over the window, from two /metrics scrapes."""
    if not after:
        return {}
    from churnkit.serve.metrics import MODEL, OVERHEAD, histogram, histogram_delta, histogram_quantile, parse_prometheus

    a, b = parse_prometheus(after), parse_prometheus(before) if before else None
    out = {}
    for key, name in (("model_ms", MODEL), ("overhead_ms", OVERHEAD)):
        h = histogram_delta(histogram(a, name), b and histogram(b, name))
        if h["count"] > 0:
            out[key] = {"mean": 1000 * h["sum"] / h["count"], "p50": 1000 * histogram_quantile(0.5, h["buckets"]),
                        "p99": 1000 * histogram_quantile(0.99, h["buckets"]), "count": int(h["count"])}
    return out


@dataclass
class LoadResult:
    """One constant-rate run: the client's view and the server's split of the time."""

    url: str
    rate: float
    duration: float
    requests: int
    errors: int
    achieved_rate: float
    p50_ms: float | None
    p99_ms: float | None
    header_model_ms: float | None
    server: dict = field(default_factory=dict)
    statuses: dict = field(default_factory=dict)
    error_samples: list = field(default_factory=list)

    @property
    def error_rate(self) -> float:
        return self.errors / self.requests if self.requests else 0.0

    def to_dict(self) -> dict:
        return {"url": self.url, "rate": self.rate, "duration": self.duration, "requests": self.requests,
                "errors": self.errors, "error_rate": self.error_rate, "achieved_rate": self.achieved_rate,
                "p50_ms": self.p50_ms, "p99_ms": self.p99_ms, "header_model_ms": self.header_model_ms,
                "server": self.server, "statuses": self.statuses, "error_samples": self.error_samples}

    def summary(self) -> str:
        def ms(v):
            return "n/a" if v is None else f"{v:.1f} ms"

        lines = [f"loadtest {self.url}: {self.rate:g} req/s asked for {self.duration:g} s",
                 (f"  achieved {self.achieved_rate:.1f} req/s, {self.requests} requests, {self.errors} errors "
                 f"({self.error_rate:.1%})"),
                 f"  client latency p50 {ms(self.p50_ms)}, p99 {ms(self.p99_ms)}"]
        m, o = self.server.get("model_ms"), self.server.get("overhead_ms")
        if m or o:
            lines.append(f"  server (/metrics): model mean {ms(m and m['mean'])} p99 {ms(m and m['p99'])}, "
                         f"overhead mean {ms(o and o['mean'])} p99 {ms(o and o['p99'])}")
        if self.header_model_ms is not None:
            lines.append(f"  model latency header: mean {self.header_model_ms:.2f} ms")
        lines += [f"  error: {e}" for e in self.error_samples[:3]]
        return "\n".join(lines)


def default_rows(rows: int = 500, seed: int = 7):
    """Model inputs to send: a synthetic month without its label and ID (unseen values included)."""
    from churnkit.data import synth_month

    return synth_month(rows=rows, month=2, seed=seed).drop(columns=["churn", "customer_id"], errors="ignore")


def loadtest(url: str, rate: float, duration: float, *, rows=None, route: str = "/invocations", batch_size: int = 1,
             clients: int | None = None, timeout: float = 10.0) -> LoadResult:
    """Send ``rate`` requests/s of ``batch_size`` rows for ``duration`` seconds to ``url`` + ``route``.

    Raises
    ------
    ParameterError
        A rate or duration that is not positive.
    """
    from churnkit.replay import Replayer

    if not (isinstance(duration, int | float) and duration > 0):
        raise ParameterError(f"duration {duration!r} must be a positive number of seconds", name="duration")
    base = url.rstrip("/")
    for suffix in ("/invocations", "/score", "/predict"):
        base = base.removesuffix(suffix)
    frame = default_rows() if rows is None else rows
    # enough threads that a 50 ms answer does not hold back the schedule, but not more than the host can run
    clients = clients or max(2, min(32, math.ceil(rate * 0.05) + 1))
    before = _metrics(base)
    res = Replayer(base, frame, rate, duration=duration, workers=clients, batch_size=batch_size, timeout=timeout,
                   route=route, progress=False).start().wait()
    after = _metrics(base)
    return LoadResult(res.url, float(rate), float(duration), res.requests, res.failed, res.achieved_rate,
                      res.percentile_ms(50), res.percentile_ms(99),
                      sum(res.model_ms) / len(res.model_ms) if res.model_ms else None,
                      _server_side(before, after), dict(res.statuses), list(res.errors))


@dataclass
class RampResult:
    """The steps of a ramp and what they say about one instance."""

    p99_objective_ms: float
    headroom: float
    steps: list[LoadResult]
    held: LoadResult | None
    stopped_because: str

    @property
    def sustained_rate(self) -> float:
        return self.held.achieved_rate if self.held else 0.0

    @property
    def target_invocations_per_instance(self) -> int | None:
        """Requests per instance per minute to track: the sustained rate x 60 less the headroom."""
        return max(int(self.sustained_rate * 60 * (1 - self.headroom)), 1) if self.held else None

    def to_dict(self) -> dict:
        return {"p99_objective_ms": self.p99_objective_ms, "headroom": self.headroom,
                "steps": [s.to_dict() for s in self.steps], "sustained_rate": self.sustained_rate,
                "held_p99_ms": self.held.p99_ms if self.held else None, "stopped_because": self.stopped_because,
                "target_invocations_per_instance": self.target_invocations_per_instance}

    def summary(self) -> str:
        lines = [f"ramp under a p99 objective of {self.p99_objective_ms:g} ms:",
                 f"  {'asked/s':>8} {'achieved/s':>10} {'p50 ms':>8} {'p99 ms':>8} {'errors':>7}  model ms  overhead ms"]
        for s in self.steps:
            m, o = s.server.get("model_ms", {}), s.server.get("overhead_ms", {})
            lines.append(f"  {s.rate:>8g} {s.achieved_rate:>10.1f} {s.p50_ms or 0:>8.1f} {s.p99_ms or 0:>8.1f} "
                         f"{s.errors:>7}  {m.get('mean', float('nan')):>8.2f}  {o.get('mean', float('nan')):>11.2f}")
        lines.append(f"  stopped: {self.stopped_because}")
        if self.held is None:
            lines.append("no step held the objective: lower --rate, raise --p99-objective-ms, or fix the endpoint first")
        else:
            lines += [f"one instance holds {self.sustained_rate:.1f} req/s at p99 {self.held.p99_ms:.1f} ms",
                      (f"target tracking: --target-invocations-per-instance {self.target_invocations_per_instance} "
                      f"({self.sustained_rate:.1f} req/s x 60 s x {1 - self.headroom:.0%}, keeping {self.headroom:.0%} "
                      "headroom for bursts while new instances start)")]
        return "\n".join(lines)


def ramp(url: str, start_rate: float, step_duration: float, *, p99_objective_ms: float = 100.0, factor: float = 1.5,
         max_steps: int = 8, headroom: float = DEFAULT_HEADROOM, echo=None, **kw) -> RampResult:
    """Raise the rate by ``factor`` each ``step_duration`` seconds until a step misses the objective.

    A step fails when its p99 exceeds ``p99_objective_ms``, more than 1 % of its requests fail, or it
    achieves less than 90 % of the asked rate (the endpoint or the client fell behind).
    """
    if not p99_objective_ms > 0:
        raise ParameterError(f"p99 objective {p99_objective_ms!r} must be above 0 ms", name="p99_objective_ms")
    if not 0 <= headroom < 1:
        raise ParameterError(f"headroom {headroom!r} must be a share from 0 to below 1, e.g. 0.3", name="headroom")
    steps: list[LoadResult] = []
    held, why, rate = None, f"reached {max_steps} steps", float(start_rate)
    for _ in range(max_steps):
        step = loadtest(url, rate, step_duration, **kw)
        steps.append(step)
        if echo:
            echo(f"  {rate:g} req/s: achieved {step.achieved_rate:.1f}, p99 {step.p99_ms or 0:.1f} ms, {step.errors} errors")
        if step.error_rate > MAX_ERROR_RATE:
            why = f"{step.error_rate:.1%} errors at {rate:g} req/s"
            break
        if step.p99_ms is None or step.p99_ms > p99_objective_ms:
            why = f"p99 {step.p99_ms or float('nan'):.1f} ms above {p99_objective_ms:g} ms at {rate:g} req/s"
            break
        if step.achieved_rate < MIN_ACHIEVED * rate:
            why = f"achieved {step.achieved_rate:.1f} of {rate:g} req/s asked (saturated)"
            break
        held = step
        rate = round(rate * factor, 1)
    return RampResult(float(p99_objective_ms), float(headroom), steps, held, why)
