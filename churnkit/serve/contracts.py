"""Request bodies of every cloud's scoring contract in, one response shape out.

Accepted on every predict route (JSON unless said otherwise):

================================  ==================================================================
``{"instances": [{col: v}]}``     SageMaker/Vertex/KServe style; ``instances`` may also be a list of
                                  lists with a top-level ``"columns": [...]``
``{"dataframe_split": {...}}``    MLflow: ``{"columns": [...], "data": [[...]]}`` (``index`` ignored)
``{"dataframe_records": [...]}``  MLflow: a list of ``{col: v}``
``{"inputs": ...}``               MLflow: list of objects, list of lists (+ ``columns``) or
                                  ``{col: [values]}``
``{"data": ...}``                 Azure ML: any of the shapes above
``[{col: v}, ...]``               a bare list of objects
``text/csv``                      a header row naming the columns, or no header and the model's
                                  columns in order (SageMaker batch style); an empty cell is null
================================  ==================================================================

List-of-lists rows without ``columns`` are read in the model's column order. ``parameters`` and
``params`` (Vertex, MLflow) are accepted and ignored. ``curl -d`` sends
``application/x-www-form-urlencoded``; such a body (and one with no content type) is read as JSON.
"""

from __future__ import annotations

import csv
import io
import json
import time
from dataclasses import dataclass

from churnkit.exceptions import RequestError
from churnkit.serve.validation import Batch, Validator

try:  # orjson is a pinned dependency of the server; score.py's environment may lack it
    import orjson
except ImportError:  # pragma: no cover - exercised only in the Azure ML environment
    orjson = None

DEFAULT_MAX_BODY_BYTES = 6 * 1024 * 1024  # SageMaker's real-time payload limit
DEFAULT_MAX_ROWS = 10_000
DATA_KEYS = ("instances", "inputs", "dataframe_split", "dataframe_records", "data")
IGNORED_KEYS = ("parameters", "params", "columns")
JSON_TYPES = ("application/json", "application/x-www-form-urlencoded", "")
CSV_TYPES = ("text/csv", "application/csv")
FORMATS_HINT = (
    'send {"instances": [{column: value, ...}]}, {"dataframe_split": {"columns": [...], "data": [[...]]}}, '
    '{"dataframe_records": [...]}, {"inputs": ...}, {"data": ...} as application/json, or text/csv with a header'
)


@dataclass
class Payload:
    """Rows as sent: objects (``columns`` None), or lists under ``columns`` (None = the model's order)."""

    rows: list
    columns: list | None = None
    table: bool = False

    def batch(self, validator: Validator) -> Batch:
        if self.table:
            return validator.table(self.columns, self.rows)
        return validator.records(self.rows)

    def records(self, names: list[str]) -> list[dict]:
        """The rows as ``{column: raw value}`` (for data capture)."""
        if not self.table:
            return self.rows
        return [dict(zip(self.columns or names, row)) for row in self.rows]


def media_type(content_type: str | None) -> str:
    return (content_type or "").split(";", 1)[0].strip().lower()


def loads(body: bytes | str):
    """Parse JSON; raises RequestError(400) with the parser's reason."""
    if orjson is not None:
        try:
            return orjson.loads(body)
        except orjson.JSONDecodeError:
            pass  # the stdlib parser reads what orjson refuses (integers beyond 64 bits) and words the error
    try:
        return json.loads(body)
    except (ValueError, RecursionError) as exc:
        raise RequestError(f"the body is not valid JSON ({exc}); {FORMATS_HINT}", status=400,
                           details=[f"malformed JSON: {exc}"]) from None


def dumps(obj) -> bytes:
    if orjson is not None:
        return orjson.dumps(obj)
    return json.dumps(obj, separators=(",", ":")).encode()


def _bad_shape(what: str) -> RequestError:
    return RequestError(f"{what}; {FORMATS_HINT}", status=400, details=[what])


def _rows(value, columns) -> Payload:
    """A list of objects or of lists, or a ``{col: [values]}`` / split object, as a Payload."""
    if isinstance(value, list):
        if value and all(isinstance(r, dict) for r in value):
            return Payload(value)  # objects name their columns; a top-level "columns" adds nothing
        if (value and all(isinstance(r, list) for r in value)) or columns is not None:
            return Payload(value, columns, table=True)  # the validator names any row that is not a list
        return Payload(value)
    if isinstance(value, dict):
        if "data" in value and isinstance(value.get("data"), list) and set(value) <= {"columns", "data", "index"}:
            cols = value.get("columns")
            if cols is not None and not isinstance(cols, list):
                raise _bad_shape(f"'columns' must be a list of column names, got {type(cols).__name__}")
            return Payload(value["data"], cols, table=True)
        lists = [isinstance(v, list) for v in value.values()]
        if value and all(lists):
            lengths = {len(v) for v in value.values()}
            if len(lengths) != 1:
                raise _bad_shape(f"columnar input has columns of different lengths {sorted(lengths)!r}")
            names = list(value)
            return Payload([dict(zip(names, vals)) for vals in zip(*value.values())])
        if not any(lists):
            return Payload([value])  # one object: one row
        raise _bad_shape("an object of columns must map every column to a list of values")
    raise _bad_shape(f"expected a list of rows, got {type(value).__name__}")


def parse_json(obj) -> Payload:
    """The rows of a decoded JSON body in any accepted shape; raises RequestError(400) otherwise."""
    if isinstance(obj, list):
        return _rows(obj, None)
    if not isinstance(obj, dict):
        raise _bad_shape(f"the JSON body is a {type(obj).__name__}, not an object")
    present = [k for k in DATA_KEYS if k in obj]
    unknown = [k for k in obj if k not in DATA_KEYS and k not in IGNORED_KEYS]
    if len(present) != 1 or unknown:
        what = (f"unknown key(s) {unknown!r}" if unknown else
                f"found {present!r}, expected exactly one of {list(DATA_KEYS)!r}" if present else
                f"no data key; expected one of {list(DATA_KEYS)!r}")
        raise _bad_shape(what)
    key = present[0]
    value = obj[key]
    columns = obj.get("columns")
    if columns is not None and not isinstance(columns, list):
        raise _bad_shape(f"'columns' must be a list of column names, got {type(columns).__name__}")
    if key == "dataframe_split":
        if not isinstance(value, dict) or not isinstance(value.get("data"), list):
            raise _bad_shape("'dataframe_split' must be {\"columns\": [...], \"data\": [[...], ...]}")
        value, columns = {"data": value["data"], "columns": value.get("columns")}, None
    elif key == "dataframe_records" and not isinstance(value, list):
        raise _bad_shape("'dataframe_records' must be a list of {column: value} objects")
    return _rows(value, columns)


def csv_rows_at_least(body: bytes) -> int:
    """A lower bound of the rows in a CSV body, counted without parsing it (non-empty lines minus a header);
    0 when a quote may hide a line break inside a field."""
    if b'"' in body:
        return 0
    lines = sum(1 for line in body.split(b"\n") if line.strip(b"\r"))
    return max(lines - 1, 0)


def parse_csv(body: bytes, names: list[str], accepted: frozenset) -> Payload:
    """CSV rows: with a header when the first row names only known columns, else the model's order."""
    try:
        text = body.decode("utf-8-sig")
        rows = [r for r in csv.reader(io.StringIO(text, newline=""), strict=True) if r]
    except (UnicodeDecodeError, csv.Error) as exc:
        raise RequestError(f"the body is not valid UTF-8 CSV ({exc}); send comma-separated rows with a header",
                           status=400, details=[f"malformed CSV: {exc}"]) from None
    if rows and set(rows[0]) <= accepted and set(rows[0]) & set(names):
        return Payload(rows[1:], rows[0], table=True)
    return Payload(rows, None, table=True)


def parse_body(body: bytes, content_type: str | None, validator: Validator) -> tuple[Payload, Batch]:
    """Read a request body of any accepted contract and validate it.

    Raises
    ------
    RequestError
        415 for an unsupported content type, 400 for a body that cannot be parsed or has no known shape.
    SchemaError
        422 when the rows do not fit the schema (413 for too many rows).
    """
    kind = media_type(content_type)
    if kind in JSON_TYPES or kind.endswith("+json"):
        payload = parse_json(loads(body))
    elif kind in CSV_TYPES:
        if csv_rows_at_least(body) > validator.max_rows:  # refused before the body is parsed
            validator.check_count(csv_rows_at_least(body))
        payload = parse_csv(body, validator.names, validator.expected | validator.ignored)
    else:
        raise RequestError(
            f"content type {content_type!r} is not supported; send application/json or text/csv",
            status=415, details=[f"unsupported content type {content_type!r}"],
        )
    return payload, payload.batch(validator)


def body_too_large(size: int, limit: int) -> RequestError:
    return RequestError(
        f"the body has more than {limit} bytes ({size} so far); send fewer rows per request or start the server "
        "with a larger --max-body-bytes", status=413, details=[f"body bytes {size} > max_body_bytes {limit}"],
    )


@dataclass
class Scored:
    """A scored request: the rows as sent, their probabilities, the response object and the model time."""

    payload: Payload
    proba: object  # ndarray
    body: dict
    model_seconds: float


def score_request(body: bytes, content_type: str | None, scorer, name: str, version: str, *,
                  max_body_bytes: int = DEFAULT_MAX_BODY_BYTES, vertex: bool = False) -> Scored:
    """Parse, validate and score one request body (the whole predict route minus HTTP).

    Raises SchemaError/RequestError (4xx) for client mistakes, with the problems named.
    """
    if len(body) > max_body_bytes:
        raise body_too_large(len(body), max_body_bytes)
    payload, batch = parse_body(body, content_type, scorer.validator)
    t0 = time.perf_counter()
    proba = scorer.predict_batch(batch)
    model_seconds = time.perf_counter() - t0
    predictions = scorer.predictions(proba)
    out = vertex_response(predictions) if vertex else response(predictions, name, version)
    return Scored(payload, proba, out, model_seconds)


def response(predictions: list[dict], name: str, version: str) -> dict:
    """The response of every predict route but Vertex's."""
    return {"predictions": predictions, "model": {"name": name, "version": version}}


def vertex_response(predictions: list[dict]) -> dict:
    """Vertex AI's shape: the predictions list alone (Vertex adds the deployed model id itself)."""
    return {"predictions": predictions}


def error_body(exc) -> dict:
    """``{"error": message, "details": [...]}`` for a SchemaError/RequestError."""
    return {"error": str(exc), "details": list(getattr(exc, "details", []))}
