"""Every request the kit plans, checked by the cloud's own SDK model: botocore's ParamValidator against the
installed service models (SageMaker, S3, CloudWatch, Application Auto Scaling), azure-mgmt-monitor's
AutoscaleSettingResource and azure-monitor-query's aggregation types, and the GAPIC request protos of Cloud
Monitoring and Vertex AI (a field or enum value the API does not have is refused)."""

from __future__ import annotations

import json

import pytest

from deploy.test_sagemaker import aws, store  # noqa: F401 - the moto-backed fixtures


def _botocore_errors(req: dict) -> str:
    from botocore.session import get_session
    from botocore.validate import ParamValidator

    op = get_session().get_service_model(req["api"]).operation_model(req["operation"])
    report = ParamValidator().validate(req["request"], op.input_shape)
    return report.generate_report() if report.has_errors() else ""


def test_every_planned_aws_request_passes_botocore_validation(aws):  # noqa: F811
    from churnkit.deploy import get_target
    from churnkit.deploy.autoscaling import policy_for

    from churnkit.deploy.base import EndpointState, VariantState

    cpu = policy_for("sagemaker", min_instances=2, max_instances=4, target_cpu=60, schedules=["MON-FRI 08:00 4-8"])
    t = get_target("sagemaker", config=aws, poll_seconds=0, autoscaling=cpu, instance_count=2)
    planned = t.plan("deploy", model_uri="models:/churn@champion")  # a new endpoint
    variant = {"ModelName": "churn-v1", "InitialInstanceCount": 2, "InstanceType": "ml.m5.large"}
    one = EndpointState("sagemaker", "churn", {"v1": VariantState("v1", "1", 100, "InService")},
                        details={"endpoint_config": "churn-c1", "production_variants": [{"VariantName": "v1", **variant}]})
    two = EndpointState("sagemaker", "churn", {"v1": VariantState("v1", "1", 90, "InService"),
                                               "v2": VariantState("v2", "2", 10, "InService")},
                        details={"endpoint_config": "churn-c2", "production_variants": [
                            {"VariantName": "v1", **variant}, {"VariantName": "v2", **variant, "ModelName": "churn-v2"}]})
    planned += t.plan("deploy", model_uri="models:/churn@challenger", weight=10, live=one)
    planned += t.plan("set_traffic", weights={"v1": 50, "v2": 50}, live=two)
    planned += t.plan("guarded", model_uri="models:/churn@challenger", strategy="linear", step=50, bake_seconds=60,
                      live=one)
    planned += t.plan("remove", variant="v1", live=two) + t.plan("stop", live=two)
    planned += t.telemetry_queries(["v1"], 1_767_600_000, 1_767_600_300)
    ops = {(r["api"], r["operation"]) for r in planned}
    assert {("sagemaker", "UpdateEndpoint"), ("cloudwatch", "PutMetricAlarm"), ("cloudwatch", "GetMetricData"),
            ("application-autoscaling", "PutScalingPolicy"), ("application-autoscaling", "PutScheduledAction"),
            ("s3", "ListObjectsV2"), ("sagemaker", "DeleteEndpoint")} <= ops
    errors = {f"{r['api']} {r['operation']}": e for r in planned if (e := _botocore_errors(r))}
    assert errors == {}


def test_a_request_botocore_refuses_is_caught_by_the_check():
    bad = {"api": "cloudwatch", "operation": "PutMetricAlarm", "request": {
        "AlarmName": "x", "MetricName": "ModelLatency", "Namespace": "AWS/SageMaker", "EvaluationPeriods": 1,
        "ComparisonOperator": "GreaterThanThreshold", "Threshold": "250 ms", "Stat": "p99"}}
    report = _botocore_errors(bad)
    assert 'Unknown parameter in input: "Stat"' in report and "Invalid type for parameter Threshold" in report


def test_azure_autoscale_setting_and_metric_queries_fit_the_sdk_models():
    from azure.mgmt.monitor.models import AutoscaleSettingResource
    from azure.monitor.query import MetricAggregationType

    from churnkit.deploy.autoscaling import azure_setting, policy_for
    from churnkit.deploy.azure_monitor import AzureMonitorTelemetry

    ws = ("/subscriptions/00000000-0000-0000-0000-000000000000/resourceGroups/rg-churn/providers/"
          "Microsoft.MachineLearningServices/workspaces/ws-churn")
    for policy in (policy_for("azureml", max_instances=3, target_invocations_per_instance=600),
                   policy_for("azureml", max_instances=3, target_cpu=70, schedules=["SAT,SUN 00:00 1-2"])):
        body = azure_setting(policy, workspace_id=ws, endpoint="churn", deployment="v2-churn", location="westeurope")
        model = AutoscaleSettingResource.deserialize(body)
        assert model.serialize(keep_readonly=False)["properties"]["profiles"] == body["properties"]["profiles"]
    trigger = model.profiles[0].rules[0].metric_trigger
    assert trigger.metric_name == "CpuUtilizationPercentage" and trigger.divide_per_instance is None

    class Target:
        endpoint, settings = "churn", {"subscription_id": "s", "resource_group": "rg", "workspace": "w"}

        def deployment_of(self, variant):
            return f"{variant}-churn"

    for q in AzureMonitorTelemetry(Target()).metric_requests(0, 120):
        assert all(a in {m.value for m in MetricAggregationType} for a in q["aggregations"])
        assert q["metric_names"][0] in json.loads(
            (__import__("pathlib").Path(__file__).parents[1] / "fixtures" / "azure-monitor-metric-definitions.json")
            .read_text())["onlineEndpoints"]


def test_cloud_monitoring_and_vertex_requests_build_the_gapic_protos(tmp_path, monkeypatch):
    from google.cloud import aiplatform_v1, monitoring_v3

    from churnkit.deploy.cloud_monitoring import CloudMonitoringTelemetry
    from churnkit.deploy.vertex import VertexTarget

    t = VertexTarget(endpoint="churn", project="churn-proj", region="europe-west4", image_uri="img", bucket="b")
    reader = CloudMonitoringTelemetry(t)
    for kind in ("model", "total"):
        for req in reader.metric_requests("4242", 1_767_600_000, 1_767_600_120, kind):
            proto = monitoring_v3.ListTimeSeriesRequest.from_json(json.dumps(req))
            assert proto.aggregation.alignment_period.seconds == 60 and proto.view.name == "FULL"
    with pytest.raises(Exception):  # noqa: B017 - the proto refuses a field the API does not have
        monitoring_v3.ListTimeSeriesRequest.from_json(json.dumps({"name": "projects/p", "latency_type": "model"}))

    from churnkit.deploy.base import EndpointState, Release

    release = Release("models:/churn/2", "churn", "2", "v2", "ab" * 32)
    upload = t._upload_request(release)["request"]
    aiplatform_v1.UploadModelRequest(upload)
    live = EndpointState("vertex", "churn", details={"resource_name": "projects/p/locations/l/endpoints/4242",
                                                     "deployed_model_ids": {"v1": "7001"}})
    deploy = t._deploy_request(release, {"v1": 90, "v2": 10}, live, "projects/p/locations/l/models/9")["request"]
    assert aiplatform_v1.DeployModelRequest(deploy).traffic_split == {"7001": 90, "0": 10}
