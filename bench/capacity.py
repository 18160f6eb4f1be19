"""Benchmark: capacity of `churnkit serve` against a bare Starlette app measured in the same run.

- cold start: seconds from process start to the first 200 on /ping, for the exported logreg and HGB
  model folders, against a bare uvicorn/Starlette app answering a constant body;
- one row per request over one keep-alive connection: throughput and p99 against the bare app
  returning a constant body of the same size (ratios);
- `--workers 2` against `--workers 1` under 8 concurrent clients (throughput ratio);
- the ramp's sizing of one local instance (`churnkit loadtest --ramp`).
Nothing is asserted; ratios are printed. The default run takes about two minutes.

    .venv/bin/python bench/capacity.py [--requests 3000] [--repeat 3]
"""

from __future__ import annotations

import argparse
import http.client
import json
import multiprocessing
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from serve import BIN, free_port, hammer, start, stop, wait_ready  # noqa: E402

BARE_APP = '''
import os
from starlette.applications import Starlette
from starlette.responses import Response
from starlette.routing import Route

BODY = open(os.environ["BARE_BODY_FILE"], "rb").read()


async def ping(request):
    return Response(b'{"status":"ok"}', media_type="application/json")


async def invocations(request):
    await request.body()
    return Response(BODY, media_type="application/json")


app = Starlette(routes=[Route("/ping", ping), Route("/invocations", invocations, methods=["POST"])])
'''


def export_models(tmp: Path) -> dict[str, Path]:
    """Train logreg and HGB through the library and export their serving folders (with the compiled scorer)."""
    import mlflow

    from churnkit import registry
    from churnkit.config import load_config
    from churnkit.data import load_table
    from churnkit.model import split_holdout, train_model
    from churnkit.serve.loading import export_model

    config = load_config(tmp / "runs")
    registry.setup_tracking(config)
    ds = load_table("", rows=4000, seed=0)
    split = split_holdout(ds)
    out = {}
    for kind in ("logreg", "hgb"):
        pipeline = train_model(split, ds.schema, model=kind)
        with mlflow.start_run(run_name=f"bench-capacity-{kind}"):
            run_id = registry.log_candidate(pipeline, ds, split, model=kind, seed=0)
        out[kind] = export_model(registry.load_model(f"runs:/{run_id}/model", config), tmp / kind)
    return out


def cold_start(cmd: list[str], port: int, env: dict, log: Path) -> float:
    """Seconds from spawning ``cmd`` to its first 200 on /ping."""
    t0 = time.perf_counter()
    proc = start(cmd, log, env)
    try:
        while True:
            if proc.poll() is not None:
                raise SystemExit(f"{cmd[0]} exited:\n{log.read_text()[-2000:]}")
            try:
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=1)
                conn.request("GET", "/ping")
                if conn.getresponse().status == 200:
                    return time.perf_counter() - t0
            except OSError:
                time.sleep(0.005)
    finally:
        stop(proc)


def _client(args) -> int:
    port, body, seconds = args
    conn = http.client.HTTPConnection("127.0.0.1", port)
    n, end = 0, time.perf_counter() + seconds
    while time.perf_counter() < end:
        conn.request("POST", "/invocations", body, {"Content-Type": "application/json"})
        resp = conn.getresponse()
        resp.read()
        n += resp.status == 200
    return n


def concurrent(port: int, body: bytes, clients: int, seconds: float) -> float:
    """Requests/s answered 200 under ``clients`` keep-alive clients in separate processes."""
    with multiprocessing.get_context("fork").Pool(clients) as pool:
        return sum(pool.map(_client, [(port, body, seconds)] * clients)) / seconds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=3000, help="single-row requests per server (keep-alive)")
    ap.add_argument("--repeat", type=int, default=3, help="cold starts per server (median printed)")
    ap.add_argument("--seconds", type=float, default=8.0, help="duration of the 8-client run per worker count")
    args = ap.parse_args()
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    load = os.getloadavg()
    print(f"machine: {os.cpu_count()} cores, {platform.processor() or platform.machine()}, python "
          f"{platform.python_version()}, load average {load[0]:.2f} at start (shared machine: numbers move with other work)")
    from churnkit.loadtest import ramp
    from churnkit.data import synth_month

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        folders = export_models(tmp)
        row = json.loads(synth_month(rows=5, month=2, seed=1).drop(columns=["churn", "customer_id"]).iloc[[0]]
                         .to_json(orient="records"))
        body = json.dumps({"instances": row}).encode()
        env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "CHURNKIT_WORKERS")}
        env["PYTHONPATH"] = os.pathsep.join([str(tmp), env.get("PYTHONPATH", "")])

        def churnkit_cmd(kind: str, port: int, workers: int = 1) -> list[str]:
            return [str(BIN / "churnkit"), "serve", "--model", str(folders[kind]), "--port", str(port),
                    "--workers", str(workers)]

        # the bare app answers a constant body of the size churnkit answers for this row
        port = free_port()
        proc = start(churnkit_cmd("logreg", port), tmp / "probe.log", env)
        wait_ready(proc, port, tmp / "probe.log")
        conn = http.client.HTTPConnection("127.0.0.1", port)
        conn.request("POST", "/invocations", body, {"Content-Type": "application/json"})
        answer = conn.getresponse().read()
        stop(proc)
        (tmp / "bare_body.json").write_bytes(answer)
        (tmp / "bare_app.py").write_text(BARE_APP)
        env["BARE_BODY_FILE"] = str(tmp / "bare_body.json")

        def bare_cmd(port: int) -> list[str]:
            return [str(BIN / "uvicorn"), "bare_app:app", "--host", "127.0.0.1", "--port", str(port), "--log-level",
                    "warning", "--no-access-log", "--app-dir", str(tmp)]

        print(f"\ncold start to the first /ping (median of {args.repeat}):")
        starts = {}
        for name, cmd in (("bare uvicorn/Starlette", bare_cmd), ("churnkit serve logreg", lambda p: churnkit_cmd("logreg", p)),
                          ("churnkit serve hgb", lambda p: churnkit_cmd("hgb", p))):
            times = []
            for k in range(args.repeat):
                port = free_port()
                times.append(cold_start(cmd(port), port, env, tmp / f"cold-{k}.log"))
            starts[name] = statistics.median(times)
            print(f"  {name:<24} {starts[name]:6.2f} s   (runs: {', '.join(f'{t:.2f}' for t in times)})")
        bare = starts["bare uvicorn/Starlette"]
        print(f"  ratio churnkit/bare: logreg {starts['churnkit serve logreg'] / bare:.1f}x, "
              f"hgb {starts['churnkit serve hgb'] / bare:.1f}x")

        print(f"\none row per request, one keep-alive connection ({args.requests} requests, {len(answer)}-byte answers):")
        results = {}
        for name, cmd in (("bare uvicorn/Starlette", bare_cmd), ("churnkit serve logreg", lambda p: churnkit_cmd("logreg", p)),
                          ("churnkit serve hgb", lambda p: churnkit_cmd("hgb", p))):
            port = free_port()
            proc = start(cmd(port), tmp / "hot.log", env)
            try:
                wait_ready(proc, port, tmp / "hot.log")
                results[name] = hammer(port, body, args.requests, warmup=300)
            finally:
                stop(proc)
            r = results[name]
            print(f"  {name:<24} {r['rps']:8.0f} req/s   p50 {r['p50_ms']:6.3f} ms   p99 {r['p99_ms']:6.3f} ms")
        b = results["bare uvicorn/Starlette"]
        for kind in ("logreg", "hgb"):
            r = results[f"churnkit serve {kind}"]
            print(f"  {kind}: throughput {r['rps'] / b['rps']:.2f}x the bare app, p99 {r['p99_ms'] / b['p99_ms']:.2f}x")

        print(f"\n8 concurrent clients for {args.seconds:g} s each, logreg:")
        by_workers = {}
        for workers in (1, 2):
            port = free_port()
            proc = start(churnkit_cmd("logreg", port, workers), tmp / f"w{workers}.log", env)
            try:
                wait_ready(proc, port, tmp / f"w{workers}.log")
                concurrent(port, body, 8, 1.0)  # warm-up
                by_workers[workers] = concurrent(port, body, 8, args.seconds)
            finally:
                stop(proc)
            print(f"  --workers {workers}: {by_workers[workers]:8.0f} req/s")
        print(f"  ratio --workers 2 / --workers 1: {by_workers[2] / by_workers[1]:.2f}x "
              f"(the 8 client processes share the same {os.cpu_count()} cores)")

        print("\nsizing one local instance (churnkit loadtest --ramp, p99 objective 50 ms, 3 s steps):")
        port = free_port()
        proc = start(churnkit_cmd("logreg", port), tmp / "ramp.log", env)
        try:
            wait_ready(proc, port, tmp / "ramp.log")
            result = ramp(f"http://127.0.0.1:{port}", 50, 3.0, p99_objective_ms=50.0, factor=2.0, max_steps=6)
        finally:
            stop(proc)
        print("\n".join("  " + line for line in result.summary().splitlines()))


if __name__ == "__main__":
    main()
