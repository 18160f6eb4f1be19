"""Benchmark: churnkit's drift report vs Evidently 0.7.23's DataDriftPreset on the same data, same run.

Data: ``--rows`` reference + ``--rows`` current rows x 20 columns (15 numeric, 5 categorical) with known
shifts (three numeric columns moved by +0.2 std, one rescaled, one new category, one re-weighted
category). Both sides run in a fresh subprocess that reads the same Parquet files, so each one's
time covers only its report call and its peak memory is measured over the loaded data (peak RSS
minus RSS after loading). Evidently needs pandas < 3, so it runs from its own venv
(``~/.cache/churnkit/bench-evidently-0.7.23``, created on first use); if that cannot be created the
reason is printed and only churnkit's numbers are reported.

    python bench/drift.py                 # 1,000,000 + 1,000,000 rows (about 2 minutes, mostly Evidently)
    python bench/drift.py --rows 100000   # quicker
    python bench/drift.py --current-rows 800000   # unequal sizes (the general Wasserstein merge)
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

EVIDENTLY = "evidently==0.7.23"
VENV = Path(os.environ.get("CHURNKIT_BENCH_EVIDENTLY_VENV", Path.home() / ".cache/churnkit/bench-evidently-0.7.23"))
GOAL_SPEEDUP = 20.0
GOAL_MEMORY_GIB = 1.0


def make_data(rows: int, seed: int, out: Path, current_rows: int | None = None) -> tuple[Path, Path]:
    """Reference and current Parquet files; current has real shifts in 5 numeric and 2 categorical columns."""
    import numpy as np
    import pandas as pd

    frames = []
    for side in (0, 1):
        rng = np.random.default_rng([seed, side])
        rows = current_rows if side and current_rows else rows
        cols = {}
        for i in range(15):
            shift = 0.2 if side and i in (0, 1, 2) else 0.0  # +0.2 std: PSI stays low, Wasserstein flags it
            scale = 1.6 if side and i == 3 else 1.0
            kind = i % 5
            if kind == 0:
                x = rng.normal(50 + shift * 10, 10 * scale, rows)
            elif kind == 1:
                x = rng.lognormal(3 + shift * 0.5, 0.5 * scale, rows)
            elif kind == 2:
                x = rng.exponential(20 * scale, rows) + shift * 20
            elif kind == 3:
                x = rng.uniform(0, 100 * scale, rows)
            else:
                x = rng.poisson(30 + (3 if side and i == 4 else 0), rows).astype(float)
            cols[f"num_{i:02d}"] = x
        for j in range(5):
            k = (3, 5, 8, 20, 50)[j]
            p = np.linspace(1, 2, k)
            if side and j == 1:
                p = p[::-1] ** 2  # re-weighted categories
            p = p / p.sum()
            labels = np.array([f"c{j}_{v}" for v in range(k)], dtype=object)
            values = labels[rng.choice(k, rows, p=p)]
            if side and j == 2:
                values[rng.random(rows) < 0.15] = "c2_new"  # a category the reference never had
            cols[f"cat_{j}"] = values
        frames.append(pd.DataFrame(cols))
    paths = (out / "reference.parquet", out / "current.parquet")
    for frame, path in zip(frames, paths):
        frame.to_parquet(path, index=False)
    return paths


# --------------------------------------------------------------------------------------------------
# Workers (each in its own process)
# --------------------------------------------------------------------------------------------------

def _reset_peak() -> int:
    """Reset the peak-RSS mark after loading (Linux clear_refs "5"), so VmHWM covers the report only."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass  # without it VmHWM still includes the loading peak: an upper bound
    return _rss_kib("VmRSS")


def _rss_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def worker_churnkit(ref_path: str, cur_path: str, workers: int | None = None) -> dict:
    import pandas as pd
    import scipy.stats  # noqa: F401  (imported before the clock starts, as Evidently's imports are)

    from churnkit.monitor import build_monitor_report

    ref, cur = pd.read_parquet(ref_path), pd.read_parquet(cur_path)
    base = _reset_peak()
    t0 = time.perf_counter()
    report = build_monitor_report(ref, cur, label_column="__none__", workers=workers)
    seconds = time.perf_counter() - t0
    verdicts = {n: bool(c["drift"]) for n, c in report.columns.items()}
    methods = {n: c["method"] for n, c in report.columns.items()}
    scores = {n: c["statistic"] for n, c in report.columns.items()}
    return {"seconds": seconds, "peak_over_data_mib": (_rss_kib("VmHWM") - base) / 1024, "verdicts": verdicts,
            "methods": methods, "scores": scores}


def worker_evidently(ref_path: str, cur_path: str) -> dict:
    import pandas as pd
    from evidently import Report
    from evidently.presets import DataDriftPreset

    ref, cur = pd.read_parquet(ref_path), pd.read_parquet(cur_path)
    base = _reset_peak()
    t0 = time.perf_counter()
    snapshot = Report([DataDriftPreset()]).run(cur, ref)
    seconds = time.perf_counter() - t0
    verdicts, methods, scores = {}, {}, {}
    for m in snapshot.dict()["metrics"]:
        cfg = m["config"]
        if not cfg["type"].endswith("ValueDrift"):
            continue
        value, method = float(m["value"]), cfg["method"]
        is_p = "p_value" in method
        verdicts[cfg["column"]] = value < cfg["threshold"] if is_p else value >= cfg["threshold"]
        methods[cfg["column"]], scores[cfg["column"]] = method, value
    return {"seconds": seconds, "peak_over_data_mib": (_rss_kib("VmHWM") - base) / 1024, "verdicts": verdicts,
            "methods": methods, "scores": scores}


def run_worker(python: str, kind: str, ref: Path, cur: Path) -> dict:
    env = dict(os.environ, PYTHONPATH="")  # the Evidently venv must not see this checkout's packages
    proc = subprocess.run([python, os.path.abspath(__file__), "--worker", kind, str(ref), str(cur)],
                          check=False, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"{kind} worker failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def evidently_python() -> tuple[str | None, str]:
    """The venv's python with Evidently 0.7.23 (created on first use), or None and why not."""
    py = VENV / "bin" / "python"
    marker = VENV / ".complete"
    if marker.exists() and py.exists():
        return str(py), "cached"
    try:
        subprocess.run([sys.executable, "-m", "venv", "--clear", str(VENV)], check=True, capture_output=True, text=True)
        subprocess.run([str(py), "-m", "pip", "install", "-q", EVIDENTLY, "pandas<3", "pyarrow"], check=True,
                       capture_output=True, text=True, timeout=900)
        marker.write_text(EVIDENTLY + "\n")
        return str(py), "created"
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired, OSError) as exc:
        detail = getattr(exc, "stderr", "") or str(exc)
        return None, f"could not create {VENV} with {EVIDENTLY} and pandas<3: {str(detail).strip()[-500:]}"


def _print_ours(label: str, res: dict, note: str) -> None:
    print(f"{label}: {res['seconds']:7.2f} s, peak memory over the data {res['peak_over_data_mib']:6.0f} MiB ({note})")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=1_000_000, help="rows per side (default 1,000,000)")
    ap.add_argument("--current-rows", type=int, default=None,
                    help="rows of the current side (default --rows; unequal sizes take the general Wasserstein merge)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-evidently", action="store_true", help="report churnkit's numbers only")
    ap.add_argument("--worker", nargs=3, metavar=("KIND", "REF", "CUR"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        kind, ref, cur = args.worker
        if kind.startswith("churnkit"):
            out = worker_churnkit(ref, cur, workers=1 if kind == "churnkit-1" else None)
        else:
            out = worker_evidently(ref, cur)
        print(json.dumps(out))
        return 0

    with tempfile.TemporaryDirectory(prefix="churnkit-bench-drift-") as tmp:
        t0 = time.perf_counter()
        ref, cur = make_data(args.rows, args.seed, Path(tmp), args.current_rows)
        print(f"data: {args.rows:,} + {args.current_rows or args.rows:,} rows x 20 columns (15 numeric, 5 categorical), "
              f"{(ref.stat().st_size + cur.stat().st_size) / 2**20:.0f} MiB Parquet, made in {time.perf_counter() - t0:.1f} s")
        ours = run_worker(sys.executable, "churnkit", ref, cur)
        single = run_worker(sys.executable, "churnkit-1", ref, cur)
        _print_ours("churnkit  ", ours, f"{os.cpu_count()} cores, up to 4 column threads")
        _print_ours("churnkit 1", single, "one thread")
        if args.no_evidently:
            return 0
        py, why = evidently_python()
        if py is None:
            print(f"Evidently : skipped — {why}")
            return 0
        theirs = run_worker(py, "evidently", ref, cur)
        again = run_worker(sys.executable, "churnkit", ref, cur)  # after Evidently too: load on a shared box drifts
        _print_ours("churnkit  ", again, "again, after Evidently")
    print(f"Evidently : {theirs['seconds']:7.2f} s, peak memory over the data {theirs['peak_over_data_mib']:6.0f} MiB "
          f"({EVIDENTLY} DataDriftPreset, venv {why})")
    fast, slow = sorted((ours["seconds"], again["seconds"]))
    print(f"speed-up  : {theirs['seconds'] / slow:.1f}x to {theirs['seconds'] / fast:.1f}x with threads (our slower and "
          f"faster run), {theirs['seconds'] / single['seconds']:.1f}x on one thread (goal >= {GOAL_SPEEDUP:g}x: "
          f"{'met' if theirs['seconds'] / max(slow, single['seconds']) >= GOAL_SPEEDUP else 'MISSED on the slowest run'})")
    peak = max(ours["peak_over_data_mib"], single["peak_over_data_mib"], again["peak_over_data_mib"])
    print(f"memory    : {peak:.0f} MiB vs Evidently {theirs['peak_over_data_mib']:.0f} MiB over the data "
          f"(goal <= {GOAL_MEMORY_GIB * 1024:.0f} MiB: {'met' if peak <= GOAL_MEMORY_GIB * 1024 else 'MISSED'})")
    cols = sorted(ours["verdicts"])
    agree = [c for c in cols if ours["verdicts"][c] == theirs["verdicts"].get(c)]
    print(f"verdicts  : {len(agree)} of {len(cols)} columns agree; drift in "
          f"{sorted(c for c in cols if ours['verdicts'][c])}")
    print(f"{'column':8} {'churnkit':>26} {'evidently':>40}")
    for c in cols:
        mark = "" if c in agree else "   <-- differs"
        print(f"{c:8} {ours['methods'][c]:>16} {ours['scores'][c]:8.4f} {ours['verdicts'][c]!s:>5} "
              f"{theirs['methods'].get(c, '?'):>30} {theirs['scores'].get(c, float('nan')):8.4f} "
              f"{theirs['verdicts'].get(c)!s:>5}{mark}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
