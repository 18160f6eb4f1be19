"""SageMaker telemetry: CloudWatch ``AWS/SageMaker`` metrics per production variant and the endpoint's
native Data Capture in S3.

Requests, 4xx and 5xx come from ``Invocations``, ``Invocation4XXErrors`` and ``Invocation5XXErrors``
(Sum per period); latency from ``ModelLatency`` (microseconds); all by ``EndpointName`` + ``VariantName``
(https://docs.aws.amazon.com/sagemaker/latest/dg/monitoring-cloudwatch.html). ``ModelLatency`` documents
the statistics Average, Sum, Min, Max and SampleCount, no percentiles: the reader asks for p99 and
Maximum in one GetMetricData, uses p99 where CloudWatch returns it and Maximum otherwise, and names the
statistic in the window's source; a variant that served requests but has neither is reported as "no
latency datapoints", never as "no latency". Served churn scores and the
inputs come from the Data Capture files SageMaker writes under
``<DestinationS3Uri>/<endpoint>/<variant>/yyyy/mm/dd/hh/*.jsonl``, one record per request with
``captureData.endpointInput`` / ``endpointOutput`` (encoding ``JSON``, ``CSV`` or ``BASE64``) and
``eventMetadata.inferenceTime``
(https://docs.aws.amazon.com/sagemaker/latest/dg/model-monitor-data-capture-endpoint.html).
Only boto3 clients are used, through the target's ``_call`` (so errors are the kit's).
"""

from __future__ import annotations

import json
from datetime import datetime

from churnkit.deploy.cloud_telemetry import (
    CaptureTelemetry,
    Points,
    access_denied,
    complete_periods,
    decode,
    hour_prefixes,
    instances_from_body,
    json_lines,
    parse_time,
    scores_from_body,
    utc,
    within,
)

NAMESPACE = "AWS/SageMaker"
#: (metric name, statistic, Points field); ModelLatency twice: p99 where CloudWatch has it, else Maximum
METRICS = (("Invocations", "Sum", "requests"), ("Invocation5XXErrors", "Sum", "errors"),
           ("Invocation4XXErrors", "Sum", "client_errors"), ("ModelLatency", "p99", "latency_p99_ms"),
           ("ModelLatency", "Maximum", "latency_max_ms"))
LATENCY_STATISTICS = ("p99", "Maximum")
PERMISSIONS = {"metrics": "cloudwatch:GetMetricData", "capture": "s3:ListBucket and s3:GetObject on the capture prefix"}
TERRAFORM_OUTPUT = "deployer_role_arn"


class CloudWatchTelemetry(CaptureTelemetry):
    """Per-variant windows of a SageMaker endpoint (see the module doc).

    Parameters
    ----------
    target : SageMakerTarget
        Gives the endpoint, the clients and the capture destination.
    period, delay : float
        Metric period and ingestion delay in seconds (SageMaker publishes every 60 s; the tests compress
        both to about a second with high-resolution points).
    """

    def __init__(self, target, period: float = 60.0, delay: float = 120.0):
        self.target, self.period, self.delay = target, float(period), float(delay)
        self._parsed: dict[str, list[dict]] = {}
        #: the ModelLatency statistic each variant's last window used ("p99", "Maximum", "none": no datapoints)
        self.latency_statistic: dict[str, str] = {}

    # ---- queries -------------------------------------------------------------------------------------
    def metric_queries(self, variants: list[str], start: float, end: float) -> dict:
        """The GetMetricData request for ``variants`` over ``[start, end]``."""
        queries = []
        for i, variant in enumerate(variants):
            dims = [{"Name": "EndpointName", "Value": self.target.endpoint}, {"Name": "VariantName", "Value": variant}]
            for j, (metric, stat, _) in enumerate(METRICS):
                label = f"{variant}|{metric}" + (f"|{stat}" if stat == "Maximum" else "")  # variant|metric[|fallback]
                queries.append({"Id": f"m{i}_{j}", "Label": label, "ReturnData": True, "MetricStat": {
                    "Metric": {"Namespace": NAMESPACE, "MetricName": metric, "Dimensions": dims},
                    "Period": int(self.period), "Stat": stat}})
        return {"MetricDataQueries": queries, "StartTime": utc(start), "EndTime": utc(end),
                "ScanBy": "TimestampAscending"}

    def capture_prefix(self, variant: str) -> tuple[str, str]:
        """``(bucket, key prefix)`` of ``variant``'s Data Capture files."""
        dest = self.target._capture()["DestinationS3Uri"].removeprefix("s3://")
        bucket, _, prefix = dest.partition("/")
        return bucket, f"{prefix.rstrip('/')}/{self.target.endpoint}/{variant}/"

    def queries(self, variants: list[str], since: float, until: float | None = None) -> list[dict]:
        """Every request :meth:`windows` sends for this window (for ``rollout --plan``)."""
        from churnkit.deploy.base import request

        start, end = complete_periods(since, until if until is not None else since + self.period, self.period,
                                      planned=True)
        reqs = [request("cloudwatch", "GetMetricData", json.loads(json.dumps(self.metric_queries(variants, start, end),
                                                                             default=str)))]
        for variant in variants:
            bucket, prefix = self.capture_prefix(variant)
            reqs += [request("s3", "ListObjectsV2", {"Bucket": bucket, "Prefix": prefix + hour})
                     for hour in hour_prefixes(start, end)]
        return reqs

    # ---- reads ---------------------------------------------------------------------------------------
    def points(self, variants: list[str], start: float, end: float) -> dict[str, Points]:
        out = {v: Points() for v in variants}
        if end <= start:
            return out
        params, token = self.metric_queries(variants, start, end), None
        latency: dict[str, dict[str, list[float]]] = {v: {s: [] for s in LATENCY_STATISTICS} for v in variants}
        while True:
            page = self._get(params | ({"NextToken": token} if token else {}))
            for res in page.get("MetricDataResults", []):
                variant, metric, *fallback = res["Label"].split("|")
                stat, field = next((st, f) for m, st, f in METRICS if m == metric and (not fallback or st == fallback[0]))
                values = [float(v) for v in res.get("Values", []) if v is not None]
                if field.startswith("latency_"):
                    latency[variant][stat] += [v / 1000.0 for v in values]  # microseconds
                else:
                    setattr(out[variant], field, getattr(out[variant], field) + sum(values))
            token = page.get("NextToken")
            if not token:
                break
        for variant, by_stat in latency.items():
            stat = next((s for s in LATENCY_STATISTICS if by_stat[s]), "")
            out[variant].latency_p99_ms = by_stat[stat] if stat else []
            self.latency_statistic[variant] = stat or ("none" if out[variant].requests > 0 else "")
        return out

    def _get(self, params: dict) -> dict:
        try:
            return self.target._call("cloudwatch", "GetMetricData", params)
        except Exception as exc:
            if "AccessDenied" in f"{exc} {exc.__cause__}":
                raise access_denied("AWS", f"CloudWatch metrics of endpoint {self.target.endpoint!r}",
                                    PERMISSIONS["metrics"], TERRAFORM_OUTPUT, exc) from exc
            raise

    def records(self, variant: str, start: float, end: float) -> list[dict]:
        """Data Capture records of ``variant`` whose inference time lies in ``[start, end)``."""
        bucket, prefix = self.capture_prefix(variant)
        found = []
        for hour in hour_prefixes(start, end):
            token = None
            while True:
                params = {"Bucket": bucket, "Prefix": prefix + hour} | ({"ContinuationToken": token} if token else {})
                try:
                    page = self.target._call("s3", "ListObjectsV2", params)
                except Exception as exc:
                    if "AccessDenied" in f"{exc} {exc.__cause__}":
                        raise access_denied("AWS", f"the Data Capture files under s3://{bucket}/{prefix}",
                                            PERMISSIONS["capture"], TERRAFORM_OUTPUT, exc) from exc
                    raise
                for obj in page.get("Contents", []):
                    found += self._read(bucket, obj["Key"], obj.get("ETag", ""))
                token = page.get("NextContinuationToken")
                if not token:
                    break
        return within(found, start, end, _inference_time)

    def _read(self, bucket: str, key: str, etag: str) -> list[dict]:
        if (key, etag) not in self._parsed:
            body = self.target._call("s3", "GetObject", {"Bucket": bucket, "Key": key})["Body"].read()
            self._parsed[(key, etag)] = json_lines(body)
        return self._parsed[(key, etag)]

    def output_records(self, variant: str, start: float, end: float) -> list[dict]:
        return self.records(variant, start, end)

    input_records = output_records

    def scores_of(self, record: dict) -> list[float]:
        output = record.get("captureData", {}).get("endpointOutput", {})
        return scores_from_body(decode(output.get("data", ""), output.get("encoding", "")))

    def inputs_of(self, record: dict) -> list[dict]:
        inp = record.get("captureData", {}).get("endpointInput", {})
        return instances_from_body(decode(inp.get("data", ""), inp.get("encoding", "")))

    def source(self, variant: str, start: float, end: float) -> str:
        stat = self.latency_statistic.get(variant, "")
        latency = {"p99": "ModelLatency p99", "Maximum": "ModelLatency Maximum (CloudWatch returned no p99)",
                   "none": "ModelLatency: no datapoints for the requests served (latency unknown, not zero)"}.get(stat, "")
        return (f"CloudWatch {NAMESPACE} EndpointName={self.target.endpoint} VariantName={variant} "
                + (f"{latency} " if latency else "") +
                f"({int(self.period)} s periods {utc(start):%H:%M:%S}-{utc(end):%H:%M:%S} UTC); scores from "
                f"Data Capture s3://{'/'.join(self.capture_prefix(variant))}")


def _inference_time(rec: dict) -> datetime:
    return parse_time(rec.get("eventMetadata", {}).get("inferenceTime", ""))
