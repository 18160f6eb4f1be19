"""Reading what the monitor compares: tables, the serving data capture, the registry, a live server.

The input edge of :mod:`churnkit.monitor`: everything here hands plain frames, a loaded model or
Prometheus text to the pure functions of :mod:`~churnkit.monitor.report` and
:mod:`~churnkit.monitor.latency`.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from churnkit.data import Schema, read_table, synth_month
from churnkit.exceptions import DataError, MonitorError
from churnkit.monitor.latency import latency_breakdown
from churnkit.serve.capture import CAPTURE_COLUMNS, read_capture


@dataclass
class MonitorInputs:
    """Reference and current frames (plus labels and earlier months) and where each came from."""

    reference: pd.DataFrame
    current: pd.DataFrame
    labels: pd.DataFrame | None = None
    months: dict[str, pd.DataFrame] = field(default_factory=dict)
    sources: dict[str, str] = field(default_factory=dict)


def _must_exist(path: str | Path, role: str, what: str = "a CSV or Parquet file") -> Path:
    p = Path(path)
    if not p.exists():
        raise DataError(f"{role} data {str(p)!r} does not exist; pass --{role} ({role}_path) pointing to {what}")
    return p


def read_current(path: str | Path) -> pd.DataFrame:
    """A table (CSV/Parquet) or the serving data capture (a folder of, or one, JSON Lines file)."""
    p = _must_exist(path, "current", "a CSV or Parquet file or a serving capture folder")
    if p.is_dir() or p.suffix.lower() == ".jsonl":
        frame = read_capture(p)
        if frame.empty:
            raise DataError(f"capture {str(p)!r} holds no requests yet; let the server take traffic or pass a table")
        return frame
    return read_table(p)


def load_monitor_inputs(
    reference_path: str = "",
    current_path: str = "",
    labels_path: str = "",
    drift: str | None = "covariate",
    *,
    rows: int = 4000,
    seed: int = 0,
) -> MonitorInputs:
    """Read reference, current (one path, or several comma-separated months: the last is current) and labels.

    An empty ``reference_path`` is synthetic month 1; an empty ``current_path`` is synthetic month 2
    with ``drift`` ("covariate", "concept", "new_category" or "" for none).
    """
    if reference_path:
        reference, ref_src = read_table(_must_exist(reference_path, "reference")), str(reference_path)
    else:
        reference, ref_src = synth_month(rows=rows, month=1, seed=seed), f"synthetic month 1 ({rows} rows)"
    paths = [p.strip() for p in str(current_path).split(",") if p.strip()]
    months = {}
    if paths:
        stems = [Path(p).stem for p in paths[:-1]]
        for p, stem in zip(paths[:-1], stems):  # a month is its file name, unless two files share it
            months[stem if stems.count(stem) == 1 else p] = read_current(p)
        current, cur_src = read_current(paths[-1]), paths[-1]
    else:
        current = synth_month(rows=rows, month=2, seed=seed, drift=drift or None)
        cur_src = f"synthetic month 2 ({rows} rows, drift {drift or 'none'})"
    labels = read_table(_must_exist(labels_path, "labels")) if labels_path else None
    sources = {"reference": ref_src, "current": cur_src} | ({"labels": str(labels_path)} if labels_path else {})
    return MonitorInputs(reference, current, labels, months, sources)


def load_monitored_model(model_name: str = "churn", model_alias: str = "champion", *, model_uri: str = "", config=None):
    """The model to score with and its holdout metrics: ``(LoadedModel, baseline)``, or ``(None, None)``.

    ``model_uri`` (models:/..., runs:/..., a folder) wins over name and alias. A name/alias that the
    registry does not hold gives ``(None, None)`` so monitoring still reports data drift; an explicit
    ``model_uri`` that does not resolve raises :class:`~churnkit.exceptions.RegistryError`. The baseline
    is the version's ``churnkit.holdout_*`` tags recorded at registration (None outside the registry).
    """
    from churnkit import registry
    from churnkit.exceptions import RegistryError

    uri = model_uri or f"models:/{model_name}@{model_alias}"
    try:
        version = registry.find_version(uri, config)
    except RegistryError:
        if model_uri:
            raise
        return None, None
    # Load the very version the baseline comes from, even if the alias moves meanwhile.
    pinned = uri if version is None else f"models:/{version.name}/{version.version}"
    model = dataclasses.replace(registry.load_model(pinned, config), uri=uri)
    prefix = registry.TAG + "holdout_"
    tags = version.tags if version is not None else {}
    baseline = {k.removeprefix(prefix): float(v) for k, v in tags.items() if k.startswith(prefix)}
    return model, (baseline or None)


def measure_latency(metrics_url: str, payload: list[dict] | None = None, *, requests: int = 20,
                    route: str = "/invocations", timeout: float = 10.0) -> dict:
    """Probe a live server: /metrics before and after ``requests`` timed POSTs of ``payload`` rows.

    ``metrics_url`` is the server's base URL (``http://127.0.0.1:8080``) or its ``/metrics`` URL.
    Returns :func:`latency_breakdown` over the probe window (over the server's lifetime when
    ``payload`` is empty or ``requests`` is 0: no probe is sent then).
    """
    import httpx

    base = metrics_url.rstrip("/").removesuffix("/metrics")
    body = None if not payload else _json_body({"instances": payload})
    timings = []
    try:
        with httpx.Client(timeout=timeout) as client:
            before = _get_metrics(client, base)
            for _ in range(requests if body else 0):
                t0 = time.perf_counter()
                resp = client.post(base + route, content=body, headers={"content-type": "application/json"})
                total = (time.perf_counter() - t0) * 1000
                model_ms = resp.headers.get("x-model-latency-ms")
                timings.append({"total_ms": total, "model_ms": float(model_ms) if model_ms else None,
                                "status": resp.status_code, "bytes": len(body), "rows": len(payload)})
            after = _get_metrics(client, base)
    except httpx.HTTPError as exc:
        raise MonitorError(f"cannot reach the server at {base!r} ({type(exc).__name__}: {exc}); start it with "
                           "`churnkit serve --model ...` or fix --metrics-url") from exc
    # Without a probe the window would be empty: read the server's whole lifetime instead.
    return latency_breakdown(after, timings, baseline_text=before if timings else None, now=time.time())


def _get_metrics(client, base: str) -> str:
    resp = client.get(base + "/metrics")
    if resp.status_code != 200:
        raise MonitorError(f"GET {base + '/metrics'!r} answered {resp.status_code}; point --metrics-url at a churnkit server")
    return resp.text


def _json_body(obj) -> bytes:
    return json.dumps(obj, default=str).encode()


def probe_rows(frame: pd.DataFrame, schema: Schema | None = None, rows: int = 5, *,
               label_column: str = "churn") -> list[dict]:
    """A few rows as JSON-ready records: the latency probe's payload.

    With a schema, the model's input columns; without, every column but the label and the capture's own.
    """
    if schema is not None:
        cols = [c for c in schema.names if c in frame.columns]
    else:
        cols = [c for c in frame.columns if c != label_column and c not in CAPTURE_COLUMNS]
    sample = frame[cols].head(rows).astype(object)
    return [{k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in r.items()}
            for r in sample.to_dict(orient="records")]
