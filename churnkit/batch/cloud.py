"""What the three batch services share: job names, waiting with progress, and their raw output as one frame.

Every service's raw output is read into a *raw score frame*: one row per input row the service
answered, columns ``id`` (text, as sent), ``churn_probability`` (float, NaN when refused) and
``error`` ("" when scored). Rows the service never answered (a job cut short) are absent, so rows in =
scored + refused + missing, and missing rows are counted, never invented.
"""

from __future__ import annotations

import csv
import io
import re
import sys
import time
from dataclasses import dataclass, field

from churnkit.exceptions import CloudBatchInterrupted, CloudBatchJobError, CloudBatchLimitError

RAW_COLUMNS = ("id", "churn_probability", "error")
#: Lines of the first error file shown with a failed job.
ERROR_LINES = 10


def raw_frame(rows: list[tuple]):
    """A raw score frame from ``(id, probability or None, error)`` tuples."""
    import numpy as np
    import pandas as pd

    frame = pd.DataFrame(rows, columns=list(RAW_COLUMNS))
    frame["id"] = frame["id"].astype("string")
    frame["churn_probability"] = pd.to_numeric(frame["churn_probability"], errors="coerce").astype(np.float64)
    frame["error"] = frame["error"].fillna("").astype(str)
    return frame


def stage_csv(frame, names: list[str], id_column: str) -> bytes:
    """Headerless CSV lines: the id, then ``names`` in order; a missing value is an empty field."""
    import pandas as pd

    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    cols = [id_column, *names]
    for row in frame[cols].itertuples(index=False, name=None):
        writer.writerow(["" if v is None or (not isinstance(v, str) and pd.isna(v)) else v for v in row])
    return buf.getvalue().encode()


def stage_jsonl(frame, names: list[str], id_column: str) -> bytes:
    """JSON Lines objects: the id and ``names`` (null for a missing value)."""
    cols = [id_column, *names]
    text = frame[cols].astype(object).where(frame[cols].notna(), None).to_json(orient="records", lines=True)
    return text.encode() if text.endswith("\n") else (text + "\n").encode()


def sendable(table, schema, id_column: str):
    """The rows of ``table`` (pyarrow) the kit would score, as a pandas frame of the values as read; rows it
    refuses (no id, a bad number: :func:`churnkit.batch.source.type_batch`) are never sent nor billed."""
    import numpy as np

    from churnkit.batch.source import type_batch

    if not table.num_rows:
        return table.to_pandas()
    keep = type_batch(table.combine_chunks().to_batches()[0], schema, id_column).keep
    return table.filter(np.asarray(keep)).to_pandas()


def job_name(model_name: str, version: str, stamp: str, limit: int = 63) -> str:
    """``churnkit-<model>-v<version>-<stamp>``: letters, digits and '-', at most ``limit`` characters."""
    base = re.sub(r"[^a-zA-Z0-9-]+", "-", f"churnkit-{model_name}-v{version}").strip("-")
    name = f"{base[: limit - len(stamp) - 1].rstrip('-')}-{stamp}"
    return name


@dataclass
class JobReport:
    """Where a batch job ended: its name, state, row counts from the service, outputs and the log of states."""

    service: str
    job: str
    state: str
    rows_in: int | None = None
    rows_out: int | None = None
    rows_failed: int | None = None
    output_uri: str = ""
    states: list[tuple[float, str]] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {"service": self.service, "job": self.job, "state": self.state, "rows_in": self.rows_in,
                "rows_out": self.rows_out, "rows_failed": self.rows_failed, "output_uri": self.output_uri}


def wait_for_job(service: str, job: str, read_state, *, done: set, failed: set, poll_seconds: float = 30.0,
                 timeout: float = 24 * 3600.0, progress=None, stop_hint: str = "", resume_hint: str = "",
                 failure=None, sleep=time.sleep) -> tuple[str, list]:
    """Poll ``read_state()`` (→ state text) until a state in ``done`` or ``failed``; print each change.

    Returns the final state and the ``(elapsed seconds, state)`` log.

    Raises
    ------
    CloudBatchJobError
        The job failed (``failure()`` gives the reason and the first error lines), or did not finish in ``timeout``.
    CloudBatchInterrupted
        Ctrl-C while waiting: the job keeps running; the error names it and how to resume or stop it.
    """
    progress = progress or (lambda text: print(text, file=sys.stderr, flush=True))
    t0 = time.monotonic()
    log, last = [], None
    try:
        while True:
            state = read_state()
            elapsed = time.monotonic() - t0
            if state != last:
                log.append((round(elapsed, 1), state))
                progress(f"{service} job {job}: {state} after {elapsed:.0f} s")
                last = state
            if state in done:
                return state, log
            if state in failed:
                reason, lines = failure() if failure else ("", [])
                shown = "".join(f"\n  {line}" for line in lines)
                raise CloudBatchJobError(f"{service} job {job!r} ended {state}: {reason or 'no reason given'}"
                                         + (f"; first lines of its error file:{shown}" if lines else ""),
                                         job=job, reason=reason, error_lines=lines)
            if elapsed > timeout:
                raise CloudBatchJobError(f"{service} job {job!r} is still {state} after {timeout:.0f} s; it keeps "
                                         f"running on the service: {resume_hint} to wait again, {stop_hint} to stop it",
                                         job=job, reason=f"timeout while {state}")
            sleep(poll_seconds)
    except KeyboardInterrupt:
        raise CloudBatchInterrupted(
            f"stopped waiting for {service} job {job!r} ({last or 'state unknown'}); it keeps running (and billing) on "
            f"the service. Wait for it again: {resume_hint}; stop it: {stop_hint}",
            job=job, resume=resume_hint, stop=stop_hint) from None


def check_limit(ok: bool, field_name: str, value, message: str) -> None:
    """Raise CloudBatchLimitError(field, value) with ``message`` unless ``ok``."""
    if not ok:
        raise CloudBatchLimitError(message, field=field_name, value=value)


def check_region(service: str, what: str, region: str, resource_region: str, fix: str) -> None:
    """A resource (a bucket, a workspace) in another region than the job: refused before anything is sent."""
    if resource_region and region and resource_region.lower() != region.lower():
        raise CloudBatchLimitError(
            f"{service} batch job would run in {region!r} but {what} is in {resource_region!r}; the service refuses "
            f"(or bills cross-region transfer for) that: {fix}", field="region", value=resource_region)


def write_raw_scores(raw, table, schema, id_column: str, writer, *, explainer=None, reasons: int = 0,
                     service: str = "the service") -> dict:
    """Stage a service's raw scores through ``writer`` (ranks, deciles, reasons and row accounting as every engine).

    ``table`` is the input as sent (pyarrow, input order). Its rows are joined to ``raw`` by id: a row the
    service scored keeps the service's probability (reasons are computed here from the same input), a row it
    refused goes to ``errors/`` with the service's reason, and a row it never answered goes there too ("no
    answer"). Rows the kit itself refuses before sending (no id, a bad number) are refused with their reason.

    Returns ``{"rows_in", "rows_scored", "rows_refused", "rows_unanswered"}``; the caller commits with rows_in.
    """
    import numpy as np
    import pyarrow as pa

    from churnkit.batch.output import PROBABILITY
    from churnkit.batch.source import type_batch

    rb = table.combine_chunks().to_batches()[0] if table.num_rows else None
    n = table.num_rows
    ids = [None if v is None else str(v) for v in table.column(id_column).to_pylist()]
    answered: dict[str, tuple] = {}
    for ident, p, err in zip(raw["id"].tolist(), raw["churn_probability"].tolist(), raw["error"].tolist()):
        answered.setdefault(str(ident), (p, err))
    typed = type_batch(rb, schema, id_column) if rb is not None else None
    kept_pos = np.cumsum(typed.keep) - 1 if typed is not None else np.zeros(0, dtype=int)
    scored_rows, probs, refused = [], [], []
    unanswered = 0
    for i in range(n):
        if typed is not None and not typed.keep[i]:
            refused.append((ids[i], i, "; ".join(typed.problems[i])))
            continue
        got = answered.get(ids[i])
        if got is None:
            unanswered += 1
            refused.append((ids[i], i, f"no answer from {service} for this row (the job output lacks its id)"))
        elif got[1] or got[0] is None or got[0] != got[0]:
            refused.append((ids[i], i, f"refused by {service}: {got[1] or 'no probability'}"))
        else:
            scored_rows.append(i)
            probs.append(float(got[0]))
    rows = np.asarray(scored_rows, dtype=np.int64)
    cols = {id_column: table.column(id_column).take(pa.array(rows)), PROBABILITY: pa.array(probs, type=pa.float64())}
    if reasons and explainer is not None:  # the local engine's reason columns and types (churnkit.batch.engine)
        from churnkit.batch.engine import reason_types
        from churnkit.batch.reasons import top_reasons
        from churnkit.serve.validation import Batch

        found = {}
        if len(rows):
            sel = kept_pos[rows]
            batch = Batch(numeric=typed.batch.numeric[sel], categorical=[[c[j] for j in sel.tolist()]
                                                                          for c in typed.batch.categorical])
            found = top_reasons(explainer, batch, reasons)
        cols |= {k: pa.array(found[k], type=t) if k in found else pa.nulls(len(rows), t)
                 for k, t in reason_types(reasons).items()}
    writer.add(pa.table(cols))
    writer.add_errors(pa.table({id_column: pa.array([r[0] for r in refused], type=pa.string()),
                                "input_row": pa.array([r[1] for r in refused], type=pa.int64()),
                                "reason": pa.array([r[2] for r in refused], type=pa.string())}))
    return {"rows_in": n, "rows_scored": len(scored_rows), "rows_refused": len(refused), "rows_unanswered": unanswered}
