"""Kernels started ahead of the notebook they will run, so a pipeline does not wait for them.

A notebook run starts a kernel, which then imports scikit-learn, pandas, MLflow and churnkit in its first cell:
seconds, every notebook. The pipeline starts the kernel of its next step while the current one runs (and the
first one while it sets up the store), and has it import those modules in the background. Each notebook
still gets a fresh kernel of its own, in the notebook's folder, with the same environment a kernel papermill
starts would have: the run's own variables (``MLFLOW_RUN_ID``...) are set by a silent request just before the
notebook runs. Silent requests bind no name in the notebook's namespace, count no execution and leave no output
in the executed notebook: the record is what it would be with a kernel started on demand.
"""

from __future__ import annotations

import os
from pathlib import Path

#: Imported in the background: what every pipeline notebook's first cells import, named so nothing is bound.
PRELOAD = ("churnkit.session", "churnkit.registry", "churnkit.model", "churnkit.evaluate", "churnkit.data",
           "mlflow", "sklearn.pipeline", "pandas", "matplotlib.pyplot")
#: Seconds a warm kernel may take to apply a run's environment (it may still be importing PRELOAD).
READY_TIMEOUT = 120.0


class WarmKernel:
    """A python3 kernel started now in ``cwd`` with ``env``, importing :data:`PRELOAD`; hand ``km`` to papermill
    after :meth:`prepare`, and :meth:`shutdown` it after the notebook ran (papermill leaves a kernel it did not
    start running)."""

    def __init__(self, cwd: str | os.PathLike, env: dict[str, str]):
        from jupyter_client.manager import AsyncKernelManager
        from jupyter_core.utils import run_sync

        from churnkit.runner.execution import kernel_config

        self.cwd = Path(cwd)
        self.stopped = False
        self.km = AsyncKernelManager(kernel_name="python3", config=kernel_config())
        # nbclient starts its kernels with an in-memory history: the same here
        run_sync(self.km.start_kernel)(cwd=str(self.cwd), env=dict(env),
                                       extra_arguments=["--HistoryManager.hist_file=:memory:"])
        self.kc = self.km.client()
        self.kc.start_channels()
        self.kc.execute(f"list(map(__import__, {list(PRELOAD)!r}))", silent=True, store_history=False)

    def prepare(self, env: dict[str, str], timeout: float = READY_TIMEOUT) -> None:
        """Set the run's environment variables in the kernel; returns once the kernel applied them.

        Raises
        ------
        TimeoutError
            When the kernel did not answer within ``timeout`` seconds.
        """
        import time

        from jupyter_core.utils import run_sync

        msg_id = self.kc.execute(f"__import__('os').environ.update({dict(env)!r})", silent=True, store_history=False)
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"the kernel did not start within {timeout:g} s")
            try:
                reply = run_sync(self.kc.get_shell_msg)(timeout=left)
            except Exception as exc:  # queue.Empty on timeout
                raise TimeoutError(f"the kernel did not start within {timeout:g} s") from exc
            if reply.get("parent_header", {}).get("msg_id") == msg_id:
                if reply["content"].get("status") != "ok":
                    raise RuntimeError(f"the kernel could not take the run's environment: {reply['content']}")
                return

    def shutdown(self) -> None:
        """Stop the kernel at once (as ``shutdown_kernel="immediate"`` does for kernels papermill starts)."""
        from jupyter_core.utils import run_sync

        if self.stopped:
            return
        self.stopped = True
        try:
            self.kc.stop_channels()
            if run_sync(self.km.is_alive)():
                run_sync(self.km.shutdown_kernel)(now=True)
        except Exception:  # a kernel that already died: nothing left to stop
            pass
        finally:
            run_sync(self.km.cleanup_resources)()
