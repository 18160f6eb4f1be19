"""Benchmark: batch scoring, each engine against a peer measured in the same run on the same rows.

1. Local engine rows/s (``churnkit score --engine local``: read Parquet, type, score, rank in a second
   pass, write the partition) against sklearn's ``predict_proba`` of the same pipeline on the same rows
   already in memory (``prepare_features`` + ``predict_proba``, reading excluded), for logistic
   regression and HGB, without and with 3 reasons per row. Goal: >= 3x.
2. Peak RSS of the whole process tree (parent and worker processes, sampled from /proc every 0.1 s) of
   ``churnkit score`` over ``--rss-rows`` (default 1M, 3M, 10M) rows. Goal: <= 1 GiB, flat in the input.
3. The Spark engine against ``mlflow.pyfunc.spark_udf`` of the same pipeline logged for probabilities
   (``pyfunc_predict_fn="predict_proba"``), same session, same typed Parquet, both writing their
   result. Goal: >= 2x.
4. The Spark engine on ``local[2]`` against ``local[1]``. Goal: >= 1.7x.

Ratios are what to read: the absolute numbers depend on the machine and on what else runs on it.

    python bench/score.py                                 # everything (about 10 minutes on 2 idle cores)
    python bench/score.py --rows 200000 --rss-rows 1000000 --no-spark    # quicker
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

GOAL_LOCAL = 3.0
GOAL_RSS_GIB = 1.0
GOAL_SPARK = 2.0
GOAL_SCALING = 1.7
ID = "customer_id"


def build_store(runs: Path, *, rows: int = 4000, seed: int = 0, hgb_iterations: int | None = None,
                threshold: float = 0.5) -> dict:
    """Register churn v1 (logistic regression) and v2 (HGB) in an embedded store; ``{kind: version}``.

    The batch tests build their registry with this too (smaller, fewer boosting rounds).
    """
    import mlflow

    from churnkit import registry
    from churnkit.config import TAG, load_config
    from churnkit.data import load_table
    from churnkit.evaluate import gate
    from churnkit.model import build_model, split_holdout

    config = load_config(runs)
    registry.setup_tracking(config)
    dataset = load_table("", rows=rows, seed=seed)
    split = split_holdout(dataset, seed=seed)
    versions = {}
    for kind in ("logreg", "hgb"):
        pipeline = build_model(kind, dataset.schema, seed=seed)
        if kind == "hgb" and hgb_iterations:
            pipeline.set_params(clf__max_iter=hgb_iterations)
        pipeline.fit(split.X_train, split.y_train.to_numpy())
        with mlflow.start_run(run_name="01-train", tags={TAG + "notebook": "01-train"}):
            run_id = registry.log_candidate(pipeline, dataset, split, model=kind, seed=seed)
        candidate = registry.load_candidate(run_id, config)
        versions[kind] = registry.register_candidate(candidate, gate(0.99, None, 0.5, -1.0), threshold=threshold,
                                                     config=config)
    return versions


def make_base(rows: int, folder: Path, file_rows: int = 1_000_000) -> Path:
    """``rows`` Telco-shaped customers as Parquet files of at most ``file_rows`` (one month, repeated ids renamed)."""
    from churnkit.data import synth_month

    folder.mkdir(parents=True, exist_ok=True)
    chunk = synth_month(rows=min(rows, file_rows), month=2, seed=1).drop(columns=["churn"])
    done, k = 0, 0
    while done < rows:
        part = chunk.iloc[: rows - done].copy()
        part[ID] = part[ID] + f"-{k}"
        part.to_parquet(folder / f"part-{k:03d}.parquet", index=False)
        done, k = done + len(part), k + 1
    return folder


def peer_predict_proba(config, version: str, base: Path) -> tuple[float, int]:
    """Seconds and rows of sklearn's predict_proba (with churnkit's typing) on the rows in memory."""
    import pandas as pd

    from churnkit import registry
    from churnkit.data import prepare_features

    loaded = registry.load_model(f"models:/churn/{version}", config)
    frame = pd.read_parquet(base)
    t0 = time.perf_counter()
    loaded.pipeline.predict_proba(prepare_features(frame, loaded.schema))
    return time.perf_counter() - t0, len(frame)


def local_engine(config, version: str, base: Path, out: Path, reasons: int) -> tuple[float, int]:
    from churnkit.batch.run import score_base

    result = score_base(f"models:/churn/{version}", str(base), str(out), id_column=ID, reasons=reasons,
                        month="2026-02", progress=False, config=config)
    return result.seconds, result.summary.rows_in


def tree_rss(pid: int) -> int:
    """Resident bytes of ``pid`` and all its descendants."""
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        try:
            with open(f"/proc/{p}/statm") as fh:
                total += int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
            with open(f"/proc/{p}/task/{p}/children") as fh:
                todo += [int(c) for c in fh.read().split()]
        except (OSError, ValueError):
            continue
    return total


def peak_rss(runs: Path, version: str, base: Path, out: Path) -> tuple[int, float]:
    """Peak RSS of the ``churnkit score`` process tree, and its wall seconds."""
    exe = str(Path(sys.executable).with_name("churnkit"))
    cmd = [exe, "score", "--model", f"models:/churn/{version}", "--input", str(base), "--output", str(out),
           "--id-column", ID, "--month", "2026-02", "--runs-dir", str(runs)]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    peak = 0
    stop = threading.Event()

    def sample():
        nonlocal peak
        while not stop.is_set():
            peak = max(peak, tree_rss(proc.pid))
            time.sleep(0.1)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    _, err = proc.communicate()
    stop.set()
    thread.join()
    if proc.returncode:
        raise RuntimeError(f"churnkit score failed: {err[-2000:]}")
    return peak, time.perf_counter() - t0


def spark_bench(config, runs: Path, versions: dict, rows: int, tmp: Path) -> list[tuple[str, float, float]]:
    """Spark engine vs spark_udf (same session), and local[2] vs local[1]; ``[(label, ours s, peer s)]``."""
    import mlflow
    import pandas as pd

    from churnkit import registry
    from churnkit.batch.run import score_base
    from churnkit.batch.spark import local_session
    from churnkit.data import prepare_features, synth_month

    loaded = registry.load_model(f"models:/churn/{versions['logreg']}", config)
    raw = synth_month(rows=rows, month=2, seed=2).drop(columns=["churn"])
    typed = prepare_features(raw, loaded.schema)
    typed.insert(0, ID, raw[ID])
    data = tmp / "typed.parquet"
    typed.to_parquet(data, index=False)
    with mlflow.start_run(run_name="bench-spark-udf"):
        info = mlflow.sklearn.log_model(loaded.pipeline, name="proba", pyfunc_predict_fn="predict_proba",
                                        skops_trusted_types=list(registry.TRUSTED_TYPES))
    out = []
    times = {}
    for master in ("local[2]", "local[1]"):
        spark = local_session(master, **{"spark.ui.enabled": "false", "spark.sql.shuffle.partitions": "8"})
        spark.sparkContext.setLogLevel("ERROR")
        score_base(f"models:/churn/{versions['logreg']}", str(data), str(tmp / "warm"), id_column=ID, reasons=0,
                   engine="spark", spark=spark, config=config, month="2026-01")  # JVM and workers warm
        t0 = time.perf_counter()
        score_base(f"models:/churn/{versions['logreg']}", str(data), str(tmp / f"ours-{master[6]}"), id_column=ID,
                   reasons=0, engine="spark", spark=spark, config=config, month="2026-02")
        times[master] = time.perf_counter() - t0
        if master == "local[2]":
            from pyspark.sql import functions as F

            udf = mlflow.pyfunc.spark_udf(spark, info.model_uri, result_type="array<double>", env_manager="local")
            df = spark.read.parquet(str(data))
            feats = [F.col(c) for c in loaded.schema.names]
            t0 = time.perf_counter()
            df.withColumn("churn_probability", udf(F.struct(*feats))[1]).select(ID, "churn_probability") \
                .write.mode("overwrite").parquet(str(tmp / "udf"))
            out.append(("spark engine vs mlflow spark_udf (local[2], logreg, no reasons)", times[master],
                        time.perf_counter() - t0))
        spark.stop()
    out.append(("spark engine local[2] vs local[1]", times["local[2]"], times["local[1]"]))
    del pd
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=1_000_000, help="rows for the local engine vs predict_proba")
    ap.add_argument("--rss-rows", default="1000000,3000000,10000000", help="input sizes for the peak RSS")
    ap.add_argument("--spark-rows", type=int, default=500_000)
    ap.add_argument("--no-spark", action="store_true")
    args = ap.parse_args(argv)
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    with tempfile.TemporaryDirectory(prefix="churnkit-bench-score-") as tmpname:
        tmp = Path(tmpname)
        from churnkit.config import load_config

        runs = tmp / "runs"
        versions = build_store(runs)
        config = load_config(runs)
        base = make_base(args.rows, tmp / "base")
        rows = _Rows()
        for kind, version in versions.items():
            peer, n = peer_predict_proba(config, version, base)
            for reasons in (0, 3):
                ours, _ = local_engine(config, version, base, tmp / f"out-{kind}-{reasons}", reasons)
                ratio = peer / ours
                rows.append({"what": f"local engine vs predict_proba, {kind}, {reasons} reasons", "rows": n,
                             "ours_rows_per_s": round(n / ours), "peer_rows_per_s": round(n / peer),
                             "ratio": round(ratio, 2), "goal": GOAL_LOCAL, "met": ratio >= GOAL_LOCAL})
        for size in [int(s) for s in args.rss_rows.split(",") if s]:
            folder = make_base(size, tmp / f"rss-{size}")
            peak, seconds = peak_rss(runs, versions["logreg"], folder, tmp / f"rss-out-{size}")
            rows.append({"what": f"peak RSS of churnkit score (process tree), logreg, {size:,} rows", "rows": size,
                         "peak_rss_mib": round(peak / 2**20), "seconds": round(seconds, 1),
                         "goal": f"<= {GOAL_RSS_GIB} GiB", "met": peak <= GOAL_RSS_GIB * 2**30})
        if not args.no_spark:
            try:
                for what, ours, peer in spark_bench(config, runs, versions, args.spark_rows, tmp):
                    ratio = peer / ours
                    goal = GOAL_SCALING if "local[1]" in what else GOAL_SPARK
                    rows.append({"what": what, "rows": args.spark_rows, "ours_s": round(ours, 2),
                                 "peer_s": round(peer, 2), "ratio": round(ratio, 2), "goal": goal,
                                 "met": ratio >= goal})
            except ImportError as exc:
                print(f"spark part skipped: {exc} (pip install -e '.[spark]')", file=sys.stderr)
    print(json.dumps(rows, indent=1))
    return 0


class _Rows(list):
    """The results, each printed as one line the moment it is measured (a long run shows progress)."""

    def append(self, r: dict) -> None:
        super().append(r)
        detail = f"ratio {r['ratio']}x" if "ratio" in r else f"peak {r['peak_rss_mib']} MiB in {r['seconds']}s"
        print(f"{'ok  ' if r['met'] else 'MISS'} {r['what']}: {detail} (goal {r['goal']})", file=sys.stderr, flush=True)


if __name__ == "__main__":
    sys.exit(main())
