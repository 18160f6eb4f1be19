"""The batch score output every engine and cloud writes: ranked Parquet partitions, replaced atomically.

Layout under the output folder (DESIGN §7c)::

    _churnkit_scores.json                          marks the folder as a churnkit score output
    score_month=2026-12/model_version=3/part-00000.parquet ...
    score_month=2026-12/model_version=3/_churnkit_partition.json     row accounting of the run
    errors/score_month=2026-12/model_version=3/part-00000.parquet    refused rows: id, input_row, reason

``score_month`` and ``model_version`` live in the folder names only (Hive partitioning, as Spark's
``partitionBy`` writes them): ``pyarrow.dataset``, pandas, Spark and DuckDB read them back as columns.
Each scores file holds, in order: the id column, ``churn_probability``, ``churn``, ``rank``,
``percentile``, ``decile``, ``reason_1``, ``reason_1_value``, ``reason_1_contribution`` ... ``reason_k*``,
the passed-through input columns (only when asked), ``model_name``, ``run_id``, ``scored_at``.

Ranks are exact over the whole partition: rows ordered by ``churn_probability`` descending, then the
id ascending (ties broken the same way on every engine). ``rank`` is the 1-based row number in that
order, ``percentile`` is ``100 * (1 - percent_rank)`` (100 for the riskiest customer, 0 for the
safest; Spark's ``percent_rank``), ``decile`` is ``ntile(10)`` (1 = highest risk; the first
``rows % 10`` deciles hold one row more). :class:`ScoreWriter` stages the scored rows unranked, then
ranks them in a second pass: it keeps the probabilities, the ids and two int64 arrays in memory (about
16 bytes plus the id per row) and never the rows themselves.

A rerun of the same month and version replaces the partition and its errors: the new files are
written under a hidden ``.staging-*`` folder, then swapped in by renames while an exclusive lock on
``_churnkit.lock`` is held; a swap interrupted half way is rolled forward or back by the next run
from its journal. Readers never see half a partition; a killed run leaves the previous one as it was.

Usage (what the local engine and the cloud batch services do)::

    meta = ScoreMeta(model_name="churn", model_version="3", threshold=0.42, run_id=run_id,
                     id_column="customerID", score_month="2026-12", reasons=3)
    with ScoreWriter("scores/", meta) as writer:
        writer.add(table)              # pyarrow Table or pandas DataFrame: id, churn_probability, reasons...
        writer.add_errors(refused)     # id, input_row, reason
        summary = writer.commit(rows_in=n)
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from churnkit.clock import iso_seconds
from churnkit.exceptions import ScoreError, ScoreOutputError

MARKER = "_churnkit_scores.json"
LOCK = "_churnkit.lock"
PARTITION_FILE = "_churnkit_partition.json"
ERRORS_DIR = "errors"
FORMAT = 1
PROBABILITY = "churn_probability"
#: Columns every engine adds after the scores (the partition columns are folder names).
TRAILER = ("model_name", "run_id", "scored_at")
#: Columns of the errors table (plus the trailer).
ERROR_COLUMNS = ("input_row", "reason")
#: Rows per output file.
ROWS_PER_FILE = 1_000_000
DECILES = 10
#: What to do with an id that appears on more than one row: refuse the run, or keep the rows flagged.
DUPLICATES = ("refuse", "keep")


@dataclass(frozen=True)
class ScoreMeta:
    """What a scoring run stamps on its rows and names its partition by.

    Attributes
    ----------
    model_name, model_version : str
        The registered model and version (``version`` "local" for a bare folder).
    threshold : float
        ``churn`` is ``churn_probability >= threshold`` (the version's stored threshold).
    run_id : str
        The MLflow run of this scoring ("" when untracked).
    id_column : str
        The customer id column.
    score_month : str
        ``YYYY-MM``; default the current UTC month.
    reasons : int
        ``k``: reason columns per row (0 for none).
    scored_at : str
        ISO time stamp; default now (UTC).
    """

    model_name: str
    model_version: str
    threshold: float
    run_id: str
    id_column: str = "customerID"
    score_month: str = ""
    reasons: int = 3
    scored_at: str = ""

    def __post_init__(self):
        if not self.scored_at:
            object.__setattr__(self, "scored_at", iso_seconds())
        if not self.score_month:
            object.__setattr__(self, "score_month", self.scored_at[:7])
        check_month(self.score_month)
        check_partition_value("model_version", str(self.model_version))
        if not self.id_column:
            raise ScoreOutputError("the id column name is empty; pass --id-column with the customer id column")

    @property
    def partition(self) -> str:
        """The partition's folder below the output (and below ``errors/``)."""
        return f"score_month={self.score_month}/model_version={self.model_version}"


@dataclass
class ScoreSummary:
    """The row accounting and where a committed partition lives (also ``_churnkit_partition.json``)."""

    output: str
    partition: str
    rows_in: int
    rows_scored: int
    rows_refused: int
    files: int
    model_name: str
    model_version: str
    run_id: str
    score_month: str
    scored_at: str
    threshold: float
    churn_rows: int = 0
    rank_method: str = "second pass over the staged scores (ordered by churn_probability desc, id asc)"
    deciles: list[dict] = field(default_factory=list)
    replaced: bool = False
    extra: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)

    def line(self) -> str:
        """The run's one-line account: rows in = scored + refused."""
        again = "replaced" if self.replaced else "wrote"
        return (f"{again} {self.output}/{self.partition}: {self.rows_in:,} rows in = {self.rows_scored:,} scored "
                f"+ {self.rows_refused:,} refused ({ERRORS_DIR}/), {self.churn_rows:,} at or above the threshold "
                f"{self.threshold:g}")


def check_month(month: str) -> str:
    """Raise unless ``month`` is ``YYYY-MM``."""
    text = str(month)
    if len(text) != 7 or text[4] != "-" or not (text[:4].isdigit() and text[5:].isdigit()) or not 1 <= int(text[5:]) <= 12:
        raise ScoreOutputError(f"score month {month!r} is not YYYY-MM; pass e.g. --month 2026-12")
    return text


def check_partition_value(name: str, value: str) -> str:
    """Raise unless ``value`` is safe as a Hive partition folder name (no separators, no '=')."""
    if not value or any(ch in value for ch in "/\\=%:\n\0") or value in (".", ".."):
        raise ScoreOutputError(f"{name} {value!r} cannot name a partition folder; use a version number or plain name")
    return value


def reason_columns(k: int) -> list[str]:
    """``reason_1, reason_1_value, reason_1_contribution, ...`` for ``k`` reasons."""
    return [f"reason_{i}{suffix}" for i in range(1, k + 1) for suffix in ("", "_value", "_contribution")]


def output_columns(id_column: str, k: int, passthrough: list[str] | tuple = (), *, flag_duplicates: bool = False) -> list[str]:
    """The columns of a scores file, in order (the partition columns are folder names); ``duplicate_id``
    only when duplicates are kept."""
    flag = ["duplicate_id"] if flag_duplicates else []
    return [id_column, PROBABILITY, "churn", "rank", "percentile", "decile", *flag, *reason_columns(k), *passthrough,
            *TRAILER]


def check_duplicates_option(duplicates: str) -> str:
    if duplicates not in DUPLICATES:
        raise ScoreError(f"duplicates {duplicates!r} is not one of {DUPLICATES!r}: 'refuse' stops the run on a "
                         "repeated id, 'keep' scores every row and flags it in duplicate_id")
    return duplicates


def duplicates_error(n: int, examples: list) -> ScoreError:
    return ScoreError(f"{n:,} id(s) appear on more than one input row, e.g. {examples[:5]!r}; nothing was written: "
                      "remove the repeats, or pass --duplicates keep to score every row with duplicate_id set")


# --------------------------------------------------------------------------------------------------
# The output folder: recognised, locked, staged, swapped
# --------------------------------------------------------------------------------------------------

def _is_remote(path: str) -> bool:
    return "://" in str(path)


def prepare_output(output: str | os.PathLike) -> Path:
    """The output folder, created and marked when new; raise if it exists and is not a score output."""
    if _is_remote(str(output)):
        raise ScoreOutputError(f"output {str(output)!r}: the local engine writes to a local or mounted folder; use "
                               "--engine spark for s3://, gs://, abfs:// or hdfs:// outputs")
    root = Path(output)
    if root.exists() and not root.is_dir():
        raise ScoreOutputError(f"output {str(root)!r} is a file, not a folder; pass a folder for the scores")
    if root.is_dir() and not (root / MARKER).is_file():
        visible = [p.name for p in root.iterdir() if not p.name.startswith(".")]
        if visible:
            raise ScoreOutputError(
                f"output {str(root)!r} exists and is not a churnkit score output (no {MARKER}; it holds "
                f"{sorted(visible)[:5]!r}); pass a new or empty folder, or an earlier --output of churnkit score")
    root.mkdir(parents=True, exist_ok=True)
    marker = root / MARKER
    if not marker.is_file():
        _write_atomic(marker, json.dumps({"format": FORMAT, "kind": "churnkit-scores",
                                          "layout": "score_month=YYYY-MM/model_version=V/part-*.parquet"}))
    else:
        try:
            found = json.loads(marker.read_text())
        except ValueError as exc:
            raise ScoreOutputError(f"{str(marker)!r} is not valid JSON ({exc}); restore it or pick a new output") from None
        if not isinstance(found, dict) or found.get("kind") != "churnkit-scores":
            raise ScoreOutputError(f"{str(marker)!r} does not describe a churnkit score output; pick a new output")
        if int(found.get("format", 0)) > FORMAT:
            raise ScoreOutputError(f"output {str(root)!r} was written by a newer churnkit (format {found['format']}); "
                                   "upgrade churnkit or pick a new output")
    return root


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}")
    tmp.write_text(text)
    os.replace(tmp, path)


@contextlib.contextmanager
def output_lock(root: Path):
    """Hold the output's exclusive lock (one writer at a time; a second waits)."""
    with open(root / LOCK, "a+") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


JOURNAL = "swap.json"
ALIVE = ".alive"


def _stale(stage: Path) -> bool:
    """True when no live process holds ``stage``'s lock (its writer was killed or finished)."""
    try:
        with open(stage / ALIVE, "a+") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
    except BlockingIOError:
        return False
    except OSError:
        return True


def recover(root: Path) -> list[str]:
    """Finish or undo the swaps killed runs left, remove their staging; call with the output lock held."""
    done = []
    for trash in sorted(root.glob(".trash-*")):  # made and removed under the lock: its swapper died
        done += _recover_swap(root, trash)
    for stage in sorted(root.glob(".staging-*")):
        if _stale(stage):
            shutil.rmtree(stage, ignore_errors=True)
            done.append(f"removed the unfinished {stage.name}")
    return done


def _recover_swap(root: Path, trash: Path) -> list[str]:
    """Finish the swap journaled in ``trash`` where its new folder survives, else put the old one back."""
    done = []
    try:
        moves = json.loads((trash / JOURNAL).read_text())
    except (OSError, ValueError):
        moves = []
    for item in moves:  # {"target", "old", "new"}: old went to the trash, new was to go into place
        target, old, new = root / item["target"], trash / item["old"], Path(item["new"])
        if target.exists():
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        if new.exists():
            os.replace(new, target)
            done.append(f"completed the swap of {item['target']}")
        elif old.exists():
            os.replace(old, target)
            done.append(f"restored {item['target']}")
    shutil.rmtree(trash, ignore_errors=True)
    return done


def swap_in(root: Path, moves: list[tuple[str, Path]]) -> bool:
    """Move each staged folder to its target below ``root``, replacing what is there; True if anything was.

    The old folders go to a ``.trash-*`` folder with a journal first, so :func:`recover` can finish or
    undo a swap a killed process left half done.
    """
    trash = root / f".trash-{uuid.uuid4().hex[:12]}"
    trash.mkdir()
    journal = [{"target": target, "old": f"old{i}", "new": str(new)} for i, (target, new) in enumerate(moves)]
    _write_atomic(trash / JOURNAL, json.dumps(journal))
    replaced = False
    for item, (target, new) in zip(journal, moves):
        dest = root / target
        if dest.exists():
            os.replace(dest, trash / item["old"])
            replaced = True
        dest.parent.mkdir(parents=True, exist_ok=True)
        os.replace(new, dest)
    shutil.rmtree(trash, ignore_errors=True)
    return replaced


# --------------------------------------------------------------------------------------------------
# Ranks
# --------------------------------------------------------------------------------------------------

def rank_order(probability: np.ndarray, ids: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """Row indexes in rank order: ``churn_probability`` descending, then the id ascending."""
    table = pa.table({"p": pa.array(probability, type=pa.float64()), "id": ids})
    return pc.sort_indices(table, sort_keys=[("p", "descending"), ("id", "ascending")]).to_numpy()


def ntile(rank: np.ndarray, n_rows: int, buckets: int = DECILES) -> np.ndarray:
    """SQL ``ntile(buckets)`` of 1-based row numbers: the first ``n_rows % buckets`` tiles hold one row more."""
    rank = np.asarray(rank, dtype=np.int64)
    size, extra = divmod(int(n_rows), buckets)
    big = extra * (size + 1)  # rows in the larger tiles
    if size == 0:
        return rank  # fewer rows than tiles: one row each
    return np.where(rank <= big, (rank - 1) // (size + 1) + 1, extra + (rank - 1 - big) // size + 1)


def percentiles(order: np.ndarray, probability: np.ndarray, ids, n_rows: int) -> np.ndarray:
    """``100 * (1 - percent_rank)`` per row in ``order``: tied (probability, id) rows share the first rank."""
    if n_rows <= 1:
        return np.full(n_rows, 100.0)
    p = probability[order]
    same = np.zeros(n_rows, dtype=bool)
    if n_rows > 1:
        sorted_ids = pc.take(ids, pa.array(order))
        same_id = pc.equal(sorted_ids[1:], sorted_ids[:-1]).to_numpy(zero_copy_only=False)
        same[1:] = (p[1:] == p[:-1]) & np.asarray(same_id, dtype=bool)
    position = np.arange(n_rows)
    first = np.maximum.accumulate(np.where(same, 0, position))  # first row of each tie group
    return 100.0 * (1.0 - first / (n_rows - 1))


# --------------------------------------------------------------------------------------------------
# The writer
# --------------------------------------------------------------------------------------------------

def _as_table(rows) -> pa.Table:
    if isinstance(rows, pa.Table):
        return rows
    if isinstance(rows, pa.RecordBatch):
        return pa.Table.from_batches([rows])
    return pa.Table.from_pandas(rows, preserve_index=False)


class ScoreWriter:
    """Stages scored rows, ranks them exactly in a second pass, and swaps the partition in.

    Parameters
    ----------
    output : str or Path
        The output folder: new, empty, or an earlier score output (else :class:`ScoreOutputError`).
    meta : ScoreMeta
        Model, version, threshold, run id, id column, month, number of reasons.
    passthrough : list of str
        Input columns copied to the output (after the reasons), as given to :meth:`add`.
    duplicates : {"refuse", "keep"}
        An id on several rows fails the commit (nothing replaced), or every row is kept and flagged in a
        ``duplicate_id`` column (after ``decile``).

    :meth:`add` takes scored rows with the id column, ``churn_probability``, the ``reason_*`` columns of
    ``meta.reasons`` (when > 0) and the ``passthrough`` columns; :meth:`add_errors` takes refused rows
    (the id, ``input_row``, ``reason``). :meth:`commit` checks ``rows_in = scored + refused``, ranks,
    writes and swaps; leaving the ``with`` block without a commit (an exception) removes the staging.
    """

    def __init__(self, output, meta: ScoreMeta, *, passthrough: list[str] | tuple = (), duplicates: str = "refuse"):
        self.meta = meta
        self.duplicates = check_duplicates_option(duplicates)
        self.passthrough = list(passthrough)
        self.root = prepare_output(output)
        self.stage = self.root / f".staging-{uuid.uuid4().hex[:12]}"
        (self.stage / "unranked").mkdir(parents=True)
        (self.stage / "errors").mkdir()
        self._alive = open(self.stage / ALIVE, "a+")  # noqa: SIM115 - held until commit/abort: recover() leaves this stage alone
        fcntl.flock(self._alive, fcntl.LOCK_EX)
        self.columns = [meta.id_column, PROBABILITY, *reason_columns(meta.reasons), *self.passthrough]
        self._parts: list[tuple[Path, int]] = []
        self._errors = 0
        self._error_parts = 0
        self._id_type: pa.DataType | None = None
        self._closed = False

    # -- staging -------------------------------------------------------------------------------
    def add(self, rows) -> int:
        """Stage scored rows (pyarrow Table/RecordBatch or pandas DataFrame); returns how many."""
        table = _as_table(rows)
        missing = [c for c in self.columns if c not in table.column_names]
        if missing:
            raise ScoreOutputError(f"scored rows lack the column(s) {missing!r}; each batch needs {self.columns!r}")
        table = table.select(self.columns)
        table = table.set_column(1, PROBABILITY, pc.cast(table.column(PROBABILITY), pa.float64()))
        if self._id_type is None:
            self._id_type = table.schema.field(self.meta.id_column).type
        elif table.schema.field(self.meta.id_column).type != self._id_type:
            table = table.set_column(0, self.meta.id_column, pc.cast(table.column(0), self._id_type))
        if table.num_rows:
            path = self.stage / "unranked" / f"part-{len(self._parts):06d}.parquet"
            pq.write_table(table, path)
            self._parts.append((path, table.num_rows))
        return table.num_rows

    def add_errors(self, rows) -> int:
        """Stage refused rows: the id column (may be null), ``input_row`` (0-based), ``reason``."""
        table = _as_table(rows)
        want = [self.meta.id_column, *ERROR_COLUMNS]
        missing = [c for c in want if c not in table.column_names]
        if missing:
            raise ScoreOutputError(f"refused rows lack the column(s) {missing!r}; each needs {want!r}")
        if not table.num_rows:
            return 0
        table = table.select(want)
        table = table.set_column(0, self.meta.id_column, pc.cast(table.column(0), pa.string()))
        table = table.set_column(1, "input_row", pc.cast(table.column(1), pa.int64()))
        table = self._trailer(table)
        pq.write_table(table, self.stage / "errors" / f"part-{self._error_parts:05d}.parquet")
        self._error_parts += 1
        self._errors += table.num_rows
        return table.num_rows

    @property
    def rows_scored(self) -> int:
        return sum(n for _, n in self._parts)

    @property
    def rows_refused(self) -> int:
        return self._errors

    def _trailer(self, table: pa.Table) -> pa.Table:
        n, m = table.num_rows, self.meta
        for name, value in zip(TRAILER, (m.model_name, m.run_id, m.scored_at)):
            table = table.append_column(name, pa.array([value] * n, type=pa.string()))
        return table

    # -- the second pass -----------------------------------------------------------------------
    def _ranked_parts(self) -> tuple[int, list[dict]]:
        """Write the ranked files to ``stage/scores``; returns (rows at or above the threshold, decile table)."""
        n = self.rows_scored
        out = self.stage / "scores"
        out.mkdir()
        if n == 0:
            return 0, []
        idcol = self.meta.id_column
        probs, ids = [], []
        for path, _ in self._parts:
            t = pq.read_table(path, columns=[PROBABILITY, idcol])
            probs.append(t.column(0).to_numpy())
            ids.append(t.column(1))
        probability = np.concatenate(probs)
        id_values = pa.chunked_array([c for col in ids for c in col.chunks], type=self._id_type)
        del probs, ids
        counts = pc.value_counts(id_values)
        repeated = counts.field("values").filter(pc.greater(counts.field("counts"), 1))
        if len(repeated) and self.duplicates == "refuse":
            raise duplicates_error(len(repeated), repeated.to_pylist()[:5])
        flagged = pc.is_in(id_values, value_set=repeated).to_numpy(zero_copy_only=False) \
            if self.duplicates == "keep" else None
        order = rank_order(probability, id_values)
        rank = np.empty(n, dtype=np.int64)
        rank[order] = np.arange(1, n + 1, dtype=np.int64)
        pct = np.empty(n, dtype=np.float64)
        pct[order] = percentiles(order, probability, id_values, n)
        del order, id_values
        decile = ntile(rank, n)
        churn = probability >= self.meta.threshold
        deciles = decile_table(probability, decile, churn)
        writer, files, written, start = None, 0, 0, 0
        schema = None
        try:
            for path, count in self._parts:
                t = pq.read_table(path)
                sl = slice(start, start + count)
                start += count
                t = t.add_column(2, "churn", pa.array(churn[sl]))
                t = t.add_column(3, "rank", pa.array(rank[sl]))
                t = t.add_column(4, "percentile", pa.array(pct[sl]))
                t = t.add_column(5, "decile", pa.array(decile[sl].astype(np.int32)))
                if flagged is not None:
                    t = t.add_column(6, "duplicate_id", pa.array(flagged[sl]))
                t = self._trailer(t)
                if schema is None:
                    schema = t.schema
                t = t.cast(schema)
                if writer is None or written >= ROWS_PER_FILE:
                    if writer is not None:
                        writer.close()
                    writer = pq.ParquetWriter(out / f"part-{files:05d}.parquet", schema)
                    files, written = files + 1, 0
                writer.write_table(t)
                written += t.num_rows
                path.unlink()
        finally:
            if writer is not None:
                writer.close()
        return int(churn.sum()), deciles

    def commit(self, rows_in: int, *, extra: dict | None = None) -> ScoreSummary:
        """Rank, write and swap the partition in; raise (nothing replaced) unless rows in = scored + refused."""
        if self._closed:
            raise ScoreOutputError("this score writer was already committed or aborted; start a new one")
        scored, refused = self.rows_scored, self.rows_refused
        if int(rows_in) != scored + refused:
            self.abort()
            raise ScoreOutputError(f"row accounting does not add up: {rows_in:,} rows in but {scored:,} scored + "
                                   f"{refused:,} refused; nothing was replaced")
        try:
            churn_rows, deciles = self._ranked_parts()
        except BaseException:
            self.abort()
            raise
        shutil.rmtree(self.stage / "unranked", ignore_errors=True)
        m = self.meta
        summary = ScoreSummary(
            output=str(self.root), partition=m.partition, rows_in=int(rows_in), rows_scored=scored,
            rows_refused=refused, files=len(list((self.stage / "scores").glob("*.parquet"))),
            model_name=m.model_name, model_version=str(m.model_version), run_id=m.run_id, score_month=m.score_month,
            scored_at=m.scored_at, threshold=float(m.threshold), churn_rows=churn_rows, deciles=deciles,
            extra=dict(extra or {}),
        )
        with output_lock(self.root):
            recover(self.root)  # half-done swaps and staging of killed runs (never a live writer's)
            summary.replaced = (self.root / m.partition).exists()
            (self.stage / "scores" / PARTITION_FILE).write_text(json.dumps(summary.to_dict(), indent=1, default=str))
            swap_in(self.root, [(m.partition, self.stage / "scores"), (f"{ERRORS_DIR}/{m.partition}", self.stage / "errors")])
        self._release()
        return summary

    def abort(self) -> None:
        """Drop everything staged; the output is as it was."""
        self._release()

    def _release(self) -> None:
        shutil.rmtree(self.stage, ignore_errors=True)
        self._alive.close()
        self._closed = True

    def __enter__(self) -> ScoreWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if not self._closed:
            self.abort()


def decile_table(probability: np.ndarray, decile: np.ndarray, churn: np.ndarray) -> list[dict]:
    """Per decile: rows, mean/min/max churn probability, rows at or above the threshold, cumulative share."""
    out, total, cum = [], float(probability.sum()) or 1.0, 0.0
    for d in range(1, DECILES + 1):
        hit = decile == d
        if not hit.any():
            continue
        p = probability[hit]
        cum += float(p.sum())
        out.append({"decile": d, "rows": int(hit.sum()), "mean_probability": float(p.mean()),
                    "min_probability": float(p.min()), "max_probability": float(p.max()),
                    "churn_rows": int(churn[hit].sum()), "expected_churners": float(p.sum()),
                    "cumulative_share_of_expected": cum / total})
    return out


def write_scores(output, scored, meta: ScoreMeta, *, errors=None, rows_in: int | None = None,
                 passthrough: list[str] | tuple = (), duplicates: str = "refuse", extra: dict | None = None) -> ScoreSummary:
    """Write one partition in one call: ``scored`` (a table/frame or an iterable of them) plus refused rows.

    ``rows_in`` defaults to scored + refused (then the check cannot fail); pass the input's row count.
    """
    with ScoreWriter(output, meta, passthrough=passthrough, duplicates=duplicates) as writer:
        parts = scored if isinstance(scored, (list, tuple)) or hasattr(scored, "__next__") else [scored]
        for part in parts:
            writer.add(part)
        for part in ([errors] if errors is not None and not isinstance(errors, (list, tuple)) else errors or []):
            writer.add_errors(part)
        n = writer.rows_scored + writer.rows_refused if rows_in is None else rows_in
        return writer.commit(n, extra=extra)


def read_scores(output, *, errors: bool = False) -> pa.Table:
    """Every committed partition (or the refused rows) as one table with ``score_month`` and ``model_version``.

    The same as ``spark.read.option("basePath", out).parquet(out + "/score_month=*")``: the ``errors/``
    folder and the hidden staging folders are not score partitions.
    """
    import pyarrow.dataset as pads

    root = Path(output) / ERRORS_DIR if errors else Path(output)
    if not root.is_dir():
        raise ScoreOutputError(f"no score output at {str(root)!r}; run churnkit score with --output there first")
    dataset = pads.dataset(str(root), format="parquet", ignore_prefixes=[".", "_", ERRORS_DIR],
                           partitioning=pads.partitioning(pa.schema([("score_month", pa.string()),
                                                                     ("model_version", pa.string())]), flavor="hive"))
    return dataset.to_table()


def read_partition(output, score_month: str, model_version: str) -> dict:
    """The ``_churnkit_partition.json`` accounting of a committed partition."""
    path = Path(output) / f"score_month={score_month}/model_version={model_version}" / PARTITION_FILE
    if not path.is_file():
        raise ScoreOutputError(f"no committed partition at {str(path.parent)!r}; score that month and version first")
    return json.loads(path.read_text())
