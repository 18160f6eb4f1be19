"""The local engine: record batches streamed through the compiled scorer in worker processes.

The parent process reads the input in record batches (pyarrow, its own I/O threads) and keeps at most
two batches per worker in flight; each worker process loaded the compiled scorer and the reasons once
(:class:`Kernel`, built from bytes: no sklearn, no MLflow in the workers) and returns the scored rows,
the refused rows and its share of a uniform sample of the scored base (for drift). The parent stages
the results in input order with :class:`churnkit.batch.output.ScoreWriter`, which ranks them exactly in
a second pass over the staged scores. Memory stays bounded by the batches in flight plus 16 bytes and
the id per scored row for the ranking. A progress bar goes to stderr when it is a terminal.
"""

from __future__ import annotations

import collections
import multiprocessing
import os
import sys
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from churnkit.batch.output import PROBABILITY, ScoreWriter
from churnkit.batch.reasons import Explainer, top_reasons
from churnkit.batch.source import BATCH_ROWS, Source, type_batch
from churnkit.data import Schema
from churnkit.exceptions import ScoreError

#: Rows of the scored base kept (a uniform sample) to compare with the model's reference.
SAMPLE_ROWS = 20_000
SAMPLE_KEY = "__sample_key__"


@dataclass(frozen=True)
class KernelSpec:
    """Everything a worker needs to score, as plain data (pickled once per worker process).

    ``compiled``: the compiled scorer's bytes (:func:`churnkit.serve.compiled.to_bytes`); when empty
    the worker loads the sklearn pipeline from ``folder`` (a model with no compiled path).
    """

    schema: dict
    id_column: str
    compiled: bytes = b""
    folder: str = ""
    reasons: int = 0
    explainer: bytes = b""
    passthrough: tuple = ()
    sample_rows: int = SAMPLE_ROWS
    seed: int = 0


@dataclass
class Scored:
    """What one record batch became."""

    table: pa.Table  # id, churn_probability, reasons, passthrough
    errors: pa.Table  # id (text), input_row, reason
    sample: pa.Table | None = None  # model columns + churn_probability + SAMPLE_KEY, at most sample_rows


class Kernel:
    """The compiled scorer and the reasons, loaded once per process; scores record batches."""

    def __init__(self, spec: KernelSpec):
        self.spec = spec
        self.schema = Schema.from_dict(spec.schema)
        if spec.compiled:
            from churnkit.serve.compiled import from_bytes

            self.model = from_bytes(spec.compiled)
        else:
            from churnkit.serve.loading import load_model_folder
            from churnkit.serve.scorer import _Sklearn

            self.model = _Sklearn(load_model_folder(spec.folder).pipeline, self.schema)
        self.explainer = Explainer.from_bytes(self.model, self.schema, spec.explainer) if spec.reasons else None

    def score(self, rb: pa.RecordBatch, offset: int | None = None) -> Scored:
        """Score one record batch; ``offset`` is its first row's position in the input (for ``input_row``)."""
        spec = self.spec
        typed = type_batch(rb, self.schema, spec.id_column)
        kept = rb.filter(pa.array(typed.keep)) if not typed.keep.all() else rb
        batch = typed.batch
        p = self._predict(batch)
        cols = {spec.id_column: kept.column(spec.id_column), PROBABILITY: pa.array(p, type=pa.float64())}
        if self.explainer is not None and spec.reasons:
            found = top_reasons(self.explainer, batch, spec.reasons) if batch.rows else {}
            cols |= {k: pa.array(found[k], type=t) if k in found else pa.nulls(batch.rows, t)  # k > columns: null
                     for k, t in reason_types(spec.reasons).items()}
        for name in spec.passthrough:
            cols[name] = kept.column(name)
        table = pa.table(cols)
        refused = np.flatnonzero(~typed.keep)
        errors = pa.table({
            spec.id_column: pc.cast(rb.column(spec.id_column).take(pa.array(refused, type=pa.int64())), pa.string()),
            "input_row": pa.array(refused + offset if offset is not None else [None] * len(refused), type=pa.int64()),
            "reason": pa.array(["; ".join(typed.problems[i]) for i in refused.tolist()], type=pa.string()),
        })
        return Scored(table, errors, self._sample(kept, p, offset))

    def _predict(self, batch) -> np.ndarray:
        """Probabilities by the vectorised path whatever the batch size: a one-row batch (which the compiled
        scorer sums in plain Python) is scored as two, so every engine's batching gives the same bits."""
        if batch.rows == 0:
            return np.zeros(0)
        if batch.rows == 1:
            from churnkit.serve.validation import Batch

            two = Batch(numeric=np.repeat(batch.numeric, 2, axis=0), categorical=[c * 2 for c in batch.categorical])
            return self.model.predict(two)[:1]
        return self.model.predict(batch)

    def _sample(self, kept: pa.RecordBatch, p: np.ndarray, offset: int | None) -> pa.Table | None:
        """The ``sample_rows`` rows with the smallest random keys (a bottom-k sketch: merged, still uniform)."""
        n = kept.num_rows
        if not self.spec.sample_rows or not n:
            return None
        keys = np.random.default_rng([self.spec.seed, int(offset or 0)]).random(n)
        take = np.argsort(keys)[: self.spec.sample_rows]
        cols = {name: kept.column(name).take(pa.array(take)) for name in self.schema.names}
        cols[PROBABILITY] = pa.array(p[take])
        cols[SAMPLE_KEY] = pa.array(keys[take])
        return pa.table(cols)


def reason_types(k: int) -> dict[str, pa.DataType]:
    """The reason columns' types (fixed: a batch whose values are all missing still writes text)."""
    from churnkit.batch.output import reason_columns

    return {c: pa.float64() if c.endswith("_contribution") else pa.string() for c in reason_columns(k)}


def merge_sample(held: pa.Table | None, new: pa.Table | None, rows: int) -> pa.Table | None:
    """Keep the ``rows`` smallest keys of both."""
    if new is None:
        return held
    if held is None:
        both = new
    else:
        both = pa.concat_tables([held, new.cast(held.schema)], promote_options="permissive") \
            if new.schema != held.schema else pa.concat_tables([held, new])
    if both.num_rows <= rows:
        return both
    order = pc.sort_indices(both, sort_keys=[(SAMPLE_KEY, "ascending")])[:rows]
    return both.take(order)


# --------------------------------------------------------------------------------------------------
# Worker processes
# --------------------------------------------------------------------------------------------------

_KERNEL: Kernel | None = None


def _init_worker(spec: KernelSpec) -> None:
    global _KERNEL
    _watch_parent(os.getppid())
    _KERNEL = Kernel(spec)


def _watch_parent(parent: int, every: float = 0.5) -> None:
    """End this worker when its parent dies (a killed ``churnkit score`` must not leave workers behind)."""
    import threading
    import time

    def watch():
        while os.getppid() == parent:
            time.sleep(every)
        os._exit(1)

    threading.Thread(target=watch, name="churnkit-parent-watch", daemon=True).start()


def _score_in_worker(rb: pa.RecordBatch, offset: int) -> Scored:
    return _KERNEL.score(rb, offset)


@dataclass
class LocalRun:
    """What the local engine did: rows read, the sample of the scored base, the workers used."""

    rows_in: int = 0
    workers: int = 1
    batches: int = 0
    sample: pa.Table | None = None
    notes: list[str] = field(default_factory=list)


def default_workers() -> int:
    """The cores this process may use."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


def run_local(source: Source, spec: KernelSpec, writer: ScoreWriter, *, workers: int | None = None,
              progress: bool | None = None, batch_rows: int | None = None) -> LocalRun:
    """Stream ``source`` through ``spec``'s scorer into ``writer`` (not committed here).

    ``workers`` processes (default: every core); the first batch is scored in this process and the
    workers start with the second, so an input of one batch never starts them.
    """
    workers = default_workers() if workers is None else max(1, int(workers))
    batch_rows = int(batch_rows or BATCH_ROWS)
    show = sys.stderr.isatty() if progress is None else progress
    bar = None
    if show:
        from tqdm import tqdm

        bar = tqdm(total=source.count_rows(), unit="rows", unit_scale=True, desc="score", file=sys.stderr)
    run = LocalRun(workers=workers)
    local = Kernel(spec)
    pool = None
    pending: collections.deque = collections.deque()

    def take(result: Scored) -> None:
        writer.add(result.table)
        writer.add_errors(result.errors)
        run.sample = merge_sample(run.sample, result.sample, spec.sample_rows)
        if bar is not None:
            bar.update(result.table.num_rows + result.errors.num_rows)

    try:
        for rb in source.batches(batch_rows):
            offset = run.rows_in
            run.rows_in += rb.num_rows
            run.batches += 1
            if run.batches == 1 or workers == 1:
                take(local.score(rb, offset))
                continue
            if pool is None:
                # spawn: the parent holds pyarrow's I/O threads, which fork would copy mid-flight
                pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"),
                                           initializer=_init_worker, initargs=(spec,))
            pending.append(pool.submit(_score_in_worker, rb, offset))
            while len(pending) >= 2 * workers:
                take(pending.popleft().result())
        while pending:
            take(pending.popleft().result())
    except ScoreError:
        raise
    except Exception as exc:
        from concurrent.futures.process import BrokenProcessPool

        if isinstance(exc, BrokenProcessPool):
            raise ScoreError("a scoring worker process died (out of memory or killed); nothing was replaced: run "
                             "again, with fewer --workers if memory is short") from None
        raise
    finally:
        for f in pending:
            f.cancel()
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
        if bar is not None:
            bar.close()
    if run.batches <= 1:
        run.workers = 1
    return run
