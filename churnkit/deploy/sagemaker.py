"""Amazon SageMaker real-time endpoints through boto3 clients.

Each model version becomes a SageMaker model (the kit's serving image, the model folder as
``model.tar.gz`` in S3) and a production variant ``v<version>`` of one endpoint; data capture is on.
Traffic moves with ``UpdateEndpointWeightsAndCapacities``; adding or removing a variant writes a new
endpoint config and calls ``UpdateEndpoint`` keeping autoscaled instance counts
(``RetainAllVariantProperties``). The guardrails mode hands the shift to SageMaker itself: a
blue/green ``UpdateEndpoint`` with canary or linear traffic routing and automatic rollback on the
CloudWatch alarms this module creates (p99 model latency, 5xx errors).

Only boto3 clients are used (the sagemaker SDK's resource classes need a live account). Settings
come from the environment: ``CHURNKIT_AWS_ROLE_ARN``, ``CHURNKIT_AWS_BUCKET``,
``CHURNKIT_AWS_IMAGE_URI`` and ``AWS_REGION`` (or ``AWS_DEFAULT_REGION``); credentials from boto3's
default chain.
"""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
import time
from pathlib import Path
from typing import Any

from churnkit.deploy import autoscaling, reach
from churnkit.deploy.base import ManagedCloudTarget, EndpointState, Release, VariantState, _share, export_release, request
from churnkit.exceptions import CloudCredentialsError, DeployTargetError, MissingExtraError

ENV = {
    "role_arn": "CHURNKIT_AWS_ROLE_ARN",
    "bucket": "CHURNKIT_AWS_BUCKET",
    "image_uri": "CHURNKIT_AWS_IMAGE_URI",
    "region": "AWS_REGION|AWS_DEFAULT_REGION",
}
CREDENTIALS_HINT = (
    "churnkit reads AWS credentials through boto3's default chain (AWS_PROFILE, AWS_ACCESS_KEY_ID/"
    "AWS_SECRET_ACCESS_KEY, SSO, instance role) and its settings from CHURNKIT_AWS_ROLE_ARN, "
    "CHURNKIT_AWS_BUCKET, CHURNKIT_AWS_IMAGE_URI and AWS_REGION"
)


CREDENTIAL_CODES = {"UnrecognizedClientException", "InvalidClientTokenId", "ExpiredToken", "ExpiredTokenException",
                    "InvalidSignatureException", "SignatureDoesNotMatch", "AccessDeniedException"}


def _code(exc) -> str:
    return exc.response.get("Error", {}).get("Code", "")


def _not_found(exc: DeployTargetError) -> bool:
    """True when the botocore error behind ``exc`` says the endpoint (or config) does not exist."""
    cause = exc.__cause__
    return cause is not None and ("could not find" in str(cause).lower() or _code(cause) == "ResourceNotFound")


def _boto3():
    try:
        import boto3
    except ImportError as exc:
        raise MissingExtraError("aws", "boto3") from exc
    return boto3


class SageMakerTarget(ManagedCloudTarget):
    """A SageMaker endpoint whose production variants are model versions.

    Parameters
    ----------
    endpoint : str
        Endpoint name.
    instance_type, instance_count : str, int
        Capacity of each new variant.
    capture_percent : int
        Data capture sampling percentage (0 turns capture off).
    wait_timeout, poll_seconds : float
        How long to wait for the endpoint to be ``InService`` after a change, and how often to look.
    role_arn, bucket, image_uri, region : str, optional
        Override the environment variables of the same meaning.
    session : boto3.Session, optional
        The session to build clients from (tests pass one under moto).
    autoscaling : AutoscalingPolicy, optional
        Registered with Application Auto Scaling for each new variant (see churnkit.deploy.autoscaling).
    """

    name = "sagemaker"
    ENV = ENV

    def __init__(self, endpoint: str = "churn", config=None, *, instance_type: str = "ml.m5.large",
                 instance_count: int = 1, capture_percent: int = 100, wait_timeout: float = 1800.0,
                 poll_seconds: float = 15.0, role_arn: str | None = None, bucket: str | None = None,
                 image_uri: str | None = None, region: str | None = None, session=None, environ: dict | None = None,
                 autoscaling=None):
        super().__init__(endpoint, config, dict(role_arn=role_arn, bucket=bucket, image_uri=image_uri, region=region),
                         environ)
        self.instance_type = instance_type
        self.instance_count = instance_count
        self.capture_percent = capture_percent
        self.wait_timeout = wait_timeout
        self.poll_seconds = poll_seconds
        self._session = session
        self._clients: dict[str, Any] = {}
        self.autoscaling = autoscaling.validate(self.name) if autoscaling is not None else None
        #: the last guarded update's alarm statistic, new fleet config and timeout
        self.guardrails: dict = {}

    # ---- clients ---------------------------------------------------------------------------------
    def client(self, service: str):
        """The boto3 client for ``service`` (cached, so tests can attach a botocore Stubber)."""
        if service not in self._clients:
            boto3 = _boto3()
            session = self._session or boto3.Session(region_name=self.settings["region"])
            self._clients[service] = session.client(service, region_name=self.settings["region"],
                                                    config=reach.aws_config())
        return self._clients[service]

    def _call(self, service: str, operation: str, params: dict):
        """Send one request. Raises CloudCredentialsError (no or bad credentials) or DeployTargetError
        (any other refusal; the botocore error is its ``__cause__``)."""
        from botocore import xform_name
        from botocore.exceptions import ClientError, NoCredentialsError, PartialCredentialsError

        try:
            return getattr(self.client(service), xform_name(operation))(**params)
        except (NoCredentialsError, PartialCredentialsError) as exc:
            raise CloudCredentialsError(f"{service} {operation} failed: {exc}; {CREDENTIALS_HINT}") from exc
        except ClientError as exc:
            if _code(exc) in CREDENTIAL_CODES:
                raise CloudCredentialsError(f"{service} {operation} failed: {exc}; {CREDENTIALS_HINT}") from exc
            raise DeployTargetError(f"SageMaker {operation} on endpoint {self.endpoint!r} failed: {exc}") from exc
        except Exception as exc:
            if reach.is_unreachable(exc):  # no route, VPN off, wrong region: one line after the bounded retries
                raise reach.unreachable_error(f"AWS {service} {operation}", f"region {self.settings['region']!r}",
                                              exc) from exc
            raise

    # ---- names ------------------------------------------------------------------------------------
    @staticmethod
    def model_name(release: Release) -> str:
        suffix = f"-{release.sha256[:8]}" if release.sha256 else ""
        return f"{release.model_name}-v{release.version}{suffix}"[:63] if release.version != "local" \
            else f"{release.model_name}-{release.variant}"[:63]

    def model_key(self, release: Release) -> str:
        return f"churnkit/models/{self.model_name(release)}/model.tar.gz"

    def _config_name(self, variants: list[dict]) -> str:
        digest = hashlib.sha256(json.dumps([variants, self._capture(), None], sort_keys=True).encode()).hexdigest()
        return f"{self.endpoint}-{digest[:12]}"

    def _capture(self) -> dict:
        bucket = self.settings["bucket"]
        return {
            "EnableCapture": self.capture_percent > 0,
            "InitialSamplingPercentage": max(self.capture_percent, 1),
            "DestinationS3Uri": f"s3://{bucket}/churnkit/capture/{self.endpoint}",
            "CaptureOptions": [{"CaptureMode": "Input"}, {"CaptureMode": "Output"}],
            "CaptureContentTypeHeader": {"JsonContentTypes": ["application/json"], "CsvContentTypes": ["text/csv"]},
        }

    # ---- describe ----------------------------------------------------------------------------------
    def describe(self) -> EndpointState:
        try:
            ep = self._call("sagemaker", "DescribeEndpoint", {"EndpointName": self.endpoint})
        except DeployTargetError as exc:
            if _not_found(exc):
                return self._empty()
            raise
        cfg = self._call("sagemaker", "DescribeEndpointConfig", {"EndpointConfigName": ep["EndpointConfigName"]})
        config_variants = {v["VariantName"]: v for v in cfg["ProductionVariants"]}
        live = ep.get("ProductionVariants", [])
        raw = {v["VariantName"]: float(v.get("CurrentWeight", v.get("DesiredWeight", 0)) or 0) for v in live}
        weights = _share(raw, 100) if sum(raw.values()) > 0 else {n: 0 for n in raw}
        versions: dict[str, str] = {}
        state = EndpointState(
            self.name, self.endpoint,
            url=f"https://runtime.sagemaker.{self.settings['region']}.amazonaws.com/endpoints/{self.endpoint}/invocations",
            details={"endpoint_config": ep["EndpointConfigName"], "endpoint_status": ep["EndpointStatus"],
                     "failure_reason": ep.get("FailureReason", ""), "production_variants": list(cfg["ProductionVariants"]),
                     "data_capture": bool(ep.get("DataCaptureConfig", {}).get("EnableCapture", False))},
        )
        for v in live:
            name = v["VariantName"]
            model = config_variants.get(name, {}).get("ModelName", "")
            if model and model not in versions:
                env = self._call("sagemaker", "DescribeModel", {"ModelName": model}).get("PrimaryContainer", {}).get("Environment", {})
                versions[model] = env.get("CHURNKIT_MODEL_VERSION", "?")
            statuses = [s.get("Status") for s in v.get("VariantStatus", []) if s.get("Status")]
            state.variants[name] = VariantState(name, versions.get(model, "?"), weights[name],
                                                statuses[-1] if statuses else ep["EndpointStatus"], state.url)
        return state

    def _wait(self) -> None:
        deadline = time.monotonic() + self.wait_timeout
        while True:
            status = self._call("sagemaker", "DescribeEndpoint", {"EndpointName": self.endpoint})["EndpointStatus"]
            if status == "InService":
                return
            if status in ("Failed", "OutOfService") or time.monotonic() > deadline:
                raise DeployTargetError(
                    f"SageMaker endpoint {self.endpoint!r} is {status!r}, not InService; see describe() failure_reason "
                    "and the endpoint's CloudWatch logs"
                )
            time.sleep(self.poll_seconds)

    # ---- plans (the requests) -----------------------------------------------------------------------
    def _model_requests(self, release: Release) -> list[dict]:
        s = self.settings
        name = self.model_name(release)
        return [
            request("s3", "PutObject", {"Bucket": s["bucket"], "Key": self.model_key(release),
                                        "Body": f"<model.tar.gz of {release.uri}>"}),
            request("sagemaker", "CreateModel", {
                "ModelName": name,
                "ExecutionRoleArn": s["role_arn"],
                "PrimaryContainer": {
                    "Image": s["image_uri"],
                    "ModelDataUrl": f"s3://{s['bucket']}/{self.model_key(release)}",
                    "Environment": {"CHURNKIT_MODEL_NAME": release.model_name,
                                    "CHURNKIT_MODEL_VERSION": release.version,
                                    "CHURNKIT_MODEL_SHA256": release.sha256,
                                    "CHURNKIT_MANIFEST_SHA256": release.manifest_sha256},
                },
                "Tags": [{"Key": "churnkit:model", "Value": release.model_name},
                         {"Key": "churnkit:version", "Value": release.version}],
            }),
        ]

    def _variant(self, name: str, model: str, weight: int, old: dict | None = None) -> dict:
        old = old or {}
        return {"VariantName": name, "ModelName": model,
                "InitialInstanceCount": old.get("InitialInstanceCount", self.instance_count),
                "InstanceType": old.get("InstanceType", self.instance_type),
                "InitialVariantWeight": float(weight)}

    def _config_requests(self, variants: list[dict], live: EndpointState) -> list[dict]:
        name = self._config_name(variants)
        reqs = [request("sagemaker", "CreateEndpointConfig", {"EndpointConfigName": name, "ProductionVariants": variants,
                                                              "DataCaptureConfig": self._capture()})]
        if not live.exists:
            return reqs + [request("sagemaker", "CreateEndpoint", {"EndpointName": self.endpoint, "EndpointConfigName": name})]
        return reqs + [request("sagemaker", "UpdateEndpoint", {
            "EndpointName": self.endpoint, "EndpointConfigName": name, "RetainAllVariantProperties": True,
            "ExcludeRetainedVariantProperties": [{"VariantPropertyType": "DesiredWeight"}]})]

    def _plan_deploy(self, release: Release, asked: dict[str, int], live: EndpointState) -> list[dict]:
        if release.variant in live.variants:  # same version (checked by the caller): weights only
            return self._plan_traffic(asked, live)
        reqs = self._model_requests(release)
        old = {v["VariantName"]: v for v in live.details.get("production_variants", [])}
        variants = [self._variant(n, old[n]["ModelName"], asked[n], old[n]) for n in live.variants]
        variants.append(self._variant(release.variant, self.model_name(release), asked[release.variant]))
        policy = self.autoscaling or autoscaling.inherited(self, live)  # a new variant keeps the endpoint autoscaled
        scaling = autoscaling.sagemaker_requests(policy, self.endpoint, release.variant, self.instance_type) \
            if policy else []
        return reqs + self._config_requests(variants, live) + scaling

    def _plan_traffic(self, asked: dict[str, int], live: EndpointState) -> list[dict]:
        return [request("sagemaker", "UpdateEndpointWeightsAndCapacities", {
            "EndpointName": self.endpoint,
            "DesiredWeightsAndCapacities": [{"VariantName": n, "DesiredWeight": float(w)} for n, w in asked.items()],
        })]

    def _plan_remove(self, variant: str, asked: dict[str, int], live: EndpointState) -> list[dict]:
        drain = [autoscaling.sagemaker_deregister_request(self.endpoint, variant),
                 *self._plan_traffic({**asked, variant: 0}, live)]
        old = {v["VariantName"]: v for v in live.details.get("production_variants", [])}
        variants = [self._variant(n, old[n]["ModelName"], asked[n], old[n]) for n in asked]
        return drain + self._config_requests(variants, live)

    def _plan_stop(self, live: EndpointState) -> list[dict]:
        if not live.exists:
            return []
        return [*(autoscaling.sagemaker_deregister_request(self.endpoint, v) for v in live.variants),
                request("sagemaker", "DeleteEndpoint", {"EndpointName": self.endpoint}),
                request("sagemaker", "DeleteEndpointConfig", {"EndpointConfigName": live.details["endpoint_config"]})]

    # ---- apply -------------------------------------------------------------------------------------
    def execute(self, requests: list[dict], release: Release | None = None) -> list[dict]:
        """Send planned requests in order; returns the responses. Waits for InService after endpoint changes."""
        out = []
        for req in requests:
            params = dict(req["request"])
            if req["operation"] == "PutObject" and release is not None:
                params["Body"] = model_archive(release, self.config)
            try:
                out.append(self._call(req["api"], req["operation"], params))
            except DeployTargetError as exc:
                if req["operation"] in ("CreateModel", "CreateEndpointConfig") and "already exist" in str(exc).lower():
                    out.append({})  # same name = same content (names carry the version or a digest)
                    continue
                if req["operation"] == "DeregisterScalableTarget" and autoscaling.not_registered(exc.__cause__):
                    out.append({})  # the variant was not autoscaled
                    continue
                raise
            if req["operation"] in ("CreateEndpoint", "UpdateEndpointWeightsAndCapacities") or (
                    req["operation"] == "UpdateEndpoint" and "DeploymentConfig" not in params):
                self._wait()
        return out

    def _apply_deploy(self, release: Release, asked: dict[str, int], before: EndpointState) -> None:
        self.execute(self._plan_deploy(release, asked, before), release)

    def _apply_traffic(self, asked: dict[str, int], before: EndpointState) -> None:
        self.execute(self._plan_traffic(asked, before))

    def _apply_remove(self, variant: str, asked: dict[str, int], before: EndpointState) -> None:
        self.execute(self._plan_remove(variant, asked, before))

    def stop(self) -> EndpointState:
        """Delete the endpoint and its current config (models and S3 archives stay for a redeploy)."""
        for req in self._plan_stop(self.describe()):
            try:
                self._call(req["api"], req["operation"], req["request"])
            except DeployTargetError as exc:
                if not _not_found(exc) and not autoscaling.not_registered(exc.__cause__):
                    raise
        return self.describe()

    # ---- telemetry: what the rollout controller reads ----------------------------------------------
    #: CloudWatch period and ingestion delay of SageMaker's endpoint metrics (seconds)
    METRIC_PERIOD = 60.0
    METRIC_DELAY = 120.0

    def limit_notes(self) -> dict:
        return {"guardrails": dict(GUARDRAIL_LIMITS), "source": "CloudWatch AWS/SageMaker + Data Capture"}

    def make_reader(self):
        """CloudWatch ``AWS/SageMaker`` and the endpoint's Data Capture (:mod:`churnkit.deploy.cloudwatch`)."""
        from churnkit.deploy.cloudwatch import CloudWatchTelemetry

        return CloudWatchTelemetry(self, self.METRIC_PERIOD, self.METRIC_DELAY)

    def captured_inputs(self, variants: list[str], since: float):
        return super().captured_inputs(variants, since) if self.capture_percent > 0 else None

    # ---- guardrails ---------------------------------------------------------------------------------
    def alarm_requests(self, variant: str, *, config_name: str = "", p99_ms: float = 500.0, max_5xx: int = 1,
                       period: int = 60, latency_statistic: str = "p99") -> list[dict]:
        """``PutMetricAlarm`` requests for the new fleet's ModelLatency and Invocation5XXErrors.

        During a blue/green update both fleets share the variant name; CloudWatch adds the dimension
        ``EndpointConfigName`` to the new fleet's metrics once it takes traffic, and an alarm the old fleet
        trips terminates the deployment (deployment-guardrails-configuration.html), so with ``config_name``
        the alarms watch the new fleet only. ``latency_statistic`` is ``"p99"`` (an extended statistic, where
        CloudWatch has it for ModelLatency) or ``"Maximum"`` (one of ModelLatency's documented statistics).

        SageMaker's blue/green fleets share one variant name, so their Data Capture cannot be told apart
        and no prediction-drift metric can be computed while a guarded update runs: prediction drift is
        judged by ``churnkit rollout`` (separate variants), not by the guardrails.
        """
        dims = [{"Name": "EndpointName", "Value": self.endpoint}, {"Name": "VariantName", "Value": variant}]
        if config_name:
            dims.append({"Name": "EndpointConfigName", "Value": config_name})
        common = {"Period": period, "TreatMissingData": "notBreaching", "ActionsEnabled": False}
        stat = {"ExtendedStatistic": "p99"} if latency_statistic == "p99" else {"Statistic": "Maximum"}
        label = "p99" if latency_statistic == "p99" else "maximum"
        return [
            request("cloudwatch", "PutMetricAlarm", {
                "AlarmName": f"{self.endpoint}-{variant}-model-latency-{label}", "Namespace": "AWS/SageMaker",
                "MetricName": "ModelLatency", "Dimensions": dims, **stat,
                "EvaluationPeriods": 2, "DatapointsToAlarm": 2, "Threshold": p99_ms * 1000.0,  # microseconds
                "ComparisonOperator": "GreaterThanThreshold",
                "AlarmDescription": f"churnkit: {label} model latency of the new fleet above {p99_ms} ms", **common}),
            request("cloudwatch", "PutMetricAlarm", {
                "AlarmName": f"{self.endpoint}-{variant}-invocation-5xx", "Namespace": "AWS/SageMaker",
                "MetricName": "Invocation5XXErrors", "Dimensions": dims, "Statistic": "Sum",
                "EvaluationPeriods": 1, "Threshold": float(max_5xx),
                "ComparisonOperator": "GreaterThanOrEqualToThreshold",
                "AlarmDescription": f"churnkit: {max_5xx} or more 5xx responses of the new fleet in {period} s",
                **common}),
        ]

    def latency_statistic(self, variant: str, hours: int = 3) -> str:
        """``"p99"`` when CloudWatch returns ModelLatency p99 for ``variant`` over the last ``hours`` (the
        documented statistics list none), else ``"Maximum"``."""
        now = time.time()
        reader = self.telemetry_reader
        reader.points([variant], now - hours * 3600, now)
        return "p99" if reader.latency_statistic.get(variant) == "p99" else "Maximum"

    def plan_guarded(self, model_uri: str, *, strategy: str = "canary", step: int = 10, bake_seconds: int = 600,
                     timeout_seconds: int | None = None, live: EndpointState | None = None, **alarms) -> list[dict]:
        """The requests of a guarded (blue/green) update; see ``deploy_guarded``.

        The update replaces the live variant, so the plan reads the endpoint; when it cannot (no route,
        no credentials) it plans against a one-variant endpoint named after the release, with this
        target's instance type and count, and ``plan_basis`` says what was not read.
        """
        if live is None:
            live = self._live_for_plan()
            if not live.exists:
                from churnkit.deploy.base import resolve_release

                release = resolve_release(model_uri, None, self.config)
                live = EndpointState(self.name, self.endpoint, {release.variant: VariantState(
                    release.variant, "?", 100, "not read")}, details={"production_variants": [{
                        "VariantName": release.variant, "ModelName": "<live model: not read>",
                        "InitialInstanceCount": self.instance_count, "InstanceType": self.instance_type}],
                        "instances_read": False})
                self.plan_basis += ("; guardrails replace the live variant: its name, instance type and count are "
                                    "this target's defaults, not read from the endpoint, and whether the fleet "
                                    "can carry the step (2 instances at least) is not checked")
                alarms.setdefault("latency_statistic", "Maximum")  # CloudWatch is not asked either: the safe one
                self.plan_basis += "; ModelLatency p99 availability not read: the latency alarm watches Maximum"
        else:
            self.plan_basis = "live state given by the caller"
        return self._guarded(model_uri, strategy, step, bake_seconds, timeout_seconds, live, alarms)[1]

    def _guarded(self, model_uri: str, strategy: str, step: int, bake_seconds: int, timeout_seconds: int | None,
                 live: EndpointState | None, alarms: dict) -> tuple[Release, list[dict]]:
        from churnkit.deploy.base import resolve_release

        timeout_seconds = check_guardrails(strategy, step, bake_seconds, timeout_seconds)
        statistic = alarms.pop("latency_statistic", None)
        if live is None:
            live = self.describe()
        if len(live.variants) != 1:
            raise DeployTargetError(
                f"guardrails mode replaces the single variant of endpoint {self.endpoint!r}, which has "
                f"{sorted(live.variants)!r}; deploy() it first, or remove() variants down to one"
            )
        variant = next(iter(live.variants))
        release = resolve_release(model_uri, variant, self.config)
        old = (live.details.get("production_variants") or [{}])[0]
        variants = [self._variant(variant, self.model_name(release), 100, old)]
        if live.details.get("instances_read", True):
            check_fleet(strategy, int(step), int(variants[0]["InitialInstanceCount"]))
        size = {"Type": "CAPACITY_PERCENT", "Value": int(step)}
        routing = {"Type": strategy.upper(), "WaitIntervalInSeconds": int(bake_seconds),
                   ("CanarySize" if strategy == "canary" else "LinearStepSize"): size}
        config_name = self._config_name(variants)
        if statistic is None:
            try:
                statistic = self.latency_statistic(variant)
            except Exception as exc:  # noqa: BLE001 - CloudWatch not readable (a plan offline): the safe statistic
                statistic = "Maximum"
                self.plan_basis += f"; ModelLatency p99 availability not readable ({type(exc).__name__}): alarm on Maximum"
        self.guardrails = {"latency_statistic": statistic, "new_fleet_config": config_name,
                           "timeout_seconds": int(timeout_seconds)}
        alarm_reqs = self.alarm_requests(variant, config_name=config_name, latency_statistic=statistic, **alarms)
        deployment = {
            "BlueGreenUpdatePolicy": {"TrafficRoutingConfiguration": routing,
                                      "MaximumExecutionTimeoutInSeconds": int(timeout_seconds)},
            "AutoRollbackConfiguration": {"Alarms": [{"AlarmName": r["request"]["AlarmName"]} for r in alarm_reqs]},
        }
        return release, [
            *self._model_requests(release), *alarm_reqs,
            request("sagemaker", "CreateEndpointConfig", {"EndpointConfigName": config_name, "ProductionVariants": variants,
                                                          "DataCaptureConfig": self._capture()}),
            request("sagemaker", "UpdateEndpoint", {"EndpointName": self.endpoint, "EndpointConfigName": config_name,
                                                    "RetainAllVariantProperties": True, "DeploymentConfig": deployment}),
        ]

    def deploy_guarded(self, model_uri: str, *, strategy: str = "canary", step: int = 10, bake_seconds: int = 600,
                       timeout_seconds: int | None = None, wait: bool = False, **alarms) -> EndpointState:
        """Replace the endpoint's model with SageMaker's own canary/linear shift and alarm rollback.

        Parameters
        ----------
        strategy : {"canary", "linear"}
            Canary: ``step`` % first, then the rest after ``bake_seconds``; linear: ``step`` % at a time.
        wait : bool
            Wait until the update finished (or rolled back) before reading the live state; otherwise the
            state shows the update in progress.
        timeout_seconds : int, optional
            ``MaximumExecutionTimeoutInSeconds``; default: every bake (a canary's two, a linear update's one
            per step) plus ``PROVISIONING_S`` for the new fleet (at least 600, at most 28800).
        **alarms
            ``p99_ms``, ``max_5xx``, ``period`` for the CloudWatch alarms; ``latency_statistic`` ("p99" or
            "Maximum", default: p99 when CloudWatch returns it for the live variant).

        Limits are checked before any request (:func:`check_guardrails`).
        """
        from churnkit.deploy.base import record_deploy

        release, reqs = self._guarded(model_uri, strategy, step, bake_seconds, timeout_seconds, None, alarms)
        self.execute(reqs, release)
        guardrails = dict(self.guardrails)
        if wait:
            self._wait()
        state = self.describe()
        serving = state.variants.get(release.variant)
        if serving is None or serving.model_version != release.version:
            live = f"serves model v{serving.model_version}" if serving else "is not live"
            state.drift.append(f"variant {release.variant!r} {live}; "
                               f"v{release.version} is {'rolled back' if wait else 'being shifted in by SageMaker'}")
        state.details["guardrails"] = guardrails  # the alarm statistic and the new fleet's config, for the record
        record_deploy(release, state, 100, self.config)
        return state

    def plan(self, action: str, **kw) -> list[dict]:
        """As ``DeployTarget.plan``; action ``"guarded"`` plans ``deploy_guarded`` (kw as there)."""
        if action == "guarded":
            return self.plan_guarded(**kw)
        return super().plan(action, **kw)

    def invoke(self, instances: list[dict], variant: str | None = None) -> dict:
        """Score ``instances`` through the endpoint (``TargetVariant`` when ``variant`` is given)."""
        params = {"EndpointName": self.endpoint, "ContentType": "application/json", "Accept": "application/json",
                  "Body": json.dumps({"instances": instances})}
        if variant:
            params["TargetVariant"] = variant
        resp = self._call("sagemaker-runtime", "InvokeEndpoint", params)
        return {"variant": resp.get("InvokedProductionVariant", ""), "body": json.loads(resp["Body"].read())}


#: SageMaker's blue/green limits (https://docs.aws.amazon.com/sagemaker/latest/APIReference/API_TrafficRoutingConfig.html,
#: API_BlueGreenUpdatePolicy.html): canary ≤ 50 % of the fleet, linear steps 10-50 %, waits 0-3600 s,
#: the whole update 600-28800 s and longer than the sum of its waits.
GUARDRAIL_LIMITS = {"CanarySize": (1, 50), "LinearStepSize": (10, 50), "WaitIntervalInSeconds": (0, 3600),
                    "MaximumExecutionTimeoutInSeconds": (600, 28800)}


#: Seconds a new fleet takes to come up, counted in the default execution timeout. AWS's canary example
#: pairs a 600 s bake with a 1800 s timeout: two bakes (canary and final) and 600 s more
#: (https://docs.aws.amazon.com/sagemaker/latest/dg/deployment-guardrails-blue-green-canary.html).
PROVISIONING_S = 600


def bakes(strategy: str, step: int) -> int:
    """The baking periods of a blue/green update: a canary bakes after the canary and again after the full
    shift (the final bake); a linear update after each of its steps, the last one being the final bake."""
    return 2 if strategy == "canary" else -(-100 // int(step))


def check_fleet(strategy: str, step: int, instances: int) -> None:
    """Refuse a capacity-percent canary or linear step that a fleet of ``instances`` cannot carry.

    A step is at least one instance and at most 50 % of the new fleet (API_CapacitySize.html,
    deployment-guardrails-blue-green-canary.html), so one instance can never take a partial shift; two
    can (how SageMaker rounds a percentage to instances is not documented: the kit assumes upwards).
    """
    share = -(-instances * step // 100)  # instances in the first shift, rounded up
    if share * 2 > instances:
        raise DeployTargetError(
            f"a {step} % {strategy} of a {instances}-instance fleet is {share} instance(s), more than the 50 % of "
            "the fleet SageMaker allows; the new fleet copies the live variant's instance count, so run it on 2 "
            "instances or more first (SageMakerTarget(instance_count=2) when it is deployed)")


def check_guardrails(strategy: str, step, bake_seconds, timeout_seconds=None) -> int:
    """Validate a guarded update against SageMaker's limits; returns the execution timeout to send.

    Raises
    ------
    DeployTargetError
        Naming the limit, the value and the accepted range.
    """
    if strategy not in ("canary", "linear"):
        raise DeployTargetError(f"guardrails strategy {strategy!r} is not 'canary' or 'linear'")
    size_name = "CanarySize" if strategy == "canary" else "LinearStepSize"
    for name, value in ((size_name, step), ("WaitIntervalInSeconds", bake_seconds)):
        low, high = GUARDRAIL_LIMITS[name]
        if isinstance(value, bool) or not isinstance(value, int | float) or int(value) != value or not low <= value <= high:
            unit = "% of the fleet" if name.endswith("Size") else " s"
            raise DeployTargetError(f"SageMaker guardrails limit {name}: {value!r} is outside {low}-{high}{unit}; "
                                    f"pass a value from {low} to {high}")
    waits = bakes(strategy, int(step))
    total = waits * int(bake_seconds)
    low, high = GUARDRAIL_LIMITS["MaximumExecutionTimeoutInSeconds"]
    if timeout_seconds is None:
        timeout_seconds = min(max(low, total + PROVISIONING_S), high)
    if isinstance(timeout_seconds, bool) or not isinstance(timeout_seconds, int | float) or \
            not low <= timeout_seconds <= high or timeout_seconds <= total:
        raise DeployTargetError(
            f"SageMaker guardrails limit MaximumExecutionTimeoutInSeconds: {timeout_seconds!r} must be from {low} to "
            f"{high} s and longer than the {waits} wait(s) of {int(bake_seconds)} s ({total} s in all); "
            f"shorten the bake (WaitIntervalInSeconds) or use fewer, larger steps")
    return int(timeout_seconds)


def model_archive(release: Release, config=None) -> bytes:
    """The exported model folder as ``model.tar.gz`` bytes, files at the root (unpacked to /opt/ml/model)."""
    import tempfile

    buf = io.BytesIO()
    with tempfile.TemporaryDirectory() as tmp:
        folder = export_release(release, Path(tmp) / "model", config)
        with tarfile.open(fileobj=buf, mode="w:gz") as tar:
            for path in sorted(folder.rglob("*")):
                if path.is_file():
                    tar.add(path, arcname=str(path.relative_to(folder)))
    return buf.getvalue()
