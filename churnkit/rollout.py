"""Progressive rollout: shift traffic from ``champion`` to ``challenger`` step by step, judge, promote or roll back.

Three layers, top to bottom:

* **Decisions** (pure): :func:`plan_steps` turns a strategy into traffic weights; :func:`judge_step`
  compares the challenger's :class:`Window` with the champion's on the same time window (error rate,
  p99 latency ratio, prediction PSI) and returns a :class:`Verdict`. They take recorded windows, so
  they are unit-tested on data and nothing else.
* **Record**: :class:`RolloutRecord` is the decision record of DESIGN §7, logged to MLflow and kept in
  the model version's history.
* **Controller**: :func:`rollout` and :func:`rollback` drive any :class:`~churnkit.deploy.base.DeployTarget`
  (``set_traffic``/``deploy``/``remove``), hold a per-endpoint lock and persist their state in
  ``<runs_dir>/rollout/<endpoint>.json`` so a rerun after a crash finds the live weights and either
  rolls back (the default) or resumes.

``failure_threshold`` is the number of failed checks that ends a rollout, counted over the whole
rollout: with the default 1, the first failed check rolls back; with 3, two failed checks (in any
steps) are tolerated and the third rolls back. A step whose checks fail while the count stays below
the threshold is recorded with ``ok: false`` and the rollout goes on.
"""

from __future__ import annotations

import json
import math
import os
import socket
import sys
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from churnkit.config import ALIAS_CHALLENGER, ALIAS_CHAMPION, ALIAS_PREVIOUS, DEFAULT_MODEL_NAME, Config, load_config
from churnkit.exceptions import ParameterError, RolloutError, RolloutLockedError

STRATEGIES = ("canary", "linear")
CANARY_STEPS = (10, 100)
LINEAR_STEPS = (25, 50, 75, 100)
#: PSI of two samples of n scores each is biased upwards by about (bins - 1) * 2 / n; with 10 bins and
#: 200 scores a side that noise is below 0.1, well under the default max_prediction_psi of 0.2.
MIN_PSI_SCORES = 200
DECISIONS = ("promoted", "rolled_back", "none")
LIVE_STATUSES = ("ready", "running", "inservice", "succeeded", "live", "deployed")


def utcnow() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


# --------------------------------------------------------------------------------------------------
# Plans
# --------------------------------------------------------------------------------------------------

def plan_steps(strategy: str = "canary", steps: Sequence[int] | str = ()) -> list[int]:
    """The challenger's traffic weight at each step; the last step is always 100.

    Parameters
    ----------
    strategy : {"canary", "linear"}
        ``canary``: one small step, bake, then all (10 → 100). ``linear``: equal steps (25, 50, 75, 100).
    steps : list of int or "10,50,100", optional
        Explicit weights; they win over the strategy's. Strictly increasing, 1..100, ending with 100.

    Raises
    ------
    ParameterError
        Unknown strategy, or weights that are not strictly increasing integers from 1 to 100 ending at 100.
    """
    if strategy not in STRATEGIES:
        raise ParameterError(f"unknown rollout strategy {strategy!r}; use one of {STRATEGIES!r} or pass steps",
                             name="strategy", valid=list(STRATEGIES))
    if isinstance(steps, str):
        try:
            steps = [int(s) for s in steps.replace(" ", "").split(",") if s]
        except ValueError:
            raise ParameterError(f"steps {steps!r} are not comma-separated integers; e.g. 10,50,100", name="steps") from None
    if not steps:
        return list(CANARY_STEPS if strategy == "canary" else LINEAR_STEPS)
    out = []
    for w in steps:
        if isinstance(w, bool) or not isinstance(w, (int, float, np.integer)) or int(w) != w or not 1 <= w <= 100:
            raise ParameterError(f"step weight {w!r} is not an integer from 1 to 100; e.g. steps 10,50,100", name="steps")
        out.append(int(w))
    if any(b <= a for a, b in zip(out, out[1:])):
        raise ParameterError(f"steps {out!r} are not strictly increasing; e.g. 10,50,100", name="steps")
    if out[-1] != 100:
        raise ParameterError(f"steps {out!r} end at {out[-1]}%, not 100%; add 100 as the last step", name="steps")
    return out


# --------------------------------------------------------------------------------------------------
# Windows and checks (pure)
# --------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Window:
    """One variant's traffic over a time window, as the target recorded it.

    ``errors`` counts 5xx answers and connection failures, ``timeouts`` requests that timed out;
    ``latencies_ms`` and ``scores`` (churn probabilities, one per scored row) come from the
    successful requests.
    """

    requests: int = 0
    errors: int = 0
    timeouts: int = 0
    latencies_ms: tuple[float, ...] = ()
    scores: tuple[float, ...] = ()

    @classmethod
    def from_dict(cls, d: dict | None) -> "Window":
        d = d or {}
        return cls(int(d.get("requests", 0)), int(d.get("errors", 0)), int(d.get("timeouts", 0)),
                   tuple(float(x) for x in d.get("latencies_ms", ())), tuple(float(x) for x in d.get("scores", ())))

    @property
    def failures(self) -> int:
        return self.errors + self.timeouts

    @property
    def error_rate(self) -> float:
        return self.failures / self.requests if self.requests else 0.0

    @property
    def p99_ms(self) -> float | None:
        return p99(self.latencies_ms)

    def to_dict(self) -> dict:
        return {"requests": self.requests, "errors": self.errors, "timeouts": self.timeouts,
                "latencies_ms": list(self.latencies_ms), "scores": list(self.scores)}


def p99(values: Sequence[float]) -> float | None:
    """The 99th percentile (None for no values)."""
    return float(np.percentile(np.asarray(values, dtype=float), 99)) if len(values) else None


@dataclass(frozen=True)
class Thresholds:
    """What a step must satisfy, with the documented defaults.

    Parameters
    ----------
    max_error_rate : float
        The challenger's share of failed requests (5xx, timeouts, connection errors) may not exceed
        this *and* the champion's share on the same window (an outage of both is not the challenger's).
    max_p99_ratio : float
        Challenger p99 latency / champion p99 latency on the same window.
    max_prediction_psi : float
        PSI of the challenger's scores against the champion's (10 bins on the champion's deciles).
    failure_threshold : int
        Failed checks, counted over the whole rollout, that end it with a rollback (1 = the first).
    min_requests : int
        Challenger requests a step needs before its verdict; the bake is extended (up to its cap).
    p99_slack_ms : float
        A p99 difference below this many milliseconds never fails (a ratio of two tiny numbers is noise).
    min_scores : int
        Scores a side needs before the PSI check counts (see ``MIN_PSI_SCORES``).
    """

    max_error_rate: float = 0.01
    max_p99_ratio: float = 1.5
    max_prediction_psi: float = 0.2
    failure_threshold: int = 1
    min_requests: int = 50
    p99_slack_ms: float = 10.0
    min_scores: int = MIN_PSI_SCORES

    def __post_init__(self):
        for name in ("max_error_rate", "max_p99_ratio", "max_prediction_psi", "p99_slack_ms"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
                raise ParameterError(f"{name} must be a non-negative number, got {v!r}", name=name)
        if not 0 <= self.max_error_rate <= 1:
            raise ParameterError(f"max_error_rate is a share from 0 to 1, got {self.max_error_rate!r}; e.g. 0.01 for 1 %",
                                 name="max_error_rate")
        for name in ("failure_threshold", "min_requests", "min_scores"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < (1 if name == "failure_threshold" else 0):
                raise ParameterError(f"{name} must be an integer of at least "
                                     f"{1 if name == 'failure_threshold' else 0}, got {v!r}", name=name)

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Check:
    """One comparison of the challenger with the champion: its value, its limit, and whether it passed."""

    name: str
    value: float | None
    limit: float
    ok: bool
    detail: str

    def to_dict(self) -> dict:
        return asdict(self)


def psi(reference: Sequence[float], current: Sequence[float], bins: int = 10) -> float:
    """Population stability index of ``current`` against ``reference`` (the monitor's: reference deciles, 1e-4 floor)."""
    from churnkit._drift import counts_in_bins, population_stability_index, quantile_edges

    ref = np.sort(np.asarray(reference, dtype=float))
    cur = np.sort(np.asarray(current, dtype=float))
    edges = quantile_edges(ref, bins)
    return population_stability_index(counts_in_bins(ref, edges), counts_in_bins(cur, edges))


def check_error_rate(champion: Window, challenger: Window, max_error_rate: float) -> Check:
    """Fails when the challenger's failed share exceeds ``max_error_rate`` and the champion's share."""
    rate, base = challenger.error_rate, champion.error_rate
    ok = not (rate > max_error_rate and rate > base)
    detail = (f"error rate {rate:.2%} ({challenger.failures}/{challenger.requests}) vs champion {base:.2%}, "
              f"limit {max_error_rate:.2%}")
    return Check("error_rate", rate, max_error_rate, ok, detail)


def check_p99(champion: Window, challenger: Window, max_p99_ratio: float, slack_ms: float = 10.0) -> Check:
    """Fails when challenger p99 / champion p99 exceeds ``max_p99_ratio`` by more than ``slack_ms``."""
    ch, cp = challenger.p99_ms, champion.p99_ms
    if ch is None or cp is None:
        return Check("p99_ratio", None, max_p99_ratio, True, "p99 not comparable: a variant has no successful requests")
    ratio = ch / cp if cp > 0 else math.inf
    ok = ratio <= max_p99_ratio or ch - cp <= slack_ms
    detail = f"p99 {ch:.1f} ms vs champion {cp:.1f} ms (ratio {ratio:.2f}, limit {max_p99_ratio})"
    return Check("p99_ratio", float(ratio), max_p99_ratio, ok, detail)


def check_prediction_psi(champion: Window, challenger: Window, max_psi: float, min_scores: int = MIN_PSI_SCORES) -> Check:
    """Fails when the PSI of the challenger's scores against the champion's exceeds ``max_psi``.

    Not judged (ok, value None) while either side has fewer than ``min_scores`` scores.
    """
    n_ch, n_cp = len(challenger.scores), len(champion.scores)
    if min(n_ch, n_cp) < max(min_scores, 1):
        return Check("prediction_psi", None, max_psi, True,
                     f"prediction PSI not judged: {n_ch} challenger and {n_cp} champion scores (need {min_scores} each)")
    value = psi(champion.scores, challenger.scores)
    ok = value <= max_psi
    return Check("prediction_psi", value, max_psi, ok, f"prediction PSI {value:.3f} (limit {max_psi})")


def check_live(status: str) -> Check:
    """Fails when the challenger's variant is not serving (a crashed process is a breach, not an outage)."""
    ok = str(status).lower() in LIVE_STATUSES
    return Check("challenger_live", 1.0 if ok else 0.0, 1.0, ok, f"challenger variant status {status!r}")


@dataclass(frozen=True)
class Verdict:
    """A step's checks and whether there was enough traffic to judge it."""

    checks: tuple[Check, ...]
    enough: bool
    note: str = ""

    @property
    def failed(self) -> list[Check]:
        return [c for c in self.checks if not c.ok]

    @property
    def ok(self) -> bool:
        return self.enough and not self.failed

    @property
    def reason(self) -> str:
        if self.failed:
            return "; ".join(c.detail for c in self.failed)
        return self.note or "all checks passed"

    def check(self, name: str) -> Check | None:
        return next((c for c in self.checks if c.name == name), None)


def enough_traffic(champion: Window, challenger: Window, thresholds: Thresholds) -> bool:
    """True when both variants saw at least ``min_requests`` requests (a step may be judged)."""
    return challenger.requests >= thresholds.min_requests and champion.requests >= thresholds.min_requests


def judge_step(champion: Window, challenger: Window, thresholds: Thresholds = Thresholds(),
               challenger_status: str = "ready") -> Verdict:
    """Compare the challenger with the champion on the same window; every check is reported.

    ``enough`` is False when either side saw fewer than ``min_requests`` requests: the caller extends
    the bake. A challenger that is not live fails at once, whatever the traffic.
    """
    checks = [check_live(challenger_status)]
    enough = enough_traffic(champion, challenger, thresholds)
    if enough:
        checks.append(check_error_rate(champion, challenger, thresholds.max_error_rate))
        checks.append(check_p99(champion, challenger, thresholds.max_p99_ratio, thresholds.p99_slack_ms))
        checks.append(check_prediction_psi(champion, challenger, thresholds.max_prediction_psi, thresholds.min_scores))
    note = "" if enough else (f"not enough traffic yet: challenger {challenger.requests}, champion "
                              f"{champion.requests} requests (min_requests {thresholds.min_requests})")
    return Verdict(tuple(checks), enough, note)


def early_breach(champion: Window, challenger: Window, thresholds: Thresholds, challenger_status: str = "ready") -> Verdict | None:
    """A verdict that may end a bake early: a dead challenger, or errors over at least ``min_requests``.

    Latency and PSI wait for the end of the bake (they are statistics of the whole window).
    """
    live = check_live(challenger_status)
    if not live.ok:
        return Verdict((live,), True)
    if challenger.requests >= max(thresholds.min_requests, 1):
        err = check_error_rate(champion, challenger, thresholds.max_error_rate)
        if not err.ok:
            return Verdict((live, err), True)
    return None


def should_roll_back(failed_before: int, verdict: Verdict, thresholds: Thresholds) -> bool:
    """True when the failed checks so far plus this verdict's reach ``failure_threshold``."""
    return failed_before + len(verdict.failed) >= thresholds.failure_threshold


# --------------------------------------------------------------------------------------------------
# The decision record (DESIGN §7)
# --------------------------------------------------------------------------------------------------

def _num(x: float | None, digits: int = 4) -> float | None:
    return None if x is None or not math.isfinite(x) else round(float(x), digits)


@dataclass
class StepRecord:
    """One step of a rollout: the challenger's numbers (DESIGN §7) plus the champion's, for the timeline."""

    weight: int
    requests: int = 0
    errors: int = 0
    p99_ms: float | None = None
    prediction_psi: float | None = None
    ok: bool = False
    champion_requests: int = 0
    champion_errors: int = 0
    champion_p99_ms: float | None = None
    seconds: float = 0.0
    started: str = ""
    reason: str = ""
    checks: list[dict] = field(default_factory=list)

    @classmethod
    def from_windows(cls, weight: int, champion: Window, challenger: Window, verdict: Verdict, *, ok: bool,
                     seconds: float, started: str) -> "StepRecord":
        psi_check = verdict.check("prediction_psi")
        return cls(
            weight=int(weight), requests=challenger.requests, errors=challenger.failures,
            p99_ms=_num(challenger.p99_ms, 3), prediction_psi=_num(psi_check.value if psi_check else None),
            ok=bool(ok), champion_requests=champion.requests, champion_errors=champion.failures,
            champion_p99_ms=_num(champion.p99_ms, 3), seconds=round(float(seconds), 3), started=started,
            reason=verdict.reason, checks=[c.to_dict() for c in verdict.checks],
        )

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class RolloutRecord:
    """The decision record: ``promoted``, ``rolled_back`` or ``none`` (nothing to roll out), and why.

    ``to_dict()`` is the JSON of DESIGN §7; each step also carries the champion's numbers, its bake
    time and its checks (additive keys). ``run_id`` is the MLflow run holding the record.
    """

    decision: str
    reason: str
    champion: str | None
    challenger: str | None
    steps: list[StepRecord] = field(default_factory=list)
    started: str = field(default_factory=utcnow)
    finished: str = ""
    run_id: str = ""
    replay: Any = None

    def to_dict(self) -> dict:
        return {"decision": self.decision, "reason": self.reason, "champion": self.champion,
                "challenger": self.challenger, "steps": [s.to_dict() for s in self.steps],
                "started": self.started, "finished": self.finished}

    @classmethod
    def from_dict(cls, d: dict) -> "RolloutRecord":
        steps = [StepRecord(**s) for s in d.get("steps", [])]
        return cls(d["decision"], d.get("reason", ""), d.get("champion"), d.get("challenger"), steps,
                   d.get("started", ""), d.get("finished", ""))

    def summary(self) -> str:
        """A few lines for the CLI and the notebook."""
        if self.decision == "none":
            return self.reason
        head = {"promoted": f"promoted v{self.challenger} (was v{self.champion})",
                "rolled_back": f"rolled back v{self.challenger}; v{self.champion} serves"}[self.decision]
        lines = [f"{head}: {self.reason}"]
        for s in self.steps:
            psi_txt = "n/a" if s.prediction_psi is None else f"{s.prediction_psi:.3f}"
            p99_txt = "n/a" if s.p99_ms is None else f"{s.p99_ms:.1f} ms"
            lines.append(f"  {s.weight:>3}%  {'ok ' if s.ok else 'FAIL'}  {s.requests} req, {s.errors} errors, "
                         f"p99 {p99_txt}, PSI {psi_txt}  ({s.seconds:.1f} s)")
        if self.replay is not None:
            lines.append(f"  replayed traffic: {self.replay.summary()}")
        return "\n".join(lines)

    def table(self):
        """One row per step (the notebook's display)."""
        import pandas as pd

        cols = ["weight", "requests", "errors", "p99_ms", "champion_requests", "champion_p99_ms", "prediction_psi",
                "ok", "seconds", "reason"]
        return pd.DataFrame([s.to_dict() for s in self.steps], columns=cols)


# --------------------------------------------------------------------------------------------------
# Lock and state (one rollout per endpoint; a rerun after a crash finds what was going on)
# --------------------------------------------------------------------------------------------------

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
        fh = open(self.path, "a+")
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


# --------------------------------------------------------------------------------------------------
# Reading windows from a target
# --------------------------------------------------------------------------------------------------

def read_windows(target, since: float) -> dict[str, Window]:
    """``{variant: Window}`` of the requests each variant served since ``since`` (unix time).

    Uses ``target.read_window(since)`` (the local router's per-request ring buffer). Other targets
    do not record per-request windows (see the README's limitations).

    Raises
    ------
    RolloutError
        The target cannot report per-variant windows.
    """
    reader = getattr(target, "read_window", None)
    if reader is None:
        raise RolloutError(
            f"the {getattr(target, 'name', type(target).__name__)!r} target cannot report per-variant request windows, "
            "so the controller cannot judge a step; give the target a read_window(since) method or use the "
            "cloud's own guardrails (SageMaker deploy_guarded)"
        )
    raw = reader(since) or {}
    return {name: Window.from_dict(w) for name, w in (raw.get("variants") or {}).items()}


# --------------------------------------------------------------------------------------------------
# The controller
# --------------------------------------------------------------------------------------------------

@dataclass
class _Plan:
    """What one rollout works on (persisted in the state file as it goes)."""

    endpoint: str
    target: str
    model_name: str
    champion: str
    challenger: str
    steps: list[int]
    step: int = 0
    phase: str = "starting"
    reason: str = ""
    record: dict = field(default_factory=dict)
    failed_checks: int = 0

    @property
    def champion_variant(self) -> str:
        from churnkit.deploy.base import variant_name

        return variant_name(self.champion)

    @property
    def challenger_variant(self) -> str:
        from churnkit.deploy.base import variant_name

        return variant_name(self.challenger)


class _Controller:
    """One rollout on one endpoint; every transition is written to the state file first."""

    def __init__(self, target, config: Config, *, model_name: str, thresholds: Thresholds, interval: float,
                 max_bake: float, poll: float, replay_rate: float, echo: Callable[[str], None]):
        self.target, self.config, self.model_name = target, config, model_name
        self.th, self.interval, self.max_bake, self.poll = thresholds, interval, max_bake, poll
        self.replay_rate, self.echo = replay_rate, echo
        self.path = state_path(config, target.endpoint)
        self.plan: _Plan | None = None
        self.record: RolloutRecord | None = None
        self.replayer = None
        self._last_champion_window: Window | None = None

    # ---- state -----------------------------------------------------------------------------------
    def save(self, **changes) -> None:
        for k, v in changes.items():
            setattr(self.plan, k, v)
        if self.record is not None:
            self.plan.record = self.record.to_dict()
        write_state(self.path, asdict(self.plan) | {"pid": os.getpid()})

    # ---- the rollout -----------------------------------------------------------------------------
    def run(self, plan: _Plan, record: RolloutRecord, start_step: int = 0) -> RolloutRecord:
        self.plan, self.record = plan, record
        try:
            if start_step == 0 and not self._deploy_challenger():
                return self.record
            self._start_replay()
            baseline = self._baseline()
            for i in range(start_step, len(plan.steps)):
                verdict, step = self._bake(i, baseline)
                failed_before = plan.failed_checks
                self.record.steps.append(step)
                self.save(step=i + 1, failed_checks=failed_before + len(verdict.failed))
                if not verdict.enough or should_roll_back(failed_before, verdict, self.th):
                    return self._roll_back(f"step {i + 1} at {plan.steps[i]}%: {verdict.reason}")
                self.echo(f"  step {i + 1}/{len(plan.steps)} at {plan.steps[i]}%: "
                          f"{'ok' if step.ok else 'failed (tolerated)'} - {verdict.reason}")
                if plan.steps[i] < 100:
                    baseline = self._last_champion_window or baseline
            return self._promote()
        except BaseException as exc:  # Ctrl-C, SIGTERM, a target error: never leave traffic split
            self._stop_replay()
            if self.plan.phase in ("starting", "deploying", "baking"):
                reason = f"controller stopped by {type(exc).__name__}: {exc}".rstrip(": ")
                try:
                    self._roll_back(reason, keep_alias=True)
                except Exception as inner:  # noqa: BLE001 - report the first error, keep the state file for a rerun
                    self.echo(f"  rollback after the error failed too ({inner}); rerun `churnkit rollout` to finish it")
            raise
        finally:
            self._stop_replay()

    def _deploy_challenger(self) -> bool:
        plan = self.plan
        live = self.target.describe()
        if plan.challenger_variant in live.variants:
            return True
        self.save(phase="deploying")
        uri = f"models:/{plan.model_name}/{plan.challenger}"
        self.echo(f"  deploying {uri} as {plan.challenger_variant} at 0% on {self.target.name} endpoint {plan.endpoint!r}")
        try:
            self.target.deploy(uri, plan.challenger_variant, 0)
        except Exception as exc:  # a challenger that does not start is a breach, not an outage
            self._roll_back(f"challenger v{plan.challenger} could not be deployed: {type(exc).__name__}: {exc}")
            return False
        return True

    def _start_replay(self) -> None:
        if self.replay_rate <= 0 or self.replayer is not None:
            return
        from churnkit import registry
        from churnkit.replay import Replayer

        rows, _ = registry.version_holdout(self.plan.challenger, self.plan.model_name)
        url = self.target.describe().url
        self.echo(f"  replaying {len(rows)} held-out rows of v{self.plan.challenger} to {url} at {self.replay_rate:g} requests/s")
        self.replayer = Replayer(url, rows, self.replay_rate).start()

    def _stop_replay(self) -> None:
        if self.replayer is not None:
            self.record.replay = self.replayer.stop()
            self.replayer = None

    def _baseline(self) -> Window:
        """The champion's traffic over the last interval: the comparison for a step where it gets 0 %."""
        windows = read_windows(self.target, time.time() - self.interval)
        return windows.get(self.plan.champion_variant, Window())

    def _bake(self, i: int, baseline: Window) -> tuple[Verdict, StepRecord]:
        plan = self.plan
        w = plan.steps[i]
        weights = {plan.champion_variant: 100 - w, plan.challenger_variant: w}
        self.save(phase="baking", step=i)
        state = self.target.set_traffic(weights)
        started_iso, since = utcnow(), time.time()
        applied = {n: state.weights.get(n) for n in weights}
        self.echo(f"  step {i + 1}/{len(plan.steps)}: {plan.challenger_variant} {w}%, {plan.champion_variant} {100 - w}%; "
                  f"baking {self.interval:g} s")
        if applied != weights:
            v = Verdict((Check("traffic_applied", 0.0, 1.0, False, f"asked weights {weights}, live {applied}"),), True)
            return v, StepRecord.from_windows(w, Window(), Window(), v, ok=False, seconds=0.0, started=started_iso)
        while True:
            time.sleep(self.poll)
            elapsed = time.time() - since
            windows = read_windows(self.target, since)
            ch = windows.get(plan.challenger_variant, Window())
            cp = windows.get(plan.champion_variant, Window()) if w < 100 else baseline
            status = self._status()
            verdict = early_breach(cp, ch, self.th, status)
            if verdict is not None and not should_roll_back(plan.failed_checks, verdict, self.th):
                verdict = None  # tolerated: the step bakes to its end
            if verdict is None and elapsed >= self.interval:
                verdict = judge_step(cp, ch, self.th, status)
                if not verdict.enough and elapsed < self.max_bake:
                    continue
                if not verdict.enough:
                    verdict = replace(verdict, note=f"{verdict.note} after {elapsed:.0f} s (the bake's cap); lower "
                                      "min_requests or send more traffic (replay_rate)")
            if verdict is not None:
                if w < 100:
                    self._last_champion_window = cp
                step = StepRecord.from_windows(w, cp, ch, verdict, ok=verdict.ok, seconds=elapsed, started=started_iso)
                return verdict, step

    def _status(self) -> str:
        v = self.target.describe().variants.get(self.plan.challenger_variant)
        return v.status if v is not None else "missing"

    # ---- outcomes --------------------------------------------------------------------------------
    def _roll_back(self, reason: str, *, keep_alias: bool = False) -> RolloutRecord:
        from churnkit import registry

        plan = self.plan
        self.save(phase="rolling_back", reason=reason)
        self.echo(f"  rolling back: {reason}")
        live = self.target.describe()
        if plan.champion_variant in live.variants and live.weights.get(plan.champion_variant) != 100:
            self.target.set_traffic({plan.champion_variant: 100})
        if not keep_alias:
            held = registry.get_alias_version(ALIAS_CHALLENGER, plan.model_name)
            if held is not None and str(held.version) == plan.challenger:
                registry.delete_alias(ALIAS_CHALLENGER, plan.model_name)
        if plan.challenger_variant in self.target.describe().variants:
            self.target.remove(plan.challenger_variant)
        return self._finish("rolled_back", reason)

    def _promote(self) -> RolloutRecord:
        from churnkit import registry

        plan = self.plan
        reason = f"all {len(plan.steps)} steps passed ({', '.join(f'{w}%' for w in plan.steps)})"
        self.save(phase="promoting", reason=reason)
        live = self.target.describe()
        if live.weights.get(plan.challenger_variant) != 100:
            self.target.set_traffic({plan.challenger_variant: 100})
        champion = registry.get_champion(plan.model_name)
        if champion is None or str(champion.version) != plan.challenger:
            registry.promote(plan.challenger, plan.model_name, reason=f"rollout on {plan.target} endpoint "
                             f"{plan.endpoint!r}: {reason}")
        if plan.champion_variant in self.target.describe().variants:
            self.target.remove(plan.champion_variant)
        return self._finish("promoted", reason)

    def _finish(self, decision: str, reason: str) -> RolloutRecord:
        self._stop_replay()
        self.record.decision, self.record.reason, self.record.finished = decision, reason, utcnow()
        record_outcome(self.record, self.plan.model_name, f"{self.plan.target} endpoint {self.plan.endpoint!r}",
                       self.config)
        self.save(phase="done")
        return self.record

    # ---- after a crash ---------------------------------------------------------------------------
    def recover(self, state: dict, resume: bool) -> RolloutRecord:
        """Finish what a stopped controller left: promotion and rollback are completed; a bake is
        rolled back (the challenger keeps its alias, it was not judged) or, with ``resume``, re-baked."""
        names = {f for f in _Plan.__dataclass_fields__}
        plan = _Plan(**{k: v for k, v in state.items() if k in names})
        record = (RolloutRecord.from_dict(plan.record) if plan.record
                  else RolloutRecord("rolled_back", "", plan.champion, plan.challenger))
        self.plan, self.record = plan, record
        who = f"the controller (pid {state.get('pid', '?')}) stopped"
        where = (f"during step {plan.step + 1} ({plan.steps[plan.step]}%)" if plan.step < len(plan.steps)
                 else "after its last step")
        self.echo(f"found an unfinished rollout of v{plan.challenger} over v{plan.champion}: {who} {where}, "
                  f"phase {plan.phase!r}")
        if plan.phase == "promoting":
            record.reason = plan.reason
            return self._promote()
        if plan.phase == "rolling_back":
            return self._roll_back(plan.reason or f"{who} while rolling back")
        if resume and plan.phase in ("baking", "deploying", "starting"):
            self.echo(f"  resuming at step {plan.step + 1}")
            return self.run(plan, record, start_step=plan.step if plan.phase == "baking" else 0)
        return self._roll_back(f"{who} {where} before a verdict; traffic returned to champion v{plan.champion}; "
                               f"v{plan.challenger} keeps the challenger alias (run the rollout again, or pass "
                               "--resume to continue where it stopped)", keep_alias=True)


@contextmanager
def using_store(config: Config):
    """Make ``config`` the store that registry helpers resolve from the environment, for the block's duration.

    The registry's helpers (aliases, history, tags) read the store from ``CHURNKIT_RUNS_DIR`` /
    ``MLFLOW_TRACKING_URI``; a rollout on ``--runs-dir X`` must not touch another store halfway.
    """
    values = {"CHURNKIT_RUNS_DIR": str(config.runs_dir),
              "MLFLOW_TRACKING_URI": None if config.embedded else config.tracking_uri}
    old = {k: os.environ.get(k) for k in values}
    for k, v in values.items():
        os.environ.pop(k, None) if v is None else os.environ.__setitem__(k, v)
    try:
        yield config
    finally:
        for k, v in old.items():
            os.environ.pop(k, None) if v is None else os.environ.__setitem__(k, v)


def _target_and_config(deploy_target, endpoint: str, config: Config | None):
    if isinstance(deploy_target, str):
        from churnkit.deploy import get_target

        config = config or load_config()
        target = get_target(deploy_target, endpoint=endpoint, config=config)
        recorded = target.read_state().get("port") if deploy_target == "local" else None
        if recorded:  # the local endpoint listens where it was deployed, whatever port the default says
            target.port = int(recorded)
        return target, config
    return deploy_target, config or getattr(deploy_target, "config", None) or load_config()


class _terminate_as_interrupt:
    """Turn SIGTERM into KeyboardInterrupt while the controller runs (main thread only), so it rolls back."""

    def __enter__(self):
        import signal
        import threading

        self.old = None
        if threading.current_thread() is threading.main_thread():
            def handler(signum, frame):
                raise KeyboardInterrupt(f"signal {signum}")

            self.old = signal.signal(signal.SIGTERM, handler)
        return self

    def __exit__(self, *exc):
        import signal

        if self.old is not None:
            signal.signal(signal.SIGTERM, self.old)


def rollout(
    deploy_target="local",
    *,
    endpoint: str = "churn",
    model_name: str = DEFAULT_MODEL_NAME,
    strategy: str = "canary",
    steps: Sequence[int] | str = (),
    interval: float = 30.0,
    max_error_rate: float = 0.01,
    max_p99_ratio: float = 1.5,
    max_prediction_psi: float = 0.2,
    failure_threshold: int = 1,
    min_requests: int = 50,
    replay_rate: float = 0.0,
    max_bake: float | None = None,
    p99_slack_ms: float = 10.0,
    resume: bool = False,
    config: Config | None = None,
    echo: Callable[[str], None] = print,
) -> RolloutRecord:
    """Roll the ``challenger`` out over the ``champion`` on ``deploy_target`` step by step; promote or roll back.

    Each step sets the weights, bakes ``interval`` seconds (extended up to ``max_bake``, default 10 ×
    interval, until both variants saw ``min_requests`` requests) and judges the challenger against the
    champion on that window (:func:`judge_step`). Errors or a dead challenger end a bake early. On a
    breach traffic returns to 100 % champion at once, the challenger alias is removed, the version is
    tagged with the reason and its variant removed; after the last step the challenger becomes
    ``champion``, the old champion ``previous``, and the old variant is removed.

    Parameters
    ----------
    deploy_target : str or DeployTarget
        ``"local"``, ``"sagemaker"``, ``"azureml"``, ``"vertex"``, or a target object.
    replay_rate : float
        When > 0, held-out rows of the challenger's training run are replayed to the endpoint at this
        many requests per second for the whole rollout (demos, tests, rehearsals).
    resume : bool
        After a crashed controller: re-bake the interrupted step instead of rolling back (the default).

    Returns
    -------
    RolloutRecord
        ``decision`` "promoted", "rolled_back", or "none" when there is no challenger.

    Raises
    ------
    RolloutLockedError
        Another rollout on the same endpoint is running.
    RolloutError
        No champion, or the champion is not deployed on the target.
    """
    from churnkit import registry
    from churnkit.deploy.base import variant_name

    plan_w = plan_steps(strategy, steps)
    th = Thresholds(max_error_rate, max_p99_ratio, max_prediction_psi, failure_threshold, min_requests, p99_slack_ms)
    if not (isinstance(interval, (int, float)) and interval > 0):
        raise ParameterError(f"interval must be a positive number of seconds, got {interval!r}", name="interval")
    target, config = _target_and_config(deploy_target, endpoint, config)
    registry.setup_tracking(config)
    poll = min(1.0, max(0.2, interval / 4))
    ctl = _Controller(target, config, model_name=model_name, thresholds=th, interval=float(interval),
                      max_bake=float(max_bake or 10 * interval), poll=poll, replay_rate=float(replay_rate or 0), echo=echo)
    with using_store(config), RolloutLock(rollout_dir(config) / f"{target.endpoint}.lock", target.endpoint), \
            _terminate_as_interrupt():
        state = read_state(ctl.path)
        if state and state.get("phase") not in (None, "done"):
            return ctl.recover(state, resume)
        champion = registry.get_champion(model_name)
        challenger = registry.get_alias_version(ALIAS_CHALLENGER, model_name)
        if challenger is None or (champion is not None and str(challenger.version) == str(champion.version)):
            record = RolloutRecord("none", "nothing to roll out: no challenger",
                                   str(champion.version) if champion else None, None)
            record.finished = utcnow()
            echo(record.reason)
            record_outcome(record, model_name, f"{target.name} endpoint {target.endpoint!r}", config)
            return record
        if champion is None:
            raise RolloutError(f"model {model_name!r} has a challenger (v{challenger.version}) but no champion; "
                               f"deploy and alias a champion first: churnkit pipeline, then churnkit deploy")
        live = target.describe()
        cv = variant_name(champion.version)
        if cv not in live.variants:
            raise RolloutError(
                f"champion v{champion.version} of {model_name!r} is not deployed on {target.name} endpoint "
                f"{target.endpoint!r} (live variants: {sorted(live.variants)!r}); deploy it first: churnkit deploy "
                f"--target {target.name} --model models:/{model_name}@{ALIAS_CHAMPION}")
        stray = {n: w for n, w in live.weights.items() if w > 0 and n != cv}
        if stray:
            target.set_traffic({cv: 100})
            registry.record_history(model_name, str(champion.version),
                                    f"{target.name} endpoint {target.endpoint!r}: traffic was split {live.weights} with "
                                    f"no rollout running; returned 100% to {cv} before rolling out v{challenger.version}")
        plan = _Plan(target.endpoint, target.name, model_name, str(champion.version), str(challenger.version), plan_w)
        echo(f"rolling out {model_name} v{plan.challenger} over v{plan.champion} on {target.name} endpoint "
             f"{target.endpoint!r}: steps {plan_w} %, {interval:g} s bake")
        return ctl.run(plan, RolloutRecord("rolled_back", "", plan.champion, plan.challenger))


def rollback(deploy_target="local", *, endpoint: str = "churn", model_name: str = DEFAULT_MODEL_NAME,
             config: Config | None = None, echo: Callable[[str], None] = print) -> RolloutRecord:
    """Restore ``previous`` as champion with 100 % of the traffic (deploying it if its variant is gone).

    Like ``kubectl rollout undo``, the demoted champion becomes ``previous``, so a second rollback
    undoes the first. An unfinished rollout left by a stopped controller is rolled back instead.

    Raises
    ------
    RolloutError
        No version holds ``previous``.
    """
    from churnkit import registry
    from churnkit.deploy.base import variant_name

    target, config = _target_and_config(deploy_target, endpoint, config)
    registry.setup_tracking(config)
    ctl = _Controller(target, config, model_name=model_name, thresholds=Thresholds(), interval=1.0, max_bake=1.0,
                      poll=0.2, replay_rate=0.0, echo=echo)
    with using_store(config), RolloutLock(rollout_dir(config) / f"{target.endpoint}.lock", target.endpoint):
        state = read_state(ctl.path)
        if state and state.get("phase") not in (None, "done"):
            return ctl.recover(state, resume=False)
        prev = registry.get_alias_version(ALIAS_PREVIOUS, model_name)
        if prev is None:
            raise RolloutError(f"no version of {model_name!r} holds the {ALIAS_PREVIOUS!r} alias, so there is nothing to "
                               f"roll back to (aliases: {registry.aliases(model_name)!r}); a rollout must promote a "
                               "version first")
        champion = registry.get_champion(model_name)
        old = str(champion.version) if champion is not None else None
        pv = variant_name(prev.version)
        plan = _Plan(target.endpoint, target.name, model_name, str(prev.version), old or "", [100], phase="rolling_back")
        reason = f"manual rollback: v{prev.version} restored as champion with 100% traffic" + (
            f", v{old} demoted to {ALIAS_PREVIOUS}" if old else "")
        ctl.plan, ctl.record = plan, RolloutRecord("rolled_back", reason, str(prev.version), old)
        ctl.save(reason=reason)
        echo(f"rolling back {model_name} on {target.name} endpoint {target.endpoint!r}: {reason}")
        if pv not in target.describe().variants:
            echo(f"  deploying models:/{model_name}/{prev.version} as {pv}")
            target.deploy(f"models:/{model_name}/{prev.version}", pv, 0)
        target.set_traffic({pv: 100})
        registry.promote(str(prev.version), model_name, reason=reason)
        if old and old != str(prev.version) and variant_name(old) in target.describe().variants:
            target.remove(variant_name(old))
        return ctl._finish("rolled_back", reason)


# --------------------------------------------------------------------------------------------------
# Recording: MLflow run, version tags and history
# --------------------------------------------------------------------------------------------------

def log_record(record: RolloutRecord, config: Config | None = None) -> str:
    """Log the record to MLflow (the active run, else a new ``rollout`` run); returns the run id.

    The record is the artifact ``rollout/decision.json``, the timeline ``rollout/timeline.png``; each
    step's numbers are metrics with ``step`` = the step index.
    """
    import mlflow
    from mlflow.entities import Metric

    from churnkit import registry

    exp_id = registry.setup_tracking(config)
    c = registry.client()
    active = mlflow.active_run()
    if active is not None:
        run_id = active.info.run_id
    else:
        tags = {"mlflow.runName": "rollout", registry.TAG + "notebook": "rollout",
                registry.TAG + "pipeline_id": os.environ.get("CHURNKIT_PIPELINE_ID", "")}
        run_id = c.create_run(exp_id, tags=tags).info.run_id
    now = int(time.time() * 1000)
    metrics = [Metric("rollout_promoted", float(record.decision == "promoted"), now, 0),
               Metric("rollout_steps", float(len(record.steps)), now, 0)]
    for i, s in enumerate(record.steps):
        for key, value in (("weight", s.weight), ("requests", s.requests), ("errors", s.errors), ("p99_ms", s.p99_ms),
                           ("champion_p99_ms", s.champion_p99_ms), ("prediction_psi", s.prediction_psi),
                           ("step_ok", float(s.ok))):
            if value is not None:
                metrics.append(Metric(f"rollout_{key}", float(value), now, i))
    c.log_batch(run_id, metrics=metrics)
    for key, value in {"rollout_decision": record.decision, "rollout_reason": record.reason[:7000],
                       "champion_version": record.champion or "", "challenger_version": record.challenger or ""}.items():
        c.set_tag(run_id, registry.TAG + key, value)
    c.log_text(run_id, json.dumps(record.to_dict(), indent=2), "rollout/decision.json")
    if record.steps:
        import matplotlib.pyplot as plt

        fig = plot_rollout(record)
        c.log_figure(run_id, fig, "rollout/timeline.png")
        plt.close(fig)
    if active is None:
        c.set_terminated(run_id, "FINISHED")
    return run_id


def record_outcome(record: RolloutRecord, model_name: str, where: str, config: Config | None = None) -> RolloutRecord:
    """Log ``record`` to MLflow and keep it in both versions' history (and the challenger's tags)."""
    from churnkit import registry

    record.run_id = log_record(record, config)
    if record.decision == "none" or not record.challenger:
        return record
    ch, cp = record.challenger, record.champion
    for key, value in (("rollout_decision", record.decision), ("rollout_reason", record.reason[:4000]),
                       ("rollout_run_id", record.run_id)):
        registry.set_version_tag(ch, key, value, model_name)
    steps = ", ".join(f"{s.weight}% {'ok' if s.ok else 'failed'}" for s in record.steps) or "no steps"
    run = f"decision record in MLflow run {record.run_id}"
    if record.decision == "promoted":
        registry.record_history(model_name, ch, f"rollout on {where}: promoted over v{cp} ({steps}); {run}")
        if cp:
            registry.record_history(model_name, cp, f"rollout on {where}: replaced by v{ch}, kept as previous; {run}")
    else:
        registry.record_history(model_name, ch, f"rollout on {where}: rolled back ({steps}): {record.reason}; {run}")
        if cp:
            registry.record_history(model_name, cp, f"rollout on {where}: serves 100% again after v{ch} was rolled "
                                                    f"back; {run}")
    return record


# --------------------------------------------------------------------------------------------------
# The timeline (the notebook's figure)
# --------------------------------------------------------------------------------------------------

def plot_rollout(record: RolloutRecord):
    """Timeline of a rollout: traffic weight, request rate and p99 of each version, prediction PSI, verdicts."""
    import matplotlib.pyplot as plt

    if not record.steps:
        fig, ax = plt.subplots(figsize=(8, 1.6))
        ax.axis("off")
        ax.text(0.5, 0.5, record.reason or record.decision, ha="center", va="center", fontsize=12)
        return fig
    ends = np.cumsum([max(s.seconds, 1e-3) for s in record.steps])
    starts = ends - [max(s.seconds, 1e-3) for s in record.steps]
    mids = (starts + ends) / 2
    ch, cp = f"v{record.challenger}", f"v{record.champion}"
    fig, axes = plt.subplots(4, 1, figsize=(9, 8.5), sharex=True)
    ax = axes[0]
    ax.step(np.r_[starts, ends[-1]], [s.weight for s in record.steps] + [record.steps[-1].weight], where="post",
            color="tab:orange", label=f"{ch} (challenger)")
    ax.step(np.r_[starts, ends[-1]], [100 - s.weight for s in record.steps] + [100 - record.steps[-1].weight],
            where="post", color="tab:blue", label=f"{cp} (champion)")
    for x, s in zip(mids, record.steps):
        ax.annotate("ok" if s.ok else "FAIL", (x, 104), ha="center", fontsize=9, fontweight="bold",
                    color="tab:green" if s.ok else "tab:red", annotation_clip=False)
    ax.set_ylim(-5, 112)
    ax.set_ylabel("traffic %")
    ax.legend(loc="center left", fontsize=8)
    ax.set_title(f"{record.decision.replace('_', ' ')}: {record.reason}"[:110], fontsize=10)
    rate = axes[1]
    rate.plot(mids, [s.requests / max(s.seconds, 1e-3) for s in record.steps], "o-", color="tab:orange", label=ch)
    rate.plot(mids, [s.champion_requests / max(s.seconds, 1e-3) for s in record.steps], "o-", color="tab:blue", label=cp)
    rate.set_ylabel("requests / s")
    rate.legend(fontsize=8)
    lat = axes[2]
    lat.plot(mids, [np.nan if s.p99_ms is None else s.p99_ms for s in record.steps], "o-", color="tab:orange", label=ch)
    lat.plot(mids, [np.nan if s.champion_p99_ms is None else s.champion_p99_ms for s in record.steps], "o-",
             color="tab:blue", label=cp)
    lat.set_ylabel("p99 latency (ms)")
    lat.legend(fontsize=8)
    drift = axes[3]
    drift.bar(mids, [0 if s.prediction_psi is None else s.prediction_psi for s in record.steps],
              width=(ends - starts) * 0.6, color=["tab:green" if s.ok else "tab:red" for s in record.steps])
    limit = next((c["limit"] for s in record.steps for c in s.checks if c["name"] == "prediction_psi"), None)
    if limit is not None:
        drift.axhline(limit, color="grey", linestyle="--", linewidth=1, label=f"limit {limit:g}")
        drift.legend(fontsize=8)
    drift.set_ylabel("prediction PSI")
    drift.set_xlabel("seconds since the rollout started")
    fig.tight_layout()
    return fig


def rollout_history(record: RolloutRecord, model_name: str = DEFAULT_MODEL_NAME):
    """The history of the record's versions, oldest first: which version served when, and why it changed."""
    import pandas as pd

    from churnkit import registry

    rows = [{"time": h["time"], "version": v, "event": h["event"]}
            for v in dict.fromkeys(x for x in (record.champion, record.challenger) if x)
            for h in registry.version_history(v, model_name)]
    return pd.DataFrame(rows, columns=["time", "version", "event"]).sort_values("time", kind="stable").reset_index(drop=True)
