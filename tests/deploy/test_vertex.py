"""Vertex AI target: aiplatform's high-level SDK over patched gapic clients.

``ModelServiceClient`` and ``EndpointServiceClient`` methods are replaced by a small in-memory
Vertex that records every request as a dict (proto field names); tests assert upload, deploy,
undeploy requests and the traffic splits keyed by deployed-model id.
"""

from __future__ import annotations

import itertools
import json
import re
import sys
import types

import pytest
from deploy_support import cloud_store

ENV = {"GOOGLE_CLOUD_PROJECT": "churn-proj", "CHURNKIT_GCP_REGION": "europe-west4",
       "CHURNKIT_GCP_IMAGE_URI": "europe-west4-docker.pkg.dev/churn-proj/churnkit/serve:0.1.0",
       "CHURNKIT_GCP_BUCKET": "churn-proj-churnkit",
       "CHURNKIT_GCP_SERVICE_ACCOUNT": "churnkit-serve@churn-proj.iam.gserviceaccount.com"}
PARENT = "projects/churn-proj/locations/europe-west4"


class FakeVertex:
    """Models and endpoints of one location, served through the gapic client methods."""

    def __init__(self):
        from google.cloud.aiplatform_v1 import types as t

        self.t = t
        self.models: dict[str, object] = {}
        self.endpoints: dict[str, object] = {}
        self.requests: list[tuple[str, dict]] = []
        self.ids = itertools.count(1001)

    def _record(self, name: str, cls, request, kw) -> object:
        req = cls(request) if request is not None else cls(**{k: v for k, v in kw.items()
                                                              if k not in ("metadata", "timeout", "retry")})
        self.requests.append((name, type(req).to_dict(req, always_print_fields_with_no_presence=False)))
        return req

    @staticmethod
    def _lro(result):
        return types.SimpleNamespace(result=lambda timeout=None: result,
                                     operation=types.SimpleNamespace(name=f"{PARENT}/operations/1"))

    # ---- ModelService ----
    def upload_model(self, client, request=None, **kw):
        req = self._record("upload_model", self.t.UploadModelRequest, request, kw)
        name = f"{PARENT}/models/{next(self.ids)}"
        model = self.t.Model(req.model)
        model.name, model.version_id = name, "1"
        model.create_time = model.update_time = {"seconds": 1_700_000_000}
        model.supported_deployment_resources_types = [self.t.Model.DeploymentResourcesType.DEDICATED_RESOURCES]
        self.models[name] = model
        return self._lro(self.t.UploadModelResponse(model=name, model_version_id="1"))

    def get_model(self, client, request=None, *, name=None, **kw):
        name = (request or {}).get("name") if isinstance(request, dict) else (request.name if request else name)
        return self.models[name.split("@")[0]]

    def list_models(self, client, request=None, **kw):
        wanted = dict(re.findall(r'labels\.([\w-]+)="([^"]*)"', request.get("filter", "")))
        return [m for m in self.models.values() if all(m.labels.get(k) == v for k, v in wanted.items())]

    # ---- EndpointService ----
    def create_endpoint(self, client, request=None, **kw):
        req = self._record("create_endpoint", self.t.CreateEndpointRequest, request, kw)
        ep = self.t.Endpoint(req.endpoint)
        ep.name = f"{PARENT}/endpoints/{next(self.ids)}"
        ep.create_time = ep.update_time = {"seconds": 1_700_000_000}  # the service sets these
        self.endpoints[ep.name] = ep
        return self._lro(ep)

    def get_endpoint(self, client, request=None, *, name=None, **kw):
        name = request["name"] if isinstance(request, dict) else (request.name if request else name)
        return self.t.Endpoint(self.endpoints[name])

    def list_endpoints(self, client, request=None, **kw):
        shown = re.search(r'display_name="([^"]*)"', request.get("filter", ""))
        return [self.t.Endpoint(e) for e in self.endpoints.values() if not shown or e.display_name == shown.group(1)]

    def deploy_model(self, client, request=None, **kw):
        req = self._record("deploy_model", self.t.DeployModelRequest, request, kw)
        ep = self.endpoints[req.endpoint]
        dm = self.t.DeployedModel(req.deployed_model)
        dm.id = str(next(self.ids))
        ep.deployed_models.append(dm)
        ep.traffic_split = {(dm.id if k == "0" else k): v for k, v in req.traffic_split.items()}
        return self._lro(self.t.DeployModelResponse(deployed_model=dm))

    def undeploy_model(self, client, request=None, **kw):
        req = self._record("undeploy_model", self.t.UndeployModelRequest, request, kw)
        ep = self.endpoints[req.endpoint]
        keep = [d for d in ep.deployed_models if d.id != req.deployed_model_id]
        del ep.deployed_models[:]
        ep.deployed_models.extend(keep)
        ep.traffic_split = dict(req.traffic_split)
        return self._lro(self.t.UndeployModelResponse())

    def update_endpoint(self, client, request=None, **kw):
        req = self._record("update_endpoint", self.t.UpdateEndpointRequest, request, kw)
        ep = self.endpoints[req.endpoint.name]
        assert list(req.update_mask.paths) == ["traffic_split"]
        ep.traffic_split = dict(req.endpoint.traffic_split)
        return self.t.Endpoint(ep)

    def delete_endpoint(self, client, request=None, *, name=None, **kw):
        req = self._record("delete_endpoint", self.t.DeleteEndpointRequest, request, {"name": name, **kw})
        del self.endpoints[req.name]
        return self._lro(None)

    def install(self, monkeypatch):
        from google.cloud.aiplatform_v1.services.endpoint_service import EndpointServiceClient
        from google.cloud.aiplatform_v1.services.model_service import ModelServiceClient

        for cls, names in ((ModelServiceClient, ("upload_model", "get_model", "list_models")),
                           (EndpointServiceClient, ("create_endpoint", "get_endpoint", "list_endpoints", "deploy_model",
                                                    "undeploy_model", "update_endpoint", "delete_endpoint"))):
            for n in names:
                monkeypatch.setattr(cls, n, self._bind(n))
        return self

    def _bind(self, n):
        method = getattr(self, n)
        return lambda client, *a, **kw: method(client, *a, **kw)

    def last(self, name: str) -> dict:
        return [r for n, r in self.requests if n == name][-1]


class FakeStorage:
    """google.cloud.storage.Client stand-in that records uploaded object names."""

    uploads: list[str] = []

    def __init__(self, project=None, credentials=None):
        self.project = project

    def bucket(self, name):
        uploads = self.uploads

        class Blob:
            def __init__(self, key):
                self.key = key

            def upload_from_filename(self, filename):
                uploads.append(f"gs://{name}/{self.key}")

        return types.SimpleNamespace(blob=Blob)


@pytest.fixture
def vertex(tmp_path, monkeypatch):
    from google.cloud import storage

    config = cloud_store(tmp_path, monkeypatch, ENV)
    FakeStorage.uploads = []
    monkeypatch.setattr(storage, "Client", FakeStorage)
    return config, FakeVertex().install(monkeypatch)


def make(config):
    from google.auth.credentials import AnonymousCredentials

    from churnkit.deploy import get_target

    return get_target("vertex", config=config, credentials=AnonymousCredentials())


def test_upload_deploy_split_undeploy_stop(vertex):
    config, fake = vertex
    t = make(config)

    planned = t.plan("deploy", model_uri="models:/churn@champion")
    assert [p["operation"] for p in planned] == ["upload", "ModelService.UploadModel", "EndpointService.CreateEndpoint",
                                                 "EndpointService.DeployModel"]
    assert planned[-1]["request"]["traffic_split"] == {"0": 100}

    state = t.deploy("models:/churn@champion")
    assert state.weights == {"v1": 100} and state.drift == []
    assert state.variants["v1"].model_version == "1"
    upload = fake.last("upload_model")
    assert upload == {"parent": PARENT, "model": upload["model"]}
    spec = upload["model"]["container_spec"]
    assert spec["image_uri"] == ENV["CHURNKIT_GCP_IMAGE_URI"]
    assert (spec["predict_route"], spec["health_route"], spec["ports"]) == ("/predict", "/ping", [{"container_port": 8080}])
    assert {"name": "CHURNKIT_MODEL_VERSION", "value": "1"} in spec["env"]
    assert any(e["name"] == "CHURNKIT_MANIFEST_SHA256" and len(e["value"]) == 64 for e in spec["env"])  # registration's digest
    # the container copies its capture where the rollout's Cloud Monitoring reader looks for served scores
    from churnkit.deploy.cloud_monitoring import CloudMonitoringTelemetry

    assert {"name": "CHURNKIT_CAPTURE_URI", "value": "gs://churn-proj-churnkit/"
            + CloudMonitoringTelemetry(t).prefix("v1")} in spec["env"]
    assert upload["model"]["artifact_uri"].startswith("gs://churn-proj-churnkit/churnkit/models/churn-v1-")
    staged = {u.removeprefix(upload["model"]["artifact_uri"] + "/") for u in FakeStorage.uploads}
    assert {"MLmodel", "churnkit-model.json"} <= staged
    assert upload["model"]["labels"]["churnkit-version"] == "1"
    deploy = fake.last("deploy_model")
    assert deploy["traffic_split"] == {"0": 100}
    assert deploy["deployed_model"]["display_name"] == "v1"
    assert deploy["deployed_model"]["dedicated_resources"]["machine_spec"]["machine_type"] == "n1-standard-2"
    assert deploy["deployed_model"]["service_account"] == ENV["CHURNKIT_GCP_SERVICE_ACCOUNT"]
    v1_id = state.details["deployed_model_ids"]["v1"]

    state = t.deploy("models:/churn@challenger", weight=10)
    assert state.weights == {"v1": 90, "v2": 10} and state.drift == []
    assert fake.last("deploy_model")["traffic_split"] == {v1_id: 90, "0": 10}
    v2_id = state.details["deployed_model_ids"]["v2"]

    uploads = len([n for n, _ in fake.requests if n == "upload_model"])
    t.deploy("models:/churn@challenger", weight=50)  # already deployed: a traffic change, no upload
    assert len([n for n, _ in fake.requests if n == "upload_model"]) == uploads
    assert fake.last("update_endpoint")["endpoint"]["traffic_split"] == {v1_id: 50, v2_id: 50}

    state = t.set_traffic({"v2": 100})
    assert state.weights == {"v1": 0, "v2": 100} and state.drift == []
    assert fake.last("update_endpoint")["endpoint"]["traffic_split"] == {v2_id: 100}

    state = t.remove("v1")
    assert state.weights == {"v2": 100} and state.drift == []
    assert fake.last("undeploy_model") == {"endpoint": state.details["resource_name"], "deployed_model_id": v1_id,
                                           "traffic_split": {v2_id: 100}}

    assert t.stop().variants == {}
    assert fake.endpoints == {} and t.stop().variants == {}
    assert [n for n, _ in fake.requests][-2:] == ["undeploy_model", "delete_endpoint"]

    from churnkit import registry

    assert any("vertex endpoint 'churn' as v2" in h["event"] for h in registry.version_history("2"))


def test_model_already_uploaded_is_reused(vertex):
    config, fake = vertex
    t = make(config)
    t.deploy("models:/churn@champion")
    t.stop()
    fake.requests.clear()
    planned = t.plan("deploy", model_uri="models:/churn@champion")
    assert [p["operation"] for p in planned] == ["EndpointService.CreateEndpoint", "EndpointService.DeployModel"]
    t.deploy("models:/churn@champion")
    assert "upload_model" not in [n for n, _ in fake.requests]


def test_plan_without_credentials(vertex, monkeypatch):
    import google.auth
    from google.auth.exceptions import DefaultCredentialsError

    from churnkit.deploy import get_target
    from churnkit.exceptions import CloudCredentialsError

    def no_credentials(*a, **kw):
        raise DefaultCredentialsError("Your default credentials were not found.")

    monkeypatch.setattr(google.auth, "default", no_credentials)
    config, _ = vertex
    t = get_target("vertex", config=config)
    reqs = t.plan("deploy", model_uri="models:/churn@champion", weight=0)
    assert reqs[-1]["request"]["traffic_split"] == {"0": 100}
    assert "planned as a new endpoint" in t.plan_basis
    with pytest.raises(CloudCredentialsError, match="default credentials were not found.*CHURNKIT_GCP_BUCKET"):
        t.describe()


def test_missing_sdk(vertex, monkeypatch):
    from churnkit.exceptions import MissingExtraError

    monkeypatch.setitem(sys.modules, "google.cloud.aiplatform", None)
    with pytest.raises(MissingExtraError, match=r"pip install -e '\.\[gcp\]'"):
        make(vertex[0]).describe()


# ---- telemetry: Cloud Monitoring by deployed model ----------------------------------------------------
def _monitoring(t, answer):
    from churnkit.deploy.cloud_monitoring import CloudMonitoringTelemetry
    from cloud_rollout_support import MonitoringServer, monitoring_client

    server = MonitoringServer(answer)
    t._telemetry = CloudMonitoringTelemetry(t, client=monitoring_client(server.url), bucket=object())
    return server


def test_telemetry_reads_cloud_monitoring_by_deployed_model(vertex):
    """google-cloud-monitoring's gRPC client against a server on 127.0.0.1 answering the recorded
    ListTimeSeriesResponse bodies (tests/fixtures/cloud-monitoring-timeseries.json, doc URL inside)."""
    import json
    from datetime import datetime
    from pathlib import Path

    config, fake = vertex
    t = make(config)
    t.deploy("models:/churn@champion")
    t.deploy("models:/churn@challenger", weight=0)
    live = t.describe()
    v2_id = live.details["deployed_model_ids"]["v2"]
    fixture = json.loads((Path(__file__).resolve().parents[1] / "fixtures" / "cloud-monitoring-timeseries.json")
                         .read_text().replace('"7002"', json.dumps(v2_id)))

    def answer(query):
        key = "prediction_latencies" if "prediction_latencies" in query["filter"] else "response_count"
        return 200, fixture[key]

    server = _monitoring(t, answer)
    t._telemetry.records = lambda variant, start, end: []  # capture files: covered by the end-to-end rollouts
    try:
        since = datetime.fromisoformat("2026-01-05T10:01:00+00:00").timestamp()
        windows = t.telemetry(["v1", "v2"], since, since + 120)
    finally:
        server.stop()
    v2 = windows["v2"]
    assert (v2.requests, v2.errors, v2.client_errors) == (95 + 103 + 7 + 3, 7, 3)
    assert sorted(v2.latencies_ms) == [38.5, 52.0] and windows["v1"].requests == 0
    assert f"deployed_model_id={v2_id}" in v2.source
    counts, latency = server.requests
    endpoint_id = live.details["resource_name"].rsplit("/", 1)[-1]
    assert counts["filter"] == ('metric.type="aiplatform.googleapis.com/prediction/online/response_count" AND '
                                'resource.type="aiplatform.googleapis.com/Endpoint" AND '
                                f'resource.labels.endpoint_id="{endpoint_id}"')
    assert counts["aggregation.perSeriesAligner"] == "ALIGN_SUM" and counts["aggregation.alignmentPeriod"] == "60s"
    assert latency["aggregation.perSeriesAligner"] == "ALIGN_PERCENTILE_99"
    assert 'metric.labels.latency_type="model"' in latency["filter"]
    assert counts["interval.startTime"].startswith("2026-01-05T10:01:00")


def test_telemetry_falls_back_to_total_latency_when_vertex_fills_no_model_series(vertex):
    """prediction_latencies: "model" and "overhead" only for custom-trained and AutoML tabular models, "total"
    always (https://cloud.google.com/monitoring/api/metrics_gcp_a_b#gcp-aiplatform)."""
    from datetime import datetime

    from cloud_docs import fixture

    config, fake = vertex
    t = make(config)
    t.deploy("models:/churn@champion")
    v1_id = t.describe().details["deployed_model_ids"]["v1"]
    recorded = json.loads(json.dumps(fixture("cloud-monitoring-timeseries.json")).replace('"7002"', json.dumps(v1_id)))

    def answer(query):
        if 'latency_type="model"' in query["filter"]:
            return 200, {"timeSeries": [], "unit": "ms"}  # this model type has no model/overhead split
        if 'latency_type="total"' in query["filter"]:
            return 200, recorded["prediction_latencies_total"]
        return 200, recorded["response_count"]

    server = _monitoring(t, answer)
    t._telemetry.records = lambda variant, start, end: []
    try:
        since = datetime.fromisoformat("2026-01-05T10:01:00+00:00").timestamp()
        v1 = t.telemetry(["v1"], since, since + 120)["v1"]
    finally:
        server.stop()
    assert v1.requests == 208 and sorted(v1.latencies_ms) == [61.0, 74.5]
    assert "latency_type=total (no 'model' series for this model type)" in v1.source
    planned = t.telemetry_queries(["v1"], since, since + 120)
    assert any('latency_type="total"' in q["request"].get("filter", "") and "note" in q for q in planned)
    assert t.telemetry_resolution() == 60 + 360  # the documented visibility delay of the Endpoint's metrics


def test_denied_cloud_monitoring_names_the_role_and_the_terraform_output(vertex):
    import time

    from churnkit.exceptions import TelemetryAccessError
    from cloud_rollout_support import GCP_DENIED

    config, fake = vertex
    t = make(config)
    t.deploy("models:/churn@champion")
    server = _monitoring(t, lambda query: GCP_DENIED)
    try:
        with pytest.raises(TelemetryAccessError, match=r"monitoring.timeSeries.list \(roles/monitoring.viewer\).*"
                                                       r"'deployer_service_account'.*No traffic was moved"):
            t.telemetry(["v1"], time.time() - 3600, time.time() - 600)
    finally:
        server.stop()
