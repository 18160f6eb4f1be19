"""A real IPython kernel driven the way JupyterLab drives it: execute requests carrying each cell's id.

JupyterLab sends every cell as an ``execute_request`` whose metadata holds ``cellId``, starts kernels with
``JPY_SESSION_NAME`` (the notebook's path) and stops queued cells after an error; this client does the same,
so churnkit.session sees exactly what it sees under JupyterLab, without a browser.
"""

from __future__ import annotations

import json
import os
import queue
import uuid
from pathlib import Path

from jupyter_client import KernelManager
from jupyter_core.paths import jupyter_runtime_dir


class LabKernel:
    def __init__(self, notebook: Path, env: dict[str, str]):
        self.notebook = Path(notebook)
        full = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_RUN_ID", "CHURNKIT_OUTPUT_NOTEBOOK",
                                                                  "MLFLOW_TRACKING_URI")}
        full |= {"JPY_SESSION_NAME": str(self.notebook), "MPLBACKEND": "Agg"} | env
        # IPC sockets (no TCP port, no "running over TCP without encryption" warning) at an absolute path,
        # since the kernel runs in the notebook's folder and the client here.
        Path(jupyter_runtime_dir()).mkdir(parents=True, exist_ok=True)
        sockets = Path(jupyter_runtime_dir()) / f"kernel-{uuid.uuid4().hex[:12]}-ipc"
        self.km = KernelManager(kernel_name="python3", transport="ipc", ip=str(sockets))
        self.km.start_kernel(env=full, cwd=str(self.notebook.parent))
        self.kc = self.km.blocking_client()
        self.kc.start_channels()
        self.kc.wait_for_ready(timeout=60)

    def cells(self, edits: dict[str, str] | None = None) -> list[dict]:
        """The notebook's code cells, with ``edits`` ({old text: new text}) applied to the parameters cell."""
        nb = json.loads(self.notebook.read_text())
        out = []
        for c in nb["cells"]:
            if c["cell_type"] != "code":
                continue
            src = "".join(c["source"])
            if "parameters" in c.get("metadata", {}).get("tags", []):
                for old, new in (edits or {}).items():
                    assert old in src, old
                    src = src.replace(old, new)
            out.append({"id": c["id"], "source": src})
        return out

    def execute(self, code: str, cell_id: str | None = None, timeout: float = 180, interrupt_after: float | None = None):
        """Run one cell; returns ``(status, outputs)`` where outputs are the iopub messages' contents."""
        content = {"code": code, "silent": False, "store_history": True, "user_expressions": {},
                   "allow_stdin": False, "stop_on_error": True}
        msg = self.kc.session.msg("execute_request", content, metadata={"cellId": cell_id} if cell_id else {})
        self.kc.shell_channel.send(msg)
        msg_id = msg["header"]["msg_id"]
        outputs = []
        if interrupt_after is not None:
            self._wait_busy(msg_id)
            import time

            time.sleep(interrupt_after)
            self.km.interrupt_kernel()
        while True:
            try:
                m = self.kc.get_iopub_msg(timeout=timeout)
            except queue.Empty as exc:
                raise TimeoutError(f"cell {cell_id} did not finish in {timeout} s") from exc
            if m["parent_header"].get("msg_id") != msg_id:
                continue
            if m["msg_type"] == "status" and m["content"]["execution_state"] == "idle":
                break
            if m["msg_type"] in ("stream", "error", "execute_result", "display_data"):
                outputs.append({"type": m["msg_type"], **m["content"]})
        reply = self.kc.get_shell_msg(timeout=timeout)
        while reply["parent_header"].get("msg_id") != msg_id:
            reply = self.kc.get_shell_msg(timeout=timeout)
        return reply["content"]["status"], outputs

    def _wait_busy(self, msg_id: str) -> None:
        while True:
            m = self.kc.get_iopub_msg(timeout=60)
            if m["parent_header"].get("msg_id") == msg_id and m["msg_type"] == "execute_input":
                return

    def run_all(self, edits: dict[str, str] | None = None) -> list[tuple[str, list]]:
        """Run All: every code cell in order, stopping at the first error as JupyterLab does."""
        results = []
        for cell in self.cells(edits):
            status, outputs = self.execute(cell["source"], cell["id"])
            results.append((status, outputs))
            if status != "ok":
                break
        return results

    def shutdown(self, now: bool = False) -> None:
        self.kc.stop_channels()
        self.km.shutdown_kernel(now=now)


def text_of(outputs: list[dict]) -> str:
    parts = []
    for o in outputs:
        if o["type"] == "stream":
            parts.append(o["text"])
        elif o["type"] == "error":
            parts.append(f"{o['ename']}: {o['evalue']}")
        elif "data" in o:
            parts.append(o["data"].get("text/plain", ""))
    return "".join(parts)
