"""Docker for the image tests: the daemon (started when it is not running), a base image made from Debian
packages (no image registry is reachable here), and containers started the way each cloud starts them.

Docker's Debian package runs here as ``dockerd --iptables=false --bridge=none``: containers and builds use
``--network host``, so every container listens on a free port of 127.0.0.1 given through its arguments or
environment, as each platform would give its own.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import httpx

BASE_IMAGE = "churnkit-base:bookworm"
DEBOOTSTRAP_PACKAGES = "python3,python3-venv,ca-certificates"
# Documentation, translations and apt's indexes are not needed to run Python (what a slim image leaves out too).
BASE_TRIM = ("usr/share/doc", "usr/share/man", "usr/share/info", "usr/share/locale", "var/cache/apt",
             "var/lib/apt/lists")


def _run(args, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(args, capture_output=True, text=True, **kw)


def docker_ready() -> bool:
    try:
        return _run(["docker", "info", "--format", "{{.ServerVersion}}"], timeout=20).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def _apt_install(package: str) -> str:
    res = _run(["sh", "-c", f"apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq {package}"],
               timeout=600)
    return "" if res.returncode == 0 else res.stderr[-500:]


def start_dockerd(log_dir: Path) -> tuple[subprocess.Popen | None, str]:
    """(the daemon we started or None if one already answers, why docker is unusable or '')."""
    if docker_ready():
        return None, ""
    if not shutil.which("dockerd"):
        why = _apt_install("docker.io")
        if not shutil.which("dockerd"):
            return None, f"dockerd is not installed and `apt-get install docker.io` failed: {why}"
    log = open(log_dir / "dockerd.log", "wb")  # noqa: SIM115 - the daemon writes to it while it runs
    proc = subprocess.Popen(["dockerd", "--iptables=false", "--bridge=none"], stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return None, f"dockerd exited with {proc.returncode}: {(log_dir / 'dockerd.log').read_text()[-800:]}"
        if docker_ready():
            return proc, ""
        time.sleep(0.5)
    proc.terminate()
    return None, f"dockerd did not answer within 60 s: {(log_dir / 'dockerd.log').read_text()[-800:]}"


def stop_dockerd(proc: subprocess.Popen | None) -> None:
    if proc is not None and proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()


def ensure_base_image() -> str:
    """``churnkit-base:bookworm`` from ``debootstrap --variant=minbase`` + ``docker import`` (made once)."""
    if _run(["docker", "image", "inspect", BASE_IMAGE]).returncode == 0:
        return BASE_IMAGE
    if not shutil.which("debootstrap"):
        why = _apt_install("debootstrap")
        assert shutil.which("debootstrap"), f"debootstrap is not installed and apt-get failed: {why}"
    root = Path(tempfile.mkdtemp(prefix="churnkit-rootfs-"))
    try:
        res = _run(["debootstrap", "--variant=minbase", f"--include={DEBOOTSTRAP_PACKAGES}", "bookworm", str(root)],
                   timeout=900)
        assert res.returncode == 0, f"debootstrap failed:\n{res.stdout[-2000:]}\n{res.stderr[-2000:]}"
        for rel in BASE_TRIM:
            shutil.rmtree(root / rel, ignore_errors=True)
        tar = subprocess.Popen(["tar", "-C", str(root), "-c", "."], stdout=subprocess.PIPE)
        res = subprocess.run(["docker", "import", "-", BASE_IMAGE], stdin=tar.stdout, capture_output=True, text=True)
        tar.wait()
        assert res.returncode == 0, f"docker import failed: {res.stderr}"
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return BASE_IMAGE


def readable_copy(src: Path, parent: Path, name: str) -> Path:
    """A copy of a model folder the container's unprivileged user can read (tmp_path is private to root)."""
    dest = parent / name
    shutil.copytree(src, dest)
    for path in [dest, *dest.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    return dest


class Container:
    """``docker run -d --network host IMAGE ...``, readiness by HTTP, logs on demand, removed on close."""

    def __init__(self, image: str, args: list[str] = (), env: dict | None = None, mounts: dict | None = None,
                 name_hint: str = "churnkit-test"):
        cmd = ["docker", "run", "-d", "--network", "host", "--name", f"{name_hint}-{os.getpid()}-{time.monotonic_ns()}"]
        for key, value in (env or {}).items():
            cmd += ["-e", f"{key}={value}"]
        for host, inside in (mounts or {}).items():
            cmd += ["-v", f"{host}:{inside}:ro"]
        res = _run([*cmd, image, *args], timeout=60)
        assert res.returncode == 0, f"docker run failed: {res.stderr}"
        self.id = res.stdout.strip()

    def logs(self) -> str:
        res = _run(["docker", "logs", self.id], timeout=30)
        return res.stdout + res.stderr

    def state(self) -> dict:
        res = _run(["docker", "inspect", "--format", "{{.State.Running}} {{.State.ExitCode}}", self.id], timeout=30)
        running, code = res.stdout.split()
        return {"running": running == "true", "exit_code": int(code)}

    def wait_ready(self, url: str, timeout: float = 90.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if httpx.get(url, timeout=2.0).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            if not self.state()["running"]:
                raise AssertionError(f"the container exited with {self.state()['exit_code']}:\n{self.logs()}")
            time.sleep(0.2)
        raise AssertionError(f"{url} not ready within {timeout} s:\n{self.logs()}")

    def wait_exit(self, timeout: float = 90.0) -> int:
        res = _run(["docker", "wait", self.id], timeout=timeout)
        return int(res.stdout.strip())

    def close(self) -> None:
        _run(["docker", "rm", "-f", self.id], timeout=60)
