"""Where request time goes: server /metrics (model vs overhead) plus a client-side timing probe.

Read like SageMaker's ModelLatency vs OverheadLatency: ``churnkit_model_latency_seconds`` is the time
inside the model, ``churnkit_overhead_latency_seconds`` the rest of the server's time on a request
(parsing, validation, serialization, queueing), and what the client measured beyond both is network
plus client. Pure functions over the Prometheus text and a list of probe timings; the HTTP side is
:func:`churnkit.monitor.measure_latency`.
"""

from __future__ import annotations

import numpy as np

from churnkit.serve.metrics import (
    MODEL,
    OVERHEAD,
    REQUESTS,
    ROWS,
    START,
    histogram,
    histogram_delta,
    histogram_quantile,
    parse_prometheus,
)

NON_PREDICT_ROUTES = frozenset({"/metrics", "/ping", "/", "/health", "/version", "other"})

COLD_START_FACTOR = 5.0  # first probe request this many times the median (and 50 ms more) = cold start
SATURATION_TAIL = 5.0  # overhead p99 / p50 above this (and p99 over 50 ms) = requests queue
LARGE_PAYLOAD_ROWS = 100  # rows per request above which parsing/validation cost is payload-bound
LARGE_PAYLOAD_BYTES = 256 * 1024


def _ms_summary(hist: dict) -> dict | None:
    if hist["count"] <= 0:
        return None
    return {"mean": 1000 * hist["sum"] / hist["count"], "p50": 1000 * histogram_quantile(0.5, hist["buckets"]),
            "p99": 1000 * histogram_quantile(0.99, hist["buckets"])}


def _predict_requests(samples: dict) -> tuple[float, float]:
    """Prediction requests (all, and answered 2xx) from churnkit_requests_total{route,status}."""
    preds = [(lab, v) for lab, v in samples.get(REQUESTS, []) if lab.get("route") not in NON_PREDICT_ROUTES]
    return sum(v for _, v in preds), sum(v for lab, v in preds if lab.get("status", "").startswith("2"))


def _counter(samples: dict, name: str) -> float:
    return sum(v for _, v in samples.get(name, []))


def latency_breakdown(metrics_text: str, probe_timings: list[dict] | None = None, *,
                      baseline_text: str | None = None, now: float | None = None) -> dict:
    """Split request time into model, server overhead and network+client, and name the likely cause.

    Parameters
    ----------
    metrics_text : str
        The server's ``/metrics`` (Prometheus text) after the probe.
    probe_timings : list of dict
        Client-side timings, one per request: ``total_ms`` (wall time seen by the client), ``model_ms``
        (the ``X-Model-Latency-Ms`` header), optionally ``status``, ``bytes``, ``rows``.
    baseline_text : str, optional
        ``/metrics`` before the probe: histograms and counters are then taken over the probe window only.
    now : float, optional
        Current unix time, to report the server's uptime from ``churnkit_start_time_seconds``.

    Returns
    -------
    dict
        ``requests`` (prediction requests in the window), ``model_ms`` / ``overhead_ms`` / ``client_ms`` summaries (mean, p50, p99),
        ``breakdown_ms`` and ``shares`` (model, overhead, network_client), ``rows_per_request``,
        ``error_rate``, ``likely_cause`` and ``explanation``.
    """
    after = parse_prometheus(metrics_text)
    before = parse_prometheus(baseline_text) if baseline_text else None
    model_h = histogram_delta(histogram(after, MODEL), before and histogram(before, MODEL))
    over_h = histogram_delta(histogram(after, OVERHEAD), before and histogram(before, OVERHEAD))
    total_req, ok_req = _predict_requests(after)
    if before:
        total_req, ok_req = (a - b for a, b in zip((total_req, ok_req), _predict_requests(before)))
    rows = _counter(after, ROWS) - (_counter(before, ROWS) if before else 0.0)
    probe = [t for t in (probe_timings or []) if t.get("total_ms") is not None]
    totals = np.array([t["total_ms"] for t in probe], dtype=float)
    headers = np.array([t["model_ms"] for t in probe if t.get("model_ms") is not None], dtype=float)
    server_model, server_over = _ms_summary(model_h), _ms_summary(over_h)
    client = None if not len(totals) else {"mean": float(totals.mean()), "p50": float(np.percentile(totals, 50)),
                                            "p99": float(np.percentile(totals, 99))}
    model_ms = float(headers.mean()) if len(headers) else (server_model["mean"] if server_model else None)
    over_ms = server_over["mean"] if server_over else None
    net_ms = None
    if client is not None and model_ms is not None:
        net_ms = max(client["mean"] - model_ms - (over_ms or 0.0), 0.0)
    parts = {"model": model_ms, "overhead": over_ms, "network_client": net_ms}
    known = {k: v for k, v in parts.items() if v is not None}
    whole = sum(known.values())
    shares = {k: (v / whole if whole > 0 else None) for k, v in known.items()}
    start = _counter(after, START)
    out = {
        "requests": int(total_req), "probe_requests": len(probe),
        "error_rate": float((total_req - ok_req) / total_req) if total_req > 0 else 0.0,
        "rows_per_request": float(rows / ok_req) if ok_req > 0 else None,
        "model_ms": server_model, "overhead_ms": server_over, "client_ms": client,
        "header_model_ms": float(headers.mean()) if len(headers) else None,
        "breakdown_ms": parts, "shares": shares,
        "uptime_seconds": float(now - start) if now and start else None,
    }
    cause, why = _likely_cause(out, totals, probe)
    return out | {"likely_cause": cause, "explanation": why}


def _likely_cause(out: dict, totals: np.ndarray, probe: list[dict]) -> tuple[str, str]:
    if len(totals) >= 3:
        first, rest = totals[0], float(np.median(totals[1:]))
        if first > COLD_START_FACTOR * rest and first - rest > 50:
            return "cold start", (f"the first request took {first:.0f} ms against a median of {rest:.1f} ms after it: "
                                  "lazy loading on first use; send a warm-up request at start-up or keep an instance warm")
    shares = out["shares"]
    if not any(shares.values()):  # nothing measured, or every measured part took 0 ms
        return "unknown", "no latency data: the server reported no timed predictions and no probe ran"
    top = max(shares, key=lambda k: shares[k] or 0.0)
    bd = out["breakdown_ms"]
    over = out["overhead_ms"]
    rows = out["rows_per_request"] or 0.0
    sent = max((t.get("bytes") or 0 for t in probe), default=0)
    if out["error_rate"] > 0.05 or (over and over["p99"] > SATURATION_TAIL * max(over["p50"], 1e-3) and over["p99"] > 50):
        tail = f"overhead p99 {over['p99']:.0f} ms vs p50 {over['p50']:.1f} ms" if over else ""
        return "saturation", (f"requests queue in the server ({tail}, error rate {out['error_rate']:.1%}); "
                              "add workers or instances, or lower the client's concurrency")
    if top == "overhead" and (rows > LARGE_PAYLOAD_ROWS or sent > LARGE_PAYLOAD_BYTES):
        return "payload size", (f"server overhead {bd['overhead']:.1f} ms dominates with {rows:.0f} rows "
                                f"({sent} bytes) per request: parsing and validating the body costs more than the "
                                "model; send smaller batches or the compact dataframe_split/CSV body")
    if top == "model":
        return "model", (f"the model itself takes {bd['model']:.1f} ms of each request ({shares['model']:.0%}); "
                         "a lighter model (logreg), fewer features or batching more rows per call helps")
    if top == "network_client":
        return "network and client", (f"{bd['network_client']:.1f} ms ({shares['network_client']:.0%}) is spent outside "
                                      "the server: client serialization, connection set-up, the network; reuse "
                                      "connections (keep-alive) and run the client next to the endpoint")
    return "server overhead", (f"server overhead {bd['overhead']:.1f} ms ({shares['overhead']:.0%}) outweighs the model "
                               f"{(bd['model'] or 0):.1f} ms on small payloads: check middleware, logging and capture")
