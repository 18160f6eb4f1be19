"""Batch scoring on Azure ML batch endpoints, through azure-ai-ml's ``MLClient``.

One ``BatchEndpoint`` per online endpoint (``<endpoint>-batch``), one ``ModelBatchDeployment`` per model
version (``v<version>``) running the kit's scoring script (``templates/azureml/batch_score.py``,
registered as a code asset) in the kit's serving image on a compute cluster. Without that script an
MLflow model's batch output carries no id and calls ``predict``, not ``predict_proba``; with it every
mini-batch of CSV files becomes one JSON object per input row (id, churn_probability, churn, or the
reason it was refused), appended to ``predictions.csv`` (``output_action: append_row``).

The job is started with ``batch_endpoints.invoke(endpoint_name, deployment_name, input=Input(...))``
and followed with ``jobs.get``; its ``score`` output is downloaded with ``jobs.download``
(https://learn.microsoft.com/azure/machine-learning/how-to-use-batch-model-deployments;
entities and settings from azure-ai-ml: ``ModelBatchDeploymentSettings``, ``BatchRetrySettings``).
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

from churnkit.batch.cloud import ERROR_LINES, JobReport, check_limit, check_region, raw_frame, wait_for_job
from churnkit.config import TAG
from churnkit.deploy.base import Release, request
from churnkit.exceptions import CloudBatchError

SCRIPT = Path(__file__).resolve().parents[2] / "templates" / "azureml" / "batch_score.py"
CODE_NAME = "churnkit-batch-score"
OUTPUT_FILE = "predictions.csv"
DONE, FAILED = {"Completed"}, {"Failed", "Canceled", "NotResponding"}
_NAME = re.compile(r"^[a-zA-Z][-a-zA-Z0-9]{1,30}[a-zA-Z0-9]$")


def code_version(script: Path = SCRIPT) -> str:
    """The code asset's version: the script's digest, so a changed script is a new version."""
    return hashlib.sha256(script.read_bytes()).hexdigest()[:12]


def parse_predictions(text: str) -> list[tuple]:
    """``predictions.csv`` written by the kit's scoring script: one JSON object per line."""
    rows = []
    for line in text.splitlines():
        line = line.strip()
        if not line:
            continue
        try:
            obj = json.loads(line)
        except ValueError:
            raise CloudBatchError(f"a line of {OUTPUT_FILE} is not the kit's scoring script output: {line[:80]!r}; "
                                  "deploy with templates/azureml/batch_score.py") from None
        p = obj.get("churn_probability")
        rows.append((str(obj.get("id")), p, obj.get("error") or ("" if p is not None else "no churn_probability")))
    return rows


class AzureMLBatch:
    """Batch endpoint jobs on the Azure ML model of a release.

    Parameters
    ----------
    target : AzureMLTarget
        Workspace settings, credentials and the ``MLClient`` (tests pass a transport).
    compute : str, optional
        The compute cluster; default ``CHURNKIT_AZURE_BATCH_COMPUTE`` (Terraform's ``batch_compute``), else
        ``churnkit-batch``.
    instance_count, max_concurrency_per_instance, mini_batch_size : int
        ``ModelBatchDeploymentSettings``: nodes, scoring processes per node, files per mini-batch.
    max_nodes : int, optional
        The cluster's maximum node count, when known without a call (checked against ``instance_count``).
    """

    service = "Azure ML"

    def __init__(self, target, *, compute: str | None = None, instance_count: int = 2,
                 max_concurrency_per_instance: int = 2, mini_batch_size: int = 2, max_retries: int = 2,
                 retry_timeout: int = 600, poll_seconds: float = 30.0, timeout: float = 24 * 3600.0):
        import os

        self.target = target
        env = os.environ if target._environ is None else target._environ
        self.compute = compute or env.get("CHURNKIT_AZURE_BATCH_COMPUTE") or "churnkit-batch"
        self.instance_count = instance_count
        self.max_concurrency_per_instance = max_concurrency_per_instance
        self.mini_batch_size = mini_batch_size
        self.max_retries = max_retries
        self.retry_timeout = retry_timeout
        self.poll_seconds = poll_seconds
        self.timeout = timeout

    @property
    def endpoint(self) -> str:
        """The batch endpoint's name: ``<endpoint>-batch`` (3-32 letters, digits, '-')."""
        name = f"{self.target.endpoint}-batch"[:32].rstrip("-")
        if not _NAME.match(name):
            raise CloudBatchError(f"batch endpoint name {name!r} is not 3-32 letters, digits and '-'; use a shorter "
                                  "--endpoint")
        return name

    @property
    def client(self):
        return self.target.client

    # ---- entities -----------------------------------------------------------------------------------
    def entities(self, release: Release):
        """``(BatchEndpoint, ModelBatchDeployment)`` of ``release``."""
        from azure.ai.ml.entities import (BatchEndpoint, BatchRetrySettings, CodeConfiguration, ModelBatchDeployment,
                                          ModelBatchDeploymentSettings)

        endpoint = BatchEndpoint(name=self.endpoint, description="churnkit batch scoring",
                                 tags={TAG + "endpoint": self.target.endpoint})
        env = self.target._environment()
        deployment = ModelBatchDeployment(
            name=f"v{release.version}" if release.version != "local" else release.variant,
            endpoint_name=self.endpoint,
            model=f"azureml:{release.model_name}:{release.version}",
            environment=f"azureml:{env.name}:{env.version}",
            code_configuration=CodeConfiguration(code=f"azureml:{CODE_NAME}:{code_version()}",
                                                 scoring_script=SCRIPT.name),
            compute=self.compute,
            settings=ModelBatchDeploymentSettings(
                mini_batch_size=self.mini_batch_size, instance_count=self.instance_count,
                max_concurrency_per_instance=self.max_concurrency_per_instance, output_action="append_row",
                output_file_name=OUTPUT_FILE, retry_settings=BatchRetrySettings(max_retries=self.max_retries,
                                                                                timeout=self.retry_timeout),
                error_threshold=-1, logging_level="info",
                environment_variables={"CHURNKIT_MODEL_NAME": release.model_name,
                                       "CHURNKIT_MODEL_VERSION": release.version,
                                       "CHURNKIT_MODEL_SHA256": release.sha256}),
            tags={TAG + "model_version": release.version},
        )
        return endpoint, deployment

    def check(self) -> None:
        """Refuse settings the service would refuse; nothing is sent.

        Raises
        ------
        CloudBatchLimitError
            A count below 1, or more scoring processes than files per mini-batch can feed.
        """
        if not SCRIPT.is_file():
            raise CloudBatchError(f"the Azure ML scoring script {str(SCRIPT)!r} is missing; batch scoring on Azure ML "
                                  "uploads it from a checkout of the kit (pip install -e .)")
        for name in ("instance_count", "max_concurrency_per_instance", "mini_batch_size"):
            value = getattr(self, name)
            check_limit(isinstance(value, int) and value >= 1, name, value,
                        f"ModelBatchDeploymentSettings {name} {value!r} must be a whole number of at least 1")
        check_limit(0 <= self.max_retries <= 10, "max_retries", self.max_retries,
                    f"BatchRetrySettings max_retries {self.max_retries!r} must be from 0 to 10")

    def check_compute(self) -> None:
        """The cluster must exist in the workspace's region and have nodes for ``instance_count``."""
        from azure.core.exceptions import ResourceNotFoundError

        try:
            compute = self.target._send("get compute", self.client.compute.get, self.compute)
        except CloudBatchError:
            raise
        except Exception as exc:
            if isinstance(exc.__cause__, ResourceNotFoundError):
                raise CloudBatchError(f"compute cluster {self.compute!r} does not exist in workspace "
                                      f"{self.target.settings['workspace']!r}; create it with the Terraform template "
                                      "(output batch_compute) or pass --compute") from None
            raise
        ws = self.target._send("get workspace", self.client.workspaces.get, self.target.settings["workspace"])
        check_region(self.service, f"compute cluster {self.compute!r}", ws.location, compute.location,
                     "create the cluster in the workspace's region (templates/terraform/azure)")
        most = getattr(compute, "max_instances", None)
        if most is not None:
            check_limit(self.instance_count <= most, "instance_count", self.instance_count,
                        f"instance_count {self.instance_count} is more than compute cluster {self.compute!r} can "
                        f"start ({most} nodes); lower --instance-count or raise the cluster's max_node_count")

    def plan(self, release: Release, job: str, input_path: str) -> list[dict]:
        """The code asset, the endpoint, the deployment and the invocation, in the ``az ml`` YAML form."""
        from churnkit.deploy.azureml import dump

        self.check()
        endpoint, deployment = self.entities(release)
        return [
            request("azure-ai-ml", "code.create_or_update", {"name": CODE_NAME, "version": code_version(),
                                                            "path": str(SCRIPT.parent)}),
            request("azure-ai-ml", "batch_endpoints.begin_create_or_update", {"BatchEndpoint": dump(endpoint)}),
            request("azure-ai-ml", "batch_deployments.begin_create_or_update",
                    {"ModelBatchDeployment": dump(deployment)}),
            request("azure-ai-ml", "batch_endpoints.invoke", {
                "endpoint_name": self.endpoint, "deployment_name": deployment.name, "job_name": job,
                "input": {"type": "uri_folder", "path": input_path}}),
        ]

    # ---- run ----------------------------------------------------------------------------------------
    @property
    def _code(self):
        """The workspace's code asset operations: azure-ai-ml 1.35's MLClient keeps them as ``_code`` (no public
        ``code`` attribute), the object its own deployments use to register a scoring script's folder."""
        return self.client._code

    def _code_exists(self) -> bool:
        from azure.core.exceptions import ResourceNotFoundError

        try:
            self.target._send("get code", self._code.get, CODE_NAME, code_version())
        except Exception as exc:
            if isinstance(exc.__cause__, ResourceNotFoundError):
                return False
            raise
        return True

    def ensure_model(self, release: Release) -> None:
        """Register the model version and the serving environment in the workspace unless they are there."""
        self.target._run([("models.create_or_update", self.target._model(release)),
                          ("environments.create_or_update", self.target._environment())], release)

    def submit(self, release: Release, job: str, input_path: str) -> str:
        """Create (or update) the endpoint and deployment, then invoke; returns the job name."""
        from azure.ai.ml import Input
        from azure.ai.ml.entities._assets._artifacts.code import Code  # not re-exported by azure.ai.ml.entities

        self.check()
        if not self._code_exists():
            self.target._send("register the scoring script", self._code.create_or_update,
                              Code(name=CODE_NAME, version=code_version(), path=str(SCRIPT.parent)))
        endpoint, deployment = self.entities(release)
        self.target._send("create batch endpoint", self.client.batch_endpoints.begin_create_or_update, endpoint)
        self.target._send("create batch deployment", self.client.batch_deployments.begin_create_or_update, deployment)
        started = self.target._send("invoke batch endpoint", self.client.batch_endpoints.invoke,
                                    endpoint_name=self.endpoint, deployment_name=deployment.name, job_name=job,
                                    input=Input(type="uri_folder", path=input_path))
        return started.name

    def describe(self, job: str):
        return self.target._send("get job", self.client.jobs.get, job)

    def status(self, job: str) -> str:
        """The job's status as the service spells it (the SDK returns a str enum)."""
        status = self.describe(job).status
        return str(getattr(status, "value", status))

    def failure(self, job: str, download=None) -> tuple[str, list[str]]:
        """The job's status and the first lines of its ``logs/job_error.txt`` (the batch error summary)."""
        import tempfile

        status = self.status(job)
        lines: list[str] = []
        with tempfile.TemporaryDirectory() as tmp:
            try:
                (download or self.client.jobs.download)(job, download_path=tmp, all=True)
                found = sorted(Path(tmp).rglob("job_error.txt"))
                if found:
                    lines = found[0].read_text(errors="replace").splitlines()[:ERROR_LINES]
            except Exception:  # no logs (the job never started) or no permission: the status alone
                pass
        return f"status {status}", lines

    def wait(self, job: str, progress=None, sleep=None) -> JobReport:
        ws = self.target.settings
        scope = f"--workspace-name {ws['workspace']} --resource-group {ws['resource_group']}"
        kw = {"sleep": sleep} if sleep else {}
        state, log = wait_for_job(self.service, job, lambda: self.status(job), done=DONE, failed=FAILED,
                                  poll_seconds=self.poll_seconds, timeout=self.timeout, progress=progress,
                                  failure=lambda: self.failure(job), resume_hint=f"az ml job stream --name {job} {scope}",
                                  stop_hint=f"az ml job cancel --name {job} {scope}", **kw)
        return JobReport("azureml", job, state, states=log)

    def read_output(self, job: str, download=None):
        """Download the job's ``score`` output and read its ``predictions.csv`` into a raw score frame."""
        import tempfile

        with tempfile.TemporaryDirectory() as tmp:
            (download or self.client.jobs.download)(job, download_path=tmp, output_name="score")
            return read_predictions(Path(tmp))


def read_predictions(folder: Path):
    """Every ``predictions.csv`` under ``folder`` (the downloaded ``score`` output) as one raw score frame."""
    files = sorted(Path(folder).rglob(OUTPUT_FILE))
    if not files:
        raise CloudBatchError(f"the job's output has no {OUTPUT_FILE}; it scored nothing (see logs/job_error.txt)")
    rows = []
    for path in files:
        rows += parse_predictions(path.read_text(encoding="utf-8"))
    return raw_frame(rows)
