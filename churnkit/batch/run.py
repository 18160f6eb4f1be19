"""``churnkit score`` and the 06-score notebook: one scoring run, tracked in MLflow, from model to partition.

:func:`score_base` resolves the model (``models:/``, ``runs:/``, a folder or a cloud URI, verified as
``churnkit serve`` verifies it), compiles it (checked against sklearn), reads its reference, starts
or joins an MLflow run, scores the input with the chosen engine into the one output format
(:mod:`churnkit.batch.output`), compares a uniform sample of the scored base with the reference
through the monitor's code, and logs counts, deciles and drift to the run.

The reference is, in order of preference: the version's rollout reference ``churnkit-reference.json``
in its model folder (holdout scores through the serving scorer, written at registration) with the
holdout inputs its training run logged; else that holdout, scored now. A model without a recorded
holdout (a bare folder) is scored without the drift comparison, and the run says so.
"""

from __future__ import annotations

import contextlib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from churnkit.batch.engine import SAMPLE_KEY, KernelSpec, run_local
from churnkit.batch.output import (
    PROBABILITY,
    ScoreMeta,
    ScoreSummary,
    ScoreWriter,
    check_duplicates_option,
    read_scores,
)
from churnkit.batch.reasons import build_explainer
from churnkit.batch.source import check_columns, open_source
from churnkit.config import TAG
from churnkit.exceptions import ScoreError

ENGINES = ("local", "spark")
#: The rollout reference a registration writes into the version's folder (holdout scores).
REFERENCE_FILE = "churnkit-reference.json"


@dataclass
class Reference:
    """The model's reference: holdout inputs with their scores (``churn_probability``), and where from."""

    frame: pd.DataFrame | None
    source: str


@dataclass
class Prepared:
    """A resolved, compiled model and everything the engines need."""

    loaded: object
    scorer: object
    spec: KernelSpec
    reference: Reference
    reasons_method: str


@dataclass
class ScoreResult:
    """A finished scoring run: the partition's accounting, the engine, the reasons method, the drift."""

    summary: ScoreSummary
    engine: str
    model: dict
    reasons_method: str
    reference_source: str
    drift_line: str
    seconds: float
    run_id: str = ""
    drift: object = None  # churnkit.monitor.MonitorReport of the sample against the reference, or None
    notes: list[str] = field(default_factory=list)

    @property
    def rows_per_second(self) -> float:
        return self.summary.rows_in / self.seconds if self.seconds else float("nan")

    def deciles(self) -> pd.DataFrame:
        """The decile table: rows, probabilities, rows at the threshold, cumulative share of expected churners."""
        return pd.DataFrame(self.summary.deciles).set_index("decile") if self.summary.deciles else pd.DataFrame()

    def top(self, n: int = 20) -> pd.DataFrame:
        """The ``n`` riskiest customers of the partition written, with their reasons."""
        import pyarrow.compute as pc

        table = read_scores(self.summary.output)
        table = table.filter(pc.and_(pc.equal(table["score_month"], self.summary.score_month),
                                     pc.equal(table["model_version"], self.summary.model_version)))
        table = table.filter(pc.less_equal(table["rank"], n))
        return table.to_pandas().sort_values("rank").set_index("rank")

    def plot_distribution(self):
        """Scored base vs the reference's churn scores (the monitor's figure)."""
        if self.drift is None:
            from churnkit.monitor.plots import _figure

            fig = _figure(6, 3.4)
            ax = fig.subplots()
            ax.text(0.5, 0.5, f"no reference to compare with: {self.reference_source}", ha="center", va="center",
                    wrap=True)
            ax.set_axis_off()
            return fig
        return self.drift.plot_scores()

    def lines(self) -> list[str]:
        """What the command prints: accounting, engine and speed, reasons, drift."""
        s = self.summary
        speed = (f"model {self.model['name']} v{self.model['version']} ({self.model['scorer']}), engine {self.engine}: "
                 f"{s.rows_in:,} rows in {self.seconds:.1f}s ({self.rows_per_second:,.0f} rows/s)")
        return [s.line(), speed, f"reasons: {self.reasons_method}", self.drift_line, *self.notes]

    def to_dict(self) -> dict:
        return {"summary": self.summary.to_dict(), "engine": self.engine, "model": self.model,
                "reasons_method": self.reasons_method, "reference": self.reference_source, "drift": self.drift_line,
                "seconds": round(self.seconds, 3), "rows_per_second": round(self.rows_per_second, 1),
                "run_id": self.run_id, "notes": self.notes}


# --------------------------------------------------------------------------------------------------
# The model and its reference
# --------------------------------------------------------------------------------------------------

def _batch_of(frame: pd.DataFrame, schema):
    """A typed frame (the holdout) as the scorer's Batch."""
    from churnkit.data import prepare_features
    from churnkit.serve.validation import Batch

    typed = prepare_features(frame, schema)
    cats = [[v if isinstance(v, str) else None for v in typed[c].tolist()] for c in schema.categorical]
    return Batch(numeric=typed[schema.numeric].to_numpy(dtype=np.float64).reshape(len(typed), -1), categorical=cats)


def load_reference(loaded, scorer, config=None) -> Reference:
    """The version's holdout inputs with reference scores; ``frame`` None (and why) when none is recorded."""
    from churnkit import registry

    holdout, where = None, ""
    try:
        if str(loaded.uri).startswith("models:/"):  # a folder's manifest may name a version of another registry
            holdout, _ = registry.version_holdout(str(loaded.version), loaded.name, config)
            where = f"the holdout of {loaded.name} v{loaded.version}'s training run"
        elif str(loaded.uri).startswith("runs:/"):
            run_id = str(loaded.uri).removeprefix("runs:/").split("/", 1)[0]
            holdout, _ = registry.read_holdout(run_id)
            where = f"the holdout of run {run_id}"
    except Exception as exc:  # an old version, a pruned artifact store: score without the comparison
        return Reference(None, f"none: the version's holdout could not be read ({type(exc).__name__}: {exc})")
    if holdout is None or not len(holdout):
        return Reference(None, "none: the model records no holdout (a bare folder); scored without a drift check")
    holdout = holdout.reset_index(drop=True)
    stored = Path(loaded.path) / REFERENCE_FILE
    scores = None
    if stored.is_file():
        try:
            data = json.loads(stored.read_text())
            values = np.asarray(data.get("scores") or [], dtype=np.float64)
            if len(values) == len(holdout):
                scores, where = values, f"{REFERENCE_FILE} (holdout scores stored at registration) with {where}"
        except (ValueError, TypeError, AttributeError):
            pass
    if scores is None:
        scores = scorer.predict_batch(_batch_of(holdout, loaded.schema))
        where = f"{where}, scored now"
    frame = holdout[[c for c in loaded.schema.names if c in holdout.columns]].copy()
    frame[PROBABILITY] = scores
    return Reference(frame, where)


def prepare_model(model_uri: str, *, id_column: str, reasons: int, passthrough=(), config=None) -> Prepared:
    """Resolve, verify and compile the model; its reasons and reference; the workers' :class:`KernelSpec`."""
    from churnkit.serve.compiled import to_bytes
    from churnkit.serve.loading import load_serving_model
    from churnkit.serve.scorer import Scorer

    if int(reasons) < 0:
        raise ScoreError(f"reasons {reasons!r} is negative; pass --reasons 0 (none) to the number of columns")
    loaded = load_serving_model(str(model_uri), config)
    scorer = Scorer(loaded.pipeline, loaded.schema, loaded.threshold)  # compiled and checked against sklearn
    reference = load_reference(loaded, scorer, config)
    compiled = to_bytes(scorer.model) if scorer.model is not scorer.sklearn else b""
    explainer, method = b"", "none (--reasons 0)"
    if reasons:
        ref_batch = _batch_of(reference.frame, loaded.schema) if reference.frame is not None else None
        ex = build_explainer(scorer.model, loaded.schema, pipeline=loaded.pipeline, reference_batch=ref_batch)
        explainer, method = ex.to_bytes(), ex.method
        if ex.engine == "numpy-logreg" and ref_batch is None:
            method += " (categories uncentred: no reference)"
    spec = KernelSpec(schema=loaded.schema.to_dict(), id_column=id_column, compiled=compiled,
                      folder="" if compiled else str(loaded.path), reasons=int(reasons), explainer=explainer,
                      passthrough=tuple(passthrough))
    return Prepared(loaded, scorer, spec, reference, method)


# --------------------------------------------------------------------------------------------------
# Drift of the scored base
# --------------------------------------------------------------------------------------------------

def scored_base_drift(reference: Reference, sample: pd.DataFrame | None, loaded):
    """``(MonitorReport or None, line)``: the sample of the scored base against the reference, monitor's code."""
    if reference.frame is None or sample is None or not len(sample):
        return None, f"scored base drift: not computed (reference {reference.source})"
    from churnkit.monitor import build_monitor_report

    report = build_monitor_report(reference.frame, sample.drop(columns=[SAMPLE_KEY], errors="ignore"), model=loaded)
    drifted, n = report.drifted_columns, len(report.columns)
    head = (f"scored base drifted on {', '.join(drifted)} ({len(drifted)} of {n} columns)" if drifted
            else f"scored base did not drift (0 of {n} columns)")
    pred = report.prediction_drift
    if pred:
        head += f"; scores PSI {pred['psi']:.3f}, mean {pred['reference_mean']:.3f} -> {pred['current_mean']:.3f}"
    return report, f"{head} (sample of {len(sample):,} rows vs {reference.source})"


# --------------------------------------------------------------------------------------------------
# The run
# --------------------------------------------------------------------------------------------------

@contextlib.contextmanager
def tracked_run(config, params: dict):
    """The active MLflow run (the notebook's), or a new ``score`` run ended FAILED if scoring raises."""
    from churnkit import tracking

    tracking.setup_tracking(config)
    mlflow = tracking.mlflow_module()
    active = mlflow.active_run()
    if active is not None:
        yield active
        return
    commit, dirty = tracking.git_commit()
    tags = {TAG + "notebook": "score", TAG + "parameters": json.dumps(params, default=str),
            TAG + "git_commit": commit, TAG + "git_dirty": str(dirty).lower()}
    with mlflow.start_run(run_name="score", tags=tags) as run:
        yield run


def log_result(result: ScoreResult, params: dict) -> None:
    """Parameters, counts, speed, drift and the decile table on the active MLflow run."""
    import mlflow

    from churnkit.monitor import log_monitor_report

    logged = mlflow.get_run(result.run_id).data.params
    mlflow.log_params({k: str(v)[:500] for k, v in params.items() if k not in logged})
    s = result.summary
    mlflow.log_metrics({"rows_in": s.rows_in, "rows_scored": s.rows_scored, "rows_refused": s.rows_refused,
                        "churn_rows": s.churn_rows, "score_seconds": result.seconds,
                        "rows_per_second": result.rows_per_second})
    mlflow.set_tags({TAG + "scored_version": s.model_version, TAG + "model_name": s.model_name,
                     TAG + "score_output": s.output, TAG + "score_partition": s.partition,
                     TAG + "score_engine": result.engine, TAG + "score_drift": result.drift_line[:5000]})
    mlflow.log_dict(result.to_dict(), "score/summary.json")
    if result.drift is not None:
        log_monitor_report(result.drift, html=False)


def _month(month: str) -> str:
    from churnkit.batch.output import check_month

    return check_month(month) if month else ""


def score_base(model: str, input: str, output: str, *, id_column: str = "customerID", reasons: int = 3,
               engine: str = "local", month: str = "", passthrough: list[str] | tuple = (),
               duplicates: str = "refuse", workers: int | None = None, progress: bool | None = None,
               config=None, spark=None) -> ScoreResult:
    """Score every row of ``input`` with ``model`` into ``output``; tracked in MLflow.

    Parameters
    ----------
    model : str
        ``models:/churn@champion``, ``models:/churn/3``, ``runs:/ID/model``, a model folder or a cloud URI.
    input : str
        A Parquet/CSV file or folder, local or ``s3://``, ``gs://``, ``abfs://``.
    output : str
        The score output folder (new, empty, or an earlier output).
    id_column : str
        The customer id column (every row needs one).
    reasons : int
        Reason columns per row (0: none).
    engine : {"local", "spark"}
    month : str
        ``YYYY-MM`` partition; default the current UTC month.
    passthrough : list of str
        Input columns copied to the output.
    duplicates : {"refuse", "keep"}
        A repeated id stops the run (nothing written) or is kept and flagged.
    workers : int, optional
        Local engine processes (default every core).
    spark : SparkSession, optional
        The Spark engine's session (default the active one, or a new one).

    Raises
    ------
    ScoreError
        Bad input or options (the previous partition is left as it was).
    RegistryError
        The model URI does not resolve or fails verification.
    """
    from churnkit.batch.cloudrun import TARGETS as CLOUD_TARGETS

    if engine in CLOUD_TARGETS:  # a cloud's batch service scores; the run, output and accounting are the same
        if passthrough:
            raise ScoreError(f"passthrough columns are not available on {engine}: its batch service returns ids and "
                             "scores only; score with engine 'local' or 'spark' to copy input columns")
        return score_on_target(engine, model, input, output, id_column=id_column, reasons=reasons, month=month,
                               duplicates=duplicates, config=config)
    if engine not in ENGINES:
        raise ScoreError(f"no scoring engine named {engine!r}; available: {', '.join(map(repr, (*ENGINES, *CLOUD_TARGETS)))}")
    check_duplicates_option(duplicates)
    month = _month(month)
    if engine == "spark":
        from churnkit.batch.spark import require_spark

        require_spark()
    params = {"model": model, "input": input, "output": output, "id_column": id_column, "reasons": reasons,
              "engine": engine, "month": month, "duplicates": duplicates, "passthrough": list(passthrough)}
    prepared = prepare_model(model, id_column=id_column, reasons=reasons, passthrough=passthrough, config=config)
    loaded = prepared.loaded
    with tracked_run(config, params) as run:
        t0 = time.perf_counter()
        meta = ScoreMeta(model_name=loaded.name, model_version=str(loaded.version), threshold=loaded.threshold,
                         run_id=run.info.run_id, id_column=id_column, score_month=month, reasons=int(reasons))
        notes: list[str] = []
        if engine == "local":
            summary, sample = _score_local(prepared, input, output, meta, duplicates, workers, progress, notes)
        else:
            from churnkit.batch.spark import score_spark

            summary, sample = score_spark(prepared, input, output, meta, duplicates=duplicates, spark=spark,
                                          notes=notes)
        seconds = time.perf_counter() - t0
        report, line = scored_base_drift(prepared.reference, sample, loaded)
        result = ScoreResult(
            summary=summary, engine=engine, reasons_method=prepared.reasons_method,
            model={"name": loaded.name, "version": str(loaded.version), "uri": str(model),
                   "threshold": loaded.threshold, "scorer": prepared.scorer.engine},
            reference_source=prepared.reference.source, drift_line=line, seconds=seconds, run_id=run.info.run_id,
            drift=report, notes=notes)
        log_result(result, params)
    return result


def _score_local(prepared: Prepared, input: str, output: str, meta: ScoreMeta, duplicates: str,
                 workers, progress, notes: list[str]):
    source = open_source(input)
    check_columns(source.columns, prepared.loaded.schema, meta.id_column, list(prepared.spec.passthrough))
    with ScoreWriter(output, meta, passthrough=prepared.spec.passthrough, duplicates=duplicates) as writer:
        run = run_local(source, prepared.spec, writer, workers=workers, progress=progress)
        summary = writer.commit(run.rows_in, extra={"engine": "local", "workers": run.workers,
                                                    "reference": prepared.reference.source})
    notes.append(f"local engine: {run.batches} record batches over {run.workers} process(es); ranks by a second "
                 "pass over the staged scores")
    sample = run.sample.to_pandas() if run.sample is not None else None
    return summary, sample


def score_paths(input: str = "", output: str = "", config=None, *, rows: int = 5000, month: int = 2,
                seed: int = 0) -> tuple[str, str]:
    """The 06-score notebook's input and output: as given, or a synthetic month written under the runs folder
    (``<runs>/score-input/``) and ``<runs>/scores`` when empty."""
    from churnkit.config import load_config
    from churnkit.data import synth_month

    config = config or load_config()
    if not input:
        path = config.runs_dir / "score-input" / f"customers-month-{month}-seed-{seed}.parquet"
        if not path.is_file():
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".{path.name}.tmp")
            synth_month(rows=rows, month=month, seed=seed).drop(columns=["churn"]).to_parquet(tmp, index=False)
            tmp.replace(path)
        input = str(path)
    return input, output or str(config.runs_dir / "scores")


def plan_score(model: str, input: str, output: str, *, id_column: str = "customerID", reasons: int = 3,
               engine: str = "local", month: str = "", passthrough=(), config=None) -> dict:
    """What :func:`score_base` would do, without scoring or writing anything (``churnkit score --plan``)."""
    from churnkit.batch.output import MARKER, ScoreMeta as Meta

    prepared = prepare_model(model, id_column=id_column, reasons=reasons, passthrough=passthrough, config=config)
    loaded = prepared.loaded
    source = open_source(input)
    check_columns(source.columns, loaded.schema, id_column, list(passthrough))
    meta = Meta(loaded.name, str(loaded.version), loaded.threshold, "", id_column=id_column,
                score_month=_month(month), reasons=int(reasons))
    root = Path(output)
    state = ("new" if not root.exists() else "a churnkit score output" if (root / MARKER).is_file()
             else "exists and is NOT a churnkit score output: refused")
    return {"model": {"uri": model, "name": loaded.name, "version": str(loaded.version),
                      "threshold": loaded.threshold, "scorer": prepared.scorer.engine},
            "input": {"uri": input, "format": source.kind, "rows": source.count_rows(), "columns": source.columns,
                      "ignored_columns": [c for c in source.columns if c not in loaded.schema.names
                                          and c != id_column and c not in passthrough]},
            "output": {"path": output, "state": state, "partition": meta.partition,
                       "replaces": (root / meta.partition).exists()},
            "engine": engine, "reasons": {"k": int(reasons), "method": prepared.reasons_method},
            "reference": prepared.reference.source}


def score_on_target(target: str, model: str, input: str, output: str, *, id_column: str = "customerID",
                    reasons: int = 3, month: str = "", duplicates: str = "refuse", endpoint: str = "churn",
                    config=None, progress=None, service=None, **options):
    """Score ``input`` on ``target``'s batch service into ``output`` (the kit's Parquet); tracked in MLflow.

    Returns the :class:`ScoreResult` of the run, whose notes name the job and its state log.
    """
    from churnkit.batch.cloud import job_name, write_raw_scores
    from churnkit.batch.cloudrun import job_stamp, read_input, run_cloud, service_for
    from churnkit.deploy.base import resolve_release

    check_duplicates_option(duplicates)
    month = _month(month)
    prepared = prepare_model(model, id_column=id_column, reasons=reasons, config=config)
    loaded = prepared.loaded
    release = resolve_release(str(model), config=config)
    table, rows = read_input(input, loaded.schema, id_column)
    svc = service or service_for(target, endpoint, config, **options)
    job = job_name(release.model_name, release.version, job_stamp())
    params = {"model": model, "input": input, "output": output, "id_column": id_column, "reasons": reasons,
              "engine": target, "month": month, "duplicates": duplicates, "passthrough": [], "job": job}
    with tracked_run(config, params) as run:
        t0 = time.perf_counter()
        raw, report = run_cloud(svc, target, release, loaded, table, rows, id_column, job, progress)
        meta = ScoreMeta(model_name=loaded.name, model_version=str(loaded.version), threshold=loaded.threshold,
                         run_id=run.info.run_id, id_column=id_column, score_month=month, reasons=int(reasons))
        explainer = None
        if reasons:
            from churnkit.batch.reasons import Explainer

            explainer = Explainer.from_bytes(prepared.scorer.model, loaded.schema, prepared.spec.explainer)
        with ScoreWriter(output, meta, duplicates=duplicates) as writer:
            counts = write_raw_scores(raw, table, loaded.schema, id_column, writer, explainer=explainer,
                                      reasons=int(reasons), service=svc.service)
            summary = writer.commit(counts["rows_in"], extra={"engine": target, "job": report.to_dict(), **counts})
        sample = _scored_sample(table, raw, loaded.schema, id_column)
        report_drift, line = scored_base_drift(prepared.reference, sample, loaded)
        notes = [(f"{svc.service} job {report.job}: {' → '.join(s for _, s in report.states)}; "
                 f"{counts['rows_scored']:,} scored there, {counts['rows_refused']:,} refused "
                 f"({counts['rows_unanswered']:,} without an answer)")]
        result = ScoreResult(
            summary=summary, engine=target, reasons_method=prepared.reasons_method,
            model={"name": loaded.name, "version": str(loaded.version), "uri": str(model),
                   "threshold": loaded.threshold, "scorer": f"{svc.service} batch ({report.job})"},
            reference_source=prepared.reference.source, drift_line=line, seconds=time.perf_counter() - t0,
            run_id=run.info.run_id, drift=report_drift, notes=notes)
        log_result(result, params)
    return result


def _scored_sample(table, raw, schema, id_column: str, rows: int = 20_000):
    """The scored rows' inputs with the service's scores (a uniform sample, for the drift check)."""
    frame = table.select([id_column, *schema.names]).to_pandas()
    frame[id_column] = frame[id_column].astype("string")
    scored = raw[raw["error"] == ""][["id", "churn_probability"]].rename(
        columns={"id": id_column, "churn_probability": PROBABILITY})
    joined = frame.merge(scored.drop_duplicates(id_column), on=id_column, how="inner")
    if len(joined) > rows:
        joined = joined.sample(rows, random_state=0)
    return pd.DataFrame(joined[[*schema.names, PROBABILITY]]) if len(joined) else None

