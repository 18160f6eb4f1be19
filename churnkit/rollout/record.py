"""The rollout decision record (DESIGN §7): its steps, the MLflow run and version history it is kept in,
and the timeline figure. ``churnkit.rollout`` re-exports these names."""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from churnkit import registry, tracking
from churnkit.clock import utcnow
from churnkit.config import DEFAULT_MODEL_NAME, TAG, Config, load_config
from churnkit.deploy.telemetry import Window
from churnkit.rollout.checks import Verdict



def _num(x: float | None, digits: int = 4) -> float | None:
    return None if x is None or not math.isfinite(x) else round(float(x), digits)


def _sample(scores, k: int = 500) -> list[float]:
    """At most ``k`` of a window's scores, evenly spaced in sorted order (keeps the distribution, not the size)."""
    if not len(scores):
        return []
    x = np.sort(np.asarray(scores, dtype=float))
    idx = np.unique(np.linspace(0, len(x) - 1, min(k, len(x))).round().astype(int))
    return [round(float(v), 5) for v in x[idx]]


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
    timeouts: int = 0
    client_errors: int = 0
    champion_client_errors: int = 0
    #: where each variant's numbers come from (``Window.source``): ``{"challenger": ..., "champion": ...}``
    sources: dict = field(default_factory=dict)
    #: PSI of the challenger's live scores against the champion's on the window, and the two models'
    #: PSI on the same holdout at registration (what the live one is judged against)
    champion_divergence: float | None = None
    offline_divergence: float | None = None
    #: how many looks the step took, and the scores of each variant (for the notebook's distribution plot)
    looks: int = 0
    live_scores: list = field(default_factory=list)
    champion_scores: list = field(default_factory=list)

    @classmethod
    def from_windows(cls, weight: int, champion: Window, challenger: Window, verdict: Verdict, *, ok: bool,
                     seconds: float, started: str) -> "StepRecord":
        psi_check = verdict.check("prediction_psi")
        div = verdict.check("champion_divergence")
        offline = div.expected if div is not None else None
        return cls(
            weight=int(weight), requests=challenger.requests, errors=challenger.failures,
            p99_ms=_num(challenger.p99_ms, 3), prediction_psi=_num(psi_check.value if psi_check else None),
            ok=bool(ok), champion_requests=champion.requests, champion_errors=champion.failures,
            champion_p99_ms=_num(champion.p99_ms, 3), seconds=round(float(seconds), 3), started=started,
            reason=verdict.reason, checks=[c.to_dict() for c in verdict.checks], timeouts=challenger.timeouts,
            client_errors=challenger.client_errors, champion_client_errors=champion.client_errors,
            sources={"challenger": challenger.source, "champion": champion.source},
            champion_divergence=_num(div.value if div is not None else None), offline_divergence=_num(offline),
            live_scores=_sample(challenger.scores), champion_scores=_sample(champion.scores),
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
        known = set(StepRecord.__dataclass_fields__)
        steps = [StepRecord(**{k: v for k, v in s.items() if k in known}) for s in d.get("steps", [])]
        return cls(d["decision"], d.get("reason", ""), d.get("champion"), d.get("challenger"), steps,
                   d.get("started", ""), d.get("finished", ""))

    def summary(self) -> str:
        """A few lines for the CLI and the notebook."""
        if self.decision == "none":
            return self.reason
        head = {"promoted": f"promoted v{self.challenger} (was v{self.champion})",
                "rolled_back": f"rolled back v{self.challenger}; v{self.champion} serves",
                "held": f"held v{self.challenger} for review; traffic stays split"}[self.decision]
        lines = [f"{head}: {self.reason}"]
        for s in self.steps:
            psi_txt = "n/a" if s.prediction_psi is None else f"{s.prediction_psi:.3f}"
            p99_txt = "n/a" if s.p99_ms is None else f"{s.p99_ms:.1f} ms"
            lines.append(f"  {s.weight:>3}%  {'ok ' if s.ok else 'FAIL'}  {s.requests} req, {s.errors} errors, "
                         f"p99 {p99_txt}, PSI {psi_txt}  ({s.seconds:.1f} s)")
        if self.replay is not None:
            lines.append(f"  replayed traffic: {self.replay.summary()}")
        return "\n".join(lines)

    def checks_table(self):
        """Every check of every step with its value, limit, reference, sample size and verdict."""
        import pandas as pd

        cols = ["step", "weight", "check", "value", "limit", "reference", "n", "verdict"]
        rows = [{"step": i + 1, "weight": s.weight, "check": c.get("name"), "value": c.get("value"),
                 "limit": c.get("limit"), "reference": c.get("reference", ""), "n": c.get("n"),
                 "verdict": c.get("verdict") or ("pass" if c.get("ok") else "fail")}
                for i, s in enumerate(self.steps) for c in s.checks]
        return pd.DataFrame(rows, columns=cols)

    def table(self):
        """One row per step (the notebook's display)."""
        import pandas as pd

        cols = ["weight", "requests", "errors", "p99_ms", "champion_requests", "champion_p99_ms", "prediction_psi",
                "champion_divergence", "offline_divergence", "ok", "seconds", "reason"]
        return pd.DataFrame([s.to_dict() for s in self.steps], columns=cols)



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


    config = config or load_config()
    exp_id = tracking.setup_tracking(config)
    c = tracking.client(config)
    active = mlflow.active_run()
    if active is not None:
        run_id = active.info.run_id
    else:
        tags = {"mlflow.runName": "rollout", TAG + "notebook": "rollout",
                TAG + "pipeline_id": config.pipeline_id}
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
        c.set_tag(run_id, TAG + key, value)
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

    record.run_id = log_record(record, config)
    if record.decision == "none" or not record.challenger:
        return record
    ch, cp = record.challenger, record.champion
    for key, value in (("rollout_decision", record.decision), ("rollout_reason", record.reason[:4000]),
                       ("rollout_run_id", record.run_id)):
        registry.set_version_tag(ch, key, value, model_name, config)
    steps = ", ".join(f"{s.weight}% {'ok' if s.ok else 'failed'}" for s in record.steps) or "no steps"
    run = f"decision record in MLflow run {record.run_id}"
    if record.decision == "promoted":
        registry.record_history(model_name, ch, f"rollout on {where}: promoted over v{cp} ({steps}); {run}", config)
        if cp:
            registry.record_history(model_name, cp, f"rollout on {where}: replaced by v{ch}, kept as previous; {run}", config)
    elif record.decision == "held":
        registry.record_history(model_name, ch, f"rollout on {where}: held for review ({steps}): {record.reason}; {run}",
                                config)
    else:
        registry.record_history(model_name, ch, f"rollout on {where}: rolled back ({steps}): {record.reason}; {run}", config)
        if cp:
            registry.record_history(model_name, cp, f"rollout on {where}: serves 100% again after v{ch} was rolled "
                                                    f"back; {run}", config)
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


def plot_judgment(record: RolloutRecord, reference=None):
    """Per step: the challenger's live score distribution over the one its reference expects (its holdout
    through the serving scorer), and the live divergence from the champion against the offline one."""
    import matplotlib.pyplot as plt

    steps = record.steps or []
    fig, axes = plt.subplots(max(len(steps), 1), 2, figsize=(10, 2.8 * max(len(steps), 1)), squeeze=False)
    bins = np.linspace(0, 1, 26)
    for i, s in enumerate(steps):
        ax = axes[i][0]
        if reference is not None:
            ax.hist(reference.scores, bins=bins, density=True, color="lightgrey", label=f"expected: v{record.challenger} "
                    f"holdout ({reference.n})")
        if s.live_scores:
            ax.hist(s.live_scores, bins=bins, density=True, histtype="step", linewidth=2, color="tab:orange",
                    label=f"live at {s.weight}% ({s.requests} requests)")
        psi = "n/a" if s.prediction_psi is None else f"{s.prediction_psi:.3f}"
        ax.set_title(f"step {i + 1} ({s.weight}%): challenger scores, PSI {psi} against its reference", fontsize=9)
        ax.set_xlabel("churn probability")
        ax.legend(fontsize=7)
        bx = axes[i][1]
        div = next((c for c in s.checks if c.get("name") == "champion_divergence"), None)
        values = [s.offline_divergence or 0.0, s.champion_divergence or 0.0]
        colors = ["lightgrey", "tab:green" if (div or {}).get("verdict") in ("pass", None) else "tab:red"]
        bx.bar(["offline (same holdout)", "live (same window)"], values, color=colors)
        if div is not None and div.get("limit") is not None:
            bx.axhline(div["limit"], color="grey", linestyle="--", linewidth=1, label=f"limit {div['limit']:.3f}")
            bx.legend(fontsize=7)
        bx.set_title(f"divergence from v{record.champion}: {(div or {}).get('verdict', 'not judged')}", fontsize=9)
        bx.set_ylabel("PSI")
    if not steps:
        axes[0][0].axis("off")
        axes[0][1].axis("off")
        axes[0][0].text(0.5, 0.5, record.reason or record.decision, ha="center", va="center", fontsize=10)
    fig.tight_layout()
    return fig


def rollout_history(record: RolloutRecord, model_name: str = DEFAULT_MODEL_NAME, config: Config | None = None):
    """The history of the record's versions, oldest first: which version served when, and why it changed."""
    import pandas as pd


    rows = [{"time": h["time"], "version": v, "event": h["event"]}
            for v in dict.fromkeys(x for x in (record.champion, record.challenger) if x)
            for h in registry.version_history(v, model_name, config)]
    return pd.DataFrame(rows, columns=["time", "version", "event"]).sort_values("time", kind="stable").reset_index(drop=True)
