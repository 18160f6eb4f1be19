"""Rollout judgment, simulated (no servers): how often each rule rolls back good and broken challengers.

Real models are trained on synthetic months (churnkit.data); each scenario gives a champion, a challenger
with its reference (its holdout scored through the serving scorer, the champion's scores on the same rows)
and a pool of live traffic as production would send it. A simulated step draws N live scores of the
challenger (and 4 N of the champion on the same window) and is judged

* by the new judgment (``judge_step`` with the reference, ``looks`` looks at N/3, 2N/3 and N, the error
  budget split across them; a rollback is any failed check at any look), and
* by the rule before references (PSI of the challenger's scores against the champion's, limit 0.2).

Good challengers: same concept (a retrain), concept drift, churn rate x1.5, logistic regression -> HGB.
Broken ones: units skew (trained on an export in cents, served dollars), a category mapping shuffled at
serving, constant scores, inverted scores. Goal: at most 1 % false rollbacks on good challengers and at
least 99 % detection of broken ones at 500 live scores.

    python bench/rollout_judge.py [--steps 500] [--sizes 200,500,2000]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from churnkit.data import load_table, synth_month  # noqa: E402
from churnkit.deploy.telemetry import Window  # noqa: E402
from churnkit.model import split_holdout, train_model  # noqa: E402
from churnkit.reference import Reference, build_reference  # noqa: E402
from churnkit.rollout.checks import Thresholds, judge_step  # noqa: E402
from churnkit.serve.scorer import Scorer  # noqa: E402

ROWS = 4000  # a demo month: 1,000 holdout rows in the reference
TRAFFIC = 12000


class _Loaded:
    """What build_reference needs of a champion (a LoadedModel's pipeline, schema, version)."""

    def __init__(self, pipeline, schema, version="1"):
        self.pipeline, self.schema, self.version, self.compiled, self.threshold = pipeline, schema, version, None, 0.5


def _fit(month=1, seed=0, drift=None, model="logreg", charges_unit="dollars", churn_boost=1.0):
    frame = synth_month(rows=ROWS, month=month, seed=seed, drift=drift, charges_unit=charges_unit)
    if churn_boost != 1.0:
        frame = _boost(frame, churn_boost, seed)
    ds = load_table(frame)
    split = split_holdout(ds, seed=seed)
    return train_model(split, ds.schema, model=model, seed=seed), ds.schema, split


def _boost(frame: pd.DataFrame, factor: float, seed: int) -> pd.DataFrame:
    """The month with its churn rate times ``factor`` (churners resampled in, others out; same size)."""
    rng = np.random.default_rng(seed + 99)
    yes, no = frame[frame["churn"] == "Yes"], frame[frame["churn"] == "No"]
    n_yes = min(round(len(yes) * factor), len(frame) - 1)
    out = pd.concat([yes.sample(n_yes, replace=True, random_state=rng.integers(1 << 31)),
                     no.sample(len(frame) - n_yes, replace=False, random_state=rng.integers(1 << 31))])
    out["customer_id"] = [f"{i}-b" for i in range(len(out))]
    return out.sample(frac=1.0, random_state=1).reset_index(drop=True)


def _traffic(month=1, drift=None, churn_boost=1.0, seed=7) -> pd.DataFrame:
    frame = synth_month(rows=TRAFFIC, month=month, seed=seed, drift=drift)
    return _boost(frame, churn_boost, seed) if churn_boost != 1.0 else frame


def _score(pipeline, schema, frame) -> np.ndarray:
    return np.asarray(Scorer(pipeline, schema).predict_frame(frame.drop(columns=["churn"])), dtype=float)


def scenarios():
    """name -> (good?, reference, challenger live pool, champion live pool)."""
    champ, champ_schema, _ = _fit(1, 0)
    champion = _Loaded(champ, champ_schema)
    out = {}

    def add(name, good, pipeline, schema, split, traffic, live=None):
        ref = build_reference(pipeline, schema, split.X_holdout, champion=champion, labels=split.y_holdout)
        live_ch = _score(pipeline, schema, traffic) if live is None else live
        out[name] = (good, ref, live_ch, _score(champ, champ_schema, traffic))

    month1 = _traffic(1)
    p, s, sp = _fit(1, 2)
    add("same concept", True, p, s, sp, month1)
    p, s, sp = _fit(3, 3, drift="concept")
    add("concept drift", True, p, s, sp, _traffic(3, "concept"))
    p, s, sp = _fit(1, 4, churn_boost=1.5)
    add("churn rate x1.5", True, p, s, sp, _traffic(1, churn_boost=1.5))
    p, s, sp = _fit(1, 5, model="hgb")
    add("logreg -> HGB", True, p, s, sp, month1)
    p, s, sp = _fit(1, 6, charges_unit="cents")
    add("units skew (cents)", False, p, s, sp, month1)
    p, s, sp = _fit(1, 2)
    shuffled = month1.copy()
    mapping = {"Month-to-month": "Two year", "One year": "Month-to-month", "Two year": "One year"}
    shuffled["contract"] = shuffled["contract"].map(mapping)
    add("category mapping shuffled", False, p, s, sp, month1, live=_score(p, s, shuffled))
    good = _score(p, s, month1)
    add("constant scores", False, p, s, sp, month1, live=np.full(len(good), float(np.mean(good))))
    add("inverted scores", False, p, s, sp, month1, live=1.0 - good)
    return out


def _window(scores: np.ndarray) -> Window:
    n = len(scores)
    return Window(n, 0, 0, tuple(np.full(n, 5.0)), tuple(scores))


def simulate(ref: Reference, live_ch, live_cp, n: int, steps: int, rng, th: Thresholds) -> dict:
    """Share of ``steps`` simulated steps each rule rolls back (and the new rule holds)."""
    new_rb = new_hold = old_rb = 0
    legacy = Thresholds(looks=1)
    for _ in range(steps):
        ch = rng.choice(live_ch, n)
        cp = rng.choice(live_cp, 4 * n)
        rolled = held = False
        for k in range(1, th.looks + 1):  # the controller's looks, on the growing window
            m = round(n * k / th.looks)
            v = judge_step(_window(cp[:4 * m]), _window(ch[:m]), th, reference=ref)
            if v.enough and v.failed:
                rolled = True
                break
            if k == th.looks:
                held = bool(v.enough and v.held)
        old = judge_step(_window(cp), _window(ch), legacy)
        new_rb += rolled
        new_hold += held and not rolled
        old_rb += not old.ok
    return {"new": new_rb / steps, "hold": new_hold / steps, "old": old_rb / steps}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=500)
    ap.add_argument("--sizes", default="200,500,2000")
    args = ap.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",")]
    t0 = time.perf_counter()
    world = scenarios()
    th = Thresholds()
    rng = np.random.default_rng(0)
    print(f"{len(world)} scenarios trained in {time.perf_counter() - t0:.1f} s; {args.steps} simulated steps each at "
          f"{sizes} live scores (champion 4x on the same window); alpha {th.alpha}, {th.looks} looks")
    print()
    head = "| challenger | kind | offline PSI vs champion | " + " | ".join(
        f"N={n}: new rolls back / holds | N={n}: old rolls back" for n in sizes) + " |"
    print(head)
    print("|" + "---|" * (3 + 2 * len(sizes)))
    summary = {True: {n: [] for n in sizes}, False: {n: [] for n in sizes}}
    t1 = time.perf_counter()
    for name, (good, ref, live_ch, live_cp) in world.items():
        cells = []
        for n in sizes:
            r = simulate(ref, live_ch, live_cp, n, args.steps, rng, th)
            summary[good][n].append(r)
            cells += [f"{r['new']:.1%} / {r['hold']:.1%}", f"{r['old']:.1%}"]
        offline = (ref.offline_divergence or {}).get("psi")
        print(f"| {name} | {'good' if good else 'broken'} | {offline:.3f} | " + " | ".join(cells) + " |")
    print()
    for n in sizes:
        fr_new = max(r["new"] for r in summary[True][n])
        fr_old = max(r["old"] for r in summary[True][n])
        det_new = min(r["new"] for r in summary[False][n])
        det_old = min(r["old"] for r in summary[False][n])
        print(f"N={n}: worst false-rollback rate on good challengers: new {fr_new:.1%}, old {fr_old:.1%}; "
              f"lowest detection of broken ones: new {det_new:.1%}, old {det_old:.1%}")
    print(f"\njudging took {time.perf_counter() - t1:.1f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
