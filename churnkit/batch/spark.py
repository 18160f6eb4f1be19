"""The Spark engine: the same output as the local engine, computed by Spark (``pip install -e '.[spark]'``).

pyspark is imported here only, inside functions; a machine without it gets an error naming the extra.

* **The model travels once per executor.** The exported model folder (its manifests, the compiled
  scorer checked against sklearn at export) and the reasons' arrays are packed into one archive and
  added with ``SparkContext.addArchive``: Spark copies it to each executor once and unpacks it there.
  Each Python worker loads it once (:func:`_kernel`, a per-process cache; the folder's manifests are
  verified before anything in it is read) and scores every batch of every task it runs with it.
* **Scoring** is ``DataFrame.mapInArrow``: Spark hands Arrow record batches to
  :meth:`churnkit.batch.engine.Kernel.score`, the local engine's code, which types them with the same
  rules (:func:`churnkit.batch.source.type_batch`). Refused rows come back in the same pass with their
  reason; the first pass stages scored and refused rows as Parquet.
* **Ranks** are Spark's own window functions over the whole base: ``row_number`` (rank),
  ``percent_rank`` (percentile) and ``ntile(10)`` (decile), ordered by ``churn_probability`` descending
  then the id ascending, exactly the local engine's order. A window without a partition moves the
  (id, probability) pairs to one task: about 40 bytes a customer, 1.2 GB for 30 million.
* **The partition is replaced** like the local engine does: scores and refused rows are written to a
  hidden staging folder under the output, then swapped in by renames through Hadoop's FileSystem API
  (HDFS, S3A, ABFS, GCS connector or the local disk), old partition first moved aside; a job that dies
  before the swap leaves the previous partition as it was, and its staging folder is removed by the
  next run.
* **Under spark-submit** nothing changes: :func:`session` takes the session spark-submit configured
  (master, credentials, executors); run directly, it starts ``local[*]`` with this Python.
"""

from __future__ import annotations

import json
import os
import sys
import tarfile
import tempfile
import uuid
from pathlib import Path


from churnkit.batch.engine import Kernel, KernelSpec
from churnkit.batch.output import (
    ERRORS_DIR,
    MARKER,
    PARTITION_FILE,
    PROBABILITY,
    TRAILER,
    ScoreMeta,
    ScoreSummary,
    check_partition_value,
    duplicates_error,
    output_columns,
    reason_columns,
)
from churnkit.batch.source import check_columns
from churnkit.exceptions import ScoreError, ScoreOutputError

ERROR = "__churnkit_error__"
INPUT_ROW = "__churnkit_input_row__"
SPEC_FILE = "churnkit-batch.json"
REASONS_FILE = "churnkit-reasons.npz"
MODEL_DIR = "model"


def require_spark():
    """The pyspark module, or ScoreError naming the extra that installs it."""
    try:
        import pyspark
    except ImportError:
        raise ScoreError("--engine spark needs pyspark, which is not installed; install it with: "
                         "pip install -e '.[spark]' (on a cluster, pyspark comes with Spark)") from None
    return pyspark


def session(spark=None):
    """The given session, the active one (spark-submit's, a notebook's), or a new ``local[*]`` one."""
    require_spark()
    from pyspark.sql import SparkSession

    if spark is not None:
        return spark
    active = SparkSession.getActiveSession()
    if active is not None:
        return active
    return local_session()


def local_session(master: str | None = None, **conf):
    """A Spark session whose Python workers run this interpreter (``master`` default: spark-submit's or
    ``local[*]``); ``conf`` as Spark settings (dots as underscores are not translated: pass a dict)."""
    require_spark()
    from pyspark.sql import SparkSession

    builder = SparkSession.builder.appName("churnkit-score")
    if master:
        builder = builder.master(master)
    for key, value in conf.items():
        builder = builder.config(key, value)
    spark = builder.getOrCreate()
    if "PYSPARK_GATEWAY_PORT" not in os.environ and "PYSPARK_PYTHON" not in os.environ:
        # Started from this Python (not spark-submit, which sets PYSPARK_PYTHON for the cluster): pyspark
        # would run workers with "python3" from PATH, which may lack pyarrow; run them with this interpreter.
        spark.sparkContext.pythonExec = sys.executable
    return spark


def ship_churnkit(spark) -> str:
    """Add this churnkit package as a zip to the session (``addPyFile``), once: executors then run the
    driver's own code whatever (if any) churnkit they have installed. Returns the zip's path."""
    import churnkit

    sc = spark.sparkContext
    key = sc.applicationId
    if key in _SHIPPED:
        return _SHIPPED[key]
    import atexit
    import shutil
    import zipfile

    package = Path(churnkit.__file__).parent
    folder = Path(tempfile.mkdtemp(prefix="churnkit-pyfiles-"))
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    path = folder / "churnkit.zip"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        for f in sorted(package.rglob("*.py")):
            z.write(f, Path("churnkit") / f.relative_to(package))
    sc.addPyFile(str(path))
    _SHIPPED[key] = str(path)
    return str(path)


_SHIPPED: dict[str, str] = {}  # application id -> the churnkit zip added to it


# --------------------------------------------------------------------------------------------------
# The model archive and the executors' side
# --------------------------------------------------------------------------------------------------

def build_archive(prepared, folder: Path) -> Path:
    """``folder/churnkit-model-<id>.tar.gz``: the exported model folder, the spec and the reasons' arrays."""
    from churnkit.serve.loading import export_model

    root = folder / "archive"
    export_model(prepared.loaded, root / MODEL_DIR)
    spec = prepared.spec
    (root / SPEC_FILE).write_text(json.dumps({"id_column": spec.id_column, "reasons": spec.reasons,
                                              "passthrough": list(spec.passthrough), "sample_rows": 0}))
    (root / REASONS_FILE).write_bytes(spec.explainer)
    path = folder / f"churnkit-model-{uuid.uuid4().hex[:12]}.tar.gz"
    with tarfile.open(path, "w:gz") as tar:
        for item in sorted(root.iterdir()):
            tar.add(item, arcname=item.name)
    return path


_KERNELS: dict[str, Kernel] = {}


def _kernel(name: str) -> Kernel:
    """The kernel of the archive ``name``, loaded once per Python worker (Spark reuses its workers)."""
    if name not in _KERNELS:
        from pyspark import SparkFiles

        from churnkit.serve.compiled import to_bytes
        from churnkit.serve.loading import load_model_folder

        root = Path(SparkFiles.get(name))
        options = json.loads((root / SPEC_FILE).read_text())
        loaded = load_model_folder(root / MODEL_DIR, compiled=True)  # manifests verified before any file is read
        spec = KernelSpec(schema=loaded.schema.to_dict(), id_column=options["id_column"],
                          compiled=to_bytes(loaded.compiled) if loaded.compiled is not None else b"",
                          folder="" if loaded.compiled is not None else str(root / MODEL_DIR),
                          reasons=int(options["reasons"]), explainer=(root / REASONS_FILE).read_bytes(),
                          passthrough=tuple(options["passthrough"]), sample_rows=0)
        _KERNELS[name] = Kernel(spec)
    return _KERNELS[name]


def _score_partition(name: str, out_schema):
    """The ``mapInArrow`` function: every input row out once, scored or with its refusal reason."""
    def score(batches):
        import pyarrow as pa

        kernel = _kernel(name)
        id_column = kernel.spec.id_column
        target = out_schema
        for rb in batches:
            if not rb.num_rows:
                continue
            scored = kernel.score(rb)
            n, m = scored.table.num_rows, scored.errors.num_rows
            cols = {}
            for field in target:
                if field.name == ERROR:
                    cols[field.name] = pa.concat_arrays([pa.nulls(n, pa.string()), scored.errors["reason"].combine_chunks()])
                elif field.name == INPUT_ROW:
                    cols[field.name] = pa.nulls(n + m, pa.int64())
                elif field.name == id_column:
                    bad = scored.errors[id_column].combine_chunks().cast(pa.string())
                    good = scored.table[id_column].combine_chunks()
                    cols[field.name] = pa.concat_arrays([good.cast(field.type), bad.cast(field.type, safe=False)]) \
                        if m else good.cast(field.type)
                else:
                    col = scored.table[field.name].combine_chunks().cast(field.type)
                    cols[field.name] = pa.concat_arrays([col, pa.nulls(m, field.type)]) if m else col
            yield pa.RecordBatch.from_pydict(cols, schema=target)
    return score


# --------------------------------------------------------------------------------------------------
# Hadoop FileSystem: the output folder on any filesystem Spark writes
# --------------------------------------------------------------------------------------------------

class HadoopFS:
    """The few FileSystem calls the swap needs, through Spark's JVM (HDFS, S3A, ABFS, GCS, file:)."""

    def __init__(self, spark, root: str):
        jvm = self._jvm = spark.sparkContext._jvm
        self._Path = jvm.org.apache.hadoop.fs.Path
        self.root = str(root).rstrip("/")
        self.fs = self._Path(self.root).getFileSystem(spark.sparkContext._jsc.hadoopConfiguration())

    def path(self, rel: str = ""):
        return self._Path(f"{self.root}/{rel}" if rel else self.root)

    def exists(self, rel: str = "") -> bool:
        return bool(self.fs.exists(self.path(rel)))

    def is_dir(self, rel: str = "") -> bool:
        return bool(self.fs.getFileStatus(self.path(rel)).isDirectory()) if self.exists(rel) else False

    def names(self, rel: str = "") -> list[str]:
        return [s.getPath().getName() for s in self.fs.listStatus(self.path(rel))] if self.exists(rel) else []

    def mkdirs(self, rel: str) -> None:
        self.fs.mkdirs(self.path(rel))

    def rename(self, src: str, dst: str) -> None:
        parent = self.path(dst).getParent()
        if parent is not None:
            self.fs.mkdirs(parent)
        if not self.fs.rename(self.path(src), self.path(dst)):
            raise ScoreOutputError(f"could not move {self.root}/{src} to {self.root}/{dst}; check the output's "
                                   "permissions (the previous partition is kept)")

    def delete(self, rel: str) -> None:
        self.fs.delete(self.path(rel), True)

    def write_text(self, rel: str, text: str) -> None:
        out = self.fs.create(self.path(rel), True)
        try:
            out.write(bytearray(text.encode()))
        finally:
            out.close()

    def read_text(self, rel: str) -> str:
        stream = self.fs.open(self.path(rel))
        try:  # py4j copies byte[] arguments, so read(byte[]) cannot fill a Python buffer: let Java read it all
            scanner = self._jvm.java.util.Scanner(stream, "UTF-8").useDelimiter("\\A")
            return scanner.next() if scanner.hasNext() else ""
        finally:
            stream.close()


def _prepare_output(fs: HadoopFS) -> None:
    """The Spark engine's :func:`churnkit.batch.output.prepare_output`: recognise, create, mark; clean stale staging."""
    if fs.exists() and not fs.is_dir():
        raise ScoreOutputError(f"output {fs.root!r} is a file, not a folder; pass a folder for the scores")
    if fs.exists() and not fs.exists(MARKER):
        visible = [n for n in fs.names() if not n.startswith(".")]
        if visible:
            raise ScoreOutputError(f"output {fs.root!r} exists and is not a churnkit score output (no {MARKER}; it "
                                   f"holds {sorted(visible)[:5]!r}); pass a new or empty folder, or an earlier "
                                   "--output of churnkit score")
    if fs.exists(MARKER):
        try:
            found = json.loads(fs.read_text(MARKER))
        except ValueError:
            found = {}
        if not isinstance(found, dict) or found.get("kind") != "churnkit-scores":
            raise ScoreOutputError(f"{fs.root}/{MARKER} does not describe a churnkit score output; pick a new output")
    else:
        fs.mkdirs("")
        fs.write_text(MARKER, json.dumps({"format": 1, "kind": "churnkit-scores",
                                          "layout": "score_month=YYYY-MM/model_version=V/part-*.parquet"}))


def _swap(fs: HadoopFS, moves: list[tuple[str, str]]) -> bool:
    """Move each staged folder onto its target, the old one aside first; True if a partition was replaced."""
    trash = f".trash-{uuid.uuid4().hex[:12]}"
    fs.mkdirs(trash)
    fs.write_text(f"{trash}/swap.json", json.dumps([{"target": t, "old": f"old{i}", "new": f"{fs.root}/{s}"}
                                                    for i, (t, s) in enumerate(moves)]))
    replaced = False
    for i, (target, staged) in enumerate(moves):
        if fs.exists(target):
            fs.rename(target, f"{trash}/old{i}")
            replaced = True
        fs.rename(staged, target)
    fs.delete(trash)
    return replaced


def _recover(fs: HadoopFS) -> None:
    """Finish or undo a swap a dead driver left; drop staging older runs left (one writer per output)."""
    for name in fs.names():
        if name.startswith(".trash-"):
            try:
                moves = json.loads(fs.read_text(f"{name}/swap.json"))
            except Exception:
                moves = []
            for item in moves:
                if fs.exists(item["target"]):
                    continue
                new = item["new"].removeprefix(fs.root + "/")
                if fs.exists(new):
                    fs.rename(new, item["target"])
                elif fs.exists(f"{name}/{item['old']}"):
                    fs.rename(f"{name}/{item['old']}", item["target"])
            fs.delete(name)
        elif name.startswith(".staging-"):
            fs.delete(name)


# --------------------------------------------------------------------------------------------------
# The run
# --------------------------------------------------------------------------------------------------

def read_input(spark, uri: str):
    """The input as a DataFrame: Parquet as typed, CSV with every cell as text (as training reads it)."""
    lower = uri.lower().rstrip("/")
    kind = "csv" if lower.endswith((".csv", ".csv.gz", ".txt")) else "parquet"
    if "://" not in uri and Path(uri).is_dir():
        from churnkit.batch.source import open_source

        kind = open_source(uri).kind
    try:
        if kind == "csv":
            return spark.read.option("header", True).option("inferSchema", False).option("mode", "PERMISSIVE").csv(uri)
        return spark.read.parquet(uri)
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ScoreError(f"input {uri!r} cannot be read by Spark as {kind} ({first[:300]}); check the path, its "
                         "format and that the cluster's credentials can read it") from None


def _arrow_schema(df, prepared, meta: ScoreMeta):
    """The Arrow schema ``mapInArrow`` returns: the output's scored columns plus the error columns."""
    import pyarrow as pa
    from pyspark.sql.pandas.types import to_arrow_type

    fields = [pa.field(meta.id_column, to_arrow_type(df.schema[meta.id_column].dataType)),
              pa.field(PROBABILITY, pa.float64())]
    for name in reason_columns(prepared.spec.reasons):
        fields.append(pa.field(name, pa.float64() if name.endswith("_contribution") else pa.string()))
    for name in prepared.spec.passthrough:
        fields.append(pa.field(name, to_arrow_type(df.schema[name].dataType)))
    fields += [pa.field(ERROR, pa.string()), pa.field(INPUT_ROW, pa.int64())]
    return pa.schema(fields)


def score_spark(prepared, input: str, output: str, meta: ScoreMeta, *, duplicates: str = "refuse", spark=None,
                notes: list[str] | None = None):
    """Score ``input`` on Spark into ``output`` (the one output format); ``(ScoreSummary, sample frame)``."""
    from pyspark.sql.pandas.types import from_arrow_schema

    notes = notes if notes is not None else []
    spark = session(spark)
    check_partition_value("model_version", str(meta.model_version))
    df = read_input(spark, input)
    check_columns(df.columns, prepared.loaded.schema, meta.id_column, list(prepared.spec.passthrough))
    fs = HadoopFS(spark, output)
    _prepare_output(fs)
    _recover(fs)
    stage = f".staging-{uuid.uuid4().hex[:12]}"
    with tempfile.TemporaryDirectory(prefix="churnkit-spark-") as tmp:
        archive = build_archive(prepared, Path(tmp))
        ship_churnkit(spark)
        spark.sparkContext.addArchive(str(archive))
        try:
            rows_in = df.count()
            arrow = _arrow_schema(df, prepared, meta)
            staged = df.mapInArrow(_score_partition(archive.name, arrow), from_arrow_schema(arrow))
            staged.write.mode("error").parquet(fs.path(f"{stage}/unranked").toString())
            result = spark.read.parquet(fs.path(f"{stage}/unranked").toString())
            summary = _rank_and_stage(spark, fs, stage, result, prepared, meta, duplicates, rows_in)
            summary.replaced = _swap(fs, [(meta.partition, f"{stage}/scores"),
                                          (f"{ERRORS_DIR}/{meta.partition}", f"{stage}/errors")])
        except BaseException as exc:
            try:
                fs.delete(stage)
            except Exception:
                pass
            if isinstance(exc, Exception) and not isinstance(exc, ScoreError):
                raise job_failed(exc) from None
            raise
        fs.delete(stage)
    notes.append(f"spark engine ({spark.sparkContext.master}, {spark.sparkContext.defaultParallelism} cores): model "
                 "shipped once per executor with addArchive; ranks by row_number/percent_rank/ntile over the base")
    return summary, _sample(df, prepared, rows_in)


def job_failed(exc: BaseException) -> ScoreError:
    """A Spark job that died (an executor lost, a worker's exception) as one clear error."""
    text = str(exc).strip()
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    # a Python worker's exception: its last line names it; else Spark's first line
    worker = [ln for ln in lines if ln.startswith(("churnkit.", "ValueError", "KeyError", "TypeError", "OSError",
                                                   "MemoryError", "RuntimeError", "ModuleNotFoundError"))]
    what = (worker[-1] if worker else lines[0] if lines else type(exc).__name__)[:400]
    return ScoreError(f"the Spark job failed ({type(exc).__name__}: {what}); nothing was replaced and the previous "
                      "partition is intact: fix the cause and run again")


def _rank_and_stage(spark, fs, stage, result, prepared, meta: ScoreMeta, duplicates: str, rows_in: int) -> ScoreSummary:
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    idcol = meta.id_column
    refused = result.filter(F.col(ERROR).isNotNull())
    scored = result.filter(F.col(ERROR).isNull()).drop(ERROR, INPUT_ROW)
    n_refused, n_scored = refused.count(), scored.count()
    if n_refused + n_scored != rows_in:
        raise ScoreOutputError(f"row accounting does not add up: {rows_in:,} rows in but {n_scored:,} scored + "
                               f"{n_refused:,} refused; nothing was replaced")
    repeated = scored.groupBy(idcol).count().filter(F.col("count") > 1)
    examples = [r[idcol] for r in repeated.limit(5).collect()]
    if examples and duplicates == "refuse":
        raise duplicates_error(repeated.count(), examples)
    order = Window.orderBy(F.col(PROBABILITY).desc(), F.col(idcol).asc())
    ranked = scored.withColumn("rank", F.row_number().over(order).cast("long")) \
        .withColumn("percentile", (F.lit(100.0) * (F.lit(1.0) - F.percent_rank().over(order))).cast("double")) \
        .withColumn("decile", F.ntile(10).over(order).cast("int")) \
        .withColumn("churn", F.col(PROBABILITY) >= F.lit(float(meta.threshold)))
    keep = duplicates == "keep"
    if keep:
        ranked = ranked.withColumn("duplicate_id", F.count(F.lit(1)).over(Window.partitionBy(idcol)) > 1)
    for name, value in zip(TRAILER, (meta.model_name, meta.run_id, meta.scored_at)):
        ranked = ranked.withColumn(name, F.lit(value))
    columns = output_columns(idcol, prepared.spec.reasons, prepared.spec.passthrough, flag_duplicates=keep)
    ranked.select(*columns).write.mode("error").parquet(fs.path(f"{stage}/scores").toString())
    errors = refused.select(F.col(idcol).cast("string").alias(idcol), F.col(INPUT_ROW).alias("input_row"),
                            F.col(ERROR).alias("reason"))
    for name, value in zip(TRAILER, (meta.model_name, meta.run_id, meta.scored_at)):
        errors = errors.withColumn(name, F.lit(value))
    errors.write.mode("error").parquet(fs.path(f"{stage}/errors").toString())
    # the decile table from the written partition: one small aggregation
    written = spark.read.parquet(fs.path(f"{stage}/scores").toString())
    rows = written.groupBy("decile").agg(F.count(F.lit(1)).alias("rows"), F.sum(PROBABILITY).alias("s"),
                                         F.min(PROBABILITY).alias("lo"), F.max(PROBABILITY).alias("hi"),
                                         F.sum(F.col("churn").cast("int")).alias("c")).orderBy("decile").collect()
    deciles, total, cum = [], sum(r["s"] for r in rows) or 1.0, 0.0
    for r in rows:
        cum += r["s"]
        deciles.append({"decile": int(r["decile"]), "rows": int(r["rows"]), "mean_probability": r["s"] / r["rows"],
                        "min_probability": r["lo"], "max_probability": r["hi"], "churn_rows": int(r["c"]),
                        "expected_churners": r["s"], "cumulative_share_of_expected": cum / total})
    summary = ScoreSummary(
        output=fs.root, partition=meta.partition, rows_in=int(rows_in), rows_scored=int(n_scored),
        rows_refused=int(n_refused), files=sum(1 for n in fs.names(f"{stage}/scores") if n.endswith(".parquet")),
        model_name=meta.model_name, model_version=str(meta.model_version), run_id=meta.run_id,
        score_month=meta.score_month, scored_at=meta.scored_at, threshold=float(meta.threshold),
        churn_rows=sum(d["churn_rows"] for d in deciles), deciles=deciles,
        rank_method="Spark row_number / percent_rank / ntile(10) over churn_probability desc, id asc",
        extra={"engine": "spark", "master": spark.sparkContext.master, "reference": prepared.reference.source})
    fs.write_text(f"{stage}/scores/{PARTITION_FILE}", json.dumps(summary.to_dict(), indent=1, default=str))
    return summary


def _sample(df, prepared, rows_in: int):
    """A uniform sample of the scored base for drift, scored here by the same kernel (pandas frame)."""
    from churnkit.batch.engine import SAMPLE_ROWS, SAMPLE_KEY

    if not rows_in:
        return None
    fraction = min(1.0, SAMPLE_ROWS * 1.2 / rows_in)
    rows = df.sample(fraction=fraction, seed=0).limit(SAMPLE_ROWS).toArrow()
    if not rows.num_rows:
        return None
    kernel = Kernel(prepared.spec)
    out = []
    for rb in rows.to_batches():
        scored = kernel.score(rb, 0)
        if scored.sample is not None:
            out.append(scored.sample.to_pandas())
    import pandas as pd

    return pd.concat(out, ignore_index=True).drop(columns=[SAMPLE_KEY]) if out else None


