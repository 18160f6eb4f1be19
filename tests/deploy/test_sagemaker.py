"""SageMaker target: moto for create/describe/weights/invoke, botocore Stubber for the guarded UpdateEndpoint.

moto has no UpdateEndpoint; where a test needs one, a ``before-call`` hook applies it to moto's
backend the way SageMaker does (the endpoint switches to the new config) and records the exact
parameters.
"""

from __future__ import annotations

import io
import json
import sys
import tarfile
import types

import pytest
from deploy_support import cloud_store

REGION = "us-east-1"
ACCOUNT = "123456789012"
ENV = {
    "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_SESSION_TOKEN": "testing",
    "AWS_DEFAULT_REGION": REGION, "AWS_EC2_METADATA_DISABLED": "true",
    "CHURNKIT_AWS_ROLE_ARN": f"arn:aws:iam::{ACCOUNT}:role/churnkit-sagemaker",
    "CHURNKIT_AWS_BUCKET": "churnkit-test-bucket",
    "CHURNKIT_AWS_IMAGE_URI": f"{ACCOUNT}.dkr.ecr.{REGION}.amazonaws.com/churnkit:0.1.0",
}


@pytest.fixture
def store(tmp_path, monkeypatch):
    monkeypatch.delenv("AWS_REGION", raising=False)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    return cloud_store(tmp_path, monkeypatch, ENV)


@pytest.fixture
def aws(store):
    import boto3
    from moto import mock_aws

    with mock_aws():
        boto3.client("s3", region_name=REGION).create_bucket(Bucket=ENV["CHURNKIT_AWS_BUCKET"])
        yield store


def target(config, **kw):
    from churnkit.deploy import get_target

    return get_target("sagemaker", config=config, poll_seconds=0, **kw)


def record_writes(t) -> list[tuple[str, str, dict]]:
    """Record every mutating call the target's clients send, with its exact parameters."""
    calls: list[tuple[str, str, dict]] = []

    def hook(params, model, **_):
        if model.name.startswith(("Create", "Update", "Put", "Delete")):
            calls.append((model.service_model.service_name, model.name, json.loads(json.dumps(params, default=str))))

    for service in ("sagemaker", "s3", "cloudwatch"):
        t.client(service).meta.events.register("before-parameter-build", hook)
    return calls


def emulate_update_endpoint(t) -> list[dict]:
    """Make moto apply UpdateEndpoint (switch the endpoint to the new config); returns the recorded params."""
    from moto.sagemaker.models import sagemaker_backends

    seen: list[dict] = []

    def capture(params, **_):
        seen.append(dict(params))

    def apply(**_):
        params = seen[-1]
        backend = sagemaker_backends[ACCOUNT][REGION]
        endpoint = backend.endpoints[params["EndpointName"]]
        cfg = backend.endpoint_configs[params["EndpointConfigName"]]
        endpoint.endpoint_config_name = params["EndpointConfigName"]
        endpoint.production_variants = endpoint._process_production_variants(cfg.production_variants)
        return types.SimpleNamespace(status_code=200, headers={}), {"EndpointArn": endpoint.arn}

    sm = t.client("sagemaker")
    sm.meta.events.register("before-parameter-build.sagemaker.UpdateEndpoint", capture)
    sm.meta.events.register("before-call.sagemaker.UpdateEndpoint", apply)
    return seen


def test_deploy_two_versions_shift_weights_remove_and_stop(aws):
    t = target(aws)
    writes = record_writes(t)
    updates = emulate_update_endpoint(t)
    sm, s3 = t.client("sagemaker"), t.client("s3")

    planned = t.plan("deploy", model_uri="models:/churn@champion")
    state = t.deploy("models:/churn@champion")
    assert [(a, o, r) for a, o, r in [(p["api"], p["operation"], p["request"]) for p in planned] if o != "PutObject"] == \
        [w for w in writes if w[1] != "PutObject"]
    assert state.weights == {"v1": 100} and state.drift == []
    assert state.variants["v1"].model_version == "1" and state.variants["v1"].status == "InService"

    ep = sm.describe_endpoint(EndpointName="churn")
    cfg = sm.describe_endpoint_config(EndpointConfigName=ep["EndpointConfigName"])
    (variant,) = cfg["ProductionVariants"]
    assert variant["VariantName"] == "v1" and variant["InitialVariantWeight"] == 100.0
    assert cfg["DataCaptureConfig"]["EnableCapture"] is True
    assert cfg["DataCaptureConfig"]["DestinationS3Uri"] == "s3://churnkit-test-bucket/churnkit/capture/churn"
    model = sm.describe_model(ModelName=variant["ModelName"])
    assert model["PrimaryContainer"]["Image"] == ENV["CHURNKIT_AWS_IMAGE_URI"]
    assert model["ExecutionRoleArn"] == ENV["CHURNKIT_AWS_ROLE_ARN"]
    key = model["PrimaryContainer"]["ModelDataUrl"].removeprefix("s3://churnkit-test-bucket/")
    body = s3.get_object(Bucket="churnkit-test-bucket", Key=key)["Body"].read()
    tar = tarfile.open(fileobj=io.BytesIO(body), mode="r:gz")
    assert "MLmodel" in tar.getnames()
    raw_manifest = tar.extractfile("churnkit-model.json").read()
    manifest = json.loads(raw_manifest)
    assert (manifest["version"], manifest["sha256"]) == ("1", model["PrimaryContainer"]["Environment"]["CHURNKIT_MODEL_SHA256"])
    # the container is pinned to the serving manifest's digest recorded at registration
    assert __import__("hashlib").sha256(raw_manifest).hexdigest() == \
        model["PrimaryContainer"]["Environment"]["CHURNKIT_MANIFEST_SHA256"]

    state = t.deploy("models:/churn@challenger", weight=0)
    assert state.weights == {"v1": 100, "v2": 0} and state.drift == []
    assert state.variants["v2"].model_version == "2"
    (update,) = updates
    assert update["RetainAllVariantProperties"] is True
    assert update["ExcludeRetainedVariantProperties"] == [{"VariantPropertyType": "DesiredWeight"}]
    new_cfg = sm.describe_endpoint_config(EndpointConfigName=update["EndpointConfigName"])
    assert [(v["VariantName"], v["InitialVariantWeight"]) for v in new_cfg["ProductionVariants"]] == [("v1", 100.0), ("v2", 0.0)]

    assert t.set_traffic({"v1": 50, "v2": 50}).weights == {"v1": 50, "v2": 50}
    state = t.set_traffic({"v2": 100})
    assert state.weights == {"v1": 0, "v2": 100} and state.drift == []
    assert writes[-1][1:] == ("UpdateEndpointWeightsAndCapacities", {
        "EndpointName": "churn",
        "DesiredWeightsAndCapacities": [{"VariantName": "v1", "DesiredWeight": 0.0},
                                        {"VariantName": "v2", "DesiredWeight": 100.0}]})

    state = t.remove("v1")
    assert state.weights == {"v2": 100} and state.drift == []
    assert t.stop().variants == {}
    assert t.stop().variants == {}  # idempotent

    from churnkit import registry

    history = registry.version_history("2")
    assert any("sagemaker endpoint 'churn' as v2" in h["event"] for h in history)


def test_drift_reported_when_live_state_differs_from_the_request(aws):
    from moto.sagemaker.models import sagemaker_backends

    t = target(aws)
    emulate_update_endpoint(t)
    t.deploy("models:/churn@champion")
    t.deploy("models:/churn@challenger", weight=0)

    def roll_back(**_):  # the endpoint goes back to 100/0 on its own (e.g. an alarm rollback)
        for v in sagemaker_backends[ACCOUNT][REGION].endpoints["churn"].production_variants:
            v["CurrentWeight"] = 100.0 if v["VariantName"] == "v1" else 0.0

    t.client("sagemaker").meta.events.register("after-call.sagemaker.UpdateEndpointWeightsAndCapacities", roll_back)
    state = t.set_traffic({"v1": 50, "v2": 50})
    assert state.weights == {"v1": 100, "v2": 0}
    assert state.drift == ["variant 'v1' serves 100% but 50% was asked for",
                           "variant 'v2' serves 0% but 50% was asked for"]


def test_invoke_through_runtime(aws):
    import requests

    t = target(aws)
    t.deploy("models:/churn@champion")
    payload = {"predictions": [{"churn_probability": 0.25, "churn": False}], "model": {"name": "churn", "version": "1"}}
    requests.post("http://motoapi.amazonaws.com/moto-api/static/sagemaker/endpoint-results", json={
        "account_id": ACCOUNT, "region": REGION,
        "results": [{"Body": json.dumps(payload), "ContentType": "application/json", "InvokedProductionVariant": "v1"}],
    })
    out = t.invoke([{"tenure": 3}])
    assert out == {"variant": "v1", "body": payload}


def _describe_responses(stub, config_name: str, model_name: str, version: str, status="InService"):
    from datetime import datetime, timezone

    now = datetime.now(timezone.utc)
    stub.add_response("describe_endpoint", {
        "EndpointName": "churn", "EndpointArn": f"arn:aws:sagemaker:{REGION}:{ACCOUNT}:endpoint/churn",
        "EndpointConfigName": config_name, "EndpointStatus": status, "CreationTime": now, "LastModifiedTime": now,
        "ProductionVariants": [{"VariantName": "v1", "CurrentWeight": 1.0, "DesiredWeight": 1.0}],
    }, {"EndpointName": "churn"})
    stub.add_response("describe_endpoint_config", {
        "EndpointConfigName": config_name, "EndpointConfigArn": f"arn:aws:sagemaker:{REGION}:{ACCOUNT}:endpoint-config/x",
        "CreationTime": now,
        "ProductionVariants": [{"VariantName": "v1", "ModelName": model_name, "InitialInstanceCount": 2,
                                "InstanceType": "ml.c5.large", "InitialVariantWeight": 1.0}],
    }, {"EndpointConfigName": config_name})
    stub.add_response("describe_model", {
        "ModelName": model_name, "ModelArn": f"arn:aws:sagemaker:{REGION}:{ACCOUNT}:model/{model_name}",
        "CreationTime": now, "PrimaryContainer": {"Image": "img", "Environment": {"CHURNKIT_MODEL_VERSION": version}},
    }, {"ModelName": model_name})


def test_guardrails_update_endpoint_exact_parameters(aws):
    from botocore.stub import ANY, Stubber

    from churnkit import registry

    from cloud_rollout_support import moto_percentiles

    moto_percentiles()  # this endpoint's ModelLatency has a p99 in CloudWatch: the alarm uses it
    t = target(aws)
    _model_latency(t, "v1", [20_000.0] * 50)
    sm = t.client("sagemaker")
    v2 = registry.find_version("models:/churn@challenger")
    model2 = f"churn-v2-{v2.tags['churnkit.artifact_sha256'][:8]}"
    with Stubber(sm) as stub:
        _describe_responses(stub, "churn-old", "churn-v1-x", "1")
        stub.add_response("create_model", {"ModelArn": f"arn:aws:sagemaker:{REGION}:{ACCOUNT}:model/{model2}"}, {
            "ModelName": model2, "ExecutionRoleArn": ENV["CHURNKIT_AWS_ROLE_ARN"],
            "PrimaryContainer": {"Image": ENV["CHURNKIT_AWS_IMAGE_URI"],
                                 "ModelDataUrl": f"s3://churnkit-test-bucket/churnkit/models/{model2}/model.tar.gz",
                                 "Environment": {"CHURNKIT_MODEL_NAME": "churn", "CHURNKIT_MODEL_VERSION": "2",
                                                 "CHURNKIT_MODEL_SHA256": v2.tags["churnkit.artifact_sha256"],
                                                 "CHURNKIT_MANIFEST_SHA256": v2.tags["churnkit.manifest_sha256"]}},
            "Tags": [{"Key": "churnkit:model", "Value": "churn"}, {"Key": "churnkit:version", "Value": "2"}]})
        variants = [{"VariantName": "v1", "ModelName": model2, "InitialInstanceCount": 2,
                     "InstanceType": "ml.c5.large", "InitialVariantWeight": 100.0}]
        stub.add_response("create_endpoint_config", {"EndpointConfigArn": f"arn:aws:sagemaker:{REGION}:{ACCOUNT}:endpoint-config/churn-new"}, {
            "EndpointConfigName": ANY, "ProductionVariants": variants, "DataCaptureConfig": ANY})
        stub.add_response("update_endpoint", {"EndpointArn": f"arn:aws:sagemaker:{REGION}:{ACCOUNT}:endpoint/churn"}, {
            "EndpointName": "churn", "EndpointConfigName": ANY, "RetainAllVariantProperties": True,
            "DeploymentConfig": {
                "BlueGreenUpdatePolicy": {
                    "TrafficRoutingConfiguration": {"Type": "CANARY", "WaitIntervalInSeconds": 300,
                                                    "CanarySize": {"Type": "CAPACITY_PERCENT", "Value": 10}},
                    # the canary bake and the final bake (2 x 300 s) + 600 s to provision the new fleet
                    "MaximumExecutionTimeoutInSeconds": 1200},
                "AutoRollbackConfiguration": {"Alarms": [{"AlarmName": "churn-v1-model-latency-p99"},
                                                         {"AlarmName": "churn-v1-invocation-5xx"}]}}})
        _describe_responses(stub, "churn-new", model2, "2", status="Updating")
        state = t.deploy_guarded("models:/churn@challenger", strategy="canary", step=10, bake_seconds=300, p99_ms=250)
        stub.assert_no_pending_responses()
    assert state.variants["v1"].model_version == "2"
    new_fleet = state.details["guardrails"]["new_fleet_config"]
    assert state.details["guardrails"]["latency_statistic"] == "p99" and new_fleet.startswith("churn-")
    alarms = {a["AlarmName"]: a for a in t.client("cloudwatch").describe_alarms()["MetricAlarms"]}
    assert set(alarms) == {"churn-v1-model-latency-p99", "churn-v1-invocation-5xx"}
    latency = alarms["churn-v1-model-latency-p99"]
    assert (latency["MetricName"], latency["ExtendedStatistic"], latency["Threshold"]) == ("ModelLatency", "p99", 250000.0)
    assert alarms["churn-v1-invocation-5xx"]["MetricName"] == "Invocation5XXErrors"
    for alarm in alarms.values():  # the new fleet only: an alarm the old fleet trips would end the deployment
        assert {"Name": "EndpointConfigName", "Value": new_fleet} in alarm["Dimensions"]


def _model_latency(t, variant: str, values_us: list[float]) -> None:
    from datetime import datetime, timezone

    dims = [{"Name": "EndpointName", "Value": "churn"}, {"Name": "VariantName", "Value": variant}]
    t.client("cloudwatch").put_metric_data(Namespace="AWS/SageMaker", MetricData=[{
        "MetricName": "ModelLatency", "Dimensions": dims, "Values": values_us,
        "Timestamp": datetime.fromtimestamp((int(time_now()) // 60 - 5) * 60, tz=timezone.utc),
        "Unit": "Microseconds"}])


def test_guarded_plan_without_p99_alarms_on_maximum_and_refuses_a_one_instance_canary(aws):
    """ModelLatency documents Average, Sum, Min, Max and SampleCount (monitoring-cloudwatch.html): without a p99
    from CloudWatch the alarm watches Maximum and says so; a 10 % canary of one instance is the whole fleet."""
    from churnkit.deploy.base import EndpointState, VariantState
    from churnkit.exceptions import DeployTargetError

    t = target(aws)

    def live(count: int) -> EndpointState:
        return EndpointState("sagemaker", "churn", {"v1": VariantState("v1", "1", 100, "InService")},
                             details={"production_variants": [{"VariantName": "v1", "ModelName": "m1",
                                                               "InitialInstanceCount": count, "InstanceType": "ml.m5.large"}]})

    reqs = t.plan("guarded", model_uri="models:/churn/2", strategy="canary", step=10, bake_seconds=600, live=live(2))
    latency = reqs[2]["request"]
    assert (latency["AlarmName"], latency["Statistic"]) == ("churn-v1-model-latency-maximum", "Maximum")
    assert "ExtendedStatistic" not in latency and "maximum model latency" in latency["AlarmDescription"]
    update = reqs[-1]["request"]["DeploymentConfig"]
    assert update["BlueGreenUpdatePolicy"]["MaximumExecutionTimeoutInSeconds"] == 1800  # AWS's own 600 s bake example
    config = reqs[-2]["request"]["EndpointConfigName"]
    assert {"Name": "EndpointConfigName", "Value": config} in latency["Dimensions"]
    with pytest.raises(DeployTargetError, match=r"a 10 % canary of a 1-instance fleet is 1 instance\(s\).*2 instances"):
        t.plan("guarded", model_uri="models:/churn/2", strategy="canary", step=10, live=live(1))
    with pytest.raises(DeployTargetError, match="a 50 % linear of a 1-instance fleet"):
        t.plan("guarded", model_uri="models:/churn/2", strategy="linear", step=50, live=live(1))


def test_telemetry_uses_maximum_when_cloudwatch_returns_no_p99(aws):
    """A GetMetricData response built field by field from its documented shape
    (https://docs.aws.amazon.com/AmazonCloudWatch/latest/APIReference/API_GetMetricData.html): the p99 query
    answers no values, Maximum does; a variant with requests and neither is 'no datapoints', not 'no latency'."""
    from datetime import datetime, timezone

    from botocore.stub import ANY, Stubber

    t = target(aws)
    base = (int(time_now()) // 60 - 10) * 60
    stamps = [datetime.fromtimestamp(base + 60 * i, tz=timezone.utc) for i in range(2)]

    def result(i: int, j: int, values: list[float]) -> dict:
        metric = ("Invocations", "Invocation5XXErrors", "Invocation4XXErrors", "ModelLatency", "ModelLatency|Maximum")[j]
        return {"Id": f"m{i}_{j}", "Label": f"{('v1', 'v2')[i]}|{metric}", "StatusCode": "Complete",
                "Timestamps": stamps[:len(values)], "Values": values}

    body = {"MetricDataResults": [result(0, 0, [60.0, 40.0]), result(0, 1, []), result(0, 2, []), result(0, 3, []),
                                  result(0, 4, [180_000.0, 95_000.0]),
                                  result(1, 0, [10.0]), result(1, 1, []), result(1, 2, []), result(1, 3, []),
                                  result(1, 4, [])],
            "Messages": []}
    with Stubber(t.client("cloudwatch")) as stub:
        stub.add_response("get_metric_data", body, {"MetricDataQueries": ANY, "StartTime": ANY, "EndTime": ANY,
                                                    "ScanBy": "TimestampAscending"})
        t._telemetry = None
        reader = t.telemetry_reader
        reader.records = lambda *a: []
        windows = t.telemetry(["v1", "v2"], base, base + 120)
    assert windows["v1"].requests == 100 and windows["v1"].latencies_ms == (180.0, 95.0)
    assert "ModelLatency Maximum (CloudWatch returned no p99)" in windows["v1"].source
    assert windows["v2"].requests == 10 and windows["v2"].latencies_ms == ()
    assert "no datapoints for the requests served (latency unknown, not zero)" in windows["v2"].source


def test_guardrails_linear_plan_and_refusals(aws):
    from churnkit.deploy.base import EndpointState, VariantState
    from churnkit.exceptions import DeployTargetError

    t = target(aws)
    live = EndpointState("sagemaker", "churn", {"v1": VariantState("v1", "1", 100, "InService")},
                         details={"production_variants": [{"VariantName": "v1", "ModelName": "m1",
                                                           "InitialInstanceCount": 2, "InstanceType": "ml.m5.large"}]})
    reqs = t.plan("guarded", model_uri="models:/churn/2", strategy="linear", step=25, bake_seconds=1200, live=live)
    update = reqs[-1]["request"]
    policy = update["DeploymentConfig"]["BlueGreenUpdatePolicy"]
    assert policy["TrafficRoutingConfiguration"] == {
        "Type": "LINEAR", "WaitIntervalInSeconds": 1200, "LinearStepSize": {"Type": "CAPACITY_PERCENT", "Value": 25}}
    assert policy["MaximumExecutionTimeoutInSeconds"] == 4 * 1200 + 600  # more than the four waits, not 3600
    with pytest.raises(DeployTargetError, match="'blue_green' is not 'canary' or 'linear'"):
        t.plan("guarded", model_uri="models:/churn/2", strategy="blue_green", live=live)
    two = EndpointState("sagemaker", "churn", {"v1": live.variants["v1"], "v2": VariantState("v2", "2", 0, "InService")})
    with pytest.raises(DeployTargetError, match="replaces the single variant"):
        t.plan("guarded", model_uri="models:/churn/2", live=two)


def test_plan_without_credentials_is_a_new_endpoint(store, monkeypatch):
    for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(k)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent")
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent")
    t = target(store)
    reqs = t.plan("deploy", model_uri="models:/churn@champion", weight=0)
    assert [r["operation"] for r in reqs] == ["PutObject", "CreateModel", "CreateEndpointConfig", "CreateEndpoint"]
    assert reqs[2]["request"]["ProductionVariants"][0]["InitialVariantWeight"] == 100.0
    assert "CloudCredentialsError" in t.plan_basis and "CHURNKIT_AWS_BUCKET" in t.plan_basis

    from churnkit.exceptions import CloudCredentialsError

    with pytest.raises(CloudCredentialsError, match="Unable to locate credentials.*CHURNKIT_AWS_ROLE_ARN"):
        t.describe()


def test_missing_setting_names_the_variable(store, monkeypatch):
    from churnkit.exceptions import ConfigError

    monkeypatch.delenv("CHURNKIT_AWS_BUCKET")
    with pytest.raises(ConfigError, match="CHURNKIT_AWS_BUCKET"):
        target(store).plan("deploy", model_uri="models:/churn@champion")


def test_missing_sdk_names_the_extra(store, monkeypatch):
    from churnkit.exceptions import MissingExtraError

    monkeypatch.setitem(sys.modules, "boto3", None)  # import boto3 now raises ImportError
    with pytest.raises(MissingExtraError, match=r"pip install -e '\.\[aws\]'"):
        target(store).client("sagemaker")


def test_refused_credentials_and_other_errors_are_churnkit_errors(store):
    from botocore.stub import Stubber

    from churnkit.exceptions import CloudCredentialsError, DeployTargetError

    t = target(store)
    with Stubber(t.client("sagemaker")) as stub:
        stub.add_client_error("describe_endpoint", "UnrecognizedClientException", "The security token is invalid.")
        stub.add_client_error("describe_endpoint", "ThrottlingException", "Rate exceeded")
        with pytest.raises(CloudCredentialsError, match="security token is invalid.*CHURNKIT_AWS_BUCKET"):
            t.describe()
        with pytest.raises(DeployTargetError, match="DescribeEndpoint on endpoint 'churn' failed.*Rate exceeded"):
            t.describe()


@pytest.mark.parametrize("kw, limit", [
    (dict(strategy="canary", step=60), "CanarySize: 60 is outside 1-50% of the fleet"),
    (dict(strategy="linear", step=5), "LinearStepSize: 5 is outside 10-50% of the fleet"),
    (dict(strategy="linear", step=55), "LinearStepSize: 55 is outside 10-50%"),
    (dict(bake_seconds=3601), "WaitIntervalInSeconds: 3601 is outside 0-3600 s"),
    (dict(timeout_seconds=599), "MaximumExecutionTimeoutInSeconds: 599 must be from 600 to 28800"),
    (dict(timeout_seconds=28801), "MaximumExecutionTimeoutInSeconds: 28801 must be from 600 to 28800"),
    (dict(strategy="linear", step=10, bake_seconds=3000, timeout_seconds=28800),
     r"longer than the 10 wait\(s\) of 3000 s \(30000 s in all\)"),
    (dict(strategy="canary", step=10, bake_seconds=900, timeout_seconds=1800), r"longer than the 2 wait\(s\) of 900 s"),
])
def test_guardrail_limits_are_checked_before_any_request(aws, kw, limit):
    from churnkit.deploy.base import EndpointState, VariantState
    from churnkit.exceptions import DeployTargetError

    t = target(aws)
    writes = record_writes(t)
    live = EndpointState("sagemaker", "churn", {"v1": VariantState("v1", "1", 100, "InService")},
                         details={"production_variants": [{"VariantName": "v1", "ModelName": "m1",
                                                           "InitialInstanceCount": 1, "InstanceType": "ml.m5.large"}]})
    with pytest.raises(DeployTargetError, match=limit):
        t.plan("guarded", model_uri="models:/churn/2", live=live, **kw)
    with pytest.raises(DeployTargetError, match=limit):
        t.deploy_guarded("models:/churn/2", **kw)
    assert writes == []  # nothing was sent


# ---- telemetry: CloudWatch AWS/SageMaker + Data Capture ------------------------------------------------
FIXTURES = __import__("pathlib").Path(__file__).resolve().parents[1] / "fixtures"


def test_telemetry_reads_cloudwatch_per_variant_and_scores_from_data_capture(aws):
    """CloudWatch points under the real namespace and dimensions; capture records as SageMaker writes them
    (tests/fixtures/sagemaker-data-capture.jsonl, https://docs.aws.amazon.com/sagemaker/latest/dg/
    model-monitor-data-capture-endpoint.html) under <destination>/<endpoint>/<variant>/yyyy/mm/dd/hh/."""
    from datetime import datetime, timezone

    from cloud_rollout_support import moto_percentiles

    moto_percentiles()
    t = target(aws)
    base = (int(time_now()) // 60 - 10) * 60  # a complete, ingested ten-minute-old window
    dims = lambda v: [{"Name": "EndpointName", "Value": "churn"}, {"Name": "VariantName", "Value": v}]  # noqa: E731
    cw = t.client("cloudwatch")
    for minute, (n, e5, e4, lat_us) in enumerate([(120, 2, 1, [20_000.0] * 95 + [90_000.0] * 5), (80, 0, 0, [15_000.0] * 20)]):
        stamp = datetime.fromtimestamp(base + 60 * minute + 5, tz=timezone.utc)
        cw.put_metric_data(Namespace="AWS/SageMaker", MetricData=[
            {"MetricName": "Invocations", "Dimensions": dims("v2"), "Timestamp": stamp, "Value": n},
            {"MetricName": "Invocation5XXErrors", "Dimensions": dims("v2"), "Timestamp": stamp, "Value": e5},
            {"MetricName": "Invocation4XXErrors", "Dimensions": dims("v2"), "Timestamp": stamp, "Value": e4},
            {"MetricName": "ModelLatency", "Dimensions": dims("v2"), "Timestamp": stamp, "Values": lat_us},
            {"MetricName": "Invocations", "Dimensions": dims("v1"), "Timestamp": stamp, "Value": 1000}])
    lines = []
    for i, line in enumerate((FIXTURES / "sagemaker-data-capture.jsonl").read_text().splitlines()):
        rec = json.loads(line)
        rec["eventMetadata"]["inferenceTime"] = datetime.fromtimestamp(base + 20 + 30 * i, tz=timezone.utc).strftime(
            "%Y-%m-%dT%H:%M:%SZ")
        lines.append(json.dumps(rec))
    hour = datetime.fromtimestamp(base, tz=timezone.utc)
    key = f"churnkit/capture/churn/churn/v2/{hour:%Y/%m/%d/%H}/{hour:%M-%S}-000-6a7e2bd5-5dcb-4b55-bc87-a9b3bc5ed2dd.jsonl"
    t.client("s3").put_object(Bucket=ENV["CHURNKIT_AWS_BUCKET"], Key=key, Body="\n".join(lines).encode())

    windows = t.telemetry(["v1", "v2"], base, base + 120)
    v2 = windows["v2"]
    assert (v2.requests, v2.errors, v2.client_errors) == (200, 2, 1)
    assert max(v2.latencies_ms) == pytest.approx(90.0, rel=0.05)  # the worst minute's p99, in ms
    assert sorted(v2.scores) == [0.0625, 0.25, 0.8125]  # BASE64 and JSON encodings decoded
    assert "CloudWatch AWS/SageMaker EndpointName=churn VariantName=v2" in v2.source and "Data Capture s3://" in v2.source
    assert windows["v1"].requests == 2000 and windows["v1"].scores == ()
    inputs = t.captured_inputs(["v2"], base)
    assert list(inputs["tenure"]) == [3, 48, 12] and "monthly_charges" in inputs
    # the window still open, or closed but not ingested, shows no traffic (never "healthy")
    assert t.telemetry(["v2"], time_now() - 30)["v2"].requests == 0
    queries = t.telemetry_queries(["v2"], base, base + 120)
    stat = [(q["MetricStat"]["Metric"]["MetricName"], q["MetricStat"]["Stat"]) for q in queries[0]["request"]["MetricDataQueries"]]
    assert stat == [("Invocations", "Sum"), ("Invocation5XXErrors", "Sum"), ("Invocation4XXErrors", "Sum"),
                    ("ModelLatency", "p99"), ("ModelLatency", "Maximum")]
    assert "ModelLatency p99" in v2.source
    assert queries[1]["request"]["Prefix"].startswith("churnkit/capture/churn/churn/v2/")
    limits = t.limits()
    assert t.telemetry_resolution() == 180.0 and limits.max_variants == 10


def test_denied_cloudwatch_names_the_permission_and_the_terraform_output(aws):
    from botocore.stub import Stubber

    from churnkit.exceptions import TelemetryAccessError

    t = target(aws)
    with Stubber(t.client("cloudwatch")) as stub:
        stub.add_client_error("get_metric_data", "AccessDenied", "User: arn:aws:sts::123456789012:assumed-role/x is "
                              "not authorized to perform: cloudwatch:GetMetricData", http_status_code=403)
        with pytest.raises(TelemetryAccessError, match=r"cloudwatch:GetMetricData.*'deployer_role_arn'.*No traffic was moved"):
            t.telemetry(["v1"], time_now() - 3600, time_now() - 600)


def time_now() -> float:
    import time

    return time.time()
