"""Batch scoring on Vertex AI batch prediction, through the GAPIC ``JobServiceClient`` (REST).

The table is staged as JSON Lines objects in Cloud Storage. ``instance_config`` makes Vertex send each
object without its id (``key_field``) as ``{"instances": [{column: value}, ...]}`` to the kit's
serving container, and write the id back beside each answer as ``key``: Vertex does not keep output
order, so the id is the only join. The Python SDK's ``BatchPredictionJob.create`` cannot set
``instance_config`` (googleapis/python-aiplatform#3031), hence the GAPIC request.

Output (``BatchPredictionJob.OutputConfig.gcs_destination``, aiplatform_v1 types): a folder
``prediction-<model-display-name>-<time>/`` with ``predictions_0001.jsonl`` ... holding
``{"key": id, "prediction": {...}}`` lines and ``errors_0001.jsonl`` ... holding the failed instances
with an ``error`` (``google.rpc.Status``: ``code``, ``message``). Field names from
``google/cloud/aiplatform_v1/types/batch_prediction_job.py`` (installed with google-cloud-aiplatform).
"""

from __future__ import annotations

import json
import re

from churnkit.batch.cloud import ERROR_LINES, JobReport, check_limit, check_region, raw_frame, wait_for_job
from churnkit.deploy.base import Release, request
from churnkit.exceptions import CloudBatchError, MissingExtraError

DONE = {"JOB_STATE_SUCCEEDED", "JOB_STATE_PARTIALLY_SUCCEEDED"}
FAILED = {"JOB_STATE_FAILED", "JOB_STATE_CANCELLED", "JOB_STATE_EXPIRED"}
#: A Compute Engine machine type name (``MachineSpec.machine_type``: family-kind-vCPUs, e.g. n1-standard-4), so a
#: SageMaker instance type (ml.m5.large) or an Azure VM size (Standard_DS3_v2) is refused before the job is sent.
MACHINE_TYPE = re.compile(r"[a-z][a-z0-9]*-[a-z]+(?:-[0-9]+)?")


def _gapic():
    try:
        from google.cloud import aiplatform_v1
    except ImportError as exc:
        raise MissingExtraError("gcp", "google-cloud-aiplatform") from exc
    return aiplatform_v1


def check_job(job: dict, region: str) -> None:
    """Refuse a BatchPredictionJob Vertex would refuse, before anything is sent.

    Raises
    ------
    CloudBatchLimitError
        Model in another region, a machine type that is not Compute Engine's, replicas out of order,
        a batch size below 1, no key field.
    """
    model = job["model"]
    model_region = model.split("/locations/", 1)[1].split("/", 1)[0] if "/locations/" in model else ""
    check_region("Vertex AI", f"model {model!r}", region, model_region,
                 "upload the model in the job's region (CHURNKIT_GCP_REGION) or run the job where the model is")
    res = job["dedicated_resources"]
    machine = res["machine_spec"]["machine_type"]
    check_limit(bool(MACHINE_TYPE.fullmatch(machine)), "machine_type", machine,
                f"machine type {machine!r} is not a Compute Engine machine type, which Vertex batch prediction runs on; "
                "use e.g. n1-standard-4 or e2-standard-4")
    start, most = res["starting_replica_count"], res["max_replica_count"]
    check_limit(1 <= start <= most, "max_replica_count", most,
                f"replicas: starting_replica_count {start} must be at least 1 and at most max_replica_count {most}")
    size = job["manual_batch_tuning_parameters"]["batch_size"]
    check_limit(isinstance(size, int) and size >= 1, "batch_size", size,
                f"manual_batch_tuning_parameters.batch_size {size!r} must be a whole number of at least 1 (default 64)")
    check_limit(bool(job["instance_config"].get("key_field")), "key_field", "",
                "instance_config.key_field is empty: without it Vertex writes no id beside the answers; pass --id-column")


def parse_predictions(text: str) -> list[tuple]:
    """``predictions_*.jsonl`` lines as ``(id, probability, "")``; a line without a probability is refused."""
    rows = []
    for line in text.splitlines():
        if line.strip():
            obj = json.loads(line)
            pred = obj.get("prediction") or {}
            p = pred.get("churn_probability") if isinstance(pred, dict) else None
            rows.append((str(obj.get("key")), p, "" if p is not None else f"no churn_probability in {pred!r}"))
    return rows


def parse_errors(text: str) -> list[tuple]:
    """``errors_*.jsonl`` lines as ``(id, None, "code N: message")``."""
    rows = []
    for line in text.splitlines():
        if line.strip():
            obj = json.loads(line)
            err = obj.get("error") or {}
            ident = obj.get("key", (obj.get("instance") or {}).get("key"))
            rows.append((str(ident), None, f"code {err.get('code', '?')}: {err.get('message', 'no message')}"))
    return rows


class VertexBatch:
    """Batch prediction jobs on the Vertex model of a release.

    Parameters
    ----------
    target : VertexTarget
        Settings (project, region, bucket, image), credentials and the upload request.
    machine_type, starting_replica_count, max_replica_count : str, int, int
        ``dedicated_resources``.
    batch_size : int
        Instances per request to the container (``manual_batch_tuning_parameters``).
    client, storage_client : optional
        A ``JobServiceClient`` and a ``storage.Client`` (default: built from the target's credentials).
    """

    service = "Vertex AI"

    def __init__(self, target, *, machine_type: str = "n1-standard-4", starting_replica_count: int = 1,
                 max_replica_count: int = 4, batch_size: int = 64, client=None, storage_client=None,
                 poll_seconds: float = 30.0, timeout: float = 24 * 3600.0):
        self.target = target
        self.machine_type = machine_type
        self.starting_replica_count = starting_replica_count
        self.max_replica_count = max_replica_count
        self.batch_size = batch_size
        self._client = client
        self._storage = storage_client
        self.poll_seconds = poll_seconds
        self.timeout = timeout

    @property
    def client(self):
        if self._client is None:
            ai = _gapic()
            region = self.target.settings["region"]
            self._client = ai.JobServiceClient(credentials=self.target._scope["credentials"], transport="rest",
                                               client_options={"api_endpoint": f"{region}-aiplatform.googleapis.com"})
        return self._client

    @property
    def storage(self):
        if self._storage is None:
            from google.cloud import storage

            self._storage = storage.Client(project=self.target.settings["project"],
                                           credentials=self.target._scope["credentials"])
        return self._storage

    def prefix(self, job: str) -> str:
        return f"gs://{self.target.settings['bucket']}/churnkit/batch/{job}"

    # ---- requests -----------------------------------------------------------------------------------
    def job_request(self, release: Release, model: str, job: str, input_uris: list[str], id_column: str) -> dict:
        """The CreateBatchPredictionJob request, in the GAPIC field names."""
        sa = self.target.service_account
        return request("aiplatform", "JobService.CreateBatchPredictionJob", {
            "parent": self.target.parent,
            "batch_prediction_job": {
                "display_name": job,
                "model": model,
                "input_config": {"instances_format": "jsonl", "gcs_source": {"uris": list(input_uris)}},
                "instance_config": {"instance_type": "object", "key_field": id_column},
                "output_config": {"predictions_format": "jsonl",
                                  "gcs_destination": {"output_uri_prefix": f"{self.prefix(job)}/output/"}},
                "dedicated_resources": {"machine_spec": {"machine_type": self.machine_type},
                                        "starting_replica_count": self.starting_replica_count,
                                        "max_replica_count": self.max_replica_count},
                "manual_batch_tuning_parameters": {"batch_size": self.batch_size},
                **({"service_account": sa} if sa else {}),
                "labels": self.target._labels(release),
            },
        })

    def plan(self, release: Release, job: str, id_column: str, model: str | None = None,
             input_uris: list[str] | None = None, staged: bytes | None = None) -> list[dict]:
        """The staged input (when local), the model upload (when ``model`` is None) and the job; limits checked."""
        reqs = []
        if input_uris is None:
            bucket = self.target.settings["bucket"]
            name = f"churnkit/batch/{job}/input/part-00000.jsonl"
            reqs.append(request("storage", "objects.insert", {"bucket": bucket, "name": name,
                                                              "body": f"<{len(staged or b'')} bytes of JSON Lines>"}))
            input_uris = [f"gs://{bucket}/{name}"]
        if model is None:
            reqs.append(self.target._upload_request(release))
            model = f"{self.target.parent}/models/<uploaded by ModelService.UploadModel>"
        job_req = self.job_request(release, model, job, input_uris, id_column)
        check_job(job_req["request"]["batch_prediction_job"], self.target.settings["region"])
        return reqs + [job_req]

    # ---- run ----------------------------------------------------------------------------------------
    def _blobs(self, uri: str):
        if not uri.startswith("gs://"):
            raise CloudBatchError(f"{uri!r} is not a gs:// URI; give gs://BUCKET/PREFIX/")
        bucket, _, prefix = uri[5:].partition("/")
        return sorted(self.storage.list_blobs(bucket, prefix=prefix), key=lambda b: b.name)

    def model_resource(self, release: Release) -> str:
        """The Vertex model of ``release`` (uploaded as the deploy target uploads it when it is not there yet)."""
        found = self.target._model(release)
        if found is None:
            from churnkit.deploy.vertex import _aiplatform

            ai = _aiplatform()
            upload = self.target._upload_request(release)["request"]["model"]
            spec = upload["container_spec"]
            found = self.target._call(
                "upload model", ai.Model.upload, display_name=upload["display_name"],
                artifact_uri=self.target.stage_model(release), serving_container_image_uri=spec["image_uri"],
                serving_container_predict_route=spec["predict_route"], serving_container_health_route=spec["health_route"],
                serving_container_ports=[p["container_port"] for p in spec["ports"]],
                serving_container_environment_variables={e["name"]: e["value"] for e in spec["env"]},
                labels=upload["labels"], **self.target._scope)
        return found.resource_name

    def stage(self, job: str, staged: bytes) -> list[str]:
        bucket = self.target.settings["bucket"]
        name = f"churnkit/batch/{job}/input/part-00000.jsonl"
        self.storage.bucket(bucket).blob(name).upload_from_string(staged, content_type="application/jsonl")
        return [f"gs://{bucket}/{name}"]

    def check_input(self, uri: str) -> int:
        files = [b for b in self._blobs(uri) if not b.name.endswith("/") and (b.size or 0) > 0]
        if not files:
            raise CloudBatchError(f"input prefix {uri!r} has no files; a batch prediction job would start, bill and "
                                  "write nothing. Point --input at the JSON Lines files or give a local table to stage")
        return len(files)

    def submit(self, job_req: dict) -> str:
        """Create the job; returns its resource name."""
        ai = _gapic()
        params = job_req["request"]
        created = self.target._call("create batch prediction job", self.client.create_batch_prediction_job,
                                    parent=params["parent"],
                                    batch_prediction_job=ai.BatchPredictionJob(params["batch_prediction_job"]))
        return created.name

    def describe(self, name: str):
        return self.target._call("get batch prediction job", self.client.get_batch_prediction_job, name=name)

    def failure(self, name: str) -> tuple[str, list[str]]:
        """The job's error message and the first lines of its first errors file."""
        got = self.describe(name)
        reason = got.error.message if got.error and got.error.message else ""
        lines: list[str] = []
        folder = got.output_info.gcs_output_directory
        if folder:
            errors = [b for b in self._blobs(folder.rstrip("/") + "/") if b.name.rsplit("/", 1)[-1].startswith("errors_")]
            if errors:
                lines = errors[0].download_as_bytes().decode("utf-8", "replace").splitlines()[:ERROR_LINES]
        return reason, lines

    def wait(self, name: str, progress=None, sleep=None) -> JobReport:
        region, short = self.target.settings["region"], name.rsplit("/", 1)[-1]
        api = f"https://{region}-aiplatform.googleapis.com/v1/{name}"  # JobService REST: get, and :cancel
        hints = {"resume_hint": f"GET {api} (JobService.GetBatchPredictionJob)",
                 "stop_hint": f"POST {api}:cancel (JobService.CancelBatchPredictionJob)"}
        kw = {"sleep": sleep} if sleep else {}
        state, log = wait_for_job(self.service, short, lambda: self.describe(name).state.name, done=DONE, failed=FAILED,
                                  poll_seconds=self.poll_seconds, timeout=self.timeout, progress=progress,
                                  failure=lambda: self.failure(name), **hints, **kw)
        got = self.describe(name)
        stats = got.completion_stats
        return JobReport("vertex", short, state, rows_out=int(stats.successful_count),
                         rows_failed=int(stats.failed_count), output_uri=got.output_info.gcs_output_directory,
                         states=log)

    def read_output(self, folder: str):
        """``predictions_*.jsonl`` and ``errors_*.jsonl`` under ``folder`` as one raw score frame."""
        rows = []
        for blob in self._blobs(folder.rstrip("/") + "/"):
            base = blob.name.rsplit("/", 1)[-1]
            parse = parse_predictions if base.startswith("predictions_") else parse_errors if base.startswith(
                "errors_") else None
            if parse is not None:
                try:
                    rows += parse(blob.download_as_bytes().decode("utf-8"))
                except (ValueError, AttributeError) as exc:  # not JSON Lines of objects: not Vertex's output
                    raise CloudBatchError(f"gs://{blob.bucket.name}/{blob.name} is not Vertex batch prediction output "
                                          f"({exc}); was the output folder written by something else?") from None
        return raw_frame(rows)
