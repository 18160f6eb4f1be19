"""The local target: real ``churnkit serve`` processes behind a real router on 127.0.0.1.

One detached serve process per variant (its own free port, pid file, log, data capture) and one
router process on the endpoint's port (``python -m churnkit.deploy.router``). Processes start in a
new session, so ``churnkit deploy --target local`` returns while the endpoint keeps serving; the
state lives in ``<runs_dir>/deploy/local/<endpoint>/`` (``state.json`` with the endpoint's ``port``,
``router.json``, ``admin.token``, ``*.pid``, ``*.log``, ``capture/<variant>/``) and ``stop()`` ends them all.

The endpoint's port is kept in its state: every command (deploy, traffic, remove, rollout's
telemetry) finds a dead router and starts it again on that port with the last weights; ``describe``
(``churnkit endpoint status``) reports a dead router without restarting it. The router's admin API is
on its own 127.0.0.1 port with the token in ``admin.token``. This is what the rollout controller drives in
tests and in ``make demo``; scale-out is the clouds' job, not this target's.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

from churnkit.deploy.base import DeployTarget, EndpointState, Release, VariantState, request
from churnkit.deploy.telemetry import Window, captured_in_folders, scored_in_folder
from churnkit.exceptions import DeployTargetError

#: Popen objects of the processes this Python process started (so exits are reaped, not zombies).
_CHILDREN: dict[int, subprocess.Popen] = {}
_READY = re.compile(r"serving \S+ v\S+ on http://[^:\s]+:(\d+)")


def _alive(pid: int | None) -> bool:
    if not pid:
        return False
    child = _CHILDREN.get(pid)
    if child is not None:
        return child.poll() is None
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, PermissionError):
        return False
    stat = Path(f"/proc/{pid}/stat")
    with contextlib.suppress(OSError, IndexError):
        return stat.read_text().rsplit(")", 1)[1].split()[0] != "Z"
    return True


def _ours(pid: int) -> bool:
    """True when ``pid`` runs churnkit (guards against a recycled pid); True where /proc is absent."""
    cmdline = Path(f"/proc/{pid}/cmdline")
    if not cmdline.parent.exists():
        return True
    try:
        return b"churnkit" in cmdline.read_bytes()
    except OSError:
        return False


def _free_port(host: str) -> int:
    import socket

    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def terminate(pid: int | None, timeout: float = 10.0) -> bool:
    """SIGTERM the process group of ``pid`` (then SIGKILL after ``timeout``); True if something was stopped.

    SIGCONT follows SIGTERM, so a stopped (SIGSTOP, ``kill -STOP``) process acts on it at once.
    """
    if not pid or not _alive(pid) or not _ours(pid):
        _CHILDREN.pop(pid or 0, None)
        return False
    for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 5.0)):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, sig)
            if sig == signal.SIGTERM:
                os.killpg(pid, signal.SIGCONT)
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            if not _alive(pid):
                _CHILDREN.pop(pid, None)
                return True
            time.sleep(0.05)
    _CHILDREN.pop(pid, None)
    return not _alive(pid)


class LocalTarget(DeployTarget):
    """Weighted variants on this machine, one ``churnkit serve`` process each, behind one router.

    Parameters
    ----------
    endpoint : str
        Endpoint name (the state folder's name).
    port : int
        The port a new router listens on (0: any free port); clients call ``http://host:port/invocations``.
        A running router keeps its port: ``url`` and every call follow the state, so any
        ``LocalTarget`` of the same runs folder and endpoint reaches it.
    capture : bool
        Run each variant with data capture into ``<state>/capture/<variant>/`` (what 05-monitor reads).
    startup_timeout : float
        Seconds a serve process (or the router) may take to answer ``GET /ping``.
    serve_args : list of str
        Extra ``churnkit serve`` options for every variant (e.g. ``["--max-rows", "100"]``).
    """

    name = "local"

    def __init__(self, endpoint: str = "churn", port: int = 8000, config=None, *, host: str = "127.0.0.1",
                 capture: bool = True, startup_timeout: float = 90.0, request_timeout: float = 30.0,
                 serve_args: list[str] | tuple = ()):
        super().__init__(endpoint, config)
        self.port = int(port)
        self.host = host
        self.capture = capture
        self.startup_timeout = startup_timeout
        self.request_timeout = request_timeout
        self.serve_args = list(serve_args)

    # ---- files ---------------------------------------------------------------------------------------
    @property
    def live_port(self) -> int:
        """The endpoint's port from its state (a dead router restarts on it), else the port a new router starts on."""
        state = self.read_state()
        port = state.get("port") or (state.get("router") or {}).get("port")
        return int(port) if port else self.port

    def router_info(self) -> dict:
        """What the running router wrote to ``router.json`` (pid, port, admin_port), or {} when it is not alive."""
        try:
            info = json.loads((self.state_dir / "router.json").read_text())
        except (OSError, ValueError):
            return {}
        return info if _alive(info.get("pid")) and _ours(int(info["pid"])) else {}

    def admin_token(self) -> str:
        """The router's admin token (``admin.token`` in the state folder, mode 0600)."""
        from churnkit.deploy.router import read_token

        return read_token(self.state_dir)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.live_port}"

    def read_state(self) -> dict:
        """The asked-for state (``state.json``): router and variants with ports, pids, weights, versions."""
        path = self.state_dir / "state.json"
        if not path.exists():
            return {"endpoint": self.endpoint, "router": {}, "variants": {}}
        return json.loads(path.read_text())

    def _write_state(self, state: dict) -> None:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        tmp = self.state_dir / "state.json.tmp"
        tmp.write_text(json.dumps(state, indent=2))
        tmp.replace(self.state_dir / "state.json")

    @contextlib.contextmanager
    def _lock(self):
        """One change at a time per endpoint (the notebook and the rollout controller may both act)."""
        import fcntl

        self.state_dir.mkdir(parents=True, exist_ok=True)
        with open(self.state_dir / ".lock", "w") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    # ---- processes -----------------------------------------------------------------------------------
    def _env(self) -> dict:
        env = dict(os.environ)
        env["CHURNKIT_RUNS_DIR"] = str(self.config.runs_dir)
        env.pop("MLFLOW_RUN_ID", None)  # a notebook's run must not be resumed by the server
        if self.config.embedded:
            env.pop("MLFLOW_TRACKING_URI", None)
        else:
            env["MLFLOW_TRACKING_URI"] = self.config.tracking_uri
        return env

    def _spawn(self, name: str, cmd: list[str], output: str | None = None) -> subprocess.Popen:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        with open(self.state_dir / (output or f"{name}.log"), "ab") as log:
            proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    start_new_session=True, close_fds=True, env=self._env(), cwd=str(self.state_dir))
        _CHILDREN[proc.pid] = proc
        (self.state_dir / f"{name}.pid").write_text(str(proc.pid))
        return proc

    def _serve_command(self, release: Release) -> list[str]:
        cmd = [sys.executable, "-m", "churnkit.cli", "serve", "--model", release.uri, "--host", self.host,
               "--port", "0", "--runs-dir", str(self.config.runs_dir)]
        if self.capture:
            cmd += ["--capture-dir", str(self.state_dir / "capture" / release.variant)]
        return cmd + self.serve_args

    def _router_command(self, port: int | None = None) -> list[str]:
        cmd = [sys.executable, "-m", "churnkit.deploy.router", "--state", str(self.state_dir),
               "--port", str(port or self.live_port or "<free port>"), "--host", self.host,
               "--timeout", str(self.request_timeout)]
        if "--max-body-bytes" in self.serve_args[:-1]:  # the router refuses what its variants would refuse
            cmd += ["--max-body-bytes", self.serve_args[self.serve_args.index("--max-body-bytes") + 1]]
        return cmd

    def _log_tail(self, name: str, lines: int = 15) -> str:
        path = self.state_dir / (name if "." in name else f"{name}.log")
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.exists() else ""

    def _start_variant(self, release: Release) -> dict:
        """Start ``churnkit serve`` for ``release`` on a free port; returns its state once /ping answers."""
        log = self.state_dir / f"{release.variant}.log"
        offset = log.stat().st_size if log.exists() else 0
        proc = self._spawn(release.variant, self._serve_command(release))
        deadline = time.monotonic() + self.startup_timeout
        port = None
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                break
            if port is None:
                with open(log, "rb") as fh:
                    fh.seek(offset)
                    found = _READY.search(fh.read().decode(errors="replace"))
                port = int(found.group(1)) if found else None
            if port is not None and self._get(f"http://{self.host}:{port}/ping", timeout=2.0) == 200:
                return {"pid": proc.pid, "port": port, "url": f"http://{self.host}:{port}", "model_uri": release.uri,
                        "model_version": release.version, "weight": 0, "log": str(log)}
            time.sleep(0.1)
        terminate(proc.pid)
        raise DeployTargetError(
            f"churnkit serve for {release.uri!r} ({release.variant}) did not become ready within "
            f"{self.startup_timeout:g} s; its log {str(log)!r} ends with:\n{self._log_tail(release.variant)}"
        )

    def _ensure_router(self, state: dict) -> None:
        """Start the router on the endpoint's port unless it runs (a supervised router is adopted as it is)."""
        port = int(state.get("port") or (state.get("router") or {}).get("port") or self.port or _free_port(self.host))
        state["port"] = port  # the endpoint's port: every later command and a restarted router use it
        info = self.router_info()
        if info and int(info.get("port", 0)) == port and self._admin_status(info) == 200:
            if state.get("router", {}).get("pid") != info["pid"]:
                state["router"] = {"pid": info["pid"], "port": port, "url": f"http://{self.host}:{port}"}
                self._write_state(state)
            return
        if info:  # a router of this endpoint on another port: the state's port wins
            terminate(info.get("pid"))
        url = f"http://{self.host}:{port}"
        if self._get(f"{url}/ping") is not None:
            raise DeployTargetError(
                f"port {port} on {self.host} is taken by another process, and endpoint {self.endpoint!r} listens there "
                f"(its state: {str(self.state_dir / 'state.json')!r}); stop that process, or stop the endpoint "
                "(churnkit endpoint stop) and deploy it again with another --port"
            )
        state["router"] = {}
        self._write_state(state)  # the router loads variants, weights and its port from it
        (self.state_dir / "router.json").unlink(missing_ok=True)
        self.admin_token()
        proc = self._spawn("router", self._router_command(port), output="router.out")
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                break
            info = self.router_info()
            if info.get("pid") == proc.pid and self._admin_status(info) == 200:
                state["router"] = {"pid": proc.pid, "port": port, "url": url}
                self._write_state(state)
                return
            time.sleep(0.05)
        terminate(proc.pid)
        raise DeployTargetError(f"the router of endpoint {self.endpoint!r} did not start on port {port}; "
                                f"its log ends with:\n{self._log_tail('router.out') or self._log_tail('router')}")

    def _revive(self) -> None:
        """Restart a dead router from the state (its port, variants and weights)."""
        if self.router_info():
            return
        with self._lock():
            state = self.read_state()
            if state.get("variants"):
                self._ensure_router(state)

    # ---- HTTP helpers --------------------------------------------------------------------------------
    def _get(self, url: str, timeout: float = 2.0) -> int | None:
        import httpx

        try:
            return httpx.get(url, timeout=timeout).status_code
        except httpx.HTTPError:
            return None

    def _admin_status(self, info: dict) -> int | None:
        import httpx

        try:
            return httpx.get(f"http://127.0.0.1:{info['admin_port']}/-/state", timeout=2.0,
                             headers={"authorization": f"Bearer {self.admin_token()}"}).status_code
        except (httpx.HTTPError, KeyError):
            return None

    def _admin(self, method: str, path: str, body: dict | None = None, timeout: float = 120.0) -> dict:
        """Call the router's admin API (its own 127.0.0.1 port, the token of the state folder)."""
        import httpx

        info = self.router_info()
        where = f"http://127.0.0.1:{info.get('admin_port', '?')}"
        try:
            if not info:
                raise httpx.ConnectError("the router is not running")
            r = httpx.request(method, f"{where}/-/{path}", json=body, timeout=timeout,
                              headers={"authorization": f"Bearer {self.admin_token()}"})
        except httpx.HTTPError as exc:
            raise DeployTargetError(f"the router of endpoint {self.endpoint!r} (admin {where}) did not answer "
                                    f"{method} /-/{path} ({exc}); `churnkit endpoint status --target local` shows it") from exc
        if r.status_code != 200:
            raise DeployTargetError(f"router {method} /-/{path} answered {r.status_code}: {r.text[:300]}")
        return r.json()

    # ---- describe ------------------------------------------------------------------------------------
    def describe(self) -> EndpointState:
        """The live endpoint; a router that died is reported (``details["router"] == "dead"`` and a drift line),
        not restarted: the next command that changes or reads traffic restarts it on the endpoint's port."""
        state = self.read_state()
        router = state.get("router") or {}
        live = None
        if self.router_info():
            with contextlib.suppress(DeployTargetError):
                live = self._admin("GET", "state", timeout=5.0)
        status_router = "running" if live else "dead" if state.get("variants") else "stopped"
        out = EndpointState(self.name, self.endpoint, url=self.url if live else "", details={
            "state_dir": str(self.state_dir), "router_pid": (live or {}).get("pid", router.get("pid")),
            "router": status_router, "port": self.live_port if state.get("variants") else None})
        if status_router == "dead":
            out.drift.append(f"the router of endpoint {self.endpoint!r} (pid {router.get('pid')}) is not running, so "
                             f"port {self.live_port} answers nothing; the next deploy/traffic/rollout command restarts "
                             f"it there with the last weights (or run it under a supervisor: see docs/cloud-engineer.md)")
        for name, v in state.get("variants", {}).items():
            seen = (live or {}).get("variants", {}).get(name, {})
            if not _alive(v.get("pid")):
                status = "dead"
            elif status_router == "dead":
                status = "router down"
            elif seen.get("healthy") is False:
                status = "unhealthy"
            else:
                status = "running" if seen else "not routed"
            weight = int(seen.get("weight", 0)) if live else 0
            out.variants[name] = VariantState(name, str(v.get("model_version", "?")), weight, status, v.get("url", ""))
        for name in (live or {}).get("variants", {}):
            if name not in out.variants:
                seen = live["variants"][name]
                out.variants[name] = VariantState(name, str(seen.get("model_version", "?")), int(seen.get("weight", 0)),
                                                  "unmanaged", seen.get("url", ""))
        return out

    def current_weights(self, live: EndpointState) -> dict[str, int]:
        """The live weights, or the last asked ones while the router is down (it restarts with them)."""
        if live.details.get("router") == "running":
            return live.weights
        return {n: int(v.get("weight", 0)) for n, v in self.read_state().get("variants", {}).items()}

    def telemetry(self, variants: list[str], since: float, until: float | None = None) -> dict[str, Window]:
        """Per-variant requests, errors, timeouts, latencies and scores since ``since`` (the router's ring
        buffer, which sees every request as the client does: timeouts and connection failures included)."""
        self._revive()  # a router that died mid-rollout comes back on the endpoint's port
        query = f"stats?since={float(since)!r}" + ("" if until is None else f"&until={float(until)!r}")
        raw = self._admin("GET", query, timeout=10.0) or {}
        source = f"local router ring buffer ({self.url})"
        return {name: Window.from_dict(w, source) for name, w in (raw.get("variants") or {}).items()
                if name in variants}

    def captured_inputs(self, variants: list[str], since: float):
        return captured_in_folders(self.state_dir / "capture", variants, since)

    def captured_scores(self, variant: str, since: float, limit: int = 200):
        return scored_in_folder(self.state_dir / "capture" / variant, since, limit)

    # ---- changes -------------------------------------------------------------------------------------
    def _apply_deploy(self, release, asked, before):
        with self._lock():
            state = self.read_state()
            state["endpoint"] = self.endpoint
            self._ensure_router(state)
            v = state["variants"].get(release.variant)
            if v is None or not _alive(v.get("pid")):
                if v is not None:
                    terminate(v.get("pid"))
                v = self._start_variant(release)
                state["variants"][release.variant] = v
                self._write_state(state)
            known = self._admin("GET", "state")["variants"].get(release.variant, {})
            if known.get("url") != v["url"]:
                self._admin("PUT", f"variants/{release.variant}", {"url": v["url"], "model_version": release.version,
                                                                   "weight": 0})
            self._set_weights(state, asked)

    def _set_weights(self, state: dict, asked: dict[str, int]) -> None:
        routed = {n: w for n, w in asked.items() if n in state["variants"]}
        self._admin("PUT", "weights", {"weights": routed})
        for n, v in state["variants"].items():
            v["weight"] = int(routed.get(n, 0))
        self._write_state(state)

    def _apply_traffic(self, asked, before):
        with self._lock():
            state = self.read_state()
            self._ensure_router(state)
            self._set_weights(state, asked)

    def _apply_remove(self, variant, asked, before):
        with self._lock():
            state = self.read_state()
            self._ensure_router(state)
            self._set_weights(state, {**asked, variant: 0})  # new requests go elsewhere; in-flight ones finish
            self._admin("DELETE", f"variants/{variant}")     # returns when the variant has nothing in flight
            v = state["variants"].pop(variant, {})
            terminate(v.get("pid"))
            self._write_state(state)

    def stop(self) -> EndpointState:
        """Stop the router and every serve process of this endpoint (idempotent); logs and capture stay."""
        with self._lock():
            state = self.read_state()
            pids = [v.get("pid") for v in state.get("variants", {}).values()] + [(state.get("router") or {}).get("pid")]
            pids += [int(p.read_text()) for p in self.state_dir.glob("*.pid") if p.read_text().strip().isdigit()]
            pids.append(self.router_info().get("pid"))  # a router started by a supervisor too
            for pid in dict.fromkeys(p for p in pids if p):
                terminate(pid)
            for p in self.state_dir.glob("*.pid"):
                p.unlink(missing_ok=True)
            (self.state_dir / "state.json").unlink(missing_ok=True)
            (self.state_dir / "router.json").unlink(missing_ok=True)
        return self.describe()

    # ---- plans ---------------------------------------------------------------------------------------
    def _plan_deploy(self, release, asked, live):
        reqs = []
        if live.details.get("router") != "running":
            reqs.append(request("process", "start", {"name": "router", "command": self._router_command(),
                                                     "listen": self.url}))
        if release.variant not in live.variants or live.variants[release.variant].status == "dead":
            reqs.append(request("process", "start", {"name": release.variant, "command": self._serve_command(release),
                                                     "listen": f"http://{self.host}:<free port>"}))
            reqs.append(request("router", "PUT /-/variants/" + release.variant,
                                {"url": f"http://{self.host}:<free port>", "model_version": release.version, "weight": 0}))
        return reqs + self._plan_traffic(asked, live)

    def _plan_traffic(self, asked, live):
        return [request("router", "PUT /-/weights", {"weights": asked})]

    def _plan_remove(self, variant, asked, live):
        return [*self._plan_traffic({**asked, variant: 0}, live), request("router", f"DELETE /-/variants/{variant}", {}),
                request("process", "terminate", {"name": variant, "pid": self.read_state()["variants"].get(variant, {}).get("pid")})]

    def _plan_stop(self, live):
        state = self.read_state()
        return [request("process", "terminate", {"name": n, "pid": v.get("pid")}) for n, v in state["variants"].items()] + \
            ([request("process", "terminate", {"name": "router", "pid": state["router"].get("pid")})]
             if state.get("router") else [])
