"""End-to-end rollouts on a simulated SageMaker endpoint (the cases are in tests/rollout/cloud_cases.py)."""

import pytest

from rollout.cloud_cases import (  # noqa: F401 - collected here, for this cloud
    sim,
    test_bad_challenger_is_rolled_back_from_the_clouds_telemetry,
    test_good_challenger_is_promoted_from_the_clouds_telemetry,
    test_killed_controller_is_finished_consistently_by_the_rerun,
)


@pytest.fixture(scope="module")
def cloud():
    return "sagemaker"
