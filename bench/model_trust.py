"""Benchmark: what the safe import of a model file costs, against a plain ``joblib.load`` of the same file.

Peer in the same run: ``joblib.load`` (runs whatever the file says). Measured: churnkit's scan (the
static walk, a report) plus the conversion in the isolated child (unpickled through the exact
allow-list, re-saved as skops) plus loading those skops bytes back here, as ``load_foreign_model``
does, on a RandomForest joblib of about ``--mb`` megabytes. Prints seconds and the ratio (goal: at
most 3x).

    .venv/bin/python bench/model_trust.py [--mb 50] [--repeat 3]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path


def forest_file(folder: Path, mb: float, seed: int = 0) -> Path:
    """A fitted RandomForest on a synthetic month saved with joblib.dump, grown until about ``mb`` MB."""
    import joblib
    import numpy as np
    from sklearn.ensemble import RandomForestClassifier

    from churnkit.data import load_table

    data = load_table("", rows=20000, month=1, seed=seed)
    X = data.X[data.schema.numeric].fillna(0).to_numpy()
    y = data.y.to_numpy()
    path = folder / "forest.joblib"
    trees = 10
    while True:
        model = RandomForestClassifier(n_estimators=trees, random_state=seed, n_jobs=1).fit(X, y)
        joblib.dump(model, path)
        size = path.stat().st_size / 2**20
        if size >= mb * 0.9:
            return path
        trees = int(np.ceil(trees * mb / max(size, 0.1)))


def timed(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=float, default=50.0)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args(argv)
    import joblib

    from churnkit.importer import load_foreign_model, scan_model_file

    with tempfile.TemporaryDirectory() as tmp:
        path = forest_file(Path(tmp), args.mb)
        size = path.stat().st_size / 2**20
        plain = timed(lambda: joblib.load(path), args.repeat)
        scan = timed(lambda: scan_model_file(path), args.repeat)
        safe = timed(lambda: load_foreign_model(path, columns=[f"x{i}" for i in range(joblib.load(path).n_features_in_)]),
                     args.repeat)
    out = {"file_mb": round(size, 1), "joblib_load_s": round(plain, 3), "scan_s": round(scan, 3),
           "scan_convert_load_s": round(safe, 3), "ratio": round(safe / plain, 2)}
    print(f"RandomForest joblib, {size:.1f} MB (median of {args.repeat})")
    print(f"  joblib.load (peer, runs the file)        {plain:8.3f} s   1.00x")
    print(f"  scan only (static walk, report)          {scan:8.3f} s   {scan / plain:5.2f}x")
    print(f"  scan + isolated conversion + skops load  {safe:8.3f} s   {safe / plain:5.2f}x   (goal <= 3x)")
    return out


if __name__ == "__main__":
    main()
