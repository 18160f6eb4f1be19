"""One pipeline at a time per registered model and runs folder: a file lock naming its holder.

Two pipelines on one model (a scheduled and a manual CI job) would otherwise interleave: one
registers v2, the other v3, and aliases move under both while they deploy and roll out. The lock
(``runs/.locks/pipeline-<model>.lock``, ``fcntl.flock``: released by the kernel when the holder dies,
so a killed pipeline never leaves it behind) serializes them; the file holds the holder's pid, host,
start time and command, which the refusal names. Each pipeline also deploys and rolls out the version
it registered by number, so even pipelines sharing a team server from different machines (different
runs folders, hence different locks) never deploy each other's version.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import socket
import sys
import time
from pathlib import Path

from churnkit.clock import iso_seconds
from churnkit.config import Config
from churnkit.exceptions import PipelineLockedError


def lock_path(config: Config, model_name: str) -> Path:
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", model_name) or "_"
    return config.runs_dir / ".locks" / f"pipeline-{safe}.lock"


def _holder(path: Path) -> dict:
    try:
        return json.loads(path.read_text() or "{}")
    except (OSError, ValueError):
        return {}


def describe_holder(holder: dict) -> str:
    if not holder:
        return "another process (it has not written its details yet)"
    return (f"pid {holder.get('pid')} on {holder.get('host')} since {holder.get('since')} "
            f"(`{holder.get('command')}`)")


@contextlib.contextmanager
def pipeline_lock(config: Config, model_name: str, wait: float = 0.0, echo=print):
    """Hold the pipeline lock of ``model_name`` for the block; wait up to ``wait`` seconds for it.

    Raises
    ------
    PipelineLockedError
        Another pipeline holds it (after ``wait`` seconds); the message names the holder.
    """
    import fcntl

    path = lock_path(config, model_name)
    path.parent.mkdir(parents=True, exist_ok=True)
    fh = open(path, "a+")  # noqa: SIM115 - the handle holds the flock until the block ends
    try:
        deadline = time.monotonic() + max(0.0, wait)
        told = False
        while True:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                holder = _holder(path)
                if time.monotonic() >= deadline:
                    raise PipelineLockedError(
                        f"another pipeline on model {model_name!r} is running: {describe_holder(holder)}; lock "
                        f"{str(path)!r}. Wait for it to finish, or pass --wait SECONDS to queue behind it",
                        holder=holder, path=str(path)) from None
                if not told:
                    echo(f"· waiting for the pipeline on {model_name!r} held by {describe_holder(holder)}")
                    told = True
                time.sleep(0.5)
        fh.seek(0)
        fh.truncate()
        fh.write(json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "since": iso_seconds(),
                             "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]])[:300]}))
        fh.flush()
        try:
            yield path
        finally:
            fh.seek(0)
            fh.truncate()
            fh.flush()
            fcntl.flock(fh, fcntl.LOCK_UN)
    finally:
        fh.close()
