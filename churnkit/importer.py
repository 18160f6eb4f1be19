"""Bring your own model: an existing scikit-learn model file into the registry, like a trained one.

:func:`import_model` takes a ``.joblib``/``.pkl``/``.pickle`` file, a ``.skops`` file or an MLflow
model folder (sklearn flavor) plus a sample table, and registers the model as a new version:

1. :func:`scan_model_file` lists every global the file names, without loading it
   (:mod:`churnkit.scan`, a report).
2. :func:`load_foreign_model` hands the file's bytes to an isolated child process
   (:mod:`churnkit.sandbox`: no network, throwaway home, no file writes, CPU/memory/time limits)
   that unpickles it with joblib's unpickler gated by the exact allow-list
   (:func:`churnkit.scan.resolve_global`), checks it is a fitted two-class classifier with
   ``predict_proba``, finds its input columns (``feature_names_in_`` or ``columns``), wraps a bare
   estimator in a Pipeline whose first step selects them, scores the sample, and answers with the
   model as skops bytes plus JSON. This process loads only those skops bytes, trusting exactly the
   allow-listed types, and checks they score the sample as the original did.
3. The sample is read like training data (:mod:`churnkit.data`), checked against the columns, and
   scored; a labelled sample is evaluated and gated exactly as in ``02-evaluate``.
4. What passes is logged through :func:`churnkit.registry.log_candidate` (re-saved as skops with its
   trusted types and the churnkit schema) and registered through
   :func:`churnkit.registry.register_candidate`: nothing downstream ever unpickles the original.

Nothing touches the registry until every check passed.
"""

from __future__ import annotations

import json
import os
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from churnkit.config import DEFAULT_MODEL_NAME, TAG, Config, load_config
from churnkit.data import Dataset, Schema, file_sha256, infer_schema, map_label, prepare_features, read_table
from churnkit.evaluate import (
    DEFAULT_AUC_THRESHOLD,
    DEFAULT_MIN_IMPROVEMENT,
    Evaluation,
    GateResult,
    describe_schema_diff,
    evaluate_holdout,
    gate,
    schema_diff,
)
from churnkit.exceptions import (
    DataError,
    IntegrityError,
    LabelError,
    ModelFileError,
    ModelImportError,
    UnsafeModelError,
)
from churnkit.scan import (
    ScanVerdict,
    decompress_joblib,
    load_skops,
    parse_types,
    restricted_unpickler,
    scan_pickle_bytes,
    scan_skops_bytes,
)


PICKLE_SUFFIXES = (".joblib", ".pkl", ".pickle")
#: Probabilities of the registered (re-saved) model must equal the original's this closely.
TOLERANCE = 1e-9


# --------------------------------------------------------------------------------------------------
# Reading the file
# --------------------------------------------------------------------------------------------------

@dataclass
class _Source:
    path: Path  # what the user passed
    model_file: Path  # the bytes that get deserialized
    kind: str  # "pickle" | "skops"
    raw: bytes


def _source(model_path) -> _Source:
    path = Path(model_path)
    if not path.exists():
        raise ModelFileError(f"model file {str(path)!r} does not exist; pass a .joblib, .pkl, .skops file or an "
                             "MLflow model folder")
    if path.is_dir():
        return _mlflow_folder(path)
    suffix = path.suffix.lower()
    if suffix not in PICKLE_SUFFIXES + (".skops",):
        raise ModelFileError(f"model file {str(path)!r} has extension {suffix!r}; churnkit imports .joblib, .pkl, "
                             ".pickle, .skops files and MLflow model folders")
    return _Source(path, path, "skops" if suffix == ".skops" else "pickle", path.read_bytes())


def _mlflow_folder(path: Path) -> _Source:
    import yaml

    from churnkit.artifact import confined

    mlmodel = path / "MLmodel"
    if not mlmodel.exists():
        raise ModelFileError(f"folder {str(path)!r} has no MLmodel file; pass an MLflow model folder or a model file")
    try:
        flavors = (yaml.safe_load(mlmodel.read_text()) or {}).get("flavors") or {}
    except yaml.YAMLError as exc:
        raise ModelFileError(f"{str(mlmodel)!r} is not valid YAML ({exc}); the folder is corrupted") from exc
    sk = flavors.get("sklearn")
    if not sk:
        raise ModelFileError(f"MLflow model {str(path)!r} has flavors {sorted(flavors)!r}, not 'sklearn'; churnkit "
                             "imports scikit-learn models only")
    fmt = sk.get("serialization_format", "cloudpickle")
    name = sk.get("pickled_model")
    if sk.get("code"):
        raise ModelFileError(f"MLflow model {str(path)!r} declares a code directory {sk['code']!r}; churnkit never "
                             "loads code shipped with a model: save the model without code_paths")
    try:
        file = confined(path, str(name or ""), "its MLmodel")
    except IntegrityError as exc:
        raise ModelFileError(str(exc)) from None
    if not name or not file.is_file():
        raise ModelFileError(f"MLflow model {str(path)!r} names model file {name!r}, which is not there")
    if fmt not in ("skops", "pickle", "cloudpickle"):
        raise ModelFileError(f"MLflow model {str(path)!r} is serialized as {fmt!r}; churnkit reads skops, pickle "
                             "and cloudpickle")
    return _Source(path, file, "skops" if fmt == "skops" else "pickle", file.read_bytes())


def _scan_bytes(kind: str, raw: bytes, where: str, extra=frozenset()) -> tuple[ScanVerdict, bytes]:
    if kind == "skops":
        return scan_skops_bytes(raw, where, extra), raw
    data, fmt = decompress_joblib(raw, where)
    return scan_pickle_bytes(data, where, fmt, extra), data


def scan_model_file(model_path, trust_types=()) -> ScanVerdict:
    """List the globals (pickles) or types (skops) a model file or MLflow folder would load, without loading it."""
    src = _source(model_path)
    return _scan_bytes(src.kind, src.raw, str(src.model_file), parse_types(trust_types))[0]


def _refuse(verdict: ScanVerdict) -> UnsafeModelError:
    first = verdict.refused[0]
    return UnsafeModelError(
        f"model file {verdict.path!r} imports {first!r}"
        + (f" and {len(verdict.refused) - 1} more ({', '.join(verdict.refused[1:6])})" if len(verdict.refused) > 1 else "")
        + ", not on churnkit's exact allow-list of classes (scikit-learn, NumPy, SciPy, pandas, joblib); nothing "
        f"was loaded. If you know the class, vouch for it: --trust-type {first} (trust_types=[...], recorded on the "
        "version); re-save the model with only library objects; or pass --trust (trust=True) if you trust the whole "
        "file (recorded on the version)",
        refused=verdict.refused,
    )


def _deserialize(kind: str, data: bytes, verdict: ScanVerdict, trust: bool, extra):
    if kind == "skops":
        if trust:  # the caller trusts the whole file: skops is told to trust what it names
            import skops.io

            return skops.io.loads(data, trusted=verdict.globals)
        return load_skops(data, verdict, extra)
    return restricted_unpickler(data, verdict, extra, trust).load()


# --------------------------------------------------------------------------------------------------
# The model
# --------------------------------------------------------------------------------------------------

@dataclass
class ForeignModel:
    """A foreign model, converted in isolation and loaded back from skops, with what serving needs to know."""

    estimator: Any  # the model as converted (skops round trip of the original object)
    pipeline: Any  # what gets registered: the estimator, or it behind a column-selecting step
    columns: list[str]  # input columns in the model's order
    wrapped: bool
    source: str
    sha256: str
    scan: ScanVerdict
    trusted: bool
    version_warnings: list[str] = field(default_factory=list)
    source_sklearn_version: str = ""
    skops_types: list[str] = field(default_factory=list)  # the types the skops bytes name beyond skops's defaults
    trust_types: list[str] = field(default_factory=list)  # classes the caller vouched for
    proba: Any = None  # the original object's churn probabilities on the sample (None without one)
    isolation: str = ""

    @property
    def kind(self) -> str:
        est = self.estimator
        steps = getattr(est, "steps", None)
        last = steps[-1][1] if steps else est
        return type(last).__name__


def load_foreign_model(model_path, trust: bool = False, columns: list[str] | str | None = None, *,
                       trust_types=(), sample: pd.DataFrame | None = None, label_column: str = "churn",
                       no_gate: bool = False) -> ForeignModel:
    """Scan, load and check a model file in an isolated child; load back its skops conversion here.

    ``trust_types``: classes (``module.Class``) the caller vouches for beyond the exact allow-list.
    ``trust``: the whole file is trusted (the allow-list is lifted; the isolation stays).
    ``sample``: a table as read (:func:`churnkit.data.read_table`); the original object's
    probabilities on it come back in ``proba``.

    Raises
    ------
    UnsafeModelError
        The file names a global outside the allow-list (and ``trust`` is False); nothing was loaded.
    ModelFileError
        Missing, corrupted or truncated file; an unsupported format; a limit of the child hit.
    ModelImportError
        Not a fitted classifier with ``predict_proba`` for two classes; input columns unknown.
    """
    import pickle

    from churnkit.sandbox import run_isolated

    src = _source(model_path)
    extra = parse_types(trust_types)
    if not trust:  # the report refuses what the gate would, before a child is started
        verdict, _ = _scan_bytes(src.kind, src.raw, str(src.model_file), extra)
        if not verdict.safe:
            raise _refuse(verdict)
    frame = pickle.dumps(sample) if sample is not None else b""  # to the child: it trusts what this process sends
    header = {"kind": src.kind, "where": str(src.model_file), "path": str(src.path), "trust": bool(trust),
              "trust_types": sorted(f"{m}.{n}" for m, n in extra), "label_column": label_column,
              "no_gate": bool(no_gate), "columns": columns, "model_bytes": len(src.raw)}
    head, data, isolation = run_isolated("churnkit.importer:convert_model", header, src.raw + frame)
    verdict = ScanVerdict(**{k: v for k, v in head["verdict"].items()})
    verdict.pairs = [tuple(p) for p in verdict.pairs]
    load_extra = extra | (parse_types(head["skops_types"]) if trust else frozenset())
    converted = scan_skops_bytes(data, f"{src.model_file} (converted)", load_extra)
    try:
        if trust:  # the caller trusts the whole file (recorded on the version)
            import skops.io

            pipeline = skops.io.loads(data, trusted=converted.globals)
        else:
            pipeline = load_skops(data, converted, load_extra)
    except UnsafeModelError:
        raise
    except Exception as exc:
        raise ModelImportError(f"the model converted to skops cannot be loaded back ({type(exc).__name__}: {exc}); "
                               "it holds state skops does not keep; not registered") from exc
    wrapped = bool(head["wrapped"])
    return ForeignModel(
        estimator=pipeline.steps[-1][1] if wrapped else pipeline, pipeline=pipeline, columns=list(head["columns"]),
        wrapped=wrapped, source=str(src.path), sha256=file_sha256(src.model_file), scan=verdict,
        trusted=bool(trust) and not verdict.safe, version_warnings=list(head["version_warnings"]),
        source_sklearn_version=head["source_sklearn_version"], skops_types=list(head["skops_types"]),
        trust_types=header["trust_types"], proba=None if head["proba"] is None else np.asarray(head["proba"], float),
        isolation=isolation.describe(),
    )


def convert_model(header: dict, body: bytes) -> tuple[dict, bytes]:
    """In the isolated child: scan, unpickle through the gate, check, wrap, score, convert to skops.

    Returns the JSON header :func:`load_foreign_model` reads and the skops bytes.
    """
    import pickle

    import skops.io
    from sklearn.exceptions import InconsistentVersionWarning

    raw, rest = body[:header["model_bytes"]], body[header["model_bytes"]:]
    where, trust = header["where"], bool(header["trust"])
    extra = parse_types(header["trust_types"])
    verdict, data = _scan_bytes(header["kind"], raw, where, extra)
    if not verdict.safe and not trust:
        raise _refuse(verdict)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", InconsistentVersionWarning)
        try:
            estimator = _deserialize(header["kind"], data, verdict, trust, extra)
        except UnsafeModelError:
            raise
        except Exception as exc:
            raise ModelFileError(f"model file {where!r} could not be loaded ({type(exc).__name__}: {exc}); it is "
                                 "corrupted or truncated, or needs a library that is not installed") from exc
    mismatches = [w.message for w in caught if isinstance(w.message, InconsistentVersionWarning)]
    notes = [f"{m.estimator_name} was saved with scikit-learn {m.original_sklearn_version} and is loaded with "
             f"{m.current_sklearn_version}" for m in mismatches]
    _check_classifier(estimator, header["path"])
    cols = _input_columns(estimator, header["columns"], header["path"])
    pipeline, wrapped = _servable(estimator, cols)
    proba = None
    if rest:
        frame = pickle.loads(rest)  # noqa: S301 - written by the parent process, not by the model file
        sample = sample_from_frame(frame, cols, header["label_column"], no_gate=header["no_gate"], sha256="",
                                   source="sample")
        proba = score_sample(pipeline, sample.X)
        original = score_sample(estimator, sample.X[cols]) if wrapped else proba
        if not np.allclose(proba, original, rtol=0, atol=TOLERANCE):
            raise ModelImportError("the wrapped model's probabilities differ from the original's; report this with "
                                   "the file")
        proba = original.tolist()
    try:
        out = skops.io.dumps(pipeline)
    except Exception as exc:
        raise ModelImportError(f"the model cannot be saved as skops ({type(exc).__name__}: {exc}); churnkit registers "
                               "models only in that format (loading it never runs code)") from exc
    converted = scan_skops_bytes(out, "the converted model", extra)
    if converted.refused and not trust:
        raise UnsafeModelError(f"the model holds {converted.refused!r}, not on churnkit's exact allow-list; vouch "
                               f"for a class with --trust-type {converted.refused[0]}, or pass --trust if you know "
                               "where the file comes from (recorded on the version)", refused=converted.refused)
    head = {"verdict": {"path": verdict.path, "format": verdict.format, "globals": verdict.globals,
                        "refused": verdict.refused, "dangerous": verdict.dangerous, "scanner": verdict.scanner,
                        "pairs": verdict.pairs},
            "columns": cols, "wrapped": wrapped, "kind": type(pipeline.steps[-1][1]).__name__,
            "version_warnings": sorted(set(notes)),
            "source_sklearn_version": mismatches[0].original_sklearn_version if mismatches else "",
            "skops_types": converted.globals, "proba": proba}
    return head, out


def _check_classifier(est, where: str) -> None:
    from sklearn.exceptions import NotFittedError
    from sklearn.utils.validation import check_is_fitted

    if not callable(getattr(est, "predict_proba", None)) or not hasattr(est, "fit"):
        raise ModelImportError(f"{where!r} holds a {type(est).__module__}.{type(est).__name__}, not a classifier with "
                               "predict_proba; save the fitted estimator or Pipeline itself (joblib.dump(model, path))")
    try:
        check_is_fitted(est)
    except NotFittedError as exc:
        raise ModelImportError(f"{where!r} holds an unfitted {type(est).__name__}; fit it before saving ({exc})") from exc
    except TypeError:
        pass  # not an sklearn estimator: classes_ below decides
    classes = getattr(est, "classes_", None)
    if classes is None or len(classes) != 2:
        n = "no" if classes is None else len(classes)
        raise ModelImportError(f"{where!r} is a {type(est).__name__} with {n} classes ({list(classes)[:5] if classes is not None else []!r}); "
                               "churnkit serves two-class churn models (predict_proba column 1 = churn)")


def _input_columns(est, columns, where: str) -> list[str]:
    if isinstance(columns, str):
        columns = [c.strip() for c in columns.split(",") if c.strip()]
    columns = list(columns or [])
    names = getattr(est, "feature_names_in_", None)
    if names is not None:
        names = [str(c) for c in names]
        if columns and columns != names:
            raise ModelImportError(f"columns {columns!r} differ from the {len(names)} columns the model was fitted on "
                                   f"({names!r}); leave columns empty to use the model's own")
        return names
    if not columns:
        n = getattr(est, "n_features_in_", "?")
        raise ModelImportError(f"{where!r} does not record its input column names (no feature_names_in_; it was "
                               f"fitted on a matrix of {n} columns); pass them in training order: --columns a,b,c")
    n = getattr(est, "n_features_in_", None)
    if n is not None and n != len(columns):
        raise ModelImportError(f"{len(columns)} columns given ({columns!r}) but the model was fitted on {n}; pass "
                               "exactly its input columns in training order")
    return columns


def _servable(est, columns: list[str]):
    """The estimator as it is when it is a Pipeline taking named columns, else behind a column selector."""
    from sklearn.compose import ColumnTransformer
    from sklearn.pipeline import Pipeline

    if isinstance(est, Pipeline) and getattr(est, "feature_names_in_", None) is not None:
        return est, False
    select = ColumnTransformer([("columns", "passthrough", list(columns))], remainder="drop",
                               verbose_feature_names_out=False)
    if getattr(est, "feature_names_in_", None) is not None:
        select.set_output(transform="pandas")  # the estimator checks the names it was fitted with
    select.fit(pd.DataFrame({c: [0.0] for c in columns}))
    return Pipeline([("columns", select), ("model", est)]), True


# --------------------------------------------------------------------------------------------------
# The sample
# --------------------------------------------------------------------------------------------------

@dataclass
class Sample:
    X: pd.DataFrame
    y: pd.Series | None
    schema: Schema
    sha256: str
    source: str
    frame: pd.DataFrame  # every column of the table, as read (the champion may need others)


def read_sample(sample_path, columns: list[str], label_column: str = "churn", *, no_gate: bool = False) -> Sample:
    """The sample as typed model inputs (read like training data), its schema and labels (None if unlabelled)."""
    return sample_from_frame(read_table(sample_path), columns, label_column, no_gate=no_gate,
                             sha256=file_sha256(sample_path), source=str(sample_path))


def sample_from_frame(frame: pd.DataFrame, columns: list[str], label_column: str = "churn", *, no_gate: bool = False,
                      sha256: str = "", source: str = "sample") -> Sample:
    """:func:`read_sample` on a table already read."""
    sample_path = source
    labelled = label_column in frame.columns
    if not labelled and not no_gate:
        near = [c for c in frame.columns if str(c).lower() == str(label_column).lower()]
        raise LabelError(f"label column {label_column!r} is not in the sample {str(sample_path)!r}"
                         + (f" (did you mean {near[0]!r}?)" if near else "")
                         + f"; its columns are {list(frame.columns)!r}; pass --label-column with one of them, or "
                         "--no-gate to register without evaluation (recorded on the version)")
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise DataError(f"the sample {str(sample_path)!r} lacks {len(missing)} column(s) the model needs: {missing!r}; "
                        f"the model expects {columns!r}")
    subset = frame[list(columns) + ([label_column] if labelled else [])]
    schema = infer_schema(subset, label_column)
    dropped = [c for c in columns if c not in schema.names]
    if dropped:
        raise DataError(f"model input column(s) {dropped!r} look like IDs in the sample (text, unique per row); a model "
                        "cannot use such a column: re-train it without them")
    schema = Schema(columns=[schema.column(c) for c in columns], label=label_column,
                    dropped=[c for c in frame.columns if c not in columns and c != label_column])
    X = prepare_features(frame, schema).reset_index(drop=True)
    y = map_label(frame[label_column], label_column).reset_index(drop=True) if labelled else None
    return Sample(X, y, schema, sha256, source, frame.reset_index(drop=True))


def score_sample(pipeline, X: pd.DataFrame) -> np.ndarray:
    """Churn probabilities; a failure names the first failing row and, where one value explains it, the column."""
    try:
        proba = _proba(pipeline, X)
    except Exception as exc:
        raise _scoring_error(pipeline, X, exc) from exc
    bad = np.flatnonzero(~np.isfinite(proba))
    if len(bad):
        row = int(bad[0])
        raise ModelImportError(f"the model returns a non-finite churn probability for sample row {row} "
                               f"({_row_text(X, row)}); check the model and that row")
    return proba


def _proba(pipeline, X) -> np.ndarray:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        out = np.asarray(pipeline.predict_proba(X), dtype=float)
    if out.ndim != 2 or out.shape != (len(X), 2):
        raise ModelImportError(f"predict_proba returned shape {out.shape}, expected ({len(X)}, 2)")
    return out[:, 1]


def _scoring_error(pipeline, X: pd.DataFrame, exc: Exception) -> ModelImportError:
    row = None
    for i in range(len(X)):
        try:
            _proba(pipeline, X.iloc[[i]])
        except Exception:
            row = i
            break
    what = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
    if row is None:
        return ModelImportError(f"scoring the sample failed ({what}) although each row scores on its own; "
                                "check the model handles a batch")
    good = next((i for i in range(len(X)) if i != row and _scores(pipeline, X.iloc[[i]])), None)
    column = None
    if good is not None:
        for col in X.columns:
            probe = X.iloc[[row]].copy()
            probe[col] = X[col].iloc[good]
            if _scores(pipeline, probe):
                column = col
                break
    value = X[column].iloc[row] if column else None
    value = value.item() if hasattr(value, "item") else value
    where = f"sample row {row}" + (f", column {column!r} (value {value!r})" if column else "")
    return ModelImportError(f"scoring the sample failed at {where}: {what}; fix that value in the sample or make "
                            "the model handle it (e.g. an imputer in its Pipeline)")


def _scores(pipeline, X) -> bool:
    try:
        _proba(pipeline, X)
        return True
    except Exception:
        return False


def _row_text(X: pd.DataFrame, row: int) -> str:
    return ", ".join(f"{k}={v!r}" for k, v in list(X.iloc[row].items())[:6])


# --------------------------------------------------------------------------------------------------
# Import
# --------------------------------------------------------------------------------------------------

@dataclass
class ImportResult:
    """What an import did: the version (None when the gate refused), the verdict, schema and tags."""

    model_name: str
    version: str | None
    verdict: GateResult
    evaluation: Evaluation | None
    schema: Schema
    columns: list[str]
    scan: ScanVerdict
    tags: dict[str, str]
    threshold: float
    run_id: str
    rows: int
    wrapped: bool
    kind: str
    version_warnings: list[str]
    aliases: dict[str, str] = field(default_factory=dict)
    figure: Any = None  # the evaluation figure (ROC, PR, calibration, confusion), None without labels

    @property
    def schema_changes(self) -> dict | None:
        return None if self.evaluation is None else self.evaluation.schema_changes

    def to_dict(self) -> dict:
        ev = self.evaluation
        return {
            "model_name": self.model_name, "version": self.version, "registered": self.version is not None,
            "aliases": self.aliases, "gate": self.verdict.to_dict(), "gate_summary": self.verdict.summary(),
            "metrics": None if ev is None else ev.challenger, "champion_metrics": None if ev is None else ev.champion,
            "threshold": self.threshold, "rows": self.rows, "columns": self.columns, "model_kind": self.kind,
            "wrapped": self.wrapped, "scan": self.scan.to_dict(), "schema": self.schema.to_dict(),
            "schema_changes": self.schema_changes, "version_warnings": self.version_warnings, "tags": self.tags,
            "run_id": self.run_id,
        }

    def summary(self) -> str:
        ev = self.evaluation
        lines = [f"model    {self.kind} from {self.tags[TAG + 'source_file']} (sha256 {self.tags[TAG + 'source_sha256'][:12]}...)"
                 + (", wrapped to take named columns" if self.wrapped else ""),
                 f"scan     {self.scan.summary()}" + (" — trusted on request" if self.tags.get(TAG + "trusted") else "")]
        lines += [f"warning  {w}" for w in self.version_warnings]
        lines.append(f"sample   {self.rows} rows, {len(self.columns)} input columns")
        if self.schema_changes and not self.schema_changes["same"]:
            lines.append(f"schema   {describe_schema_diff(self.schema_changes)}")
        if ev is not None:
            m = ev.challenger
            lines.append(f"sample   roc_auc {m['roc_auc']:.4f}  pr_auc {m['pr_auc']:.4f}  log_loss {m['log_loss']:.4f}  "
                         f"brier {m['brier']:.4f}  lift_top_decile {m['lift_top_decile']:.4f}")
            if ev.champion is not None:
                lines.append(f"champion roc_auc {ev.champion['roc_auc']:.4f}  pr_auc {ev.champion['pr_auc']:.4f}")
        lines.append(f"gate     {self.verdict.summary()}")
        if self.version:
            role = next((a for a, v in self.aliases.items() if v == self.version), "registered")
            lines.append(f"model    registered {self.model_name} v{self.version} as {role} (threshold {self.threshold:.4f})")
        else:
            lines.append(f"model    nothing registered; {self.model_name!r} registry unchanged (aliases {self.aliases!r})")
        return "\n".join(lines)


def import_model(
    model_path,
    sample_path,
    label_column: str = "churn",
    model_name: str = DEFAULT_MODEL_NAME,
    threshold: float | None = None,
    no_gate: bool = False,
    trust: bool = False,
    columns: list[str] | str | None = None,
    trust_types=(),
    auc_threshold: float = DEFAULT_AUC_THRESHOLD,
    min_improvement: float = DEFAULT_MIN_IMPROVEMENT,
    allow_schema_change: bool = False,
    config: Config | None = None,
) -> ImportResult:
    """Scan, load, check and evaluate a model file, then register it as a version of ``model_name``.

    Parameters
    ----------
    model_path : path
        ``.joblib``/``.pkl``/``.pickle``/``.skops`` file, or an MLflow model folder (sklearn flavor).
    sample_path : path
        CSV or Parquet rows the model scores (its input columns; the label for the gate).
    threshold : float, optional
        The churn decision threshold stored with the version; None (or 0) chooses it on the sample (F1).
    no_gate : bool
        Register without evaluation (required for an unlabelled sample); recorded on the version.
    trust : bool
        Load a file whose globals are outside the allow-list (still in the isolated child); recorded on the version.
    trust_types : list of "module.Class", optional
        Classes the caller vouches for beyond the exact allow-list; recorded on the version.
    columns : list or "a,b,c", optional
        Input columns in training order, for an estimator fitted on a bare matrix.
    allow_schema_change : bool
        Let the candidate replace a champion it cannot be compared with (another input schema).

    Raises
    ------
    ChurnkitError
        Any check failing; the registry is untouched.
    """
    from churnkit import registry, tracking

    config = config or load_config()
    table = read_table(sample_path)
    foreign = load_foreign_model(model_path, trust=trust, columns=columns, trust_types=trust_types, sample=table,
                                 label_column=label_column, no_gate=no_gate)
    sample = sample_from_frame(table, foreign.columns, label_column, no_gate=no_gate,
                               sha256=file_sha256(sample_path), source=str(sample_path))
    original = foreign.proba
    proba = score_sample(foreign.pipeline, sample.X)
    if not np.allclose(proba, original, rtol=0, atol=TOLERANCE):
        raise ModelImportError(
            f"the model converted to skops scores differently from the file (max difference "
            f"{float(np.max(np.abs(proba - original))):.3g}); it holds state skops does not keep; not registered")
    trusted_types = foreign.skops_types or ["numpy.dtype"]
    tracking.setup_tracking(config)
    champion = registry.load_champion(model_name, config)
    evaluation, verdict, fig = None, None, None
    if sample.y is not None:
        evaluation = evaluate_holdout(foreign.pipeline, sample.X, sample.y, champion.pipeline if champion else None,
                                      champion_schema=champion.schema if champion else None,
                                      candidate_schema=sample.schema, champion_rows=sample.frame)
        verdict = gate(evaluation.challenger["roc_auc"], evaluation.champion_auc, auc_threshold, min_improvement,
                       champion_error=evaluation.champion_error, allow_schema_change=allow_schema_change)
        from churnkit.evaluate import plot_evaluation

        fig = plot_evaluation(evaluation.y_true, evaluation.proba, threshold or evaluation.threshold,
                              evaluation.champion_proba)
        import matplotlib.pyplot as plt

        plt.close(fig)  # still drawable (logged below, shown by a notebook); pyplot no longer keeps it per import
    if no_gate:
        why = "gate skipped on request (no_gate)" + ("" if sample.y is not None else ": the sample has no labels")
        verdict = GateResult(passed=True, reasons=[], challenger_auc=float("nan"), auc_threshold=float(auc_threshold),
                             min_improvement=float(min_improvement), notes=[why])
    chosen = float(threshold) if threshold else (evaluation.threshold if evaluation is not None else 0.5)
    tags = _import_tags(foreign, sample, no_gate=no_gate, label_column=label_column)
    if champion is not None:
        tags[TAG + "schema_changes"] = json.dumps(schema_diff(champion.schema, sample.schema))

    mlflow = tracking.mlflow_module()
    started = mlflow.active_run() is None
    run = tracking.start_run("00-import", config)
    try:
        y = sample.y if sample.y is not None else pd.Series(np.full(len(sample.X), np.nan), name=label_column)
        dataset = Dataset(X=sample.X, y=y, schema=sample.schema, sha256=sample.sha256, source=sample.source)
        split = _Holdout(X_holdout=_kept_rows(sample), y_holdout=y)
        run_id = registry.log_candidate(foreign.pipeline, dataset, split, model=f"imported:{foreign.kind}", seed=0,
                                        skops_trusted_types=trusted_types)
        mlflow.set_tags(tags | {TAG + "role": "imported", TAG + "command": "import"})
        if evaluation is not None:
            tracking.log_evaluation(evaluation, verdict, fig)
        else:
            mlflow.set_tags({TAG + "gate_passed": "true", TAG + "gate_summary": verdict.summary(),
                             TAG + "gate": json.dumps(verdict.to_dict())})
        candidate = registry.load_candidate(run_id, config, also_trusted=_vouched(foreign, trust))
        reloaded = score_sample(candidate.pipeline, sample.X)
        if not np.allclose(reloaded, original, rtol=0, atol=TOLERANCE):
            raise ModelImportError(
                f"the model re-saved as skops scores differently from the file (max difference "
                f"{float(np.max(np.abs(reloaded - original))):.3g}); it holds state skops does not keep; not registered")
        from churnkit.reference import reference_from_candidate

        # the rollout reference (the version's scores through the serving scorer, the champion's on the same rows)
        files = reference_from_candidate(candidate, champion, champion_rows=sample.frame).files() if verdict.passed else None
        version = registry.register_candidate(candidate, verdict, model_name=model_name,
                                              metrics=evaluation.challenger if evaluation else None, threshold=chosen,
                                              tags=tags, config=config, files=files)
        current = registry.record_registration(version, model_name, config)
    except BaseException:
        if started:
            mlflow.end_run(status="FAILED")
        raise
    if started:
        mlflow.end_run()
    result = ImportResult(model_name=model_name, version=version, verdict=verdict, evaluation=evaluation,
                          schema=sample.schema, columns=foreign.columns, scan=foreign.scan, tags=tags,
                          threshold=chosen, run_id=run.info.run_id, rows=len(sample.X), wrapped=foreign.wrapped,
                          kind=foreign.kind, version_warnings=foreign.version_warnings, aliases=current,
                          figure=fig)
    return result


def _kept_rows(sample: Sample) -> pd.DataFrame:
    """The sample's rows as kept with the version: its input columns plus every other typed column of the table.

    A rollout replays these rows to champion and challenger alike, so a champion with other input
    columns (the rest of the export) is answered too; ID-like columns and the label are left out.
    """
    try:
        every = infer_schema(sample.frame, sample.schema.label)
        rows = prepare_features(sample.frame, every)
    except DataError:  # a column empty in every row, say: keep the model's own columns only
        return sample.X
    for name in sample.X.columns:
        rows[name] = sample.X[name]
    return rows.reset_index(drop=True)


@dataclass(frozen=True)
class _Holdout:
    """What log_candidate reads of a split: the rows kept with the model (here the whole sample)."""

    X_holdout: pd.DataFrame
    y_holdout: pd.Series


def _vouched(foreign: ForeignModel, trust: bool) -> tuple[str, ...]:
    """The types the registered skops file may name beyond the exact list: the caller's (all of them with ``trust``)."""
    return tuple(sorted(set(foreign.trust_types) | (set(foreign.skops_types) if trust else set())))


def _import_tags(foreign: ForeignModel, sample: Sample, *, no_gate: bool, label_column: str) -> dict[str, str]:
    tags = {
        TAG + "imported": "true",
        TAG + "source_file": os.path.basename(foreign.source.rstrip("/")),
        TAG + "source_path": str(Path(foreign.source).resolve()),
        TAG + "source_sha256": foreign.sha256,
        TAG + "scanner_verdict": json.dumps(foreign.scan.to_dict()),
        TAG + "model_kind": foreign.kind,
        TAG + "input_columns": json.dumps(foreign.columns),
        TAG + "wrapped": str(foreign.wrapped).lower(),
        TAG + "sample_sha256": sample.sha256,
        TAG + "sample_labelled": str(sample.y is not None).lower(),
    }
    if foreign.trusted:
        tags[TAG + "trusted"] = "true"
    if foreign.trust_types:
        tags[TAG + "trust_types"] = json.dumps(foreign.trust_types)
    if foreign.isolation:
        tags[TAG + "isolation"] = foreign.isolation
    from churnkit.artifact import TRUSTED_TYPES_ENV

    if os.environ.get(TRUSTED_TYPES_ENV, "").strip():  # the operator's extra types were in force for this import
        tags[TAG + "operator_trusted_types"] = os.environ[TRUSTED_TYPES_ENV].strip()[:4000]
    if no_gate:
        tags[TAG + "no_gate"] = "true"
    if foreign.version_warnings:
        tags[TAG + "sklearn_version_mismatch"] = "; ".join(foreign.version_warnings)[:4000]
        tags[TAG + "source_sklearn_version"] = foreign.source_sklearn_version
    return tags


# --------------------------------------------------------------------------------------------------
# Demo files for the notebook's defaults
# --------------------------------------------------------------------------------------------------

def write_demo_model(folder: str | os.PathLike = "", rows: int = 2000, seed: int = 0) -> tuple[str, str]:
    """Write a fitted logistic Pipeline as ``churn-model.joblib`` and a labelled ``sample.csv`` (synthetic months).

    What a team bringing its own model would have: the model trained on month 1 outside churnkit,
    and month 2's customers as the sample. Returns ``(model_path, sample_path)``; ``folder`` empty
    means ``import-demo/`` beside the output notebook under ``churnkit run`` (kept with the run), else a
    new temporary folder.
    """
    import joblib

    from churnkit.data import load_table, synth_month, write_table
    from churnkit.model import build_model

    notebook = os.environ.get("CHURNKIT_OUTPUT_NOTEBOOK", "")
    if folder:
        out = Path(folder)
    elif notebook:
        out = Path(notebook).parent / "import-demo"
    else:
        out = Path(tempfile.mkdtemp(prefix="churnkit-import-demo-"))
    out.mkdir(parents=True, exist_ok=True)
    train = load_table("", rows=rows, month=1, seed=seed)
    model = build_model("logreg", train.schema, seed=seed).fit(train.X, train.y.to_numpy())
    model_path = out / "churn-model.joblib"
    joblib.dump(model, model_path)
    sample_path = write_table(synth_month(rows=max(200, rows // 2), month=2, seed=seed + 1), out / "sample.csv")
    return str(model_path), str(sample_path)
