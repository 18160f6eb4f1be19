"""Latency diagnosis from a cloud endpoint's own metrics (SageMaker, Azure ML, Vertex AI).

The platform's series are read per variant (SageMaker production variant, Azure deployment, Vertex
deployed model) into one shape, :class:`PlatformSeries`, one value per metric period, then
:func:`diagnose` (pure) says where the time goes (model, platform overhead), the likely cause among
model, payload size, cold start, saturation, under-provisioned scaling and a scaling policy too
slow for the burst, and the concrete change to make, like :func:`churnkit.monitor.latency.latency_breakdown`
does from the kit's own ``/metrics``.

Sources (each cloud's documented metrics):
- SageMaker: CloudWatch ``AWS/SageMaker`` ``ModelLatency`` / ``OverheadLatency`` (microseconds),
  ``Invocations``, ``Invocation4XXErrors`` / ``Invocation5XXErrors``; ``/aws/sagemaker/Endpoints``
  ``CPUUtilization`` / ``MemoryUtilization`` (percent x vCPUs); instance count from DescribeEndpoint,
  the policy from Application Auto Scaling.
  https://docs.aws.amazon.com/sagemaker/latest/dg/monitoring-cloudwatch.html
- Azure ML: Azure Monitor ``RequestLatency`` / ``RequestLatency_P99`` / ``RequestsPerMinute`` on the
  endpoint (dimension ``deployment``), ``CpuUtilizationPercentage`` / ``CpuMemoryUtilizationPercentage`` /
  ``DeploymentCapacity`` on each deployment, the autoscale setting.
  https://learn.microsoft.com/azure/machine-learning/monitor-azure-machine-learning-reference
- Vertex AI: Cloud Monitoring ``prediction/online/prediction_latencies`` (by ``latency_type``),
  ``prediction_count``, ``error_count``, ``replicas``, ``cpu/utilization``, ``memory/bytes_used``.
  https://cloud.google.com/monitoring/api/metrics_gcp_a_b#gcp-aiplatform
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field

import numpy as np

from churnkit.exceptions import MonitoringPermissionError, MonitorError

SATURATED_CPU = 80.0  # percent of the instance's CPUs
COLD_FACTOR = 5.0  # a period's worst latency this many times the typical one (and 100 ms more) = a cold start
PAYLOAD_OVERHEAD_SHARE = 0.6
TARGET_CPU = 60.0  # what a sized instance should run at
PERMISSIONS = {
    "sagemaker": ("cloudwatch:GetMetricData (and sagemaker:DescribeEndpoint, application-autoscaling:Describe*)",
                  "deployer_role_arn"),
    "azureml": ("Microsoft.Insights/metrics/read (the Monitoring Reader role)", "deployer_principal_id"),
    "vertex": ("monitoring.timeSeries.list (the roles/monitoring.viewer role)", "deployer_service_account"),
}



def permission_error(cloud: str, endpoint: str, exc) -> MonitoringPermissionError:
    perm, output = PERMISSIONS[cloud]
    return MonitoringPermissionError(
        f"reading the {cloud} metrics of endpoint {endpoint!r} was refused ({type(exc).__name__}: {str(exc)[:200]}); "
        f"the identity needs {perm}: use the deploy identity from the Terraform output `{output}` "
        "(templates/terraform), or grant that permission")


@dataclass
class PlatformSeries:
    """One variant's metrics, one value per period (None: no datapoint), as the platform reported them."""

    source: str
    period_s: int
    times: list[float] = field(default_factory=list)
    invocations: list[float] = field(default_factory=list)
    errors_4xx: list[float] = field(default_factory=list)
    errors_5xx: list[float] = field(default_factory=list)
    model_ms: list = field(default_factory=list)
    model_ms_max: list = field(default_factory=list)
    overhead_ms: list = field(default_factory=list)
    total_ms: list = field(default_factory=list)
    total_ms_max: list = field(default_factory=list)
    cpu_pct: list = field(default_factory=list)
    memory_pct: list = field(default_factory=list)
    instances: list = field(default_factory=list)
    scaling: dict | None = None  # {"min_instances", "max_instances", "metric", "target", "scale_out_cooldown"}

    def to_dict(self) -> dict:
        return asdict(self)

    def frame(self):
        """The series as a DataFrame indexed by period start (the notebook's chart)."""
        import pandas as pd

        cols = {k: v for k, v in asdict(self).items() if isinstance(v, list) and len(v) == len(self.times) and k != "times"}
        return pd.DataFrame(cols, index=pd.to_datetime(self.times, unit="s", utc=True)).astype(float)


def _vals(xs) -> np.ndarray:
    return np.array([x for x in xs if x is not None and not (isinstance(x, float) and math.isnan(x))], dtype=float)


def _weighted(values: list, weights: list) -> float | None:
    pairs = [(v, w) for v, w in zip(values, weights) if v is not None and w]
    if not pairs:
        v = _vals(values)
        return float(v.mean()) if len(v) else None
    return float(sum(v * w for v, w in pairs) / sum(w for _, w in pairs))


def _peak(xs) -> float | None:
    v = _vals(xs)
    return float(v.max()) if len(v) else None


def diagnose(s: PlatformSeries) -> dict:
    """Where the time goes and the likely cause, with the change to make.

    Returns ``requests``, ``error_rate``, ``breakdown_ms`` (model, overhead; ``total`` where only the
    platform total is known) and ``shares``, ``cpu_peak_pct``, ``instances`` (min/max seen),
    ``scaling``, ``likely_cause``, ``explanation`` and ``change``.
    """
    inv = [x or 0.0 for x in s.invocations]
    requests = float(sum(inv))
    errors = float(sum(x or 0.0 for x in s.errors_5xx))
    model = _weighted(s.model_ms, inv)
    over = _weighted(s.overhead_ms, inv)
    total = _weighted(s.total_ms, inv)
    if total is None and model is not None:
        total = model + (over or 0.0)
    parts = {"model": model, "overhead": over}
    known = {k: v for k, v in parts.items() if v is not None}
    whole = sum(known.values())
    shares = {k: (v / whole if whole > 0 else None) for k, v in known.items()}
    cpu_peak = _peak(s.cpu_pct)
    inst = _vals(s.instances)
    out = {"source": s.source, "requests": int(requests), "error_rate": errors / requests if requests else 0.0,
           "breakdown_ms": {**parts, "total": total}, "shares": shares, "cpu_peak_pct": cpu_peak,
           "memory_peak_pct": _peak(s.memory_pct),
           "instances": {"min": float(inst.min()) if len(inst) else None, "max": float(inst.max()) if len(inst) else None},
           "scaling": s.scaling}
    cause, why, change = _cause(s, out, inv)
    return out | {"likely_cause": cause, "explanation": why, "change": change}


def _per_instance_per_minute(s: PlatformSeries, inv: list[float]) -> float:
    """Peak invocations per instance per minute over the window."""
    best = 0.0
    for i, n in enumerate(inv):
        count = s.instances[i] if i < len(s.instances) and s.instances[i] else None
        count = count or (s.scaling or {}).get("current_instances") or 1
        best = max(best, n / count * 60.0 / s.period_s)
    return best


def _cold_start(s: PlatformSeries, inv: list[float]) -> tuple[int, float, float] | None:
    worst = s.model_ms_max if any(x is not None for x in s.model_ms_max) else s.total_ms_max
    typical_src = s.model_ms if any(x is not None for x in s.model_ms) else s.total_ms
    typical = _vals(typical_src)
    if not len(typical):
        return None
    base = float(np.median(typical))
    for i, w in enumerate(worst):
        if w is None or w < COLD_FACTOR * base or w - base < 100:
            continue
        grew = i > 0 and i < len(s.instances) and s.instances[i] and s.instances[i - 1] and s.instances[i] > s.instances[i - 1]
        idle_before = i > 0 and inv[i - 1] == 0
        if grew or idle_before or i == 0:
            return i, w, base
    return None


def _cause(s: PlatformSeries, out: dict, inv: list[float]) -> tuple[str, str, str]:
    if out["requests"] <= 0:
        return "unknown", "no invocations in the window", "send traffic (churnkit loadtest) or widen --since"
    cpu = out["cpu_peak_pct"]
    scaling = s.scaling or {}
    inst = out["instances"]
    lo, hi = scaling.get("min_instances"), scaling.get("max_instances")
    saturated = (cpu is not None and cpu >= SATURATED_CPU) or out["error_rate"] > 0.01
    if saturated:
        rate = _per_instance_per_minute(s, inv)
        held = rate * TARGET_CPU / max(cpu or SATURATED_CPU, 1.0)  # what one instance serves at the target CPU
        what = (f"CPU peaked at {cpu:.0f}%" if cpu is not None else "") + \
               (f", {out['error_rate']:.1%} of requests failed" if out["error_rate"] > 0.01 else "")
        if not scaling or lo == hi:
            need = max(math.ceil((inst["max"] or 1) * (cpu or 100.0) / TARGET_CPU), (inst["max"] or 1) + 1)
            return "saturation", (f"instances are saturated ({what.strip(', ')}) with no autoscaling to add more"), (
                f"register autoscaling: churnkit deploy ... --min-instances {int(inst['max'] or 1)} --max-instances {need} "
                f"--target-invocations-per-instance {max(int(held * 0.7), 1)}")
        if hi is not None and inst["max"] is not None and inst["max"] >= hi:
            need = max(math.ceil(hi * (cpu or 100.0) / TARGET_CPU), hi + 1)
            return "under-provisioned scaling", (f"the variant ran at its maximum of {hi} instances and was still "
                                                 f"saturated ({what.strip(', ')})"), (
                f"raise the maximum: --max-instances {need} (or a larger instance type)")
        target = scaling.get("target")
        cooldown = scaling.get("scale_out_cooldown")
        better = max(int((target or held) * 0.7), 1)
        return "scaling policy too slow", (
            f"instances saturated ({what.strip(', ')}) while the policy could still add instances "
            f"(ran {inst['min']:.0f}-{inst['max']:.0f} of {lo}-{hi}): the burst outran the scale-out"), (
            f"scale out earlier: --target-invocations-per-instance {better} (was {target})"
            + (f", --scale-out-cooldown 60 (was {cooldown})" if cooldown and cooldown > 60 else "")
            + f", and --min-instances {max(math.ceil((inst['max'] or 1) * (cpu or 100.0) / TARGET_CPU), lo or 1)} "
              "ahead of known bursts (--schedule)")
    cold = _cold_start(s, inv)
    if cold is not None:
        i, worst, base = cold
        when = time.strftime("%H:%M", time.gmtime(s.times[i])) if i < len(s.times) else "?"
        return "cold start", (f"the worst request at {when} UTC took {worst:.0f} ms against a typical {base:.1f} ms, "
                              "right after an idle period or a new instance: the container was loading"), (
            "keep warm capacity: --min-instances at the usual peak (or a --schedule before bursts); serve an exported "
            "model folder (its compiled scorer starts without sklearn) and send a warm-up request at start")
    shares = out["shares"]
    if shares.get("overhead") is not None and shares["overhead"] >= PAYLOAD_OVERHEAD_SHARE:
        over = out["breakdown_ms"]["overhead"]
        return "payload size", (f"the platform's overhead takes {over:.1f} ms ({shares['overhead']:.0%}) of each request "
                                "while the instances are not busy: moving and parsing the request and response "
                                "bodies costs more than the model"), (
            "send smaller batches, or the compact dataframe_split / text/csv body instead of records")
    if shares.get("model") is not None and shares["model"] >= 0.5:
        m = out["breakdown_ms"]["model"]
        return "model", (f"the model itself takes {m:.1f} ms ({shares['model']:.0%}) of each request at "
                         f"{cpu or 0:.0f}% CPU"), ("a lighter model (logreg) or fewer features, or a compute-optimised "
                                                   "instance type (e.g. ml.c5 / F-series / c2)")
    total = out["breakdown_ms"]["total"]
    return "model", (f"requests take {total or 0:.1f} ms on the platform at {cpu or 0:.0f}% CPU; the platform does not "
                     "split model from overhead here"), "profile the model with churnkit monitor --metrics-url on a copy"


# ---- SageMaker ----------------------------------------------------------------------------------------
SM_METRICS = [  # (field, namespace, metric, stat, scale)
    ("invocations", "AWS/SageMaker", "Invocations", "Sum", 1.0),
    ("errors_4xx", "AWS/SageMaker", "Invocation4XXErrors", "Sum", 1.0),
    ("errors_5xx", "AWS/SageMaker", "Invocation5XXErrors", "Sum", 1.0),
    ("model_ms", "AWS/SageMaker", "ModelLatency", "Average", 1e-3),  # microseconds
    ("model_ms_max", "AWS/SageMaker", "ModelLatency", "Maximum", 1e-3),
    ("overhead_ms", "AWS/SageMaker", "OverheadLatency", "Average", 1e-3),
    ("cpu_pct", "/aws/sagemaker/Endpoints", "CPUUtilization", "Average", 1.0),
    ("memory_pct", "/aws/sagemaker/Endpoints", "MemoryUtilization", "Average", 1.0),
]


#: CloudWatch keeps 1-minute datapoints 15 days, 5-minute ones 63 days and hourly ones 455 days; a query whose start
#: lies further back must use a period of that resolution or gets no datapoints (GetMetricStatistics and
#: MetricStat.Period in the CloudWatch API reference, the installed botocore model).
CLOUDWATCH_RETENTION = ((15 * 86400, 60), (63 * 86400, 300), (455 * 86400, 3600))


def cloudwatch_period(window_s: float, period: int = 60) -> int:
    """The period a window reaching ``window_s`` seconds back can be read at: ``period`` rounded up to what
    CloudWatch still keeps for its start (a multiple of it).

    Raises
    ------
    MonitorError
        A window that reaches past CloudWatch's 455 days.
    """
    for age, resolution in CLOUDWATCH_RETENTION:
        if window_s <= age:
            return max(resolution, -(-int(period) // resolution) * resolution)
    raise MonitorError(f"--since {window_s / 86400:g} days reaches past CloudWatch's retention of 455 days "
                       "(hourly datapoints); give --since 455d or less")


def read_sagemaker(endpoint: str, since: float, until: float | None = None, *, period: int = 60, session=None,
                   region: str | None = None) -> dict[str, PlatformSeries]:
    """Per-variant series of a SageMaker endpoint from CloudWatch, with instance counts and policies.

    Raises
    ------
    MonitoringPermissionError
        The identity may not read metrics (names the permission and the Terraform output).
    MonitorError
        The endpoint does not exist.
    """
    from datetime import UTC, datetime

    import boto3
    from botocore.exceptions import ClientError, NoCredentialsError

    from churnkit.deploy.autoscaling import sagemaker_status, vcpus
    from churnkit.exceptions import AutoscalingError

    from churnkit.deploy.reach import aws_config, is_unreachable, unreachable_error

    sess = session or boto3.Session(region_name=region)
    sm, cw = (sess.client(name, region_name=region, config=aws_config()) for name in ("sagemaker", "cloudwatch"))
    until = until or time.time()
    try:
        ep = sm.describe_endpoint(EndpointName=endpoint)
        cfg = sm.describe_endpoint_config(EndpointConfigName=ep["EndpointConfigName"])
        live = {v["VariantName"]: v for v in ep.get("ProductionVariants", [])}
        types = {v["VariantName"]: v.get("InstanceType", "") for v in cfg["ProductionVariants"]}
        queries = []
        for k, name in enumerate(live):
            dims = [{"Name": "EndpointName", "Value": endpoint}, {"Name": "VariantName", "Value": name}]
            for j, (_, ns, metric, stat, _) in enumerate(SM_METRICS):
                queries.append({"Id": f"v{k}m{j}", "ReturnData": True, "MetricStat": {
                    "Metric": {"Namespace": ns, "MetricName": metric, "Dimensions": dims}, "Period": period, "Stat": stat}})
        results = []
        for i in range(0, len(queries), 500):  # GetMetricData takes up to 500 queries
            kw = {"MetricDataQueries": queries[i:i + 500], "StartTime": datetime.fromtimestamp(since, UTC),
                  "EndTime": datetime.fromtimestamp(until, UTC), "ScanBy": "TimestampAscending"}
            while True:
                page = cw.get_metric_data(**kw)
                results += page["MetricDataResults"]
                if not page.get("NextToken"):
                    break
                kw["NextToken"] = page["NextToken"]
        try:
            scaling = sagemaker_status(sess.client("application-autoscaling", region_name=region, config=aws_config()),
                                       endpoint, live)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("AccessDeniedException", "AccessDenied"):
                raise
            scaling = {}
    except ClientError as exc:
        code = exc.response.get("Error", {}).get("Code", "")
        if code in ("AccessDeniedException", "AccessDenied", "UnauthorizedOperation"):
            raise permission_error("sagemaker", endpoint, exc) from exc
        if "could not find" in str(exc).lower():
            raise MonitorError(f"no SageMaker endpoint named {endpoint!r} in {sess.region_name}; "
                               "check --endpoint and AWS_REGION") from exc
        raise MonitorError(f"reading SageMaker metrics of {endpoint!r} failed: {exc}") from exc
    except NoCredentialsError as exc:
        raise permission_error("sagemaker", endpoint, exc) from exc
    except Exception as exc:
        if is_unreachable(exc):
            raise unreachable_error("AWS SageMaker/CloudWatch", f"region {sess.region_name!r}", exc) from exc
        raise
    by_id = {r["Id"]: r for r in results}
    out: dict[str, PlatformSeries] = {}
    for k, name in enumerate(live):
        grid: dict[float, dict] = {}
        for j, (fieldname, _, _, _, scale) in enumerate(SM_METRICS):
            r = by_id.get(f"v{k}m{j}", {})
            for ts, v in zip(r.get("Timestamps", []), r.get("Values", [])):
                grid.setdefault(ts.timestamp(), {})[fieldname] = v * scale
        try:
            cores = vcpus(types.get(name, ""))
        except AutoscalingError:  # an unknown type: show CloudWatch's sum over the cores as is
            cores = 1
        current = live[name].get("CurrentInstanceCount") or live[name].get("DesiredInstanceCount") or \
            next((v.get("InitialInstanceCount") for v in cfg["ProductionVariants"] if v["VariantName"] == name), None)
        s = PlatformSeries(f"CloudWatch AWS/SageMaker {endpoint}/{name}", period)
        for ts in sorted(grid):
            row = grid[ts]
            s.times.append(ts)
            s.invocations.append(row.get("invocations", 0.0))
            s.errors_4xx.append(row.get("errors_4xx", 0.0))
            s.errors_5xx.append(row.get("errors_5xx", 0.0))
            for f in ("model_ms", "model_ms_max", "overhead_ms", "memory_pct"):
                getattr(s, f).append(row.get(f))
            s.cpu_pct.append(row["cpu_pct"] / cores if row.get("cpu_pct") is not None else None)  # 100 % = all vCPUs
            s.instances.append(current)
            s.total_ms.append(None)
            s.total_ms_max.append(None)
        a = (scaling.get(name) or {}).get("autoscaling")
        if a:
            pol = (a.get("policies") or [{}])[0]
            s.scaling = {"min_instances": a["min_instances"], "max_instances": a["max_instances"],
                         "metric": pol.get("metric"), "target": pol.get("target"),
                         "scale_out_cooldown": pol.get("scale_out_cooldown"), "current_instances": current}
        out[name] = s
    return out


# ---- Azure ML --------------------------------------------------------------------------------------------
#: The endpoint's metrics (dimension ``deployment``) and the deployment's, by their REST names:
#: https://learn.microsoft.com/azure/azure-monitor/reference/supported-metrics/microsoft-machinelearningservices-workspaces-onlineendpoints-metrics
#: https://learn.microsoft.com/azure/azure-monitor/reference/supported-metrics/microsoft-machinelearningservices-workspaces-onlineendpoints-deployments-metrics
AZ_ENDPOINT_METRICS = ("RequestLatency", "RequestLatency_P99", "RequestsPerMinute")
AZ_DEPLOYMENT_METRICS = ("CpuUtilizationPercentage", "CpuMemoryUtilizationPercentage", "DeploymentCapacity")
def read_azureml(endpoint: str, since: float, until: float | None = None, *, client, workspace_id: str,
                 deployments: dict[str, str], resource_group: str, period: int = 60) -> dict[str, PlatformSeries]:
    """Per-deployment series of an Azure ML online endpoint from Azure Monitor (azure-mgmt-monitor ``client``).

    ``deployments`` maps variant -> deployment name.
    """
    from datetime import UTC, datetime, timedelta

    from azure.core.exceptions import ClientAuthenticationError, HttpResponseError

    from churnkit.deploy.autoscaling import azure_status

    until = until or time.time()
    span = f"{datetime.fromtimestamp(since, UTC).isoformat()}/{datetime.fromtimestamp(until, UTC).isoformat()}"
    ep_id = f"{workspace_id}/onlineEndpoints/{endpoint}"
    grain = timedelta(seconds=period)

    def series(resource: str, names: str, aggregation: str, flt: str | None = None) -> dict:
        resp = client.metrics.list(resource, timespan=span, interval=grain, metricnames=names, aggregation=aggregation,
                                   filter=flt)
        got: dict = {}
        for metric in resp.value:
            for ts in metric.timeseries:
                dep = next((m.value for m in (ts.metadatavalues or []) if m.name.value.lower() == "deployment"), "")
                for d in ts.data:
                    got.setdefault((metric.name.value, dep), {})[d.time_stamp.timestamp()] = d
        return got

    try:
        ep = series(ep_id, ",".join(AZ_ENDPOINT_METRICS), "Average,Maximum", "deployment eq '*'")
        scaling = azure_status(client, resource_group, endpoint, deployments)
        out: dict[str, PlatformSeries] = {}
        for variant, dep in deployments.items():
            dp = series(f"{ep_id}/deployments/{dep}", ",".join(AZ_DEPLOYMENT_METRICS), "Average,Maximum")
            lat, p99, rpm = (ep.get((n, dep), {}) for n in AZ_ENDPOINT_METRICS)
            cpu, mem, cap = (dp.get((n, ""), {}) for n in AZ_DEPLOYMENT_METRICS)
            s = PlatformSeries(f"Azure Monitor {endpoint}/{dep}", period)
            for t in sorted(set(lat) | set(rpm) | set(cpu)):
                s.times.append(t)
                # RequestsPerMinute's documented aggregation is Average: the mean requests per minute of the grain
                s.invocations.append((rpm[t].average if t in rpm and rpm[t].average is not None else 0.0) * period / 60.0)
                s.errors_4xx.append(0.0)
                s.errors_5xx.append(0.0)
                s.total_ms.append(lat[t].average if t in lat else None)
                s.total_ms_max.append((p99[t].average if t in p99 else None) or (lat[t].maximum if t in lat else None))
                s.model_ms.append(None)
                s.model_ms_max.append(None)
                s.overhead_ms.append(None)
                s.cpu_pct.append(cpu[t].average if t in cpu else None)
                s.memory_pct.append(mem[t].average if t in mem else None)
                s.instances.append(cap[t].average if t in cap else None)
            a = (scaling.get(variant) or {}).get("autoscaling")
            if a:
                rule = (a.get("rules") or [{}])[0]
                s.scaling = {"min_instances": a["min_instances"], "max_instances": a["max_instances"],
                             "metric": rule.get("metric"), "target": rule.get("threshold"), "scale_out_cooldown": None}
            out[variant] = s
        return out
    except ClientAuthenticationError as exc:
        raise permission_error("azureml", endpoint, exc) from exc
    except HttpResponseError as exc:
        if exc.status_code in (401, 403):
            raise permission_error("azureml", endpoint, exc) from exc
        raise MonitorError(f"reading Azure Monitor metrics of endpoint {endpoint!r} failed: {exc.message}") from exc


# ---- Vertex AI ----------------------------------------------------------------------------------------------
VX = "aiplatform.googleapis.com/prediction/online/"
VX_CPU_SCALE = 100.0  # cpu/utilization is a fraction (unit 10^2.%); the kit reports percent


def read_vertex(endpoint_id: str, since: float, until: float | None = None, *, client, project: str,
                deployed: dict[str, str], period: int = 60) -> dict[str, PlatformSeries]:
    """Per-deployed-model series of a Vertex AI endpoint from Cloud Monitoring (``MetricServiceClient``).

    ``deployed`` maps deployed-model id -> variant (display name).
    """
    from google.api_core import exceptions as gexc
    from google.cloud import monitoring_v3

    until = until or time.time()
    interval = monitoring_v3.TimeInterval({"start_time": {"seconds": int(since)}, "end_time": {"seconds": int(until)}})

    def read(metric: str) -> list:
        flt = f'metric.type = "{VX}{metric}" AND resource.labels.endpoint_id = "{endpoint_id}"'
        return list(client.list_time_series(request={
            "name": f"projects/{project}", "filter": flt, "interval": interval,
            "view": monitoring_v3.ListTimeSeriesRequest.TimeSeriesView.FULL}))

    def value(point) -> float:
        v = point.value
        which = type(v).pb(v).WhichOneof("value")
        if which == "distribution_value":
            return float(v.distribution_value.mean)
        return float(getattr(v, which))

    grid: dict[str, dict[float, dict]] = {}
    try:
        for metric, key in (("prediction_latencies", None), ("prediction_count", "invocations"),
                            ("error_count", "errors_5xx"), ("replicas", "instances"), ("cpu/utilization", "cpu_pct")):
            for ts in read(metric):
                dm = ts.resource.labels.get("deployed_model_id") or ts.metric.labels.get("deployed_model_id", "")
                name = deployed.get(dm, dm)
                kind = ts.metric.labels.get("latency_type", "")
                fieldname = key or {"model": "model_ms", "overhead": "overhead_ms"}.get(kind, "total_ms")
                for p in ts.points:
                    t = p.interval.end_time.timestamp() if hasattr(p.interval.end_time, "timestamp") else float(p.interval.end_time.seconds)
                    row = grid.setdefault(name, {}).setdefault(t, {})
                    v = value(p)
                    row[fieldname] = row.get(fieldname, 0.0) + v if fieldname in ("invocations", "errors_5xx") else v
                    if fieldname == "model_ms":
                        row["model_ms_max"] = max(row.get("model_ms_max", 0.0), v)
    except (gexc.PermissionDenied, gexc.Unauthenticated) as exc:
        raise permission_error("vertex", endpoint_id, exc) from exc
    except gexc.GoogleAPICallError as exc:
        raise MonitorError(f"reading Cloud Monitoring metrics of endpoint {endpoint_id!r} failed: {exc}") from exc
    out: dict[str, PlatformSeries] = {}
    for name, rows in grid.items():
        # latency_type "model"/"overhead" exist only for custom-trained and AutoML tabular models; "total" always
        total_only = not any(r.get("model_ms") is not None for r in rows.values())
        s = PlatformSeries(f"Cloud Monitoring {VX}* endpoint {endpoint_id}/{name}"
                           + (" (latency_type total only: no model/overhead split)" if total_only else ""), period)
        for t in sorted(rows):
            r = rows[t]
            s.times.append(t)
            s.invocations.append(r.get("invocations", 0.0))
            s.errors_4xx.append(0.0)
            s.errors_5xx.append(r.get("errors_5xx", 0.0))
            for f in ("model_ms", "model_ms_max", "overhead_ms", "total_ms", "instances"):
                getattr(s, f).append(r.get(f))
            s.total_ms_max.append(None)
            cpu = r.get("cpu_pct")
            # unit 10^2.%: 1.0 is 100 % of the replica's CPUs, above 1.0 on a machine with several
            # (https://cloud.google.com/monitoring/api/metrics_gcp_a_b#gcp-aiplatform, cpu/utilization)
            s.cpu_pct.append(cpu * VX_CPU_SCALE if cpu is not None else None)
            s.memory_pct.append(None)
        out[name] = s
    return out


# ---- the entry point -------------------------------------------------------------------------------------------
def parse_since(text: str | float) -> float:
    """Seconds from ``"90s"``, ``"15m"``, ``"1h"``, ``"2d"`` (or a number of seconds)."""
    if isinstance(text, int | float):
        return float(text)
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    t = str(text).strip().lower()
    try:
        return float(t[:-1]) * units[t[-1]] if t and t[-1] in units else float(t)
    except (ValueError, KeyError):
        raise MonitorError(f"--since {text!r} is not a duration like 30m, 1h or 2d") from None


def cloud_latency(target: str, endpoint: str, since: str | float = "1h", *, config=None, period: int = 60,
                  **sdk) -> dict:
    """Read ``target``'s metrics for ``endpoint`` over the last ``since`` and diagnose each variant.

    Returns ``{"target", "endpoint", "since_s", "variants": {name: diagnosis}, "series": {name: PlatformSeries}}``.
    ``sdk`` passes clients/sessions through (tests: ``session=`` for AWS, ``client=`` for Azure/GCP).
    """
    window = parse_since(since)
    start = time.time() - window
    if target == "sagemaker":
        series = read_sagemaker(endpoint, start, period=cloudwatch_period(window, period), **sdk)
    elif target in ("azureml", "vertex"):
        from churnkit.deploy import open_target

        t = open_target(target, endpoint, config=config)
        state = t.describe()
        if not state.exists:
            raise MonitorError(f"no {target} endpoint named {endpoint!r}; check --endpoint")
        if target == "azureml":
            from churnkit.deploy.autoscaling import azure_workspace_id

            client = sdk.get("client") or t.monitor
            series = read_azureml(endpoint, start, client=client, workspace_id=azure_workspace_id(t),
                                  deployments=state.details["deployments"], resource_group=t.settings["resource_group"],
                                  period=period)
        else:
            from google.cloud import monitoring_v3

            client = sdk.get("client") or monitoring_v3.MetricServiceClient(credentials=t._scope["credentials"])
            ids = state.details["deployed_model_ids"]
            series = read_vertex(state.details["resource_name"].rsplit("/", 1)[-1], start, client=client,
                                 project=t.settings["project"], deployed={i: n for n, i in ids.items()}, period=period)
    else:
        raise MonitorError(f"--latency --target {target!r}: the cloud diagnosis reads sagemaker, azureml or vertex; "
                           "for a churnkit server use --metrics-url")
    return {"target": target, "endpoint": endpoint, "since_s": window,
            "variants": {n: diagnose(s) for n, s in series.items()}, "series": series}


def summary(report: dict) -> str:
    lines = [f"{report['target']} endpoint {report['endpoint']!r}, last {report['since_s'] / 60:g} min:"]
    for name, d in report["variants"].items():
        b = d["breakdown_ms"]

        def ms(v):
            return "n/a" if v is None else f"{v:.1f} ms"

        lines += [f"  {name}: {d['requests']} requests, error rate {d['error_rate']:.1%}, model {ms(b['model'])}, "
                  f"overhead {ms(b['overhead'])}, total {ms(b['total'])}, CPU peak "
                  + ("n/a" if d["cpu_peak_pct"] is None else f"{d['cpu_peak_pct']:.0f}%"),
                  f"    likely cause: {d['likely_cause']}: {d['explanation']}",
                  f"    change: {d['change']}"]
    return "\n".join(lines)


def plot_cloud_latency(report: dict):
    """The platform's series per variant (latency split, requests, CPU, instances) with the verdict; a Figure."""
    import matplotlib.pyplot as plt

    names = list(report["series"])
    fig, axes = plt.subplots(len(names) or 1, 2, figsize=(12, 3.2 * max(len(names), 1)), squeeze=False)
    for row, name in zip(axes, names):
        frame = report["series"][name].frame()
        d = report["variants"][name]
        lat = [c for c in ("model_ms", "overhead_ms", "total_ms", "model_ms_max") if c in frame and frame[c].notna().any()]
        frame[lat].plot(ax=row[0], marker=".")
        row[0].set_ylabel("ms")
        row[0].set_title(f"{name}: {d['likely_cause']}", loc="left", fontsize=10)
        load = [c for c in ("invocations", "cpu_pct", "instances") if c in frame and frame[c].notna().any()]
        frame[load].plot(ax=row[1], secondary_y=[c for c in load if c == "instances"], marker=".")
        row[1].set_title(d["change"][:110], loc="left", fontsize=8)
    fig.suptitle(f"{report['target']} endpoint {report['endpoint']!r}: latency from the platform's metrics")
    fig.tight_layout()
    return fig
