"""A simulated cloud for end-to-end rollouts: real ``churnkit serve`` processes as the variants (the
local target's router in front), and a publisher that turns their per-variant traffic into that
cloud's own telemetry, which the real cloud target code then reads.

* AWS: CloudWatch ``AWS/SageMaker`` metric points and SageMaker Data Capture files in S3, both in a
  ``moto`` server on 127.0.0.1 (server mode, so a controller in another process reads them too). moto
  computes no percentile statistics, so :func:`moto_percentiles` adds CloudWatch's ``pNN`` statistic
  to the emulator (the percentile of the period's values, as documented).
* Azure: ``RequestsPerMinute``/``RequestLatency_P99`` points in a JSON file answered by
  :class:`AzureMonitorTransport` (azure-core transport, Metrics - List response body); payload-logging
  JSON lines in Azurite.
* Google Cloud: ``prediction/online/*`` points answered by :class:`MonitoringServer`, a REST server on
  127.0.0.1 speaking ``projects.timeSeries.list``; capture files in gcp-storage-emulator.

Time is compressed: a metric period of 1 s and an ingestion delay of 2 s. The cloud target classes
here differ from the real ones only in where traffic is set (the router of real serve processes);
``telemetry()`` and ``captured_inputs()`` are the real code.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import threading
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path


PERIOD = 1.0
DELAY = 2.0
REGION = "us-east-1"
ACCOUNT = "123456789012"
BUCKET = "churnkit-capture"
AZ = {"subscription_id": "00000000-0000-0000-0000-000000000000", "resource_group": "rg-churn",
      "workspace": "ws-churn", "image_uri": "acrchurn.azurecr.io/churnkit:0.1.0"}
GCP = {"project": "churn-proj", "region": "europe-west4", "image_uri": "europe-west4-docker.pkg.dev/p/churnkit/serve:1",
       "bucket": BUCKET}
VERTEX_ENDPOINT_ID = "4242424242"
#: Azurite's documented development account (https://learn.microsoft.com/azure/storage/common/storage-use-azurite)
AZURITE_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def iso(ts: float, ms: bool = False) -> str:
    d = datetime.fromtimestamp(ts, tz=timezone.utc)
    return d.strftime("%Y-%m-%dT%H:%M:%S.%fZ") if ms else d.strftime("%Y-%m-%dT%H:%M:%SZ")


def deployed_model_id(variant: str) -> str:
    """Vertex's numeric deployed-model id of ``variant`` in the simulation (stable)."""
    return str(700000 + int("".join(c for c in variant if c.isdigit()) or 0))


# ---- the world: a registry of challengers and an endpoint of real serve processes ----------------------
def build_world(root: Path, cases: tuple = ("errors", "slow", "shifted"), good: tuple = ("sagemaker", "azureml", "vertex")):
    """A runs folder under ``root`` whose registry holds the champion (v1, deployed on a local endpoint of
    real serve processes with data capture) and challengers: misbehaving ones (``cases``) and a retrained
    good one per name in ``good``. Returns ``(config, inner LocalTarget, {case: version}, holdout rows)``;
    the caller stops the target. Needs MLFLOW_* unset and CHURNKIT_RUNS_DIR pointing at ``root/runs``."""
    import mlflow

    from churnkit import registry
    from churnkit.config import load_config
    from churnkit.data import load_table
    from churnkit.deploy.local import LocalTarget
    from churnkit.evaluate import gate
    from churnkit.model import split_holdout, train_model
    from rollout_models import MISBEHAVING, misbehaving, trusting_misbehaving

    config = load_config(Path(root) / "runs")
    registry.setup_tracking(config)
    os.environ.pop("MLFLOW_TRACKING_URI", None)  # mlflow exports it; the config must stay "embedded"
    dataset = load_table("", rows=1500, seed=0)
    split = split_holdout(dataset, seed=0)
    champion = train_model(split, dataset.schema, seed=0)

    def register(pipeline) -> str:
        with trusting_misbehaving(), mlflow.start_run():
            run_id = registry.log_candidate(pipeline, dataset, split, model="logreg", seed=0)
        candidate = registry.load_candidate(run_id, config, also_trusted=(MISBEHAVING,))
        return registry.register_candidate(candidate, gate(0.99, None, 0.5, -1.0), threshold=0.5, config=config)

    how = {"errors": dict(error_share=0.3), "slow": dict(delay=0.05), "shifted": dict(shift=0.3)}
    versions = {"champion": register(champion)}
    versions.update({case: register(misbehaving(champion, **how[case])) for case in cases})
    for i, name in enumerate(good, start=1):
        versions[f"good-{name}"] = register(train_model(split_holdout(dataset, seed=i), dataset.schema, seed=i))
    inner = LocalTarget("churn", port=free_port(), config=config, capture=True)
    inner.deploy("models:/churn@champion")
    return config, inner, versions, split.X_holdout


# ---- emulators ---------------------------------------------------------------------------------------
def moto_percentiles() -> None:
    """Teach moto's CloudWatch the ``pNN`` extended statistics of GetMetricData (moto returns none)."""
    import numpy as np
    from moto.cloudwatch import models

    if getattr(models.Statistics, "_churnkit_pct", False):
        return
    original = models.Statistics.get_statistics_for_type

    def get(self, stat):
        if stat.startswith("p") and stat[1:].replace(".", "", 1).isdigit():
            values = self.metric_single_values_list
            return float(np.percentile(values, float(stat[1:]))) if values else None
        return original(self, stat)

    models.Statistics.get_statistics_for_type = get
    models.Statistics._churnkit_pct = True


class Emulators:
    """The storage and metrics emulators, started once per test session on free ports."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self._stops = []
        self.moto_url = self.azurite_url = self.gcs_url = self.monitoring_url = ""

    def start_moto(self) -> str:
        from moto.server import ThreadedMotoServer

        import logging

        moto_percentiles()
        logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one log line per request otherwise
        port = free_port()
        server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
        server.start()
        self._stops.append(server.stop)
        self.moto_url = f"http://127.0.0.1:{port}"
        import boto3

        boto3.client("s3", region_name=REGION, endpoint_url=self.moto_url, aws_access_key_id="testing",
                     aws_secret_access_key="testing").create_bucket(Bucket=BUCKET)
        return self.moto_url

    def start_azurite(self) -> str:
        exe = shutil.which("azurite-blob") or shutil.which("azurite")
        if exe is None:
            raise RuntimeError("Azurite is not installed: npm install -g azurite")
        port = free_port()
        folder = self.root / "azurite"
        folder.mkdir(exist_ok=True)
        cmd = [exe,
            "--blobHost", "127.0.0.1", "--blobPort", str(port), "--location", str(folder), "--silent",
            "--skipApiVersionCheck", "--loose"]
        if not exe.endswith("azurite-blob"):
            cmd += ["--queuePort", str(free_port()), "--tablePort", str(free_port())]
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        self._stops.append(lambda: (proc.terminate(), proc.wait(10)))
        self.azurite_url = f"http://127.0.0.1:{port}/devstoreaccount1"
        _wait_port(port, proc)
        self.azure_container().create_container()
        return self.azurite_url

    def azure_connection_string(self) -> str:
        return (f"DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;AccountKey={AZURITE_KEY};"
                f"BlobEndpoint={self.azurite_url};")

    def azure_container(self):
        from azure.storage.blob import ContainerClient

        return ContainerClient.from_connection_string(self.azure_connection_string(), "azureml-blobstore")

    def start_gcs(self) -> str:
        from gcp_storage_emulator.server import create_server

        port = free_port()
        server = create_server("127.0.0.1", port, in_memory=True, default_bucket=BUCKET)
        server.start()
        self._stops.append(server.stop)
        self.gcs_url = f"http://127.0.0.1:{port}"
        return self.gcs_url

    def gcs_bucket(self):
        from google.auth.credentials import AnonymousCredentials
        from google.cloud import storage

        client = storage.Client(project=GCP["project"], credentials=AnonymousCredentials(),
                                client_options={"api_endpoint": self.gcs_url})
        return client.bucket(BUCKET)

    def start_monitoring(self, points_file: Path) -> str:
        server = MonitoringServer(monitoring_answer(points_file))
        self._stops.append(server.stop)
        self.monitoring_url = server.url
        return server.url

    def stop(self) -> None:
        for stop in reversed(self._stops):
            try:
                stop()
            except Exception:
                pass


def _wait_port(port: int, proc, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"emulator exited: {proc.stderr.read().decode()[-500:]}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"emulator did not listen on port {port}")


# ---- recorded metric points (Azure Monitor, Cloud Monitoring) -------------------------------------
class PointStore:
    """Metric points appended as JSON lines, so another process (a controller under test) reads them."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.path.touch()
        self._lock = threading.Lock()

    def add(self, points: list[dict]) -> None:
        with self._lock, self.path.open("a") as fh:
            fh.writelines(json.dumps(p) + "\n" for p in points)

    def read(self) -> list[dict]:
        out = []
        for line in self.path.read_text().splitlines():
            try:
                out.append(json.loads(line))
            except ValueError:
                continue
        return out


def azure_metrics_body(points: list[dict], resource_uri: str, metric: str, start: str, end: str, interval: str,
                       split_status: bool) -> dict:
    """A Metrics - List response body (https://learn.microsoft.com/rest/api/monitor/metrics/list, api-version
    2018-01-01): one time series per dimension combination, ``metadatavalues`` naming them."""
    series: dict[tuple, list] = {}
    lo, hi = _parse(start), _parse(end)
    for p in points:
        if p["metric"] != metric or not lo <= p["time"] < hi:
            continue
        key = (p["deployment"], p.get("statusCodeClass")) if split_status else (p["deployment"], None)
        # RequestsPerMinute and RequestLatency_P99 both document one aggregation, Average (supported-metrics page)
        series.setdefault(key, []).append({"timeStamp": iso(p["time"]), "average": p["value"]})
    timeseries = []
    for (deployment, cls), data in sorted(series.items(), key=lambda kv: tuple(map(str, kv[0]))):
        meta = [{"name": {"value": "deployment", "localizedValue": "deployment"}, "value": deployment}]
        if cls is not None:
            meta.append({"name": {"value": "statuscodeclass", "localizedValue": "statusCodeClass"}, "value": cls})
        timeseries.append({"metadatavalues": meta, "data": data})
    unit = "Count" if metric == "RequestsPerMinute" else "Milliseconds"
    return {"cost": 0, "timespan": f"{start}/{end}", "interval": interval,
            "namespace": "Microsoft.MachineLearningServices/workspaces/onlineEndpoints", "resourceregion": "westeurope",
            "value": [{"id": f"{resource_uri}/providers/Microsoft.Insights/metrics/{metric}", "type": "Microsoft.Insights/metrics",
                       "name": {"value": metric, "localizedValue": metric}, "displayDescription": "", "unit": unit,
                       "timeseries": timeseries, "errorCode": "Success"}]}


def _parse(text: str) -> float:
    return datetime.fromisoformat(text).timestamp()


def azure_transport(answer):
    """azure-core's own ``RequestsTransport`` over a fake ``requests`` session: ``answer(path, query)``
    returns ``(status, body)``. ``.requests`` keeps every query string sent."""
    import io
    from urllib.parse import parse_qs, unquote, urlparse

    import requests
    from azure.core.pipeline.transport import RequestsTransport

    def response(url: str, status: int, body: dict) -> requests.Response:
        resp = requests.Response()
        resp.status_code = status
        resp.reason = "OK" if status == 200 else "Forbidden"
        resp.headers.update({"content-type": "application/json", "x-ms-request-id": "1"})
        resp._content = json.dumps(body).encode()
        resp._content_consumed = True
        resp.raw = io.BytesIO(resp._content)
        resp.url = url
        return resp

    class FakeService(RequestsTransport):
        def __init__(self):
            super().__init__(session=self, session_owner=False)
            self.requests: list[dict] = []

        def request(self, method, url, **kwargs):  # the requests.Session call azure-core makes
            parsed = urlparse(url)
            query = {k: v[0] for k, v in parse_qs(parsed.query).items()}
            self.requests.append(query)
            return response(url, *answer(unquote(parsed.path), query))

    return FakeService()


#: Azure's answer to an identity without the read permission (Metrics - List, 403)
AZURE_DENIED = (403, {"error": {"code": "AuthorizationFailed", "message": (
    "The client 'churnkit' does not have authorization to perform action 'microsoft.insights/metrics/read' "
    "over scope '/subscriptions/...' or the scope is invalid.")}})


def azure_monitor_transport(points_file: Path, deny: bool = False):
    """Azure Monitor's Metrics - List answered from the points ``points_file`` holds (``deny``: 403)."""
    store = PointStore(points_file)

    def answer(path, query):
        if deny:
            return AZURE_DENIED
        from cloud_docs import azure_documented, azure_metric_error

        resource = path[:path.lower().index("/providers/microsoft.insights/metrics")]
        error = azure_metric_error(resource, query["metricnames"], query.get("aggregation", ""))
        if error:
            return 400, error
        start, end = query["timespan"].split("/")
        body = azure_metrics_body(store.read(), resource, query["metricnames"], start, end,
                                  query.get("interval", "PT1M"), "statusCodeClass" in query.get("$filter", ""))
        return 200, azure_documented(resource, body, query["metricnames"], query.get("aggregation", ""))

    return azure_transport(answer)


class MonitoringServer:
    """Cloud Monitoring's ``MetricService.ListTimeSeries`` as a gRPC server on 127.0.0.1 (google-cloud-monitoring
    speaks gRPC only): ``answer(query)`` gets the request as its REST query parameters (``filter``,
    ``interval.startTime``, ``aggregation.perSeriesAligner``, ...) and returns ``(status, body)``, the body a
    ListTimeSeriesResponse in its documented JSON form
    (https://cloud.google.com/monitoring/api/ref_v3/rest/v3/projects.timeSeries/list). ``requests`` keeps
    every query. :meth:`client` is a MetricServiceClient on an insecure channel to it."""

    def __init__(self, answer):
        from concurrent import futures

        import grpc
        from google.cloud.monitoring_v3 import ListTimeSeriesRequest, ListTimeSeriesResponse

        self.requests: list[dict] = []

        def list_time_series(request, context):
            body = json.loads(ListTimeSeriesRequest.to_json(request, use_integers_for_enums=False))
            query = {}
            for k, v in body.items():
                if isinstance(v, dict):
                    query.update({f"{k}.{kk}": vv for kk, vv in v.items()})
                else:
                    query[k] = v
            self.requests.append(query)
            status, out = answer(query)
            if status == 403:
                context.abort(grpc.StatusCode.PERMISSION_DENIED, out["error"]["message"])
            return ListTimeSeriesResponse.from_json(json.dumps(out), ignore_unknown_fields=True)

        handler = grpc.method_handlers_generic_handler("google.monitoring.v3.MetricService", {
            "ListTimeSeries": grpc.unary_unary_rpc_method_handler(
                list_time_series, request_deserializer=ListTimeSeriesRequest.deserialize,
                response_serializer=ListTimeSeriesResponse.serialize)})
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        self.server.add_generic_rpc_handlers((handler,))
        port = self.server.add_insecure_port("127.0.0.1:0")
        self.server.start()
        self.url = f"127.0.0.1:{port}"

    def stop(self) -> None:
        self.server.stop(0)


def monitoring_client(address: str):
    """A MetricServiceClient talking to ``address`` over an insecure gRPC channel."""
    import grpc
    from google.cloud.monitoring_v3.services.metric_service.transports import MetricServiceGrpcTransport

    from churnkit.deploy.cloud_monitoring import metric_client

    return metric_client(transport=MetricServiceGrpcTransport(channel=grpc.insecure_channel(address)))


#: Cloud Monitoring's answer to an identity without monitoring.timeSeries.list
GCP_DENIED = (403, {"error": {"code": 403, "status": "PERMISSION_DENIED",
                              "message": "Permission monitoring.timeSeries.list denied (or the resource may not exist)."}})


def monitoring_answer(points_file: Path, deny: bool = False):
    store = PointStore(points_file)
    return lambda query: GCP_DENIED if deny else (200, monitoring_body(store.read(), query))


def monitoring_body(points: list[dict], query: dict) -> dict:
    import re

    flt = query.get("filter", "")
    metric = re.search(r'metric\.type="([^"]+)"', flt).group(1)
    latency_type = re.search(r'metric\.labels\.latency_type="([^"]+)"', flt)
    lo, hi = _parse(query["interval.startTime"]), _parse(query["interval.endTime"])
    series: dict[tuple, list] = {}
    for p in points:
        if p["metric"] != metric or not lo <= p["time"] < hi:
            continue
        if latency_type and p.get("latency_type") != latency_type.group(1):
            continue
        key = (p["deployed_model_id"], p.get("response_code", ""))
        value = {"int64Value": str(int(p["value"]))} if metric.endswith("response_count") else {"doubleValue": p["value"]}
        series.setdefault(key, []).append({"interval": {"startTime": iso(p["time"]), "endTime": iso(p["time"] + PERIOD)},
                                           "value": value})
    out = []
    for (dm, code), pts in series.items():
        labels = {"deployed_model_id": dm}
        if metric.endswith("response_count"):
            labels["response_code"] = code
        else:
            labels["latency_type"] = latency_type.group(1) if latency_type else "model"
        out.append({"metric": {"type": metric, "labels": labels},
                    "resource": {"type": "aiplatform.googleapis.com/Endpoint", "labels": {
                        "resource_container": GCP["project"], "location": GCP["region"], "endpoint_id": VERTEX_ENDPOINT_ID}},
                    "metricKind": "GAUGE" if query.get("aggregation.perSeriesAligner", "").startswith("ALIGN_PERCENTILE")
                    else "DELTA",
                    "valueType": "INT64" if metric.endswith("response_count") else "DOUBLE",
                    "points": list(reversed(pts))})  # the service lists the newest point first
    return {"timeSeries": out, "unit": ""}


# ---- the cloud targets over the router of real serve processes ---------------------------------------
def _delegate(cls):
    """Traffic-setting and the live state go to ``self.inner`` (a LocalTarget of real serve processes)."""

    def describe(self):
        state = self.inner.describe()
        state.target = self.name
        return self._details(state)

    def deploy(self, model_uri, variant=None, weight=0):
        return self._details(self.inner.deploy(model_uri, variant, weight))

    def set_traffic(self, weights):
        return self._details(self.inner.set_traffic(weights))

    def remove(self, variant):
        return self._details(self.inner.remove(variant))

    def stop(self):
        return self.inner.stop()

    for fn in (describe, deploy, set_traffic, remove, stop):
        setattr(cls, fn.__name__, fn)
    if "_details" not in cls.__dict__:
        cls._details = lambda self, state: state
    return cls


def make_target(spec: dict):
    """The simulated cloud target described by ``spec`` (a dict a subprocess can rebuild it from)."""
    from churnkit.config import load_config
    from churnkit.deploy.local import LocalTarget

    config = load_config(spec["runs_dir"])
    inner = LocalTarget(spec["endpoint"], port=spec["port"], config=config, capture=True)
    cloud = spec["cloud"]
    if cloud == "sagemaker":
        from churnkit.deploy.sagemaker import SageMakerTarget

        @_delegate
        class SimSageMaker(SageMakerTarget):
            METRIC_PERIOD, METRIC_DELAY = PERIOD, DELAY

        t = SimSageMaker(spec["endpoint"], config, role_arn=f"arn:aws:iam::{ACCOUNT}:role/churnkit", bucket=BUCKET,
                         image_uri="img", region=REGION, session=MotoSession(spec["moto_url"]))
    elif cloud == "azureml":
        from azure.monitor.query import MetricsQueryClient

        from churnkit.deploy.azure_monitor import AzureMonitorTelemetry
        from churnkit.deploy.azureml import AzureMLTarget

        @_delegate
        class SimAzureML(AzureMLTarget):
            METRIC_PERIOD, METRIC_DELAY = PERIOD, DELAY

        t = SimAzureML(spec["endpoint"], config, credential=FakeCredential(), **AZ)
        em = Emulators(Path(spec["runs_dir"]))
        em.azurite_url = spec["azurite_url"]
        t._telemetry = AzureMonitorTelemetry(
            t, PERIOD, DELAY, capture_container=em.azure_container(),
            metrics_client=MetricsQueryClient(FakeCredential(), transport=azure_monitor_transport(
                Path(spec["points_file"]), deny=spec.get("deny", False))))
    else:
        from google.auth.credentials import AnonymousCredentials

        from churnkit.deploy.cloud_monitoring import CloudMonitoringTelemetry
        from churnkit.deploy.vertex import VertexTarget

        @_delegate
        class SimVertex(VertexTarget):
            METRIC_PERIOD, METRIC_DELAY = PERIOD, DELAY

            def _details(self, state):
                state.details["resource_name"] = (f"projects/{GCP['project']}/locations/{GCP['region']}/endpoints/"
                                                  f"{VERTEX_ENDPOINT_ID}")
                state.details["deployed_model_ids"] = {v: deployed_model_id(v) for v in state.variants}
                return state

        t = SimVertex(spec["endpoint"], config, credentials=AnonymousCredentials(), **GCP)
        em = Emulators(Path(spec["runs_dir"]))
        em.gcs_url = spec["gcs_url"]
        t._telemetry = CloudMonitoringTelemetry(t, PERIOD, DELAY, client=monitoring_client(spec["monitoring_url"]),
                                                bucket=em.gcs_bucket())
    t.inner = inner
    return t


class MotoSession:
    """A boto3 session whose clients talk to the moto server at ``url``."""

    def __init__(self, url: str):
        import boto3

        self.url = url
        self._session = boto3.Session(aws_access_key_id="testing", aws_secret_access_key="testing", region_name=REGION)

    def client(self, service, **kw):
        return self._session.client(service, endpoint_url=self.url, **kw)


class FakeCredential:
    """A TokenCredential with a fixed token (no Azure AD involved)."""

    def get_token(self, *scopes, **kwargs):
        from azure.core.credentials import AccessToken

        return AccessToken("fake-token", int(time.time()) + 3600)

    def get_token_info(self, *scopes, options=None):
        from azure.core.credentials import AccessTokenInfo

        return AccessTokenInfo("fake-token", int(time.time()) + 3600)


# ---- the publisher: per-variant traffic → the cloud's telemetry ----------------------------------------
class Publisher:
    """Every ``tick`` seconds, reads what each variant served since the last tick (the router's
    ``/-/stats`` and the servers' capture files) and writes it as the cloud's telemetry."""

    def __init__(self, spec: dict, target, emulators: Emulators, tick: float = 0.5):
        self.spec, self.target, self.em, self.tick = spec, target, emulators, tick
        self.cloud = spec["cloud"]
        self._stop = threading.Event()
        self._since = time.time()
        self._marks: dict[str, float] = {}
        self.paused = threading.Event()  # set: telemetry stops arriving (nothing is published)
        self.published = 0
        if self.cloud == "sagemaker":
            import boto3

            kw = dict(region_name=REGION, endpoint_url=spec["moto_url"], aws_access_key_id="testing",
                      aws_secret_access_key="testing")
            self.cw, self.s3 = boto3.client("cloudwatch", **kw), boto3.client("s3", **kw)
        elif self.cloud == "azureml":
            self.points = PointStore(Path(spec["points_file"]))
            self.container = emulators.azure_container()
        else:
            self.points = PointStore(Path(spec["points_file"]))
            self.bucket = emulators.gcs_bucket()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def start(self):
        self.thread.start()
        return self

    def stop(self):
        self._stop.set()
        self.thread.join(10)

    def _run(self):
        while not self._stop.wait(self.tick):
            try:
                self.publish_once()
            except Exception as exc:  # keep publishing; a test sees the missing telemetry
                print(f"publisher: {type(exc).__name__}: {exc}")

    def publish_once(self) -> None:
        raw = self.target.inner._admin("GET", f"stats?since={self._since!r}", timeout=10.0)  # the router's admin port
        since, now = self._since, float(raw["now"])
        self._since = now
        windows = raw.get("variants", {})
        rows = self._capture_rows(list(windows) + [p.name for p in (self.target.inner.state_dir / "capture").glob("*")])
        if self.paused.is_set():
            return
        mid = (since + now) / 2
        for variant, w in windows.items():
            self.metrics(variant, mid, w)
        for variant, records in rows.items():
            if records:
                self.capture(variant, records)
        self.published += 1

    def _capture_rows(self, variants) -> dict[str, list[tuple]]:
        """New capture lines of each variant's serve process since the last tick (files read from where the
        last tick stopped): ``{variant: [(time, input row, score, model version)]}``."""
        out: dict[str, list[tuple]] = {}
        for variant in set(variants):
            folder = self.target.inner.state_dir / "capture" / variant
            if not folder.is_dir():
                continue
            rows = out.setdefault(variant, [])
            for path in sorted(folder.glob("capture-*.jsonl")):
                offset = self._marks.get(str(path), 0)
                with path.open("rb") as fh:
                    fh.seek(offset)
                    data = fh.read()
                end = data.rfind(b"\n") + 1  # complete lines only
                self._marks[str(path)] = offset + end
                for line in data[:end].splitlines():
                    try:
                        rec = json.loads(line)
                    except ValueError:
                        continue
                    t = datetime.fromisoformat(rec["time"]).timestamp()
                    rows += [(t, inp, float(p), str(rec.get("model_version")))
                             for inp, p in zip(rec.get("inputs", []), rec.get("predictions", []))]
        return out

    # ---- per cloud -------------------------------------------------------------------------------
    def metrics(self, variant: str, ts: float, w: dict) -> None:
        requests, errors = int(w.get("requests", 0)), int(w.get("errors", 0)) + int(w.get("timeouts", 0))
        client_errors = int(w.get("client_errors", 0))
        latencies = [float(x) for x in w.get("latencies_ms", [])]
        if self.cloud == "sagemaker":
            dims = [{"Name": "EndpointName", "Value": self.spec["endpoint"]}, {"Name": "VariantName", "Value": variant}]
            stamp = datetime.fromtimestamp(ts, tz=timezone.utc)
            data = [{"MetricName": name, "Dimensions": dims, "Timestamp": stamp, "Value": float(v), "Unit": "Count",
                     "StorageResolution": 1}
                    for name, v in (("Invocations", requests), ("Invocation5XXErrors", errors),
                                    ("Invocation4XXErrors", client_errors))]
            for i in range(0, len(latencies), 150):  # ModelLatency in microseconds, at most 150 values a datum
                data.append({"MetricName": "ModelLatency", "Dimensions": dims, "Timestamp": stamp,
                             "Values": [x * 1000.0 for x in latencies[i:i + 150]], "Unit": "Microseconds",
                             "StorageResolution": 1})
            for i in range(0, len(data), 20):
                self.cw.put_metric_data(Namespace="AWS/SageMaker", MetricData=data[i:i + 20])
        elif self.cloud == "azureml":
            from churnkit.deploy.azureml import deployment_name

            dep = deployment_name(variant, self.spec["endpoint"])
            ok = requests - errors - client_errors
            pts = [{"metric": "RequestsPerMinute", "deployment": dep, "statusCodeClass": cls, "time": ts, "value": n}
                   for cls, n in (("2xx", ok), ("4xx", client_errors), ("5xx", errors)) if n]
            if latencies:
                pts.append({"metric": "RequestLatency_P99", "deployment": dep, "time": ts,
                            "value": float(_p99(latencies))})
            self.points.add(pts)
        else:
            dm = deployed_model_id(variant)
            ok = requests - errors - client_errors
            pts = [{"metric": "aiplatform.googleapis.com/prediction/online/response_count", "deployed_model_id": dm,
                    "response_code": code, "time": ts, "value": n}
                   for code, n in (("200", ok), ("400", client_errors), ("500", errors)) if n]
            if latencies:
                pts.append({"metric": "aiplatform.googleapis.com/prediction/online/prediction_latencies",
                            "deployed_model_id": dm, "latency_type": "model", "time": ts, "value": float(_p99(latencies))})
            self.points.add(pts)

    def capture(self, variant: str, records: list[tuple]) -> None:
        first = datetime.fromtimestamp(records[0][0], tz=timezone.utc)
        if self.cloud == "sagemaker":
            # https://docs.aws.amazon.com/sagemaker/latest/dg/model-monitor-data-capture-endpoint.html (View Captured Data)
            lines = []
            for t, inp, p, version in records:
                body_in = json.dumps({"instances": [inp]})
                body_out = json.dumps({"predictions": [{"churn_probability": p, "churn": p >= 0.5}],
                                       "model": {"name": "churn", "version": version}})
                lines.append(json.dumps({
                    "captureData": {
                        "endpointInput": {"observedContentType": "application/json", "mode": "INPUT", "data": body_in,
                                          "encoding": "JSON"},
                        "endpointOutput": {"observedContentType": "application/json", "mode": "OUTPUT",
                                           "data": _b64(body_out), "encoding": "BASE64"}},
                    "eventMetadata": {"eventId": str(uuid.uuid4()), "inferenceTime": iso(t, ms=True)},
                    "eventVersion": "0"}))
            key = (f"churnkit/capture/{self.spec['endpoint']}/{self.spec['endpoint']}/{variant}/"
                   f"{first:%Y/%m/%d/%H}/{first:%M-%S-%f}"[:-3] + f"-{uuid.uuid4()}.jsonl")
            self.s3.put_object(Bucket=BUCKET, Key=key, Body="\n".join(lines).encode())
        elif self.cloud == "azureml":
            # https://learn.microsoft.com/azure/machine-learning/how-to-collect-production-data (payload logging)
            from churnkit.deploy.azureml import deployment_name

            dep = deployment_name(variant, self.spec["endpoint"])
            source = (f"/subscriptions/{AZ['subscription_id']}/resourceGroups/{AZ['resource_group']}/providers/"
                      f"Microsoft.MachineLearningServices/workspaces/{AZ['workspace']}/onlineEndpoints/"
                      f"{self.spec['endpoint']}/deployments/{dep}")
            for collection in ("request", "response"):
                lines = []
                for t, inp, p, version in records:
                    cid = f"{t:.6f}"
                    data = {"instances": [inp]} if collection == "request" else {
                        "predictions": [{"churn_probability": p, "churn": p >= 0.5}],
                        "model": {"name": "churn", "version": version}}
                    lines.append(json.dumps({
                        "specversion": "1.0", "id": str(uuid.uuid4()), "source": source,
                        "type": f"azureml.inference.{collection}", "datacontenttype": "application/json",
                        "time": iso(t, ms=True), "data": data, "path": "/score", "method": "POST",
                        "contentrange": f"bytes 0-{len(json.dumps(data)) - 1}/{len(json.dumps(data))}",
                        "correlationid": cid, "xrequestid": cid, "modelversion": "default",
                        "collectdatatype": "dict", "agent": "azureml-inference-server"}))
                name = (f"modelDataCollector/{self.spec['endpoint']}/{dep}/{collection}/{first:%Y/%m/%d/%H}/"
                        f"{uuid.uuid4()}.jsonl")
                self.container.upload_blob(name, "\n".join(lines).encode())
        else:
            # the kit's capture lines (churnkit.serve.capture), as the serving container writes them
            lines = [json.dumps({"time": iso(t, ms=True), "request_id": str(uuid.uuid4()), "model_name": "churn",
                                 "model_version": version, "inputs": [inp], "predictions": [p]})
                     for t, inp, p, version in records]
            name = f"churnkit/capture/{self.spec['endpoint']}/{variant}/capture-{first:%Y%m%dT%H%M%S%f}-{uuid.uuid4().hex[:6]}.jsonl"
            self.bucket.blob(name).upload_from_string("\n".join(lines))


def _b64(text: str) -> str:
    import base64

    return base64.b64encode(text.encode()).decode()


def _p99(values):
    import numpy as np

    return float(np.percentile(np.asarray(values, dtype=float), 99))
