"""The serving image, built by ``churnkit image build`` and run the way each cloud starts it.

- SageMaker: argument ``serve``, the ``model.tar.gz`` contents at ``/opt/ml/model``, ``/ping`` and ``/invocations``;
- Vertex AI: ``AIP_HTTP_PORT``, ``AIP_HEALTH_ROUTE``, ``AIP_PREDICT_ROUTE`` and ``AIP_STORAGE_URI`` (gs://, served
  by gcp-storage-emulator);
- Azure ML: the registered folder below ``AZUREML_MODEL_DIR``, liveness ``/`` and scoring ``/score``.

Each answers with the in-process scorer's probabilities, runs as an unprivileged user and refuses a tampered
model folder. The daemon is started when it is not running (Debian's docker.io: ``--iptables=false
--bridge=none``, so containers use ``--network host`` and a free port); the base image is made from Debian
packages with debootstrap, as no image registry is reachable here.
"""

from __future__ import annotations

import io
import json
import subprocess
import tarfile
import tempfile
from pathlib import Path

import httpx
import numpy as np
import pytest
from conftest import free_port
from docker_support import Container, ensure_base_image, readable_copy, start_dockerd, stop_dockerd
from serve_support import CHURNKIT, REPO, json_rows, models, served_store
from storage_support import gcs_emulator, upload_folder

pytestmark = pytest.mark.docker
MAX_IMAGE_BYTES = 400_000_000  # docker image inspect's Size
TAG = "test"


@pytest.fixture(scope="session")
def docker(tmp_path_factory):
    proc, why = start_dockerd(tmp_path_factory.mktemp("dockerd"))
    if why:
        pytest.skip(f"the Docker daemon cannot start here: {why}")
    yield
    stop_dockerd(proc)


@pytest.fixture(scope="session")
def image(docker):
    """``churnkit image build --base <debootstrap base> --tag test``: the CLI's own build, its stdout the URI."""
    base = ensure_base_image()
    res = subprocess.run([CHURNKIT, "image", "build", "--base", base, "--tag", TAG], capture_output=True, text=True,
                         cwd=REPO, timeout=900)
    assert res.returncode == 0, res.stderr[-4000:]
    assert res.stdout.strip() == f"churnkit-serve:{TAG}"
    return res.stdout.strip()


@pytest.fixture(scope="session")
def exported(tmp_path_factory):
    """churn v1 exported as the deploy targets upload it, its raw rows, and the in-process probabilities."""
    from churnkit.serve import Scorer, export_model

    base = tmp_path_factory.mktemp("image-model")
    runs, loaded = served_store(base)
    folder = export_model(loaded, base / "model")
    rows = json_rows(models().raw.head(40))
    expected = Scorer.from_loaded(loaded).predict_records(rows)
    shared = Path(tempfile.mkdtemp(prefix="churnkit-image-test-"))  # readable by the container's user
    shared.chmod(0o755)
    return {"folder": folder, "rows": rows, "expected": np.asarray(expected), "loaded": loaded, "shared": shared}


def _probabilities(resp, key="predictions") -> np.ndarray:
    assert resp.status_code == 200, resp.text
    body = resp.json()
    predictions = body if isinstance(body, list) else body[key]
    return np.array([p["churn_probability"] for p in predictions])


def _cloud_env(loaded) -> dict:
    """What the deploy targets set on the container (name, version, pinned sha256)."""
    return {"CHURNKIT_MODEL_NAME": loaded.name, "CHURNKIT_MODEL_VERSION": str(loaded.version),
            "CHURNKIT_MODEL_SHA256": loaded.sha256, "CHURNKIT_MANIFEST_SHA256": loaded.manifest_sha256}


def test_image_is_small_runs_unprivileged_and_carries_only_serving(image):
    from churnkit.deploy.image import image_size

    size = image_size(image)
    assert size <= MAX_IMAGE_BYTES, f"{image} is {size / 1e6:.0f} MB"
    probe = ("import importlib.util as u, json, os; print(json.dumps({'uid': os.getuid(), "
             "'absent': [m for m in ('mlflow', 'matplotlib', 'pyarrow', 'papermill', 'jupyterlab') if u.find_spec(m)], "
             "'readers': [m for m in ('boto3', 'google.cloud.storage', 'azure.storage.blob', 'azure.identity') "
             "if u.find_spec(m)]}))")
    res = subprocess.run(["docker", "run", "--rm", "--network", "host", "--entrypoint", "python3", image, "-c", probe],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    found = json.loads(res.stdout)
    assert found["uid"] != 0
    assert found["absent"] == []  # none of what only training, notebooks or plots need
    assert found["readers"] == ["boto3", "google.cloud.storage", "azure.storage.blob", "azure.identity"]
    uid = subprocess.run(["docker", "run", "--rm", "--entrypoint", "id", image, "-u"], capture_output=True, text=True)
    assert uid.stdout.strip() == "10001"
    arch = subprocess.run(["docker", "image", "inspect", "--format", "{{.Os}}/{{.Architecture}}", image],
                          capture_output=True, text=True)
    assert arch.stdout.strip() == "linux/amd64"


def _sagemaker_model_dir(exported, name: str) -> Path:
    """The model.tar.gz the sagemaker target uploads, unpacked as SageMaker unpacks it into /opt/ml/model."""
    buf = io.BytesIO()
    folder = exported["folder"]
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                tar.add(path, arcname=str(path.relative_to(folder)))
    unpacked = Path(tempfile.mkdtemp(prefix="sm-", dir=exported["shared"]))
    buf.seek(0)
    with tarfile.open(fileobj=buf) as tar:
        tar.extractall(unpacked, filter="data")
    return readable_copy(unpacked, exported["shared"], name)


def test_sagemaker_contract(image, exported):
    model_dir = _sagemaker_model_dir(exported, "sagemaker-model")
    assert not (model_dir / "model").exists() and (model_dir / "MLmodel").exists()  # files at the root
    port = free_port()
    box = Container(image, ["serve", "--port", str(port)], env=_cloud_env(exported["loaded"]),
                    mounts={model_dir: "/opt/ml/model"})
    try:
        url = f"http://127.0.0.1:{port}"
        box.wait_ready(url + "/ping")
        resp = httpx.post(url + "/invocations", json={"instances": exported["rows"]}, timeout=30)
        np.testing.assert_allclose(_probabilities(resp), exported["expected"], rtol=0, atol=1e-6)
        assert resp.json()["model"] == {"name": "churn", "version": "1"}
        bad = httpx.post(url + "/invocations", json={"instances": [{"tenure": "abc"}]}, timeout=30)
        assert bad.status_code == 422 and "Traceback" not in bad.text
        assert "serving churn v1 on http://0.0.0.0:" in box.logs()
    finally:
        box.close()


@pytest.fixture(scope="session")
def gcs(exported):
    """gcp-storage-emulator on 127.0.0.1 holding the exported folder at gs://churn-models/models/churn/1/."""
    with gcs_emulator() as (host, client):
        upload_folder(client.create_bucket("churn-models"), exported["folder"], "models/churn/1")
        yield {"host": host, "uri": "gs://churn-models/models/churn/1"}


def test_vertex_contract_reads_the_model_from_gcs(image, exported, gcs):
    port = free_port()
    env = {**_cloud_env(exported["loaded"]), "AIP_HTTP_PORT": port, "AIP_HEALTH_ROUTE": "/v1/endpoints/e/health",
           "AIP_PREDICT_ROUTE": "/v1/endpoints/e/deployedModels/d:predict", "AIP_STORAGE_URI": gcs["uri"],
           "STORAGE_EMULATOR_HOST": gcs["host"]}
    box = Container(image, env=env)  # Vertex starts the image's own entry point and default argument
    try:
        url = f"http://127.0.0.1:{port}"
        box.wait_ready(url + "/v1/endpoints/e/health")
        resp = httpx.post(url + "/v1/endpoints/e/deployedModels/d:predict", json={"instances": exported["rows"]},
                          timeout=30)
        assert list(resp.json()) == ["predictions"]  # the Vertex shape: the list alone
        np.testing.assert_allclose(_probabilities(resp), exported["expected"], rtol=0, atol=1e-6)
    finally:
        box.close()


def test_azureml_contract(image, exported):
    # Azure ML mounts the registered model below AZUREML_MODEL_DIR (the folder keeps its name)
    root = Path(tempfile.mkdtemp(prefix="azml-", dir=exported["shared"]))
    root.chmod(0o755)
    readable_copy(exported["folder"], root, "model")
    port = free_port()
    env = {**_cloud_env(exported["loaded"]), "AZUREML_MODEL_DIR": "/var/azureml-app/azureml-models/churn/1",
           "AIP_HTTP_PORT": port}  # the azureml target sets the port the routes listen on
    box = Container(image, env=env, mounts={root: "/var/azureml-app/azureml-models/churn/1"})
    try:
        url = f"http://127.0.0.1:{port}"
        box.wait_ready(url + "/")
        resp = httpx.post(url + "/score", json={"data": exported["rows"]}, timeout=30)
        np.testing.assert_allclose(_probabilities(resp), exported["expected"], rtol=0, atol=1e-6)
    finally:
        box.close()


def test_a_tampered_model_folder_is_refused(image, exported):
    model_dir = _sagemaker_model_dir(exported, "tampered-model")
    with open(model_dir / "model.skops", "ab") as fh:
        fh.write(b"\0")
    port = free_port()
    box = Container(image, ["serve", "--port", str(port)], mounts={model_dir: "/opt/ml/model"})
    try:
        code = box.wait_exit(timeout=120)
        logs = box.logs()
        assert code == 1, logs
        assert "error: IntegrityError: model folder '/opt/ml/model' does not match" in logs, logs
        assert "Traceback" not in logs
        with pytest.raises(httpx.HTTPError):
            httpx.get(f"http://127.0.0.1:{port}/ping", timeout=1.0)  # never served
    finally:
        box.close()
