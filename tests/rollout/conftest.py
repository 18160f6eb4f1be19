"""The simulated cloud rollouts' shared world: one registry of misbehaving challengers, one endpoint of real
``churnkit serve`` processes behind the local router, and the emulators (started when a cloud needs them)."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def cloud_world(tmp_path_factory):
    """``(config, inner LocalTarget, {case: version}, holdout rows, Emulators)``; v1 serves as champion."""
    from cloud_rollout_support import Emulators, build_world

    mp = pytest.MonkeyPatch()
    for var in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI", "MLFLOW_RUN_ID"):
        mp.delenv(var, raising=False)
    root = tmp_path_factory.mktemp("cloud-rollouts")
    mp.setenv("CHURNKIT_RUNS_DIR", str(root / "runs"))
    from rollout_models import SERVE_ENV

    for var, value in SERVE_ENV.items():  # the serve processes import and trust the misbehaving class
        mp.setenv(var, value)
    emulators = Emulators(root / "emulators")
    inner = None
    try:
        config, inner, versions, rows = build_world(root)
        yield config, inner, versions, rows, emulators
    finally:
        if inner is not None:
            inner.stop()
        emulators.stop()
        mp.undo()
