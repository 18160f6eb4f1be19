"""Azure Machine Learning managed online endpoints through azure-ai-ml.

Each model version is one ``ManagedOnlineDeployment`` (the kit's serving image as a custom
container: liveness at ``/``, scoring at ``/score``) of one ``ManagedOnlineEndpoint``; the endpoint's
``traffic`` dict splits live traffic and ``mirror_traffic`` copies a share to a deployment for shadow
testing. Traffic updates are eventually consistent: after each change the target polls the endpoint
until the live traffic equals the request (or the wait times out, which then shows as drift).

Settings come from the environment: ``AZURE_SUBSCRIPTION_ID``, ``AZURE_RESOURCE_GROUP``,
``AZUREML_WORKSPACE`` and ``CHURNKIT_AZURE_IMAGE_URI`` (the image in the workspace's ACR);
credentials from ``DefaultAzureCredential`` (az login, managed identity, AZURE_CLIENT_ID/...).
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from pathlib import Path
from typing import Any

from churnkit.config import TAG
from churnkit.deploy import autoscaling, reach
from churnkit.deploy.base import ManagedCloudTarget, EndpointState, Release, VariantState, export_release, request
from churnkit.exceptions import CloudCredentialsError, DeployTargetError, MissingExtraError

ENV = {
    "subscription_id": "AZURE_SUBSCRIPTION_ID",
    "resource_group": "AZURE_RESOURCE_GROUP",
    "workspace": "AZUREML_WORKSPACE",
    "image_uri": "CHURNKIT_AZURE_IMAGE_URI",
}
PORT = 8080
ROUTES = {
    "liveness_route": {"port": PORT, "path": "/"},
    "readiness_route": {"port": PORT, "path": "/ping"},
    "scoring_route": {"port": PORT, "path": "/score"},
}
ENVIRONMENT_NAME = "churnkit-serve"
CREDENTIALS_HINT = (
    "churnkit authenticates with DefaultAzureCredential (az login, managed identity, or AZURE_CLIENT_ID/"
    "AZURE_TENANT_ID/AZURE_CLIENT_SECRET) and reads AZURE_SUBSCRIPTION_ID, AZURE_RESOURCE_GROUP, "
    "AZUREML_WORKSPACE and CHURNKIT_AZURE_IMAGE_URI"
)
_NAME = re.compile(r"^[a-zA-Z][-a-zA-Z0-9]{1,30}[a-zA-Z0-9]$")


def _ml():
    try:
        import azure.ai.ml as ml
        import azure.ai.ml.entities as entities
    except ImportError as exc:
        raise MissingExtraError("azure", "azure-ai-ml") from exc
    return ml, entities


def deployment_name(variant: str, endpoint: str) -> str:
    """Azure's deployment name for ``variant``: itself when valid (3-32 chars), else ``<variant>-<endpoint>``."""
    if _NAME.match(variant):
        return variant
    name = re.sub(r"[^-a-zA-Z0-9]", "-", f"{variant}-{endpoint}")[:32].rstrip("-")
    if not _NAME.match(name):
        raise DeployTargetError(f"variant {variant!r} cannot be an Azure ML deployment name; use 3-32 letters, digits, '-'")
    return name


def dump(entity) -> dict:
    """An azure-ai-ml entity in the YAML form ``az ml ... -f`` reads (the plan's request format)."""
    return json.loads(json.dumps(entity._to_dict(), default=str))


class AzureMLTarget(ManagedCloudTarget):
    """An Azure ML managed online endpoint whose deployments are model versions.

    Parameters
    ----------
    endpoint : str
        Endpoint name (unique in the Azure region).
    instance_type, instance_count : str, int
        Capacity of each new deployment.
    wait_timeout, poll_seconds : float
        How long to wait for traffic to take effect, and how often to look.
    credential : azure TokenCredential, optional
        Default: ``DefaultAzureCredential()``.
    client_kwargs : dict, optional
        Passed to ``MLClient`` (tests pass ``transport=``).
    subscription_id, resource_group, workspace, image_uri : str, optional
        Override the environment variables of the same meaning.
    """

    name = "azureml"
    ENV = ENV

    def __init__(self, endpoint: str = "churn", config=None, *, instance_type: str = "Standard_DS3_v2",
                 instance_count: int = 1, wait_timeout: float = 600.0, poll_seconds: float = 10.0, credential=None,
                 client_kwargs: dict | None = None, subscription_id: str | None = None, resource_group: str | None = None,
                 workspace: str | None = None, image_uri: str | None = None, environ: dict | None = None,
                 autoscaling=None):
        super().__init__(endpoint, config, dict(subscription_id=subscription_id, resource_group=resource_group,
                                                workspace=workspace, image_uri=image_uri), environ)
        self.instance_type = instance_type
        self.instance_count = instance_count
        self.wait_timeout = wait_timeout
        self.poll_seconds = poll_seconds
        self._credential = credential
        self._client_kwargs = {**reach.AZURE_KWARGS, **(client_kwargs or {})}  # bounded waits; the caller's win
        self._client = None
        self._monitor = None
        self.autoscaling = autoscaling.validate(self.name) if autoscaling is not None else None  # Azure Monitor

    @property
    def client(self):
        """The ``MLClient`` of the workspace (built on first use)."""
        if self._client is None:
            ml, _ = _ml()
            s = self.settings
            kwargs = dict(self._client_kwargs)
            if "transport" not in kwargs:  # MLClient does not pass connection_timeout on: its transport holds it
                from azure.core.pipeline.transport import RequestsTransport

                kwargs["transport"] = RequestsTransport(connection_timeout=reach.CONNECT_TIMEOUT_S,
                                                        read_timeout=reach.READ_TIMEOUT_S)
            self._client = ml.MLClient(self.credential, s["subscription_id"], s["resource_group"], s["workspace"],
                                       **kwargs)
        return self._client

    @property
    def monitor(self):
        """azure-mgmt-monitor's ``MonitorManagementClient`` of the subscription (autoscale settings, metrics),
        with the credential and pipeline options of :attr:`client` (built on first use)."""
        if self._monitor is None:
            self._monitor = autoscaling.monitor_client(self.credential, self.settings["subscription_id"],
                                                       **self._client_kwargs)
        return self._monitor

    def _send(self, what: str, fn, *args, **kw):
        from azure.core.exceptions import ClientAuthenticationError, HttpResponseError

        try:
            result = fn(*args, **kw)
            return result.result() if hasattr(result, "result") and hasattr(result, "done") else result
        except ClientAuthenticationError as exc:  # DefaultAzureCredential lists every credential it tried: one line
            lines = [line.strip() for line in str(exc.message or exc).splitlines() if line.strip()]
            link = next((w.rstrip(".") for line in lines for w in line.split() if w.startswith("https://")), "")
            first = (lines or ["no credential found"])[0] + (f" (see {link})" if link and link not in lines[0] else "")
            raise CloudCredentialsError(f"Azure ML {what} failed: {first}; {CREDENTIALS_HINT}") from exc
        except HttpResponseError as exc:
            raise DeployTargetError(f"Azure ML {what} on endpoint {self.endpoint!r} failed: {exc.message}") from exc
        except Exception as exc:
            if reach.is_unreachable(exc):  # no route to management.azure.com: one line after the bounded retries
                raise reach.unreachable_error(f"Azure ML {what}", f"workspace {self.settings['workspace']!r}",
                                              exc) from exc
            raise

    # ---- entities ------------------------------------------------------------------------------------
    def _environment(self):
        _, e = _ml()
        image = self.settings["image_uri"]
        version = hashlib.sha256(f"{image}|{sorted(ROUTES.items())}".encode()).hexdigest()[:10]
        return e.Environment(name=ENVIRONMENT_NAME, version=version, image=image, inference_config=ROUTES,
                             description="churnkit serve: one scorer for SageMaker, Vertex AI, Azure ML and MLflow")

    def _model(self, release: Release, folder: Path | None = None):
        """The workspace model of ``release`` (``folder``: the exported model folder to upload)."""
        _, e = _ml()
        return e.Model(name=release.model_name, version=None if release.version == "local" else release.version,
                       type="custom_model", path=str(folder) if folder else f"<exported model folder of {release.uri}>",
                       tags={TAG + "artifact_sha256": release.sha256, TAG + "source": release.uri})

    def _deployment(self, release: Release):
        _, e = _ml()
        env = self._environment()
        return e.ManagedOnlineDeployment(
            name=deployment_name(release.variant, self.endpoint), endpoint_name=self.endpoint,
            model=self._model(release, self._export(release)) if release.version == "local"
            else f"azureml:{release.model_name}:{release.version}",
            environment=f"azureml:{env.name}:{env.version}",
            instance_type=self.instance_type, instance_count=self.instance_count,
            environment_variables={"CHURNKIT_MODEL_NAME": release.model_name, "CHURNKIT_MODEL_VERSION": release.version,
                                   "CHURNKIT_MODEL_SHA256": release.sha256, "AIP_HTTP_PORT": str(PORT),
                                   "CHURNKIT_MANIFEST_SHA256": release.manifest_sha256},
            tags={TAG + "variant": release.variant, TAG + "model_version": release.version},
            app_insights_enabled=True,
            data_collector=self._payload_logging(),
        )

    def _endpoint_entity(self, traffic: dict[str, int] | None = None, mirror: dict[str, int] | None = None, live=None):
        _, e = _ml()
        ep = live if live is not None else e.ManagedOnlineEndpoint(
            name=self.endpoint, auth_mode="key", tags={TAG + "endpoint": self.endpoint},
            description="churnkit churn model endpoint")
        if traffic is not None:
            ep.traffic = {deployment_name(n, self.endpoint): int(w) for n, w in traffic.items() if w > 0}
        if mirror is not None:
            ep.mirror_traffic = {deployment_name(n, self.endpoint): int(w) for n, w in mirror.items() if w > 0}
        return ep

    # ---- describe ------------------------------------------------------------------------------------
    def _get_endpoint(self):
        from azure.core.exceptions import ResourceNotFoundError

        try:
            return self._send("get endpoint", self.client.online_endpoints.get, self.endpoint)
        except DeployTargetError as exc:
            if isinstance(exc.__cause__, ResourceNotFoundError):
                return None
            raise

    def deployment_of(self, variant: str) -> str:
        """The Azure ML deployment that serves ``variant`` on this endpoint."""
        return deployment_name(variant, self.endpoint)

    def describe(self) -> EndpointState:
        ep = self._get_endpoint()
        if ep is None:
            return self._empty()
        deployments = list(self._send("list deployments", self.client.online_deployments.list, self.endpoint))
        traffic = dict(ep.traffic or {})
        state = EndpointState(self.name, self.endpoint, url=ep.scoring_uri or "", details={
            "provisioning_state": ep.provisioning_state, "traffic": traffic, "mirror_traffic": dict(ep.mirror_traffic or {}),
            "deployments": {}})
        for d in deployments:
            tags = d.tags or {}
            variant = tags.get(TAG + "variant", d.name)
            state.details["deployments"][variant] = d.name
            state.variants[variant] = VariantState(variant, tags.get(TAG + "model_version", "?"),
                                                   int(traffic.get(d.name, 0)), d.provisioning_state or "?", state.url)
        return state

    # ---- plans ---------------------------------------------------------------------------------------
    def _deploy_steps(self, release: Release, asked: dict[str, int], live: EndpointState) -> list[tuple[str, Any]]:
        steps: list[tuple[str, Any]] = []
        if not live.exists:
            steps.append(("online_endpoints.begin_create_or_update", self._endpoint_entity()))
        if release.variant not in live.variants:
            if release.version != "local":  # a folder or runs:/ model is uploaded inline with the deployment
                steps.append(("models.create_or_update", self._model(release)))
            steps += [("environments.create_or_update", self._environment()),
                      ("online_deployments.begin_create_or_update", self._deployment(release))]
            policy = self.autoscaling or autoscaling.inherited(self, live)  # a new deployment keeps the endpoint autoscaled
            if policy is not None:
                steps.append(autoscaling.azure_step(self, deployment_name(release.variant, self.endpoint), policy=policy))
        steps.append(("online_endpoints.begin_create_or_update", self._endpoint_entity(asked)))
        return steps

    def _traffic_steps(self, asked: dict[str, int], mirror: dict[str, int] | None = None) -> list[tuple[str, Any]]:
        return [("online_endpoints.begin_create_or_update", self._endpoint_entity(asked, mirror))]

    def _remove_steps(self, variant: str, asked: dict[str, int], live: EndpointState) -> list[tuple[str, Any]]:
        mirror = {n: w for n, w in live.details.get("mirror_traffic", {}).items() if n != deployment_name(variant, self.endpoint)}
        return [*self._traffic_steps(asked, {self._variant_of(n, live): w for n, w in mirror.items()}),
                autoscaling.azure_step(self, deployment_name(variant, self.endpoint), delete=True),
                ("online_deployments.begin_delete", {"name": deployment_name(variant, self.endpoint),
                                                     "endpoint_name": self.endpoint})]

    def _variant_of(self, deployment: str, live: EndpointState) -> str:
        return next((v for v, d in live.details.get("deployments", {}).items() if d == deployment), deployment)

    @staticmethod
    def _render(steps: list[tuple[str, Any]]) -> list[dict]:
        return [request("azureml", op, obj if isinstance(obj, dict) else dump(obj)) for op, obj in steps]

    def _plan_deploy(self, release, asked, live):
        return self._render(self._deploy_steps(release, asked, live))

    def _plan_traffic(self, asked, live):
        return self._render(self._traffic_steps(asked))

    def _plan_remove(self, variant, asked, live):
        return self._render(self._remove_steps(variant, asked, live))

    def _plan_stop(self, live):
        return [request("azureml", "online_endpoints.begin_delete", {"name": self.endpoint})] if live.exists else []

    # ---- apply ---------------------------------------------------------------------------------------
    def _run(self, steps: list[tuple[str, Any]], release: Release | None = None) -> None:
        from azure.core.exceptions import ResourceNotFoundError

        for op, obj in steps:
            group, method = op.split(".")
            if group == "autoscale_settings":  # Azure Monitor, not the workspace's MLClient
                autoscaling.azure_run(self, method, obj)
                continue
            ops = getattr(self.client, group)
            if op == "models.create_or_update" and obj.version is not None:
                try:  # the workspace may hold the version already (e.g. MLflow tracking on the workspace)
                    self._send("get model", ops.get, obj.name, version=obj.version)
                    continue
                except DeployTargetError as exc:
                    if not isinstance(exc.__cause__, ResourceNotFoundError):
                        raise
                    obj.path = str(self._export(release))
            if group == "online_endpoints" and method == "begin_create_or_update" and obj.traffic is not None:
                live = self._get_endpoint()
                if live is not None:  # keep what Azure set (keys, identity); change only the traffic
                    obj = self._with_traffic(live, obj)
            if isinstance(obj, dict):
                self._send(op, getattr(ops, method), **obj)
            else:
                self._send(op, getattr(ops, method), obj)
            if group == "online_endpoints" and method == "begin_create_or_update":
                self._wait_traffic(dict(obj.traffic or {}))

    @staticmethod
    def _with_traffic(live, asked):
        live.traffic = dict(asked.traffic or {})
        live.mirror_traffic = dict(asked.mirror_traffic or {}) if asked.mirror_traffic is not None else live.mirror_traffic
        return live

    def _wait_traffic(self, expected: dict[str, int]) -> None:
        """Poll until the endpoint's live traffic equals ``expected`` (eventually consistent) or time out."""
        deadline = time.monotonic() + self.wait_timeout
        while True:
            ep = self._get_endpoint()
            live = {k: int(v) for k, v in (ep.traffic or {}).items() if v} if ep is not None else {}
            if live == {k: v for k, v in expected.items() if v} or time.monotonic() > deadline:
                return
            time.sleep(self.poll_seconds)

    def _export(self, release: Release) -> Path:
        """The exported model folder (kept in a temporary folder until the target is dropped)."""
        import tempfile

        if not hasattr(self, "_tmp"):
            self._tmp = tempfile.TemporaryDirectory(prefix="churnkit-azureml-")
        dest = Path(self._tmp.name) / f"{release.model_name}-{release.version}-{release.variant}"
        return dest if (dest / "MLmodel").exists() else export_release(release, dest, self.config)

    def _apply_deploy(self, release, asked, before):
        self._run(self._deploy_steps(release, asked, before), release)

    def _apply_traffic(self, asked, before):
        self._run(self._traffic_steps(asked))

    def _apply_remove(self, variant, asked, before):
        self._run(self._remove_steps(variant, asked, before))

    def set_mirror_traffic(self, mirror: dict[str, int]) -> EndpointState:
        """Copy ``{variant: percent}`` of live traffic to deployments for shadow testing (responses discarded).

        A mirrored deployment must take no live traffic; Azure allows at most 50 % mirrored.
        """
        before = self.describe()
        for n, w in mirror.items():
            if n not in before.variants:
                raise DeployTargetError(f"no variant named {n!r} to mirror to; deployed variants: {sorted(before.variants)!r}")
            if isinstance(w, bool) or not isinstance(w, int) or not 0 <= w <= 50:
                raise DeployTargetError(f"mirror traffic {w!r} for {n!r} is not a percentage from 0 to 50")
            if before.variants[n].weight:
                raise DeployTargetError(f"variant {n!r} takes {before.variants[n].weight}% live traffic; "
                                        "only a variant at 0% can receive mirrored traffic")
        self._run(self._traffic_steps(before.weights, mirror))
        state = self._verify(before.weights)
        expected = {deployment_name(n, self.endpoint): int(w) for n, w in mirror.items() if w}
        if state.details.get("mirror_traffic") != expected:
            state.drift.append(f"mirror traffic is {state.details.get('mirror_traffic')!r} but {expected!r} was asked for")
        return state

    # ---- telemetry: what the rollout controller reads ----------------------------------------------
    #: Azure Monitor grain and ingestion delay of online-endpoint metrics (seconds)
    METRIC_PERIOD = 60.0
    METRIC_DELAY = 180.0

    @staticmethod
    def _payload_logging():
        """Azure ML payload logging (``request`` and ``response`` collections) for every deployment: the
        served payloads the rollout reads scores and inputs from."""
        _, e = _ml()
        return e.DataCollector(collections={c: e.DeploymentCollection(enabled="true") for c in ("request", "response")},
                               sampling_rate=1.0)

    @property
    def credential(self):
        """The credential every client of this target uses (``DefaultAzureCredential`` unless given)."""
        if self._credential is None:
            from azure.identity import DefaultAzureCredential

            self._credential = DefaultAzureCredential()
        return self._credential

    MAX_VARIANTS = 20

    def limit_notes(self) -> dict:
        return {"mirror_traffic_max": 50, "source": "Azure Monitor + payload logging"}

    def make_reader(self):
        """Azure Monitor split by deployment, and payload logging (:mod:`churnkit.deploy.azure_monitor`)."""
        from churnkit.deploy.azure_monitor import AzureMonitorTelemetry

        return AzureMonitorTelemetry(self, self.METRIC_PERIOD, self.METRIC_DELAY)

    def stop(self) -> EndpointState:
        """Delete the endpoint with its deployments (idempotent; models and environments stay)."""
        if self._get_endpoint() is not None:
            for deployment in self.describe().details["deployments"].values():
                autoscaling.azure_run(self, "delete", autoscaling.azure_step(self, deployment, delete=True)[1])
            self._send("delete endpoint", self.client.online_endpoints.begin_delete, name=self.endpoint)
        return self.describe()
