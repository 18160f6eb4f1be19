"""Batch scoring on SageMaker Batch Transform (``CreateTransformJob``) with the kit's serving image.

The table is staged as headerless CSV lines, the id first and then the model's columns in its schema
order. Batch Transform splits the files by line (``SplitType: Line``), drops the id before the model
sees a line (``InputFilter: $[1:]``), joins each answer to its input line (``JoinSource: Input``) and
keeps the id and the answer (``OutputFilter: $[0,-1]``): each ``<input file>.out`` line is
``id,probability`` or ``id,"error: <reason>"`` (the container's batch mode, :mod:`churnkit.serve.batch`).
JSON Lines input works the same way with ``$['<id>','SageMakerOutput']``.

Sources: CreateTransformJob and DataProcessing fields from botocore's service model (``sagemaker``
2017-07-24, installed with boto3) and https://docs.aws.amazon.com/sagemaker/latest/dg/batch-transform-data-processing.html
(filters: JSONPath, CSV and JSON only; JSON answers joined under ``SageMakerOutput``);
payload × concurrency ≤ 100 MB from https://docs.aws.amazon.com/sagemaker/latest/dg/your-algorithms-batch-code.html.
"""

from __future__ import annotations

import csv
import functools
import io
import json

from churnkit.batch.cloud import ERROR_LINES, JobReport, check_limit, check_region, raw_frame, wait_for_job
from churnkit.deploy.base import Release, request
from churnkit.exceptions import CloudBatchError, DeployTargetError

#: Batch Transform sends at most this many MB at once to one instance (MaxPayloadInMB × MaxConcurrentTransforms).
MAX_TRANSFER_MB = 100
#: DataProcessing filters are at most 63 characters (botocore: JsonPath, max 63).
MAX_FILTER_CHARS = 63
FORMATS = {"csv": ("text/csv", "text/csv"), "jsonl": ("application/jsonlines", "application/jsonlines")}
DONE, FAILED = {"Completed"}, {"Failed", "Stopped"}


@functools.cache
def transform_instance_types() -> tuple[str, ...]:
    """The instance types CreateTransformJob accepts, read from botocore's own service model."""
    import botocore.session

    model = botocore.session.get_session().get_service_model("sagemaker")
    return tuple(model.shape_for("TransformInstanceType").enum)


def data_processing(fmt: str, id_column: str) -> dict:
    """The ``DataProcessing`` that carries the id past the model and back into the output."""
    if fmt == "csv":
        return {"InputFilter": "$[1:]", "JoinSource": "Input", "OutputFilter": "$[0,-1]"}
    return {"InputFilter": "$", "JoinSource": "Input", "OutputFilter": f"$['{id_column}','SageMakerOutput']"}


def check_request(params: dict) -> None:
    """Refuse a CreateTransformJob request Batch Transform would refuse, naming the field and the fix.

    Raises
    ------
    CloudBatchLimitError
        Payload × concurrency over 100 MB, a payload of 0 (chunked, built-in algorithms only), a filter over 63
        characters, an instance type transform jobs do not offer.
    """
    payload, concurrent = params.get("MaxPayloadInMB", 6), params.get("MaxConcurrentTransforms", 1)
    check_limit(isinstance(payload, int) and 1 <= payload <= MAX_TRANSFER_MB, "MaxPayloadInMB", payload,
                f"MaxPayloadInMB {payload!r} must be a whole number from 1 to {MAX_TRANSFER_MB} (0 means chunked "
                "bodies, which only SageMaker's built-in algorithms read); pass e.g. --max-payload-mb 6")
    check_limit(isinstance(concurrent, int) and concurrent >= 1, "MaxConcurrentTransforms", concurrent,
                f"MaxConcurrentTransforms {concurrent!r} must be a whole number of at least 1")
    check_limit(payload * concurrent <= MAX_TRANSFER_MB, "MaxPayloadInMB", payload * concurrent,
                f"MaxPayloadInMB {payload} × MaxConcurrentTransforms {concurrent} = {payload * concurrent} MB is over "
                f"Batch Transform's {MAX_TRANSFER_MB} MB per instance; lower one of them "
                f"(e.g. {payload} MB × {MAX_TRANSFER_MB // payload})")
    for name, value in params.get("DataProcessing", {}).items():
        if name.endswith("Filter"):
            check_limit(len(value) <= MAX_FILTER_CHARS, name, value,
                        f"DataProcessing {name} {value!r} has {len(value)} characters, over SageMaker's "
                        f"{MAX_FILTER_CHARS}; use CSV input (the id travels as column 0) or a shorter id column name")
    instance = params["TransformResources"]["InstanceType"]
    offered = transform_instance_types()
    check_limit(instance in offered, "InstanceType", instance,
                f"instance type {instance!r} is not offered for transform jobs; use one of "
                f"{', '.join(t for t in offered if t.startswith('ml.m5'))}, ... (botocore's TransformInstanceType)")


def parse_out(text: str, fmt: str = "csv", id_column: str = "id") -> list[tuple]:
    """The lines of one ``.out`` file as ``(id, probability or None, error)`` tuples."""
    rows = []
    if fmt == "csv":
        for fields in csv.reader(io.StringIO(text, newline="")):
            if not fields:
                continue
            ident, answer = fields[0], fields[-1] if len(fields) > 1 else ""
            try:
                rows.append((ident, float(answer), ""))
            except ValueError:
                rows.append((ident, None, answer.removeprefix("error: ") or "no answer for this line"))
        return rows
    for line in text.splitlines():
        if not line.strip():
            continue
        obj = json.loads(line)
        out = obj.get("SageMakerOutput") or {}
        if "churn_probability" in out:
            rows.append((str(obj.get(id_column)), float(out["churn_probability"]), ""))
        else:
            rows.append((str(obj.get(id_column)), None, str(out.get("error", "no answer for this line"))))
    return rows


def _split_s3(uri: str) -> tuple[str, str]:
    if not uri.startswith("s3://"):
        raise CloudBatchError(f"{uri!r} is not an s3:// URI; give s3://BUCKET/PREFIX/")
    bucket, _, key = uri[5:].partition("/")
    return bucket, key


class SageMakerBatch:
    """Transform jobs on the SageMaker model of a release, through the deploy target's boto3 clients.

    Parameters
    ----------
    target : SageMakerTarget
        Settings (role, bucket, image, region), clients and the model requests.
    instance_type, instance_count : str, int
        ``TransformResources``.
    max_payload_mb, max_concurrent : int
        ``MaxPayloadInMB``, ``MaxConcurrentTransforms`` (checked: product ≤ 100 MB).
    fmt : {"csv", "jsonl"}
        Input and output lines.
    poll_seconds, timeout : float
        How often to describe the job and how long to wait.
    """

    service = "SageMaker"

    def __init__(self, target, *, instance_type: str = "ml.m5.large", instance_count: int = 1, max_payload_mb: int = 6,
                 max_concurrent: int = 4, fmt: str = "csv", poll_seconds: float = 30.0, timeout: float = 24 * 3600.0):
        if fmt not in FORMATS:
            raise CloudBatchError(f"SageMaker batch format {fmt!r} is not one of {sorted(FORMATS)!r}")
        self.target = target
        self.instance_type = instance_type
        self.instance_count = instance_count
        self.max_payload_mb = max_payload_mb
        self.max_concurrent = max_concurrent
        self.fmt = fmt
        self.poll_seconds = poll_seconds
        self.timeout = timeout

    # ---- requests ---------------------------------------------------------------------------------
    def prefix(self, job: str) -> str:
        return f"s3://{self.target.settings['bucket']}/churnkit/batch/{job}"

    def transform_request(self, release: Release, job: str, input_uri: str, output_uri: str, id_column: str) -> dict:
        """The CreateTransformJob request of ``job``, in SageMaker's field names."""
        content_type, accept = FORMATS[self.fmt]
        return request("sagemaker", "CreateTransformJob", {
            "TransformJobName": job,
            "ModelName": self.target.model_name(release),
            "BatchStrategy": "MultiRecord",
            "MaxPayloadInMB": self.max_payload_mb,
            "MaxConcurrentTransforms": self.max_concurrent,
            "ModelClientConfig": {"InvocationsTimeoutInSeconds": 600, "InvocationsMaxRetries": 1},
            "TransformInput": {"DataSource": {"S3DataSource": {"S3DataType": "S3Prefix", "S3Uri": input_uri}},
                               "ContentType": content_type, "SplitType": "Line", "CompressionType": "None"},
            "TransformOutput": {"S3OutputPath": output_uri, "Accept": accept, "AssembleWith": "Line"},
            "TransformResources": {"InstanceType": self.instance_type, "InstanceCount": self.instance_count},
            "DataProcessing": data_processing(self.fmt, id_column),
            "Tags": [{"Key": "churnkit:model", "Value": release.model_name},
                     {"Key": "churnkit:version", "Value": release.version}],
        })

    def plan(self, release: Release, job: str, id_column: str, input_uri: str | None = None,
             staged: bytes | None = None, model_exists: bool = False) -> list[dict]:
        """Every request of a batch score: the staged input (when local), the model (unless it exists), the job.

        Limits are checked first (:func:`check_request`); nothing is sent.
        """
        reqs = []
        if input_uri is None:
            bucket = self.target.settings["bucket"]
            key = f"churnkit/batch/{job}/input/part-00000.{self.fmt}"
            body = f"<{len(staged or b'')} bytes of {self.fmt} lines>"
            reqs.append(request("s3", "PutObject", {"Bucket": bucket, "Key": key, "Body": body}))
            input_uri = f"s3://{bucket}/churnkit/batch/{job}/input/"
        if not model_exists:
            reqs += self.target._model_requests(release)
        job_req = self.transform_request(release, job, input_uri, f"{self.prefix(job)}/output/", id_column)
        check_request(job_req["request"])
        return reqs + [job_req]

    # ---- checks against the account -------------------------------------------------------------------
    def model_exists(self, release: Release) -> bool:
        try:
            self.target._call("sagemaker", "DescribeModel", {"ModelName": self.target.model_name(release)})
        except DeployTargetError as exc:
            if "could not find" in str(exc.__cause__).lower() or "validationexception" in str(exc.__cause__).lower():
                return False
            raise
        return True

    def check_bucket_region(self, bucket: str) -> None:
        loc = self.target._call("s3", "GetBucketLocation", {"Bucket": bucket}).get("LocationConstraint") or "us-east-1"
        check_region(self.service, f"bucket {bucket!r}", self.target.settings["region"], loc,
                     "use a bucket in the job's region (CHURNKIT_AWS_BUCKET) or set AWS_REGION to the bucket's region")

    def check_input(self, input_uri: str) -> int:
        """The number of files under ``input_uri``; CloudBatchError when there are none."""
        bucket, prefix = _split_s3(input_uri)
        self.check_bucket_region(bucket)
        listed = self.target._call("s3", "ListObjectsV2", {"Bucket": bucket, "Prefix": prefix, "MaxKeys": 1000})
        files = [o for o in listed.get("Contents", []) if not o["Key"].endswith("/") and o.get("Size", 0) > 0]
        if not files:
            raise CloudBatchError(f"input prefix {input_uri!r} has no files; Batch Transform would start, bill and "
                                  "write nothing. Point --input at the prefix holding the CSV lines (id first, then "
                                  "the model's columns in order) or give a local table to stage")
        return len(files)

    # ---- run ----------------------------------------------------------------------------------------
    def send(self, requests: list[dict], release: Release, staged: bytes | None = None) -> None:
        """Send planned requests: input upload, model (kept when it exists), job."""
        for req in requests:
            params = dict(req["request"])
            if req["operation"] == "PutObject" and "/batch/" in params["Key"]:
                params["Body"] = staged
                self.target._call("s3", "PutObject", params)
            elif req["api"] == "sagemaker" and req["operation"] == "CreateTransformJob":
                self.target._call("sagemaker", "CreateTransformJob", params)
            else:
                self.target.execute([req], release)

    def describe(self, job: str) -> dict:
        return self.target._call("sagemaker", "DescribeTransformJob", {"TransformJobName": job})

    def failure(self, job: str) -> tuple[str, list[str]]:
        """The describe call's FailureReason and the first lines the job logged (CloudWatch Logs)."""
        reason = self.describe(job).get("FailureReason", "")
        lines: list[str] = []
        try:
            events = self.target.client("logs").filter_log_events(
                logGroupName="/aws/sagemaker/TransformJobs", logStreamNamePrefix=f"{job}/", limit=ERROR_LINES)
            lines = [e["message"].rstrip() for e in events.get("events", [])][:ERROR_LINES]
        except Exception:  # no log group yet, or no permission to read it: the reason alone
            pass
        return reason, lines

    def wait(self, job: str, progress=None, sleep=None) -> JobReport:
        """Wait for ``job`` with progress; the report carries the output prefix."""
        hints = {"resume_hint": f"aws sagemaker wait transform-job-completed-or-stopped --transform-job-name {job}",
                 "stop_hint": f"aws sagemaker stop-transform-job --transform-job-name {job}"}
        kw = {"sleep": sleep} if sleep else {}
        state, log = wait_for_job(self.service, job, lambda: self.describe(job)["TransformJobStatus"], done=DONE,
                                  failed=FAILED, poll_seconds=self.poll_seconds, timeout=self.timeout, progress=progress,
                                  failure=lambda: self.failure(job), **hints, **kw)
        out = self.describe(job)["TransformOutput"]["S3OutputPath"]
        return JobReport("sagemaker", job, state, output_uri=out, states=log)

    def read_output(self, output_uri: str, id_column: str):
        """Every ``.out`` file under ``output_uri`` as one raw score frame (files in key order)."""
        bucket, prefix = _split_s3(output_uri)
        rows = []
        token = None
        while True:
            params = {"Bucket": bucket, "Prefix": prefix, **({"ContinuationToken": token} if token else {})}
            listed = self.target._call("s3", "ListObjectsV2", params)
            for obj in sorted(listed.get("Contents", []), key=lambda o: o["Key"]):
                if obj["Key"].endswith(".out"):
                    body = self.target._call("s3", "GetObject", {"Bucket": bucket, "Key": obj["Key"]})["Body"].read()
                    try:
                        rows += parse_out(body.decode("utf-8"), self.fmt, id_column)
                    except (ValueError, AttributeError) as exc:  # UnicodeDecodeError and bad JSON are ValueErrors
                        raise CloudBatchError(f"s3://{bucket}/{obj['Key']} is not Batch Transform output of the kit's "
                                              f"container ({exc}); was the output prefix written by something "
                                              "else?") from None
            token = listed.get("NextContinuationToken")
            if not token:
                break
        return raw_frame(rows)
