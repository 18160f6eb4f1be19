"""Benchmark: `churnkit pipeline` wall time, split into kernel start, papermill, MLflow bookkeeping and cells.

Peer in the same run: the same library calls made in-process by a plain script (no kernel, no papermill),
on the same synthetic data. Prints the split per notebook, registration time and the ratio.

- kernel start: from papermill's start of the notebook to its first cell (the kernel process and its client);
- papermill: the rest of papermill's time around the cells (parameters, writing the notebook after each cell)
  plus importing papermill itself, once per process;
- MLflow bookkeeping: everything outside papermill (store set-up, runs, parameters, tags, the output notebook
  as an artifact, the lock and the run folder);
- cells: the cells' own time as papermill records it (a fresh kernel imports scikit-learn, pandas, MLflow).

    .venv/bin/python bench/pipeline.py [--rows 50000]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path


def cell_seconds(path: Path) -> float:
    nb = json.loads(path.read_text())
    return sum(float(c.get("metadata", {}).get("papermill", {}).get("duration") or 0) for c in nb["cells"])


def kernel_start_seconds(path: Path) -> float:
    """Seconds from papermill's start of the notebook to the start of its first cell."""
    from datetime import datetime

    nb = json.loads(path.read_text())
    started = nb["metadata"]["papermill"]["start_time"]
    first = next(c["metadata"]["papermill"]["start_time"] for c in nb["cells"]
                 if c.get("metadata", {}).get("papermill", {}).get("start_time"))
    return (datetime.fromisoformat(first) - datetime.fromisoformat(started)).total_seconds()


def in_process(rows: int, config) -> float:
    """The peer: the notebooks' calls, made directly."""
    import mlflow

    import churnkit as ck
    from churnkit import registry

    t0 = time.perf_counter()
    registry.setup_tracking(config)
    with mlflow.start_run():
        ds = ck.load_table("", rows=rows)
        split = ck.split_holdout(ds, 0.25, 0)
        pipe = ck.train_model(split, ds.schema, "logreg", 0)
        run_id = ck.log_candidate(pipe, ds, split, model="logreg", seed=0)
    with mlflow.start_run():
        cand = registry.load_candidate(run_id, config)
        champ = ck.load_champion("churn", config)
        ev = ck.evaluate_holdout(cand.pipeline, cand.X_holdout, cand.y_holdout, champ.pipeline if champ else None)
        verdict = ck.gate(ev.challenger["roc_auc"], ev.champion_auc, 0.85, -1.0)
        fig = ck.plot_evaluation(ev.y_true, ev.proba, ev.threshold, ev.champion_proba)
        ck.log_evaluation(ev, verdict, fig)
        ck.register_candidate(cand, verdict, metrics=ev.challenger, threshold=ev.threshold, config=config)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=50_000)
    args = ap.parse_args()
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    from churnkit.config import quiet_outputs

    quiet_outputs()  # no download bars between the benchmark's lines
    from churnkit import registry
    from churnkit.config import load_config
    from churnkit.runner import run_pipeline

    t0 = time.perf_counter()
    import papermill  # noqa: F401 - once per process; timed here so the split can name it

    papermill_import = time.perf_counter() - t0
    with tempfile.TemporaryDirectory() as tmp:
        config = load_config(Path(tmp) / "runs")
        t0 = time.perf_counter()
        # Train and evaluate: the steps the in-process peer repeats (deploy and rollout start servers).
        result = run_pipeline({"rows": args.rows, "min_improvement": -1.0}, config=config, progress=False,
                              echo=lambda *_: None, steps=("01-train", "02-evaluate"))
        wall = time.perf_counter() - t0 + papermill_import
        print(f"churnkit pipeline, {args.rows:,} synthetic rows: {wall:.2f} s wall")
        print(f"{'notebook':<14}{'wall s':>9}{'kernel start s':>16}{'papermill s':>13}{'cells s':>9}")
        split = {"kernel start": 0.0, "papermill": papermill_import, "cells": 0.0}
        for step in result.steps:
            cells, kernel = cell_seconds(step.output_path), kernel_start_seconds(step.output_path)
            rest = step.seconds - cells - kernel
            split["cells"] += cells
            split["kernel start"] += kernel
            split["papermill"] += rest
            print(f"{step.notebook:<14}{step.seconds:>9.2f}{kernel:>16.2f}{rest:>13.2f}{cells:>9.2f}")
        split["MLflow bookkeeping"] = wall - papermill_import - sum(s.seconds for s in result.steps)
        reg = registry.client(config).get_run(result.step("02-evaluate").run_id).data.metrics.get("registration_seconds")
        print(f"registration (create version, tags, alias): {reg:.3f} s" if reg else "registration: not measured")

        peer_cfg = load_config(Path(tmp) / "peer")
        peer = in_process(args.rows, peer_cfg)
        print(f"peer: same calls in-process without papermill: {peer:.2f} s")
        print("split of the pipeline's wall time: " + ", ".join(f"{k} {v:.2f} s ({v / wall:.0%})"
                                                                 for k, v in split.items()))
        print(f"ratio pipeline / in-process: {wall / peer:.2f}x (goal <= 2x)")


if __name__ == "__main__":
    main()
