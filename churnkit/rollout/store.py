"""What the rollout controller keeps: the per-endpoint lock and the state file it rewrites at every
transition, so a controller stopped in any way is finished or resumed by the next one."""

from __future__ import annotations

import json
import os
import socket
import sys
from pathlib import Path

from churnkit.clock import utcnow
from churnkit.config import Config
from churnkit.exceptions import RolloutLockedError


def rollout_dir(config: Config) -> Path:
    return config.runs_dir / "rollout"


def state_path(config: Config, endpoint: str) -> Path:
    """``<runs_dir>/rollout/<endpoint>.json``: the controller's state, rewritten at every transition."""
    return rollout_dir(config) / f"{endpoint}.json"


def read_state(path: Path) -> dict | None:
    try:
        return json.loads(Path(path).read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def write_state(path: Path, state: dict) -> None:
    """Replace the state file atomically (a reader never sees half a file)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(state | {"updated": utcnow()}, indent=2, default=str))
    os.replace(tmp, path)


def pid_alive(pid: int) -> bool:
    """True when a process with ``pid`` exists (on this host)."""
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class RolloutLock:
    """An exclusive lock on one endpoint's rollouts: ``fcntl.flock`` on a file holding the holder's pid.

    The kernel releases a ``flock`` when its holder dies (even by ``kill -9``), so a lock file left
    by a dead controller never blocks: the next one takes it over and ``stale_holder`` names the
    dead pid. A live holder makes :meth:`acquire` raise :class:`RolloutLockedError` naming it.
    """

    def __init__(self, path: str | os.PathLike, endpoint: str = ""):
        self.path = Path(path)
        self.endpoint = endpoint or self.path.stem
        self.stale_holder: dict | None = None
        self._fh = None

    def holder(self) -> dict:
        try:
            return json.loads(self.path.read_text() or "{}")
        except (FileNotFoundError, json.JSONDecodeError):
            return {}

    def acquire(self) -> "RolloutLock":
        import fcntl

        self.path.parent.mkdir(parents=True, exist_ok=True)
        fh = open(self.path, "a+")  # noqa: SIM115 - held open as long as the lock is
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.close()
            h = self.holder()
            who = f"pid {h.get('pid', '?')} on {h.get('host', '?')} since {h.get('started', '?')} ({h.get('command', '?')})"
            if h.get("host") == socket.gethostname() and not pid_alive(h.get("pid", -1)):
                who += "; that pid is gone, so a process it started still holds the file open"
            raise RolloutLockedError(
                f"another rollout holds the lock on endpoint {self.endpoint!r}: {who}; wait for it to finish or "
                f"stop it (kill {h.get('pid', '<pid>')}), then retry; lock file {str(self.path)!r}",
                pid=h.get("pid"), path=str(self.path),
            ) from None
        previous = self.holder()
        if previous.get("pid") and previous.get("pid") != os.getpid():
            self.stale_holder = previous
        fh.seek(0)
        fh.truncate()
        fh.write(json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "started": utcnow(),
                             "command": " ".join(sys.argv)[:300]}))
        fh.flush()
        self._fh = fh
        return self

    def release(self) -> None:
        import fcntl

        if self._fh is None:
            return
        self._fh.seek(0)
        self._fh.truncate()
        self._fh.flush()
        fcntl.flock(self._fh.fileno(), fcntl.LOCK_UN)
        self._fh.close()
        self._fh = None

    def __enter__(self) -> "RolloutLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
