"""Vertex AI batch prediction through the GAPIC JobServiceClient (REST) with only its HTTP adapter replaced, job
bodies shaped as the REST reference documents them; the staged input and the output in gcp-storage-emulator; the
container answering the job's requests the way Vertex sends them; the output files back as the local engine's rows.

Response shapes: https://cloud.google.com/vertex-ai/docs/reference/rest/v1/projects.locations.batchPredictionJobs
(BatchPredictionJob: name, displayName, state, outputInfo.gcsOutputDirectory, completionStats with int64 counts
as strings, error as google.rpc.Status) and the output layout of BatchPredictionJob.OutputConfig (aiplatform_v1).
"""

from __future__ import annotations

import json
import random

import httpx
import pytest
import requests
from batch.cloud_support import assert_same_output
from conftest import free_port
from deploy_support import cloud_store
from serve_support import CHURNKIT, Server, clean_env

from churnkit.exceptions import CloudBatchError, CloudBatchInterrupted, CloudBatchJobError, CloudBatchLimitError

PROJECT, REGION, BUCKET = "churn-proj", "europe-west4", "churnkit-batch"
ENV = {"GOOGLE_CLOUD_PROJECT": PROJECT, "CHURNKIT_GCP_REGION": REGION, "CHURNKIT_GCP_BUCKET": BUCKET,
       "CHURNKIT_GCP_IMAGE_URI": f"{REGION}-docker.pkg.dev/{PROJECT}/churnkit/serve:1"}
MODEL = f"projects/{PROJECT}/locations/{REGION}/models/4242"


class FakeVertexHttp(requests.adapters.BaseAdapter):
    """The aiplatform REST API for batch prediction jobs: create, then each get moves the job one state on."""

    def __init__(self, states=("JOB_STATE_PENDING", "JOB_STATE_RUNNING", "JOB_STATE_SUCCEEDED"), error=None):
        super().__init__()
        self.states, self.error = list(states), error
        self.created: list[dict] = []
        self.gets = 0
        self.output_dir = ""

    def send(self, request, **kw):
        name = f"projects/{PROJECT}/locations/{REGION}/batchPredictionJobs/7001"
        path = request.url.split("?")[0]  # the client adds ?$alt=json;enum-encoding=int
        if request.method == "POST" and path.endswith("/batchPredictionJobs"):
            body = json.loads(request.body)
            self.created.append(body)
            job = {**body, "name": name, "state": "JOB_STATE_QUEUED", "createTime": "2026-11-30T02:00:00.000Z"}
        else:
            assert request.method == "GET" and path.endswith(name), request.url
            state = self.states[min(self.gets, len(self.states) - 1)]
            self.gets += 1
            job = {**self.created[-1], "name": name, "state": state,
                   "outputInfo": {"gcsOutputDirectory": self.output_dir},
                   "completionStats": {"successfulCount": "0", "failedCount": "0", "incompleteCount": "0"}}
            if state == "JOB_STATE_FAILED" and self.error:
                job["error"] = self.error
        resp = requests.Response()
        resp.status_code, resp.url, resp.request = 200, request.url, request
        resp.headers["content-type"] = "application/json"
        resp._content = json.dumps(job).encode()
        return resp

    def close(self):
        pass


@pytest.fixture
def gcp(tmp_path, monkeypatch):
    from gcp_storage_emulator.server import create_server
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import storage

    config = cloud_store(tmp_path, monkeypatch, ENV)
    port = free_port()
    server = create_server("127.0.0.1", port, in_memory=True, default_bucket=BUCKET)
    server.start()
    client = storage.Client(project=PROJECT, credentials=AnonymousCredentials(),
                            client_options={"api_endpoint": f"http://127.0.0.1:{port}"})
    yield config, client
    server.stop()


def _batch(config, storage_client, http=None, **kw):
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import aiplatform_v1

    from churnkit.batch.vertex import VertexBatch
    from churnkit.deploy import get_target

    target = get_target("vertex", config=config, credentials=AnonymousCredentials())
    client = aiplatform_v1.JobServiceClient(credentials=AnonymousCredentials(), transport="rest",
                                            client_options={"api_endpoint": f"{REGION}-aiplatform.googleapis.com"})
    client._transport._session.mount("https://", http or FakeVertexHttp())  # only the HTTP transport is replaced
    return VertexBatch(target, client=client, storage_client=storage_client, poll_seconds=0, **kw)


def _release(config):
    from churnkit.deploy.base import resolve_release

    return resolve_release("models:/churn/1", config=config)


def test_plan_in_gapic_field_names_with_instance_config(gcp):
    from google.cloud import aiplatform_v1

    config, storage_client = gcp
    plan = _batch(config, storage_client).plan(_release(config), "churnkit-churn-v1-x", "customer_id", staged=b"{}\n")
    assert [r["operation"] for r in plan] == ["objects.insert", "ModelService.UploadModel",
                                             "JobService.CreateBatchPredictionJob"]
    job = plan[-1]["request"]["batch_prediction_job"]
    assert job["instance_config"] == {"instance_type": "object", "key_field": "customer_id"}
    assert job["input_config"] == {"instances_format": "jsonl", "gcs_source": {
        "uris": [f"gs://{BUCKET}/churnkit/batch/churnkit-churn-v1-x/input/part-00000.jsonl"]}}
    aiplatform_v1.BatchPredictionJob({**job, "model": MODEL})  # every field is one the GAPIC message has


@pytest.mark.parametrize(("kw", "model", "text"), [
    ({}, "projects/p/locations/us-central1/models/1", "'europe-west4' but model"),
    ({"machine_type": "ml.m5.large"}, MODEL, "'ml.m5.large' is not a Compute Engine machine type"),
    ({"starting_replica_count": 5, "max_replica_count": 2}, MODEL, "at most max_replica_count 2"),
    ({"batch_size": 0}, MODEL, "batch_size 0"),
])
def test_limits_refused_before_anything_is_sent(gcp, kw, model, text):
    config, storage_client = gcp
    http = FakeVertexHttp()
    with pytest.raises(CloudBatchLimitError, match=text):
        _batch(config, storage_client, http, **kw).plan(_release(config), "job", "customer_id", model=model,
                                                         input_uris=["gs://b/x.jsonl"])
    assert http.created == []


def test_failed_job_gives_the_error_and_the_first_error_lines(gcp):
    config, storage_client = gcp
    # google.rpc.Status on the job; errors_*.jsonl lines: the instance plus its error (OutputConfig docs)
    http = FakeVertexHttp(states=("JOB_STATE_RUNNING", "JOB_STATE_FAILED"),
                          error={"code": 3, "message": "Failed to run inference job. Model server returned 422."})
    batch = _batch(config, storage_client, http)
    http.output_dir = f"gs://{BUCKET}/out/prediction-churn-v1-x"
    storage_client.bucket(BUCKET).blob("out/prediction-churn-v1-x/errors_00001.jsonl").upload_from_string(
        json.dumps({"key": "c-1", "error": {"code": 3, "message": "column 'tenure': expected a number"}}) + "\n")
    name = batch.submit(batch.plan(_release(config), "job-f", "customer_id", model=MODEL,
                                   input_uris=["gs://b/x.jsonl"])[-1])
    with pytest.raises(CloudBatchJobError, match="Model server returned 422") as err:
        batch.wait(name, progress=lambda text: None)
    assert err.value.job == "7001" and "expected a number" in err.value.error_lines[0]
    raw = batch.read_output(http.output_dir)
    assert raw["id"].tolist() == ["c-1"] and raw["churn_probability"].isna().all()
    assert raw["error"].tolist() == ["code 3: column 'tenure': expected a number"]


def test_empty_prefix_and_interrupted_wait(gcp):
    config, storage_client = gcp
    batch = _batch(config, storage_client, FakeVertexHttp(states=("JOB_STATE_RUNNING",)))
    with pytest.raises(CloudBatchError, match=f"input prefix 'gs://{BUCKET}/nothing/' has no files"):
        batch.check_input(f"gs://{BUCKET}/nothing/")
    name = batch.submit(batch.plan(_release(config), "job-i", "customer_id", model=MODEL,
                                   input_uris=["gs://b/x.jsonl"])[-1])

    def interrupt(_):
        raise KeyboardInterrupt

    with pytest.raises(CloudBatchInterrupted) as err:
        batch.wait(name, progress=lambda text: None, sleep=interrupt)
    assert err.value.job == "7001" and f"{name}:cancel" in err.value.stop


@pytest.fixture(scope="module")
def container(tmp_path_factory):
    """The serving container as Vertex starts it (AIP_* routes), serving the same v1 as every test's registry."""
    from deploy_support import registry_store

    base = tmp_path_factory.mktemp("vertex-container")
    runs = registry_store(base)
    server = Server([CHURNKIT, "serve", "--model", "models:/churn/1", "--port", "0", "--runs-dir", str(runs)],
                    clean_env(AIP_PREDICT_ROUTE="/predict", AIP_HEALTH_ROUTE="/ping"), base / "serve.log")
    yield server
    server.close()


def test_score_on_target_end_to_end_in_any_order(gcp, tmp_path, container):
    from churnkit.batch.run import score_on_target
    from churnkit.batch.run import score_base
    from churnkit.data import synth_month

    config, storage_client = gcp
    frame = synth_month(rows=60, month=8, seed=5, drift="new_category")
    frame["tenure"] = frame["tenure"].astype(object)
    frame.loc[3, "tenure"] = "n/a"  # refused by the kit before sending: never billed
    frame.to_csv(tmp_path / "month.csv", index=False)
    http = FakeVertexHttp()
    batch = _batch(config, storage_client, http, batch_size=16)
    batch.model_resource = lambda release: MODEL  # the model is uploaded already (Model.list is gRPC, not faked here)
    waited = batch.wait

    def wait(name, progress=None, sleep=None):  # Vertex's side while the job runs: read, answer, write in any order
        job = http.created[-1]
        assert job["instanceConfig"] == {"instanceType": "object", "keyField": "customer_id"}  # the REST body sent
        uri = job["inputConfig"]["gcsSource"]["uris"][0]
        lines = [json.loads(x) for x in storage_client.bucket(BUCKET).blob(uri[len(f"gs://{BUCKET}/"):])
                 .download_as_bytes().decode().splitlines()]
        assert len(lines) == 59
        out = []
        for i in range(0, len(lines), 16):  # batch_size instances per request, without the key
            chunk = lines[i:i + 16]
            resp = httpx.post(container.url + "/predict",
                              json={"instances": [{k: v for k, v in o.items() if k != "customer_id"} for o in chunk]})
            assert resp.status_code == 200, resp.text
            out += [{"key": o["customer_id"], "prediction": p} for o, p in zip(chunk, resp.json()["predictions"])]
        random.Random(1).shuffle(out)  # batch prediction does not keep the input order
        folder = job["outputConfig"]["gcsDestination"]["outputUriPrefix"] + "prediction-churn-v1-2026_11_30T02_00_00_000Z"
        http.output_dir = folder
        prefix = folder[len(f"gs://{BUCKET}/"):]
        for n, part in enumerate((out[:30], out[30:]), start=1):
            storage_client.bucket(BUCKET).blob(f"{prefix}/predictions_0000{n}.jsonl").upload_from_string(
                "".join(json.dumps(o) + "\n" for o in part))
        return waited(name, progress=progress)

    batch.wait = wait
    result = score_on_target("vertex", "models:/churn/1", str(tmp_path / "month.csv"), str(tmp_path / "cloud"),
                             id_column="customer_id", reasons=2, month="2026-11", config=config, service=batch,
                             progress=lambda text: None)
    s = result.summary
    assert (s.rows_in, s.rows_scored, s.rows_refused) == (60, 59, 1) and result.engine == "vertex"
    assert "JOB_STATE_PENDING → JOB_STATE_RUNNING → JOB_STATE_SUCCEEDED" in result.notes[0]
    score_base("models:/churn/1", str(tmp_path / "month.csv"), str(tmp_path / "local"), id_column="customer_id",
               reasons=2, month="2026-11", workers=1, progress=False, config=config)
    assert_same_output(tmp_path / "local", tmp_path / "cloud")
