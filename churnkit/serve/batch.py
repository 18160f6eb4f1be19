"""Batch mode of the server: the contract of SageMaker Batch Transform (and any line-split batch client).

Batch Transform splits the input files by line and POSTs mini-batches of lines to ``/invocations``;
it asks ``GET /execution-parameters`` first for the concurrency, strategy and payload size the
container wants. The container learns it runs in a transform job from its environment
(https://github.com/aws/amazon-sagemaker-examples, ``advanced_functionality/scikit_bring_your_own/
container/decision_trees/serve``; https://docs.aws.amazon.com/sagemaker/latest/dg/your-algorithms-batch-code.html):

==========================================  ====================================================
``SAGEMAKER_BATCH``                         ``true`` in a transform job: batch mode on
``SAGEMAKER_MAX_PAYLOAD_IN_MB``             the largest body sent (the server's body limit)
``SAGEMAKER_BATCH_STRATEGY``                ``SINGLE_RECORD`` / ``MULTI_RECORD``
``SAGEMAKER_MAX_CONCURRENT_TRANSFORMS``     parallel requests per instance
==========================================  ====================================================

In batch mode a request body is *lines*: headerless CSV in the model's column order (``text/csv``)
or JSON Lines (``application/jsonlines``: an object per line, or a list in the model's column order).
The answer has exactly one line per input line, in the order received, so the service can join
each answer to its input line (``JoinSource``):

- ``Accept: text/csv`` (the default for CSV): one field per line, the churn probability, or, for a
  line the model cannot score, the text ``error: <reason>``;
- JSON Lines: ``{"churn_probability": p, "churn": bool}`` or ``{"error": "<reason>"}`` per line.

A bad line never fails the other lines of its mini-batch: a job of a million rows does not stop for
one malformed row, and the refused rows reach the kit's ``errors/`` output with their reason. Missing
values are imputed as in training (the local batch engine does the same), not refused.
"""

from __future__ import annotations

import csv
import dataclasses
import io
from dataclasses import dataclass

import numpy as np

from churnkit.exceptions import ConfigError, RequestError, SchemaError
from churnkit.serve import contracts
from churnkit.serve.validation import Validator

CSV_TYPES = contracts.CSV_TYPES
JSONLINES_TYPES = ("application/jsonlines", "application/x-jsonlines", "application/jsonl", "application/x-ndjson")
#: SageMaker's environment variable for each execution parameter (values as the container receives them).
ENV = {"SAGEMAKER_BATCH": "batch", "SAGEMAKER_MAX_PAYLOAD_IN_MB": "max_payload_mb",
       "SAGEMAKER_BATCH_STRATEGY": "strategy", "SAGEMAKER_MAX_CONCURRENT_TRANSFORMS": "max_concurrent"}
STRATEGIES = {"MULTI_RECORD": "MultiRecord", "SINGLE_RECORD": "SingleRecord",
              "MULTIRECORD": "MultiRecord", "SINGLERECORD": "SingleRecord"}
#: What the kit asks for when the job leaves it to the container (6 MB is SageMaker's default payload).
DEFAULT_PAYLOAD_MB = 6
ERROR_PREFIX = "error: "


@dataclass(frozen=True)
class BatchSettings:
    """The execution parameters the server announces and enforces in batch mode."""

    enabled: bool = False
    max_payload_mb: int = DEFAULT_PAYLOAD_MB
    strategy: str = "MultiRecord"
    max_concurrent: int = 1

    @property
    def max_body_bytes(self) -> int:
        return self.max_payload_mb * 1024 * 1024

    def execution_parameters(self) -> dict:
        """The body of ``GET /execution-parameters`` in SageMaker's field names."""
        return {"MaxConcurrentTransforms": self.max_concurrent, "BatchStrategy": self.strategy,
                "MaxPayloadInMB": self.max_payload_mb}


def _positive(name: str, value: str, low: int, high: int | None = None) -> int:
    try:
        n = int(value)
    except ValueError:
        n = None
    if n is None or n < low or (high is not None and n > high):
        bound = f"from {low} to {high}" if high is not None else f"of at least {low}"
        raise ConfigError(f"{name} {value!r} is not a whole number {bound}; set it as a transform job does "
                          f"(e.g. {name}={max(low, 1)})")
    return n


def batch_settings(environ, workers: int = 1) -> BatchSettings:
    """Batch mode from SageMaker's variables; off unless ``SAGEMAKER_BATCH`` is true.

    ``MaxConcurrentTransforms`` defaults to the server's worker processes (what it can score at once).

    Raises
    ------
    ConfigError
        A variable that is not a number, or a strategy SageMaker does not have.
    """
    enabled = str(environ.get("SAGEMAKER_BATCH", "")).strip().lower() in ("true", "1", "yes")
    if not enabled:
        return BatchSettings()
    payload = environ.get("SAGEMAKER_MAX_PAYLOAD_IN_MB") or str(DEFAULT_PAYLOAD_MB)
    # 0 asks for chunked bodies of any size (built-in algorithms only): the kit keeps a bound and says so
    payload_mb = _positive("SAGEMAKER_MAX_PAYLOAD_IN_MB", payload, 1, 100)
    concurrent = _positive("SAGEMAKER_MAX_CONCURRENT_TRANSFORMS",
                           environ.get("SAGEMAKER_MAX_CONCURRENT_TRANSFORMS") or str(max(1, workers)), 1)
    raw = str(environ.get("SAGEMAKER_BATCH_STRATEGY") or "MULTI_RECORD").strip()
    strategy = STRATEGIES.get(raw.upper().replace("-", "_"))
    if strategy is None:
        raise ConfigError(f"SAGEMAKER_BATCH_STRATEGY {raw!r} is not MULTI_RECORD or SINGLE_RECORD")
    return BatchSettings(True, payload_mb, strategy, concurrent)


def lenient_validator(validator: Validator) -> Validator:
    """``validator``'s schema with every column nullable and no row limit (a batch is bounded by bytes)."""
    schema = validator.schema
    lenient = dataclasses.replace(schema, columns=[dataclasses.replace(c, nullable=True) for c in schema.columns])
    return Validator(lenient, max_rows=1 << 62)


def is_batch_body(content_type: str | None) -> bool:
    kind = contracts.media_type(content_type)
    return kind in CSV_TYPES or kind in JSONLINES_TYPES


def split_lines(body: bytes) -> list[bytes]:
    """The records of a line-split body: every line, a final empty line (the trailing newline) left out."""
    lines = body.split(b"\n")
    if lines and not lines[-1].strip(b"\r"):
        lines.pop()
    return [line[:-1] if line.endswith(b"\r") else line for line in lines]


def _row(line: bytes, jsonl: bool, names: list[str]):
    """One line as ``{column: value}``; raises SchemaError with the reason."""
    if not line.strip():
        raise SchemaError("empty line")
    try:
        text = line.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise SchemaError(f"not UTF-8 ({exc.reason})") from None
    if jsonl:
        value = contracts.loads(text)
    else:
        try:
            value = next(csv.reader(io.StringIO(text, newline=""), strict=True))
        except csv.Error as exc:
            raise SchemaError(f"malformed CSV ({exc})") from None
    if isinstance(value, dict):
        return value
    if isinstance(value, list):
        if len(value) != len(names):
            raise SchemaError(f"expected {len(names)} values in the model's column order {names!r}, got {len(value)}")
        return dict(zip(names, value))
    raise SchemaError(f"expected an object or a list, got {type(value).__name__}")


@dataclass
class LinesScored:
    """A scored batch body: the answer, its media type, the probabilities of the scored lines and the count refused."""

    body: bytes
    media_type: str
    proba: np.ndarray
    lines: int
    refused: int


def score_lines(body: bytes, content_type: str | None, accept: str | None, scorer, validator: Validator) -> LinesScored:
    """Score every line of a batch body; a line that cannot be scored gets an error line, never fails the batch.

    Raises
    ------
    RequestError
        415 for a content type other than CSV or JSON Lines, 406 for an answer type the server cannot write.
    """
    kind = contracts.media_type(content_type)
    jsonl = kind in JSONLINES_TYPES
    if not jsonl and kind not in CSV_TYPES:
        raise RequestError(f"content type {content_type!r} is not a batch format; send text/csv lines or "
                           "application/jsonlines", status=415, details=[f"unsupported content type {content_type!r}"])
    want = contracts.media_type(accept)
    if want in ("", "*/*"):
        want = "application/jsonlines" if jsonl else "text/csv"
    if want not in CSV_TYPES and want not in JSONLINES_TYPES:
        raise RequestError(f"Accept {accept!r} cannot be answered in batch mode; accept text/csv or application/jsonlines",
                           status=406, details=[f"unsupported Accept {accept!r}"])
    lines = split_lines(body)
    rows, errors = [], {}
    for i, line in enumerate(lines):
        try:
            rows.append(_row(line, jsonl, validator.names))
        except SchemaError as exc:
            errors[i] = str(exc)
            rows.append(None)
    scores = score_records(rows, errors, scorer, validator)
    proba = np.fromiter(scores.values(), dtype=np.float64, count=len(scores))
    out = _write(len(lines), scores, errors, scorer.threshold, csv_out=want in CSV_TYPES)
    return LinesScored(out, "text/csv" if want in CSV_TYPES else "application/jsonlines", np.asarray(proba),
                       len(lines), len(errors))


def score_records(rows: list, errors: dict, scorer, validator: Validator) -> dict[int, float]:
    """Score the ``{column: value}`` rows (None where a row was already refused, its reason in ``errors``).

    The rows are validated and scored together; when some do not fit, they are found one by one, their
    reasons added to ``errors``, and the others scored together. Returns ``{row index: probability}``.
    """
    good = [i for i, r in enumerate(rows) if r is not None]
    if not good:
        return {}
    try:
        proba = scorer.predict_batch(validator.records([rows[i] for i in good]))
    except SchemaError:
        ok = []
        for i in good:
            try:
                validator.records([rows[i]])
                ok.append(i)
            except SchemaError as exc:
                errors[i] = "; ".join(exc.details) or str(exc)
        good = ok
        proba = scorer.predict_batch(validator.records([rows[i] for i in good])) if good else np.empty(0)
    return dict(zip(good, proba.tolist()))


def _write(n: int, scores: dict, errors: dict, threshold: float, csv_out: bool) -> bytes:
    errors = {i: " ".join(text.split()) for i, text in errors.items()}  # one output line per input line, always
    buf = io.StringIO()
    if csv_out:
        writer = csv.writer(buf, lineterminator="\n")
        for i in range(n):
            writer.writerow([repr(scores[i])] if i in scores else [ERROR_PREFIX + errors[i]])
        return buf.getvalue().encode()
    parts = []
    for i in range(n):
        obj = ({"churn_probability": scores[i], "churn": scores[i] >= threshold} if i in scores
               else {"error": errors[i]})
        parts.append(contracts.dumps(obj))
    return b"".join(p + b"\n" for p in parts)
