"""SageMaker Batch Transform: requests validated by botocore against moto, limits refused before anything is sent,
and a round trip: the kit stages the table in S3, creates the model and the transform job, the container in batch
mode answers the job's mini-batches (tests/batch_transform_support.py drives it as the service does), and the
``.out`` files come back as the same rows and scores as the local scorer."""

from __future__ import annotations

import time

import pytest
from batch_transform_support import run_transform
from batch.cloud_support import assert_same_output, cloud_output, local_output
from deploy_support import cloud_store
from serve_support import CHURNKIT, Server, clean_env

from churnkit.exceptions import CloudBatchError, CloudBatchInterrupted, CloudBatchJobError, CloudBatchLimitError

REGION = "us-east-1"
ACCOUNT = "123456789012"
BUCKET = "churnkit-batch-bucket"
ENV = {
    "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_SESSION_TOKEN": "testing",
    "AWS_DEFAULT_REGION": REGION, "AWS_EC2_METADATA_DISABLED": "true",
    "CHURNKIT_AWS_ROLE_ARN": f"arn:aws:iam::{ACCOUNT}:role/churnkit-sagemaker",
    "CHURNKIT_AWS_BUCKET": BUCKET,
    "CHURNKIT_AWS_IMAGE_URI": f"{ACCOUNT}.dkr.ecr.{REGION}.amazonaws.com/churnkit:0.1.0",
}


@pytest.fixture
def aws(tmp_path, monkeypatch):
    import boto3
    from moto import mock_aws

    monkeypatch.delenv("AWS_REGION", raising=False)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    config = cloud_store(tmp_path, monkeypatch, ENV)
    with mock_aws():
        boto3.client("s3", region_name=REGION).create_bucket(Bucket=BUCKET)
        yield config


@pytest.fixture(scope="module")
def container(tmp_path_factory):
    """The serving container in batch mode, as a transform job starts it (the same v1 as every test's registry)."""
    from deploy_support import registry_store

    base = tmp_path_factory.mktemp("container")
    runs = registry_store(base)
    server = Server([CHURNKIT, "serve", "--model", "models:/churn/1", "--port", "0", "--runs-dir", str(runs)],
                    clean_env(SAGEMAKER_BATCH="true", SAGEMAKER_MAX_PAYLOAD_IN_MB="1"), base / "serve.log")
    yield server
    server.close()


def _drive(batch, job: str, server) -> dict:
    """Run the job's data path against the container (what the service does between Create and Completed)."""
    import boto3

    described = batch.describe(job)
    job_request = {k: described[k] for k in ("TransformInput", "TransformOutput", "DataProcessing")}
    job_request["MaxPayloadInMB"] = None  # left to the container: /execution-parameters answers
    return run_transform(server.url, job_request, boto3.client("s3", region_name=REGION))


def _batch(config, **kw):
    from churnkit.batch.sagemaker import SageMakerBatch
    from churnkit.deploy import get_target

    return SageMakerBatch(get_target("sagemaker", config=config, poll_seconds=0), poll_seconds=0, **kw)


def _release(config):
    from churnkit.deploy.base import resolve_release

    return resolve_release("models:/churn/1", config=config)


def _writes(batch) -> list[tuple[str, dict]]:
    calls = []

    def hook(params, model, **_):
        if model.name.startswith(("Create", "Put", "Delete", "Stop")):
            calls.append((model.name, params))

    for service in ("sagemaker", "s3"):
        batch.target.client(service).meta.events.register("before-parameter-build", hook)
    return calls


def test_plan_is_what_botocore_accepts(aws):
    from botocore.validate import ParamValidator
    import botocore.session

    batch = _batch(aws, max_payload_mb=10, max_concurrent=8)
    plan = batch.plan(_release(aws), "churnkit-churn-v1-20260107", "customer_id", staged=b"1,2\n")
    assert [r["operation"] for r in plan] == ["PutObject", "PutObject", "CreateModel", "CreateTransformJob"]
    job = plan[-1]["request"]
    assert job["BatchStrategy"] == "MultiRecord" and job["MaxPayloadInMB"] == 10 and job["MaxConcurrentTransforms"] == 8
    assert job["TransformInput"]["SplitType"] == "Line" and job["TransformInput"]["ContentType"] == "text/csv"
    assert job["DataProcessing"] == {"InputFilter": "$[1:]", "JoinSource": "Input", "OutputFilter": "$[0,-1]"}
    assert job["TransformInput"]["DataSource"]["S3DataSource"]["S3Uri"] == \
        f"s3://{BUCKET}/churnkit/batch/churnkit-churn-v1-20260107/input/"
    model = botocore.session.get_session().get_service_model("sagemaker")
    for req in plan:
        if req["api"] == "sagemaker":
            report = ParamValidator().validate(req["request"], model.operation_model(req["operation"]).input_shape)
            assert not report.has_errors(), report.generate_report()


@pytest.mark.parametrize(("kw", "field", "text"), [
    ({"max_payload_mb": 20, "max_concurrent": 6}, "MaxPayloadInMB", "20 × MaxConcurrentTransforms 6 = 120 MB"),
    ({"max_payload_mb": 0}, "MaxPayloadInMB", "chunked"),
    ({"instance_type": "ml.t2.medium"}, "InstanceType", "'ml.t2.medium' is not offered for transform jobs"),
    ({"fmt": "jsonl"}, "OutputFilter", "over SageMaker's 63"),
])
def test_limits_refused_before_anything_is_sent(aws, kw, field, text):
    batch = _batch(aws, **kw)
    writes = _writes(batch)
    id_column = "customer_identifier_from_the_crm_export_of_the_month" if kw.get("fmt") else "customer_id"
    with pytest.raises(CloudBatchLimitError, match=text) as err:
        batch.plan(_release(aws), "job-1", id_column, staged=b"")
    assert err.value.field == field and writes == []


def test_empty_prefix_and_region_mismatch(aws):
    import boto3

    batch = _batch(aws)
    with pytest.raises(CloudBatchError, match=r"input prefix 's3://churnkit-batch-bucket/in/' has no files"):
        batch.check_input(f"s3://{BUCKET}/in/")
    boto3.client("s3", region_name="eu-west-1").create_bucket(
        Bucket="eu-data", CreateBucketConfiguration={"LocationConstraint": "eu-west-1"})
    with pytest.raises(CloudBatchLimitError, match="'us-east-1' but bucket 'eu-data' is in 'eu-west-1'"):
        batch.check_input("s3://eu-data/in/")


def test_round_trip_through_the_container(aws, tmp_path, container):
    from churnkit import registry
    from churnkit.batch.cloud import stage_csv
    from churnkit.data import synth_month

    frame = synth_month(rows=120, month=5, seed=21, drift="new_category")
    frame["tenure"] = frame["tenure"].astype(object)
    frame.loc[7, "tenure"] = "seven"  # text in a numeric column: refused with its reason, the rest scored
    release = _release(aws)
    loaded = registry.load_model(release.uri, aws)
    batch = _batch(aws)
    job = "churnkit-churn-v1-roundtrip"
    staged = stage_csv(frame, loaded.schema.names, "customer_id")
    plan = batch.plan(release, job, "customer_id", staged=staged)
    batch.send(plan, release, staged)
    assert batch.check_input(f"{batch.prefix(job)}/input/") == 1
    report = batch.wait(job, progress=lambda text: None)
    assert report.state == "Completed" and report.output_uri.endswith(f"/{job}/output/")

    counts = _drive(batch, job, container)
    assert counts["lines"] == 120 and counts["payload_mb"] == 1

    raw = batch.read_output(report.output_uri, "customer_id")
    assert raw["id"].tolist() == frame["customer_id"].tolist()  # every row, in order, the id carried through
    refused = raw[raw["error"] != ""]
    assert refused["id"].tolist() == [frame.loc[7, "customer_id"]] and "'seven'" in refused["error"].iloc[0]
    # the raw .out lines become the kit's Parquet: the same rows, scores, ranks and reasons as the local engine
    frame.to_csv(tmp_path / "month.csv", index=False)
    local_output(loaded, tmp_path / "month.csv", tmp_path / "local")
    summary = cloud_output(loaded, tmp_path / "month.csv", raw, tmp_path / "cloud", "SageMaker")
    assert (summary.rows_in, summary.rows_scored, summary.rows_refused) == (120, 119, 1)
    assert_same_output(tmp_path / "local", tmp_path / "cloud")


def test_failed_job_names_the_reason_and_log_lines(aws):
    import boto3
    from moto.sagemaker.models import sagemaker_backends

    release = _release(aws)
    batch = _batch(aws)
    batch.send(batch.plan(release, "job-fails", "customer_id", staged=b"a,1\n"), release, b"a,1\n")
    job = sagemaker_backends[ACCOUNT][REGION].transform_jobs["job-fails"]
    job.transform_job_status = "Failed"
    job.failure_reason = "ClientError: See job logs for more information"  # DescribeTransformJob's FailureReason
    logs = boto3.client("logs", region_name=REGION)
    logs.create_log_group(logGroupName="/aws/sagemaker/TransformJobs")
    logs.create_log_stream(logGroupName="/aws/sagemaker/TransformJobs", logStreamName="job-fails/i-0abc")
    logs.put_log_events(logGroupName="/aws/sagemaker/TransformJobs", logStreamName="job-fails/i-0abc",
                        logEvents=[{"timestamp": int(time.time() * 1000), "message": "model v1 cannot score: IntegrityError"}])
    with pytest.raises(CloudBatchJobError, match="ended Failed: ClientError") as err:
        batch.wait("job-fails", progress=lambda text: None)
    assert err.value.job == "job-fails" and err.value.error_lines == ["model v1 cannot score: IntegrityError"]


def test_interrupted_wait_names_the_job_to_resume_or_stop(aws):
    from moto.sagemaker.models import sagemaker_backends

    release = _release(aws)
    batch = _batch(aws)
    batch.send(batch.plan(release, "job-long", "customer_id", staged=b"a,1\n"), release, b"a,1\n")
    sagemaker_backends[ACCOUNT][REGION].transform_jobs["job-long"].transform_job_status = "InProgress"

    def interrupt(_):
        raise KeyboardInterrupt

    with pytest.raises(CloudBatchInterrupted) as err:
        batch.wait("job-long", progress=lambda text: None, sleep=interrupt)
    assert err.value.job == "job-long" and "stop-transform-job --transform-job-name job-long" in str(err.value)


def test_score_on_target_end_to_end(aws, tmp_path, container):
    from churnkit.batch.run import score_on_target
    from churnkit.batch.run import score_base
    from churnkit.data import synth_month

    frame = synth_month(rows=150, month=7, seed=13, drift="new_category")
    frame.loc[4, "customer_id"] = None  # no id: refused by the kit, never sent
    frame.to_csv(tmp_path / "month.csv", index=False)
    batch = _batch(aws)
    waited = batch.wait

    def wait(job, progress=None, sleep=None):
        _drive(batch, job, container)
        return waited(job, progress=progress)

    batch.wait = wait
    shown = []
    result = score_on_target("sagemaker", "models:/churn/1", str(tmp_path / "month.csv"), str(tmp_path / "cloud"),
                             id_column="customer_id", reasons=2, month="2026-11", config=aws, service=batch,
                             progress=shown.append)
    assert (result.summary.rows_in, result.summary.rows_scored, result.summary.rows_refused) == (150, 149, 1)
    assert result.engine == "sagemaker" and "Completed" in result.notes[0] and shown
    local = score_base("models:/churn/1", str(tmp_path / "month.csv"), str(tmp_path / "local"), id_column="customer_id",
                       reasons=2, month="2026-11", workers=1, progress=False, config=aws)
    assert local.summary.rows_scored == 149
    assert_same_output(tmp_path / "local", tmp_path / "cloud")


def test_cli_plan_and_limits(aws, tmp_path):
    import json

    from click.testing import CliRunner

    from churnkit.cli import main
    from churnkit.data import synth_month

    synth_month(rows=20, month=7, seed=1).to_csv(tmp_path / "m.csv", index=False)
    args = ["score", "--model", "models:/churn/1", "--input", str(tmp_path / "m.csv"), "--output", str(tmp_path / "o"),
            "--id-column", "customer_id", "--target", "sagemaker", "--runs-dir", str(aws.runs_dir)]
    res = CliRunner().invoke(main, [*args, "--plan"])
    assert res.exit_code == 0, res.output
    plan = json.loads(res.output)
    assert plan["rows_to_send"] == 20 and plan["requests"][-1]["operation"] == "CreateTransformJob"
    assert plan["requests"][-1]["request"]["DataProcessing"]["OutputFilter"] == "$[0,-1]"
    assert not (tmp_path / "o").exists()
    res = CliRunner().invoke(main, [*args, "--plan", "--batch-option", "max_payload_mb=20",
                                    "--batch-option", "max_concurrent=6"])
    assert res.exit_code == 2 and "Traceback" not in res.output
    assert "MaxPayloadInMB 20 × MaxConcurrentTransforms 6 = 120 MB is over Batch Transform's 100 MB" in res.output
    res = CliRunner().invoke(main, [*args, "--batch-option", "gpus=2"])
    assert res.exit_code == 1 and "settings: instance_type, instance_count" in res.output


def test_unreachable_service_is_one_line_in_bounded_time(aws, tmp_path):
    import boto3
    from botocore.config import Config
    from conftest import free_port

    from churnkit.batch.run import score_on_target
    from churnkit.data import synth_month

    synth_month(rows=10, month=7, seed=2).to_csv(tmp_path / "m.csv", index=False)
    batch = _batch(aws)
    dead = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    quick = Config(connect_timeout=1, read_timeout=1, retries={"max_attempts": 1})
    for service in ("s3", "sagemaker"):
        batch.target._clients[service] = boto3.client(service, region_name=REGION, endpoint_url=dead, config=quick)
    t0 = time.monotonic()
    with pytest.raises(CloudBatchError, match="SageMaker cannot be reached") as err:
        score_on_target("sagemaker", "models:/churn/1", str(tmp_path / "m.csv"), str(tmp_path / "out"),
                        id_column="customer_id", reasons=0, config=aws, service=batch, progress=lambda t: None)
    assert time.monotonic() - t0 < 60 and "\n" not in str(err.value)
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").glob("score_month=*"))


def test_hostile_output_files(aws):
    import boto3

    from churnkit.batch.sagemaker import parse_out

    batch = _batch(aws)
    s3 = boto3.client("s3", region_name=REGION)
    # a quoted id with a comma and a newline-free error survive; a missing answer is refused, not invented
    rows = parse_out('"a,1",0.25\nb,"error: column \'tenure\': expected a number"\nc\n')
    assert rows == [("a,1", 0.25, ""), ("b", None, "column 'tenure': expected a number"), ("c", None, "no answer for this line")]
    s3.put_object(Bucket=BUCKET, Key="churnkit/batch/j/output/part.csv.out", Body=b"\xff\xfe\x00garbage")
    with pytest.raises(CloudBatchError, match="part.csv.out is not Batch Transform output"):
        batch.read_output(f"s3://{BUCKET}/churnkit/batch/j/output/", "customer_id")
