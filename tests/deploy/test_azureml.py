"""Azure ML target: azure-ai-ml's MLClient with a fake credential over a mocked HTTP transport.

The transport is a tiny in-memory ARM: it stores what is PUT, returns it on GET, and can lag the
endpoint's traffic by a few reads (traffic updates are eventually consistent). Tests assert the
exact REST bodies the SDK sent.
"""

from __future__ import annotations

import json
import re
import sys
import time
import types
from pathlib import Path

import pytest
from deploy_support import cloud_store

ENV = {"AZURE_SUBSCRIPTION_ID": "00000000-0000-0000-0000-000000000000", "AZURE_RESOURCE_GROUP": "rg-churn",
       "AZUREML_WORKSPACE": "ws-churn", "CHURNKIT_AZURE_IMAGE_URI": "acrchurn.azurecr.io/churnkit:0.1.0"}
WS = (f"/subscriptions/{ENV['AZURE_SUBSCRIPTION_ID']}/resourceGroups/rg-churn/providers/"
      "Microsoft.MachineLearningServices/workspaces/ws-churn")


class FakeCredential:
    """A TokenCredential that hands out a fixed token (no Azure AD involved)."""

    def get_token(self, *scopes, **kwargs):
        from azure.core.credentials import AccessToken

        return AccessToken("fake-token", int(time.time()) + 3600)

    def get_token_info(self, *scopes, options=None):
        from azure.core.credentials import AccessTokenInfo

        return AccessTokenInfo("fake-token", int(time.time()) + 3600)


def _transport_class():
    import io

    import requests
    from azure.core.pipeline.transport import RequestsTransport

    def response(req, status: int, body) -> requests.Response:
        resp = requests.Response()
        resp.status_code = status
        resp.reason = "OK" if status < 400 else "Error"
        resp.headers.update({"content-type": "application/json", "x-ms-request-id": "1"})
        resp._content = b"" if body is None else json.dumps(body).encode()
        resp._content_consumed = True
        resp.raw = io.BytesIO(resp._content)
        resp.url = req["url"]
        return resp

    class FakeArm(RequestsTransport):
        """In-memory ARM for one workspace; ``log`` holds (method, path, json body) of every request.

        It plugs in as the ``requests`` session of azure-core's own RequestsTransport, so response
        handling is the SDK's real code.
        """

        def __init__(self, traffic_lag: int = 0, models: tuple = ()):
            super().__init__(session=self, session_owner=False)
            self.resources: dict[str, dict] = {}
            self.log: list[tuple[str, str, dict | None]] = []
            self.traffic_lag = traffic_lag
            self._stale: dict[str, tuple[int, dict]] = {}
            for name, version in models:
                self.resources[f"{WS}/models/{name}/versions/{version}"] = {
                    "id": f"{WS}/models/{name}/versions/{version}", "name": version,
                    "properties": {"modelUri": "azureml://datastores/workspaceblobstore/paths/churn", "modelType": "custom_model", "flavors": {}, "tags": {}, "properties": {}}}

        def writes(self, kind: str = "") -> list[tuple[str, str, dict | None]]:
            return [e for e in self.log if e[0] in ("PUT", "DELETE") and kind in e[1]]

        def request(self, method, url, data=None, **kwargs):  # the requests.Session call azure-core makes
            from urllib.parse import urlparse

            path = urlparse(url).path
            body = json.loads(data) if data else None
            self.log.append((method, path, body))
            request = {"method": method, "url": url}
            return self._answer(request, method, path, body)

        def _answer(self, request, method, path, body):
            if path == WS:
                return response(request, 200, {"id": WS, "name": "ws-churn", "location": "westeurope",
                                               "properties": {"discoveryUrl": "https://westeurope.api.azureml.ms/discovery"}})
            if method == "PUT":
                stored = dict(body)
                stored["id"] = path
                stored["name"] = path.rsplit("/", 1)[-1]
                props = dict(stored.get("properties") or {})
                props["provisioningState"] = "Succeeded"
                if "/deployments/" in path:  # defaults the service fills in
                    props.setdefault("scaleSettings", {"scaleType": "Default"})
                if "/onlineEndpoints/" in path and "/deployments/" not in path:
                    props["scoringUri"] = f"https://{stored['name']}.westeurope.inference.ml.azure.com/score"
                    old = self.resources.get(path)
                    if old is not None and self.traffic_lag:
                        self._stale[path] = (self.traffic_lag, old["properties"].get("traffic") or {})
                stored["properties"] = props
                self.resources[path] = stored
                return response(request, 200, stored)
            if method == "DELETE":
                for key in [k for k in self.resources if k == path or k.startswith(path + "/")]:
                    del self.resources[key]
                return response(request, 200, None)
            if method == "GET" and path.endswith("/deployments"):
                items = [v for k, v in self.resources.items() if re.fullmatch(re.escape(path) + r"/[^/]+", k)]
                return response(request, 200, {"value": items})
            if method == "GET" and path in self.resources:
                res = json.loads(json.dumps(self.resources[path]))
                if path in self._stale:  # eventually consistent: old traffic for a few reads
                    left, old = self._stale[path]
                    res["properties"]["traffic"] = old
                    self._stale[path] = (left - 1, old)
                    if left <= 1:
                        del self._stale[path]
                return response(request, 200, res)
            return response(request, 404, {"error": {"code": "ResourceNotFound", "message": f"{path} not found"}})

    return FakeArm


@pytest.fixture
def store(tmp_path, monkeypatch):
    return cloud_store(tmp_path, monkeypatch, ENV)


def make(config, arm):
    from churnkit.deploy import get_target

    return get_target("azureml", config=config, credential=FakeCredential(), poll_seconds=0, wait_timeout=5,
                      client_kwargs={"transport": arm})


def test_deploy_two_versions_traffic_mirror_remove_stop(store):
    arm = _transport_class()(traffic_lag=2, models=(("churn", "1"), ("churn", "2")))
    t = make(store, arm)

    planned = t.plan("deploy", model_uri="models:/churn@champion")
    assert [p["operation"] for p in planned] == [
        "online_endpoints.begin_create_or_update", "models.create_or_update", "environments.create_or_update",
        "online_deployments.begin_create_or_update", "online_endpoints.begin_create_or_update"]
    assert planned[-1]["request"]["traffic"] == {"v1-churn": 100}
    assert planned[3]["request"]["model"] == "azureml:churn:1"

    state = t.deploy("models:/churn@champion")
    assert state.weights == {"v1": 100} and state.drift == []
    assert state.url == "https://churn.westeurope.inference.ml.azure.com/score"
    puts = arm.writes()
    endpoint_puts = [b for m, p, b in puts if p.endswith("/onlineEndpoints/churn")]
    assert endpoint_puts[0]["properties"].get("traffic") in (None, {})
    assert endpoint_puts[0]["properties"]["authMode"] == "Key"
    assert endpoint_puts[-1]["properties"]["traffic"] == {"v1-churn": 100}
    ((env_path, env_put),) = [(p, b) for m, p, b in puts if "/environments/churnkit-serve/versions/" in p]
    assert env_put["properties"]["image"] == ENV["CHURNKIT_AZURE_IMAGE_URI"]
    assert env_put["properties"]["inferenceConfig"]["scoringRoute"] == {"port": 8080, "path": "/score"}
    assert env_put["properties"]["inferenceConfig"]["livenessRoute"] == {"port": 8080, "path": "/"}
    (dep_put,) = [b for m, p, b in puts if p.endswith("/onlineEndpoints/churn/deployments/v1-churn")]
    props = dep_put["properties"]
    assert props["model"] == f"{WS}/models/churn/versions/1"
    assert props["environmentId"] == env_path
    assert props["endpointComputeType"] == "Managed" and dep_put["sku"]["capacity"] == 1
    assert props["instanceType"] == "Standard_DS3_v2"
    assert props["environmentVariables"]["CHURNKIT_MODEL_VERSION"] == "1"
    assert len(props["environmentVariables"]["CHURNKIT_MANIFEST_SHA256"]) == 64  # the digest recorded at registration
    assert dep_put["tags"] == {"churnkit.variant": "v1", "churnkit.model_version": "1"}
    assert not any("/models/" in p for m, p, b in puts)  # v1 is in the workspace already: no upload

    arm.log.clear()
    state = t.deploy("models:/churn@challenger", weight=0)
    assert state.weights == {"v1": 100, "v2": 0} and state.drift == []
    assert arm.writes("/onlineEndpoints/churn")[-1][2]["properties"]["traffic"] == {"v1-churn": 100}

    arm.log.clear()
    state = t.set_traffic({"v1": 50, "v2": 50})
    assert state.weights == {"v1": 50, "v2": 50} and state.drift == []  # waited through the lagging reads
    (put,) = arm.writes()
    assert put[2]["properties"]["traffic"] == {"v1-churn": 50, "v2-churn": 50}
    reads_after = [e for e in arm.log[arm.log.index(put):] if e[0] == "GET" and e[1].endswith("/onlineEndpoints/churn")]
    assert len(reads_after) >= 3  # two stale reads, then the new traffic

    state = t.set_traffic({"v1": 100, "v2": 0})
    arm.log.clear()
    state = t.set_mirror_traffic({"v2": 20})
    assert state.details["mirror_traffic"] == {"v2-churn": 20} and state.drift == []
    (put,) = arm.writes()
    assert put[2]["properties"]["mirrorTraffic"] == {"v2-churn": 20}
    assert put[2]["properties"]["traffic"] == {"v1-churn": 100}

    arm.log.clear()
    state = t.remove("v2")
    assert state.weights == {"v1": 100} and state.drift == []
    methods = [(m, p.rsplit("/", 2)[-2:]) for m, p, b in arm.writes()]
    assert methods == [("PUT", ["onlineEndpoints", "churn"]), ("DELETE", ["deployments", "v2-churn"])]
    assert arm.writes()[0][2]["properties"].get("mirrorTraffic") in (None, {})

    assert t.stop().variants == {}
    assert t.stop().variants == {}

    from churnkit import registry

    assert any("azureml endpoint 'churn' as v2" in h["event"] for h in registry.version_history("2"))


def test_model_not_in_workspace_is_uploaded(store, monkeypatch):
    arm = _transport_class()()
    t = make(store, arm)
    uploaded = []

    def create_or_update(model, **kw):  # the upload to the workspace's blob store is the SDK's own business
        uploaded.append(model)
        return model

    monkeypatch.setattr(t.client.models, "create_or_update", create_or_update)
    t.deploy("models:/churn/2")
    (model,) = uploaded
    assert (model.name, model.version, model.type) == ("churn", "2", "custom_model")
    assert {"MLmodel", "churnkit-model.json"} <= {p.name for p in Path(model.path).iterdir()}


def test_mirror_refused_for_a_variant_with_live_traffic(store):
    from churnkit.exceptions import DeployTargetError

    arm = _transport_class()(models=(("churn", "1"),))
    t = make(store, arm)
    t.deploy("models:/churn@champion")
    with pytest.raises(DeployTargetError, match="only a variant at 0% can receive mirrored traffic"):
        t.set_mirror_traffic({"v1": 10})
    with pytest.raises(DeployTargetError, match="mirror traffic 'ten' for 'v1' is not a percentage from 0 to 50"):
        t.set_mirror_traffic({"v1": "ten"})


def test_plan_without_credentials(store):
    from azure.core.exceptions import ClientAuthenticationError

    class NoCredential(FakeCredential):
        def get_token(self, *scopes, **kwargs):
            raise ClientAuthenticationError("DefaultAzureCredential failed to retrieve a token")

        get_token_info = get_token

    from churnkit.deploy import get_target
    from churnkit.exceptions import CloudCredentialsError

    t = get_target("azureml", config=store, credential=NoCredential(), client_kwargs={"transport": _transport_class()()})
    reqs = t.plan("set_traffic", weights={"v1": 100})
    assert reqs == [{"api": "azureml", "operation": "online_endpoints.begin_create_or_update",
                     "request": reqs[0]["request"]}]
    assert reqs[0]["request"]["traffic"] == {"v1-churn": 100} and reqs[0]["request"]["name"] == "churn"
    assert "CloudCredentialsError" in t.plan_basis
    with pytest.raises(CloudCredentialsError, match="failed to retrieve a token.*AZUREML_WORKSPACE"):
        t.describe()


def test_deployment_names():
    from churnkit.deploy.azureml import deployment_name

    assert deployment_name("v12", "churn") == "v12"
    assert deployment_name("v1", "churn") == "v1-churn"
    assert deployment_name("blue", "churn") == "blue"


def test_missing_sdk_and_settings(store, monkeypatch):
    from churnkit.deploy import get_target
    from churnkit.exceptions import ConfigError, MissingExtraError

    monkeypatch.delenv("AZUREML_WORKSPACE")
    with pytest.raises(ConfigError, match="AZUREML_WORKSPACE"):
        get_target("azureml", config=store, credential=FakeCredential()).client
    monkeypatch.setitem(sys.modules, "azure.ai.ml", None)
    with pytest.raises(MissingExtraError, match=r"pip install -e '\.\[azure\]'"):
        get_target("azureml", config=store, credential=FakeCredential(), workspace="w").client


# ---- telemetry: Azure Monitor by deployment + payload logging --------------------------------------------
FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"


def _monitor(store, answer):
    from azure.monitor.query import MetricsQueryClient

    from churnkit.deploy.azure_monitor import AzureMonitorTelemetry
    from cloud_rollout_support import azure_transport

    t = make(store, _transport_class()())
    transport = azure_transport(answer)
    t._telemetry = AzureMonitorTelemetry(t, metrics_client=MetricsQueryClient(FakeCredential(), transport=transport))
    return t, transport


def test_telemetry_reads_azure_monitor_split_by_deployment(store):
    """The recorded Metrics - List body (tests/fixtures/azure-monitor-metrics.json, doc URL inside)."""
    from datetime import datetime

    fixture = json.loads((FIXTURES / "azure-monitor-metrics.json").read_text())["response"]

    def answer(path, query):
        from cloud_docs import azure_documented, azure_metric_error

        error = azure_metric_error(path, query["metricnames"], query["aggregation"])
        return (400, error) if error else (200, azure_documented(path, fixture, query["metricnames"],
                                                                   query["aggregation"]))

    t, transport = _monitor(store, answer)
    t._telemetry.records = lambda *a: []  # payload logs in Blob: covered by the end-to-end rollouts (Azurite)
    since = datetime.fromisoformat("2026-01-05T10:00:00+00:00").timestamp()
    windows = t.telemetry(["v1", "v2"], since, since + 180)
    v2 = windows["v2"]
    assert (v2.requests, v2.errors, v2.client_errors) == (118 + 121 + 117 + 2 + 1 + 4, 3, 4)
    assert v2.latencies_ms == (41.5, 45.25, 39.0) and v2.p99_ms == pytest.approx(45.2, abs=0.1)
    assert windows["v1"].requests == 480 and windows["v1"].latencies_ms == ()
    assert "Azure Monitor RequestsPerMinute/RequestLatency_P99 deployment=v2-churn" in v2.source
    counts, latency = transport.requests
    assert counts["metricnames"] == "RequestsPerMinute" and counts["aggregation"].lower() == "average"
    assert counts["$filter"] == "deployment eq '*' and statusCodeClass eq '*'" and counts["interval"] == "PT1M"
    assert latency["metricnames"] == "RequestLatency_P99" and latency["$filter"] == "deployment eq '*'"
    assert counts["timespan"].startswith("2026-01-05T10:00:00") and "2026-01-05T10:03:00" in counts["timespan"]
    assert t.telemetry_resolution() == 240.0  # one-minute grain + three minutes of ingestion


def test_denied_azure_monitor_names_the_role_and_the_terraform_output(store):
    from churnkit.exceptions import TelemetryAccessError
    from cloud_rollout_support import AZURE_DENIED

    t, _ = _monitor(store, lambda path, query: AZURE_DENIED)
    with pytest.raises(TelemetryAccessError, match=r"Microsoft.Insights/metrics/read \(the Monitoring Reader role\).*"
                                                   r"'deployer_principal_id'.*No traffic was moved"):
        t.telemetry(["v1"], time.time() - 3600, time.time() - 600)


def test_deployments_log_request_and_response_payloads(store):
    t = make(store, _transport_class()())
    (dep,) = [r["request"] for r in t.plan("deploy", model_uri="models:/churn@champion")
              if r["operation"] == "online_deployments.begin_create_or_update"]
    collector = dep["data_collector"]
    assert {k: v["enabled"] for k, v in collector["collections"].items()} == {"request": "true", "response": "true"}


def test_payload_logging_reads_every_documented_form_and_counts_what_it_cannot():
    """The article's own samples and kit bodies in the same schema (tests/fixtures/azureml-payload-logging.json):
    a plain body, a batch of bodies, rows, a bare list of scores, a large JSON payload stored in the workspace
    container ("datainblob"), and a binary one, which is skipped and counted (Azurite holds the blobs)."""
    from azure.storage.blob import ContainerClient
    from cloud_docs import fixture
    from storage_support import azurite_blob

    from churnkit.deploy.azure_monitor import AzureMonitorTelemetry

    samples = fixture("azureml-payload-logging.json")
    doc, kit = samples["documented"], samples["kit"]
    with azurite_blob() as conn:
        container = ContainerClient.from_connection_string(conn, "azureml-blobstore")
        container.create_container()
        large = kit["large_response_in_blob"]["data"].split("/azureml-blobstore/", 1)[1]
        container.upload_blob(large, json.dumps({"predictions": [{"churn_probability": 0.125, "churn": False}] * 3}))
        target = types.SimpleNamespace(endpoint="churn", deployment_of=lambda v: f"{v}-churn")
        reader = AzureMonitorTelemetry(target, capture_container=container)
        assert reader.scores_of(kit["response"]) == [0.8125, 0.0625]
        assert [r["tenure"] for r in reader.inputs_of(kit["request"])] == [3, 48]
        assert reader.scores_of(kit["batched_response"]) == [0.25, 0.5]  # two requests in one record
        assert reader.scores_of(kit["large_response_in_blob"]) == [0.125] * 3  # over 4 MB: read from the blob
        assert reader.scores_of(doc["response"]) == [11055.977245525679, 4503.079536107787]
        assert [r["AGE"] for r in reader.inputs_of(doc["batched_rows"])] == [54, 35]
        assert reader.inputs_of(doc["binary_in_blob"]) == [] and reader.scores_of(doc["binary_in_blob"]) == []
        gone = dict(kit["large_response_in_blob"], data=kit["large_response_in_blob"]["data"] + "-deleted")
        assert reader.scores_of(gone) == []
    assert dict(reader.skipped) == {"binary payload in blob": 2, "payload blob not readable": 1}
    assert "payloads skipped so far: 2 binary payload in blob; 1 payload blob not readable" in reader.source("v1", 0, 60)
