"""Benchmark: capacity of `churnkit serve` against a bare Starlette app measured in the same run.

- cold start: seconds from process start to the first 200 on /ping, for the exported logreg and HGB
  model folders, against a bare uvicorn/Starlette app answering a constant body;
- one row per request over one keep-alive connection: throughput, p99 and the server's CPU time per
  request against the bare app returning a constant body of the same size. The three servers run at
  once and are measured in interleaved rounds, so a shared machine's drift hits them alike; the ratio
  printed is the median of the rounds' ratios (and the range). With `wrk` installed (Debian: `apt
  install wrk`) the same is measured with wrk's single connection, a client that costs far less CPU;
- `--workers 2` against `--workers 1` under 8 concurrent connections (throughput ratio), with wrk when
  installed (one client thread), else 8 Python client processes, which take most of a core themselves;
- the ramp's sizing of one local instance (`churnkit loadtest --ramp`).
Nothing is asserted; ratios are printed. The default run takes about two minutes.

    .venv/bin/python bench/capacity.py [--rounds 10] [--round-requests 400] [--repeat 3]
"""

from __future__ import annotations

import argparse
import http.client
import json
import multiprocessing
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from serve import BIN, free_port, start, stop, timed_post, wait_ready  # noqa: E402

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


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of ``pid`` and its children (the workers), from /proc."""
    pids = [pid]
    try:
        pids += [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        pass
    total = 0
    for p in pids:
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


def interleaved(servers: dict, body: bytes, rounds: int, per_round: int, warmup: int = 300) -> dict:
    """One keep-alive connection per server; ``rounds`` rounds of ``per_round`` requests to each in turn.

    ``servers`` maps a name to (port, pid); the first is the reference. Per server: req/s over all its
    requests, p50/p99 (ms), the median and range of the per-round throughput ratios to the reference,
    and server CPU microseconds per request.
    """
    conns = {name: http.client.HTTPConnection("127.0.0.1", port) for name, (port, _) in servers.items()}
    for conn in conns.values():
        for _ in range(warmup):
            timed_post(conn, body)
    lat = {name: [] for name in servers}
    ratios = {name: [] for name in servers}
    cpu0 = {name: cpu_seconds(pid) for name, (_, pid) in servers.items()}
    ref = next(iter(servers))
    for _ in range(rounds):
        took = {}
        for name, conn in conns.items():
            sample = [timed_post(conn, body) for _ in range(per_round)]
            lat[name] += sample
            took[name] = sum(sample)
        for name in servers:
            ratios[name].append(took[ref] / took[name])
    out = {}
    for name, (_, pid) in servers.items():
        ls = sorted(lat[name])
        out[name] = {"rps": len(ls) / sum(ls), "p50_ms": ls[len(ls) // 2] * 1e3, "p99_ms": ls[int(len(ls) * 0.99)] * 1e3,
                     "ratio": statistics.median(ratios[name]), "low": min(ratios[name]), "high": max(ratios[name]),
                     "cpu_us": (cpu_seconds(pid) - cpu0[name]) / len(ls) * 1e6}
        conns[name].close()
    return out


def wrk(url: str, body: bytes, connections: int, seconds: float, tmp: Path) -> float | None:
    """Requests/s that ``wrk -t1 -c<connections>`` reached on POST ``url``; None without wrk."""
    exe = shutil.which("wrk")
    if exe is None:
        return None
    script = tmp / "post.lua"
    script.write_text(f'wrk.method = "POST"\nwrk.body = {json.dumps(body.decode())}\n'
                      'wrk.headers["Content-Type"] = "application/json"\n')
    cmd = [exe, "-t1", f"-c{connections}", f"-d{max(1, round(seconds))}s", "-s", str(script), url]  # whole seconds
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 60)
    if "Non-2xx" in run.stdout or "Requests/sec:" not in run.stdout:
        raise SystemExit(f"wrk {' '.join(cmd[1:])} failed:\n{run.stdout}{run.stderr}")
    return float(run.stdout.split("Requests/sec:")[1].split()[0])


def main() -> None:
    from churnkit.config import quiet_outputs

    quiet_outputs()  # no MLflow download bars between the benchmark's lines
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=10, help="interleaved rounds of the one-row comparison")
    ap.add_argument("--round-requests", type=int, default=400, help="single-row requests per server per round")
    ap.add_argument("--repeat", type=int, default=3, help="cold starts per server (median printed)")
    ap.add_argument("--seconds", type=float, default=8.0, help="duration of each wrk / 8-client run")
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

        servers = {"bare uvicorn/Starlette": bare_cmd, "churnkit serve logreg": lambda p: churnkit_cmd("logreg", p),
                   "churnkit serve hgb": lambda p: churnkit_cmd("hgb", p)}
        procs, ports = {}, {}
        try:
            for name, cmd in servers.items():
                ports[name] = free_port()
                procs[name] = start(cmd(ports[name]), tmp / f"hot-{len(procs)}.log", env)
            for k, name in enumerate(servers):
                wait_ready(procs[name], ports[name], tmp / f"hot-{k}.log")
            print(f"\none row per request, one keep-alive connection each, {args.rounds} interleaved rounds of "
                  f"{args.round_requests} requests ({len(answer)}-byte answers):")
            results = interleaved({n: (ports[n], procs[n].pid) for n in servers}, body, args.rounds, args.round_requests)
            b = results["bare uvicorn/Starlette"]
            for name, r in results.items():
                print(f"  {name:<24} {r['rps']:6.0f} req/s   p50 {r['p50_ms']:6.3f} ms   p99 {r['p99_ms']:6.3f} ms   "
                      f"server CPU {r['cpu_us']:4.0f} us/request")
            for kind in ("logreg", "hgb"):
                r = results[f"churnkit serve {kind}"]
                print(f"  {kind}: throughput {r['ratio']:.2f}x the bare app (median of rounds; range {r['low']:.2f}-"
                      f"{r['high']:.2f}), p99 {r['p99_ms'] / b['p99_ms']:.2f}x")
            by_wrk = {n: wrk(f"http://127.0.0.1:{ports[n]}/invocations", body, 1, args.seconds / 2, tmp) for n in servers}
            if by_wrk["bare uvicorn/Starlette"] is None:
                print("  (wrk is not installed: the single-connection run with a native client is skipped)")
            else:
                bare_rps = by_wrk["bare uvicorn/Starlette"]
                print(f"  wrk, one connection, {max(1, round(args.seconds / 2))} s each: " + ", ".join(
                    f"{n.split()[-1]} {v:.0f} req/s" for n, v in by_wrk.items()) + " -> " + ", ".join(
                    f"{k} {by_wrk[f'churnkit serve {k}'] / bare_rps:.2f}x" for k in ("logreg", "hgb")))
        finally:
            for proc in procs.values():
                stop(proc)

        tool = "wrk -t1 -c8" if shutil.which("wrk") else "8 Python client processes"
        print(f"\n8 concurrent connections for {args.seconds:g} s each ({tool}; the load generator shares the same "
              f"{os.cpu_count()} cores):")
        for kind in ("logreg", "hgb"):
            by_workers = {}
            for workers in (1, 2):
                port = free_port()
                proc = start(churnkit_cmd(kind, port, workers), tmp / f"w{workers}.log", env)
                try:
                    wait_ready(proc, port, tmp / f"w{workers}.log")
                    url = f"http://127.0.0.1:{port}/invocations"
                    if shutil.which("wrk"):
                        wrk(url, body, 8, 1.0, tmp)  # warm-up
                        by_workers[workers] = wrk(url, body, 8, args.seconds, tmp)
                    else:
                        concurrent(port, body, 8, 1.0)
                        by_workers[workers] = concurrent(port, body, 8, args.seconds)
                finally:
                    stop(proc)
            print(f"  {kind}: --workers 1 {by_workers[1]:7.0f} req/s, --workers 2 {by_workers[2]:7.0f} req/s -> "
                  f"{by_workers[2] / by_workers[1]:.2f}x")

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
