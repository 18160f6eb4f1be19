"""Autoscaling of a deployed variant on each cloud, from one policy.

An :class:`AutoscalingPolicy` (min/max instances, one target: invocations per instance per minute
or CPU percent, scale-in/out cooldowns, scheduled capacity) is validated against the limits each
cloud documents, then rendered in the cloud API's own field names:

- SageMaker: Application Auto Scaling ``RegisterScalableTarget`` on
  ``sagemaker:variant:DesiredInstanceCount`` (resource ``endpoint/<name>/variant/<variant>``), a
  target-tracking ``PutScalingPolicy`` on ``SageMakerVariantInvocationsPerInstance`` (or the variant's
  ``CPUUtilization``), ``PutScheduledAction`` for scheduled capacity; ``DeregisterScalableTarget``
  before the variant is removed (SageMaker refuses to delete a variant that is still registered).
- Azure ML: an Azure Monitor autoscale setting on the online deployment (``Microsoft.Insights/
  autoscalesettings``): a default profile with scale-out/in rules on the deployment's
  ``CpuUtilizationPercentage`` or the endpoint's ``RequestsPerMinute`` per instance, plus one
  recurring profile per schedule; deleted before the deployment is.
- Vertex AI: ``dedicated_resources`` ``min_replica_count``/``max_replica_count`` and
  ``autoscaling_metric_specs`` on ``DeployModel`` (Vertex keeps them with the deployed model; there
  is nothing to remove separately, and Vertex has neither cooldowns nor scheduled scaling).

SDKs are imported lazily, inside the functions that send requests.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from typing import Any

from churnkit.exceptions import AutoscalingError

SAGEMAKER_NAMESPACE = "sagemaker"
SAGEMAKER_DIMENSION = "sagemaker:variant:DesiredInstanceCount"
SAGEMAKER_INVOCATIONS = "SageMakerVariantInvocationsPerInstance"
#: Seconds. Application Auto Scaling takes a non-negative integer; above a day is refused as a typo.
#: https://docs.aws.amazon.com/autoscaling/application/APIReference/API_TargetTrackingScalingPolicyConfiguration.html
COOLDOWN_RANGE = {"sagemaker": (0, 86_400), "azureml": (60, 604_800)}  # Azure: PT1M to P7D (ScaleAction.cooldown)
#: SageMaker's defaults for endpoint variants (300 s both ways); Azure's portal default (5 minutes).
DEFAULT_COOLDOWN = {"sagemaker": (300, 300), "azureml": (300, 300)}
VERTEX_CPU_METRIC = "aiplatform.googleapis.com/prediction/online/cpu/utilization"
VERTEX_REQUESTS_METRIC = "aiplatform.googleapis.com/prediction/online/request_count"
AZURE_SCALE_IN_RATIO = 0.7  # scale in below 70 % of the target: a band so the two rules never flap
CLOUDS = ("sagemaker", "azureml", "vertex")
_DAYS = ("MON", "TUE", "WED", "THU", "FRI", "SAT", "SUN")
_AZURE_DAYS = {"MON": "Monday", "TUE": "Tuesday", "WED": "Wednesday", "THU": "Thursday", "FRI": "Friday",
               "SAT": "Saturday", "SUN": "Sunday"}


#: vCPUs of SageMaker instance types the kit is sized for (https://aws.amazon.com/sagemaker/pricing/ instance
#: tables); other types follow EC2's size names: large 2, xlarge 4, Nxlarge 4N (https://aws.amazon.com/ec2/instance-types/).
VCPUS = {"ml.t2.medium": 2, "ml.t2.large": 2, "ml.t2.xlarge": 4, "ml.t3.medium": 2, "ml.t3.large": 2, "ml.m5.large": 2,
         "ml.m5.xlarge": 4, "ml.m5.2xlarge": 8, "ml.m5.4xlarge": 16, "ml.c5.large": 2, "ml.c5.xlarge": 4,
         "ml.c5.2xlarge": 8, "ml.c5.4xlarge": 16, "ml.m6i.large": 2, "ml.m6i.xlarge": 4, "ml.c6i.large": 2,
         "ml.c6i.xlarge": 4, "ml.g4dn.xlarge": 4}


def vcpus(instance_type: str) -> int:
    """The vCPU count of a SageMaker ``instance_type`` (``ml.<family>.<size>``).

    Raises
    ------
    AutoscalingError
        A type whose size is not ``medium``, ``large`` or ``[N]xlarge``.
    """
    if instance_type in VCPUS:
        return VCPUS[instance_type]
    m = re.fullmatch(r"ml\.[a-z0-9-]+\.(?:(medium|large)|(\d*)xlarge)", instance_type or "")
    if not m:
        raise AutoscalingError(f"instance type {instance_type!r} is not a SageMaker type like 'ml.m5.xlarge', so its vCPU "
                               "count (which scales --target-cpu) is unknown; pass --instance-type ml.<family>.<size>")
    return 2 if m.group(1) else 4 * int(m.group(2) or 1)


@dataclass(frozen=True)
class ScheduledCapacity:
    """Capacity bounds from a time of day on some days (UTC), e.g. a campaign's working hours.

    Written on the command line as ``"MON-FRI 08:00 4-10"`` (days, start time, min-max).
    """

    days: tuple[str, ...]
    hour: int
    minute: int
    min_instances: int
    max_instances: int

    @classmethod
    def parse(cls, text: str) -> ScheduledCapacity:
        m = re.fullmatch(r"\s*([A-Za-z,-]+)\s+(\d{1,2}):(\d{2})\s+(\d+)-(\d+)\s*", text or "")
        if not m:
            raise AutoscalingError(f"schedule {text!r} is not 'DAYS HH:MM MIN-MAX'; e.g. 'MON-FRI 08:00 4-10'")
        days, hour, minute, lo, hi = m.groups()
        return cls(_parse_days(days), int(hour), int(minute), int(lo), int(hi))

    @property
    def name(self) -> str:
        return f"{'-'.join(self.days).lower()}-{self.hour:02d}{self.minute:02d}"

    def aws_cron(self) -> str:
        return f"cron({self.minute} {self.hour} ? * {','.join(self.days)} *)"

    def __str__(self) -> str:
        return f"{','.join(self.days)} {self.hour:02d}:{self.minute:02d} {self.min_instances}-{self.max_instances}"


def _parse_days(text: str) -> tuple[str, ...]:
    out: list[str] = []
    for part in text.upper().split(","):
        a, _, b = part.partition("-")
        if a not in _DAYS or (b and b not in _DAYS):
            raise AutoscalingError(f"days {text!r} are not like MON-FRI or SAT,SUN; use {', '.join(_DAYS)}")
        i, j = _DAYS.index(a), _DAYS.index(b or a)
        out += [_DAYS[k % 7] for k in range(i, (j if j >= i else j + 7) + 1)]
    return tuple(dict.fromkeys(out))


@dataclass(frozen=True)
class AutoscalingPolicy:
    """How many instances a variant may run and what makes it scale.

    Parameters
    ----------
    min_instances, max_instances : int
        Bounds of the instance (replica) count.
    target_invocations_per_instance : float, optional
        Requests per instance per minute to hold (SageMaker's ``SageMakerVariantInvocationsPerInstance``;
        ``churnkit loadtest --ramp`` prints the value for a p99 objective).
    target_cpu : float, optional
        CPU utilization percent to hold instead.
    scale_in_cooldown, scale_out_cooldown : int, optional
        Seconds between scaling activities (None: the cloud's default).
    schedules : tuple of ScheduledCapacity
        Capacity bounds by time of day (SageMaker scheduled actions, Azure recurring profiles).
    """

    min_instances: int = 1
    max_instances: int = 1
    target_invocations_per_instance: float | None = None
    target_cpu: float | None = None
    scale_in_cooldown: int | None = None
    scale_out_cooldown: int | None = None
    schedules: tuple[ScheduledCapacity, ...] = field(default_factory=tuple)

    def validate(self, cloud: str) -> AutoscalingPolicy:
        """Check the policy against ``cloud``'s documented limits; returns itself.

        Raises
        ------
        AutoscalingError
            Naming the field, the offending value and the limit.
        """
        if cloud not in CLOUDS:
            raise AutoscalingError(
                f"the {cloud!r} target has no autoscaling: it runs one process per variant on this machine; "
                f"drop --min-instances/--max-instances/--target-* (autoscaling works on {', '.join(CLOUDS)})")
        _count("min_instances", self.min_instances, 1)
        _count("max_instances", self.max_instances, 1)
        if self.max_instances < self.min_instances:
            raise AutoscalingError(f"max_instances {self.max_instances} is below min_instances {self.min_instances}; "
                                   "raise --max-instances or lower --min-instances")
        targets = [t for t in (self.target_invocations_per_instance, self.target_cpu) if t is not None]
        if len(targets) > 1:
            raise AutoscalingError("give one scaling target: --target-invocations-per-instance or --target-cpu, not both")
        if not targets and self.max_instances > self.min_instances:
            raise AutoscalingError(
                f"instances may range {self.min_instances}-{self.max_instances} but no target says when to scale; "
                "add --target-invocations-per-instance N (churnkit loadtest --ramp prints one) or --target-cpu PERCENT")
        for name in ("target_invocations_per_instance", "target_cpu"):
            value = getattr(self, name)
            if value is not None and not (isinstance(value, int | float) and value > 0):
                raise AutoscalingError(f"{name} {value!r} must be a number above 0")
        if self.target_cpu is not None and self.target_cpu > 100:
            raise AutoscalingError(f"target_cpu {self.target_cpu!r} is a percentage: give a value from 1 to 100")
        for name in ("scale_in_cooldown", "scale_out_cooldown"):
            value = getattr(self, name)
            if value is None:
                continue
            if cloud == "vertex":
                raise AutoscalingError(
                    f"{name} {value!r}: Vertex AI has no cooldown setting (it scales on its own windows); "
                    "drop --scale-in-cooldown/--scale-out-cooldown for --target vertex")
            lo, hi = COOLDOWN_RANGE[cloud]
            if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
                raise AutoscalingError(f"{name} {value!r} is outside {cloud}'s range of {lo} to {hi} seconds")
        if self.schedules and cloud == "vertex":
            raise AutoscalingError("Vertex AI has no scheduled scaling; drop --schedule for --target vertex")
        for s in self.schedules:
            if not (0 <= s.hour <= 23 and 0 <= s.minute <= 59):
                raise AutoscalingError(f"schedule {str(s)!r}: the time must be HH:MM from 00:00 to 23:59")
            if not 1 <= s.min_instances <= s.max_instances:
                raise AutoscalingError(f"schedule {str(s)!r}: need 1 <= min <= max instances")
        return self

    def cooldowns(self, cloud: str) -> tuple[int, int]:
        """(scale in, scale out) seconds, the cloud's defaults where unset."""
        d_in, d_out = DEFAULT_COOLDOWN[cloud]
        return (d_in if self.scale_in_cooldown is None else self.scale_in_cooldown,
                d_out if self.scale_out_cooldown is None else self.scale_out_cooldown)

    def to_dict(self) -> dict:
        out = asdict(self)
        out["schedules"] = [str(s) for s in self.schedules]
        return out

    def summary(self) -> str:
        target = (f"{self.target_invocations_per_instance:g} invocations/instance/min"
                  if self.target_invocations_per_instance is not None
                  else f"{self.target_cpu:g}% CPU" if self.target_cpu is not None else "no target")
        return f"{self.min_instances}-{self.max_instances} instances, {target}"


def _count(name: str, value, least: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < least:
        raise AutoscalingError(f"{name} {value!r} must be a whole number of at least {least}")


def policy_for(cloud: str, *, min_instances: int | None = None, max_instances: int | None = None,
               target_invocations_per_instance: float | None = None, target_cpu: float | None = None,
               scale_in_cooldown: int | None = None, scale_out_cooldown: int | None = None,
               schedules=()) -> AutoscalingPolicy | None:
    """The validated policy from command-line style options, or None when none was given."""
    given = [min_instances, max_instances, target_invocations_per_instance, target_cpu, scale_in_cooldown,
             scale_out_cooldown]
    if all(v is None for v in given) and not schedules:
        return None
    lo = 1 if min_instances is None else min_instances
    policy = AutoscalingPolicy(
        min_instances=lo, max_instances=lo if max_instances is None else max_instances,
        target_invocations_per_instance=target_invocations_per_instance, target_cpu=target_cpu,
        scale_in_cooldown=scale_in_cooldown, scale_out_cooldown=scale_out_cooldown,
        schedules=tuple(s if isinstance(s, ScheduledCapacity) else ScheduledCapacity.parse(s) for s in schedules))
    return policy.validate(cloud)


# ---- SageMaker: Application Auto Scaling ------------------------------------------------------------
def sagemaker_resource_id(endpoint: str, variant: str) -> str:
    return f"endpoint/{endpoint}/variant/{variant}"


def sagemaker_policy_name(endpoint: str, variant: str) -> str:
    return f"{endpoint}-{variant}-target-tracking"


def sagemaker_requests(policy: AutoscalingPolicy, endpoint: str, variant: str, instance_type: str | None = None) -> list[dict]:
    """RegisterScalableTarget, PutScalingPolicy and PutScheduledAction requests for one variant.

    A CPU target is a percent of the whole instance (as on Azure ML and Vertex AI); SageMaker's
    ``CPUUtilization`` sums its cores (0 to 100 x vCPUs, monitoring-cloudwatch.html), so the target value sent
    is ``target_cpu`` x the vCPUs of ``instance_type`` (required then).
    """
    from churnkit.deploy.base import request

    rid = sagemaker_resource_id(endpoint, variant)
    key = {"ServiceNamespace": SAGEMAKER_NAMESPACE, "ResourceId": rid, "ScalableDimension": SAGEMAKER_DIMENSION}
    reqs = [request("application-autoscaling", "RegisterScalableTarget",
                    {**key, "MinCapacity": policy.min_instances, "MaxCapacity": policy.max_instances})]
    scale_in, scale_out = policy.cooldowns("sagemaker")
    if policy.target_invocations_per_instance is not None or policy.target_cpu is not None:
        config: dict[str, Any] = {"ScaleInCooldown": scale_in, "ScaleOutCooldown": scale_out}
        if policy.target_invocations_per_instance is not None:
            config["TargetValue"] = float(policy.target_invocations_per_instance)
            config["PredefinedMetricSpecification"] = {"PredefinedMetricType": SAGEMAKER_INVOCATIONS}
        else:  # the instance CPU in the endpoint's own namespace: 0-100 % per core, summed over the vCPUs
            if not instance_type:
                raise AutoscalingError(f"target_cpu {policy.target_cpu!r} on SageMaker needs the variant's instance type "
                                       "(CPUUtilization runs to 100 x its vCPUs); pass instance_type")
            config["TargetValue"] = float(policy.target_cpu) * vcpus(instance_type)
            config["CustomizedMetricSpecification"] = {
                "MetricName": "CPUUtilization", "Namespace": "/aws/sagemaker/Endpoints", "Statistic": "Average",
                "Dimensions": [{"Name": "EndpointName", "Value": endpoint}, {"Name": "VariantName", "Value": variant}],
                "Unit": "Percent"}
        reqs.append(request("application-autoscaling", "PutScalingPolicy", {
            "PolicyName": sagemaker_policy_name(endpoint, variant), "PolicyType": "TargetTrackingScaling", **key,
            "TargetTrackingScalingPolicyConfiguration": config}))
    for s in policy.schedules:
        reqs.append(request("application-autoscaling", "PutScheduledAction", {
            "ScheduledActionName": f"{endpoint}-{variant}-{s.name}", **key, "Schedule": s.aws_cron(),
            "ScalableTargetAction": {"MinCapacity": s.min_instances, "MaxCapacity": s.max_instances}}))
    return reqs


def sagemaker_deregister_request(endpoint: str, variant: str) -> dict:
    """DeregisterScalableTarget (deletes the variant's policies and scheduled actions with it)."""
    from churnkit.deploy.base import request

    return request("application-autoscaling", "DeregisterScalableTarget", {
        "ServiceNamespace": SAGEMAKER_NAMESPACE, "ResourceId": sagemaker_resource_id(endpoint, variant),
        "ScalableDimension": SAGEMAKER_DIMENSION})


def not_registered(exc) -> bool:
    """True when a botocore error says the variant has no scalable target (AWS: ObjectNotFoundException)."""
    code = getattr(exc, "response", {}).get("Error", {}).get("Code", "")
    return code == "ObjectNotFoundException" or "no scalable target found" in str(exc).lower()


def sagemaker_status(client, endpoint: str, variants: dict[str, dict]) -> dict[str, dict]:
    """Live policy and instance counts per variant: ``{variant: {min, max, desired, current, policies, ...}}``.

    ``client`` is the application-autoscaling boto3 client; ``variants`` the endpoint's
    ``ProductionVariants`` from DescribeEndpoint (``CurrentInstanceCount``, ``DesiredInstanceCount``).
    """
    ids = {sagemaker_resource_id(endpoint, v): v for v in variants}
    targets = client.describe_scalable_targets(ServiceNamespace=SAGEMAKER_NAMESPACE, ResourceIds=list(ids))
    policies = client.describe_scaling_policies(ServiceNamespace=SAGEMAKER_NAMESPACE)
    actions = client.describe_scheduled_actions(ServiceNamespace=SAGEMAKER_NAMESPACE)
    out: dict[str, dict] = {}
    for name, live in variants.items():
        out[name] = {"current_instances": live.get("CurrentInstanceCount"),
                     "desired_instances": live.get("DesiredInstanceCount"), "autoscaling": None}
    for t in targets.get("ScalableTargets", []):
        name = ids.get(t["ResourceId"])
        if name is None:
            continue
        own = [p for p in policies.get("ScalingPolicies", []) if p["ResourceId"] == t["ResourceId"]]
        out[name]["autoscaling"] = {
            "min_instances": t["MinCapacity"], "max_instances": t["MaxCapacity"],
            "policies": [{"name": p["PolicyName"], "type": p["PolicyType"],
                          **_tracking(p.get("TargetTrackingScalingPolicyConfiguration") or {})} for p in own],
            "schedules": [{"name": a["ScheduledActionName"], "schedule": a.get("Schedule"),
                           **{k: v for k, v in (a.get("ScalableTargetAction") or {}).items()}}
                          for a in actions.get("ScheduledActions", []) if a["ResourceId"] == t["ResourceId"]]}
    return out


def _tracking(config: dict) -> dict:
    metric = (config.get("PredefinedMetricSpecification") or {}).get("PredefinedMetricType") or \
        (config.get("CustomizedMetricSpecification") or {}).get("MetricName")
    return {"metric": metric, "target": config.get("TargetValue"), "scale_in_cooldown": config.get("ScaleInCooldown"),
            "scale_out_cooldown": config.get("ScaleOutCooldown")}


# ---- Azure ML: Azure Monitor autoscale settings -------------------------------------------------------
def azure_setting_name(endpoint: str, deployment: str) -> str:
    return f"{endpoint}-{deployment}-autoscale"


def _iso_minutes(seconds: int) -> str:
    minutes, rest = divmod(int(seconds), 60)
    return f"PT{minutes}M" if not rest else f"PT{seconds}S"


def azure_setting(policy: AutoscalingPolicy, *, workspace_id: str, endpoint: str, deployment: str,
                  location: str) -> dict:
    """The autoscale setting's ARM body (``Microsoft.Insights/autoscalesettings``) for one deployment.

    Shaped as https://learn.microsoft.com/rest/api/monitor/autoscale-settings/create-or-update documents.
    """
    endpoint_id = f"{workspace_id}/onlineEndpoints/{endpoint}"
    deployment_id = f"{endpoint_id}/deployments/{deployment}"
    scale_in, scale_out = policy.cooldowns("azureml")
    if policy.target_cpu is not None:
        metric = {"metricName": "CpuUtilizationPercentage", "metricResourceUri": deployment_id,
                  "metricNamespace": "Microsoft.MachineLearningServices/workspaces/onlineEndpoints/deployments"}
        target = float(policy.target_cpu)
    else:  # requests per minute on the endpoint, for this deployment, divided by its instances
        metric = {"metricName": "RequestsPerMinute", "metricResourceUri": endpoint_id,
                  "metricNamespace": "Microsoft.MachineLearningServices/workspaces/onlineEndpoints",
                  "dimensions": [{"DimensionName": "deployment", "Operator": "Equals", "Values": [deployment]}],
                  "dividePerInstance": True}
        target = float(policy.target_invocations_per_instance or 0.0)

    def rule(direction: str, threshold: float, cooldown: int) -> dict:
        return {"metricTrigger": {**metric, "timeGrain": "PT1M", "statistic": "Average", "timeWindow": "PT5M",
                                  "timeAggregation": "Average",
                                  "operator": "GreaterThan" if direction == "Increase" else "LessThan",
                                  "threshold": threshold},
                "scaleAction": {"direction": direction, "type": "ChangeCount", "value": "1",
                                "cooldown": _iso_minutes(cooldown)}}

    def profile(name: str, lo: int, hi: int, recurrence: dict | None = None) -> dict:
        rules = [rule("Increase", target, scale_out), rule("Decrease", round(target * AZURE_SCALE_IN_RATIO, 3), scale_in)] \
            if target > 0 else []
        out = {"name": name, "capacity": {"minimum": str(lo), "maximum": str(hi), "default": str(lo)}, "rules": rules}
        if recurrence:
            out["recurrence"] = recurrence
        return out

    profiles = [profile("default", policy.min_instances, policy.max_instances)]
    for s in policy.schedules:
        profiles.append(profile(s.name, s.min_instances, s.max_instances, {
            "frequency": "Week", "schedule": {"timeZone": "UTC", "days": [_AZURE_DAYS[d] for d in s.days],
                                              "hours": [s.hour], "minutes": [s.minute]}}))
    return {"location": location, "tags": {"churnkit:endpoint": endpoint},
            "properties": {"name": azure_setting_name(endpoint, deployment), "enabled": True,
                           "targetResourceUri": deployment_id, "profiles": profiles}}


def monitor_client(credential, subscription_id: str, **kwargs):
    """azure-mgmt-monitor's ``MonitorManagementClient`` (``kwargs`` go to the pipeline, e.g. ``transport=``)."""
    try:
        from azure.mgmt.monitor import MonitorManagementClient
    except ImportError as exc:
        from churnkit.exceptions import MissingExtraError

        raise MissingExtraError("azure", "azure-mgmt-monitor") from exc
    return MonitorManagementClient(credential, subscription_id, **kwargs)


def azure_apply(client, resource_group: str, name: str, body: dict):
    """Create or replace the autoscale setting ``name`` from its ARM body."""
    from azure.mgmt.monitor.models import AutoscaleSettingResource

    return client.autoscale_settings.create_or_update(resource_group, name, AutoscaleSettingResource.deserialize(body))


def azure_delete(client, resource_group: str, name: str) -> bool:
    """Delete the autoscale setting ``name`` if it exists (read first: a deployment without one sends no
    DELETE); False when there was none."""
    from azure.core.exceptions import ResourceNotFoundError

    try:
        client.autoscale_settings.get(resource_group, name)
    except ResourceNotFoundError:
        return False
    client.autoscale_settings.delete(resource_group, name)
    return True


def azure_status(client, resource_group: str, endpoint: str, deployments: dict[str, str]) -> dict[str, dict]:
    """``{variant: {"autoscaling": {...} | None}}`` read from the deployments' autoscale settings."""
    from azure.core.exceptions import ResourceNotFoundError

    out: dict[str, dict] = {}
    for variant, deployment in deployments.items():
        try:
            s = client.autoscale_settings.get(resource_group, azure_setting_name(endpoint, deployment))
        except ResourceNotFoundError:
            out[variant] = {"autoscaling": None}
            continue
        default = s.profiles[0]
        rules = [{"metric": r.metric_trigger.metric_name, "operator": str(r.metric_trigger.operator),
                  "threshold": r.metric_trigger.threshold, "cooldown": str(r.scale_action.cooldown)} for r in default.rules]
        out[variant] = {"autoscaling": {"min_instances": int(default.capacity.minimum),
                                        "max_instances": int(default.capacity.maximum), "enabled": s.enabled,
                                        "rules": rules, "schedules": [p.name for p in s.profiles[1:]]}}
    return out


# ---- Vertex AI: replica bounds and metric targets on DeployModel ---------------------------------------
def vertex_dedicated_resources(policy: AutoscalingPolicy, machine_type: str) -> dict:
    """``dedicated_resources`` of a DeployedModel with the policy's replica bounds and metric targets."""
    specs = []
    if policy.target_cpu is not None:
        specs.append({"metric_name": VERTEX_CPU_METRIC, "target": round(policy.target_cpu)})
    if policy.target_invocations_per_instance is not None:
        specs.append({"metric_name": VERTEX_REQUESTS_METRIC, "target": round(policy.target_invocations_per_instance)})
    out: dict[str, Any] = {"machine_spec": {"machine_type": machine_type}, "min_replica_count": policy.min_instances,
                           "max_replica_count": policy.max_instances}
    if specs:
        out["autoscaling_metric_specs"] = specs
    return out


def vertex_deploy_kwargs(policy: AutoscalingPolicy) -> dict:
    """Keyword arguments of ``aiplatform.Endpoint.deploy`` for the policy."""
    kw: dict[str, Any] = {"min_replica_count": policy.min_instances, "max_replica_count": policy.max_instances}
    if policy.target_cpu is not None:
        kw["autoscaling_target_cpu_utilization"] = round(policy.target_cpu)
    if policy.target_invocations_per_instance is not None:
        kw["autoscaling_target_request_count_per_minute"] = round(policy.target_invocations_per_instance)
    return kw


def vertex_status(deployed_models) -> dict[str, dict]:
    """``{display name: {"autoscaling": {...}}}`` from an endpoint's ``deployed_models``."""
    out: dict[str, dict] = {}
    for dm in deployed_models:
        res = dm.dedicated_resources
        specs = [{"metric": s.metric_name, "target": s.target} for s in res.autoscaling_metric_specs]
        out[dm.display_name] = {"autoscaling": {"min_instances": res.min_replica_count,
                                                "max_instances": res.max_replica_count, "metrics": specs}}
    return out


def status_lines(status: dict[str, dict]) -> list[str]:
    """``endpoint status`` lines: per variant, the instance counts and the live policy."""
    lines = []
    for variant, s in status.items():
        counts = ""
        if s.get("current_instances") is not None:
            counts = f" {s['current_instances']} running (desired {s.get('desired_instances')})"
        a = s.get("autoscaling")
        if not a:
            lines.append(f"  {variant:<12} autoscaling: none{counts}")
            continue
        detail = "; ".join(f"{p.get('metric')} target {p.get('target')}" for p in a.get("policies", []))
        detail = detail or "; ".join(f"{r['metric']} {r['operator']} {r['threshold']:g}" for r in a.get("rules", []))
        detail = detail or "; ".join(f"{m['metric'].split('online/')[-1]} target {m['target']}" for m in a.get("metrics", []))
        sched = a.get("schedules") or []
        lines.append(f"  {variant:<12} autoscaling: {a['min_instances']}-{a['max_instances']} instances"
                     f"{', ' + detail if detail else ''}{f', {len(sched)} schedule(s)' if sched else ''}{counts}")
    return lines


# ---- what the deploy targets call ------------------------------------------------------------------
def azure_workspace_id(target) -> str:
    s = target.settings
    return (f"/subscriptions/{s['subscription_id']}/resourceGroups/{s['resource_group']}/providers/"
            f"Microsoft.MachineLearningServices/workspaces/{s['workspace']}")


def azure_step(target, deployment: str, *, delete: bool = False, policy: AutoscalingPolicy | None = None) -> tuple[str, dict]:
    """The AzureMLTarget step that creates (or deletes) ``deployment``'s autoscale setting."""
    s = target.settings
    key = {"resource_group_name": s["resource_group"], "autoscale_setting_name": azure_setting_name(target.endpoint, deployment)}
    if delete:
        return "autoscale_settings.delete", key
    try:
        location = target.client.workspaces.get(s["workspace"]).location
    except Exception:  # a plan without credentials: the workspace's region is filled in when applied
        location = "<workspace location>"
    body = azure_setting(policy or target.autoscaling, workspace_id=azure_workspace_id(target), endpoint=target.endpoint,
                         deployment=deployment, location=location)
    return "autoscale_settings.create_or_update", {**key, "parameters": body}


def azure_run(target, method: str, step: dict) -> None:
    """Carry out an ``autoscale_settings.*`` step of AzureMLTarget with azure-mgmt-monitor."""
    client = target.monitor
    if method == "delete":
        target._send("delete autoscale setting", azure_delete, client, step["resource_group_name"],
                     step["autoscale_setting_name"])
        return
    body = dict(step["parameters"])
    if body.get("location", "").startswith("<"):
        body["location"] = target.client.workspaces.get(target.settings["workspace"]).location
    target._send("create autoscale setting", azure_apply, client, step["resource_group_name"],
                 step["autoscale_setting_name"], body)


def live_status(target, state) -> dict[str, dict]:
    """``{variant: {"autoscaling": {...} | None, instance counts where the cloud reports them}}``."""
    if not state.exists or target.name not in CLOUDS:
        return {}
    if target.name == "sagemaker":
        ep = target._call("sagemaker", "DescribeEndpoint", {"EndpointName": target.endpoint})
        live = {v["VariantName"]: v for v in ep.get("ProductionVariants", [])}
        return sagemaker_status(target.client("application-autoscaling"), target.endpoint, live)
    if target.name == "azureml":
        return target._send("read autoscale settings", azure_status, target.monitor,
                            target.settings["resource_group"], target.endpoint, state.details.get("deployments", {}))
    endpoint = target._endpoint()
    return vertex_status(endpoint.gca_resource.deployed_models) if endpoint is not None else {}


def inherited(target, live) -> AutoscalingPolicy | None:
    """The policy of a variant already autoscaled on the endpoint, for a new variant deployed without one.

    A pipeline deploys each month's challenger without autoscaling options; taking the serving variant's
    policy keeps the endpoint autoscaled after the rollout promotes the challenger and removes the old one.
    None when no variant is autoscaled or the policy cannot be read (e.g. a plan without credentials).
    """
    if not live.exists:
        return None
    try:
        status = live_status(target, live)
    except Exception:  # noqa: BLE001 - unreadable policy (no credentials in a plan): nothing to inherit
        return None
    types = {v.get("VariantName"): v.get("InstanceType", "") for v in live.details.get("production_variants", [])}
    for variant, a in ((n, s.get("autoscaling")) for n, s in status.items()):
        if not a:
            continue
        metric, value, out_cd, in_cd = None, None, None, None
        if a.get("policies"):
            p = a["policies"][0]
            metric, value, in_cd, out_cd = p.get("metric"), p.get("target"), p.get("scale_in_cooldown"), p.get("scale_out_cooldown")
        elif a.get("rules"):
            metric, value = a["rules"][0]["metric"], a["rules"][0]["threshold"]
        elif a.get("metrics"):
            metric, value = a["metrics"][0]["metric"], a["metrics"][0]["target"]
        cpu = metric is not None and "cpu" in metric.lower()
        if cpu and value is not None and target.name == "sagemaker":  # sent scaled by the vCPUs: back to percent
            value = float(value) / vcpus(types.get(variant) or target.instance_type)
        return AutoscalingPolicy(
            min_instances=int(a["min_instances"]), max_instances=int(a["max_instances"]),
            target_invocations_per_instance=None if cpu or value is None else float(value),
            target_cpu=float(value) if cpu and value is not None else None,
            scale_in_cooldown=in_cd if target.name == "sagemaker" else None,
            scale_out_cooldown=out_cd if target.name == "sagemaker" else None)
    return None
