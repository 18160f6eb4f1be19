"""Pieces every cloud telemetry reader shares: complete metric periods, windows from per-period points,
served scores from prediction bodies, and the permission error that names what grants access.

Cloud metrics come in fixed periods (one minute on SageMaker, Azure ML and Vertex AI) and arrive late
(the ingestion delay). A reader asked for ``[since, until]`` counts only the periods that lie wholly
inside it, so a period that also saw the previous step's weights is never mixed in, and a period that
has not closed is never read as "no traffic". The controller waits ``period + delay`` past a step's
start before it judges (``DeployTarget.telemetry_resolution``).
"""

from __future__ import annotations

import base64
import json
import math
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone

from churnkit.deploy.telemetry import Window
from churnkit.exceptions import TelemetryAccessError


def complete_periods(since: float, until: float | None, period: float, delay: float = 0.0, *,
                     planned: bool = False) -> tuple[float, float]:
    """``(start, end)`` unix seconds of the whole metric periods inside ``[since, until]`` whose data has
    arrived (``until`` None = now minus the ingestion ``delay``). ``end <= start`` means none yet.
    ``planned``: a future window (a plan), not capped at what has arrived."""
    if planned:
        last = float(until)
    else:
        last = time.time() - delay if until is None else min(float(until), time.time() - delay)
    start = math.ceil(round(since / period, 6)) * period
    end = math.floor(round(last / period, 6)) * period
    return start, max(end, start)


@dataclass
class Points:
    """One variant's per-period metric points as a cloud reports them (counts per period, latency p99s)."""

    requests: float = 0.0
    errors: float = 0.0
    client_errors: float = 0.0
    latency_p99_ms: list[float] = field(default_factory=list)

    def window(self, scores: tuple[float, ...], source: str) -> Window:
        """The variant's :class:`Window`: the per-period p99 latencies stand in for the latency samples
        (their 99th percentile is the step's worst period), scores come from the capture."""
        return Window(requests=round(self.requests), errors=round(self.errors), timeouts=0,
                      latencies_ms=tuple(self.latency_p99_ms), scores=tuple(scores), source=source,
                      client_errors=round(self.client_errors))


def utc(ts: float) -> datetime:
    """A unix time stamp as an aware UTC datetime."""
    return datetime.fromtimestamp(ts, tz=timezone.utc)


def parse_time(text) -> datetime:
    """An ISO 8601 time from a capture record; the earliest time when it is missing or unreadable (such a
    record falls outside every window)."""
    try:
        return datetime.fromisoformat(str(text or ""))
    except ValueError:
        return datetime.min.replace(tzinfo=timezone.utc)


def hour_prefixes(start: float, end: float) -> list[str]:
    """``YYYY/MM/DD/HH/`` of every UTC hour from ``start`` to ``end``: how SageMaker Data Capture and Azure
    ML payload logging name their folders."""
    out, t = [], utc(start).replace(minute=0, second=0, microsecond=0)
    while t <= utc(end):
        out.append(t.strftime("%Y/%m/%d/%H/"))
        t += timedelta(hours=1)
    return out


def within(records: list[dict], start: float, end: float, time_of) -> list[dict]:
    """The ``records`` whose ``time_of(record)`` lies in ``[start, end)`` (unix seconds)."""
    lo, hi = utc(start), utc(end)
    return [r for r in records if lo <= time_of(r) < hi]


class CaptureTelemetry:
    """A cloud's telemetry reader: request counts and latency from its metrics, scores and inputs from its
    capture of requests and responses. Each cloud's reader gives the parts that differ:

    * ``points(variants, start, end)``: ``{variant: Points}`` over whole metric periods;
    * ``output_records`` / ``input_records(variant, start, end)``: capture records in the window;
    * ``scores_of`` / ``inputs_of(record)``: the probabilities served / the input rows of one record;
    * ``source(variant, start, end)``: where a window's numbers come from, for the decision record.
    """

    period: float
    delay: float

    def windows(self, variants: list[str], since: float, until: float | None = None) -> dict[str, Window]:
        """``{variant: Window}`` over the complete, ingested metric periods inside ``[since, until]``."""
        start, end = complete_periods(since, until, self.period, self.delay)
        points = self.points(variants, start, end)
        out = {}
        for variant in variants:
            scores: list[float] = []
            if end > start:
                for rec in self.output_records(variant, start, end):
                    scores += self.scores_of(rec)
            out[variant] = points[variant].window(tuple(scores), self.source(variant, start, end))
        return out

    def inputs(self, variants: list[str], since: float):
        """The captured input rows of ``variants`` since ``since`` (a DataFrame; None when nothing was captured)."""
        import pandas as pd

        rows: list[dict] = []
        for variant in variants:
            for rec in self.input_records(variant, since, time.time() + 1):
                rows += self.inputs_of(rec)
        return pd.DataFrame(rows) if rows else None

    def points(self, variants: list[str], start: float, end: float) -> dict[str, Points]:
        raise NotImplementedError

    def output_records(self, variant: str, start: float, end: float) -> list[dict]:
        raise NotImplementedError

    def input_records(self, variant: str, start: float, end: float) -> list[dict]:
        raise NotImplementedError

    def scores_of(self, record: dict) -> list[float]:
        raise NotImplementedError

    def inputs_of(self, record: dict) -> list[dict]:
        raise NotImplementedError

    def source(self, variant: str, start: float, end: float) -> str:
        raise NotImplementedError


def json_lines(data: bytes | str) -> list[dict]:
    """The records of a JSON Lines capture file; a line that is not JSON (a file cut mid-write) is skipped."""
    text = data.decode("utf-8", "replace") if isinstance(data, bytes) else data
    out = []
    for line in text.splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            continue
    return out


def scores_from_body(body) -> list[float]:
    """The churn probabilities in a prediction response body (the kit's ``{"predictions": [...]}``, the
    Vertex list alone, or a bare list of numbers); anything else gives none."""
    if isinstance(body, (bytes, str)):
        try:
            body = json.loads(body)
        except ValueError:
            return []
    preds = body.get("predictions", []) if isinstance(body, dict) else body
    out = []
    for p in preds if isinstance(preds, list) else []:
        value = p.get("churn_probability") if isinstance(p, dict) else p
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            out.append(float(value))
    return out


def instances_from_body(body) -> list[dict]:
    """The input rows of a request body in the kit's accepted JSON shapes (``instances`` as records or
    with ``columns``, ``dataframe_split``, ``dataframe_records``, Azure's ``data``)."""
    if isinstance(body, (bytes, str)):
        try:
            body = json.loads(body)
        except ValueError:
            return []
    if not isinstance(body, dict):
        return []
    if "dataframe_split" in body:
        split = body["dataframe_split"]
        return [dict(zip(split.get("columns", []), row)) for row in split.get("data", [])]
    rows = body.get("instances", body.get("dataframe_records", body.get("inputs", body.get("data", []))))
    if isinstance(rows, list) and rows and isinstance(rows[0], list) and body.get("columns"):
        return [dict(zip(body["columns"], r)) for r in rows]
    return [r for r in rows if isinstance(r, dict)] if isinstance(rows, list) else []


def decode(data: str, encoding: str) -> str:
    """Captured payload text from its encoding (``JSON``/``CSV`` as is, ``BASE64`` decoded)."""
    if (encoding or "").upper() == "BASE64":
        return base64.b64decode(data).decode("utf-8", "replace")
    return data


def access_denied(cloud: str, what: str, permission: str, output: str, error: Exception) -> TelemetryAccessError:
    """The error for a refused telemetry read, naming the permission and the Terraform output granting it."""
    folder = {"AWS": "aws", "Azure": "azure", "Google Cloud": "gcp"}[cloud]
    return TelemetryAccessError(
        f"{cloud} refused to let the rollout controller read {what}: {error}. Its identity needs {permission}; "
        f"the Terraform template grants it to the identity in the output {output!r} (templates/terraform/{folder}): "
        "run the controller as that identity or grant the permission to yours. No traffic was moved.")
