"""Azure ML batch endpoints: azure-ai-ml's MLClient over an in-memory ARM transport (the SDK's own request and
response handling), the kit's scoring script run on staged files as the batch executor runs it, and its
predictions.csv back as the local engine's rows.

Response shapes: the ARM bodies of batchEndpoints / deployments (properties.provisioningState, scoringUri) as in
https://learn.microsoft.com/rest/api/azureml/batch-endpoints and .../batch-deployments; the invoke answer
(``{"id", "name", "type", "properties": {"status"}}``, the wire dict BatchJob._from_rest_object reads) and
jobs (properties.jobType, status) from https://learn.microsoft.com/rest/api/azureml/jobs.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from batch.cloud_support import assert_same_output, cloud_output, local_output
from deploy.test_azureml import ENV, WS, FakeCredential, _transport_class
from deploy_support import cloud_store

from churnkit.exceptions import CloudBatchInterrupted, CloudBatchJobError, CloudBatchLimitError

REPO = Path(__file__).resolve().parents[2]


def _arm(statuses=("Queued", "Running", "Completed"), compute_location="westeurope", max_nodes=4):
    base = _transport_class()

    class BatchArm(base):
        def __init__(self):
            super().__init__(models=(("churn", "1"),))
            self.statuses, self.gets, self.invoked = list(statuses), 0, []

        def request(self, method, url, data=None, **kwargs):
            if "inference.ml.azure.com" in url:  # the batch endpoint's scoring URI: invoke
                body = json.loads(data)
                self.invoked.append((url, kwargs.get("headers") or {}, body))
                name = body["properties"].get("name") or "job-azure"
                return self._reply(url, {"id": f"{WS}/jobs/{name}", "name": name,
                                         "type": "Microsoft.MachineLearningServices/workspaces/jobs",
                                         "properties": {"status": "Queued"}})
            return super().request(method, url, data, **kwargs)

        def _reply(self, url, body, status=200):
            import io

            import requests

            resp = requests.Response()
            resp.status_code, resp.reason, resp.url = status, "OK", url
            resp.headers.update({"content-type": "application/json", "x-ms-request-id": "1"})
            resp._content = json.dumps(body).encode()
            resp._content_consumed = True
            resp.raw = io.BytesIO(resp._content)
            return resp

        def _answer(self, request, method, path, body):
            if method == "GET" and path.endswith("/computes/churnkit-batch"):
                return self._reply(request["url"], {
                    "id": path, "name": "churnkit-batch", "location": compute_location,
                    "properties": {"computeType": "AmlCompute", "computeLocation": compute_location,
                                   "properties": {"vmSize": "STANDARD_DS3_V2", "scaleSettings": {
                                       "maxNodeCount": max_nodes, "minNodeCount": 0,
                                       "nodeIdleTimeBeforeScaleDown": "PT120S"}}}})
            if method == "GET" and "/codes/churnkit-batch-score/versions/" in path:
                return self._reply(request["url"], {"id": path, "name": path.rsplit("/", 1)[-1], "properties": {
                    "codeUri": "https://acct.blob.core.windows.net/azureml/code/batch", "isAnonymous": False}})
            if method == "GET" and "/jobs/" in path:
                status = self.statuses[min(self.gets, len(self.statuses) - 1)]
                self.gets += 1
                return self._reply(request["url"], {"id": path, "name": path.rsplit("/", 1)[-1], "properties": {
                    "jobType": "Pipeline", "status": status, "experimentName": "churn-batch", "jobs": {},
                    "inputs": {}, "outputs": {}, "settings": {}}})
            answer = super()._answer(request, method, path, body)
            if method == "PUT" and "/batchEndpoints/" in path and "/deployments/" not in path:
                stored = self.resources[path]
                stored["properties"]["scoringUri"] = f"https://{stored['name']}.westeurope.inference.ml.azure.com/jobs"
                return self._reply(request["url"], stored)
            return answer

    return BatchArm()


@pytest.fixture
def azure(tmp_path, monkeypatch):
    return cloud_store(tmp_path, monkeypatch, ENV)


def _batch(config, arm, **kw):
    from churnkit.batch.azureml import AzureMLBatch
    from churnkit.deploy import get_target

    target = get_target("azureml", config=config, credential=FakeCredential(), poll_seconds=0, wait_timeout=5,
                        client_kwargs={"transport": arm})
    return AzureMLBatch(target, poll_seconds=0, **kw)


def _release(config):
    from churnkit.deploy.base import resolve_release

    return resolve_release("models:/churn/1", config=config)


def test_plan_names_the_deployment_settings_and_the_invoke_input(azure):
    plan = _batch(azure, _arm()).plan(_release(azure), "churn-v1-2026-11", "azureml://datastores/in/paths/m/")
    assert [r["operation"] for r in plan] == ["code.create_or_update", "batch_endpoints.begin_create_or_update",
                                             "batch_deployments.begin_create_or_update", "batch_endpoints.invoke"]
    dep = plan[2]["request"]["ModelBatchDeployment"]
    assert dep["endpoint_name"] == "churn-batch" and dep["compute"] == "azureml:churnkit-batch"
    assert dep["code_configuration"]["scoring_script"] == "batch_score.py"
    settings = dep["settings"]
    assert settings["output_action"] == "append_row" and settings["output_file_name"] == "predictions.csv"
    assert settings["mini_batch_size"] == 2 and settings["max_concurrency_per_instance"] == 2
    assert settings["retry_settings"] == {"max_retries": 2, "timeout": 600}
    assert plan[3]["request"]["input"] == {"type": "uri_folder", "path": "azureml://datastores/in/paths/m/"}


def test_submit_and_wait_through_the_sdk(azure):
    arm = _arm()
    batch = _batch(azure, arm)
    batch.check_compute()
    job = batch.submit(_release(azure), "churn-v1-job", "azureml://datastores/workspaceblobstore/paths/in/")
    assert job == "churn-v1-job"
    puts = {path.rsplit("/", 1)[-1]: b for m, path, b in arm.log if m == "PUT"}
    props = puts["v1"]["properties"]
    assert props["outputAction"] == "AppendRow" and props["outputFileName"] == "predictions.csv"
    assert props["codeConfiguration"]["scoringScript"] == "batch_score.py"
    url, headers, body = arm.invoked[-1]
    assert url == "https://churn-batch.westeurope.inference.ml.azure.com/jobs" and headers["azureml-model-deployment"] == "v1"
    assert "workspaceblobstore/paths/in/" in json.dumps(body["properties"]["inputData"])
    report = batch.wait(job, progress=lambda text: None)
    assert [s for _, s in report.states] == ["Queued", "Running", "Completed"]


def test_limits_compute_region_and_nodes(azure):
    with pytest.raises(CloudBatchLimitError, match="mini_batch_size 0"):
        _batch(azure, _arm(), mini_batch_size=0).plan(_release(azure), "j", "azureml://x")
    with pytest.raises(CloudBatchLimitError, match="'westeurope' but compute cluster 'churnkit-batch' is in 'eastus'"):
        _batch(azure, _arm(compute_location="eastus")).check_compute()
    with pytest.raises(CloudBatchLimitError, match="instance_count 8 is more than"):
        _batch(azure, _arm(), instance_count=8).check_compute()


def test_failed_and_interrupted_jobs(azure, tmp_path):
    batch = _batch(azure, _arm(statuses=("Running", "Failed")))

    def download(job, download_path, **kw):  # the job's logs as jobs.download lays them out
        logs = Path(download_path) / "artifacts" / "logs"
        logs.mkdir(parents=True)
        (logs / "job_error.txt").write_text("Error in run(): ModuleNotFoundError: No module named 'churnkit'\n")

    batch.failure = lambda job: type(batch).failure(batch, job, download=download)
    with pytest.raises(CloudBatchJobError, match="ended Failed: status Failed") as err:
        batch.wait("churn-v1-job", progress=lambda text: None)
    assert err.value.error_lines == ["Error in run(): ModuleNotFoundError: No module named 'churnkit'"]

    def interrupt(_):
        raise KeyboardInterrupt

    with pytest.raises(CloudBatchInterrupted) as stopped:
        _batch(azure, _arm(statuses=("Running",))).wait("churn-v1-job", progress=lambda t: None, sleep=interrupt)
    assert "az ml job cancel --name churn-v1-job" in stopped.value.stop


def test_scoring_script_round_trip(azure, tmp_path, monkeypatch):
    import importlib.util

    from churnkit import registry
    from churnkit.batch.azureml import read_predictions
    from churnkit.data import synth_month
    from churnkit.deploy.base import export_release

    release = _release(azure)
    loaded = registry.load_model(release.uri, azure)
    model_dir = export_release(release, tmp_path / "model" / "churn", azure)
    monkeypatch.setenv("AZUREML_MODEL_DIR", str(tmp_path / "model"))
    spec = importlib.util.spec_from_file_location("batch_score", REPO / "templates" / "azureml" / "batch_score.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    script.init()
    assert model_dir.is_dir()

    frame = synth_month(rows=100, month=6, seed=4, drift="new_category")
    frame.to_csv(tmp_path / "month.csv", index=False)
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    cols = ["customer_id", *loaded.schema.names]
    frame[cols].iloc[:60].to_csv(inputs / "part-0.csv", index=False)  # staged: the id first, then the model's columns
    frame[cols].iloc[60:].to_csv(inputs / "part-1.csv", index=False)
    out = tmp_path / "score"
    out.mkdir()
    lines = script.run([str(inputs / "part-0.csv")]) + script.run([str(inputs / "part-1.csv")])
    (out / "predictions.csv").write_text("\n".join(lines) + "\n")  # append_row: the returned lines

    raw = read_predictions(out)
    assert raw["id"].tolist() == frame["customer_id"].tolist() and (raw["error"] == "").all()
    local_output(loaded, tmp_path / "month.csv", tmp_path / "local")
    summary = cloud_output(loaded, tmp_path / "month.csv", raw, tmp_path / "cloud", "Azure ML")
    assert (summary.rows_in, summary.rows_scored, summary.rows_refused) == (100, 100, 0)
    assert_same_output(tmp_path / "local", tmp_path / "cloud")
    bad = inputs / "bad.csv"
    bad.write_text(",".join(cols) + "\n" + "x-1," + ",".join(["abc"] * len(loaded.schema.names)) + "\nx-2,1\n")
    got = [json.loads(line) for line in script.run([str(bad)])]
    assert got[0]["id"] == "x-1" and "expected a number" in got[0]["error"] and "got 2" in got[1]["error"]
