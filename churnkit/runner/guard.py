"""What keeps a headless run's record intact whatever happens to it.

- Every write of an output notebook goes through a papermill I/O handler that redacts credentials
  first, so no version of the file on disk (papermill saves after every cell) ever holds one.
- SIGTERM (CI cancelling a job, ``kill``) becomes an exception while a notebook runs
  (:mod:`churnkit.signals`), so papermill's final save and the runner's MLflow bookkeeping run.
- A run stopped from outside the kernel (timeout, kernel death, SIGTERM) leaves no error output in
  its notebook; :func:`mark_interrupted` adds one to the cell that was running, papermill style.
"""

from __future__ import annotations

import contextlib
import html
import json
import os
import uuid
from collections import Counter
from pathlib import Path

from churnkit.runner.secrets import redact_notebook, redact_notebook_json

ERROR_TAG = "papermill-error-cell-tag"  # papermill's own marker: banner cells it strips on re-execution
_BANNER_STYLE = 'style="color:red; font-family:Helvetica Neue, Helvetica, Arial, sans-serif; font-size:2em;"'


# --------------------------------------------------------------------------------------------------
# Redacted writes
# --------------------------------------------------------------------------------------------------

class _RedactingIO:
    """papermill I/O handler for absolute local paths; writes to a watched path are redacted first."""

    def __init__(self, local):
        self._local = local
        self.watched: dict[str, Counter] = {}

    def read(self, path):
        return self._local.read(path)

    def listdir(self, path):
        return self._local.listdir(path)

    def pretty_path(self, path):
        return self._local.pretty_path(path)

    def write(self, buf, path):
        counts = self.watched.get(os.path.abspath(path))
        if counts is not None:
            buf, found = redact_notebook_json(buf)
            counts.clear()  # the notebook in memory is never redacted: each write finds every secret again
            counts.update(found)
        return self._local.write(buf, path)


_handlers: dict[str, _RedactingIO] = {}


def _handler_for(path: Path) -> _RedactingIO:
    """The redacting handler for ``path``'s drive, registered with papermill on first use."""
    from papermill.iorw import papermill_io

    anchor = path.anchor  # "/" on POSIX, "C:\\" on Windows: papermill picks handlers by path prefix
    if anchor not in _handlers:
        _handlers[anchor] = _RedactingIO(papermill_io.get_handler("local"))
        papermill_io.register(anchor, _handlers[anchor])
    return _handlers[anchor]


@contextlib.contextmanager
def redacted_writes(output: Path):
    """While active, every papermill write of ``output`` is redacted; yields the live redaction counts."""
    output = Path(os.path.abspath(output))
    handler = _handler_for(output)
    counts: Counter = Counter()
    handler.watched[str(output)] = counts
    try:
        yield counts
    finally:
        handler.watched.pop(str(output), None)


def write_notebook(nb: dict, path: Path) -> Counter:
    """Write ``nb`` to ``path`` (nbformat's layout), redacted; returns the redactions by kind."""
    clean, counts = redact_notebook(nb)
    Path(path).write_text(json.dumps(clean, indent=1, sort_keys=True, ensure_ascii=False) + "\n", encoding="utf-8")
    return counts


# --------------------------------------------------------------------------------------------------
# Partial notebooks
# --------------------------------------------------------------------------------------------------

def _new_cell(source: str) -> dict:
    return {"cell_type": "markdown", "id": uuid.uuid4().hex[:8], "metadata": {"tags": [ERROR_TAG]}, "source": source}


def mark_interrupted(output: Path, ename: str, evalue: str) -> bool:
    """Record an interruption in the partial notebook at ``output``; False when there is none to mark.

    The cell that was running (the last one papermill started) gets an error output and is marked
    failed, the cells after it are marked not run, and a red banner on top says where and why the run
    stopped, as papermill does for a failing cell.
    """
    try:
        nb = json.loads(Path(output).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    cells = nb.get("cells", [])
    started = [i for i, c in enumerate(cells) if c.get("metadata", {}).get("papermill", {}).get("start_time")]
    banner = f"The run stopped: {ename}: {evalue}"
    if started:
        at = started[-1]
        cell = cells[at]
        cell.setdefault("outputs", []).append(
            {"output_type": "error", "ename": ename, "evalue": evalue, "traceback": [f"{ename}: {evalue}"]}
        )
        cell["metadata"]["papermill"].update(status="failed", exception=True)
        for later in cells[at + 1:]:
            later.get("metadata", {}).get("papermill", {}).update(status="pending")
        cells.insert(at, _new_cell(f'<span id="papermill-error-cell" {_BANNER_STYLE}>{html.escape(banner)} (here)</span>'))
    link = '; <a href="#papermill-error-cell">see the cell</a>' if started else " before any cell ran"
    cells.insert(0, _new_cell(f"<span {_BANNER_STYLE}>{html.escape(banner)}{link}.</span>"))
    nb.setdefault("metadata", {}).setdefault("papermill", {})["exception"] = True
    write_notebook(nb, output)
    return True
