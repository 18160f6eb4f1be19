"""Rollout decisions as pure functions of recorded windows (no I/O): plans, checks, verdicts.

:func:`plan_steps` turns a strategy into the challenger's traffic weights; :func:`judge_step` is the one
decision every target's rollout makes: it takes the champion's and the challenger's :class:`Window` on the
same time window and the challenger's :class:`~churnkit.reference.Reference` (its holdout scores through
the serving scorer, and the champion's on the same rows) and returns a :class:`Verdict` whose checks each
carry a value, a limit, the reference it was compared with, the sample size and a verdict:

* errors (5xx, timeouts), 4xx, answers without scores and p99 latency against the champion on the window;
* prediction drift: the challenger's live scores against its *own* holdout scores; it fails only when the
  PSI is above ``max_prediction_psi`` **and** above what chance gives for the observed sizes
  (:func:`chance_psi`); the KS statistic is reported beside it;
* calibration: the live mean score within max(0.03, 3 standard errors) of the holdout mean;
* divergence from the champion: the PSI between the two variants' live scores against the offline
  divergence of the two models on the same holdout plus chance; beyond it the rollout holds for review
  (``on_divergence="rollback"``: rolls back), never only because the models differ as offline evaluation showed;
* serving parity (:func:`check_parity`) and, optionally, input drift, computed by the controller.

A step may look several times during its bake (``looks``); the error budget ``alpha`` is split across the
looks (Bonferroni), so a clearly broken challenger is rolled back at the first look with enough data while
promotion waits for the whole bake. Too little data at the bake's cap is *inconclusive*, never a pass.

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
from churnkit.reference import BINS, decile_edges, psi_on_edges


STRATEGIES = ("canary", "linear")
CANARY_STEPS = (10, 100)
LINEAR_STEPS = (25, 50, 75, 100)
#: PSI of n live scores against m reference scores is about (1/n + 1/m) chi-squared(bins - 1) by chance; its
#: 99th percentile at 200 scores is about 0.11, under the default max_prediction_psi of 0.2.
MIN_PSI_SCORES = 200
#: ``held``: traffic left as it was for a person to decide (a divergence beyond the offline one, or too
#: little data with ``on_inconclusive="hold"``).
DECISIONS = ("promoted", "rolled_back", "held", "none")
#: What a check concluded: ``fail`` counts towards a rollback, ``hold`` holds the rollout for review,
#: ``warn`` is reported only, ``not_judged`` had nothing to judge (said why).
VERDICTS = ("pass", "fail", "hold", "warn", "not_judged")
#: Calibration: the live mean score may differ from the holdout mean by max(this, 3 standard errors).
MIN_CALIBRATION_GAP = 0.03
#: Serving parity: a served score and the registered artifact's score of the same row may differ by this.
PARITY_TOLERANCE = 1e-6


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
        PSI of the challenger's live scores against its own reference (its holdout scores through the
        serving scorer, 10 bins on their deciles); it fails only above this *and* above the chance level.
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
    alpha : float
        The chance of a false alarm a step may spend (0.01), split across its ``looks``.
    looks : int
        How many times a step is judged during its bake (evenly spaced; the last at its end).
    on_divergence : {"hold", "rollback"}
        What a live divergence from the champion beyond the offline one (plus chance) does.
    on_inconclusive : {"rollback", "hold"}
        What too little data at the end of a bake's cap does (never a promotion).
    """

    max_error_rate: float = 0.01
    max_p99_ratio: float = 1.5
    max_prediction_psi: float = 0.2
    failure_threshold: int = 1
    min_requests: int = 50
    p99_slack_ms: float = 10.0
    min_scores: int = MIN_PSI_SCORES
    max_input_drift: float | None = None
    alpha: float = 0.01
    looks: int = 3
    on_divergence: str = "hold"
    on_inconclusive: str = "rollback"

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
        for name in ("failure_threshold", "min_requests", "min_scores", "looks"):
            v = getattr(self, name)
            low = 1 if name in ("failure_threshold", "looks") else 0
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < low:
                raise ParameterError(f"{name} must be an integer of at least {low}, got {v!r}", name=name)
        if isinstance(self.alpha, bool) or not isinstance(self.alpha, (int, float)) or not 0 < self.alpha < 0.5:
            raise ParameterError(f"alpha is the chance of a false alarm per step, above 0 and below 0.5, got "
                                 f"{self.alpha!r}; e.g. 0.01", name="alpha")
        for name, allowed in (("on_divergence", ("hold", "rollback")), ("on_inconclusive", ("rollback", "hold"))):
            if getattr(self, name) not in allowed:
                raise ParameterError(f"{name} must be one of {allowed!r}, got {getattr(self, name)!r}", name=name,
                                     valid=list(allowed))
        floor = chance_psi(max(self.min_scores, 1), math.inf, alpha=self.alpha / self.looks)
        if self.max_prediction_psi < floor:
            need = math.ceil(chance_psi(1, math.inf, alpha=self.alpha / self.looks) / max(self.max_prediction_psi, 1e-9))
            raise ParameterError(
                f"max_prediction_psi {self.max_prediction_psi!r} is below the chance level of PSI for min_scores "
                f"{self.min_scores} ({floor:.3f}, the {1 - self.alpha / self.looks:.2%} point of (1/n) chi-squared"
                f"({BINS - 1})): such a limit never decides anything; raise it to at least {floor:.3f} or raise "
                f"min_scores to {need}", name="max_prediction_psi")

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Check:
    """One comparison: its value, its limit, what it was compared with (``reference``), the sample size
    ``n``, its ``verdict`` (one of :data:`VERDICTS`) and whether it passed (``ok``: False counts towards a
    rollback)."""

    name: str
    value: float | None
    limit: float | None
    ok: bool
    detail: str
    reference: str = ""
    n: int | None = None
    verdict: str = ""
    #: the reference's own number where it has one (the offline divergence, the holdout mean)
    expected: float | None = None

    def __post_init__(self):
        if not self.verdict:
            object.__setattr__(self, "verdict", "pass" if self.ok else "fail")

    def to_dict(self) -> dict:
        d = asdict(self)
        for k in ("value", "limit"):
            if isinstance(d[k], float) and not math.isfinite(d[k]):
                d[k] = None
        return d


def psi(reference: Sequence[float], current: Sequence[float], bins: int = 10) -> float:
    """Population stability index of ``current`` against ``reference`` (the monitor's: reference deciles, 1e-4 floor)."""
    from churnkit.monitor import quantile_edges

    return psi_on_edges(reference, current, quantile_edges(np.sort(np.asarray(reference, dtype=float)), bins))


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


def chance_psi(n: float, m: float, *, alpha: float = 0.01, bins: int = BINS, offline: float = 0.0) -> float:
    """The ``1 - alpha`` point of the PSI of n scores against m scores when only chance separates them.

    PSI over ``bins`` quantile bins is about ``s * chi2(bins - 1)`` with ``s = 1/n + 1/m`` when both samples
    come from one distribution; when the two distributions differ by a PSI of ``offline`` it is about
    ``s * ncx2(bins - 1, offline / s)`` (a non-central chi-squared), whose quantile is used then.
    """
    from scipy.stats import chi2, ncx2

    s = (1.0 / n if n else math.inf) + (1.0 / m if m and math.isfinite(m) else 0.0)
    if not math.isfinite(s):
        return math.inf
    df = max(int(bins) - 1, 1)
    if offline > 0:
        return float(s * ncx2.ppf(1 - alpha, df, offline / s))
    return float(s * chi2.ppf(1 - alpha, df))


def _scores_of(w: Window) -> np.ndarray:
    return np.asarray(w.scores, dtype=float)


def _reference_label(reference) -> str:
    where = "its own holdout" if reference.origin == "registration" else "its recorded holdout"
    return f"v{reference.version or '?'} {where}: {reference.n} scores through the serving scorer"


def check_prediction_psi(champion: Window, challenger: Window, max_psi: float, min_scores: int = MIN_PSI_SCORES, *,
                         reference=None, alpha: float = 0.01) -> Check:
    """Prediction drift: the challenger's live scores against ``reference`` (its own holdout scores).

    Fails only when the PSI is above ``max_psi`` **and** above the chance level for the observed sizes
    (:func:`chance_psi` at ``alpha``). Without a ``reference`` the champion's live scores are the reference
    (the rule before references; the bench compares the two). A PSI that cannot be computed (fewer than
    ``min_scores`` live scores) is *not* a pass: the check fails with value None.
    """
    live = _scores_of(challenger)
    base = _scores_of(champion) if reference is None else np.asarray(reference.scores, dtype=float)
    label = "the champion's live scores on the same window" if reference is None else _reference_label(reference)
    need = max(min_scores, 1)
    if len(live) < need or (reference is None and len(base) < need):
        return Check("prediction_psi", None, max_psi, False,
                     f"prediction PSI could not be computed: {len(live)} challenger scores"
                     + (f" and {len(base)} champion scores" if reference is None else "") + f" (need {need})",
                     label, len(live), "fail")
    edges = decile_edges(base)
    value = psi_on_edges(base, live, edges)
    if reference is None:
        ok = value <= max_psi
        return Check("prediction_psi", value, max_psi, ok, f"prediction PSI {value:.3f} against {label} "
                     f"(limit {max_psi})", label, len(live))
    chance = chance_psi(len(live), len(base), alpha=alpha, bins=len(edges) + 1)
    limit = max(max_psi, chance)
    ok = value <= limit
    detail = (f"prediction PSI {value:.3f} of {len(live)} live scores against {label} (limit {limit:.3f}: "
              f"max_prediction_psi {max_psi:g}, chance level {chance:.3f})")
    return Check("prediction_psi", value, limit, ok, detail, label, len(live))


def check_prediction_ks(challenger: Window, reference, alpha: float = 0.01) -> Check:
    """The KS statistic of the live scores against the reference's (reported beside the PSI, never decisive)."""
    from churnkit.monitor.drift import ks_2sample

    live, ref = _scores_of(challenger), np.asarray(reference.scores, dtype=float)
    label = _reference_label(reference)
    if len(live) < 2:
        return Check("prediction_ks", None, None, True, "KS not computed: fewer than 2 live scores", label, len(live),
                     "not_judged")
    stat, p = ks_2sample(ref, live)
    critical = math.sqrt(-math.log(alpha / 2) / 2) * math.sqrt((len(live) + len(ref)) / (len(live) * len(ref)))
    verdict = "pass" if stat <= critical else "warn"
    return Check("prediction_ks", stat, critical, True, f"KS {stat:.3f} (p {p:.2g}) against {label}, critical "
                 f"{critical:.3f} at alpha {alpha:.3g}; reported beside the PSI", label, len(live), verdict)


def check_calibration(challenger: Window, reference) -> Check:
    """The live mean score within max(0.03, 3 standard errors) of the holdout mean through the serving scorer."""
    live, ref = _scores_of(challenger), np.asarray(reference.scores, dtype=float)
    label = f"mean {float(np.mean(ref)):.3f} of " + _reference_label(reference)
    if not len(live):
        return Check("calibration", None, None, True, "calibration not judged: no live scores", label, 0, "not_judged")
    gap = abs(float(np.mean(live)) - float(np.mean(ref)))
    se = math.sqrt(float(np.var(ref, ddof=1)) / len(ref) + float(np.var(live, ddof=1) if len(live) > 1 else 0) / len(live))
    limit = max(MIN_CALIBRATION_GAP, 3 * se)
    ok = gap <= limit
    return Check("calibration", gap, limit, ok, f"mean live score {float(np.mean(live)):.3f} vs holdout mean "
                 f"{float(np.mean(ref)):.3f} (gap {gap:.3f}, limit {limit:.3f})", label, len(live),
                 expected=float(np.mean(ref)))


def check_champion_divergence(champion: Window, challenger: Window, reference, *, alpha: float = 0.01,
                              on_divergence: str = "hold") -> Check:
    """Live divergence from the champion (PSI of the challenger's live scores against the champion's on the
    same window) against the offline divergence of the two models on the same holdout plus chance.

    Beyond it the verdict is ``hold`` (``on_divergence="rollback"``: ``fail``); within it the two models
    differ as offline evaluation predicted, which is never a reason to roll back.
    """
    ch, cp = _scores_of(challenger), _scores_of(champion)
    offline = (reference.offline_divergence or {}).get("psi") if reference is not None else None
    if offline is None:
        why = getattr(reference, "note", "") or "no champion was scored on the holdout at registration"
        return Check("champion_divergence", None, None, True, f"divergence from the champion not judged: {why}",
                     "no offline divergence", len(ch), "not_judged")
    label = f"offline PSI {offline:.3f} of v{reference.version or '?'} against v{reference.champion_version} on " \
            f"{reference.offline_divergence.get('rows', reference.n)} holdout rows"
    if len(ch) < 2 or len(cp) < 2:
        return Check("champion_divergence", None, None, True, "divergence from the champion not judged: a variant has "
                     "no live scores", label, len(ch), "not_judged")
    edges = decile_edges(cp)
    value = psi_on_edges(cp, ch, edges)
    rows = int(reference.offline_divergence.get("rows", reference.n))
    # the live PSI's own noise (both windows) plus the offline estimate's (both models on the same rows)
    s_n = 1.0 / (1.0 / len(ch) + 1.0 / len(cp) + 2.0 / rows)
    limit = chance_psi(s_n, math.inf, alpha=alpha, bins=len(edges) + 1, offline=float(offline))
    if value <= limit:
        return Check("champion_divergence", value, limit, True, f"live divergence from the champion PSI {value:.3f} "
                     f"is what offline evaluation predicted ({label}; limit {limit:.3f} with chance)", label, len(ch),
                     expected=float(offline))
    verdict = "fail" if on_divergence == "rollback" else "hold"
    return Check("champion_divergence", value, limit, verdict != "fail", f"live divergence from the champion PSI "
                 f"{value:.3f} is beyond the offline divergence plus chance ({label}; limit {limit:.3f})", label,
                 len(ch), verdict, float(offline))


def check_parity(served, rescored, *, tolerance: float = PARITY_TOLERANCE, reference: str = "") -> Check:
    """Serving parity: scores the challenger served against the registered artifact's scores of the same rows.

    ``served`` and ``rescored`` are aligned arrays (or None when the target captured no rows: not judged).
    """
    if served is None or rescored is None or not len(served):
        return Check("serving_parity", None, tolerance, True, "serving parity not judged: the target captured no "
                     "served rows with their scores in the window", reference, 0, "not_judged")
    a, b = np.asarray(served, dtype=float), np.asarray(rescored, dtype=float)
    diff = float(np.max(np.abs(a - b))) if len(a) else 0.0
    bad = int(np.sum(np.abs(a - b) > tolerance))
    ok = diff <= tolerance
    return Check("serving_parity", diff, tolerance, ok, f"serving parity: {len(a)} served rows re-scored with the "
                 f"registered artifact, max difference {diff:.3g} ({bad} beyond {tolerance:g})", reference, len(a))


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
    def held(self) -> list[Check]:
        """Checks that hold the rollout for a person to review (not a rollback, not a promotion)."""
        return [c for c in self.checks if c.ok and c.verdict == "hold"]

    @property
    def ok(self) -> bool:
        return self.enough and not self.failed and not self.held

    @property
    def reason(self) -> str:
        if self.failed:
            return "; ".join(c.detail for c in self.failed)
        if self.held:
            return "; ".join(c.detail for c in self.held)
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
               challenger_status: str = "ready", extra: Sequence[Check] = (), *, reference=None) -> Verdict:
    """The one rollout decision of every target: the challenger's window against the champion's on the same
    time window and against ``reference`` (its :class:`~churnkit.reference.Reference`); every check is reported.

    ``enough`` is False when either side saw fewer than ``min_requests`` requests or ``min_scores`` scores:
    the caller extends the bake, and at its cap calls the step inconclusive. A challenger that is not live
    fails at once, whatever the traffic. Each statistical check spends ``alpha / looks`` of the step's error
    budget, so the same function serves every look of a bake. ``extra`` checks (serving parity, input drift)
    are added when there was enough traffic. Without ``reference`` the prediction check compares with the
    champion's live scores at the fixed limit (the rule before references), and no other score check runs.
    """
    checks = [check_live(challenger_status)]
    enough = enough_traffic(champion, challenger, thresholds)
    if enough:
        alpha = thresholds.alpha / thresholds.looks
        checks.extend(count_checks(champion, challenger, thresholds))
        checks.append(check_p99(champion, challenger, thresholds.max_p99_ratio, thresholds.p99_slack_ms))
        checks.append(check_prediction_psi(champion, challenger, thresholds.max_prediction_psi, thresholds.min_scores,
                                           reference=reference, alpha=alpha))
        if reference is not None and challenger.scores:
            checks.append(check_prediction_ks(challenger, reference, alpha))
            checks.append(check_calibration(challenger, reference))
            checks.append(check_champion_divergence(champion, challenger, reference, alpha=alpha,
                                                    on_divergence=thresholds.on_divergence))
        checks.extend(extra)
    note = "" if enough else f"not enough traffic yet: {shortfall(champion, challenger, thresholds)}"
    return Verdict(tuple(checks), enough, note)


def shortfall(champion: Window, challenger: Window, thresholds: Thresholds) -> str:
    """What a step still lacks, e.g. ``83 of 200 scores`` (the challenger's first, then the champion's)."""
    need = max(thresholds.min_scores, 1)
    short = []
    for who, w in (("challenger", challenger), ("champion", champion)):
        if w.requests < thresholds.min_requests:
            short.append(f"{w.requests} of {thresholds.min_requests} requests ({who})")
        elif champion.scores and len(w.scores) < need and (who == "champion" or check_scored_share(champion, w).ok):
            short.append(f"{len(w.scores)} of {need} scores ({who})")
    return "; ".join(short) or "enough data"


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
