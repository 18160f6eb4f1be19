"""The serving image without Docker: what ``churnkit image build --plan`` prints for each cloud, where the
registry comes from (option, the deploy target's variable, Terraform output), the build context, the serve
pins, and the MLflow-free model download the container uses (moto for S3, gcp-storage-emulator for GCS)."""

from __future__ import annotations

import io
import json
import tarfile
import tomllib
from pathlib import Path

import pytest
from click.testing import CliRunner

from churnkit.cli import main
from churnkit.exceptions import RegistryError

REPO = Path(__file__).resolve().parents[2]
ECR = "123456789012.dkr.ecr.eu-west-1.amazonaws.com/churnkit-serve:0.1.0"
ACR = "acrchurnkitab12cd.azurecr.io/churnkit-serve:0.1.0"
GAR = "europe-west4-docker.pkg.dev/churn-proj/churnkit-serve/serve:0.1.0"
ENV_NAMES = {"sagemaker": "CHURNKIT_AWS_IMAGE_URI", "azureml": "CHURNKIT_AZURE_IMAGE_URI", "vertex": "CHURNKIT_GCP_IMAGE_URI"}


def _plan(args, env=None):
    res = CliRunner().invoke(main, ["image", "build", "--plan", *args], env=env)
    return res, (json.loads(res.stdout) if res.exit_code == 0 else None)


@pytest.fixture(autouse=True)
def _no_registry_env(monkeypatch):
    for name in ENV_NAMES.values():
        monkeypatch.delenv(name, raising=False)


@pytest.mark.parametrize("target,uri,login", [
    ("sagemaker", ECR, ("aws ecr get-login-password --region eu-west-1 | docker login --username AWS --password-stdin "
                        "123456789012.dkr.ecr.eu-west-1.amazonaws.com")),
    ("azureml", ACR, "az acr login --name acrchurnkitab12cd"),
    ("vertex", GAR, "gcloud auth configure-docker europe-west4-docker.pkg.dev --quiet"),
])
def test_push_plan_signs_in_the_documented_way_and_names_the_uri_the_target_reads(target, uri, login):
    res, plan = _plan(["--push", "--target", target, "--tag", "2026-12"], env={ENV_NAMES[target]: uri})
    assert res.exit_code == 0, res.output
    pushed = uri.rsplit(":", 1)[0] + ":2026-12"
    assert plan["uri"] == pushed and plan["env"] == {ENV_NAMES[target]: pushed}
    assert plan["uri_source"] == ENV_NAMES[target] and plan["platform"] == "linux/amd64"
    steps = [c["step"] for c in plan["commands"]]
    assert steps == ["build", "login", "tag", "push"]
    build, sign_in, tag, push = plan["commands"]
    assert build["argv"][:4] == ["docker", "build", "--platform", "linux/amd64"]
    assert build["argv"][-5:] == ["-f", "templates/serving/Dockerfile", "-t", "churnkit-serve:2026-12", "-"]
    assert sign_in["shell"] == login
    assert tag["argv"] == ["docker", "tag", "churnkit-serve:2026-12", pushed]
    assert push["argv"] == ["docker", "push", pushed]
    # the deploy target reads exactly that variable
    from importlib import import_module

    module = {"sagemaker": "sagemaker", "azureml": "azureml", "vertex": "vertex"}[target]
    assert ENV_NAMES[target] in import_module(f"churnkit.deploy.{module}").ENV.values()


def test_the_registry_comes_from_terraform_outputs_when_nothing_else_names_it(tmp_path):
    state = {"version": 4, "terraform_version": "1.11.4", "serial": 1, "lineage": "0b6c1f7e-1111-2222-3333-444455556666",
             "outputs": {"image_uri": {"value": GAR, "type": "string"}}, "resources": [], "check_results": None}
    (tmp_path / "terraform.tfstate").write_text(json.dumps(state))
    res, plan = _plan(["--push", "--target", "vertex", "--terraform-dir", str(tmp_path)],
                      env={"TF_CLI_CONFIG_FILE": "/dev/null"})  # the real terraform reads the state
    assert res.exit_code == 0, res.output
    assert plan["uri"] == GAR and plan["uri_source"].startswith("terraform -chdir=templates/terraform/gcp output")
    res, plan = _plan(["--push", "--target", "vertex", "--terraform-dir", str(tmp_path), "--image-uri",
                       "europe-west4-docker.pkg.dev/other/repo/serve"])
    assert plan["uri"] == "europe-west4-docker.pkg.dev/other/repo/serve:0.1.0" and plan["uri_source"] == "--image-uri"


def test_plan_errors_name_the_fix(tmp_path):
    res, _ = _plan(["--push", "--target", "sagemaker", "--terraform-dir", str(tmp_path)])
    assert res.exit_code == 1
    assert "pass --image-uri, set CHURNKIT_AWS_IMAGE_URI, or apply templates/terraform/aws" in res.output
    res, _ = _plan(["--push"])
    assert res.exit_code == 1 and "--push needs --target" in res.output
    res, _ = _plan(["--push", "--target", "sagemaker", "--image-uri", "registry.example.com/churn:1"])
    assert res.exit_code == 1 and "is not ECR" in res.output and "docker login" in res.output
    res, _ = _plan(["--ca-bundle", str(tmp_path / "missing.pem")])
    assert res.exit_code == 1 and "CA bundle" in res.output


def test_local_build_plan_uses_the_base_and_ca_bundle(tmp_path):
    pem = tmp_path / "ca.pem"
    pem.write_text("-----BEGIN CERTIFICATE-----\n")
    res, plan = _plan(["--base", "churnkit-base:bookworm", "--ca-bundle", str(pem), "--network", ""])
    assert res.exit_code == 0, res.output
    (build,) = plan["commands"]
    assert "--build-arg" in build["argv"] and "BASE=churnkit-base:bookworm" in build["argv"]
    assert "--network" not in build["argv"] and plan["ca_bundle"] == str(pem)
    assert plan["uri"] == "churnkit-serve:0.1.0" and plan["target"] is None and plan["env"] == {}
    assert build["stdin"].endswith("ca-bundle.crt")


def test_build_context_is_what_dockerignore_lets_through():
    from churnkit.deploy.image import CA_BUNDLE_NAME, CONTEXT, context_files, context_tar

    allowed = [line[1:].rstrip("/") for line in (REPO / ".dockerignore").read_text().splitlines() if line.startswith("!")]
    assert sorted(allowed) == sorted([c for c in CONTEXT if c != "templates/serving/Dockerfile"] + [CA_BUNDLE_NAME])
    files = context_files()
    assert "churnkit/serve/app.py" in files and "templates/serving/Dockerfile" in files
    assert not [f for f in files if f.startswith(("tests/", "runs/", "notebooks/", ".venv")) or "__pycache__" in f]
    with tarfile.open(fileobj=io.BytesIO(context_tar(files[:3]))) as tar:
        assert tar.getnames() == files[:3]


def test_serve_extra_pins_only_what_serving_needs_at_the_core_versions():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]

    def pins(reqs):
        return {r.split("==")[0].split("[")[0].lower(): r.split("==")[1] for r in reqs}

    core, serve = pins(project["dependencies"]), pins(project["optional-dependencies"]["serve"])
    clouds = pins([r for e in ("aws", "azure", "gcp") for r in project["optional-dependencies"][e]])
    for name, version in serve.items():
        assert version == core.get(name, clouds.get(name, version)), f"{name}: serve {version}"
    assert {"scikit-learn", "numpy", "scipy", "pandas", "skops", "pyyaml", "starlette", "uvicorn", "uvloop",
            "httptools", "orjson", "click", "boto3", "google-cloud-storage", "azure-storage-blob",
            "azure-identity"} == set(serve)
    assert not {"mlflow", "matplotlib", "pyarrow", "papermill", "jupyterlab"} & set(serve)
    dockerfile = (REPO / "templates" / "serving" / "Dockerfile").read_text()
    assert "ARG BASE=python:3.11-slim" in dockerfile and "FROM ${BASE}" in dockerfile
    assert "--only serve" in dockerfile and "pip install --no-compile --no-deps ." in dockerfile
    assert "USER 10001:10001" in dockerfile


# ---- the container's model download, without MLflow ----------------------------------------------------
@pytest.fixture
def folder(tmp_path):
    src = tmp_path / "model"
    (src / "sub").mkdir(parents=True)
    (src / "MLmodel").write_text("flavors: {}\n")
    (src / "sub" / "model.skops").write_bytes(b"\x00weights")
    return src


def test_s3_download_copies_the_folder(folder, tmp_path, monkeypatch):
    import boto3
    from moto import mock_aws

    from churnkit.serve.storage import download

    for key, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                       "AWS_DEFAULT_REGION": "eu-west-1"}.items():
        monkeypatch.setenv(key, value)
    with mock_aws():
        s3 = boto3.client("s3", region_name="eu-west-1")
        s3.create_bucket(Bucket="churn", CreateBucketConfiguration={"LocationConstraint": "eu-west-1"})
        for path in folder.rglob("*"):
            if path.is_file():
                s3.upload_file(str(path), "churn", f"churnkit/models/churn-v1/{path.relative_to(folder)}")
        s3.put_object(Bucket="churn", Key="churnkit/models/churn-v10/MLmodel", Body=b"another model")
        out = download("s3://churn/churnkit/models/churn-v1", tmp_path / "dl")
        assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()) == ["MLmodel", "sub/model.skops"]
        assert (out / "sub" / "model.skops").read_bytes() == b"\x00weights"
        with pytest.raises(RegistryError, match="no objects found"):
            download("s3://churn/churnkit/models/churn-v2", tmp_path / "none")


@pytest.mark.emulator
def test_gcs_download_and_a_tar_gz_archive(folder, tmp_path, monkeypatch):
    from storage_support import gcs_emulator, upload_folder

    from churnkit.serve.storage import download

    with gcs_emulator() as (host, client):
        monkeypatch.setenv("STORAGE_EMULATOR_HOST", host)
        bucket = client.create_bucket("churn-models")
        upload_folder(bucket, folder, "models/churn/1")
        out = download("gs://churn-models/models/churn/1/", tmp_path / "dl")
        assert (out / "MLmodel").read_text() == "flavors: {}\n" and (out / "sub" / "model.skops").exists()
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w:gz") as tar:
            tar.add(folder / "MLmodel", arcname="MLmodel")
        bucket.blob("archives/model.tar.gz").upload_from_string(buf.getvalue())
        out = download("gs://churn-models/archives/model.tar.gz", tmp_path / "tgz")
        assert sorted(p.name for p in out.iterdir()) == ["MLmodel"]  # unpacked in place, archive removed


def test_storage_errors_name_the_package_and_the_fix(tmp_path, monkeypatch):
    import sys

    from churnkit.serve.storage import _azure_location, download

    monkeypatch.setitem(sys.modules, "boto3", None)  # as if the serve extra were not installed
    with pytest.raises(RegistryError, match=r"needs the 'boto3' package.*pip install -e '\.\[serve\]'"):
        download("s3://b/m", tmp_path / "a")
    with pytest.raises(RegistryError, match="AZUREML_MODEL_DIR"):
        download("azureml://subscriptions/s/resourcegroups/r/workspaces/w/datastores/d/paths/m", tmp_path / "b")
    with pytest.raises(RegistryError, match="no reader for this URI"):
        download("https://example.com/model.tar.gz", tmp_path / "c")
    assert _azure_location("wasbs://models@acct.blob.core.windows.net/churn/1") == (
        "https://acct.blob.core.windows.net", "models", "churn/1")
    assert _azure_location("https://acct.blob.core.windows.net/models/churn/1") == (
        "https://acct.blob.core.windows.net", "models", "churn/1")


@pytest.mark.emulator
def test_load_serving_model_reads_a_remote_uri_without_mlflow(tmp_path, monkeypatch):
    """The container path: a gs:// URI becomes a verified folder; no mlflow module is imported."""
    import subprocess
    import sys

    from deploy_support import registry_store
    from storage_support import gcs_emulator, upload_folder

    from churnkit import registry
    from churnkit.config import load_config
    from churnkit.serve import export_model

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    config = load_config(registry_store(tmp_path))
    registry.setup_tracking(config)
    folder = export_model(registry.load_model("models:/churn@champion", config), tmp_path / "model")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    with gcs_emulator() as (host, client):
        upload_folder(client.create_bucket("churn-models"), folder, "models/churn/1")
        probe = ("import sys; from churnkit.serve.loading import load_serving_model; "
                 "m = load_serving_model('gs://churn-models/models/churn/1'); "
                 "print(m.name, m.version, 'mlflow' in sys.modules)")
        env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO), "STORAGE_EMULATOR_HOST": host, "HOME": str(tmp_path)}
        res = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=env, timeout=120)
        assert res.returncode == 0, res.stderr
        assert res.stdout.split() == ["churn", "1", "False"]


@pytest.mark.emulator
def test_azure_blob_download_through_azurite(folder, tmp_path, monkeypatch):
    from azure.storage.blob import BlobServiceClient
    from storage_support import azurite_blob

    from churnkit.serve.storage import download

    with azurite_blob() as conn:
        container = BlobServiceClient.from_connection_string(conn).create_container("models")
        for path in folder.rglob("*"):
            if path.is_file():
                container.upload_blob(f"churn/1/{path.relative_to(folder)}", path.read_bytes())
        container.upload_blob("churn/10/MLmodel", b"another version")
        monkeypatch.setenv("AZURE_STORAGE_CONNECTION_STRING", conn)
        out = download("wasbs://models@devstoreaccount1.blob.core.windows.net/churn/1", tmp_path / "dl")
        assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()) == ["MLmodel", "sub/model.skops"]
        assert (out / "sub" / "model.skops").read_bytes() == b"\x00weights"
