"""Azure ML telemetry: Azure Monitor metrics of the online endpoint split by deployment, and the served
payloads from Azure ML's data collector (payload logging) in the workspace blob store.

Requests by status code class come from ``RequestsPerMinute`` (unit Count, documented aggregation
Average, dimensions ``deployment`` and ``statusCodeClass``: at the metric's one-minute grain the Average
is the requests of that minute), latency from ``RequestLatency_P99`` (milliseconds, aggregation Average,
dimension ``deployment``), both on the endpoint resource through azure-monitor-query's
``MetricsQueryClient``
(https://learn.microsoft.com/azure/azure-monitor/reference/supported-metrics/microsoft-machinelearningservices-workspaces-onlineendpoints-metrics).
Served scores and inputs come from payload logging: with the ``request`` and ``response``
collections on, Azure ML writes every payload as a JSON line to
``modelDataCollector/<endpoint>/<deployment>/<request|response>/yyyy/MM/dd/HH/*.jsonl`` in the
workspace's ``workspaceblobstore``, request and response sharing a ``correlationid``
(https://learn.microsoft.com/azure/machine-learning/how-to-collect-production-data). The platform
collects them, so the serving container needs no storage credentials.

The same article documents three other forms, each handled: a payload over 4 MB (or a binary one) is
logged as ``"datainblob": "true"`` with the blob's URL in ``data``, read from the workspace container when
it is JSON there; requests sent close together are batched into one record whose ``data`` is a list (of
bodies, or of rows); and ``data`` is the body itself (there is no base64 field). What cannot be read
(binary, a blob elsewhere, text that is not JSON) is skipped and counted in ``skipped`` and the window's
source, never guessed.
"""

from __future__ import annotations

import json
from collections import Counter
from datetime import datetime, timedelta
from urllib.parse import unquote, urlparse

from churnkit.deploy.cloud_telemetry import (
    CaptureTelemetry,
    Points,
    access_denied,
    complete_periods,
    hour_prefixes,
    instances_from_body,
    json_lines,
    parse_time,
    scores_from_body,
    utc,
    within,
)
from churnkit.deploy.reach import AZURE_KWARGS
from churnkit.exceptions import MissingExtraError

NAMESPACE = "Microsoft.MachineLearningServices/workspaces/onlineEndpoints"
REQUESTS_METRIC = "RequestsPerMinute"
#: The one aggregation Azure Monitor documents for RequestsPerMinute (the supported-metrics page above).
REQUESTS_AGGREGATION = "Average"
LATENCY_METRIC = "RequestLatency_P99"
COLLECTIONS = ("request", "response")
PERMISSIONS = {"metrics": "Microsoft.Insights/metrics/read (the Monitoring Reader role) on the endpoint",
               "capture": "Storage Blob Data Reader on the workspace storage account"}
TERRAFORM_OUTPUT = "deployer_principal_id"


def _metrics_client(credential, **kwargs):
    try:
        from azure.monitor.query import MetricsQueryClient
    except ImportError as exc:
        raise MissingExtraError("azure", "azure-monitor-query") from exc
    return MetricsQueryClient(credential, **kwargs)


class AzureMonitorTelemetry(CaptureTelemetry):
    """Per-deployment windows of an Azure ML online endpoint (see the module doc).

    Parameters
    ----------
    target : AzureMLTarget
        Gives the endpoint, the deployment names, the credential and the workspace.
    period, delay : float
        Metric granularity and ingestion delay in seconds.
    metrics_client : MetricsQueryClient, optional
        Default: built from the target's credential (tests pass one with a replaced transport).
    capture_container : azure.storage.blob.ContainerClient, optional
        Default: the workspace's ``workspaceblobstore`` container.
    """

    def __init__(self, target, period: float = 60.0, delay: float = 180.0, metrics_client=None, capture_container=None):
        self.target, self.period, self.delay = target, float(period), float(delay)
        self._metrics, self._container = metrics_client, capture_container
        self._parsed: dict[tuple[str, str], list[dict]] = {}
        #: payload-logging records that could not be read, by reason (binary, blob elsewhere, not JSON)
        self.skipped: Counter = Counter()

    @property
    def resource_uri(self) -> str:
        s = self.target.settings
        return (f"/subscriptions/{s['subscription_id']}/resourceGroups/{s['resource_group']}/providers/"
                f"Microsoft.MachineLearningServices/workspaces/{s['workspace']}/onlineEndpoints/{self.target.endpoint}")

    def deployment(self, variant: str) -> str:
        """The Azure deployment serving ``variant`` (the target names its deployments)."""
        return self.target.deployment_of(variant)

    @property
    def metrics(self):
        if self._metrics is None:
            self._metrics = _metrics_client(self.target.credential, **AZURE_KWARGS)
        return self._metrics

    @property
    def container(self):
        """The blob container payload logging writes to (the workspace's default blob datastore)."""
        if self._container is None:
            from azure.storage.blob import ContainerClient

            store = self.target._send("get datastore", self.target.client.datastores.get, "workspaceblobstore")
            url = f"https://{store.account_name}.blob.{store.endpoint}/{store.container_name}"
            self._container = ContainerClient.from_container_url(url, credential=self.target.credential, **AZURE_KWARGS)
        return self._container

    # ---- queries -------------------------------------------------------------------------------------
    def metric_requests(self, start: float, end: float) -> list[dict]:
        """The two metric queries (``query_resource`` keyword arguments) for ``[start, end]``."""
        common = {"resource_uri": self.resource_uri, "timespan": (utc(start), utc(end)),
                  "granularity": timedelta(seconds=self.period), "metric_namespace": NAMESPACE, "max_results": 100}
        return [common | {"metric_names": [REQUESTS_METRIC], "aggregations": [REQUESTS_AGGREGATION],
                          "filter": "deployment eq '*' and statusCodeClass eq '*'"},
                common | {"metric_names": [LATENCY_METRIC], "aggregations": ["Average"], "filter": "deployment eq '*'"}]

    def prefix(self, variant: str, collection: str) -> str:
        return f"modelDataCollector/{self.target.endpoint}/{self.deployment(variant)}/{collection}/"

    def queries(self, variants: list[str], since: float, until: float | None = None) -> list[dict]:
        from churnkit.deploy.base import request

        start, end = complete_periods(since, until if until is not None else since + self.period, self.period,
                                      planned=True)
        reqs = [request("azure-monitor", "MetricsQueryClient.query_resource",
                        json.loads(json.dumps(q, default=str))) for q in self.metric_requests(start, end)]
        for variant in variants:
            for hour in hour_prefixes(start, end):
                reqs.append(request("azure-storage-blob", "ContainerClient.list_blobs",
                                    {"name_starts_with": self.prefix(variant, "response") + hour}))
        return reqs

    # ---- reads ---------------------------------------------------------------------------------------
    def _query(self, q: dict):
        from azure.core.exceptions import HttpResponseError

        q = dict(q)
        try:
            return self.metrics.query_resource(q.pop("resource_uri"), q.pop("metric_names"), **q)
        except HttpResponseError as exc:
            if exc.status_code == 403 or "Authorization" in str(exc.error.code if exc.error else ""):
                raise access_denied("Azure", f"Azure Monitor metrics of endpoint {self.target.endpoint!r}",
                                    PERMISSIONS["metrics"], TERRAFORM_OUTPUT, exc) from exc
            raise

    def points(self, variants: list[str], start: float, end: float) -> dict[str, Points]:
        out = {v: Points() for v in variants}
        if end <= start:
            return out
        by_deployment = {self.deployment(v): v for v in variants}
        for q in self.metric_requests(start, end):
            for metric in self._query(q).metrics:
                for series in metric.timeseries:
                    dims = {k.lower(): v for k, v in (series.metadata_values or {}).items()}
                    variant = by_deployment.get(dims.get("deployment", ""))
                    if variant is None:
                        continue
                    for point in series.data:
                        if metric.name == LATENCY_METRIC and point.average is not None:
                            out[variant].latency_p99_ms.append(float(point.average))
                        elif metric.name == REQUESTS_METRIC and point.average is not None:
                            # one point per one-minute grain: its Average is that minute's request count
                            cls = dims.get("statuscodeclass", "")
                            out[variant].requests += point.average
                            if cls.startswith("5"):
                                out[variant].errors += point.average
                            elif cls.startswith("4"):
                                out[variant].client_errors += point.average
        return out

    def records(self, variant: str, collection: str, start: float, end: float) -> list[dict]:
        """Payload-logging records of ``variant`` in ``collection`` whose time lies in ``[start, end)``."""
        from azure.core.exceptions import HttpResponseError

        found = []
        for hour in hour_prefixes(start, end):
            try:
                blobs = list(self.container.list_blobs(name_starts_with=self.prefix(variant, collection) + hour))
            except HttpResponseError as exc:
                if exc.status_code == 403:
                    raise access_denied("Azure", "the payload logs in the workspace blob store", PERMISSIONS["capture"],
                                        TERRAFORM_OUTPUT, exc) from exc
                raise
            for blob in blobs:
                key = (blob.name, str(blob.etag))
                if key not in self._parsed:
                    self._parsed[key] = json_lines(self.container.download_blob(blob.name).readall())
                found += self._parsed[key]
        return within(found, start, end, _time)

    def output_records(self, variant: str, start: float, end: float) -> list[dict]:
        return self.records(variant, "response", start, end)

    def input_records(self, variant: str, start: float, end: float) -> list[dict]:
        return self.records(variant, "request", start, end)

    def scores_of(self, record: dict) -> list[float]:
        return [x for body in self.bodies(record) for x in scores_from_body(body)]

    def inputs_of(self, record: dict) -> list[dict]:
        rows: list[dict] = []
        for body in self.bodies(record):
            rows += instances_from_body(body) if isinstance(body, dict) else [r for r in body if isinstance(r, dict)]
        return rows

    def bodies(self, record: dict) -> list:
        """The request or response bodies one payload-logging record holds (several when the collector batched
        requests; none, counted in ``skipped``, when the payload cannot be read)."""
        data = record.get("data")
        if str(record.get("datainblob", "")).lower() == "true":
            data = self._in_blob(record)
        elif isinstance(data, str) and "json" in str(record.get("datacontenttype", "")).lower():
            try:
                data = json.loads(data)
            except ValueError:
                self.skipped["not JSON"] += 1
                return []
        if isinstance(data, dict):
            return [data]
        if isinstance(data, list) and data and all(isinstance(d, dict) for d in data) and \
                any(k in d for d in data for k in ("instances", "predictions", "dataframe_split", "dataframe_records",
                                                    "inputs", "data")):
            return data  # batched: one body per request
        if isinstance(data, list):
            return [data]  # rows, or a bare list of scores
        if data is not None:
            self.skipped["not JSON"] += 1
        return []

    def _in_blob(self, record: dict):
        """A payload logged as ``datainblob``: the blob's JSON when it lies in the workspace container, else None."""
        if "json" not in str(record.get("datacontenttype", "")).lower():
            self.skipped["binary payload in blob"] += 1
            return None
        path = unquote(urlparse(str(record.get("data", ""))).path)
        marker = f"/{self.container.container_name}/"
        if marker not in path:
            self.skipped["payload in a blob outside the workspace container"] += 1
            return None
        try:
            return json.loads(self.container.download_blob(path.split(marker, 1)[1]).readall())
        except Exception:  # noqa: BLE001 - a missing or unreadable payload blob: skipped and counted
            self.skipped["payload blob not readable"] += 1
            return None

    def source(self, variant: str, start: float, end: float) -> str:
        skipped = "; ".join(f"{n} {why}" for why, n in sorted(self.skipped.items()))
        return (f"Azure Monitor {REQUESTS_METRIC}/{LATENCY_METRIC} deployment={self.deployment(variant)} of "
                f"{self.target.endpoint} ({int(self.period)} s grain {utc(start):%H:%M:%S}-{utc(end):%H:%M:%S} "
                f"UTC); scores from payload logging {self.prefix(variant, 'response')}"
                + (f" (payloads skipped so far: {skipped})" if skipped else ""))


def _time(rec: dict) -> datetime:
    return parse_time(rec.get("time"))
