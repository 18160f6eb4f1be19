"""Rollout decisions as pure functions of recorded windows (no I/O): plans, checks, verdicts.

:func:`plan_steps` turns a strategy into the challenger's traffic weights; :func:`judge_step` compares
the challenger's :class:`Window` with the champion's on the same time window (error rate, p99 latency
ratio, prediction PSI, optionally input drift) and returns a :class:`Verdict`.

``failure_threshold`` is the number of failed checks that ends a rollout, counted over the whole
rollout: with the default 1, the first failed check rolls back; with 3, two failed checks (in any
steps) are tolerated and the third rolls back. A step whose checks fail while the count stays below
the threshold is recorded with ``ok: false`` and the rollout goes on.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Sequence

import numpy as np

from churnkit.deploy.telemetry import LIVE_STATUSES, Window
from churnkit.exceptions import ParameterError


STRATEGIES = ("canary", "linear")
CANARY_STEPS = (10, 100)
LINEAR_STEPS = (25, 50, 75, 100)
#: PSI of two samples of n scores each is biased upwards by about (bins - 1) * 2 / n; with 10 bins and
#: 200 scores a side that noise is below 0.1, well under the default max_prediction_psi of 0.2.
MIN_PSI_SCORES = 200
DECISIONS = ("promoted", "rolled_back", "none")


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
        if isinstance(w, str) and w.strip().isdigit():  # `-p steps 10,50,100` reaches a notebook as strings
            w = int(w)
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
    max_input_drift : float or None
        Optional: the share of input columns whose live values (the window's data capture) may have
        drifted from the challenger's training holdout (the monitor's per-column tests). None: off.
    """

    max_error_rate: float = 0.01
    max_p99_ratio: float = 1.5
    max_prediction_psi: float = 0.2
    failure_threshold: int = 1
    min_requests: int = 50
    p99_slack_ms: float = 10.0
    min_scores: int = MIN_PSI_SCORES
    max_input_drift: float | None = None

    def __post_init__(self):
        for name in ("max_error_rate", "max_p99_ratio", "max_prediction_psi", "p99_slack_ms"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
                raise ParameterError(f"{name} must be a non-negative number, got {v!r}", name=name)
        if not 0 <= self.max_error_rate <= 1:
            raise ParameterError(f"max_error_rate is a share from 0 to 1, got {self.max_error_rate!r}; e.g. 0.01 for 1 %",
                                 name="max_error_rate")
        if self.max_input_drift is not None and not (isinstance(self.max_input_drift, (int, float))
                                                     and 0 <= self.max_input_drift <= 1):
            raise ParameterError(f"max_input_drift is a share of columns from 0 to 1 (or None), got "
                                 f"{self.max_input_drift!r}", name="max_input_drift")
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
    from churnkit.monitor import counts_in_bins, population_stability_index, quantile_edges

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


def client_error_rate(w: Window) -> float:
    """The share of a window's requests answered 4xx."""
    return w.client_errors / w.requests if w.requests else 0.0


def check_client_errors(champion: Window, challenger: Window, max_error_rate: float) -> Check:
    """Fails when the challenger's 4xx share exceeds the champion's on the same window by more than ``max_error_rate``.

    Both variants get the same traffic, so a client mistake is refused by both alike; a challenger that
    refuses what the champion scores (a model trained on a column the traffic lacks) is the challenger's fault.
    """
    rate, base = client_error_rate(challenger), client_error_rate(champion)
    ok = rate - base <= max_error_rate
    detail = (f"client errors (4xx) {rate:.2%} ({challenger.client_errors}/{challenger.requests}) vs champion "
              f"{base:.2%} on the same traffic, limit +{max_error_rate:.2%}")
    return Check("client_errors", rate, base + max_error_rate, ok, detail)


#: The challenger must return at least this share of the champion's scores per answered request.
MIN_SCORE_COVERAGE = 0.5


def check_scored_share(champion: Window, challenger: Window) -> Check:
    """Fails when the challenger's answers carry fewer scores than the champion's on the same traffic.

    The value is the challenger's scores per answered request over the champion's (1.0: alike); below
    ``MIN_SCORE_COVERAGE`` the challenger answers without predictions. When it answered nothing, or the
    champion's window has no scores to compare with, the check cannot be computed and does not pass.
    """
    if not champion.answered or not champion.scores or not challenger.answered:
        return Check("scored_share", None, MIN_SCORE_COVERAGE, False,
                     f"scored share could not be computed: challenger answered {challenger.answered} of "
                     f"{challenger.requests} requests, champion {champion.answered} with {len(champion.scores)} scores")
    coverage = (len(challenger.scores) / challenger.answered) / (len(champion.scores) / champion.answered)
    ok = coverage >= MIN_SCORE_COVERAGE
    detail = (f"challenger returned {len(challenger.scores)} scores for {challenger.answered} answered requests, "
              f"{coverage:.0%} of the champion's scores per answer (limit {MIN_SCORE_COVERAGE:.0%})")
    return Check("scored_share", float(coverage), MIN_SCORE_COVERAGE, ok, detail)


def check_timeouts(champion: Window, challenger: Window) -> Check:
    """Fails when the challenger timed out on a larger share of its requests than the champion (a hung variant)."""
    rate = challenger.timeouts / challenger.requests if challenger.requests else 0.0
    base = champion.timeouts / champion.requests if champion.requests else 0.0
    ok = not (challenger.timeouts and rate > base)
    detail = (f"timeouts {rate:.2%} ({challenger.timeouts}/{challenger.requests}) vs champion {base:.2%} "
              f"({champion.timeouts}/{champion.requests})")
    return Check("timeouts", rate, base, ok, detail)


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

    A PSI that cannot be computed (either side has fewer than ``min_scores`` scores) is *not* a pass:
    the check fails with value None. :func:`enough_traffic` extends the bake until both sides have
    the scores, so this happens only to a challenger that answers without scores.
    """
    n_ch, n_cp = len(challenger.scores), len(champion.scores)
    if min(n_ch, n_cp) < max(min_scores, 1):
        return Check("prediction_psi", None, max_psi, False,
                     f"prediction PSI could not be computed: {n_ch} challenger and {n_cp} champion scores "
                     f"(need {max(min_scores, 1)} each)")
    value = psi(champion.scores, challenger.scores)
    ok = value <= max_psi
    return Check("prediction_psi", value, max_psi, ok, f"prediction PSI {value:.3f} (limit {max_psi})")


def check_input_drift(reference, current, max_drift_share: float) -> Check:
    """Fails when more than ``max_drift_share`` of the input columns drifted from ``reference``.

    ``reference`` is the challenger's training holdout, ``current`` the inputs served in the window;
    the per-column tests are the monitor's (KS / chi-squared on small samples, effect sizes above).
    """
    from churnkit.monitor import build_monitor_report

    if current is None or len(current) == 0:
        return Check("input_drift", None, max_drift_share, True, "input drift not judged: no captured inputs in the window")
    report = build_monitor_report(reference, current, workers=1)
    drifted = sorted(name for name, col in report.columns.items() if col["drift"])
    share = float(report.share_of_drifted_columns)
    detail = (f"input drift in {len(drifted)}/{len(report.columns)} columns" + (f" ({', '.join(drifted[:6])})" if drifted else "")
              + f" against the challenger's training holdout, limit share {max_drift_share:g}")
    return Check("input_drift", share, max_drift_share, share <= max_drift_share, detail)


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
    """True when both variants saw at least ``min_requests`` requests and, where the champion answered with
    scores, both hold ``min_scores`` scores (a step may be judged; otherwise the bake extends)."""
    requests = challenger.requests >= thresholds.min_requests and champion.requests >= thresholds.min_requests
    if not requests or not champion.scores:
        return requests
    need = max(thresholds.min_scores, 1)
    return len(champion.scores) >= need and (len(challenger.scores) >= need or not check_scored_share(champion, challenger).ok)


def count_checks(champion: Window, challenger: Window, thresholds: Thresholds) -> list[Check]:
    """The checks on counts (5xx and timeouts, 4xx, scored share): judged as soon as ``min_requests`` arrived."""
    return [check_error_rate(champion, challenger, thresholds.max_error_rate),
            check_client_errors(champion, challenger, thresholds.max_error_rate),
            check_scored_share(champion, challenger)]


def judge_step(champion: Window, challenger: Window, thresholds: Thresholds = Thresholds(),
               challenger_status: str = "ready", extra: Sequence[Check] = ()) -> Verdict:
    """Compare the challenger with the champion on the same window; every check is reported.

    ``enough`` is False when either side saw fewer than ``min_requests`` requests: the caller extends
    the bake. A challenger that is not live fails at once, whatever the traffic. ``extra`` checks
    (input drift) are added when there was enough traffic.
    """
    checks = [check_live(challenger_status)]
    enough = enough_traffic(champion, challenger, thresholds)
    if enough:
        checks.extend(count_checks(champion, challenger, thresholds))
        checks.append(check_p99(champion, challenger, thresholds.max_p99_ratio, thresholds.p99_slack_ms))
        checks.append(check_prediction_psi(champion, challenger, thresholds.max_prediction_psi, thresholds.min_scores))
        checks.extend(extra)
    note = "" if enough else (f"not enough traffic yet: challenger {challenger.requests}, champion "
                              f"{champion.requests} requests (min_requests {thresholds.min_requests}); "
                              f"{len(challenger.scores)} and {len(champion.scores)} scores (min_scores "
                              f"{thresholds.min_scores})")
    return Verdict(tuple(checks), enough, note)


def early_breach(champion: Window, challenger: Window, thresholds: Thresholds, challenger_status: str = "ready") -> Verdict | None:
    """A verdict that may end a bake early: a dead challenger, a challenger that timed out (at once: each
    timeout cost a client the router's per-try timeout), or 5xx, 4xx or unscored answers over at least
    ``min_requests``.

    Latency and PSI wait for the end of the bake (they are statistics of the whole window).
    """
    live = check_live(challenger_status)
    if not live.ok:
        return Verdict((live,), True)
    hung = check_timeouts(champion, challenger)
    if not hung.ok:
        return Verdict((live, hung), True)
    if challenger.requests >= max(thresholds.min_requests, 1):
        failed = [c for c in count_checks(champion, challenger, thresholds) if not c.ok and c.value is not None]
        if failed:
            return Verdict((live, *failed), True)
    return None


def should_roll_back(failed_before: int, verdict: Verdict, thresholds: Thresholds) -> bool:
    """True when the failed checks so far plus this verdict's reach ``failure_threshold``."""
    return failed_before + len(verdict.failed) >= thresholds.failure_threshold
