"""Benchmark: the serving image's cold start, against a bare Python process started in the same image.

Peers measured in the same run, same image, same machine:
- container start to the first 200 from ``/ping`` (``docker run IMAGE serve`` with an exported model mounted at
  /opt/ml/model, SageMaker's way), which includes importing scikit-learn, pandas and the server, loading and
  verifying the model, and the scorer's start-up self-check;
- container start to the exit of ``python3 -c pass`` (the container runtime and interpreter alone).
The ratio is what churnkit adds to a container start; the image size is printed too. Nothing is asserted.
Needs a running Docker daemon and the image (``churnkit image build``; tests/docker_support.py shows how
this machine starts dockerd and makes a base image without a registry).

    .venv/bin/python bench/image.py [--image churnkit-serve:0.1.0] [--runs 5]
"""

from __future__ import annotations

import argparse
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def exported_model(dest: Path) -> Path:
    """A model trained and exported through the library (what the deploy targets upload)."""
    sys.path[:0] = [str(ROOT), str(ROOT / "tests")]
    from serve_support import served_store

    from churnkit.serve import export_model

    _, loaded = served_store(dest / "store")
    folder = export_model(loaded, dest / "model")
    for path in [folder, *folder.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)  # the container's user is unprivileged
    return folder


def time_to_ping(image: str, model: Path) -> float:
    port = free_port()
    start = time.perf_counter()
    cid = subprocess.run(["docker", "run", "-d", "--network", "host", "-v", f"{model}:/opt/ml/model:ro", image,
                          "serve", "--port", str(port)], capture_output=True, text=True, check=True).stdout.strip()
    try:
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=1) as resp:
                    if resp.status == 200:
                        return time.perf_counter() - start
            except OSError:
                time.sleep(0.02)
            if time.perf_counter() - start > 120:
                raise RuntimeError(subprocess.run(["docker", "logs", cid], capture_output=True, text=True).stderr)
    finally:
        subprocess.run(["docker", "rm", "-f", cid], capture_output=True)


def time_bare_python(image: str) -> float:
    start = time.perf_counter()
    subprocess.run(["docker", "run", "--rm", "--network", "host", "--entrypoint", "python3", image, "-c", "pass"],
                   capture_output=True, check=True)
    return time.perf_counter() - start


def main() -> None:
    from churnkit.config import quiet_outputs

    quiet_outputs()  # no MLflow download bars between the benchmark's lines
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image", default="churnkit-serve:0.1.0")
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    size = subprocess.run(["docker", "image", "inspect", "--format", "{{.Size}}", args.image], capture_output=True,
                          text=True)
    if size.returncode != 0:  # `make bench` runs every benchmark: say why this one measured nothing
        print(f"not measured: image {args.image!r} is not available ({size.stderr.strip()[:200]}); start the Docker "
              "daemon and build it with `churnkit image build`")
        return
    with tempfile.TemporaryDirectory(prefix="churnkit-bench-image-") as tmp:
        Path(tmp).chmod(0o755)
        model = exported_model(Path(tmp))
        time_bare_python(args.image)  # warm the page cache for both peers
        bare = [time_bare_python(args.image) for _ in range(args.runs)]
        served = [time_to_ping(args.image, model) for _ in range(args.runs)]
    b, s = statistics.median(bare), statistics.median(served)
    print(f"image {args.image}: {int(size.stdout) / 1e6:.0f} MB")
    print(f"{'container start to':<44}{'median':>10}{'min':>10}{'max':>10}")
    print(f"{'  python3 -c pass exits (peer)':<44}{b:>9.2f}s{min(bare):>9.2f}s{max(bare):>9.2f}s")
    print(f"{'  first 200 from /ping (churnkit serve)':<44}{s:>9.2f}s{min(served):>9.2f}s{max(served):>9.2f}s")
    print(f"cold start / bare python: {s / b:.1f}x  (churnkit adds {s - b:.2f} s: imports, model load, self-check)")


if __name__ == "__main__":
    main()
