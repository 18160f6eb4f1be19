"""Google Vertex AI endpoints through google-cloud-aiplatform.

Each model version is uploaded once to the Vertex Model Registry with the kit's serving container
(``AIP_HEALTH_ROUTE``/``AIP_PREDICT_ROUTE`` on port 8080; the model folder staged in Cloud Storage)
and deployed to one endpoint as a deployed model whose display name is the variant. Vertex keys
``traffic_split`` by deployed-model id; the target resolves those ids from the variant names so users
never handle them.

Settings come from the environment: ``GOOGLE_CLOUD_PROJECT``, ``CHURNKIT_GCP_REGION``,
``CHURNKIT_GCP_IMAGE_URI`` (the image in Artifact Registry) and ``CHURNKIT_GCP_BUCKET`` (model
staging); optionally ``CHURNKIT_GCP_SERVICE_ACCOUNT``, the identity deployed models run as. Credentials
come from Application Default Credentials.
"""

from __future__ import annotations

import os
from pathlib import Path

from churnkit.deploy import autoscaling
from churnkit.deploy.base import ManagedCloudTarget, EndpointState, Release, VariantState, export_release, request
from churnkit.exceptions import CloudCredentialsError, DeployTargetError, MissingExtraError

ENV = {
    "project": "GOOGLE_CLOUD_PROJECT",
    "region": "CHURNKIT_GCP_REGION",
    "image_uri": "CHURNKIT_GCP_IMAGE_URI",
    "bucket": "CHURNKIT_GCP_BUCKET",
}
PORT = 8080
PREDICT_ROUTE = "/predict"
HEALTH_ROUTE = "/ping"
CREDENTIALS_HINT = (
    "churnkit uses Application Default Credentials (gcloud auth application-default login, "
    "GOOGLE_APPLICATION_CREDENTIALS or the attached service account) and reads GOOGLE_CLOUD_PROJECT, "
    "CHURNKIT_GCP_REGION, CHURNKIT_GCP_IMAGE_URI and CHURNKIT_GCP_BUCKET"
)


def _aiplatform():
    from importlib import import_module

    try:
        return import_module("google.cloud.aiplatform")
    except ImportError as exc:
        raise MissingExtraError("gcp", "google-cloud-aiplatform") from exc


def _label(value: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "-" for c in value.lower())[:63]


class VertexTarget(ManagedCloudTarget):
    """A Vertex AI endpoint whose deployed models are model versions (display name = variant).

    Parameters
    ----------
    endpoint : str
        Endpoint display name.
    machine_type, min_replicas, max_replicas : str, int, int
        Dedicated resources of each new deployed model.
    credentials : google.auth.credentials.Credentials, optional
        Default: Application Default Credentials.
    service_account : str, optional
        Identity the deployed models run as (default ``CHURNKIT_GCP_SERVICE_ACCOUNT``, else Vertex's own).
    project, region, image_uri, bucket : str, optional
        Override the environment variables of the same meaning.
    """

    name = "vertex"
    ENV = ENV

    def __init__(self, endpoint: str = "churn", config=None, *, machine_type: str = "n1-standard-2",
                 min_replicas: int | None = None, max_replicas: int | None = None, credentials=None,
                 service_account: str | None = None,
                 project: str | None = None,
                 region: str | None = None, image_uri: str | None = None, bucket: str | None = None,
                 environ: dict | None = None, autoscaling=None):
        super().__init__(endpoint, config, dict(project=project, region=region, image_uri=image_uri, bucket=bucket),
                         environ)
        self.machine_type = machine_type
        self.autoscaling = autoscaling.validate(self.name) if autoscaling is not None else None  # on DeployModel
        self._credentials = credentials
        env = os.environ if environ is None else environ
        # replicas: the arguments, else CHURNKIT_GCP_MIN_REPLICAS / _MAX_REPLICAS (Terraform's churnkit_env), else 1
        self.min_replicas = int(min_replicas or env.get("CHURNKIT_GCP_MIN_REPLICAS") or 1)
        self.max_replicas = int(max_replicas or env.get("CHURNKIT_GCP_MAX_REPLICAS") or self.min_replicas)
        self.service_account = service_account or env.get("CHURNKIT_GCP_SERVICE_ACCOUNT", "")

    @property
    def _scope(self) -> dict:
        """Project, location and credentials for every SDK call.

        Some SDK paths (e.g. the Model built after an upload) read only aiplatform's global config, so
        it is set to the same values too.
        """
        s = self.settings
        ai = _aiplatform()
        if self._credentials is None:  # resolve ADC now: the global config may hold another target's
            import google.auth
            from google.auth import exceptions as auth_exc

            try:
                self._credentials, _ = google.auth.default(scopes=["https://www.googleapis.com/auth/cloud-platform"])
            except auth_exc.DefaultCredentialsError as exc:
                raise CloudCredentialsError(f"Vertex AI credentials: {exc}; {CREDENTIALS_HINT}") from exc
        scope = {"project": s["project"], "location": s["region"], "credentials": self._credentials}
        ai.init(**scope)
        return scope

    @property
    def parent(self) -> str:
        return f"projects/{self.settings['project']}/locations/{self.settings['region']}"

    def _call(self, what: str, fn, *args, **kw):
        from google.api_core import exceptions as gexc
        from google.auth import exceptions as auth_exc

        try:
            return fn(*args, **kw)
        except (auth_exc.DefaultCredentialsError, auth_exc.RefreshError) as exc:
            raise CloudCredentialsError(f"Vertex AI {what} failed: {exc}; {CREDENTIALS_HINT}") from exc
        except (gexc.Unauthenticated, gexc.PermissionDenied) as exc:
            raise CloudCredentialsError(f"Vertex AI {what} failed: {exc}; {CREDENTIALS_HINT}") from exc
        except gexc.GoogleAPICallError as exc:
            raise DeployTargetError(f"Vertex AI {what} on endpoint {self.endpoint!r} failed: {exc}") from exc

    # ---- lookups -------------------------------------------------------------------------------------
    def _endpoint(self):
        ai = _aiplatform()
        found = self._call("list endpoints", ai.Endpoint.list, filter=f'display_name="{self.endpoint}"',
                           order_by="create_time", **self._scope)
        return found[0] if found else None

    def _model(self, release: Release):
        ai = _aiplatform()
        flt = f'labels.churnkit-model="{_label(release.model_name)}" AND labels.churnkit-version="{_label(release.version)}"'
        if release.sha256:
            flt += f' AND labels.churnkit-sha256="{release.sha256[:16]}"'
        found = self._call("list models", ai.Model.list, filter=flt, **self._scope)
        return found[0] if found else None

    def describe(self) -> EndpointState:
        ai = _aiplatform()
        ep = self._endpoint()
        if ep is None:
            return self._empty()
        res = ep.gca_resource
        split = dict(res.traffic_split)
        state = EndpointState(self.name, self.endpoint, url=f"https://{self.settings['region']}-aiplatform.googleapis.com/v1/"
                              f"{res.name}:predict", details={"resource_name": res.name, "deployed_model_ids": {}})
        for dm in res.deployed_models:
            version = "?"
            try:
                version = ai.Model(dm.model, **self._scope).labels.get("churnkit-version", "?")
            except Exception:  # the model was deleted behind our back: show the variant anyway
                pass
            state.details["deployed_model_ids"][dm.display_name] = dm.id
            state.variants[dm.display_name] = VariantState(dm.display_name, version, int(split.get(dm.id, 0)),
                                                           "deployed", state.url)
        return state

    @staticmethod
    def _split(asked: dict[str, int], live: EndpointState, new: str | None = None) -> dict[str, int]:
        """``traffic_split`` keyed by deployed-model id (``"0"`` is the model being deployed); zeros left out."""
        ids = live.details.get("deployed_model_ids", {})
        return {("0" if n == new else ids[n]): int(w) for n, w in asked.items() if w > 0}

    # ---- plans ---------------------------------------------------------------------------------------
    def _upload_request(self, release: Release) -> dict:
        s = self.settings
        return request("aiplatform", "ModelService.UploadModel", {
            "parent": self.parent,
            "model": {
                "display_name": f"{release.model_name}-v{release.version}",
                "artifact_uri": self._artifact_uri(release),
                "container_spec": {
                    "image_uri": s["image_uri"],
                    "predict_route": PREDICT_ROUTE,
                    "health_route": HEALTH_ROUTE,
                    "ports": [{"container_port": PORT}],
                    "env": [{"name": k, "value": v} for k, v in (
                        ("CHURNKIT_MODEL_NAME", release.model_name), ("CHURNKIT_MODEL_VERSION", release.version),
                        ("CHURNKIT_MODEL_SHA256", release.sha256),
                        ("CHURNKIT_MANIFEST_SHA256", release.manifest_sha256),
                        # served scores where the rollout controller reads them (CloudMonitoringTelemetry)
                        ("CHURNKIT_CAPTURE_URI", f"gs://{s['bucket']}/churnkit/capture/{self.endpoint}/{release.variant}/"))],
                },
                "labels": self._labels(release),
            },
        })

    @staticmethod
    def _labels(release: Release) -> dict[str, str]:
        labels = {"churnkit-model": _label(release.model_name), "churnkit-version": _label(release.version)}
        if release.sha256:
            labels["churnkit-sha256"] = release.sha256[:16]
        return labels

    def _artifact_uri(self, release: Release) -> str:
        key = f"{release.model_name}-v{release.version}" + (f"-{release.sha256[:12]}" if release.sha256 else "")
        return f"gs://{self.settings['bucket']}/churnkit/models/{key}"

    def _deploy_request(self, release: Release, asked: dict[str, int], live: EndpointState, model_name: str) -> dict:
        deployed = {
            "model": model_name,
            "display_name": release.variant,
            "dedicated_resources": {"machine_spec": {"machine_type": self.machine_type},
                                    "min_replica_count": self.min_replicas, "max_replica_count": self.max_replicas},
        }
        policy = self.autoscaling or autoscaling.inherited(self, live)  # a new deployed model keeps the endpoint autoscaled
        if policy is not None:
            deployed["dedicated_resources"] = autoscaling.vertex_dedicated_resources(policy, self.machine_type)
        if self.service_account:
            deployed["service_account"] = self.service_account
        return request("aiplatform", "EndpointService.DeployModel", {
            "endpoint": live.details.get("resource_name", f"<endpoint {self.endpoint!r} created above>"),
            "deployed_model": deployed,
            "traffic_split": self._split(asked, live, new=release.variant),
        })

    def _plan_deploy(self, release, asked, live):
        if release.variant in live.variants:
            return self._plan_traffic(asked, live)
        reqs = []
        existing = None
        try:
            existing = self._model(release)
        except Exception:  # no credentials: plan the upload
            pass
        if existing is None:
            reqs += [request("storage", "upload", {"source": f"<model folder of {release.uri}>",
                                                   "destination": self._artifact_uri(release)}),
                     self._upload_request(release)]
        if not live.exists:
            reqs.append(request("aiplatform", "EndpointService.CreateEndpoint", {
                "parent": self.parent, "endpoint": {"display_name": self.endpoint, "labels": {"churnkit-endpoint": _label(self.endpoint)}}}))
        model = existing.resource_name if existing is not None else f"<model {release.model_name}-v{release.version} uploaded above>"
        return reqs + [self._deploy_request(release, asked, live, model)]

    def _plan_traffic(self, asked, live):
        return [request("aiplatform", "EndpointService.UpdateEndpoint", {
            "endpoint": {"name": live.details.get("resource_name", f"<endpoint {self.endpoint!r}>"),
                         "traffic_split": self._split(asked, live)},
            "update_mask": {"paths": ["traffic_split"]}})]

    def _plan_remove(self, variant, asked, live):
        return [*self._plan_traffic({**asked, variant: 0}, live),
                request("aiplatform", "EndpointService.UndeployModel", {
                    "endpoint": live.details["resource_name"],
                    "deployed_model_id": live.details["deployed_model_ids"][variant],
                    "traffic_split": self._split(asked, live)})]

    def _plan_stop(self, live):
        if not live.exists:
            return []
        ids = live.details["deployed_model_ids"]
        return [*(request("aiplatform", "EndpointService.UndeployModel", {
                    "endpoint": live.details["resource_name"], "deployed_model_id": i, "traffic_split": {}})
                  for i in ids.values()),
                request("aiplatform", "EndpointService.DeleteEndpoint", {"name": live.details["resource_name"]})]

    # ---- apply ---------------------------------------------------------------------------------------
    def stage_model(self, release: Release) -> str:
        """Copy the model folder to the staging bucket; returns its ``gs://`` URI."""
        import tempfile

        from google.cloud import storage

        uri = self._artifact_uri(release)
        bucket_name, prefix = uri.removeprefix("gs://").split("/", 1)
        bucket = self._call("storage client", storage.Client, project=self.settings["project"],
                            credentials=self._credentials).bucket(bucket_name)
        with tempfile.TemporaryDirectory() as tmp:
            folder = export_release(release, Path(tmp) / "model", self.config)
            for path in sorted(folder.rglob("*")):
                if path.is_file():
                    self._call("upload", bucket.blob(f"{prefix}/{path.relative_to(folder)}").upload_from_filename,
                               str(path))
        return uri

    def _apply_deploy(self, release, asked, before):
        ai = _aiplatform()
        if release.variant in before.variants:
            return self._apply_traffic(asked, before)
        model = self._model(release)
        if model is None:
            upload = self._upload_request(release)["request"]["model"]
            spec = upload["container_spec"]
            model = self._call("upload model", ai.Model.upload, display_name=upload["display_name"],
                               artifact_uri=self.stage_model(release), serving_container_image_uri=spec["image_uri"],
                               serving_container_predict_route=spec["predict_route"],
                               serving_container_health_route=spec["health_route"],
                               serving_container_ports=[PORT],
                               serving_container_environment_variables={e["name"]: e["value"] for e in spec["env"]},
                               labels=upload["labels"], **self._scope)
        endpoint = self._endpoint() if before.exists else self._call(
            "create endpoint", ai.Endpoint.create, display_name=self.endpoint,
            labels={"churnkit-endpoint": _label(self.endpoint)}, **self._scope)
        self._call("deploy model", endpoint.deploy, model, deployed_model_display_name=release.variant,
                   traffic_split=self._split(asked, before, new=release.variant), machine_type=self.machine_type,
                   service_account=self.service_account or None,
                   **(autoscaling.vertex_deploy_kwargs(policy) if (policy := self.autoscaling or autoscaling.inherited(
                       self, before)) is not None else
                      {"min_replica_count": self.min_replicas, "max_replica_count": self.max_replicas}))

    def _apply_traffic(self, asked, before):
        self._call("update traffic", self._endpoint().update, traffic_split=self._split(asked, before))

    def _apply_remove(self, variant, asked, before):
        endpoint = self._endpoint()
        self._call("drain variant", endpoint.update, traffic_split=self._split({**asked, variant: 0}, before))
        self._call("undeploy model", endpoint.undeploy, before.details["deployed_model_ids"][variant],
                   traffic_split=self._split(asked, before))

    # ---- telemetry: what the rollout controller reads ----------------------------------------------
    #: Cloud Monitoring sampling period and visibility delay of Vertex prediction metrics (seconds). The metrics
    #: list gives no delay for response_count and prediction_latencies; their private-endpoint twins and the
    #: Endpoint's cpu/memory metrics say "not visible for up to 360 seconds", so the kit waits that long
    #: (https://cloud.google.com/monitoring/api/metrics_gcp_a_b#gcp-aiplatform).
    METRIC_PERIOD = 60.0
    METRIC_DELAY = 360.0

    def limit_notes(self) -> dict:
        return {"source": "Cloud Monitoring + capture in GCS"}

    def make_reader(self):
        """Cloud Monitoring by deployed model, and the capture files in Cloud Storage
        (:mod:`churnkit.deploy.cloud_monitoring`)."""
        from churnkit.deploy.cloud_monitoring import CloudMonitoringTelemetry

        return CloudMonitoringTelemetry(self, self.METRIC_PERIOD, self.METRIC_DELAY)

    def stop(self) -> EndpointState:
        """Undeploy every deployed model and delete the endpoint (idempotent; models stay registered)."""
        endpoint = self._endpoint()
        if endpoint is not None:
            self._call("delete endpoint", endpoint.delete, force=True)
        return self.describe()
