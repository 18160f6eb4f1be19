"""Local target: real ``churnkit serve`` processes behind the real router, real HTTP on 127.0.0.1.

One endpoint (two versions) is shared by the module: weights move 100/0 → 50/50 → 0/100 under
concurrent client requests, a serving variant is removed (drained) under load, a variant that refuses
connections is retried elsewhere, and the clients see no failed request. Every process is stopped by the fixture, even when a test fails.
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import threading
import time

import pytest
from conftest import free_port
from deploy_support import registry_store


@pytest.fixture(scope="module")
def rows():
    from churnkit.data import synth_month

    return synth_month(40, 1, 7).drop(columns=["churn"]).to_dict(orient="records")


@pytest.fixture(scope="module")
def local(tmp_path_factory):
    from churnkit.config import load_config
    from churnkit.deploy import get_target

    saved = os.environ.pop("MLFLOW_TRACKING_URI", None)
    config = load_config(registry_store(tmp_path_factory.mktemp("local")))
    target = get_target("local", config=config, port=free_port(), startup_timeout=120)
    try:
        yield target
    finally:
        target.stop()
        for pid_file in target.state_dir.glob("*.pid"):  # belt and braces: nothing may outlive the tests
            try:
                os.killpg(int(pid_file.read_text()), signal.SIGKILL)
            except (ProcessLookupError, ValueError, PermissionError):
                pass
        if saved is not None:
            os.environ["MLFLOW_TRACKING_URI"] = saved


class Load:
    """A bounded number of client threads posting one row per request; results carry their send time."""

    def __init__(self, url: str, rows: list[dict], threads: int = 4):
        self.url, self.rows, self.threads = url, rows, threads
        self.results: list[tuple[float, int, str]] = []  # (sent at, status, variant)
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.workers = [threading.Thread(target=self._run, args=(i,), daemon=True) for i in range(threads)]

    def _run(self, i: int) -> None:
        import httpx

        with httpx.Client(timeout=30) as client:
            n = i
            while not self.stop.is_set():
                sent = time.time()
                try:
                    r = client.post(self.url + "/invocations", json={"instances": [self.rows[n % len(self.rows)]]})
                    out = (sent, r.status_code, r.headers.get("x-churnkit-variant", ""))
                except Exception as exc:  # a failed request is a result too
                    out = (sent, 0, type(exc).__name__)
                with self.lock:
                    self.results.append(out)
                n += self.threads

    def __enter__(self):
        for w in self.workers:
            w.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        for w in self.workers:
            w.join(timeout=60)

    def wait_for(self, count: int, since: float, timeout: float = 60.0) -> list[tuple[float, int, str]]:
        deadline = time.time() + timeout
        while time.time() < deadline:
            got = self.between(since, time.time())
            if len(got) >= count:
                return got
            time.sleep(0.05)
        raise AssertionError(f"only {len(self.between(since, time.time()))} requests in {timeout} s")

    def between(self, start: float, end: float) -> list[tuple[float, int, str]]:
        with self.lock:
            return [r for r in self.results if start <= r[0] < end]


def admin(local, method: str, path: str, **kw):
    """A request to the router's admin API: its own 127.0.0.1 port, the token from the state folder."""
    import httpx

    port = local.router_info()["admin_port"]
    return httpx.request(method, f"http://127.0.0.1:{port}/-/{path}",
                         headers={"authorization": f"Bearer {local.admin_token()}"}, **kw)


def share(results, variant: str) -> float:
    return sum(1 for r in results if r[2] == variant) / len(results)


def test_plan_lists_processes_and_ports_without_starting_them(local):
    reqs = local.plan("deploy", model_uri="models:/churn@champion")
    assert [(r["api"], r["operation"]) for r in reqs] == [("process", "start"), ("process", "start"),
                                                          ("router", "PUT /-/variants/v1"), ("router", "PUT /-/weights")]
    assert reqs[0]["request"]["listen"] == local.url
    assert reqs[1]["request"]["command"][2:5] == ["churnkit.cli", "serve", "--model"]
    assert reqs[-1]["request"] == {"weights": {"v1": 100}}
    assert not (local.state_dir / "state.json").exists()
    assert local.describe().variants == {}


def test_weights_shift_under_load_without_failed_requests(local, rows):
    state = local.deploy("models:/churn@champion")
    assert state.weights == {"v1": 100} and state.drift == [] and state.url == local.url
    state = local.deploy("models:/churn@challenger", weight=0)
    assert state.weights == {"v1": 100, "v2": 0} and state.drift == []
    assert {n: v.model_version for n, v in state.variants.items()} == {"v1": "1", "v2": "2"}
    assert {v.status for v in state.variants.values()} == {"running"}

    with Load(local.url, rows) as load:
        t0 = time.time()
        phase_a = load.wait_for(40, t0)
        t1 = time.time()
        assert local.set_traffic({"v1": 50, "v2": 50}).weights == {"v1": 50, "v2": 50}
        t2 = time.time()
        phase_b = load.wait_for(150, t2)
        t3 = time.time()
        state = local.set_traffic({"v1": 0, "v2": 100})
        t4 = time.time()
        assert state.weights == {"v1": 0, "v2": 100} and state.drift == []
        phase_c = load.wait_for(40, t4)
        window = local.telemetry(["v1", "v2"], t2)
        bounded = local.telemetry(["v1", "v2"], t2, t3)  # the 50/50 phase alone
    failed = [r for r in load.results if r[1] != 200]
    assert failed == [] and len(load.results) >= 230
    assert share(load.between(t0, t1), "v1") == 1.0 and len(phase_a) >= 40
    assert 0.3 <= share(load.between(t2, t3), "v2") <= 0.7 and len(phase_b) >= 150
    assert share(load.between(t4, time.time()), "v2") == 1.0 and len(phase_c) >= 40

    v = window
    assert set(v) == {"v1", "v2"}
    assert v["v1"].requests > 40 and v["v2"].requests > 40 and v["v1"].errors == v["v2"].errors == 0
    assert len(v["v2"].latencies_ms) == v["v2"].requests and len(v["v2"].scores) == v["v2"].requests
    assert bounded["v2"].requests <= v["v2"].requests - 40  # phase c's requests are after ``until``
    assert bounded["v1"].requests + bounded["v2"].requests >= 150

    capture = list((local.state_dir / "capture" / "v2").glob("capture-*.jsonl"))
    assert capture and json.loads(capture[0].read_text().splitlines()[0])["model_version"] == "2"


def test_remove_drains_a_live_variant_under_load(local, rows):
    local.set_traffic({"v1": 50, "v2": 50})
    pid = local.read_state()["variants"]["v1"]["pid"]
    with Load(local.url, rows) as load:
        load.wait_for(40, time.time())
        state = local.remove("v1")  # weight 0, wait for its in-flight requests, then terminate
        done = time.time()
        load.wait_for(40, done)
    from churnkit.deploy.local import _alive

    assert state.weights == {"v2": 100} and state.drift == []
    assert [r for r in load.results if r[1] != 200] == []
    assert {r[2] for r in load.between(done, time.time())} == {"v2"}
    assert not _alive(pid) and "v1" not in local.read_state()["variants"]


def test_a_failing_variant_is_retried_elsewhere_and_counted(local, rows):

    ghost = f"http://127.0.0.1:{free_port()}"  # nothing listens there: like a crashed process
    assert admin(local, "PUT", "variants/ghost", json={"url": ghost, "model_version": "9"}).status_code == 200
    assert admin(local, "PUT", "weights", json={"weights": {"ghost": 50, "v2": 50}}).status_code == 200
    with Load(local.url, rows) as load:
        since = time.time()
        load.wait_for(60, since)
        window = local.telemetry(["ghost", "v2"], since)
    assert [r for r in load.results if r[1] != 200] == [] and {r[2] for r in load.results} == {"v2"}
    g = window["ghost"]
    assert g.errors == g.requests > 10 and g.scores == () and g.source.startswith("local router ring buffer")
    assert window["v2"].errors == 0
    assert local.describe().variants["ghost"].status == "unmanaged"
    assert local.set_traffic({"v2": 100}).weights == {"v2": 100, "ghost": 0}
    assert admin(local, "DELETE", "variants/ghost").json() == {"deleted": "ghost", "busy": []}


def test_router_own_routes_and_forwarded_version(local):
    import httpx

    from churnkit.deploy import get_target

    other = get_target("local", config=local.config)  # default port 8000: the running router's port wins
    assert other.url == local.url and other.describe().weights == local.describe().weights

    assert httpx.get(local.url + "/ping").status_code == 200
    assert httpx.get(local.url + "/version").json()["version"] == "2"
    metrics = httpx.get(local.url + "/metrics").text
    assert 'churnkit_router_variant_weight{variant="v2"} 100' in metrics
    bad = admin(local, "PUT", "weights", json={"weights": {"v2": 60}})
    assert bad.status_code == 422 and "summing to 100" in bad.json()["error"]
    bad = admin(local, "PUT", "variants/v9", json={"url": "http://127.0.0.1:1", "weight": "lots"})
    assert bad.status_code == 422 and "'lots'" in bad.json()["error"]
    assert "v9" not in admin(local, "GET", "state").json()["variants"]
    r = httpx.post(local.url + "/invocations", json={"instances": [{"tenure": "abc"}]})
    assert 400 <= r.status_code < 500  # a client mistake passes through, never retried into a 5xx


def test_admin_api_is_on_its_own_port_with_a_token_and_validates_weights(local):
    import httpx

    public = httpx.put(local.url + "/-/variants/thief", json={"url": "http://127.0.0.1:1", "weight": 0})
    assert public.status_code == 404  # the public port knows no admin path
    assert httpx.get(local.url + "/-/state").status_code == 404 and httpx.get(local.url + "/-/stats").status_code == 404
    token_file = local.state_dir / "admin.token"
    assert token_file.stat().st_mode & 0o777 == 0o600
    port = local.router_info()["admin_port"]
    assert port != local.live_port
    assert httpx.get(f"http://127.0.0.1:{port}/-/state").status_code == 401
    assert httpx.get(f"http://127.0.0.1:{port}/-/state", headers={"authorization": "Bearer wrong"}).status_code == 401
    assert admin(local, "GET", "invocations").status_code == 404  # the admin port forwards nothing
    # weights: integers summing to 100 on known variants, whichever route sets them
    assert admin(local, "PUT", "weights", json={"weights": {"v2": 200}}).status_code == 422
    assert admin(local, "PUT", "weights", json={"weights": {"v2": 50, "nope": 50}}).status_code == 422
    doubled = admin(local, "PUT", "variants/v9", json={"url": "http://127.0.0.1:1", "weight": 100})
    assert doubled.status_code == 422 and "sum to 200" in doubled.json()["error"]
    bad_url = admin(local, "PUT", "variants/v9", json={"url": "file:///etc/passwd", "weight": 0})
    assert bad_url.status_code == 422 and "not an http" in bad_url.json()["error"]
    assert admin(local, "GET", "state").json()["weights"] == {"v2": 100}


def test_router_refuses_bodies_above_serves_limit_before_reading_them(local, rows):
    import httpx

    from churnkit.serve.contracts import DEFAULT_MAX_BODY_BYTES

    state = admin(local, "GET", "state").json()
    assert state["max_body_bytes"] == DEFAULT_MAX_BODY_BYTES
    before = admin(local, "GET", "state").json()["variants"]["v2"]["requests"]
    big = b'{"instances": [' + b" " * (DEFAULT_MAX_BODY_BYTES + 10) + b"]}"
    r = httpx.post(local.url + "/invocations", content=big, headers={"content-type": "application/json"}, timeout=60)
    assert r.status_code == 413 and f"max_body_bytes {DEFAULT_MAX_BODY_BYTES}" in r.json()["details"][0]
    # http.client is still sending when the answer comes: the router's lingering close lets it read the 413
    port = int(local.url.rsplit(":", 1)[1])
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request("POST", "/invocations", body=b" " * (12 * 1024 * 1024), headers={"content-type": "application/json"})
        answer = conn.getresponse()
        assert answer.status == 413
        assert f"max_body_bytes {DEFAULT_MAX_BODY_BYTES}" in json.loads(answer.read())["details"][0]
    finally:
        conn.close()

    def chunks():  # no Content-Length: refused while streaming, after the limit, not after the whole body
        yield b'{"instances": ['
        for _ in range(64):
            yield b" " * (1024 * 1024)

    r = httpx.post(local.url + "/invocations", content=chunks(), headers={"content-type": "application/json"}, timeout=60)
    assert r.status_code == 413
    assert admin(local, "GET", "state").json()["variants"]["v2"]["requests"] == before  # nothing was forwarded
    assert httpx.post(local.url + "/invocations", json={"instances": rows[:3]}).status_code == 200


def test_router_log_rotates_and_has_no_line_per_request(tmp_path):
    """A router on its own: a dead variant makes it warn on every request; the log rotates at its size."""
    import subprocess
    import sys

    import httpx

    state = tmp_path / "ep"
    state.mkdir()
    ghost = f"http://127.0.0.1:{free_port()}"
    (state / "state.json").write_text(json.dumps({"port": free_port(), "variants": {
        "ghost": {"url": ghost, "model_version": "1", "weight": 100}}}))
    proc = subprocess.Popen([sys.executable, "-m", "churnkit.deploy.router", "--state", str(state),
                             "--log-max-bytes", "4000"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 60
        while not (state / "router.json").exists() and time.time() < deadline:
            time.sleep(0.05)
        url = f"http://127.0.0.1:{json.loads((state / 'state.json').read_text())['port']}"
        with httpx.Client(timeout=10) as c:
            while True:
                try:
                    c.get(url + "/metrics")
                    break
                except httpx.HTTPError:
                    time.sleep(0.05)
            for _ in range(150):
                assert c.post(url + "/invocations", json={"instances": []}).status_code == 503
            for _ in range(50):
                c.get(url + "/metrics")
    finally:
        proc.terminate()
        code = proc.wait(15)
    # ended by the SIGTERM after a graceful shutdown, not an error exit: systemd's Restart=on-failure leaves it down
    assert code == -signal.SIGTERM
    logs = sorted(p.name for p in state.glob("router.log*"))
    assert logs == ["router.log", "router.log.1", "router.log.2", "router.log.3"], logs  # three backups kept
    assert all((state / name).stat().st_size <= 4000 for name in logs)
    text = "".join((state / name).read_text() for name in logs)
    assert "variant ghost failed" in text and "HTTP Request" not in text and "/metrics" not in text


def test_router_closes_slow_header_connections(tmp_path):
    import socket
    import subprocess
    import sys

    import httpx

    state = tmp_path / "ep"
    state.mkdir()
    port = free_port()
    (state / "state.json").write_text(json.dumps({"port": port, "variants": {}}))
    proc = subprocess.Popen([sys.executable, "-m", "churnkit.deploy.router", "--state", str(state), "--header-timeout",
                             "1"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    socks = []
    try:
        deadline = time.time() + 60
        while time.time() < deadline:
            try:
                httpx.get(f"http://127.0.0.1:{port}/metrics")
                break
            except httpx.HTTPError:
                time.sleep(0.05)
        for _ in range(10):
            s = socket.create_connection(("127.0.0.1", port))
            s.sendall(b"GET /ping HTTP/1.1\r\nHost: x\r\n")
            s.settimeout(0.01)
            socks.append(s)
        open_ = list(socks)
        deadline = time.time() + 20  # the deadline is 1 s; nothing stays open for 20
        while open_ and time.time() < deadline:
            for s in list(open_):
                try:
                    s.send(b"X")
                    if s.recv(4096) == b"":
                        open_.remove(s)
                except (BlockingIOError, TimeoutError):
                    pass
                except OSError:
                    open_.remove(s)
            time.sleep(0.25)
        assert open_ == [], f"{len(open_)} of 10 slow-header connections to the router still open"
    finally:
        for s in socks:
            s.close()
        proc.terminate()
        proc.wait(15)


@pytest.mark.parametrize("name", ["../../escape", "Churn", "churn_1", "-churn", "churn-", "a" * 64, ""])
def test_endpoint_names_are_checked_at_every_entry(name, runs_config):
    from click.testing import CliRunner

    from churnkit import rollout as ro
    from churnkit.cli import main
    from churnkit.deploy import get_target
    from churnkit.exceptions import DeployTargetError

    with pytest.raises(DeployTargetError, match="lowercase letters, digits and '-'") as info:
        get_target("local", endpoint=name, config=runs_config)
    assert repr(name) in str(info.value)
    with pytest.raises(DeployTargetError, match="is not valid"):
        ro.rollout("local", endpoint=name, config=runs_config)
    for args in (["endpoint", "status", "--target", "local"], ["rollout", "--target", "local"],
                 ["deploy", "--target", "local", "--model", "models:/churn@champion"]):
        result = CliRunner().invoke(main, [*args, "--endpoint", name, "--runs-dir", str(runs_config.runs_dir)])
        assert result.exit_code == 2 and "is not valid" in result.output, (args, result.output)
    assert not runs_config.runs_dir.exists() or not any(runs_config.runs_dir.rglob("*.lock"))
    assert not (runs_config.runs_dir.parent / "escape").exists()
    assert get_target("local", endpoint="churn-eu-2", config=runs_config).endpoint == "churn-eu-2"
    # CHURNKIT_ENDPOINT names the endpoint when --endpoint is not given (Terraform's churnkit_env sets it)
    status = CliRunner().invoke(main, ["endpoint", "status", "--target", "local", "--json", "--runs-dir",
                                       str(runs_config.runs_dir)], env={"CHURNKIT_ENDPOINT": "churn-x7k2"})
    assert status.exit_code == 0 and json.loads(status.stdout)["endpoint"] == "churn-x7k2", status.output
    if name:  # an empty variable counts as unset
        bad = CliRunner().invoke(main, ["rollout", "--target", "local", "--runs-dir", str(runs_config.runs_dir)],
                                 env={"CHURNKIT_ENDPOINT": name})
        assert bad.exit_code == 2 and "is not valid" in bad.output


def test_a_crashed_router_is_restarted_with_the_last_weights(local, rows):
    import httpx

    from churnkit.deploy.local import _alive

    old = local.read_state()["router"]["pid"]
    os.killpg(old, signal.SIGKILL)
    deadline = time.time() + 10
    while _alive(old) and time.time() < deadline:
        time.sleep(0.05)
    down = local.describe()
    assert down.details["router"] == "dead" and down.url == "" and down.weights == {"v2": 0}
    assert local.current_weights(down) == {"v2": 100}  # what a new variant would be added to
    state = local.set_traffic({"v2": 100})
    assert state.weights == {"v2": 100} and state.drift == [] and local.read_state()["router"]["pid"] != old
    assert httpx.post(local.url + "/invocations", json={"instances": rows[:2]}).status_code == 200


def test_dead_process_is_reported_then_stop_ends_everything_idempotently(local):
    from churnkit.deploy.local import _alive

    state = local.read_state()
    pids = [state["router"]["pid"]] + [v["pid"] for v in state["variants"].values()]
    assert all(_alive(p) for p in pids)
    os.killpg(state["variants"]["v2"]["pid"], signal.SIGKILL)
    deadline = time.time() + 10
    while _alive(state["variants"]["v2"]["pid"]) and time.time() < deadline:
        time.sleep(0.05)
    assert local.describe().variants["v2"].status == "dead"
    assert local.stop().variants == {}
    assert not any(_alive(p) for p in pids)
    assert local.stop().variants == {} and local.describe().details["router"] == "stopped"
    # a supervisor starting the router again after the stop: it exits 0 at once and says why
    import subprocess
    import sys

    again = subprocess.run([sys.executable, "-m", "churnkit.deploy.router", "--state", str(local.state_dir)],
                           capture_output=True, text=True, timeout=60)
    assert again.returncode == 0 and "the endpoint is stopped or was never deployed" in again.stderr
    assert local.describe().details["router"] == "stopped"


def test_records_stats_and_scores():
    from churnkit.deploy.router import Records, _scores

    rec = Records(window=600)
    rec.add("v1", "ok", 2.0, (0.1, 0.2))
    rec.add("v1", "error", 1.0)
    rec.add("v2", "timeout", 30000.0)
    stats = rec.stats(0)["variants"]
    assert stats["v1"] == {"requests": 2, "errors": 1, "timeouts": 0, "client_errors": 0, "latencies_ms": [2.0],
                           "scores": [0.1, 0.2]}
    assert stats["v2"]["timeouts"] == 1 and stats["v2"]["latencies_ms"] == []
    rec.add("v3", "client_error", 3.0)  # a 4xx: the variant answered, but with no prediction
    assert rec.stats(0)["variants"]["v3"] == {"requests": 1, "errors": 0, "timeouts": 0, "client_errors": 1,
                                              "latencies_ms": [], "scores": []}
    assert rec.stats(time.time() + 1)["variants"] == {}
    assert rec.stats(0, until=time.time() - 60)["variants"] == {}  # everything was recorded after ``until``
    assert rec.stats(0, until=time.time() + 1)["variants"]["v1"]["requests"] == 2
    assert _scores(b'{"predictions": [{"churn_probability": 0.3, "churn": false}]}') == (0.3,)
    assert _scores(b'[{"churn_probability": 0.7}]') == (0.7,) and _scores(b"not json") == ()
