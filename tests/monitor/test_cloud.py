"""Latency diagnosis from the cloud's own metrics: one recorded series per cause.

SageMaker: moto's CloudWatch (put_metric_data shaped as SageMaker publishes: ModelLatency and
OverheadLatency in microseconds per variant, CPUUtilization in percent x vCPUs) and Application Auto
Scaling. https://docs.aws.amazon.com/sagemaker/latest/dg/monitoring-cloudwatch.html
"""

from __future__ import annotations

import datetime as dt
import json

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
    session = type("S", (), {"client": lambda self, name, region_name=None, **kw: cw if name == "cloudwatch" else aws.client(name),
                             "region_name": REGION})()
    with pytest.raises(MonitoringPermissionError) as err:
        cloud_latency("sagemaker", "churn", "30m", session=session)
    assert "cloudwatch:GetMetricData" in str(err.value) and "`deployer_role_arn`" in str(err.value)


def test_since_beyond_fifteen_days_reads_the_period_cloudwatch_still_keeps(aws):
    """CloudWatch keeps 1-minute data 15 days, 5-minute data 63 days, hourly data 455 days (GetMetricStatistics in
    the CloudWatch API reference): an older start needs that period, or CloudWatch returns no datapoints."""
    from churnkit.exceptions import MonitorError
    from churnkit.monitor.cloud import cloudwatch_period

    endpoint(aws)
    record(aws, 3, invocations=60, model_ms=10.0, overhead_ms=2.0, cpu=20.0)
    periods = []
    cw = aws.client("cloudwatch")
    cw.meta.events.register("provide-client-params.cloudwatch.GetMetricData", lambda params, **_: periods.extend(
        q["MetricStat"]["Period"] for q in params["MetricDataQueries"]))
    session = type("S", (), {"client": lambda self, name, region_name=None, **kw: cw if name == "cloudwatch"
                             else aws.client(name), "region_name": REGION})()
    report = cloud_latency("sagemaker", "churn", "20d", session=session)
    assert set(periods) == {300} and report["series"]["v1"].period_s == 300
    assert [cloudwatch_period(d * 86400) for d in (1, 15, 16, 63, 64, 455)] == [60, 60, 300, 300, 3600, 3600]
    assert cloudwatch_period(3600, period=90) == 120  # a multiple of the resolution
    with pytest.raises(MonitorError, match="past CloudWatch's retention of 455 days"):
        cloudwatch_period(456 * 86400)


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


# ---- Azure ML through azure-mgmt-monitor, only the HTTP transport replaced ------------------------------------
WS = ("/subscriptions/00000000-0000-0000-0000-000000000000/resourceGroups/rg-churn/providers/"
      "Microsoft.MachineLearningServices/workspaces/ws-churn")


def _azure_metric(name: str, unit: str, series: list[tuple[str, list[dict]]]) -> dict:
    """One metric as GET .../providers/Microsoft.Insights/metrics returns it
    (https://learn.microsoft.com/rest/api/monitor/metrics/list)."""
    return {"id": f"{WS}/providers/Microsoft.Insights/metrics/{name}", "type": "Microsoft.Insights/metrics",
            "name": {"value": name, "localizedValue": name}, "unit": unit, "errorCode": "Success",
            "timeseries": [{"metadatavalues": ([{"name": {"value": "deployment", "localizedValue": "deployment"},
                                                  "value": dep}] if dep else []), "data": data} for dep, data in series]}


def _azure_transport(responses: dict, status: int = 200):
    import io
    import json
    from urllib.parse import urlparse

    import requests
    from azure.core.pipeline.transport import RequestsTransport

    class Fake(RequestsTransport):
        def __init__(self):
            super().__init__(session=self, session_owner=False)
            self.paths: list[str] = []

        def request(self, method, url, data=None, **kw):
            from urllib.parse import parse_qs

            from cloud_docs import azure_documented, azure_metric_error

            path = urlparse(url).path
            self.paths.append(path)
            body = responses.get(path)
            code = status if body is not None else 404
            if body is None:
                body = {"error": {"code": "ResourceNotFound", "message": f"{path} not found"}}
            query = {k: v[0] for k, v in parse_qs(urlparse(url).query).items()}
            if code == 200 and path.endswith("/Microsoft.Insights/metrics"):  # Azure Monitor's own checks
                error = azure_metric_error(path, query["metricnames"], query.get("aggregation", ""))
                code, body = (400, error) if error else (200, azure_documented(path, body, query["metricnames"],
                                                                                 query.get("aggregation", "")))
            resp = requests.Response()
            resp.status_code, resp.reason, resp.url = code, "OK" if code < 400 else "Error", url
            resp.headers.update({"content-type": "application/json"})
            resp._content = json.dumps(body).encode()
            resp.raw = io.BytesIO(resp._content)
            return resp

        def close(self):
            pass

    return Fake()


def _minutes(n: int, **values) -> list[dict]:
    return [{"timeStamp": (NOW - dt.timedelta(minutes=n - i)).isoformat(), **{k: (v[i] if isinstance(v, list) else v)
                                                                           for k, v in values.items()}} for i in range(n)]


def test_azureml_under_provisioned_from_azure_monitor():
    from churnkit.deploy.autoscaling import AutoscalingPolicy, azure_setting, monitor_client
    from churnkit.monitor.cloud import read_azureml
    from deploy.test_azureml import FakeCredential

    ep = f"{WS}/onlineEndpoints/churn"
    setting = azure_setting(AutoscalingPolicy(1, 3, target_cpu=70), workspace_id=WS, endpoint="churn",
                            deployment="blue", location="westeurope")
    setting |= {"id": "/subscriptions/x/resourceGroups/rg-churn/providers/microsoft.insights/autoscalesettings/s",
                "name": "churn-blue-autoscale"}
    responses = {
        f"{ep}/providers/Microsoft.Insights/metrics": {"value": [
            _azure_metric("RequestLatency", "Milliseconds", [("blue", _minutes(10, average=180.0, maximum=900.0))]),
            _azure_metric("RequestLatency_P99", "Milliseconds", [("blue", _minutes(10, average=850.0))]),
            _azure_metric("RequestsPerMinute", "Count", [("blue", _minutes(10, average=3000.0, total=9e9))])]},
        f"{ep}/deployments/blue/providers/Microsoft.Insights/metrics": {"value": [
            _azure_metric("CpuUtilizationPercentage", "Percent", [("", _minutes(10, average=93.0, maximum=99.0))]),
            _azure_metric("CpuMemoryUtilizationPercentage", "Percent", [("", _minutes(10, average=40.0))]),
            _azure_metric("DeploymentCapacity", "Count", [("", _minutes(10, average=[2.0] * 4 + [3.0] * 6))])]},
        "/subscriptions/00000000-0000-0000-0000-000000000000/resourcegroups/rg-churn/providers/Microsoft.Insights/"
        "autoscalesettings/churn-blue-autoscale": setting,
    }
    transport = _azure_transport(responses)
    client = monitor_client(FakeCredential(), "00000000-0000-0000-0000-000000000000", transport=transport)
    series = read_azureml("churn", NOW.timestamp() - 3600, client=client, workspace_id=WS, deployments={"blue": "blue"},
                          resource_group="rg-churn")
    s = series["blue"]
    assert len(s.times) == 10 and s.instances[-1] == 3.0 and s.scaling["max_instances"] == 3
    assert s.memory_pct[-1] == 40.0  # CpuMemoryUtilizationPercentage: the name Azure documents for deployments
    d = diagnose(s)
    assert d["likely_cause"] == "under-provisioned scaling" and d["breakdown_ms"]["total"] == pytest.approx(180.0)
    assert "--max-instances 5" in d["change"] and d["requests"] == 30000

    denied = _azure_transport({k: {"error": {"code": "AuthorizationFailed", "message": "does not have authorization "
                                             "to perform action 'Microsoft.Insights/metrics/read'"}}
                               for k in responses}, status=403)
    client = monitor_client(FakeCredential(), "00000000-0000-0000-0000-000000000000", transport=denied)
    with pytest.raises(MonitoringPermissionError, match="Microsoft.Insights/metrics/read.*`deployer_principal_id`"):
        read_azureml("churn", NOW.timestamp() - 3600, client=client, workspace_id=WS, deployments={"blue": "blue"},
                     resource_group="rg-churn")


# ---- Vertex AI through google-cloud-monitoring's gRPC transport to a local MetricService ----------------------
def _gcp_series(metric: str, kind: str, value_type: str, values: list, labels: dict | None = None) -> dict:
    """A TimeSeries as projects.timeSeries.list returns it (https://cloud.google.com/monitoring/api/ref_v3/rest/v3/TimeSeries)."""
    field = {"DISTRIBUTION": "distributionValue", "INT64": "int64Value", "DOUBLE": "doubleValue"}[value_type]
    points = []
    for i, v in enumerate(values):
        end = NOW - dt.timedelta(minutes=len(values) - i)
        value = {"count": "10", "mean": v} if value_type == "DISTRIBUTION" else (str(v) if value_type == "INT64" else v)
        points.append({"interval": {"startTime": (end - dt.timedelta(minutes=1)).isoformat().replace("+00:00", "Z"),
                                    "endTime": end.isoformat().replace("+00:00", "Z")}, "value": {field: value}})
    return {"metric": {"type": f"aiplatform.googleapis.com/prediction/online/{metric}", "labels": labels or {}},
            "resource": {"type": "aiplatform.googleapis.com/Endpoint",
                         "labels": {"endpoint_id": "123", "deployed_model_id": "456", "location": "europe-west4"}},
            "metricKind": kind, "valueType": value_type, "points": points}


@pytest.fixture
def gcp_server():
    """A gRPC server on 127.0.0.1 answering google.monitoring.v3.MetricService/ListTimeSeries from recorded series;
    the SDK's own gRPC transport talks to it over a real channel."""
    from concurrent import futures

    import grpc
    from google.cloud.monitoring_v3 import ListTimeSeriesRequest, ListTimeSeriesResponse, TimeSeries

    state = {"by_metric": {}, "deny": False}

    def list_time_series(request, context):
        if state["deny"]:
            context.abort(grpc.StatusCode.PERMISSION_DENIED, "Permission monitoring.timeSeries.list denied")
        metric = request.filter.split("prediction/online/", 1)[1].split('"', 1)[0]
        return ListTimeSeriesResponse(time_series=[TimeSeries.from_json(json.dumps(t))
                                                   for t in state["by_metric"].get(metric, [])])

    server = grpc.server(futures.ThreadPoolExecutor(2))
    server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler("google.monitoring.v3.MetricService", {
        "ListTimeSeries": grpc.unary_unary_rpc_method_handler(
            list_time_series, request_deserializer=ListTimeSeriesRequest.deserialize,
            response_serializer=ListTimeSeriesResponse.serialize)})])
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()

    def client():
        from google.cloud import monitoring_v3
        from google.cloud.monitoring_v3.services.metric_service.transports.grpc import MetricServiceGrpcTransport

        return monitoring_v3.MetricServiceClient(
            transport=MetricServiceGrpcTransport(channel=grpc.insecure_channel(f"127.0.0.1:{port}")))

    state["client"] = client
    yield state
    server.stop(0)


def test_vertex_scaling_too_slow_from_cloud_monitoring(gcp_server):
    from churnkit.monitor.cloud import read_vertex

    by_metric = {
        "prediction_latencies": [_gcp_series("prediction_latencies", "DELTA", "DISTRIBUTION", [30.0] * 10, {"latency_type": "model"}),
                                 _gcp_series("prediction_latencies", "DELTA", "DISTRIBUTION", [12.0] * 10, {"latency_type": "overhead"})],
        "prediction_count": [_gcp_series("prediction_count", "DELTA", "INT64", [2000] * 10)],
        "error_count": [_gcp_series("error_count", "DELTA", "INT64", [0] * 10)],
        "replicas": [_gcp_series("replicas", "GAUGE", "INT64", [1] * 6 + [2] * 4)],
        "cpu/utilization": [_gcp_series("cpu/utilization", "GAUGE", "DOUBLE", [0.5] * 5 + [0.95] * 5)],
    }
    gcp_server["by_metric"] = by_metric
    series = read_vertex("123", NOW.timestamp() - 3600, client=gcp_server["client"](), project="churn-proj",
                         deployed={"456": "v7"})
    s = series["v7"]
    s.scaling = {"min_instances": 1, "max_instances": 5, "metric": "request_count", "target": 1500, "scale_out_cooldown": None}
    d = diagnose(s)
    assert len(s.times) == 10 and d["breakdown_ms"]["model"] == pytest.approx(30.0) and d["cpu_peak_pct"] == pytest.approx(95.0)
    assert d["likely_cause"] == "scaling policy too slow" and "--target-invocations-per-instance 1050" in d["change"]

    with pytest.raises(MonitoringPermissionError, match="monitoring.timeSeries.list.*`deployer_service_account`"):
        gcp_server["deny"] = True
        read_vertex("123", NOW.timestamp() - 3600, client=gcp_server["client"](), project="churn-proj", deployed={})


def test_vertex_cpu_is_read_in_its_unit_and_total_latency_stands_in_for_model(gcp_server):
    """cpu/utilization has unit 10^2.% and passes 1.0 on a multi-CPU machine; a model without the model/overhead
    split has only latency_type "total" (https://cloud.google.com/monitoring/api/metrics_gcp_a_b#gcp-aiplatform)."""
    from churnkit.monitor.cloud import read_vertex

    gcp_server["by_metric"] = {
        "prediction_latencies": [_gcp_series("prediction_latencies", "DELTA", "DISTRIBUTION", [45.0] * 4,
                                             {"latency_type": "total"})],
        "prediction_count": [_gcp_series("prediction_count", "DELTA", "INT64", [600] * 4)],
        "error_count": [_gcp_series("error_count", "DELTA", "INT64", [0] * 4)],
        "replicas": [_gcp_series("replicas", "GAUGE", "INT64", [1] * 4)],
        "cpu/utilization": [_gcp_series("cpu/utilization", "GAUGE", "DOUBLE", [0.4, 0.6, 1.0, 1.7])],  # 2 vCPUs
    }
    s = read_vertex("123", NOW.timestamp() - 3600, client=gcp_server["client"](), project="churn-proj",
                    deployed={"456": "v7"})["v7"]
    assert s.cpu_pct == pytest.approx([40.0, 60.0, 100.0, 170.0])
    assert "latency_type total only" in s.source
    d = diagnose(s)
    assert d["breakdown_ms"]["model"] is None and d["breakdown_ms"]["total"] == pytest.approx(45.0)
    assert d["cpu_peak_pct"] == pytest.approx(170.0)


def test_notebook_names_and_chart(aws):
    import churnkit as ck

    endpoint(aws)
    record(aws, 6, invocations=300, model_ms=2.0, overhead_ms=30.0, cpu=20.0)
    report = ck.cloud_latency("sagemaker", "churn", "1h", session=aws)
    assert "likely cause: payload size" in ck.cloud_latency_summary(report)
    fig = ck.plot_cloud_latency(report)
    assert len(fig.axes) >= 2 and fig.axes[0].get_title(loc="left") == "v1: payload size"
