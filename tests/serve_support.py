"""Test support for the serving tests: a registry with a logistic (v1) and a boosting (v2) model,
raw request rows, and ``churnkit serve`` started as a real process on 127.0.0.1.

The registry is built once per test process through the library (train, log, gate, register).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]
CHURNKIT = str(Path(sys.executable).with_name("churnkit"))
_STORE: dict = {}


@dataclass
class Models:
    pipelines: dict  # kind -> fitted build_model pipeline
    schema: object
    holdout: object  # typed holdout features (DataFrame)
    raw: object  # a raw Telco-shaped month (DataFrame, ID and label included, blanks in total_charges)


def clean_env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items()
           if k not in ("MLFLOW_TRACKING_URI", "MLFLOW_RUN_ID", "CHURNKIT_MODEL_URI", "AIP_STORAGE_URI", "AIP_HTTP_PORT",
                        "AIP_HEALTH_ROUTE", "AIP_PREDICT_ROUTE", "AZUREML_MODEL_DIR", "CHURNKIT_MODEL_SHA256", "CHURNKIT_MANIFEST_SHA256",
                        "CHURNKIT_HOST", "CHURNKIT_RUNS_DIR")}
    env.update({k: str(v) for k, v in extra.items()})
    return env


def models() -> Models:
    """Both model kinds fitted in-process (no MLflow); boosting with fewer rounds to keep tests quick."""
    if "models" not in _STORE:
        from churnkit.data import load_table, synth_month
        from churnkit.model import build_model, split_holdout

        dataset = load_table("", rows=1500, seed=3)
        split = split_holdout(dataset, seed=3)
        pipelines = {kind: build_model(kind, dataset.schema, seed=3) for kind in ("logreg", "hgb")}
        pipelines["hgb"].set_params(clf__max_iter=40)
        for p in pipelines.values():
            p.fit(split.X_train, split.y_train.to_numpy())
        raw = synth_month(rows=300, month=4, seed=11, drift="new_category")  # an unseen payment method included
        _STORE["models"] = Models(pipelines, dataset.schema, split.X_holdout, raw)
    return _STORE["models"]


def served_store(base: Path):
    """A runs folder whose registry holds churn v1 (champion) and v2, and the champion loaded in-process."""
    from deploy_support import registry_store

    from churnkit import registry
    from churnkit.config import load_config

    saved = {k: os.environ.pop(k, None) for k in ("MLFLOW_TRACKING_URI", "MLFLOW_RUN_ID")}
    try:
        runs = registry_store(base)
        os.environ.pop("MLFLOW_TRACKING_URI", None)  # mlflow.set_tracking_uri exports it; it must not leak
        config = load_config(runs)
        registry.setup_tracking(config)
        return runs, registry.load_model("models:/churn@champion", config)
    finally:
        for k, v in saved.items():
            os.environ.pop(k, None)
            if v is not None:
                os.environ[k] = v


def json_rows(frame) -> list[dict]:
    """Rows as a client sends them: numbers as numbers, text as text, nothing converted."""
    import json

    return json.loads(frame.to_json(orient="records", double_precision=15))


def expected_proba(pipeline, schema, frame):
    """sklearn's own answer for raw rows: prepare_features then predict_proba."""
    from churnkit.data import prepare_features

    return pipeline.predict_proba(prepare_features(frame, schema))[:, 1]


class Server:
    """A ``churnkit serve`` process (or any command printing the serve line) on 127.0.0.1."""

    def __init__(self, args: list[str], env: dict, log_path: Path, port: int | None = None, timeout: float = 60.0):
        self.log_path = Path(log_path)
        self.log = open(self.log_path, "wb")  # noqa: SIM115 - the server writes to it until close()
        self.proc = subprocess.Popen(args, env=env, stdout=self.log, stderr=subprocess.STDOUT, cwd=str(REPO),
                                     start_new_session=True)
        self.port = port
        self.url = ""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            text = self.output()
            if self.proc.poll() is not None:
                self.close()
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n{text}")
            if self.port is None and "serving " in text and " on http://" in text:
                self.port = int(text.split(" on http://", 1)[1].split()[0].rsplit(":", 1)[1])
            if self.port is not None:
                self.url = f"http://127.0.0.1:{self.port}"
                try:
                    if httpx.get(self.url + "/", timeout=1.0).status_code == 200:
                        return
                except httpx.HTTPError:
                    pass
            time.sleep(0.1)
        self.close()
        raise RuntimeError(f"server did not become ready in {timeout} s:\n{self.output()}")

    def output(self) -> str:
        self.log.flush()
        return self.log_path.read_text(errors="replace")

    def close(self) -> None:
        """SIGTERM (graceful: capture flushed), then SIGKILL of the process group if it lingers."""
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
        self.log.close()
