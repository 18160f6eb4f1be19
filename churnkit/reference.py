"""A registered version's rollout reference: what its live scores should look like, kept with the version.

Written at registration (02-evaluate, ``churnkit import``) as ``churnkit-reference.json`` inside the
version's model folder, before the folder's manifest is computed, so the manifest recorded on the version
covers it and it travels with every copy of the folder. It holds

* the version's scores on its holdout, computed through the serving scorer (:class:`~churnkit.serve.scorer.Scorer`,
  the code path it will serve with), their decile edges, mean, spread and the holdout size;
* the serving champion's scores on the *same* holdout rows and the offline divergence of the two models:
  PSI, rank correlation and top-decile overlap.

The rollout judges the version's live scores against the first (prediction drift) and the live divergence
from the champion against the second (:mod:`churnkit.rollout.checks`). This follows SageMaker Model
Registry's and Vertex AI Model Monitoring's practice of a drift baseline taken from the model's own
training data and kept with the model version (see docs/rollout-judgment.md for the citations).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from churnkit.clock import iso_seconds
from churnkit.config import DEFAULT_MODEL_NAME, TAG, Config
from churnkit.exceptions import IntegrityError, ReferenceMissingError

#: The reference's file inside a version's model folder (covered by the folder's manifest).
REFERENCE_FILE = "churnkit-reference.json"
#: Quantile bins of the PSI statistics (the monitor's: reference deciles).
BINS = 10
FORMAT = 1


def _floats(values) -> np.ndarray:
    return np.asarray(values, dtype=float).ravel()


def decile_edges(scores) -> np.ndarray:
    """The inner decile edges of ``scores`` (the monitor's quantile edges, duplicates removed)."""
    from churnkit.monitor import quantile_edges

    return quantile_edges(np.sort(_floats(scores)), BINS)


def psi_on_edges(reference, current, edges) -> float:
    """PSI of ``current`` against ``reference`` on the given bin edges (the monitor's 1e-4 floor)."""
    from churnkit.monitor import counts_in_bins, population_stability_index

    ref, cur = np.sort(_floats(reference)), np.sort(_floats(current))
    e = np.asarray(edges, dtype=float)
    return population_stability_index(counts_in_bins(ref, e), counts_in_bins(cur, e))


def score_divergence(champion_scores, challenger_scores) -> dict:
    """How differently two models score the *same* rows: PSI (champion's deciles), Spearman rank
    correlation, and the share of the champion's top decile that is also the challenger's top decile."""
    from scipy.stats import spearmanr

    a, b = _floats(champion_scores), _floats(challenger_scores)
    if len(a) != len(b) or len(a) < 2:
        raise ValueError(f"divergence needs the same rows scored by both models, got {len(a)} and {len(b)} scores")
    k = max(1, round(len(a) / 10))
    top_a = set(np.argsort(-a, kind="stable")[:k].tolist())
    top_b = set(np.argsort(-b, kind="stable")[:k].tolist())
    rho = spearmanr(a, b).statistic if np.ptp(a) > 0 and np.ptp(b) > 0 else float("nan")
    return {"psi": round(psi_on_edges(a, b, decile_edges(a)), 6),
            "rank_correlation": None if not math.isfinite(rho) else round(float(rho), 6),
            "top_decile_overlap": round(len(top_a & top_b) / k, 6), "rows": len(a)}


@dataclass(frozen=True)
class Reference:
    """What a version's live scores should look like (its holdout through the serving scorer), and how far
    it is expected to differ from the champion it was registered against.

    ``origin`` says where it came from: ``registration`` (the file in the version's folder, covered by its
    manifest) or a note that it was built later from the recorded holdout.
    """

    scores: np.ndarray
    columns: dict
    engine: str = ""
    label_rate: float | None = None
    champion_version: str | None = None
    champion_scores: np.ndarray | None = None
    offline_divergence: dict | None = None
    train_run_id: str = ""
    origin: str = "registration"
    built: str = field(default_factory=iso_seconds)
    version: str = ""
    note: str = ""

    @property
    def n(self) -> int:
        return len(self.scores)

    @property
    def mean(self) -> float:
        return float(np.mean(self.scores)) if self.n else float("nan")

    @property
    def std(self) -> float:
        return float(np.std(self.scores, ddof=1)) if self.n > 1 else 0.0

    @property
    def edges(self) -> np.ndarray:
        return decile_edges(self.scores)

    def to_dict(self) -> dict:
        return {"format": FORMAT, "n": self.n, "mean": round(self.mean, 8), "std": round(self.std, 8),
                "edges": [round(float(e), 10) for e in self.edges], "scores": [float(s) for s in self.scores],
                "columns": dict(self.columns), "engine": self.engine, "label_rate": self.label_rate,
                "champion": None if self.champion_scores is None else {
                    "version": self.champion_version, "scores": [float(s) for s in self.champion_scores]},
                "offline_divergence": self.offline_divergence, "train_run_id": self.train_run_id,
                "origin": self.origin, "built": self.built}

    def to_bytes(self) -> bytes:
        return json.dumps(self.to_dict(), indent=0, sort_keys=True).encode()

    def files(self) -> dict[str, bytes]:
        """The file(s) :func:`churnkit.registry.register_candidate` writes into the version's folder."""
        return {REFERENCE_FILE: self.to_bytes()}

    @classmethod
    def from_dict(cls, d: dict, *, version: str = "", source: str = "") -> Reference:
        """Parse a reference file's content (``source`` names it in errors)."""
        try:
            if d.get("format") != FORMAT:
                raise ValueError(f"format {d.get('format')!r}, expected {FORMAT}")
            scores = _floats(d["scores"])
            if not len(scores) or not np.all(np.isfinite(scores)) or scores.min() < 0 or scores.max() > 1:
                raise ValueError("scores must be probabilities from 0 to 1")
            if int(d["n"]) != len(scores):
                raise ValueError(f"n {d['n']!r} is not the number of scores ({len(scores)})")
            champ = d.get("champion") or None
            cs = None if champ is None else _floats(champ["scores"])
            if cs is not None and len(cs) != len(scores):
                raise ValueError("the champion's scores are not of the same rows")
            return cls(scores, dict(d["columns"]), str(d.get("engine", "")), d.get("label_rate"),
                        None if champ is None else str(champ.get("version")), cs, d.get("offline_divergence"),
                        str(d.get("train_run_id", "")), str(d.get("origin", "registration")), str(d.get("built", "")),
                        version)
        except (KeyError, TypeError, ValueError) as exc:
            raise IntegrityError(f"{source or REFERENCE_FILE} is not a churnkit rollout reference ({exc}); build it "
                                 f"again: churnkit reference build --version {version or 'N'}") from exc

    def summary(self) -> str:
        """What 02-evaluate prints next to the gate."""
        head = (f"reference: {self.n} holdout scores through the serving scorer ({self.engine or 'sklearn'}), "
                f"mean {self.mean:.3f}")
        if self.offline_divergence is None:
            return head + "; no champion to compare with" + (f" ({self.note})" if self.note else "")
        d = self.offline_divergence
        rho = "n/a" if d.get("rank_correlation") is None else f"{d['rank_correlation']:.2f}"
        return (f"{head}\nthe new model differs from champion v{self.champion_version} on the same {d['rows']} rows by "
                f"PSI {d['psi']:.3f}, rank correlation {rho}, top-decile overlap {d['top_decile_overlap']:.0%}; "
                "that is expected: the rollout holds only a live divergence beyond this (plus chance)")

    def table(self):
        """The reference's numbers (a pandas DataFrame for the notebook)."""
        import pandas as pd

        rows = {"holdout rows": self.n, "mean score": round(self.mean, 4), "score std": round(self.std, 4),
                "serving engine": self.engine, "champion": self.champion_version or "none"}
        for k, v in (self.offline_divergence or {}).items():
            if k != "rows":
                rows[f"offline {k.replace('_', ' ')}"] = v
        return pd.DataFrame({"value": rows})


def build_reference(pipeline, schema, rows, *, champion=None, champion_rows=None, labels=None,
                    train_run_id: str = "", origin: str = "registration") -> Reference:
    """Score ``rows`` (the holdout) with ``pipeline`` through the serving scorer, and ``champion`` (a
    :class:`~churnkit.artifact.LoadedModel`) on the same rows; returns the version's reference.

    ``champion_rows`` are the same customers with the columns the champion expects (default ``rows``).
    A champion that cannot score these rows (other columns) leaves the divergence out, with a note.
    """
    from churnkit.serve.scorer import Scorer

    scorer = Scorer(pipeline, schema)
    scores = _floats(scorer.predict_frame(rows))
    rate = None
    if labels is not None:
        y = np.asarray(labels, dtype=float)
        rate = None if not np.isfinite(y).any() else round(float(np.nanmean(y)), 6)
    columns = {c.name: c.kind for c in schema.columns}
    if champion is None:
        return Reference(scores, columns, scorer.engine, rate, train_run_id=train_run_id, origin=origin)
    try:
        cs = _floats(Scorer.from_loaded(champion).predict_frame(rows if champion_rows is None else champion_rows))
    except Exception as exc:  # noqa: BLE001 - a champion with other columns is compared with no divergence
        return Reference(scores, columns, scorer.engine, rate, train_run_id=train_run_id, origin=origin,
                         note=f"champion v{champion.version} could not score these rows: {type(exc).__name__}: {exc}")
    return Reference(scores, columns, scorer.engine, rate, str(champion.version), cs, score_divergence(cs, scores),
                     train_run_id, origin)


def reference_from_candidate(candidate, champion=None, champion_rows=None) -> Reference:
    """The reference of a candidate about to be registered (02-evaluate, ``churnkit import``)."""
    return build_reference(candidate.pipeline, candidate.schema, candidate.X_holdout, champion=champion,
                           champion_rows=champion_rows, labels=candidate.y_holdout, train_run_id=candidate.run_id)


def read_reference(version: str, model_name: str = DEFAULT_MODEL_NAME, config: Config | None = None) -> Reference | None:
    """The reference stored with a registered version, or None when it has none (registered before references).

    The version's folder is checked against its recorded manifest first, so a reference that was changed,
    removed or planted after registration is refused with the file named.

    Raises
    ------
    IntegrityError
        The folder does not match its manifest, or the reference file is not a reference.
    """
    from churnkit import registry
    from churnkit.artifact import verify_files

    local, tags = registry.resolve_model(f"models:/{model_name}/{version}", config)
    verify_files(local, tags.get(TAG + "files_sha256"), f"registered version {model_name} v{version}")
    path = Path(local) / REFERENCE_FILE
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_bytes())
    except ValueError as exc:
        raise IntegrityError(f"{str(path)!r} is not JSON ({exc}); build the reference again: churnkit reference build "
                             f"--model-name {model_name} --version {version}") from exc
    return Reference.from_dict(data, version=str(version), source=str(path))


def version_reference(version: str, model_name: str = DEFAULT_MODEL_NAME, config: Config | None = None, *,
                      champion_version: str | None = None) -> Reference:
    """The reference a rollout judges ``version`` against, compared with ``champion_version``.

    The stored reference when the version has one; for a version registered before references, one built
    now from the holdout its training run recorded (``origin`` says so). When the stored reference was
    taken against another champion, the champion's scores on the same holdout rows are computed again.

    Raises
    ------
    ReferenceMissingError
        No stored reference and no recorded holdout: names the command that builds one.
    IntegrityError
        The stored reference was tampered with.
    """
    from churnkit import registry

    ref = read_reference(version, model_name, config)
    champion = None
    if ref is None or (champion_version and ref.champion_version != str(champion_version)):
        if champion_version and str(champion_version) != str(version):
            champion = registry.load_model(f"models:/{model_name}/{champion_version}", config)
        try:
            rows, labels = registry.version_holdout(version, model_name, config)
        except Exception as exc:  # noqa: BLE001 - any store error means "no holdout"
            if ref is not None:  # keep the stored one; the divergence is then against another champion
                return replace(ref, note=f"stored against champion v{ref.champion_version}, not v{champion_version}; "
                                         f"the holdout to compare again could not be read ({exc})")
            raise ReferenceMissingError(
                f"{model_name} v{version} has no rollout reference (registered before references) and its training "
                f"run's holdout cannot be read ({type(exc).__name__}: {exc}); build one from a labelled table of the "
                f"data it was trained on: churnkit reference build --model-name {model_name} --version {version} "
                "--holdout FILE", version=str(version)) from None
        if ref is not None:  # the champion changed since registration: the same rows scored by today's champion
            if champion is None:
                return replace(ref, champion_version=None, champion_scores=None, offline_divergence=None,
                               note="the version itself is the champion")
            loaded = registry.load_model(f"models:/{model_name}/{version}", config)
            fresh = build_reference(loaded.pipeline, loaded.schema, rows, champion=champion)
            return replace(ref, champion_version=fresh.champion_version, champion_scores=fresh.champion_scores,
                           offline_divergence=fresh.offline_divergence,
                           note=f"stored against champion v{ref.champion_version}; compared again with "
                                f"v{champion_version} on the same holdout rows")
        loaded = registry.load_model(f"models:/{model_name}/{version}", config)
        built = build_reference(loaded.pipeline, loaded.schema, rows, champion=champion, labels=labels,
                                origin="built at rollout from the holdout its training run recorded (the version was "
                                       "registered without a reference)")
        return replace(built, version=str(version))
    return ref


def check_schema(ref: Reference, schema) -> None:
    """Refuse a version whose input schema differs from the one its reference was built with.

    Raises
    ------
    IntegrityError
        Naming the columns that differ.
    """
    now = {c.name: c.kind for c in schema.columns}
    if now != ref.columns:
        added = sorted(set(now) - set(ref.columns))
        removed = sorted(set(ref.columns) - set(now))
        kind = sorted(n for n in set(now) & set(ref.columns) if now[n] != ref.columns[n])
        raise IntegrityError(f"v{ref.version or '?'}'s input schema differs from its rollout reference's (added "
                             f"{added!r}, removed {removed!r}, kind changed {kind!r}); the reference belongs to another "
                             f"model: build it again (churnkit reference build --version {ref.version or 'N'})")


def write_reference(version: str, holdout, label_column: str | None = None, model_name: str = DEFAULT_MODEL_NAME,
                    config: Config | None = None) -> Reference:
    """Build a reference for a registered version from a table of its holdout and store it with the version.

    For versions registered before references whose training run kept no holdout. The folder's manifest is
    computed again and recorded on the version (``churnkit.files_sha256``).
    """
    from churnkit import registry
    from churnkit.data import map_label, read_table

    frame = read_table(holdout) if isinstance(holdout, (str, Path)) else holdout
    labels = None
    if label_column and label_column in frame.columns:
        labels = map_label(frame[label_column], label_column)
        frame = frame.drop(columns=[label_column])
    loaded = registry.load_model(f"models:/{model_name}/{version}", config)
    champion = registry.get_champion(model_name, config)
    champ = None
    if champion is not None and str(champion.version) != str(version):
        champ = registry.load_model(f"models:/{model_name}/{champion.version}", config)
    ref = build_reference(loaded.pipeline, loaded.schema, frame, champion=champ, labels=labels,
                          origin=f"built with churnkit reference build from {getattr(holdout, 'name', holdout)!s}"[:200])
    registry.attach_version_files(version, ref.files(), model_name, config)
    return replace(ref, version=str(version))
