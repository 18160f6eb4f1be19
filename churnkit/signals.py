"""SIGTERM as an exception, so a notebook run or a rollout records how it ended instead of vanishing.

CI cancelling a job and ``kill`` send SIGTERM; while :func:`sigterm_raises` is active it raises
:class:`RunTerminated` (a BaseException, like KeyboardInterrupt) and the caller's clean-up runs.
"""

from __future__ import annotations

import contextlib
import signal
import threading


class RunTerminated(BaseException):
    """SIGTERM arrived while a notebook ran (a BaseException, like KeyboardInterrupt: nothing swallows it)."""

    def __init__(self, signum: int):
        super().__init__(f"received {signal.Signals(signum).name}")
        self.signum = signum


def _raise_terminated(signum, frame):
    # A second TERM while papermill saves and MLflow records the run would cut that short: ignore it.
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    raise RunTerminated(signum)


@contextlib.contextmanager
def sigterm_raises():
    """While active (main thread only), SIGTERM raises :class:`RunTerminated`; re-entrant."""
    if threading.current_thread() is not threading.main_thread() or signal.getsignal(signal.SIGTERM) in (
        _raise_terminated, signal.SIG_IGN,
    ):
        yield
        return
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
