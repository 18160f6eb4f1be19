"""Benchmark: how fast a faulty challenger is taken out of traffic on each cloud, against the floor its
telemetry sets.

For each of SageMaker, Azure ML and Vertex AI (simulated as in tests/rollout/test_cloud_*.py: real
``churnkit serve`` processes as the variants, their traffic turned into the cloud's own telemetry in moto,
Azurite / gcp-storage-emulator and the recorded Azure Monitor / Cloud Monitoring shapes, the real controller
and target code) a challenger that fails 30 % of its requests is rolled out under client traffic. Measured:
from the moment it takes traffic (its first step's weights are set) to the moment the champion holds 100 %
again. The floor is one metric period plus the ingestion delay: no telemetry can show the failures sooner.
The local target (the router's own ring buffer, no delay) runs the same case as the peer.

    python bench/rollout.py               # 3 runs per target, simulated 1 s periods and 2 s delay
    python bench/rollout.py --runs 5
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))


def measure(target, config, version: str, interval: float) -> float:
    """Seconds from the challenger taking traffic to the champion holding 100 % again (rolled back)."""
    from churnkit import registry
    from churnkit import rollout as ro

    champion = f"v{registry.get_champion(config=config).version}"
    marks: dict[str, float] = {}
    set_traffic = target.set_traffic

    def timed(weights):
        state = set_traffic(weights)
        if any(w > 0 for n, w in state.weights.items() if n != champion) and "start" not in marks:
            marks["start"] = time.monotonic()
        if state.weights.get(champion) == 100 and "start" in marks:
            marks.setdefault("back", time.monotonic())
        return state

    target.set_traffic = timed
    try:
        registry.set_alias("challenger", version, config=config)
        rec = ro.rollout(target, config=config, steps=[25, 100], interval=interval, min_requests=20, echo=lambda m: None)
    finally:
        del target.set_traffic
    if rec.decision != "rolled_back" or "back" not in marks:
        raise RuntimeError(f"expected a rollback, got {rec.decision}: {rec.reason}")
    return marks["back"] - marks["start"]


def main() -> int:
    from churnkit.config import quiet_outputs

    quiet_outputs()  # no MLflow download bars between the benchmark's lines
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3, help="rollouts per target")
    args = parser.parse_args()

    from churnkit.replay import Replayer
    from cloud_rollout_support import DELAY, PERIOD, Emulators, Publisher, build_world, make_target

    for var in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI", "MLFLOW_RUN_ID"):
        os.environ.pop(var, None)
    root = Path(tempfile.mkdtemp(prefix="churnkit-bench-rollout-"))
    os.environ["CHURNKIT_RUNS_DIR"] = str(root / "runs")
    from rollout_models import SERVE_ENV

    os.environ.update(SERVE_ENV)  # the serve processes import and trust the misbehaving class, as in the tests
    em = Emulators(root / "emulators")
    config, inner, versions, rows = build_world(root, cases=("errors",), good=())
    client = Replayer(inner.url, rows, 60.0, workers=4, batch_size=10, progress=False).start()
    results: dict[str, list[float]] = {}
    try:
        results["local"] = [measure(inner, config, versions["errors"], 1.0) for _ in range(args.runs)]
        for cloud in ("sagemaker", "azureml", "vertex"):
            spec = {"cloud": cloud, "endpoint": inner.endpoint, "port": inner.port, "runs_dir": str(config.runs_dir)}
            if cloud == "sagemaker":
                spec["moto_url"] = em.start_moto()
            elif cloud == "azureml":
                spec |= {"azurite_url": em.start_azurite(), "points_file": str(root / "azure-points.jsonl")}
            else:
                spec |= {"gcs_url": em.start_gcs(), "points_file": str(root / "gcp-points.jsonl")}
                spec["monitoring_url"] = em.start_monitoring(Path(spec["points_file"]))
            target = make_target(spec)
            publisher = Publisher(spec, target, em).start()
            try:
                interval = target.telemetry_resolution()
                results[cloud] = [measure(target, config, versions["errors"], interval) for _ in range(args.runs)]
            finally:
                publisher.stop()
    finally:
        seen = client.stop()
        inner.stop()
        em.stop()
    floor = PERIOD + DELAY
    print(f"faulty challenger (30% 5xx) taking traffic -> champion at 100% again; {args.runs} runs each; "
          f"simulated metric period {PERIOD:g} s + ingestion delay {DELAY:g} s = floor {floor:g} s")
    print(f"{'target':<10} {'median s':>9} {'max s':>7} {'x floor':>8} {'x local':>8}")
    local = statistics.median(results["local"])
    for name, values in results.items():
        med = statistics.median(values)
        ratio = "" if name == "local" else f"{med / floor:8.2f}"
        print(f"{name:<10} {med:9.2f} {max(values):7.2f} {ratio:>8} {med / local:8.2f}")
    print(f"client: {seen.requests} requests, {seen.failed} failed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
