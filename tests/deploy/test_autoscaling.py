"""Autoscaling: the policy's limits, and its requests on each cloud across deploy -> traffic shift -> remove.

AWS runs against moto's Application Auto Scaling and SageMaker; Azure through azure-mgmt-monitor and
azure-ai-ml over the in-memory ARM transport of test_azureml (only the HTTP transport replaced); Vertex
through aiplatform with its gapic calls recorded as in test_vertex.
"""

from __future__ import annotations

import json

import pytest
from deploy_support import cloud_store

from churnkit.deploy import autoscaling
from churnkit.deploy.autoscaling import AutoscalingPolicy, ScheduledCapacity, policy_for
from churnkit.exceptions import AutoscalingError


# ---- the policy -------------------------------------------------------------------------------------
@pytest.mark.parametrize("kw, cloud, message", [
    (dict(min_instances=3, max_instances=2, target_cpu=60), "sagemaker", "max_instances 2 is below min_instances 3"),
    (dict(min_instances=0, max_instances=2, target_cpu=60), "azureml", "min_instances 0 must be a whole number of at least 1"),
    (dict(max_instances=4, target_invocations_per_instance=0), "sagemaker", "target_invocations_per_instance 0 must be a number above 0"),
    (dict(max_instances=4, target_cpu=-5), "vertex", "target_cpu -5 must be a number above 0"),
    (dict(max_instances=4, target_cpu=150), "vertex", "target_cpu 150 is a percentage"),
    (dict(max_instances=4), "sagemaker", "no target says when to scale"),
    (dict(max_instances=4, target_cpu=60, target_invocations_per_instance=100), "sagemaker", "give one scaling target"),
    (dict(max_instances=4, target_cpu=60, scale_in_cooldown=30), "azureml", "scale_in_cooldown 30 is outside azureml's range of 60 to 604800 seconds"),
    (dict(max_instances=4, target_cpu=60, scale_out_cooldown=-1), "sagemaker", "scale_out_cooldown -1 is outside sagemaker's range of 0 to 86400"),
    (dict(max_instances=4, target_cpu=60, scale_out_cooldown=90_000), "sagemaker", "outside sagemaker's range"),
    (dict(max_instances=4, target_cpu=60, scale_in_cooldown=300), "vertex", "Vertex AI has no cooldown setting"),
    (dict(max_instances=4, target_cpu=60), "local", "the 'local' target has no autoscaling"),
])
def test_policy_limits_name_the_field_and_the_limit(kw, cloud, message):
    with pytest.raises(AutoscalingError) as err:
        AutoscalingPolicy(**kw).validate(cloud)
    assert message in str(err.value)
    assert err.value.exit_code == 2


def test_schedules_parse_and_render():
    s = ScheduledCapacity.parse("fri-mon 08:30 2-6")
    assert s.days == ("FRI", "SAT", "SUN", "MON") and (s.hour, s.minute, s.min_instances, s.max_instances) == (8, 30, 2, 6)
    assert s.aws_cron() == "cron(30 8 ? * FRI,SAT,SUN,MON *)"
    for bad in ("weekdays 8:00 2-6", "MON 08:00 4", "XYZ 08:00 1-2"):
        with pytest.raises(AutoscalingError):
            ScheduledCapacity.parse(bad)
    with pytest.raises(AutoscalingError, match="Vertex AI has no scheduled scaling"):
        policy_for("vertex", max_instances=3, target_cpu=50, schedules=["MON 08:00 2-3"])
    with pytest.raises(AutoscalingError, match="need 1 <= min <= max"):
        policy_for("sagemaker", max_instances=3, target_cpu=50, schedules=["MON 08:00 4-3"])
    assert policy_for("sagemaker") is None


def test_open_target_refuses_autoscaling_on_local(tmp_path):
    from churnkit.config import load_config
    from churnkit.deploy import open_target

    with pytest.raises(AutoscalingError, match="'local' target has no autoscaling"):
        open_target("local", config=load_config(tmp_path / "runs"), autoscaling=AutoscalingPolicy(1, 3, target_cpu=50))


# ---- SageMaker: moto's Application Auto Scaling ----------------------------------------------------------
from deploy.test_sagemaker import ENV as AWS_ENV  # noqa: E402
from deploy.test_sagemaker import REGION, emulate_update_endpoint, record_writes  # noqa: E402


@pytest.fixture
def aws(tmp_path, monkeypatch):
    import boto3
    from moto import mock_aws

    monkeypatch.delenv("AWS_REGION", raising=False)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    config = cloud_store(tmp_path, monkeypatch, AWS_ENV)
    with mock_aws():
        boto3.client("s3", region_name=REGION).create_bucket(Bucket=AWS_ENV["CHURNKIT_AWS_BUCKET"])
        yield config


def _targets(t) -> dict[str, tuple[int, int]]:
    aas = t.client("application-autoscaling")
    return {x["ResourceId"]: (x["MinCapacity"], x["MaxCapacity"])
            for x in aas.describe_scalable_targets(ServiceNamespace="sagemaker")["ScalableTargets"]}


def test_sagemaker_registers_each_new_variant_keeps_it_through_traffic_shifts_and_deregisters_before_removal(aws):
    from churnkit.deploy import get_target

    policy = policy_for("sagemaker", min_instances=1, max_instances=4, target_invocations_per_instance=750,
                        scale_in_cooldown=600, scale_out_cooldown=60, schedules=["MON-FRI 08:00 2-6"])
    t = get_target("sagemaker", config=aws, poll_seconds=0, autoscaling=policy)
    writes = record_writes(t)
    t.client("application-autoscaling").meta.events.register(
        "before-parameter-build", lambda params, model, **_: writes.append(("application-autoscaling", model.name, dict(params))))
    emulate_update_endpoint(t)

    planned = t.plan("deploy", model_uri="models:/churn@champion")
    scaling = [p for p in planned if p["api"] == "application-autoscaling"]
    assert [p["operation"] for p in scaling] == ["RegisterScalableTarget", "PutScalingPolicy", "PutScheduledAction"]
    assert scaling[0]["request"] == {"ServiceNamespace": "sagemaker", "ResourceId": "endpoint/churn/variant/v1",
                                     "ScalableDimension": "sagemaker:variant:DesiredInstanceCount",
                                     "MinCapacity": 1, "MaxCapacity": 4}
    assert scaling[1]["request"]["TargetTrackingScalingPolicyConfiguration"] == {
        "ScaleInCooldown": 600, "ScaleOutCooldown": 60, "TargetValue": 750.0,
        "PredefinedMetricSpecification": {"PredefinedMetricType": "SageMakerVariantInvocationsPerInstance"}}
    assert scaling[2]["request"]["Schedule"] == "cron(0 8 ? * MON,TUE,WED,THU,FRI *)"
    assert planned.index(scaling[0]) > [p["operation"] for p in planned].index("CreateEndpoint")  # after the variant exists

    t.deploy("models:/churn@champion")
    assert _targets(t) == {"endpoint/churn/variant/v1": (1, 4)}
    aas = t.client("application-autoscaling")
    (pol,) = aas.describe_scaling_policies(ServiceNamespace="sagemaker")["ScalingPolicies"]
    assert pol["PolicyType"] == "TargetTrackingScaling" and pol["ResourceId"] == "endpoint/churn/variant/v1"
    assert pol["TargetTrackingScalingPolicyConfiguration"]["TargetValue"] == 750.0
    (action,) = aas.describe_scheduled_actions(ServiceNamespace="sagemaker")["ScheduledActions"]
    assert action["ScalableTargetAction"] == {"MinCapacity": 2, "MaxCapacity": 6}

    plain = get_target("sagemaker", config=aws, poll_seconds=0)  # the monthly pipeline passes no options
    emulate_update_endpoint(plain)
    plain.deploy("models:/churn@challenger", weight=0)  # v2 inherits v1's policy: the endpoint stays autoscaled
    assert _targets(t) == {"endpoint/churn/variant/v1": (1, 4), "endpoint/churn/variant/v2": (1, 4)}
    v2 = [p for p in aas.describe_scaling_policies(ServiceNamespace="sagemaker")["ScalingPolicies"]
          if p["ResourceId"] == "endpoint/churn/variant/v2"]
    assert v2[0]["TargetTrackingScalingPolicyConfiguration"]["TargetValue"] == 750.0
    assert v2[0]["TargetTrackingScalingPolicyConfiguration"]["ScaleInCooldown"] == 600
    for weights in ({"v1": 90, "v2": 10}, {"v1": 50, "v2": 50}, {"v1": 0, "v2": 100}):  # a rollout's steps
        t.set_traffic(weights)
        assert len(_targets(t)) == 2  # weights move; the policies stay

    status = autoscaling.live_status(t, t.describe())
    assert status["v2"]["autoscaling"]["min_instances"] == 1 and status["v2"]["autoscaling"]["max_instances"] == 4
    assert status["v2"]["autoscaling"]["policies"][0]["metric"] == "SageMakerVariantInvocationsPerInstance"
    assert status["v1"]["autoscaling"]["max_instances"] == 4  # moto reports no instance counts: none asserted
    assert any("1-4 instances, SageMakerVariantInvocationsPerInstance target 750.0" in line
               for line in autoscaling.status_lines(status))

    writes.clear()
    state = t.remove("v1")
    assert state.weights == {"v2": 100}
    ops = [w[1] for w in writes]
    assert ops.index("DeregisterScalableTarget") < ops.index("UpdateEndpoint")  # deregistered before removal
    assert _targets(t) == {"endpoint/churn/variant/v2": (1, 4)}
    # AWS deletes the target's policies and scheduled actions with it (DeregisterScalableTarget docs); moto keeps them
    assert [w[2]["ResourceId"] for w in writes if w[1] == "DeregisterScalableTarget"] == ["endpoint/churn/variant/v1"]

    assert t.stop().variants == {}
    assert _targets(t) == {}


def test_sagemaker_cpu_target_and_removal_of_a_variant_that_was_never_autoscaled(aws):
    from churnkit.deploy import get_target

    plain = get_target("sagemaker", config=aws, poll_seconds=0)
    emulate_update_endpoint(plain)
    plain.deploy("models:/churn@champion")
    cpu = policy_for("sagemaker", max_instances=3, target_cpu=55)
    t = get_target("sagemaker", config=aws, poll_seconds=0, autoscaling=cpu)
    emulate_update_endpoint(t)
    t.deploy("models:/churn@challenger")
    (pol,) = t.client("application-autoscaling").describe_scaling_policies(ServiceNamespace="sagemaker")["ScalingPolicies"]
    spec = pol["TargetTrackingScalingPolicyConfiguration"]["CustomizedMetricSpecification"]
    assert (spec["MetricName"], spec["Namespace"]) == ("CPUUtilization", "/aws/sagemaker/Endpoints")
    # CPUUtilization sums the cores (0-200 % on the 2 vCPUs of ml.m5.large): 55 % of the machine is 110
    assert pol["TargetTrackingScalingPolicyConfiguration"]["TargetValue"] == 110.0
    assert autoscaling.inherited(t, t.describe()).target_cpu == 55.0  # read back as a percent of the machine
    assert t.remove("v1").weights == {"v2": 100}  # v1 had no scalable target: the deregistration is a no-op
    assert _targets(t) == {"endpoint/churn/variant/v2": (1, 3)}
    status = autoscaling.live_status(t, t.describe())
    assert status["v2"]["autoscaling"]["policies"][0]["metric"] == "CPUUtilization"


def test_vcpus_of_sagemaker_instance_types():
    """https://docs.aws.amazon.com/sagemaker/latest/dg/monitoring-cloudwatch.html: CPUUtilization is 0-100 % per
    core, summed (0-400 % on four vCPUs); the kit scales a --target-cpu by the instance type's vCPUs."""
    assert [autoscaling.vcpus(t) for t in ("ml.m5.large", "ml.c5.xlarge", "ml.m5.4xlarge", "ml.r5.12xlarge",
                                           "ml.t2.medium")] == [2, 4, 16, 48, 2]
    with pytest.raises(AutoscalingError, match="instance type 'm5.large' is not a SageMaker type like 'ml.m5.xlarge'"):
        autoscaling.vcpus("m5.large")
    reqs = autoscaling.sagemaker_requests(policy_for("sagemaker", max_instances=2, target_cpu=60), "churn", "v1",
                                          "ml.c5.2xlarge")
    assert reqs[1]["request"]["TargetTrackingScalingPolicyConfiguration"]["TargetValue"] == 480.0


# ---- Azure ML: Azure Monitor autoscale settings over the in-memory ARM transport ---------------------------
from deploy.test_azureml import ENV as AZURE_ENV  # noqa: E402
from deploy.test_azureml import WS, FakeCredential, _transport_class  # noqa: E402


def test_azureml_autoscale_setting_created_with_each_deployment_and_deleted_before_it(tmp_path, monkeypatch):
    from churnkit.deploy import get_target

    config = cloud_store(tmp_path, monkeypatch, AZURE_ENV)
    arm = _transport_class()(models=(("churn", "1"), ("churn", "2")))
    policy = policy_for("azureml", min_instances=2, max_instances=5, target_invocations_per_instance=600,
                        scale_out_cooldown=120, schedules=["SAT,SUN 00:00 1-2"])
    t = get_target("azureml", config=config, credential=FakeCredential(), poll_seconds=0, wait_timeout=5,
                   client_kwargs={"transport": arm}, autoscaling=policy)

    planned = t.plan("deploy", model_uri="models:/churn@champion")
    ops = [p["operation"] for p in planned]
    assert ops.index("autoscale_settings.create_or_update") == ops.index("online_deployments.begin_create_or_update") + 1
    t.deploy("models:/churn@champion")
    t.deploy("models:/churn@challenger", weight=0)
    settings = {p.rsplit("/", 1)[-1]: b for m, p, b in arm.writes("/autoscalesettings/")}
    assert set(settings) == {"churn-v1-churn-autoscale", "churn-v2-churn-autoscale"}
    body = settings["churn-v2-churn-autoscale"]
    assert body["location"] == "westeurope"  # the workspace's region, read from ARM
    props = body["properties"]
    assert props["targetResourceUri"] == f"{WS}/onlineEndpoints/churn/deployments/v2-churn" and props["enabled"] is True
    default, weekend = props["profiles"]
    assert default["capacity"] == {"minimum": "2", "maximum": "5", "default": "2"}
    out, back = default["rules"]
    assert out["metricTrigger"]["metricName"] == "RequestsPerMinute" and out["metricTrigger"]["dividePerInstance"] is True
    assert out["metricTrigger"]["dimensions"] == [{"DimensionName": "deployment", "Operator": "Equals", "Values": ["v2-churn"]}]
    assert (out["metricTrigger"]["operator"], out["metricTrigger"]["threshold"]) == ("GreaterThan", 600.0)
    assert (out["scaleAction"]["direction"], out["scaleAction"]["cooldown"]) == ("Increase", "PT2M")
    assert (back["metricTrigger"]["operator"], back["metricTrigger"]["threshold"], back["scaleAction"]["cooldown"]) == \
        ("LessThan", 420.0, "PT5M")
    assert weekend["recurrence"] == {"frequency": "Week", "schedule": {"timeZone": "UTC", "days": ["Saturday", "Sunday"],
                                                                      "hours": [0], "minutes": [0]}}

    t.set_traffic({"v1": 20, "v2": 80})
    assert len(arm.writes("/autoscalesettings/")) == 2  # a traffic shift leaves them alone
    status = autoscaling.live_status(t, t.describe())
    assert status["v1"]["autoscaling"]["min_instances"] == 2 and status["v1"]["autoscaling"]["schedules"] == ["sat-sun-0000"]

    arm.log.clear()
    t.remove("v1")
    writes = [(m, p.rsplit("/", 2)[-2:]) for m, p, b in arm.writes()]
    assert writes.index(("DELETE", ["autoscalesettings", "churn-v1-churn-autoscale"])) < \
        writes.index(("DELETE", ["deployments", "v1-churn"]))
    assert not any(p.endswith("churn-v1-churn-autoscale") for p in arm.resources)
    t.stop()
    assert not any("/autoscalesettings/" in p for p in arm.resources)


def test_autoscaling_reaches_the_azure_target_through_its_public_monitor_client(tmp_path, monkeypatch):
    import ast
    import inspect

    from churnkit.deploy import get_target

    tree = ast.parse(inspect.getsource(autoscaling))
    reached = {n.attr for n in ast.walk(tree) if isinstance(n, ast.Attribute) and isinstance(n.value, ast.Name)
               and n.value.id == "target" and n.attr in ("_monitor", "_credential", "_client_kwargs")}
    assert not reached
    config = cloud_store(tmp_path, monkeypatch, AZURE_ENV)
    arm = _transport_class()()
    t = get_target("azureml", config=config, credential=FakeCredential(), client_kwargs={"transport": arm})
    assert t.monitor is t.monitor  # built once, on the target's own credential and transport
    assert autoscaling.azure_status(t.monitor, "rg-churn", "churn", {"v1": "v1-churn"}) == {"v1": {"autoscaling": None}}
    assert any(p.endswith("/autoscalesettings/churn-v1-churn-autoscale") for _, p, _ in arm.log)


def test_azureml_cpu_rule_targets_the_deployment(tmp_path, monkeypatch):
    body = autoscaling.azure_setting(policy_for("azureml", max_instances=3, target_cpu=70), workspace_id=WS,
                                     endpoint="churn", deployment="v3", location="westeurope")
    trigger = body["properties"]["profiles"][0]["rules"][0]["metricTrigger"]
    assert trigger["metricName"] == "CpuUtilizationPercentage" and trigger["threshold"] == 70.0
    assert trigger["metricResourceUri"].endswith("/onlineEndpoints/churn/deployments/v3") and "dividePerInstance" not in trigger


# ---- Vertex AI: replica bounds and metric specs on DeployModel -------------------------------------------
from deploy.test_vertex import ENV as GCP_ENV  # noqa: E402
from deploy.test_vertex import FakeStorage, FakeVertex  # noqa: E402


def test_vertex_deploy_carries_replica_bounds_and_autoscaling_metric_specs(tmp_path, monkeypatch):
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import storage

    from churnkit.deploy import get_target

    config = cloud_store(tmp_path, monkeypatch, GCP_ENV)
    monkeypatch.setattr(storage, "Client", FakeStorage)
    fake = FakeVertex().install(monkeypatch)
    policy = policy_for("vertex", min_instances=2, max_instances=8, target_invocations_per_instance=900)
    t = get_target("vertex", config=config, credentials=AnonymousCredentials(), autoscaling=policy)
    planned = t.plan("deploy", model_uri="models:/churn@champion")
    resources = planned[-1]["request"]["deployed_model"]["dedicated_resources"]
    assert resources["autoscaling_metric_specs"] == [
        {"metric_name": "aiplatform.googleapis.com/prediction/online/request_count", "target": 900}]
    t.deploy("models:/churn@champion")
    sent = fake.last("deploy_model")["deployed_model"]["dedicated_resources"]
    assert (sent["min_replica_count"], sent["max_replica_count"]) == (2, 8)
    assert sent["autoscaling_metric_specs"] == resources["autoscaling_metric_specs"]
    status = autoscaling.live_status(t, t.describe())
    assert status["v1"]["autoscaling"] == {"min_instances": 2, "max_instances": 8, "metrics": [
        {"metric": "aiplatform.googleapis.com/prediction/online/request_count", "target": 900}]}
    assert "request_count target 900" in autoscaling.status_lines(status)[0]


# ---- the command line ---------------------------------------------------------------------------------------
def _cli(*args):
    from click.testing import CliRunner

    from churnkit.cli import main

    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def test_cli_deploy_with_autoscaling_then_endpoint_status_and_bad_input(aws):
    runs = str(aws.runs_dir)
    res = _cli("deploy", "--target", "local", "--model", "models:/churn@champion", "--max-instances", "3",
               "--target-cpu", "60", "--runs-dir", runs)
    assert res.exit_code == 2 and "the 'local' target has no autoscaling" in res.stderr
    res = _cli("deploy", "--target", "sagemaker", "--model", "models:/churn@champion", "--min-instances", "3",
               "--max-instances", "2", "--target-cpu", "60", "--runs-dir", runs)
    assert res.exit_code == 2 and "max_instances 2 is below min_instances 3" in res.stderr

    scaling = ["--min-instances", "1", "--max-instances", "3", "--target-invocations-per-instance", "1200",
               "--scale-out-cooldown", "60"]
    res = _cli("deploy", "--target", "sagemaker", "--model", "models:/churn@champion", "--plan", *scaling, "--runs-dir", runs)
    assert res.exit_code == 0, res.output
    ops = [r["operation"] for r in json.loads(res.stdout)["requests"] if r["api"] == "application-autoscaling"]
    assert ops == ["RegisterScalableTarget", "PutScalingPolicy"]

    from churnkit.deploy import get_target

    emulate_update_endpoint(get_target("sagemaker", config=aws))  # moto's UpdateEndpoint, unused by a first deploy
    res = _cli("deploy", "--target", "sagemaker", "--model", "models:/churn@champion", *scaling, "--runs-dir", runs)
    assert res.exit_code == 0, res.output
    res = _cli("endpoint", "status", "--target", "sagemaker", "--runs-dir", runs)
    assert res.exit_code == 0, res.output
    assert "v1           autoscaling: 1-3 instances, SageMakerVariantInvocationsPerInstance target 1200.0" in res.stdout
    res = _cli("endpoint", "status", "--target", "sagemaker", "--json", "--runs-dir", runs)
    assert json.loads(res.stdout)["autoscaling"]["v1"]["autoscaling"]["policies"][0]["scale_out_cooldown"] == 60
