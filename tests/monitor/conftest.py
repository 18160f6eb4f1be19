"""Shared by tests/monitor: churn v1 registered as champion, and ``churnkit serve`` of it with data capture.

Package-scoped (this folder is a package): trained and started once for the folder, stopped after it.
"""

from __future__ import annotations

import os
import time

import mlflow
import pytest

from churnkit import monitor as M


@pytest.fixture(scope="package")
def champion(tmp_path_factory):
    """churn v1 registered as champion (holdout metrics as version tags) in a private runs folder."""
    from churnkit import registry
    from churnkit.config import load_config
    from churnkit.data import load_table
    from churnkit.evaluate import evaluate_holdout, gate
    from churnkit.model import split_holdout, train_model

    saved = {k: os.environ.pop(k, None) for k in ("MLFLOW_TRACKING_URI", "MLFLOW_RUN_ID", "CHURNKIT_RUNS_DIR")}
    config = load_config(tmp_path_factory.mktemp("monitor") / "runs")
    os.environ["CHURNKIT_RUNS_DIR"] = str(config.runs_dir)
    registry.setup_tracking(config)
    ds = load_table("", rows=1500, seed=0)
    split = split_holdout(ds, 0.25, 0)
    with mlflow.start_run():
        run_id = registry.log_candidate(train_model(split, ds.schema), ds, split, model="logreg", seed=0)
    cand = registry.load_candidate(run_id)
    ev = evaluate_holdout(cand.pipeline, cand.X_holdout, cand.y_holdout)
    registry.register_candidate(cand, gate(ev.challenger["roc_auc"]), metrics=ev.challenger, threshold=ev.threshold)
    model, baseline = M.load_monitored_model("churn", "champion", config=config)
    yield config, model, baseline, ev.challenger
    os.environ.pop("CHURNKIT_RUNS_DIR", None)
    for k, v in saved.items():
        if v is not None:
            os.environ[k] = v


@pytest.fixture(scope="package")
def served(champion, tmp_path_factory):
    """``churnkit serve`` of the champion on 127.0.0.1 with data capture on: ``(server, capture folder, started)``.

    ``started`` is the unix time just before the process was launched (the server's uptime cannot exceed
    the time since then).
    """
    from serve_support import CHURNKIT, Server, clean_env

    config = champion[0]
    base = tmp_path_factory.mktemp("served")
    started = time.time()
    server = Server([CHURNKIT, "serve", "--model", "models:/churn@champion", "--runs-dir", str(config.runs_dir),
                     "--port", "0", "--capture-dir", str(base / "capture")], clean_env(), base / "serve.log")
    yield server, base / "capture", started
    server.close()
