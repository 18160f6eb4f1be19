"""The rollout judgment with real processes: ``churnkit serve`` variants behind the local router, data capture
on, traffic replayed from the *new* month (as production would send it), references stored at registration.

v1 (month 1) serves as champion. The challengers: a retrain on a month with concept drift (it must be
promoted although it scores very differently from v1), a retrain on an export that wrote the charges in cents
(rolled back at its first step against its own reference), and a good retrain whose container is started
with another version's artifact (serving parity fails).
"""

from __future__ import annotations

import json

import mlflow
import pytest
from click.testing import CliRunner

from churnkit import registry
from churnkit import rollout as ro
from churnkit.cli import main
from churnkit.config import load_config
from churnkit.data import load_table, synth_month, write_table
from churnkit.deploy.local import LocalTarget
from churnkit.evaluate import gate
from churnkit.exceptions import IntegrityError
from churnkit.model import split_holdout, train_model
from churnkit.reference import REFERENCE_FILE, read_reference, reference_from_candidate
from conftest import free_port

ROWS = 1600
FAST = dict(steps=[50, 100], interval=2.0, min_requests=20, replay_rate=40.0, looks=2)


def _quiet(msg):
    pass


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """The registry (v1 champion, deployed; the challengers registered with references) and the endpoint."""
    mp = pytest.MonkeyPatch()
    for var in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI", "MLFLOW_RUN_ID"):
        mp.delenv(var, raising=False)
    root = tmp_path_factory.mktemp("judgment-local")
    runs = root / "runs"
    mp.setenv("CHURNKIT_RUNS_DIR", str(runs))
    config = load_config(runs)
    registry.setup_tracking(config)
    mp.delenv("MLFLOW_TRACKING_URI", raising=False)

    def register(month, seed, drift=None, charges_unit="dollars") -> str:
        ds = load_table("", rows=ROWS, month=month, seed=seed, drift=drift, charges_unit=charges_unit)
        split = split_holdout(ds, seed=seed)
        with mlflow.start_run():
            run_id = registry.log_candidate(train_model(split, ds.schema, seed=seed), ds, split, model="logreg", seed=seed)
        candidate = registry.load_candidate(run_id)
        ref = reference_from_candidate(candidate, registry.load_champion())
        return registry.register_candidate(candidate, gate(0.99, None, 0.5, -1.0), threshold=0.5, files=ref.files())

    versions = {"champion": register(1, 0)}
    versions["concept"] = register(2, 1, drift="concept")
    versions["cents"] = register(1, 2, charges_unit="cents")
    versions["good"] = register(1, 3)
    traffic = {}  # the new month as production sends it: other customers, charges in dollars
    for name, drift in (("concept", "concept"), ("plain", None)):
        traffic[name] = write_table(synth_month(rows=1500, month=2 if drift else 1, seed=11, drift=drift),
                                    root / f"traffic-{name}.csv")
    target = LocalTarget("churn", port=free_port(), config=config, capture=True)
    try:
        target.deploy(f"models:/churn/{versions['champion']}")
        yield config, target, versions, traffic
    finally:
        target.stop()
        mp.undo()


def _challenger(version: str) -> str:
    registry.set_alias("challenger", version)
    return str(registry.get_champion().version)


def test_a_concept_drift_retrain_is_promoted_with_the_reason(world):
    config, target, versions, traffic = world
    champion = _challenger(versions["concept"])
    ref = read_reference(versions["concept"])
    assert ref.champion_version == champion and ref.offline_divergence["psi"] > 0.2  # the old rule's limit
    rec = ro.rollout(target, config=config, echo=_quiet, replay_path=str(traffic["concept"]), **FAST)
    assert rec.decision == "promoted", rec.summary()
    assert "is what offline evaluation predicted" in rec.reason
    step = rec.steps[0]
    assert step.offline_divergence == pytest.approx(ref.offline_divergence["psi"], abs=1e-4)
    assert step.champion_divergence > 0.2  # PSI against the champion, what rolled such retrains back before
    verdicts = {c["name"]: c["verdict"] for c in step.checks}
    assert verdicts["prediction_psi"] == "pass" and verdicts["champion_divergence"] == "pass"
    assert verdicts["serving_parity"] == "pass"  # rows it served re-scored with the registered artifact
    assert registry.aliases()["champion"] == versions["concept"]
    registry.promote(champion)  # back to v1 for the next test
    target.set_traffic({f"v{champion}": 100}) if f"v{champion}" in target.describe().variants else \
        target.deploy(f"models:/churn/{champion}", f"v{champion}", 100)
    for name in list(target.describe().variants):
        if name != f"v{champion}":
            target.remove(name)


def test_a_units_skewed_challenger_is_rolled_back_at_its_first_step_naming_its_reference(world):
    config, target, versions, traffic = world
    champion = _challenger(versions["cents"])
    result = CliRunner().invoke(main, ["rollout", "--target", "local", "--steps", "50,100", "--interval", "2",
                                       "--min-requests", "20", "--replay-rate", "40", "--looks", "2", "--replay-path",
                                       str(traffic["plain"]), "--json", "--runs-dir", str(config.runs_dir)])
    assert result.exit_code == 0, result.output
    rec = json.loads(result.stdout)
    assert rec["decision"] == "rolled_back" and rec["reason"].startswith("step 1 at 50%"), rec["reason"]
    assert f"v{versions['cents']} its own holdout" in rec["reason"]
    failed = {c["name"] for c in rec["steps"][0]["checks"] if c["verdict"] == "fail"}
    assert "prediction_psi" in failed
    assert target.describe().weights == {f"v{champion}": 100}
    assert "challenger" not in registry.aliases()


def test_too_little_traffic_is_inconclusive_and_never_promoted(world):
    config, target, versions, traffic = world
    champion = _challenger(versions["good"])
    rec = ro.rollout(target, config=config, echo=_quiet, steps=[50, 100], interval=1.0, max_bake=2.0, min_requests=5,
                     replay_rate=3.0, replay_path=str(traffic["plain"]), looks=1)
    assert rec.decision == "rolled_back" and rec.reason.startswith("inconclusive: "), rec.reason
    assert "of 200 scores" in rec.reason or "of 5 requests" in rec.reason
    assert registry.aliases()["champion"] == champion and "challenger" not in registry.aliases()
    assert target.describe().weights == {f"v{champion}": 100}


def test_a_container_serving_another_artifact_fails_serving_parity(world):
    config, target, versions, traffic = world
    champion = _challenger(versions["good"])
    # the challenger's variant is started with the champion's artifact: same name, wrong model
    target.deploy(f"models:/churn/{champion}", f"v{versions['good']}", 0)
    rec = ro.rollout(target, config=config, echo=_quiet, replay_path=str(traffic["plain"]), **(FAST | {"looks": 1}))
    assert rec.decision == "rolled_back", rec.summary()
    parity = next(c for c in rec.steps[-1].checks if c["name"] == "serving_parity")
    assert parity["verdict"] == "fail" and parity["value"] > 1e-6 and parity["n"] > 0
    assert "re-scored with the registered artifact" in rec.reason
    assert target.describe().weights == {f"v{champion}": 100}


def test_a_tampered_reference_is_refused_before_any_change(world):
    config, target, versions, traffic = world
    champion = _challenger(versions["good"])
    local, _ = registry.resolve_model(f"models:/churn/{versions['good']}")
    path = local / REFERENCE_FILE
    original = path.read_bytes()
    try:
        path.write_bytes(original.replace(b'"n": ', b'"n": 1', 1))
        before = target.describe().weights
        with pytest.raises(IntegrityError, match=REFERENCE_FILE):
            ro.rollout(target, config=config, echo=_quiet, **FAST)
        assert target.describe().weights == before == {f"v{champion}": 100}
        assert registry.aliases()["champion"] == champion and registry.aliases()["challenger"] == versions["good"]
    finally:
        path.write_bytes(original)
