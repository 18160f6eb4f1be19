"""Latency diagnosis from the cloud's own metrics: one recorded series per cause.

SageMaker: moto's CloudWatch (put_metric_data shaped as SageMaker publishes: ModelLatency and
OverheadLatency in microseconds per variant, CPUUtilization in percent x vCPUs) and Application Auto
Scaling. https://docs.aws.amazon.com/sagemaker/latest/dg/monitoring-cloudwatch.html
"""

from __future__ import annotations

import datetime as dt

import pytest

from churnkit.exceptions import MonitoringPermissionError
from churnkit.monitor.cloud import cloud_latency, diagnose, parse_since, summary

REGION = "us-east-1"
NOW = dt.datetime.now(dt.UTC).replace(second=0, microsecond=0)


@pytest.fixture
def aws(monkeypatch):
    import boto3
    from moto import mock_aws

    for k, v in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": REGION}.items():
        monkeypatch.setenv(k, v)
    with mock_aws():
        yield boto3.Session(region_name=REGION)


def endpoint(session, instances: int = 1, scaling: tuple | None = None) -> None:
    """A SageMaker endpoint with one ml.m5.large (2 vCPU) variant v1; ``scaling`` = (min, max, target)."""
    sm = session.client("sagemaker")
    sm.create_model(ModelName="churn-v1", ExecutionRoleArn="arn:aws:iam::123456789012:role/r",
                    PrimaryContainer={"Image": "123456789012.dkr.ecr.us-east-1.amazonaws.com/churnkit:1"})
    sm.create_endpoint_config(EndpointConfigName="churn-c1", ProductionVariants=[{
        "VariantName": "v1", "ModelName": "churn-v1", "InitialInstanceCount": instances, "InstanceType": "ml.m5.large",
        "InitialVariantWeight": 1.0}])
    sm.create_endpoint(EndpointName="churn", EndpointConfigName="churn-c1")
    if scaling:
        from churnkit.deploy.autoscaling import AutoscalingPolicy, sagemaker_requests

        lo, hi, target = scaling
        aas = session.client("application-autoscaling")
        for r in sagemaker_requests(AutoscalingPolicy(lo, hi, target_invocations_per_instance=target,
                                                      scale_out_cooldown=300), "churn", "v1"):
            getattr(aas, {"RegisterScalableTarget": "register_scalable_target",
                          "PutScalingPolicy": "put_scaling_policy"}[r["operation"]])(**r["request"])


def record(session, minutes: int, **series) -> None:
    """Per-minute datapoints: invocations, model_ms, model_max_ms, overhead_ms, cpu (raw, percent x vCPUs)."""
    cw = session.client("cloudwatch")
    dims = [{"Name": "EndpointName", "Value": "churn"}, {"Name": "VariantName", "Value": "v1"}]
    for i in range(minutes):
        ts = NOW - dt.timedelta(minutes=minutes - i)
        get = {k: (v[i] if isinstance(v, list) else v) for k, v in series.items()}
        data = [{"MetricName": "Invocations", "Value": get["invocations"], "Unit": "None"},
                {"MetricName": "Invocation5XXErrors", "Value": get.get("errors", 0), "Unit": "None"},
                {"MetricName": "Invocation4XXErrors", "Value": 0, "Unit": "None"}]
        if get["invocations"]:
            data += [{"MetricName": "ModelLatency", "Value": get["model_ms"] * 1000, "Unit": "Microseconds"},
                     {"MetricName": "ModelLatency", "Value": get.get("model_max_ms", get["model_ms"]) * 1000,
                      "Unit": "Microseconds"},
                     {"MetricName": "OverheadLatency", "Value": get["overhead_ms"] * 1000, "Unit": "Microseconds"}]
        cw.put_metric_data(Namespace="AWS/SageMaker", MetricData=[{**d, "Dimensions": dims, "Timestamp": ts} for d in data])
        cw.put_metric_data(Namespace="/aws/sagemaker/Endpoints", MetricData=[
            {"MetricName": "CPUUtilization", "Value": get["cpu"], "Unit": "Percent", "Dimensions": dims, "Timestamp": ts},
            {"MetricName": "MemoryUtilization", "Value": 30.0, "Unit": "Percent", "Dimensions": dims, "Timestamp": ts}])


def diagnosis(session) -> dict:
    report = cloud_latency("sagemaker", "churn", "1h", session=session)
    assert report["series"]["v1"].source == "CloudWatch AWS/SageMaker churn/v1"
    assert report["endpoint"] == "churn" and "likely cause" in summary(report)
    return report["variants"]["v1"]


def test_model_dominates(aws):
    endpoint(aws)
    record(aws, 10, invocations=600, model_ms=80.0, overhead_ms=4.0, cpu=90.0)  # 45 % of 2 vCPUs
    d = diagnosis(aws)
    assert d["likely_cause"] == "model" and d["requests"] == 6000
    assert d["breakdown_ms"]["model"] == pytest.approx(80.0) and d["cpu_peak_pct"] == pytest.approx(45.0)
    assert "lighter model" in d["change"]


def test_payload_size(aws):
    endpoint(aws)
    record(aws, 10, invocations=100, model_ms=2.0, overhead_ms=40.0, cpu=30.0)
    d = diagnosis(aws)
    assert d["likely_cause"] == "payload size" and d["shares"]["overhead"] > 0.9
    assert "smaller batches" in d["change"]


def test_cold_start(aws):
    endpoint(aws)
    record(aws, 8, invocations=[50, 0, 0, 50, 50, 50, 50, 50], model_ms=5.0, overhead_ms=2.0, cpu=20.0,
           model_max_ms=[8.0, 0, 0, 2500.0, 9.0, 8.0, 9.0, 8.0])
    d = diagnosis(aws)
    assert d["likely_cause"] == "cold start" and "2500 ms" in d["explanation"]
    assert "--min-instances" in d["change"]


def test_saturation_without_autoscaling(aws):
    endpoint(aws)
    record(aws, 10, invocations=3000, model_ms=20.0, overhead_ms=15.0, cpu=190.0)
    d = diagnosis(aws)
    assert d["likely_cause"] == "saturation" and d["scaling"] is None
    assert "--min-instances 1 --max-instances 2 --target-invocations-per-instance" in d["change"]


def test_under_provisioned_scaling(aws):
    endpoint(aws, instances=2, scaling=(1, 2, 900))
    record(aws, 10, invocations=4000, model_ms=20.0, overhead_ms=10.0, cpu=196.0)
    d = diagnosis(aws)
    assert d["likely_cause"] == "under-provisioned scaling" and d["scaling"]["max_instances"] == 2
    assert "--max-instances 4" in d["change"]


def test_scaling_policy_too_slow(aws):
    endpoint(aws, instances=1, scaling=(1, 4, 1500))
    record(aws, 10, invocations=2500, model_ms=20.0, overhead_ms=10.0, cpu=[80.0] * 5 + [188.0] * 5)
    d = diagnosis(aws)
    assert d["likely_cause"] == "scaling policy too slow"
    assert "--target-invocations-per-instance 1050 (was 1500.0)" in d["change"] and "--scale-out-cooldown 60" in d["change"]


def test_missing_permission_names_it_and_the_terraform_output(aws):
    endpoint(aws)
    cw = aws.client("cloudwatch")

    def deny(**_):
        from botocore.exceptions import ClientError

        raise ClientError({"Error": {"Code": "AccessDenied", "Message": "not authorized to perform: "
                                     "cloudwatch:GetMetricData"}}, "GetMetricData")

    cw.meta.events.register("before-call.cloudwatch.GetMetricData", deny)
    session = type("S", (), {"client": lambda self, name, region_name=None: cw if name == "cloudwatch" else aws.client(name),
                             "region_name": REGION})()
    with pytest.raises(MonitoringPermissionError) as err:
        cloud_latency("sagemaker", "churn", "30m", session=session)
    assert "cloudwatch:GetMetricData" in str(err.value) and "`deployer_role_arn`" in str(err.value)


def test_since_and_no_traffic():
    assert parse_since("90s") == 90 and parse_since("15m") == 900 and parse_since("2h") == 7200
    from churnkit.exceptions import MonitorError
    from churnkit.monitor.cloud import PlatformSeries

    with pytest.raises(MonitorError, match="not a duration"):
        parse_since("soon")
    assert diagnose(PlatformSeries("x", 60))["likely_cause"] == "unknown"


def test_cli_latency_json_and_usage(aws):
    import json

    from click.testing import CliRunner

    from churnkit.cli import main

    endpoint(aws)
    record(aws, 5, invocations=600, model_ms=60.0, overhead_ms=3.0, cpu=60.0)
    res = CliRunner().invoke(main, ["monitor", "--latency", "--target", "sagemaker", "--endpoint", "churn", "--since",
                                    "30m", "--json"])
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    assert doc["variants"]["v1"]["likely_cause"] == "model" and len(doc["series"]["v1"]["times"]) == 5
    res = CliRunner().invoke(main, ["monitor", "--latency"])
    assert res.exit_code == 2 and "--latency needs --target" in res.output
    res = CliRunner().invoke(main, ["monitor", "--reference", "x.csv"])
    assert res.exit_code == 2 and "give --reference FILE and --current" in res.output
