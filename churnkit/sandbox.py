"""A child process that can do little harm: where untrusted model files are unpickled and converted.

:func:`run_isolated` starts ``python -I`` (no user site, no ``PYTHONPATH``/``PYTHONSTARTUP`` from the
caller's environment) with:

- no network: its own network namespace (``unshare -n``; ``unshare -rn`` as a normal user where user
  namespaces are allowed), else sockets blocked by an audit hook;
- a throwaway home and working directory (deleted afterwards), and an environment holding nothing
  of the caller's but ``PATH``;
- the model bytes on its stdin: it is given no path to the model file, which it could not change
  anyway (file writes are refused: ``RLIMIT_FSIZE`` 0 and the audit hook);
- CPU seconds, address space and wall-clock limits;
- an audit hook (:pep:`578`) installed before any untrusted byte is read, refusing process
  creation, file writes, ``ctypes``, sockets and URL opening.

The child answers with one JSON header and raw bytes on its stdout: the caller never unpickles
anything the child produced. What this does and does not stop is in ``docs/model-trust.md``.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from churnkit.exceptions import DataError, LabelError, ModelFileError, ModelImportError, UnsafeModelError

#: Limits of the child: (environment variable read at each import, default).
LIMITS = {"cpu": ("CHURNKIT_SANDBOX_CPU_SECONDS", 300), "memory_mb": ("CHURNKIT_SANDBOX_MEMORY_MB", 8192),
          "seconds": ("CHURNKIT_SANDBOX_SECONDS", 600)}


def _limit(name: str) -> float:
    var, default = LIMITS[name]
    raw = os.environ.get(var, "")
    try:
        return float(raw) if raw else float(default)
    except ValueError:
        raise ModelFileError(f"{var}={raw!r} is not a number; set a positive number or unset it") from None
#: Functions the child may run, by name (``module:function``); nothing else is importable through it.
ENTRIES = ("churnkit.importer:convert_model",)
#: Audit events refused in the child once it starts reading untrusted bytes.
BLOCKED_EVENTS = ("os.system", "os.exec", "os.posix_spawn", "os.spawn", "os.fork", "os.forkpty", "os.kill",
                  "os.killpg", "subprocess.Popen", "pty.spawn", "ctypes.dlopen", "ctypes.dlsym", "ctypes.call_function",
                  "ctypes.cdata", "ctypes.addressof", "ctypes.create_string_buffer", "socket.__new__", "socket.connect",
                  "socket.bind", "socket.getaddrinfo", "socket.sendto", "urllib.Request", "webbrowser.open",
                  "os.remove", "os.unlink", "os.rename", "os.rmdir", "os.mkdir", "os.symlink", "os.link",
                  "os.chmod", "os.chown", "os.truncate", "os.utime", "shutil.rmtree", "shutil.copyfile",
                  "shutil.move", "sqlite3.connect", "sys.settrace", "sys.setprofile")
_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC
_ERRORS = {e.__name__: e for e in (UnsafeModelError, ModelFileError, ModelImportError, DataError, LabelError)}


@dataclass(frozen=True)
class Isolation:
    """How the child was confined (recorded with the import)."""

    network: str  # "namespace" | "user namespace" | "audit hook"
    limits: str

    def describe(self) -> str:
        return f"child process; network: {self.network}; {self.limits}; throwaway home; file writes refused"


def _network_prefix() -> tuple[list[str], str]:
    """The command prefix giving the child its own network namespace, probed once per process."""
    global _PREFIX
    if _PREFIX is None:
        _PREFIX = ([], "audit hook")
        unshare = shutil.which("unshare")
        if unshare:
            for args, label in ((["-n"], "namespace"), (["-r", "-n"], "user namespace")):
                try:
                    ok = subprocess.run([unshare, *args, "--", "true"], capture_output=True, timeout=10).returncode == 0
                except (OSError, subprocess.SubprocessError):
                    ok = False
                if ok:
                    _PREFIX = ([unshare, *args, "--"], label)
                    break
    return _PREFIX


_PREFIX: tuple[list[str], str] | None = None


def _apply_limits(cpu: int, memory: int) -> None:
    """In the child, before any untrusted byte is read: CPU seconds, address space, no file writes, no core."""
    import resource

    resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu))
    resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
    resource.setrlimit(resource.RLIMIT_FSIZE, (0, 0))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))


def run_isolated(entry: str, header: dict, body: bytes, *, timeout: float | None = None,
                 cpu_seconds: int | None = None, memory_bytes: int | None = None) -> tuple[dict, bytes, Isolation]:
    """Run ``entry`` (one of :data:`ENTRIES`) in a confined child on ``header`` + ``body``.

    Returns the child's JSON header, its raw bytes and how it was confined. A ChurnkitError the child
    raised is raised here with its message; a child killed by a limit is a ModelFileError naming it.
    """
    if entry not in ENTRIES:
        raise ValueError(f"no isolated entry {entry!r}; available: {ENTRIES!r}")
    timeout = _limit("seconds") if timeout is None else timeout
    cpu = int(cpu_seconds or _limit("cpu"))
    memory = int(memory_bytes or _limit("memory_mb") * 2**20)
    prefix, network = _network_prefix()
    # the caller's own import path (its vouched classes live there); -I keeps the rest of its environment out
    paths = [str(Path(__file__).resolve().parents[1])] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    code = f"import sys; sys.path[:0] = {paths!r}; from churnkit.sandbox import child_main; child_main()"
    home = tempfile.mkdtemp(prefix="churnkit-sandbox-")
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": home, "TMPDIR": home, "LANG": "C.UTF-8",
           "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONDONTWRITEBYTECODE": "1",
           "PYTHONHASHSEED": "0", "CHURNKIT_SANDBOX_NETWORK": network,
           "CHURNKIT_SANDBOX_LIMITS": f"{cpu},{memory}"}
    request = json.dumps({"entry": entry, "header": header}).encode()
    payload = struct.pack(">Q", len(request)) + request + body
    iso = Isolation(network, f"{cpu} CPU s, {memory // 2**20} MB address space, {timeout:g} s wall clock")
    try:
        proc = subprocess.Popen([*prefix, sys.executable, "-I", "-c", code], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=home, env=env,
                                start_new_session=True)
        try:
            out, err = proc.communicate(payload, timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)
            proc.communicate()
            raise ModelFileError(f"converting the model file took longer than {timeout:g} s and was stopped; a model "
                                 "file that large or slow to load is refused (CHURNKIT_SANDBOX_SECONDS raises the "
                                 "limit)") from None
    finally:
        shutil.rmtree(home, ignore_errors=True)
    return (*_answer(proc.returncode, out, err, cpu, memory), iso)


def _answer(code: int, out: bytes, err: bytes, cpu: int, memory: int) -> tuple[dict, bytes]:
    if len(out) >= 8:
        n = struct.unpack(">Q", out[:8])[0]
        if 8 + n <= len(out):
            try:
                head = json.loads(out[8:8 + n])
            except ValueError:
                head = None
            if isinstance(head, dict):
                if "error" in head:
                    e = head["error"]
                    cls = _ERRORS.get(e.get("type"), ModelImportError)
                    if cls is UnsafeModelError:
                        raise UnsafeModelError(str(e.get("message")), refused=list(e.get("refused") or []))
                    raise cls(str(e.get("message")))
                if code == 0:
                    return head, out[8 + n:]
    tail = err.decode(errors="replace").strip().splitlines()[-3:]
    reason = {-9: f"killed (CPU limit {cpu} s or out of memory)", -24: f"CPU limit of {cpu} s",
              -25: "it tried to write a file"}.get(code, f"exit status {code}")
    if any("MemoryError" in line for line in tail):
        reason = f"memory limit of {memory // 2**20} MB"
    raise ModelFileError(f"loading the model file in its isolated process failed ({reason}): {' | '.join(tail)[:500]}; "
                         "the file is corrupted, too large for the limits, or tried something a model file never needs")


def _audit(event: str, args) -> None:
    if event.startswith(BLOCKED_EVENTS):
        raise PermissionError(f"{event} is not allowed while a model file is converted")
    if event == "open" and len(args) >= 3:
        mode, flags = args[1], args[2]
        if (isinstance(mode, str) and any(c in mode for c in "wax+")) or (isinstance(flags, int) and flags & _WRITE_FLAGS):
            raise PermissionError(f"opening {args[0]!r} for writing is not allowed while a model file is converted")


def child_main() -> None:
    """The child: read the request from stdin, install the audit hook, run the entry, answer on stdout."""
    import importlib
    import io

    cpu, memory = (int(v) for v in os.environ["CHURNKIT_SANDBOX_LIMITS"].split(","))
    _apply_limits(cpu, memory)
    out = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)  # anything the libraries print goes to stderr, never into the answer
    raw = sys.stdin.buffer.read()
    n = struct.unpack(">Q", raw[:8])[0]
    request = json.loads(raw[8:8 + n])
    body = memoryview(raw)[8 + n:].tobytes()
    del raw
    module, func = request["entry"].split(":")
    if request["entry"] not in ENTRIES:
        raise SystemExit(2)
    fn = getattr(importlib.import_module(module), func)
    for name in ("numpy", "pandas", "scipy", "sklearn", "joblib", "skops.io", "picklescan.scanner"):
        importlib.import_module(name)  # imported before the hook: imports read files and load libraries
    if os.environ.get("CHURNKIT_SANDBOX_NETWORK") == "audit hook":
        import socket

        socket.socket = None  # type: ignore[misc,assignment]
    sys.addaudithook(_audit)
    try:
        head, data = fn(request["header"], body)
    except tuple(_ERRORS.values()) as exc:
        head, data = {"error": {"type": type(exc).__name__, "message": str(exc),
                                "refused": getattr(exc, "refused", [])}}, b""
    except Exception as exc:  # anything else the file caused: reported, never a traceback on the caller's screen
        head, data = {"error": {"type": "ModelFileError",
                                "message": f"the model file could not be loaded ({type(exc).__name__}: {exc}); it is "
                                           "corrupted or truncated, or needs a library that is not installed"}}, b""
    blob = json.dumps(head).encode()
    buf = io.BytesIO()
    buf.write(struct.pack(">Q", len(blob)) + blob)
    buf.write(data)
    out.write(buf.getvalue())
    out.flush()
