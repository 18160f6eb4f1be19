"""The rollout controller: shift traffic from ``champion`` to ``challenger`` step by step, judge, promote or roll back.

It builds on the other modules of :mod:`churnkit.rollout`:

* **Decisions** (pure, ``checks``): :func:`plan_steps` turns a strategy into traffic weights;
  :func:`judge_step` compares the challenger's :class:`Window` with the champion's on the same time
  window (error rate, p99 latency ratio, prediction PSI, optionally input drift) and returns a
  :class:`Verdict`. They take recorded windows, so they are unit-tested on data and nothing else.
* **Record** (``record``): :class:`RolloutRecord` is the decision record of DESIGN §7, logged
  to MLflow and kept in the model version's history; :func:`plot_rollout` draws its timeline.
* **Controller** (here, with ``store`` for the lock and the state file): :func:`rollout` and
  :func:`rollback` drive any :class:`~churnkit.deploy.base.DeployTarget` through what it declares
  (``deploy``/``set_traffic``/``remove``, ``telemetry``, ``captured_inputs``), hold a per-endpoint
  lock and persist their state in
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
import time
from dataclasses import asdict, dataclass, field, replace
from typing import Callable, Sequence

from churnkit import registry
from churnkit.clock import utcnow
from churnkit.config import ALIAS_CHALLENGER, ALIAS_CHAMPION, ALIAS_PREVIOUS, DEFAULT_MODEL_NAME, Config, load_config
from churnkit.deploy.base import DeployTarget, variant_name
from churnkit.deploy.telemetry import Window
from churnkit.exceptions import ParameterError, RolloutError
from churnkit.rollout.checks import (
    Check,
    Thresholds,
    Verdict,
    check_input_drift,
    check_parity,
    early_breach,
    enough_traffic,
    judge_step,
    plan_steps,
    should_roll_back,
    shortfall,
)
from churnkit.rollout.record import RolloutRecord, StepRecord, record_outcome
from churnkit.rollout.store import RolloutLock, read_state, rollout_dir, state_path, write_state
from churnkit.signals import sigterm_raises


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
        return variant_name(self.champion)

    @property
    def challenger_variant(self) -> str:
        return variant_name(self.challenger)


class _Controller:
    """One rollout on one endpoint; every transition is written to the state file first."""

    def __init__(self, target: DeployTarget, config: Config, *, model_name: str, thresholds: Thresholds, interval: float,
                 max_bake: float, poll: float, replay_rate: float, echo: Callable[[str], None], replay_path: str = ""):
        self.target, self.config, self.model_name = target, config, model_name
        self.th, self.interval, self.max_bake, self.poll = thresholds, interval, max_bake, poll
        self.replay_rate, self.echo, self.replay_path = replay_rate, echo, str(replay_path or "")
        self.path = state_path(config, target.endpoint)
        self.plan: _Plan | None = None
        self.record: RolloutRecord | None = None
        self.replayer = None
        self._last_champion_window: Window | None = None
        self._reference = None
        self.reference = None  # the challenger's rollout reference (churnkit.reference.Reference)
        self._challenger_model = None
        self._judged: tuple[Window, Window] = (Window(), Window())
        self.delay = float(target.limits().telemetry_delay_s)
        self.scores_delayed = bool(target.limits().scores_delayed)

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
        self.load_reference()  # a missing or tampered reference refuses here, before anything changes
        # a target that cannot report on the serving variant (no permission, no /metrics) refuses here,
        # before anything changes: the probe reads a past window, so a cloud really sends its queries
        self.target.telemetry([plan.champion_variant], time.time() - 2 * max(self.interval, 1.0) - self.delay)
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
                where = f"step {i + 1} at {plan.steps[i]}%"
                if not verdict.enough:
                    why = f"inconclusive: {shortfall(*self._judged[:2], self.th)} at {where}; {verdict.note}"
                    return self._hold(why) if self.th.on_inconclusive == "hold" else self._roll_back(why)
                if should_roll_back(failed_before, verdict, self.th):
                    return self._roll_back(f"{where}: {verdict.reason}")
                if verdict.held:
                    return self._hold(f"{where}: {verdict.reason}; held for review (on_divergence='rollback' rolls "
                                      "back instead)")
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

    def load_reference(self) -> None:
        """The challenger's reference from the registry (checked against its manifest and its schema)."""
        from churnkit.artifact import read_metadata
        from churnkit.data import Schema
        from churnkit.reference import check_schema, version_reference

        if self.reference is not None:
            return
        plan = self.plan
        ref = version_reference(plan.challenger, plan.model_name, self.config, champion_version=plan.champion)
        self.reference = replace(ref, version=plan.challenger)
        local, _ = registry.resolve_model(f"models:/{plan.model_name}/{plan.challenger}", self.config)  # verified above
        check_schema(self.reference, Schema.from_dict(read_metadata(local)["churnkit_schema"]))
        offline = (ref.offline_divergence or {}).get("psi")
        self.echo(f"  reference of v{plan.challenger}: {ref.n} holdout scores (mean {ref.mean:.3f}; {ref.origin})"
                  + (f"; offline divergence from v{ref.champion_version}: PSI {offline:.3f}" if offline is not None
                     else f"; no offline divergence ({ref.note or 'no champion at registration'})"))

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
        from churnkit.replay import Replayer

        url = self.target.describe().url
        if self.replay_path:
            from churnkit.data import read_table

            rows = read_table(self.replay_path)
            keep = [c for c in rows.columns if self.reference is None or c in self.reference.columns]
            rows = rows[keep]  # the model's input columns: no label, no customer id
            what = f"{len(rows)} rows of {self.replay_path}"
        else:
            rows = self._holdout()
            what = f"{len(rows)} held-out rows of v{self.plan.challenger}"
        self.echo(f"  replaying {what} to {url} at {self.replay_rate:g} requests/s")
        self.replayer = Replayer(url, rows, self.replay_rate).start()

    def _stop_replay(self) -> None:
        if self.replayer is not None:
            self.record.replay = self.replayer.stop()
            self.replayer = None

    def _baseline(self) -> Window:
        """The champion's traffic over the last interval: the comparison for a step where it gets 0 %."""
        return self._windows(time.time() - self.interval - self.delay).get(self.plan.champion_variant, Window())

    def _windows(self, since: float, until: float | None = None) -> dict[str, Window]:
        return self.target.telemetry([self.plan.champion_variant, self.plan.challenger_variant], since, until)

    def _bake(self, i: int, baseline: Window) -> tuple[Verdict, StepRecord]:
        plan = self.plan
        w = plan.steps[i]
        weights = {plan.champion_variant: 100 - w, plan.challenger_variant: w}
        self.save(phase="baking", step=i)
        state = self.target.set_traffic(weights)
        started_iso, since = utcnow(), time.time()
        self._windows(since)  # targets that diff scrapes keep one at the step's start
        applied = {n: state.weights.get(n) for n in weights}
        self.echo(f"  step {i + 1}/{len(plan.steps)}: {plan.challenger_variant} {w}%, {plan.champion_variant} {100 - w}%; "
                  f"baking {self.interval:g} s")
        if applied != weights:
            v = Verdict((Check("traffic_applied", 0.0, 1.0, False, f"asked weights {weights}, live {applied}"),), True)
            return v, StepRecord.from_windows(w, Window(), Window(), v, ok=False, seconds=0.0, started=started_iso)
        looks_taken = 0
        while True:
            time.sleep(self.poll)
            # the window judged ends where the telemetry is complete: now minus the ingestion delay
            # (0 for the local router); a step is judged once that window spans the whole interval
            elapsed = time.time() - since - self.delay
            windows = self._windows(since, since + elapsed if self.delay else None)
            ch = windows.get(plan.challenger_variant, Window())
            cp = windows.get(plan.champion_variant, Window()) if w < 100 else baseline
            self._judged = (cp, ch)
            status = self._status()
            verdict = early_breach(cp, ch, self.th, status)
            if verdict is not None and self.scores_delayed and _short_of_scores(verdict):
                verdict = None  # the capture may not have caught up with the request counts yet
            if verdict is not None and not should_roll_back(plan.failed_checks, verdict, self.th):
                verdict = None  # tolerated: the step bakes to its end
            # an earlier look (the error budget is split across the looks): only a rollback ends the bake early
            look_due = looks_taken + 1 < self.th.looks and elapsed >= (looks_taken + 1) * self.interval / self.th.looks
            if verdict is None and look_due:
                looks_taken += 1
                early = judge_step(cp, ch, self.th, status, reference=self.reference)
                if early.enough and early.failed and not (self.scores_delayed and _short_of_scores(early)) \
                        and should_roll_back(plan.failed_checks, early, self.th):
                    verdict = replace(early, note=f"look {looks_taken} of {self.th.looks}")
            if verdict is None and elapsed >= self.interval:
                extra = [self._parity(since)] if enough_traffic(cp, ch, self.th) else []
                if self.th.max_input_drift is not None and extra:
                    extra.append(self._input_drift(since))
                verdict = judge_step(cp, ch, self.th, status, extra, reference=self.reference)
                if not verdict.enough and elapsed < self.max_bake:
                    continue
                if self.scores_delayed and _short_of_scores(verdict) and elapsed < self.max_bake:
                    continue  # wait for the capture (up to the bake's cap) before calling the answers unscored
                looks_taken = self.th.looks
                if not verdict.enough:
                    silent = [f"{n} ({win.source or self.target.name + ' telemetry'})"
                              for n, win in ((plan.challenger_variant, ch), (plan.champion_variant, cp)) if not win.requests]
                    stopped = (f"; no telemetry arrived for {', '.join(silent)}: a step without data is never judged "
                               "healthy") if silent else ""
                    verdict = replace(verdict, note=f"{verdict.note} after {elapsed:.0f} s (the bake's cap){stopped}; "
                                      "lower min_requests or send more traffic (replay_rate)")
            if verdict is not None:
                if w < 100:
                    self._last_champion_window = cp
                step = StepRecord.from_windows(w, cp, ch, verdict, ok=verdict.ok, seconds=elapsed, started=started_iso)
                step.looks = max(looks_taken, 1)
                return verdict, step

    def _parity(self, since: float) -> Check:
        """Serving parity: rows the challenger served, re-scored with its registered artifact."""
        served = self.target.captured_scores(self.plan.challenger_variant, since)
        label = f"v{self.plan.challenger} as registered (manifest-checked artifact)"
        if served is None or not len(served):
            return check_parity(None, None, reference=label)
        from churnkit.serve.capture import CAPTURE_COLUMNS, SCORE_COLUMN
        from churnkit.serve.scorer import Scorer

        if self._challenger_model is None:
            self._challenger_model = Scorer.from_loaded(
                registry.load_model(f"models:/{self.plan.model_name}/{self.plan.challenger}", self.config))
        rows = served.drop(columns=[c for c in CAPTURE_COLUMNS if c in served.columns])
        records = [{k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in r.items()}
                   for r in rows.to_dict("records")]
        try:
            rescored = self._challenger_model.predict_records(records)
        except Exception as exc:  # noqa: BLE001 - rows the registered artifact refuses: the container differs
            return Check("serving_parity", None, 1e-6, False, f"serving parity: the registered artifact refused rows "
                         f"the challenger served ({type(exc).__name__}: {exc})", label, len(records), "fail")
        return check_parity(served[SCORE_COLUMN].to_numpy(dtype=float), rescored, reference=label)

    def _holdout(self):
        """The challenger's training holdout: the replayed rows and the input-drift reference (read once)."""
        if self._reference is None:
            self._reference, _ = registry.version_holdout(self.plan.challenger, self.plan.model_name, self.config)
        return self._reference

    def _input_drift(self, since: float) -> Check:
        variants = [self.plan.champion_variant, self.plan.challenger_variant]
        return check_input_drift(self._holdout(), self.target.captured_inputs(variants, since), self.th.max_input_drift)

    def _status(self) -> str:
        v = self.target.describe().variants.get(self.plan.challenger_variant)
        return v.status if v is not None else "missing"

    # ---- outcomes --------------------------------------------------------------------------------
    def _roll_back(self, reason: str, *, keep_alias: bool = False) -> RolloutRecord:
        plan = self.plan
        self.save(phase="rolling_back", reason=reason)
        self.echo(f"  rolling back: {reason}")
        live = self.target.describe()
        if plan.champion_variant in live.variants and live.weights.get(plan.champion_variant) != 100:
            self.target.set_traffic({plan.champion_variant: 100})
        if not keep_alias:
            held = registry.get_alias_version(ALIAS_CHALLENGER, plan.model_name, self.config)
            if held is not None and str(held.version) == plan.challenger:
                registry.delete_alias(ALIAS_CHALLENGER, plan.model_name, self.config)
        live = self.target.describe()
        if plan.challenger_variant in live.variants:
            if live.weights.get(plan.champion_variant) == 100:
                self.target.remove(plan.challenger_variant)
            else:  # never remove the last variant that serves
                self.echo(f"  kept {plan.challenger_variant}: {plan.champion_variant} is not serving 100% "
                          f"({live.weights}); fix the endpoint, then `churnkit endpoint remove`")
        return self._finish("rolled_back", reason)

    def _hold(self, reason: str) -> RolloutRecord:
        """Leave the weights as they are for a person to decide; the state stays ``held`` until a rerun
        (``--resume`` judges the step again) or ``churnkit rollback`` (returns all traffic to the champion)."""
        plan = self.plan
        self.echo(f"  holding at {plan.steps[max(plan.step - 1, 0)]}%: {reason}")
        self.echo("  rerun with --resume to judge the step again, or `churnkit rollback` to return all traffic to "
                  f"v{plan.champion}")
        self._stop_replay()
        self.record.decision, self.record.reason, self.record.finished = "held", reason, utcnow()
        record_outcome(self.record, plan.model_name, f"{plan.target} endpoint {plan.endpoint!r}", self.config)
        self.save(phase="held", reason=reason)
        return self.record

    def undo(self) -> RolloutRecord:
        """The manual rollback: ``plan.champion`` (the previous version) serves 100 % again and is champion."""
        plan = self.plan
        self.save(phase="undoing")
        if plan.champion_variant not in self.target.describe().variants:
            self.echo(f"  deploying models:/{plan.model_name}/{plan.champion} as {plan.champion_variant}")
            self.target.deploy(f"models:/{plan.model_name}/{plan.champion}", plan.champion_variant, 0)
        self.target.set_traffic({plan.champion_variant: 100})
        champion = registry.get_champion(plan.model_name, self.config)
        if champion is None or str(champion.version) != plan.champion:
            registry.promote(plan.champion, plan.model_name, reason=plan.reason, config=self.config)
        if plan.challenger not in ("", plan.champion) and plan.challenger_variant in self.target.describe().variants:
            self.target.remove(plan.challenger_variant)
        return self._finish("rolled_back", plan.reason)

    def _promote(self) -> RolloutRecord:
        plan = self.plan
        reason = f"all {len(plan.steps)} steps passed ({', '.join(f'{w}%' for w in plan.steps)})"
        div = [s for s in self.record.steps if s.champion_divergence is not None and s.offline_divergence is not None]
        if div:
            last = div[-1]
            reason += (f"; the divergence from v{plan.champion} (live PSI {last.champion_divergence:.3f}) is what "
                       f"offline evaluation predicted (PSI {last.offline_divergence:.3f} on the same holdout)")
        if plan.phase == "promoting" and plan.reason:
            reason = plan.reason
        self.save(phase="promoting", reason=reason)
        live = self.target.describe()
        if live.weights.get(plan.challenger_variant) != 100:
            self.target.set_traffic({plan.challenger_variant: 100})
        champion = registry.get_champion(plan.model_name, self.config)
        if champion is None or str(champion.version) != plan.challenger:
            registry.promote(plan.challenger, plan.model_name, reason=f"rollout on {plan.target} endpoint "
                             f"{plan.endpoint!r}: {reason}", config=self.config)
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
        if plan.phase == "undoing":
            return self.undo()
        if plan.phase == "held":
            plan.step = max(plan.step - 1, 0)  # the held step is judged again
            record.steps = record.steps[:plan.step]
            where = f"during step {plan.step + 1} ({plan.steps[plan.step]}%)"
            if not resume:
                return self._roll_back(f"held {where} for review ({plan.reason}); rolled back on request: traffic "
                                       f"returned to champion v{plan.champion}, v{plan.challenger} keeps the challenger "
                                       "alias", keep_alias=True)
            plan.phase = "baking"
        if resume and plan.phase in ("baking", "deploying", "starting"):
            self.echo(f"  resuming at step {plan.step + 1}")
            return self.run(plan, record, start_step=plan.step if plan.phase == "baking" else 0)
        return self._roll_back(f"{who} {where} before a verdict; traffic returned to champion v{plan.champion}; "
                               f"v{plan.challenger} keeps the challenger alias (run the rollout again, or pass "
                               "--resume to continue where it stopped)", keep_alias=True)


#: Seconds a step bakes when no interval is given (raised to the target's telemetry minimum where longer).
DEFAULT_INTERVAL = 30.0


def _short_of_scores(verdict) -> bool:
    """True when every failed check is one that missing scores fail: the scored share, or a PSI that could
    not be computed (a lagging capture looks like that until it arrives)."""
    failed = verdict.failed
    return bool(failed) and all(c.name == "scored_share" or (c.name == "prediction_psi" and c.value is None)
                                for c in failed)


def bake_interval(target: DeployTarget, interval: float | None) -> float:
    """``interval``, or by default 30 s or the target's telemetry minimum (metric period + delay) if longer."""
    return max(DEFAULT_INTERVAL, target.telemetry_resolution()) if interval is None else interval


def check_bake(target: DeployTarget, interval: float) -> None:
    """Refuse a bake shorter than what the target's telemetry can judge (metric period + ingestion delay).

    Raises
    ------
    ParameterError
        Naming the interval, the minimum and where it comes from.
    """
    limits = target.limits()
    minimum = target.telemetry_resolution()
    if interval < minimum:
        raise ParameterError(
            f"interval {interval:g} s is shorter than the {target.name} telemetry can judge: at least {minimum:g} s "
            f"(metric period {limits.telemetry_period_s:g} s + ingestion delay {limits.telemetry_delay_s:g} s); pass "
            f"interval={minimum:g} (--interval {minimum:g}) or more", name="interval")


def check_limits(target: DeployTarget, live, challenger_variant: str, steps: Sequence[int]) -> None:
    """Refuse a rollout the platform cannot carry out, before any request: one variant more than the
    endpoint may hold, or a step finer than the platform's smallest traffic change.

    Raises
    ------
    RolloutError
        Naming the limit, the value and the fix.
    """
    limits = target.limits()
    if challenger_variant not in live.variants and len(live.variants) >= limits.max_variants:
        raise RolloutError(
            f"{target.name} endpoint {target.endpoint!r} already has {len(live.variants)} variants "
            f"({sorted(live.variants)!r}), its limit of {limits.max_variants}; remove one (churnkit endpoint remove) "
            f"before rolling out {challenger_variant}")
    odd = [w for w in steps if w % limits.min_weight_step]
    if odd:
        raise RolloutError(f"steps {odd!r} are not multiples of {limits.min_weight_step}%, the smallest traffic change "
                           f"{target.name} applies; pick steps that are")


def _target_and_config(deploy_target, endpoint: str, config: Config | None):
    if isinstance(deploy_target, str):
        from churnkit.deploy import get_target

        config = config or load_config()  # the local target follows its running router's port by itself
        return get_target(deploy_target, endpoint=endpoint, config=config), config
    return deploy_target, config or deploy_target.config


def rollout(
    deploy_target="local",
    *,
    endpoint: str = "churn",
    model_name: str = DEFAULT_MODEL_NAME,
    strategy: str = "canary",
    steps: Sequence[int] | str = (),
    interval: float | None = None,
    max_error_rate: float = 0.01,
    max_p99_ratio: float = 1.5,
    max_prediction_psi: float = 0.2,
    failure_threshold: int = 1,
    min_requests: int = 50,
    replay_rate: float = 0.0,
    max_bake: float | None = None,
    p99_slack_ms: float = 10.0,
    max_input_drift: float | None = None,
    resume: bool = False,
    config: Config | None = None,
    echo: Callable[[str], None] = print,
    alpha: float = 0.01,
    looks: int = 3,
    on_divergence: str = "hold",
    on_inconclusive: str = "rollback",
    min_scores: int | None = None,
    replay_path: str = "",
) -> RolloutRecord:
    """Roll the ``challenger`` out over the ``champion`` on ``deploy_target`` step by step; promote or roll back.

    Each step sets the weights, bakes ``interval`` seconds (default: 30, or the target's telemetry minimum
    when that is longer: 180 s on SageMaker, 240 s on Azure ML and Vertex; extended up to ``max_bake``,
    default 10 × interval, until both variants saw ``min_requests`` requests) and judges the challenger against the
    champion on that window (:func:`judge_step`). Errors or a dead challenger end a bake early. On a
    breach traffic returns to 100 % champion at once, the challenger alias is removed, the version is
    tagged with the reason and its variant removed; after the last step the challenger becomes
    ``champion``, the old champion ``previous``, and the old variant is removed.

    Parameters
    ----------
    deploy_target : str or DeployTarget
        ``"local"``, ``"sagemaker"``, ``"azureml"``, ``"vertex"``, or a target object.
    max_input_drift : float, optional
        Also judge input drift (share of drifted columns, from the target's data capture) at each step.
    max_prediction_psi : float
        PSI of the challenger's live scores against its own reference (its holdout scores through the serving
        scorer, stored with the version); a step fails only above this and above chance for the sizes seen.
    alpha, looks : float, int
        The chance of a false alarm a step may spend, split across ``looks`` judgments during its bake (a
        clearly broken challenger is rolled back at the first look with enough data; promotion waits for the end).
    on_divergence : {"hold", "rollback"}
        A live divergence from the champion beyond the offline one plus chance holds the rollout for review
        (decision ``held``: the weights stay) or rolls back.
    on_inconclusive : {"rollback", "hold"}
        Too little data at a bake's cap: ``rolled_back`` with reason "inconclusive: ...", or held. Never promoted.
    replay_path : str
        A table (CSV/Parquet) to replay instead of the challenger's holdout (production-like traffic).
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
    plan_w = plan_steps(strategy, steps)
    th = Thresholds(max_error_rate, max_p99_ratio, max_prediction_psi, failure_threshold, min_requests, p99_slack_ms,
                    **({} if min_scores is None else {"min_scores": min_scores}), max_input_drift=max_input_drift,
                    alpha=alpha, looks=looks, on_divergence=on_divergence, on_inconclusive=on_inconclusive)
    for name, value, low in (("interval", interval, "positive"), ("max_bake", max_bake, "positive"),
                             ("replay_rate", replay_rate, "non-negative")):
        if value is None and name in ("interval", "max_bake"):
            continue
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and (value > 0 if low == "positive" else value >= 0)
        if not ok:
            raise ParameterError(f"{name} must be a {low} number, got {value!r}", name=name)
    target, config = _target_and_config(deploy_target, endpoint, config)
    interval = bake_interval(target, interval)
    check_bake(target, interval)
    poll = min(1.0, max(0.2, interval / 4))
    ctl = _Controller(target, config, model_name=model_name, thresholds=th, interval=float(interval),
                      max_bake=float(max_bake or 10 * interval), poll=poll, replay_rate=float(replay_rate), echo=echo,
                      replay_path=replay_path)
    # SIGTERM raises while the controller runs, so it rolls back (a second TERM cannot cut the rollback short)
    with RolloutLock(rollout_dir(config) / f"{target.endpoint}.lock", target.endpoint), sigterm_raises():
        state = read_state(ctl.path)
        if state and state.get("phase") not in (None, "done"):
            return ctl.recover(state, resume)
        champion = registry.get_champion(model_name, config)
        challenger = registry.get_alias_version(ALIAS_CHALLENGER, model_name, config)
        if challenger is None or (champion is not None and str(challenger.version) == str(champion.version)):
            record = RolloutRecord("none", "nothing to roll out: no challenger",
                                   str(champion.version) if champion else None, None)
            record.finished = utcnow()
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
        check_limits(target, live, variant_name(challenger.version), plan_w)
        stray = {n: w for n, w in live.weights.items() if w > 0 and n != cv}
        if stray:
            target.set_traffic({cv: 100})
            registry.record_history(model_name, str(champion.version),
                                    f"{target.name} endpoint {target.endpoint!r}: traffic was split {live.weights} with "
                                    f"no rollout running; returned 100% to {cv} before rolling out v{challenger.version}",
                                    config)
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
    target, config = _target_and_config(deploy_target, endpoint, config)
    ctl = _Controller(target, config, model_name=model_name, thresholds=Thresholds(), interval=1.0, max_bake=1.0,
                      poll=0.2, replay_rate=0.0, echo=echo)
    with RolloutLock(rollout_dir(config) / f"{target.endpoint}.lock", target.endpoint):
        state = read_state(ctl.path)
        if state and state.get("phase") not in (None, "done"):
            return ctl.recover(state, resume=False)
        prev = registry.get_alias_version(ALIAS_PREVIOUS, model_name, config)
        if prev is None:
            raise RolloutError(f"no version of {model_name!r} holds the {ALIAS_PREVIOUS!r} alias, so there is nothing to "
                               f"roll back to (aliases: {registry.aliases(model_name, config)!r}); a rollout must promote a "
                               "version first")
        champion = registry.get_champion(model_name, config)
        old = str(champion.version) if champion is not None else None
        reason = f"manual rollback: v{prev.version} restored as champion with 100% traffic" + (
            f", v{old} demoted to {ALIAS_PREVIOUS}" if old else "")
        ctl.plan = _Plan(target.endpoint, target.name, model_name, str(prev.version), old or "", [100], reason=reason)
        ctl.record = RolloutRecord("rolled_back", reason, str(prev.version), old)
        echo(f"rolling back {model_name} on {target.name} endpoint {target.endpoint!r}: {reason}")
        return ctl.undo()


def plan_rollout(deploy_target="local", *, endpoint: str = "churn", model_name: str = DEFAULT_MODEL_NAME,
                 strategy: str = "canary", steps: Sequence[int] | str = (), interval: float | None = None,
                 config: Config | None = None) -> dict:
    """Every request a rollout would send, step by step, without sending any: the challenger's deploy,
    then per step the traffic request, the telemetry queries that judge it and when, and the requests
    of a rollback and of the promotion. Live state is read where credentials allow (as ``deploy --plan``).

    Raises
    ------
    ParameterError
        A bake shorter than the telemetry can judge, or bad steps.
    RolloutError
        No champion or no challenger to plan for.
    """
    from churnkit.deploy.base import EndpointState, VariantState

    plan_w = plan_steps(strategy, steps)
    target, config = _target_and_config(deploy_target, endpoint, config)
    interval = bake_interval(target, interval)
    check_bake(target, interval)
    champion = registry.get_champion(model_name, config)
    challenger = registry.get_alias_version(ALIAS_CHALLENGER, model_name, config)
    limits = target.limits()
    head = {"target": target.name, "endpoint": target.endpoint, "interval": interval,
            "min_bake_s": target.telemetry_resolution(), "telemetry_period_s": limits.telemetry_period_s,
            "telemetry_delay_s": limits.telemetry_delay_s}
    if challenger is None or (champion is not None and str(challenger.version) == str(champion.version)):
        return head | {"champion": str(champion.version) if champion else None, "challenger": None,
                       "note": "nothing to roll out: no challenger", "deploy": [], "steps": []}
    if champion is None:
        raise RolloutError(f"model {model_name!r} has a challenger (v{challenger.version}) but no champion; "
                           "deploy and alias a champion first: churnkit pipeline, then churnkit deploy")
    cv, nv = variant_name(champion.version), variant_name(challenger.version)
    base = target._live_for_plan()
    basis = target.plan_basis
    if cv not in base.variants:  # unreadable, or the champion is not deployed yet: plan as if it served 100 %
        basis += f"; planned as if champion v{champion.version} served 100% as {cv}"
        base = EndpointState(target.name, target.endpoint, {cv: VariantState(cv, str(champion.version), 100, "planned")},
                             details={"production_variants": [{"VariantName": cv, "ModelName": f"<model of {cv}>",
                                                               "InitialInstanceCount": 1, "InstanceType": "<as deployed>"}],
                                      "deployed_model_ids": {cv: f"<deployed model id of {cv}>"},
                                      "resource_name": f"<endpoint {target.endpoint!r}>", "deployments": {}})
    deploy = [] if nv in base.variants else target.plan(
        "deploy", model_uri=f"models:/{model_name}/{challenger.version}", variant=nv, weight=0, live=base)
    live = EndpointState(base.target, base.endpoint, dict(base.variants), [], base.url,
                         json.loads(json.dumps(base.details, default=str)))
    live.variants.setdefault(nv, VariantState(nv, str(challenger.version), 0, "planned"))
    live.details.setdefault("deployed_model_ids", {}).setdefault(nv, f"<deployed model id of {nv}>")
    out_steps, t = [], time.time()
    for w in plan_w:
        weights = {cv: 100 - w, nv: w}
        out_steps.append({
            "weight": w, "traffic": target.plan("set_traffic", weights=weights, live=live),
            "telemetry": target.telemetry_queries([cv, nv], t, t + interval),
            "judged_after_s": round(interval + limits.telemetry_delay_s, 3),
            "max_bake_s": round(float(interval) * 10, 3)})
        t += interval + limits.telemetry_delay_s
    return head | {"champion": str(champion.version), "challenger": str(challenger.version),
                   "live_state": basis, "deploy": deploy, "steps": out_steps,
                   "on_breach": target.plan("set_traffic", weights={cv: 100}, live=live),
                   "on_promotion": target.plan("set_traffic", weights={nv: 100}, live=live)}
