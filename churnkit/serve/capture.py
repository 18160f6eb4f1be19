"""Data capture: every scored request as one JSON line, and the reader monitoring uses.

Files are ``capture-<UTC yyyymmddTHHMMSSZ>-<host>-<pid>-<writer>-<seq>.jsonl`` in the capture folder,
rotated when one passes ``max_bytes``: the host, process and writer in the name keep the files of two
replicas of an autoscaled deployment apart when they rotate in the same second and are copied flat under
one prefix (the time stamp first, so names still sort oldest first). A line is ``{"time", "request_id", "model_name", "model_version", "inputs":
[{column: raw value}], "predictions": [churn_probability]}``. The server only puts the record on a
queue; a writer thread serialises and appends it, flushing at least every ``flush_seconds``, so a
request never waits on the disk.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import re
import secrets
import socket
import threading
import time
from pathlib import Path

from churnkit.clock import file_stamp
from churnkit.exceptions import DataError
from churnkit.serve.contracts import dumps

log = logging.getLogger("churnkit.serve")

DEFAULT_MAX_BYTES = 16 * 1024 * 1024
_STOP = object()

#: The served churn score of a captured row, as :func:`read_capture` names it.
SCORE_COLUMN = "churn_probability"
#: Columns the data capture adds to the inputs (``read_capture`` returns the first three); never features.
CAPTURE_COLUMNS = (SCORE_COLUMN, "model_version", "time", "request_id", "model_name")


class CaptureWriter:
    """Appends capture records to rotating JSON Lines files from a background thread.

    Parameters
    ----------
    directory : path
        Created when missing.
    max_bytes : int
        A file that reaches this size is closed and a new one started.
    flush_seconds : float
        Longest time a record stays in memory before it is flushed to the file.
    remote : str, optional
        ``gs://BUCKET/PREFIX/`` or ``s3://BUCKET/PREFIX/``: every closed file is copied there (a container
        on Vertex AI writes its capture where the rollout controller reads it). Files are then also closed
        every ``rotate_seconds``, so a step's scores arrive within that time.
    upload_deadline : float
        Seconds one copy may take, retries included; a file that could not be copied stays on local disk.
    """

    def __init__(self, directory, max_bytes: int = DEFAULT_MAX_BYTES, flush_seconds: float = 1.0, *,
                 remote: str | None = None, rotate_seconds: float = 60.0, upload_deadline: float = 60.0):
        self.directory = Path(directory)
        self.max_bytes = int(max_bytes)
        self.flush_seconds = float(flush_seconds)
        self.remote = remote.rstrip("/") + "/" if remote else None
        self.rotate_seconds = float(rotate_seconds)
        self.upload_deadline = float(upload_deadline)
        self._opened = 0.0
        self.uploaded = 0
        self.upload_failures = 0
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._file = None
        self._size = 0
        self._seq = 0
        self._writer = secrets.token_hex(2)
        self.written = 0
        self.dropped = 0

    def start(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        self._thread = threading.Thread(target=self._run, name="churnkit-capture", daemon=True)
        self._thread.start()

    def write(self, record: dict) -> None:
        """Queue one record (never blocks; the writer thread serialises it)."""
        self._queue.put(record)

    def close(self, timeout: float = 10.0) -> None:
        """Write everything queued, close the file and stop the thread."""
        if self._thread is not None:
            self._queue.put(_STOP)
            self._thread.join(timeout)
            self._thread = None

    def _open(self) -> None:
        while True:
            stamp = file_stamp()
            path = self.directory / f"capture-{stamp}-{origin()}-{self._writer}-{self._seq:04d}.jsonl"
            self._seq += 1
            try:
                self._file = open(path, "xb")  # noqa: SIM115 - kept open across writes; "x": never append to another process's file
            except FileExistsError:
                continue
            self._size = 0
            self._opened = time.monotonic()
            return

    def _close_file(self) -> None:
        """Close the current file and, with a remote destination, copy it there."""
        if self._file is None:
            return
        self._file.close()
        path, self._file = Path(self._file.name), None
        if self.remote is None:
            return
        from churnkit.serve.storage import upload_file

        try:
            upload_file(path, self.remote + path.name, self.upload_deadline)
            self.uploaded += 1
        except Exception:
            self.upload_failures += 1
            log.exception("data capture file %s could not be copied to %s (%d failed so far)", path.name, self.remote,
                          self.upload_failures)

    def _due(self) -> bool:
        return self.remote is not None and self._file is not None and \
            time.monotonic() - self._opened >= self.rotate_seconds

    def _append(self, record: dict) -> None:
        line = dumps(record) + b"\n"
        if self._file is None or self._size >= self.max_bytes or self._due():
            self._close_file()
            self._open()
        self._file.write(line)
        self._size += len(line)
        self.written += 1

    def _run(self) -> None:
        dirty = False
        while True:
            wait = self.flush_seconds if dirty else (self.rotate_seconds if self._file is not None and self.remote else None)
            try:
                item = self._queue.get(timeout=wait)
            except queue.Empty:
                if dirty:
                    self._file.flush()
                    dirty = False
                if self._due():  # a quiet server still hands over what it captured
                    self._close_file()
                continue
            if item is _STOP:
                break
            try:
                self._append(item)
                dirty = True
            except Exception:
                self.dropped += 1
                log.exception("data capture could not write a record (%d dropped so far)", self.dropped)
        self._close_file()


def origin() -> str:
    """``<host>-<pid>`` of the writing process (the host name cut to letters, digits, '.' and '-'), read at
    each file so a forked worker names its own files."""
    host = re.sub(r"[^A-Za-z0-9.-]", "-", socket.gethostname())[:40].strip(".-") or "host"
    return f"{host}-{os.getpid()}"


def capture_files(path) -> list[Path]:
    """The capture files at ``path`` (a file, or a folder of ``capture-*.jsonl``), oldest first."""
    p = Path(path)
    if p.is_file():
        return [p]
    if not p.is_dir():
        raise DataError(f"capture path {str(p)!r} does not exist; pass the folder given to `churnkit serve --capture-dir`")
    return sorted(p.glob("capture-*.jsonl"))


def read_capture(path):
    """Captured requests as a DataFrame: one row per scored input row.

    Columns: the input columns as sent, plus ``churn_probability``, ``model_version`` and ``time``
    (UTC timestamps). A partly written last line (a server stopped mid-write) is skipped.

    Parameters
    ----------
    path : str or Path
        A capture folder or one capture file.
    """
    import pandas as pd

    rows = []
    for f in capture_files(path):
        with open(f, "rb") as fh:
            for line in fh:
                try:
                    rec = json.loads(line)
                except ValueError:
                    continue
                for inputs, proba in zip(rec.get("inputs", []), rec.get("predictions", [])):
                    rows.append({**inputs, SCORE_COLUMN: proba, "model_version": str(rec.get("model_version")),
                                 "time": rec.get("time")})
    frame = pd.DataFrame(rows, columns=None if rows else list(CAPTURE_COLUMNS[:3]))
    frame["time"] = pd.to_datetime(frame["time"], utc=True, format="ISO8601")
    return frame
