"""Request rows checked against the model's training schema and typed into a :class:`Batch`.

Rules per column of :class:`churnkit.data.Schema`:

- numeric columns take JSON numbers, numeric text (``"29.85"``, surrounding blanks ignored) and
  booleans (1/0); ``"abc"``, objects, lists, NaN and infinity are refused;
- categorical columns take text (stripped) and numbers (as their text, as in training); a category
  never seen in training is accepted and encoded like training does (all-zero one-hot);
- null (JSON ``null``, an empty CSV cell, a blank string) is accepted only in columns that had
  missing values in the training data (``ColumnSpec.nullable``): the imputer learned its fill value
  from real gaps there; elsewhere a null is refused with the column named;
- every model column must be present; an unknown column is refused; the ID columns and the label
  (``schema.dropped``, ``schema.label``) are accepted and ignored, so a raw export row can be sent.

Problems are grouped (column, problem) so a thousand bad rows make one line of the 422 response.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from churnkit.data import Schema
from churnkit.exceptions import SchemaError

#: At most this many problems are listed in an error response.
MAX_DETAILS = 20


@dataclass
class Batch:
    """Validated rows, typed for the model.

    Attributes
    ----------
    numeric : ndarray of shape (rows, len(schema.numeric))
        float64, NaN where the value was null.
    categorical : list of lists
        One list per ``schema.categorical`` column: str, or None where the value was null.
    """

    numeric: np.ndarray
    categorical: list[list]

    @property
    def rows(self) -> int:
        return int(self.numeric.shape[0])


class _Bad(Exception):
    """A value cannot be read as its column's kind (internal; becomes one 422 detail)."""


def _short(value) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _to_number(v):
    """Float for a number or numeric text, None for null; raises _Bad otherwise."""
    t = type(v)
    if t is float:
        if v - v == 0.0:  # finite (inf - inf and nan - nan are nan)
            return v
        raise _Bad(f"expected a finite number, got {_short(v)}; send null for a missing value")
    if t is int:
        try:
            return float(v)
        except OverflowError:
            raise _Bad(f"number {_short(v)} is too large") from None
    if v is None:
        return None
    if t is str:
        s = v.strip()
        if not s:
            return None
        try:
            f = float(s)
        except ValueError:
            raise _Bad(f"expected a number, got {_short(v)}") from None
        if f - f != 0.0:
            raise _Bad(f"expected a finite number, got {_short(v)}; send null for a missing value")
        return f
    if t is bool:
        return 1.0 if v else 0.0
    raise _Bad(f"expected a number, got {type(v).__name__} {_short(v)}")


def _to_category(v):
    """Stripped text for a category (numbers as their text), None for null; raises _Bad otherwise."""
    t = type(v)
    if t is str:
        return v.strip() or None
    if v is None:
        return None
    if t is int or t is bool:
        return str(v)
    if t is float:
        if v - v == 0.0:
            return str(v)
        raise _Bad(f"expected text, got {_short(v)}")
    raise _Bad(f"expected text, got {type(v).__name__} {_short(v)}")


class _Problems:
    """Collects problems grouped by (column, text) so 1000 bad rows make one detail line."""

    def __init__(self):
        self.groups: dict[tuple[str, str], list[int]] = {}

    def add(self, row: int | None, column: str, text: str) -> None:
        self.groups.setdefault((column, text), []).append(row)

    def details(self) -> list[str]:
        out = []
        for (column, text), rows in self.groups.items():
            where = ""
            rows = [r for r in rows if r is not None]
            if len(rows) == 1:
                where = f" (row {rows[0]})"
            elif rows:
                shown = ", ".join(map(str, rows[:5]))
                more = f" and {len(rows) - 5} more" if len(rows) > 5 else ""
                where = f" (rows {shown}{more})"
            out.append(f"{column}: {text}{where}" if column else f"{text}{where}")
        if len(out) > MAX_DETAILS:
            out = out[:MAX_DETAILS] + [f"... and {len(out) - MAX_DETAILS} more problems"]
        return out

    def raise_if_any(self, what: str) -> None:
        if self.groups:
            details = self.details()
            raise SchemaError(f"{what} do not match the model's input schema: {details[0]}", status=422, details=details)


class Validator:
    """Checks rows against a :class:`Schema` and types them into a :class:`Batch`.

    Parameters
    ----------
    schema : Schema
        The model's training schema.
    max_rows : int
        More rows than this in one request is refused (413).
    """

    def __init__(self, schema: Schema, max_rows: int = 10_000):
        self.schema = schema
        self.max_rows = int(max_rows)
        self.numeric = list(schema.numeric)
        self.categorical = list(schema.categorical)
        self.names = list(schema.names)
        self.expected = frozenset(self.names)
        self.ignored = frozenset([*schema.dropped, schema.label]) - self.expected
        self.nullable = frozenset(c.name for c in schema.columns if c.nullable)
        self._null_hint = (
            f"null is not accepted here: training data had no missing values in this column "
            f"(nullable columns: {sorted(self.nullable)!r})"
        )

    def check_count(self, n: int) -> None:
        """Refuse ``n`` rows: 422 for none, 413 above ``max_rows``."""
        if n == 0:
            raise SchemaError("the request has no rows to score; send at least one row", status=422,
                              details=["no rows: send at least one instance"])
        if n > self.max_rows:
            raise SchemaError(
                f"the request has {n} rows, more than the limit of {self.max_rows}; split it into smaller "
                "batches or start the server with a larger --max-rows",
                status=413, details=[f"rows: {n} > max_rows {self.max_rows}"],
            )

    def _unknown_text(self, key) -> str:
        return (f"unknown column {key!r}; the model's columns are {self.names!r} "
                f"(ID and label columns {sorted(self.ignored)!r} are accepted and ignored)")

    def records(self, rows: list) -> Batch:
        """Validate a list of ``{column: value}`` objects; raises SchemaError (422/413) naming every problem."""
        self.check_count(len(rows))
        problems = _Problems()
        expected, ignored, nullable = self.expected, self.ignored, self.nullable
        numeric_rows = []
        cats = [[] for _ in self.categorical]
        nan = float("nan")
        for i, row in enumerate(rows):
            if type(row) is not dict:
                problems.add(i, "", f"expected an object {{column: value}}, got {type(row).__name__} {_short(row)}")
                numeric_rows.append([nan] * len(self.numeric))
                for col in cats:
                    col.append(None)
                continue
            keys = row.keys()
            if len(keys) != len(expected) or not expected.issuperset(keys):
                for name in self.names:
                    if name not in row:
                        problems.add(i, f"column {name!r}", "missing")
                for key in keys - expected - ignored:
                    problems.add(i, f"column {key!r}" if isinstance(key, str) else "column", self._unknown_text(key))
            values = []
            for name in self.numeric:
                v = row.get(name)
                try:
                    f = _to_number(v)
                except _Bad as exc:
                    problems.add(i, f"column {name!r}", str(exc))
                    f = nan
                else:
                    if f is None:
                        if name not in nullable and name in row:
                            problems.add(i, f"column {name!r}", self._null_hint)
                        f = nan
                values.append(f)
            numeric_rows.append(values)
            for name, col in zip(self.categorical, cats):
                v = row.get(name)
                try:
                    c = _to_category(v)
                except _Bad as exc:
                    problems.add(i, f"column {name!r}", str(exc))
                    c = None
                else:
                    if c is None and name not in nullable and name in row:
                        problems.add(i, f"column {name!r}", self._null_hint)
                col.append(c)
        problems.raise_if_any("the rows")
        numeric = np.array(numeric_rows, dtype=np.float64).reshape(len(rows), len(self.numeric))
        return Batch(numeric=numeric, categorical=cats)

    def check_columns(self, columns: list) -> None:
        """Validate a header (``columns`` of a split/table payload): no duplicates, none missing, none unknown."""
        problems = _Problems()
        seen = set()
        for c in columns:
            if not isinstance(c, str):
                problems.add(None, "columns", f"column names must be text, got {_short(c)}")
            elif c in seen:
                problems.add(None, f"column {c!r}", "given twice")
            else:
                seen.add(c)
        for name in self.names:
            if name not in seen:
                problems.add(None, f"column {name!r}", "missing")
        for c in columns:
            if isinstance(c, str) and c not in self.expected and c not in self.ignored:
                problems.add(None, f"column {c!r}", self._unknown_text(c))
        problems.raise_if_any("the columns")

    def table(self, columns: list | None, rows: list) -> Batch:
        """Validate list-of-lists rows under ``columns`` (the model's column order when None)."""
        if columns is None:
            columns = self.names
        else:
            self.check_columns(columns)
        self.check_count(len(rows))
        width = len(columns)
        problems = _Problems()
        for i, row in enumerate(rows):
            if type(row) is not list:
                problems.add(i, "", f"expected a list of {width} values, got {type(row).__name__} {_short(row)}")
            elif len(row) != width:
                hint = "" if columns is not self.names else f" (without 'columns', the model's columns in order: {self.names!r})"
                problems.add(i, "", f"expected {width} values, got {len(row)}{hint}")
        problems.raise_if_any("the rows")
        return self.records([dict(zip(columns, row)) for row in rows])
