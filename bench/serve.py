"""Benchmark: `churnkit serve` against `mlflow models serve` on the same model, plus batch scoring in-process.

Peers measured in the same run, on the same MLflow model folder, on loopback:
- single row per request over one keep-alive HTTP connection (http.client): req/s, p50, p99 of
  `churnkit serve` and `mlflow models serve --env-manager local` (both one worker);
- one row in-process: churnkit's scorer (validation + compiled model) vs sklearn's predict_proba;
- a batch in-process, from parsed JSON rows to probabilities: churnkit's scorer vs pandas +
  prepare_features + predict_proba, and the model step alone (typed arrays vs a typed DataFrame).
Timings are printed with ratios; nothing is asserted. The default run takes well under a minute.

    .venv/bin/python bench/serve.py [--model logreg|hgb] [--requests 2000] [--batch 10000]
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def train(model: str, rows: int, runs: Path):
    """Train and log a candidate through the library; returns (local model folder, pipeline, schema, raw frame)."""
    import mlflow

    from churnkit import registry
    from churnkit.config import load_config
    from churnkit.data import load_table, synth_month
    from churnkit.model import split_holdout, train_model

    config = load_config(runs)
    registry.setup_tracking(config)
    ds = load_table("", rows=rows, seed=0)
    split = split_holdout(ds)
    pipeline = train_model(split, ds.schema, model=model)
    with mlflow.start_run(run_name="bench-serve"):
        run_id = registry.log_candidate(pipeline, ds, split, model=model, seed=0)
    folder = Path(mlflow.artifacts.download_artifacts(registry.load_candidate(run_id, config).model_uri))
    return folder, pipeline, ds.schema, synth_month(rows=2000, month=2, seed=1)


def start(args: list[str], log: Path, env: dict) -> subprocess.Popen:
    with open(log, "wb") as out:  # the child keeps its own copy of the descriptor
        return subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)


def wait_ready(proc: subprocess.Popen, port: int, log: Path, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"server on port {port} exited:\n{log.read_text()[-2000:]}")
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=1)
            conn.request("GET", "/ping")
            if conn.getresponse().status == 200:
                return
        except OSError:
            time.sleep(0.2)
    raise SystemExit(f"server on port {port} not ready in {timeout} s:\n{log.read_text()[-2000:]}")


def stop(proc: subprocess.Popen) -> None:
    import signal

    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)


def timed_post(conn: http.client.HTTPConnection, body: bytes) -> float:
    """Seconds one POST /invocations of ``body`` took on ``conn`` (exits on anything but 200)."""
    t0 = time.perf_counter()
    conn.request("POST", "/invocations", body, {"Content-Type": "application/json"})
    resp = conn.getresponse()
    data = resp.read()
    if resp.status != 200:
        raise SystemExit(f"port {conn.port} answered {resp.status}: {data[:300]!r}")
    return time.perf_counter() - t0


def hammer(port: int, body: bytes, n: int, warmup: int) -> dict:
    """n single-row requests over one keep-alive connection; latency per request, client side."""
    conn = http.client.HTTPConnection("127.0.0.1", port)
    lat = []
    for i in range(n + warmup):
        took = timed_post(conn, body)
        if i >= warmup:
            lat.append(took)
    conn.close()
    lat.sort()
    return {"rps": len(lat) / sum(lat), "p50_ms": lat[len(lat) // 2] * 1e3, "p99_ms": lat[int(len(lat) * 0.99)] * 1e3,
            "n": len(lat)}


def best_of(fn, repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def main() -> None:
    from churnkit.config import quiet_outputs

    quiet_outputs()  # no MLflow download bars between the benchmark's lines
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", choices=["logreg", "hgb"], default="logreg")
    ap.add_argument("--rows", type=int, default=4000, help="training rows")
    ap.add_argument("--requests", type=int, default=2000, help="single-row requests to churnkit serve")
    ap.add_argument("--mlflow-requests", type=int, default=300, help="single-row requests to mlflow models serve")
    ap.add_argument("--batch", type=int, default=10_000, help="rows in the in-process batch")
    args = ap.parse_args()
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    import numpy as np
    import pandas as pd

    from churnkit.data import prepare_features
    from churnkit.serve.scorer import Scorer

    load = os.getloadavg()
    print(f"machine: {os.cpu_count()} cores, {platform.processor() or platform.machine()}, python {platform.python_version()}, "
          f"load average {load[0]:.2f} at start (shared machine: numbers move with other work)")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        t0 = time.perf_counter()
        folder, pipeline, schema, raw = train(args.model, args.rows, tmp / "runs")
        print(f"model: {args.model} trained on {args.rows} rows and logged in {time.perf_counter() - t0:.1f} s; folder {folder}")

        # One typed row both servers read the same way (MLflow's pyfunc has no schema, so no numeric text).
        typed = prepare_features(raw, schema)
        row = json.loads(typed.iloc[[0]].to_json(orient="records"))
        body = json.dumps({"dataframe_records": row}).encode()
        env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
        env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"  # mlflow models serve execs `uvicorn` from PATH
        ports = {"churnkit": free_port(), "mlflow": free_port()}
        commands = {
            "churnkit": [str(BIN / "churnkit"), "serve", "--model", str(folder), "--port", str(ports["churnkit"]),
                         "--runs-dir", str(tmp / "runs")],
            "mlflow": [str(BIN / "mlflow"), "models", "serve", "-m", str(folder), "-p", str(ports["mlflow"]),
                       "-h", "127.0.0.1", "--env-manager", "local", "-w", "1"],
        }
        procs = {}
        try:
            for name, cmd in commands.items():  # both start at once; measured one after the other
                procs[name] = start(cmd, tmp / f"{name}.log", env)
            for name, proc in procs.items():
                wait_ready(proc, ports[name], tmp / f"{name}.log")
            ck = hammer(ports["churnkit"], body, args.requests, warmup=200)
            ml = hammer(ports["mlflow"], body, args.mlflow_requests, warmup=20)
        finally:
            for p in procs.values():
                stop(p)
        print("\nsingle row per request, one keep-alive connection, loopback:")
        for name, r in (("churnkit serve", ck), ("mlflow models serve", ml)):
            print(f"  {name:<20} {r['rps']:8.0f} req/s   p50 {r['p50_ms']:7.3f} ms   p99 {r['p99_ms']:7.3f} ms   ({r['n']} requests)")
        print(f"  ratio churnkit/mlflow: throughput {ck['rps'] / ml['rps']:.1f}x, p50 {ml['p50_ms'] / ck['p50_ms']:.1f}x lower")

        scorer = Scorer(pipeline, schema)
        one = json.loads(raw.iloc[[0]].to_json(orient="records", double_precision=15))
        n1 = 300
        t_ck = best_of(lambda: [scorer.predict_records(one) for _ in range(n1)], 3) / n1
        t_sk = best_of(lambda: [pipeline.predict_proba(typed.iloc[[0]]) for _ in range(n1 // 10)], 3) / (n1 // 10)
        print(f"\none row in-process ({scorer.engine}): churnkit scorer {t_ck * 1e3:.3f} ms, sklearn predict_proba "
              f"{t_sk * 1e3:.3f} ms -> {t_sk / t_ck:.0f}x")

        big = pd.concat([raw] * (args.batch // len(raw) + 1), ignore_index=True).iloc[: args.batch]
        records = json.loads(big.to_json(orient="records", double_precision=15))
        scorer.validator.max_rows = len(records)
        got = scorer.predict_records(records)
        want = pipeline.predict_proba(prepare_features(pd.DataFrame(records), schema))[:, 1]
        t_ck = best_of(lambda: scorer.predict_records(records), 3)
        t_sk = best_of(lambda: pipeline.predict_proba(prepare_features(pd.DataFrame(records), schema)), 3)
        batch = scorer.validator.records(records)
        typed_big = prepare_features(big, schema)
        m_ck = best_of(lambda: scorer.predict_batch(batch), 3)
        m_sk = best_of(lambda: pipeline.predict_proba(typed_big), 3)
        print(f"\nbatch of {len(records)} rows in-process (max |difference| {float(np.max(np.abs(got - want))):.1e}):")
        print(f"  JSON rows -> probabilities: churnkit {t_ck * 1e3:.1f} ms, pandas+sklearn {t_sk * 1e3:.1f} ms -> {t_sk / t_ck:.1f}x")
        print(f"  model step only:            churnkit {m_ck * 1e3:.1f} ms, sklearn predict_proba {m_sk * 1e3:.1f} ms "
              f"-> {m_sk / m_ck:.1f}x")


if __name__ == "__main__":
    main()
