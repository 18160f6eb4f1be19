"""The simulated cloud rollouts' shared world: one registry of misbehaving challengers, one endpoint of real
``churnkit serve`` processes behind the local router, the emulators, and a client replaying held-out rows
for as long as a cloud's tests run."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def cloud_world(tmp_path_factory):
    """``(config, inner LocalTarget, {case: version}, holdout rows, Emulators)``; v1 serves as champion."""
    import mlflow

    from churnkit import registry
    from churnkit.config import load_config
    from churnkit.data import load_table
    from churnkit.deploy.local import LocalTarget
    from churnkit.evaluate import gate
    from churnkit.model import split_holdout, train_model
    from cloud_rollout_support import Emulators, free_port
    from rollout_models import cloudpickled, misbehaving

    mp = pytest.MonkeyPatch()
    for var in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI", "MLFLOW_RUN_ID"):
        mp.delenv(var, raising=False)
    root = tmp_path_factory.mktemp("cloud-rollouts")
    runs = root / "runs"
    mp.setenv("CHURNKIT_RUNS_DIR", str(runs))
    config = load_config(runs)
    registry.setup_tracking(config)
    mp.delenv("MLFLOW_TRACKING_URI", raising=False)
    dataset = load_table("", rows=1500, seed=0)
    split = split_holdout(dataset, seed=0)
    champion = train_model(split, dataset.schema, seed=0)

    def register(pipeline) -> str:
        with cloudpickled(), mlflow.start_run():
            run_id = registry.log_candidate(pipeline, dataset, split, model="logreg", seed=0)
        return registry.register_candidate(registry.load_candidate(run_id), gate(0.99, None, 0.5, -1.0), threshold=0.5)

    versions = {"champion": register(champion),
                "errors": register(misbehaving(champion, error_share=0.3)),
                "slow": register(misbehaving(champion, delay=0.05)),
                "shifted": register(misbehaving(champion, shift=0.3))}
    for i, cloud in enumerate(("sagemaker", "azureml", "vertex"), start=1):
        versions[f"good-{cloud}"] = register(train_model(split_holdout(dataset, seed=i), dataset.schema, seed=i))
    inner = LocalTarget("churn", port=free_port(), config=config, capture=True)
    emulators = Emulators(root / "emulators")
    try:
        inner.deploy("models:/churn@champion")
        yield config, inner, versions, split.X_holdout, emulators
    finally:
        inner.stop()
        emulators.stop()
        mp.undo()
