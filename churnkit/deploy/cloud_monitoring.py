"""Vertex AI telemetry: Cloud Monitoring metrics of the endpoint per deployed model, and the served
scores from the kit's own capture files in Cloud Storage.

Requests by response code come from ``aiplatform.googleapis.com/prediction/online/response_count``
(summed per period), latency from ``prediction/online/prediction_latencies`` with
``latency_type="model"`` (the 99th percentile per period, milliseconds), both on the
``aiplatform.googleapis.com/Endpoint`` resource and split by the ``deployed_model_id`` label, read
with google-cloud-monitoring's ``MetricServiceClient.list_time_series``
(https://cloud.google.com/monitoring/api/metrics_gcp_a_b#gcp-aiplatform). Served scores and inputs come
from the capture files the kit's server writes (``churnkit serve --capture-dir``), kept under
``gs://<bucket>/churnkit/capture/<endpoint>/<variant>/``: Vertex's own request-response logging goes to
BigQuery with sampling and minutes of delay, while the capture files are the same JSON lines every
other target reads.

Vertex fills ``latency_type`` "model" and "overhead" only for custom-trained and AutoML tabular models;
"total" is always filled (the metrics list above). When the "model" series of a variant that served
requests is empty, the reader asks for "total" and names it in the window's source.
"""

from __future__ import annotations

from datetime import datetime

from churnkit.deploy.cloud_telemetry import (
    CaptureTelemetry,
    Points,
    access_denied,
    complete_periods,
    json_lines,
    parse_time,
    utc,
    within,
)
from churnkit.exceptions import MissingExtraError

RESPONSE_COUNT = "aiplatform.googleapis.com/prediction/online/response_count"
LATENCIES = "aiplatform.googleapis.com/prediction/online/prediction_latencies"
PERMISSIONS = {"metrics": "monitoring.timeSeries.list (roles/monitoring.viewer) in the project",
               "capture": "storage.objects.list and storage.objects.get (roles/storage.objectViewer) on the bucket"}
TERRAFORM_OUTPUT = "deployer_service_account"


def _rfc3339(ts: float) -> str:
    return utc(ts).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def metric_client(credentials=None, **kwargs):
    try:
        from google.cloud import monitoring_v3
    except ImportError as exc:
        raise MissingExtraError("gcp", "google-cloud-monitoring") from exc
    return monitoring_v3.MetricServiceClient(credentials=credentials, **kwargs)


class CloudMonitoringTelemetry(CaptureTelemetry):
    """Per-deployed-model windows of a Vertex AI endpoint (see the module doc).

    Parameters
    ----------
    target : VertexTarget
        Gives the project, the endpoint, the deployed-model ids, the credentials and the bucket.
    period, delay : float
        Metric alignment period and ingestion delay in seconds (Vertex samples every 60 s and shows a
        point up to 180 s later).
    client : MetricServiceClient, optional
        Default: built from the target's credentials (tests pass one over a replaced transport).
    bucket : google.cloud.storage.Bucket, optional
        Default: the target's ``CHURNKIT_GCP_BUCKET``.
    """

    def __init__(self, target, period: float = 60.0, delay: float = 180.0, client=None, bucket=None):
        self.target, self.period, self.delay = target, float(period), float(delay)
        self._client, self._bucket = client, bucket
        self._ids: dict[str, str] = {}
        self._endpoint_id = ""
        self._latency_type: dict[str, str] = {}
        self._parsed: dict[tuple[str, str], list[dict]] = {}

    @property
    def client(self):
        if self._client is None:
            self._client = metric_client(self.target._credentials)
        return self._client

    @property
    def bucket(self):
        if self._bucket is None:
            from google.cloud import storage

            self._bucket = storage.Client(project=self.target.settings["project"],
                                          credentials=self.target._credentials).bucket(self.target.settings["bucket"])
        return self._bucket

    def ids(self, variants: list[str]) -> tuple[str, dict[str, str]]:
        """The endpoint id and ``{deployed_model_id: variant}`` (read from the endpoint once per variant)."""
        if not self._endpoint_id or any(v not in self._ids for v in variants):
            live = self.target.describe()
            self._endpoint_id = live.details.get("resource_name", "").rsplit("/", 1)[-1]
            self._ids.update(live.details.get("deployed_model_ids", {}))
        return self._endpoint_id, {self._ids[v]: v for v in variants if v in self._ids}

    # ---- queries -------------------------------------------------------------------------------------
    def metric_requests(self, endpoint_id: str, start: float, end: float, latency_type: str = "model") -> list[dict]:
        """The two ``list_time_series`` requests (REST field names) for ``[start, end]``: response counts, and
        latency of ``latency_type`` ("model", or "total" when Vertex fills no "model" series)."""
        base = f'resource.type="aiplatform.googleapis.com/Endpoint" AND resource.labels.endpoint_id="{endpoint_id}"'
        common = {"name": f"projects/{self.target.settings['project']}",
                  "interval": {"start_time": _rfc3339(start), "end_time": _rfc3339(end)}, "view": "FULL"}
        period = f"{int(self.period)}s"
        return [common | {"filter": f'metric.type="{RESPONSE_COUNT}" AND {base}',
                          "aggregation": {"alignment_period": period, "per_series_aligner": "ALIGN_SUM"}},
                common | {"filter": f'metric.type="{LATENCIES}" AND {base} AND metric.labels.latency_type="{latency_type}"',
                          "aggregation": {"alignment_period": period, "per_series_aligner": "ALIGN_PERCENTILE_99"}}]

    def prefix(self, variant: str) -> str:
        return f"churnkit/capture/{self.target.endpoint}/{variant}/"

    def queries(self, variants: list[str], since: float, until: float | None = None) -> list[dict]:
        from churnkit.deploy.base import request

        start, end = complete_periods(since, until if until is not None else since + self.period, self.period,
                                      planned=True)
        try:
            endpoint_id = self.ids(variants)[0]
        except Exception:  # no credentials: name the endpoint
            endpoint_id = f"<id of endpoint {self.target.endpoint!r}>"
        reqs = [request("monitoring", "MetricService.ListTimeSeries", q)
                for q in self.metric_requests(endpoint_id, start, end)]
        reqs.append(request("monitoring", "MetricService.ListTimeSeries",
                            self.metric_requests(endpoint_id, start, end, "total")[1],
                            note='sent only for a variant whose latency_type="model" series is empty'))
        bucket = self.target.settings["bucket"]
        return reqs + [request("storage", "objects.list", {"bucket": bucket, "prefix": self.prefix(v)}) for v in variants]

    # ---- reads ---------------------------------------------------------------------------------------
    def _list(self, req: dict):
        from datetime import timedelta

        from google.api_core import exceptions as gexc

        call = dict(req, interval={k: datetime.fromisoformat(v) for k, v in req["interval"].items()},
                    aggregation=dict(req["aggregation"], alignment_period=timedelta(
                        seconds=float(req["aggregation"]["alignment_period"].rstrip("s")))))
        try:
            return list(self.client.list_time_series(request=call))
        except gexc.PermissionDenied as exc:
            raise access_denied("Google Cloud", f"Cloud Monitoring metrics of endpoint {self.target.endpoint!r}",
                                PERMISSIONS["metrics"], TERRAFORM_OUTPUT, exc) from exc

    def points(self, variants: list[str], start: float, end: float) -> dict[str, Points]:
        out = {v: Points() for v in variants}
        if end <= start:
            return out
        endpoint_id, by_id = self.ids(variants)
        counts, latencies = self.metric_requests(endpoint_id, start, end)
        for series in self._list(counts):
            variant = by_id.get(series.metric.labels.get("deployed_model_id", ""))
            if variant is None:
                continue
            code = series.metric.labels.get("response_code", "")
            n = sum(float(p.value.int64_value or p.value.double_value) for p in series.points)
            out[variant].requests += n
            if code.startswith("5"):
                out[variant].errors += n
            elif code.startswith("4"):
                out[variant].client_errors += n
        self._read_latencies(latencies, by_id, out)
        empty = {i: v for i, v in by_id.items() if out[v].requests > 0 and not out[v].latency_p99_ms}
        for variant in by_id.values():
            self._latency_type[variant] = "total" if variant in empty.values() else "model"
        if empty:  # no "model" series for this model type: the "total" one Vertex always fills
            self._read_latencies(self.metric_requests(endpoint_id, start, end, "total")[1], empty, out)
        return out

    def _read_latencies(self, req: dict, by_id: dict[str, str], out: dict[str, Points]) -> None:
        for series in self._list(req):
            variant = by_id.get(series.metric.labels.get("deployed_model_id", ""))
            if variant is not None:
                out[variant].latency_p99_ms += [float(p.value.double_value) for p in series.points]

    def records(self, variant: str, start: float, end: float) -> list[dict]:
        """Capture records (the kit's JSON lines) of ``variant`` with ``time`` in ``[start, end)``."""
        from google.api_core import exceptions as gexc

        try:
            blobs = list(self.bucket.client.list_blobs(self.bucket, prefix=self.prefix(variant)))
        except gexc.Forbidden as exc:
            raise access_denied("Google Cloud", f"the capture files under gs://{self.bucket.name}/{self.prefix(variant)}",
                                PERMISSIONS["capture"], TERRAFORM_OUTPUT, exc) from exc
        found = []
        for blob in blobs:
            key = (blob.name, str(blob.generation))
            if key not in self._parsed:
                self._parsed[key] = json_lines(blob.download_as_bytes())
            found += self._parsed[key]
        return within(found, start, end, _time)

    def output_records(self, variant: str, start: float, end: float) -> list[dict]:
        return self.records(variant, start, end)

    input_records = output_records

    def scores_of(self, record: dict) -> list[float]:
        return [float(p) for p in record.get("predictions", []) if isinstance(p, (int, float))]

    def inputs_of(self, record: dict) -> list[dict]:
        return [r for r in record.get("inputs", []) if isinstance(r, dict)]

    def source(self, variant: str, start: float, end: float) -> str:
        kind = self._latency_type.get(variant, "model")
        note = " (no 'model' series for this model type)" if kind == "total" else ""
        return (f"Cloud Monitoring prediction/online/* deployed_model_id={self._ids.get(variant, '?')} "
                f"latency_type={kind}{note} "
                f"({int(self.period)} s periods {utc(start):%H:%M:%S}-{utc(end):%H:%M:%S} UTC); scores from "
                f"capture gs://{self.target.settings['bucket']}/{self.prefix(variant)}")


def _time(rec: dict) -> datetime:
    return parse_time(rec.get("time"))
