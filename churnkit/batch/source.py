"""The customer base to score, read in record batches, and each batch typed for the model or refused.

Input: a ``.parquet`` or ``.csv`` file, a folder of them (Hive partition folders are fine), or the same
in cloud storage through pyarrow's own filesystems and each cloud's default credentials: ``s3://``
(AWS's chain: environment, profile, instance or task role; ``AWS_ENDPOINT_URL`` honoured), ``gs://``
(Application Default Credentials) and ``abfs://container@account.dfs.core.windows.net/path`` (Azure's
DefaultAzureCredential chain). CSV cells are read as text, as training reads them, so "29.85", " " and
"0042" reach the model exactly as written.

:func:`type_batch` is the one place rows become model input, for every engine (the Spark engine calls
it inside ``mapInArrow``): the rules of training and serving (numbers stored as text with blanks,
categories stripped, nulls imputed) applied column by column with pyarrow compute. A row is refused,
with every reason, when a numeric cell is not a finite number or its id is missing; a column the model
needs that is absent, or of a type that cannot hold its values, refuses the whole input before
anything is written.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads

from churnkit.data import Schema
from churnkit.exceptions import ScoreError
from churnkit.serve.validation import Batch

REMOTE = ("s3://", "gs://", "gcs://", "abfs://", "abfss://", "az://", "hdfs://")
#: Rows per record batch read (and scored) at once.
BATCH_ROWS = 65_536


def _filesystem(uri: str):
    """``(pyarrow filesystem, path)`` for a local path or a cloud URI (credentials: the cloud's default chain)."""
    if not uri.startswith(REMOTE):
        return None, str(Path(uri))
    from pyarrow import fs

    try:
        return fs.FileSystem.from_uri(uri.replace("abfss://", "abfs://", 1))
    except Exception as exc:
        raise ScoreError(f"input {uri!r} cannot be opened ({type(exc).__name__}: {exc}); check the URI and that "
                         "this machine's credentials can read it") from None


def _format(name: str) -> str | None:
    lower = name.lower()
    if lower.endswith((".parquet", ".pq")):
        return "parquet"
    if lower.endswith((".csv", ".csv.gz", ".txt")):
        return "csv"
    return None


@dataclass
class Source:
    """An opened input: its arrow dataset, the files and their format."""

    uri: str
    dataset: pads.Dataset
    kind: str

    @property
    def columns(self) -> list[str]:
        return list(self.dataset.schema.names)

    def count_rows(self) -> int | None:
        """Rows in the input when cheap to know (Parquet footers); None for CSV."""
        return self.dataset.count_rows() if self.kind == "parquet" else None

    def batches(self, rows: int = BATCH_ROWS):
        """Record batches in file order, at most ``rows`` each (empty ones skipped)."""
        for batch in self.dataset.to_batches(batch_size=rows, batch_readahead=2, fragment_readahead=1):
            if batch.num_rows:
                yield batch


def _csv_header(filesystem, path: str) -> list[str]:
    from pyarrow import fs

    compression = "gzip" if path.endswith(".gz") else None
    stream = (filesystem or fs.LocalFileSystem()).open_input_stream(path, compression=compression)
    with io.TextIOWrapper(stream, newline="") as fh:
        try:
            return next(csv.reader(fh))
        except StopIteration:
            raise ScoreError(f"input file {path!r} is empty; pass a CSV with a header row") from None


def _list_files(filesystem, path: str, uri: str):
    """``(file info of path, the Parquet/CSV files to read)``; ScoreError for a missing or unusable input."""
    from pyarrow import fs

    info = filesystem.get_file_info(path)
    if info.type == fs.FileType.NotFound:
        raise ScoreError(f"input {uri!r} does not exist; pass a Parquet or CSV file, or a folder of them")
    if info.type != fs.FileType.Directory:
        if _format(path) is None:
            raise ScoreError(f"input {uri!r} is neither .parquet nor .csv; pass a Parquet or CSV file, or a folder")
        return info, [path]
    found = filesystem.get_file_info(fs.FileSelector(path, recursive=True))
    base = path.rstrip("/")
    files = sorted(i.path for i in found if i.type == fs.FileType.File and _format(i.path)
                   and not any(p.startswith((".", "_")) for p in i.path[len(base):].strip("/").split("/")))
    kinds = {_format(f) for f in files}
    if not kinds:
        raise ScoreError(f"input folder {uri!r} holds no .parquet or .csv files; pass a folder of them")
    if len(kinds) > 1:
        raise ScoreError(f"input folder {uri!r} mixes Parquet and CSV files; pass one kind")
    return info, files


def open_source(uri: str) -> Source:
    """Open ``uri`` (file, folder, cloud URI) as a dataset; raise ScoreError naming what is wrong."""
    uri = str(uri)
    filesystem, path = _filesystem(uri)
    from pyarrow import fs

    try:
        info, files = _list_files(filesystem or fs.LocalFileSystem(), path, uri)
    except OSError as exc:  # storage that cannot be reached or read: one line, after the SDK's own retries
        raise ScoreError(f"input {uri!r} cannot be read ({str(exc).strip().splitlines()[0][:300]}); check the URI, "
                         "the network and that this machine's credentials can read it") from None
    kind = _format(files[0])
    try:
        if kind == "csv":
            header = _csv_header(filesystem, files[0])
            from pyarrow import csv as pacsv

            text = pacsv.ConvertOptions(column_types={name: pa.string() for name in header},
                                        strings_can_be_null=True, null_values=[""], quoted_strings_can_be_null=True)
            fmt = pads.CsvFileFormat(convert_options=text)
        else:
            fmt = "parquet"
        folder = info.type == fs.FileType.Directory  # Hive folders below it (month=12/...) become columns
        dataset = pads.dataset(files, format=fmt, filesystem=filesystem, partitioning="hive" if folder else None,
                               partition_base_dir=path if folder else None)
    except ScoreError:
        raise
    except Exception as exc:
        raise ScoreError(f"input {uri!r} cannot be read as {kind} ({type(exc).__name__}: {exc}); check the files "
                         "are valid and share one set of columns") from None
    return Source(uri, dataset, kind)


def check_columns(columns: list[str], schema: Schema, id_column: str, passthrough: list[str] = ()) -> None:
    """Raise ScoreError listing every column the model, the id or the passthrough needs that the input lacks."""
    if id_column not in columns:
        near = [c for c in columns if c.lower() == id_column.lower()]
        hint = f" (did you mean {near[0]!r}?)" if near else ""
        raise ScoreError(f"id column {id_column!r} is not in the input{hint}; its columns are {columns[:30]!r}: "
                         "pass --id-column with the customer id column", columns=[id_column])
    missing = [c for c in schema.names if c not in columns]
    if missing:
        raise ScoreError(f"the input does not match the model's schema: it lacks the column(s) {missing!r} the "
                         f"model was trained on (input columns {columns[:30]!r}); score a table with every model "
                         "column", columns=missing)
    absent = [c for c in passthrough if c not in columns]
    if absent:
        raise ScoreError(f"passthrough column(s) {absent!r} are not in the input; its columns are {columns[:30]!r}",
                         columns=absent)


# --------------------------------------------------------------------------------------------------
# One record batch -> model input + refused rows
# --------------------------------------------------------------------------------------------------

@dataclass
class Typed:
    """A record batch typed for the model: the kept rows' Batch, which rows were kept, why others were not."""

    batch: Batch
    keep: np.ndarray  # bool per input row
    problems: list[list[str]]  # per input row: reasons it was refused ([] when kept)


def _is_text(t: pa.DataType) -> bool:
    return pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_string_view(t)


def _blank_to_null(arr: pa.Array) -> pa.Array:
    trimmed = pc.utf8_trim_whitespace(arr)
    return pc.if_else(pc.equal(trimmed, ""), pa.scalar(None, trimmed.type), trimmed)


def _numbers(arr: pa.Array, name: str) -> tuple[np.ndarray, np.ndarray]:
    """``(float64 values with NaN for missing, bad mask)`` of a numeric model column."""
    t = arr.type
    if pa.types.is_dictionary(t):
        arr, t = arr.dictionary_decode(), t.value_type
    if pa.types.is_boolean(t) or pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_decimal(t):
        values = pc.cast(arr, pa.float64()).to_numpy(zero_copy_only=False)  # null -> NaN: imputed like a blank
        return values, np.isinf(values)
    if _is_text(t) or pa.types.is_null(t):
        text = _blank_to_null(pc.cast(arr, pa.string()))
        try:
            values = pc.cast(text, pa.float64()).to_numpy(zero_copy_only=False)
            bad = ~np.isfinite(values) & ~np.asarray(pc.is_null(text).to_numpy(zero_copy_only=False))
        except pa.ArrowInvalid:  # some cell is not a number: parse the distinct texts one by one
            codes = pc.dictionary_encode(text).combine_chunks() if isinstance(text, pa.ChunkedArray) else \
                pc.dictionary_encode(text)
            parsed = []
            for s in codes.dictionary.to_pylist():
                try:
                    parsed.append(float(s) if "_" not in s else np.inf)  # Python reads "1_000"; training does not
                except ValueError:
                    parsed.append(np.inf)  # marks "not a number": refused below
            lookup = np.append(np.asarray(parsed, dtype=np.float64), np.nan)  # index -1: missing
            idx = codes.indices.fill_null(-1).to_numpy(zero_copy_only=False)
            values = lookup[idx]
            bad = ~np.isfinite(values) & (idx >= 0)
        return np.where(bad, np.nan, values), bad
    raise ScoreError(f"the input does not match the model's schema: column {name!r} is {t}, not numbers or text; "
                     "pass the column as numbers (or numbers stored as text)", columns=[name])


def _categories(arr: pa.Array, name: str) -> list:
    """A categorical model column as Python str (stripped) or None, the way training typed it."""
    t = arr.type
    if pa.types.is_dictionary(t):
        arr, t = arr.dictionary_decode(), t.value_type
    if _is_text(t) or pa.types.is_null(t):
        enc = pc.dictionary_encode(_blank_to_null(pc.cast(arr, pa.string())))
        values = np.asarray(enc.dictionary.to_pylist() + [None], dtype=object)
        return values[enc.indices.fill_null(-1).to_numpy(zero_copy_only=False)].tolist()
    if pa.types.is_integer(t) or pa.types.is_boolean(t) or pa.types.is_floating(t):
        from churnkit.data import to_categorical

        return [v if isinstance(v, str) else None for v in to_categorical(arr.to_pandas()).tolist()]
    raise ScoreError(f"the input does not match the model's schema: column {name!r} is {t}, not text or numbers; "
                     "pass the column as text", columns=[name])


def _short(value) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def type_batch(rb: pa.RecordBatch, schema: Schema, id_column: str) -> Typed:
    """Type a record batch's model columns; rows with a bad number or no id are refused with their reasons."""
    n = rb.num_rows
    problems: list[list[str]] = [[] for _ in range(n)]
    ids = rb.column(id_column)
    missing_id = pc.is_null(ids).to_numpy(zero_copy_only=False)
    if _is_text(ids.type):
        missing_id = missing_id | pc.equal(pc.utf8_trim_whitespace(ids), "").fill_null(True).to_numpy(zero_copy_only=False)
    for i in np.flatnonzero(missing_id).tolist():
        problems[i].append(f"id column {id_column!r} is missing")
    numeric = np.empty((n, len(schema.numeric)), dtype=np.float64)
    for j, name in enumerate(schema.numeric):
        arr = rb.column(name)
        values, bad = _numbers(arr, name)
        numeric[:, j] = values
        if bad.any():
            shown = arr.take(pa.array(np.flatnonzero(bad))).to_pylist()
            for i, v in zip(np.flatnonzero(bad).tolist(), shown):
                problems[i].append(f"column {name!r}: expected a finite number, got {_short(v)}")
    cats = [_categories(rb.column(name), name) for name in schema.categorical]
    keep = np.fromiter((not p for p in problems), dtype=bool, count=n)
    if not keep.all():
        rows = np.flatnonzero(keep)
        numeric = numeric[rows]
        cats = [[col[i] for i in rows.tolist()] for col in cats]
    return Typed(Batch(numeric=numeric, categorical=cats), keep, problems)
