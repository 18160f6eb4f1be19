"""Tables in, typed frames out: the only module that reads raw churn tables.

Real churn exports (the IBM Telco table is the archetype) mix categorical and numeric columns, store
numbers as text with blank cells, spell the label Yes/No, carry an ID column and code flags as 0/1.
:func:`load_table` turns such a file into features, a 0/1 label and a :class:`Schema` that serving and
monitoring validate against later. :func:`synth_month` makes monthly snapshots with a realistic signal.
"""

from __future__ import annotations

import hashlib
import io
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from churnkit.exceptions import DataError, LabelError


class _Pandas:
    """pandas, imported on first use: a scoring server needs only Schema from here (its cold start)."""

    def __getattr__(self, name: str):
        import pandas

        globals()["pd"] = pandas
        return getattr(pandas, name)


pd = _Pandas()

POSITIVE = {"yes", "y", "true", "t", "1", "1.0", "churn", "churned"}
NEGATIVE = {"no", "n", "false", "f", "0", "0.0"}
# A text column is numeric when at least this share of its non-blank cells parse as numbers.
NUMERIC_TEXT_SHARE = 0.95
# A text column with at least this many distinct values per row is an identifier (names, account numbers).
ID_LIKE_SHARE = 0.9
# A categorical column with more distinct values than this is dropped (one-hot encoding it would swamp the
# model with sparse columns, e.g. surnames) unless listed in keep_columns.
MAX_CATEGORIES = 100
# ID-like detection needs this many rows: in a tiny table any column can be unique by chance.
ID_MIN_ROWS = 20
DRIFT_KINDS = ("covariate", "concept", "new_category")
#: How a synthetic export writes the charge columns: in dollars, or in cents (a units bug of an export).
CHARGES_UNITS = ("dollars", "cents")


@dataclass(frozen=True)
class ColumnSpec:
    """One input column as seen in training.

    ``nullable`` is True when training data had missing values there: serving accepts nulls only in
    such columns (the imputer learned its fill value from real gaps). ``numeric_text`` records that the
    raw table stored numbers as text, so serving accepts "29.85" as well as 29.85.
    """

    name: str
    kind: str  # "numeric" | "categorical"
    dtype: str
    nullable: bool
    numeric_text: bool = False
    categories: list[str] = field(default_factory=list)
    minimum: float | None = None
    maximum: float | None = None


@dataclass(frozen=True)
class Schema:
    """The model's input contract: feature columns in order, plus what was dropped and the label."""

    columns: list[ColumnSpec]
    label: str
    dropped: list[str] = field(default_factory=list)
    notes: dict[str, str] = field(default_factory=dict)  # column -> why it was dropped or flagged

    @property
    def names(self) -> list[str]:
        return [c.name for c in self.columns]

    @property
    def numeric(self) -> list[str]:
        return [c.name for c in self.columns if c.kind == "numeric"]

    @property
    def categorical(self) -> list[str]:
        return [c.name for c in self.columns if c.kind == "categorical"]

    def column(self, name: str) -> ColumnSpec:
        for c in self.columns:
            if c.name == name:
                return c
        raise KeyError(name)

    def to_dict(self) -> dict:
        return {"label": self.label, "dropped": list(self.dropped), "columns": [asdict(c) for c in self.columns],
                "notes": dict(self.notes)}

    @classmethod
    def from_dict(cls, d: dict) -> "Schema":
        return cls(
            columns=[ColumnSpec(**c) for c in d["columns"]],
            label=d["label"],
            dropped=list(d.get("dropped", [])),
            notes=dict(d.get("notes", {})),
        )


@dataclass(frozen=True)
class Dataset:
    """Features, label and provenance of one loaded table."""

    X: pd.DataFrame
    y: pd.Series
    schema: Schema
    sha256: str
    source: str

    @property
    def rows(self) -> int:
        return len(self.X)


def read_table(data_path: str | Path) -> pd.DataFrame:
    """Read a CSV or Parquet file as it is (no typing), with a clear error for each way it can fail."""
    path = Path(data_path)
    if not path.exists():
        raise DataError(f"data file {str(path)!r} does not exist; pass data_path pointing to a CSV or Parquet file")
    if path.is_dir():
        raise DataError(f"data_path {str(path)!r} is a folder; pass a CSV or Parquet file inside it")
    suffix = path.suffix.lower()
    try:
        if suffix in (".parquet", ".pq"):
            frame = pd.read_parquet(path)
        elif suffix in (".csv", ".txt", ".gz"):
            # Everything as text first: we decide types ourselves, so "29.85" and " " are seen as written.
            frame = pd.read_csv(path, dtype=str, keep_default_na=False, na_values=[""])
        else:
            raise DataError(f"data file {str(path)!r} has extension {suffix!r}; use .csv or .parquet")
    except DataError:
        raise
    except PermissionError as exc:
        raise DataError(f"data file {str(path)!r} cannot be read ({exc.strerror}); check its permissions") from exc
    except Exception as exc:  # parser errors differ by engine; all mean the same to the user
        raise DataError(
            f"data file {str(path)!r} could not be parsed as {suffix.lstrip('.') or 'a table'}: "
            f"{type(exc).__name__}: {exc}; check the file is a valid CSV (comma-separated, header row) or Parquet"
        ) from exc
    if frame.empty or len(frame.columns) == 0:
        raise DataError(f"data file {str(path)!r} has no rows; pass a table with a header and at least one row")
    return frame


def file_sha256(path: str | Path) -> str:
    """sha256 of a file's bytes, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def frame_sha256(frame: pd.DataFrame) -> str:
    """A content hash of a frame (synthetic data has no file to hash)."""
    buf = io.StringIO()
    frame.to_csv(buf, index=False)
    return hashlib.sha256(buf.getvalue().encode()).hexdigest()


def map_label(values: pd.Series, label_column: str = "churn") -> pd.Series:
    """Map label spellings (Yes/No, yes/no, True/False, 1/0, ...) to 0/1.

    Raises
    ------
    LabelError
        When a value has no known spelling (the message lists the values seen), when labels are
        missing, or when only one class is present.
    """
    if values.isna().any():
        n = int(values.isna().sum())
        raise LabelError(
            f"label column {label_column!r} has {n} missing value(s); drop those rows or fill them before training"
        )
    text = values.map(lambda v: str(v).strip().lower())
    unknown = sorted(set(text) - POSITIVE - NEGATIVE)
    if unknown:
        seen = sorted({str(v) for v in values.unique()})[:10]
        raise LabelError(
            f"label column {label_column!r} has values we cannot read as churn yes/no: {unknown[:10]!r} "
            f"(values seen: {seen!r}); recode them to Yes/No, True/False or 1/0"
        )
    y = text.isin(POSITIVE).astype("int64")
    if y.nunique() < 2:
        only = "churned" if y.iloc[0] == 1 else "stayed"
        raise LabelError(
            f"label column {label_column!r} has one class only (every row {only}, value {values.iloc[0]!r}); "
            "training needs customers who churned and customers who stayed"
        )
    y.name = label_column
    return y


def _numeric_share(col: pd.Series) -> float:
    present = col.dropna()
    if present.empty:
        return 0.0
    return float(pd.to_numeric(present.astype(str).str.strip(), errors="coerce").notna().mean())


def to_numeric(col: pd.Series) -> pd.Series:
    """Numbers stored as text (with blanks) become float; blanks become NaN."""
    if pd.api.types.is_bool_dtype(col):
        return col.astype("float64")
    if pd.api.types.is_numeric_dtype(col):
        return col.astype("float64")
    text = col.astype(object).where(col.notna(), None).map(lambda v: v.strip() if isinstance(v, str) else v)
    return pd.to_numeric(text.replace("", np.nan), errors="coerce").astype("float64")


def to_categorical(col: pd.Series) -> pd.Series:
    """Text categories as Python str (object dtype), stripped, with NaN for blanks and missing values."""
    return col.astype(object).map(_category).astype(object)


def _category(v):
    if v is None or v is pd.NA or (isinstance(v, float) and np.isnan(v)):
        return np.nan
    text = str(v).strip()
    return text if text else np.nan


def _clean_numbers(col: pd.Series) -> bool:
    """True when every present cell is a number as written (no blanks, padding or stray text to coerce)."""
    present = col.dropna().astype(str)
    return bool(pd.to_numeric(present, errors="coerce").notna().all()) and bool(present.str.strip().eq(present).all())


def _integers_unique_per_row(values: pd.Series) -> bool:
    present = values.dropna()
    return (len(values) >= ID_MIN_ROWS and len(present) == len(values) and present.is_unique
            and bool(np.all(np.mod(present.to_numpy(), 1) == 0)))


def infer_schema(
    frame: pd.DataFrame,
    label_column: str,
    id_columns: list[str] | tuple = (),
    keep_columns: list[str] | tuple = (),
    *,
    text_table: bool = False,
) -> Schema:
    """Infer each column's role: numeric, numeric-as-text, categorical, or an ID to drop.

    Dropped with a note in ``Schema.notes``: ``id_columns``; integer columns unique per row (row numbers,
    customer numbers); text columns with a distinct value in at least :data:`ID_LIKE_SHARE` of the rows
    (IDs, names); categorical columns with more than :data:`MAX_CATEGORIES` values. ``keep_columns`` keeps
    a column the last three rules would drop (the note says so).

    ``text_table`` says every cell was read as text (CSV): a numeric column is then "text in file"
    (``numeric_text``) only when cells needed cleaning (blanks, padding, stray text), as in Telco's
    ``TotalCharges``; otherwise any text column read as numbers is.
    """
    dropped = [c for c in id_columns if c in frame.columns]
    notes = {str(c): "id_columns: listed in id_columns" for c in dropped}
    keep = {str(c) for c in keep_columns}
    rows = len(frame)
    specs: list[ColumnSpec] = []

    def drop(name: str, why: str) -> bool:
        notes[name] = why  # "<rule>: <detail>"; kept or dropped shows in schema.dropped
        if name in keep:
            return False
        dropped.append(name)
        return True

    for name in frame.columns:
        if name == label_column or name in dropped:
            continue
        col = frame[name]
        blank = col.isna() | col.astype(str).str.strip().eq("")
        if blank.all():
            raise DataError(
                f"column {name!r} is empty in every row; remove it from the table or add it to id_columns to drop it"
            )
        native_numeric = pd.api.types.is_numeric_dtype(col) and not pd.api.types.is_bool_dtype(col)
        if native_numeric or (not pd.api.types.is_bool_dtype(col) and _numeric_share(col[~blank]) >= NUMERIC_TEXT_SHARE):
            values = to_numeric(col)
            if _integers_unique_per_row(values) and drop(str(name), "ID-like: integers unique per row"):
                continue
            coerced = not native_numeric and (not text_table or not _clean_numbers(col))
            specs.append(
                ColumnSpec(
                    name=str(name), kind="numeric", dtype=str(col.dtype), nullable=bool(values.isna().any()),
                    numeric_text=coerced,
                    minimum=float(values.min()), maximum=float(values.max()),
                )
            )
            continue
        values = to_categorical(col)
        present = values.dropna()
        distinct = int(present.nunique())
        if rows >= ID_MIN_ROWS and distinct >= ID_LIKE_SHARE * rows:
            if drop(str(name), f"ID-like: text with {distinct:,} distinct values in {rows:,} rows"):
                continue
        elif distinct > MAX_CATEGORIES and drop(str(name), f"too many categories: {distinct:,} distinct values, above the limit of {MAX_CATEGORIES}"):
            continue
        specs.append(
            ColumnSpec(
                name=str(name), kind="categorical", dtype=str(col.dtype), nullable=bool(values.isna().any()),
                categories=sorted(map(str, present.unique())),
            )
        )
    if not specs:
        raise DataError(
            f"no feature columns left after dropping the label {label_column!r} and ID columns {dropped!r}; "
            "check label_column and id_columns (keep_columns keeps a column dropped as ID-like)"
        )
    return Schema(columns=specs, label=label_column, dropped=dropped, notes=notes)


def prepare_features(frame: pd.DataFrame, schema: Schema) -> pd.DataFrame:
    """Select the schema's columns, in order, typed as the model expects (numeric float, categories str)."""
    missing = [c for c in schema.names if c not in frame.columns]
    if missing:
        raise DataError(f"table lacks the model's input column(s) {missing!r}; the model was trained on {schema.names!r}")
    out = {}
    for spec in schema.columns:
        out[spec.name] = to_numeric(frame[spec.name]) if spec.kind == "numeric" else to_categorical(frame[spec.name])
    return pd.DataFrame(out, index=frame.index)


def load_table(
    data_path: str | Path | pd.DataFrame = "",
    label_column: str = "churn",
    id_columns: list[str] | tuple = (),
    *,
    keep_columns: list[str] | tuple = (),
    rows: int = 4000,
    month: int = 1,
    seed: int = 0,
    drift: str | None = None,
    charges_unit: str = "dollars",
) -> Dataset:
    """Load a churn table (or a synthetic month when ``data_path`` is empty) for training.

    Parameters
    ----------
    data_path : str, Path or DataFrame
        CSV or Parquet file; "" makes a synthetic month with ``rows``, ``month``, ``seed``, ``drift``.
    label_column : str
        The churn label; Yes/No, yes/no, True/False and 1/0 are all read.
    id_columns : list of str
        Columns to drop; ID-like columns (text or integers unique per row, text with a distinct value in
        nearly every row) and categorical columns above :data:`MAX_CATEGORIES` values are dropped as well,
        each with a note in ``schema.notes``.
    keep_columns : list of str
        Columns to keep although the rules above would drop them.

    Raises
    ------
    DataError
        Missing/unreadable/empty file, absent label column (the message lists the columns), a column
        empty in every row; :class:`LabelError` for labels that cannot be read or have one class.
    """
    if isinstance(data_path, pd.DataFrame):
        frame, source, digest = data_path, "<DataFrame>", frame_sha256(data_path)
    elif not data_path:
        frame = synth_month(rows=rows, month=month, seed=seed, drift=drift, charges_unit=charges_unit)
        source = f"synthetic:rows={rows},month={month},seed={seed},drift={drift or 'none'}" + (
            f",charges_unit={charges_unit}" if charges_unit != "dollars" else "")
        digest = frame_sha256(frame)
    else:
        frame, source, digest = read_table(data_path), str(data_path), file_sha256(data_path)
    if frame.empty:
        raise DataError(f"table {source!r} has no rows; pass a table with at least one customer")
    if isinstance(id_columns, str):
        id_columns = [id_columns]
    if isinstance(keep_columns, str):
        keep_columns = [keep_columns]
    for option, names in (("id_columns", id_columns), ("keep_columns", keep_columns)):
        unknown = [c for c in names if c not in frame.columns]
        if unknown:
            raise DataError(f"{option} {unknown!r} are not in the table; its columns are {list(frame.columns)!r}")
    if label_column not in frame.columns:
        near = [c for c in frame.columns if str(c).lower() == str(label_column).lower()]
        hint = f" (did you mean {near[0]!r}?)" if near else ""
        raise LabelError(
            f"label column {label_column!r} is not in the table{hint}; its columns are {list(frame.columns)!r}; "
            "pass label_column with one of them"
        )
    y = map_label(frame[label_column], label_column)
    text_table = isinstance(data_path, (str, Path)) and bool(data_path) and Path(data_path).suffix.lower() != ".parquet" \
        and Path(data_path).suffix.lower() != ".pq"
    schema = infer_schema(frame, label_column, list(id_columns), list(keep_columns), text_table=text_table)
    X = prepare_features(frame, schema)
    return Dataset(X=X.reset_index(drop=True), y=y.reset_index(drop=True), schema=schema, sha256=digest, source=source)


# --------------------------------------------------------------------------------------------------
# Synthetic monthly snapshots
# --------------------------------------------------------------------------------------------------

CONTRACTS = ["Month-to-month", "One year", "Two year"]
INTERNET = ["DSL", "Fiber optic", "No"]
PAYMENTS = ["Electronic check", "Mailed check", "Bank transfer (automatic)", "Credit card (automatic)"]


def synth_month(rows: int = 4000, month: int = 1, seed: int = 0, drift: str | None = None,
                charges_unit: str = "dollars") -> pd.DataFrame:
    """Make one month's customer snapshot shaped like the Telco export, churn label included.

    The churn signal comes from contract type, tenure, monthly charges, fiber internet, electronic
    checks, support calls and seniority. The same ``seed`` and ``month`` give the same table.

    Parameters
    ----------
    drift : {None, "covariate", "concept", "new_category"}
        ``covariate``: newer customers on pricier plans; ``concept``: the same customers churn for
        other reasons (fiber and charges matter more, contracts less); ``new_category``: a payment
        method never seen before appears.
    charges_unit : {"dollars", "cents"}
        ``cents`` writes ``monthly_charges`` and ``total_charges`` in cents, as a faulty export would; the
        customers and their churn are the same as in dollars.
    """
    if charges_unit not in CHARGES_UNITS:
        raise DataError(f"unknown charges_unit {charges_unit!r}; use one of {CHARGES_UNITS!r}")
    if drift in ("", "none"):
        drift = None
    if drift is not None and drift not in DRIFT_KINDS:
        raise DataError(f"unknown drift kind {drift!r}; use one of {DRIFT_KINDS!r} or leave it empty")
    if int(rows) < 1:
        raise DataError(f"rows must be at least 1, got {rows!r}")
    rows = int(rows)
    rng = np.random.default_rng([int(seed), int(month)])
    cov = drift == "covariate"
    contract = rng.choice(CONTRACTS, rows, p=[0.72, 0.17, 0.11] if cov else [0.55, 0.24, 0.21])
    tenure_scale = {"Month-to-month": 14.0, "One year": 36.0, "Two year": 52.0}
    scale = np.vectorize(tenure_scale.get)(contract) * (0.55 if cov else 1.0)
    tenure = np.minimum(72, np.floor(rng.exponential(scale))).astype(int)
    internet = rng.choice(INTERNET, rows, p=[0.34, 0.44, 0.22])
    base_charge = np.where(internet == "Fiber optic", 85.0, np.where(internet == "DSL", 58.0, 22.0))
    monthly = np.round(base_charge + rng.normal(0, 12, rows) + (12.0 if cov else 0.0), 2).clip(18.25, 130)
    payments = list(PAYMENTS)
    p_pay = [0.34, 0.23, 0.22, 0.21]
    if drift == "new_category":
        payments.append("Digital wallet")
        p_pay = [0.26, 0.17, 0.17, 0.16, 0.24]
    payment = rng.choice(payments, rows, p=p_pay)
    senior = (rng.random(rows) < 0.16).astype(int)
    partner = rng.choice(["Yes", "No"], rows, p=[0.48, 0.52])
    dependents = rng.choice(["Yes", "No"], rows, p=[0.3, 0.7])
    paperless = rng.choice(["Yes", "No"], rows, p=[0.59, 0.41])
    gender = rng.choice(["Female", "Male"], rows)
    support_calls = rng.poisson(np.where(internet == "Fiber optic", 1.6, 1.0))
    total = np.round(monthly * tenure + rng.normal(0, 5, rows).clip(-4, 4) * (tenure > 0), 2)

    c_effect = {"Month-to-month": 1.1, "One year": -0.4, "Two year": -1.7}
    logit = (
        -1.45
        + np.vectorize(c_effect.get)(contract)
        - 0.055 * tenure
        + 0.028 * (monthly - 65)
        + 0.55 * (internet == "Fiber optic")
        + 0.6 * (payment == "Electronic check")
        + 0.4 * (payment == "Digital wallet")
        + 0.42 * support_calls
        + 0.35 * senior
        + 0.25 * (paperless == "Yes")
        - 0.3 * (partner == "Yes")
        + 0.02 * (month - 1)
    )
    if drift == "concept":
        logit = (
            -1.0
            - 0.25 * np.vectorize(c_effect.get)(contract)
            + 0.01 * tenure
            + 1.6 * (internet == "DSL")
            - 0.02 * (monthly - 65)
            - 0.3 * support_calls
            + 0.8 * (payment == "Mailed check")
        ) * 1.3
    churn = rng.random(rows) < 1 / (1 + np.exp(-1.5 * logit))
    ids = [f"{rng.integers(1000, 9999)}-{''.join(rng.choice(list('ABCDEFGHIJKLMNOPQRSTUVWXYZ'), 5))}" for _ in range(rows)]
    ids = [f"{i}-{n}" for n, i in enumerate(ids)]  # unique per row
    if charges_unit == "cents":  # after the churn draw: the same customers, another unit in the export
        monthly, total = np.round(monthly * 100), np.round(total * 100)
    total_text = np.where(tenure == 0, " ", np.char.mod("%.2f", total))
    return pd.DataFrame(
        {
            "customer_id": ids,
            "gender": gender,
            "senior_citizen": senior,
            "partner": partner,
            "dependents": dependents,
            "tenure": tenure,
            "contract": contract,
            "internet_service": internet,
            "paperless_billing": paperless,
            "payment_method": payment,
            "monthly_charges": monthly,
            "total_charges": total_text,
            "support_calls": support_calls,
            "churn": np.where(churn, "Yes", "No"),
        }
    )


def format_number(value: float | None) -> str:
    """A number as a person reads it: 15,815,690 and 199,992.48, not 1.58157e+07."""
    if value is None or not np.isfinite(value):
        return str(value)
    if float(value).is_integer():
        return f"{int(value):,}"
    if abs(value) >= 1000:
        return f"{value:,.2f}"
    return f"{value:.4g}"


def describe_dataset(dataset: Dataset) -> pd.DataFrame:
    """One row per input column: role, missing share, categories or range (for the notebook).

    ``attrs["summary"]`` is the text to print above the table: rows, churn rate, source, and a note for
    every column dropped by a rule (ID-like, too many categories) or kept against one by ``keep_columns``.
    """
    rows = []
    schema = dataset.schema
    for spec in schema.columns:
        col = dataset.X[spec.name]
        kind = spec.kind + (" (text in file)" if spec.numeric_text else "")
        if spec.name in schema.notes:
            kind += " (kept by keep_columns)"
        if spec.kind == "categorical":
            values = ", ".join(spec.categories[:6]) + (f" ... ({len(spec.categories):,} values)"
                                                       if len(spec.categories) > 6 else "")
        else:
            values = f"{format_number(spec.minimum)} .. {format_number(spec.maximum)}"
        rows.append({"column": spec.name, "kind": kind, "missing": f"{col.isna().mean():.1%}", "values": values})
    for name in schema.dropped:
        rule, _, detail = schema.notes.get(name, "ID: ").partition(": ")
        rows.append({"column": name, "kind": f"dropped ({rule})", "missing": "", "values": detail})
    out = pd.DataFrame(rows).set_index("column")
    lines = [f"{dataset.rows:,} rows, churn rate {dataset.y.mean():.1%}, source {dataset.source}"]
    for name, why in schema.notes.items():
        if why.startswith("id_columns:"):
            continue
        if name in schema.dropped:
            lines.append(f"note: dropped {name!r}, {why}; keep it with keep_columns=[{name!r}]")
        else:
            lines.append(f"note: kept {name!r} as keep_columns asks, although {why}")
    out.attrs["summary"] = "\n".join(lines)
    return out


def write_table(frame: pd.DataFrame, out: str | Path) -> Path:
    """Write ``frame`` as CSV or Parquet by the file's extension."""
    path = Path(out)
    suffix = path.suffix.lower()
    if suffix not in (".csv", ".parquet", ".pq"):
        raise DataError(f"output file {str(path)!r} has extension {suffix!r}; use .csv or .parquet")
    path.parent.mkdir(parents=True, exist_ok=True)
    if suffix == ".csv":
        frame.to_csv(path, index=False)
    else:
        frame.to_parquet(path, index=False)
    return path
