"""Copying a model folder out of cloud storage without MLflow: ``s3://``, ``gs://`` and Azure Blob URIs.

The serving image reads its model from where each platform puts it: SageMaker and Azure ML mount a
folder, Vertex AI passes ``AIP_STORAGE_URI`` (``gs://bucket/prefix``). A URI here names a folder (every
object below the prefix is copied, keeping relative paths) or one ``.tar.gz`` archive, which is unpacked.
Each storage SDK is imported only when its scheme is asked for, and a missing one is an error naming
the package and the ``serve`` extra that pins it.

- ``s3://bucket/prefix``: boto3's default chain (``AWS_ENDPOINT_URL`` is honoured, as boto3 documents).
- ``gs://bucket/prefix``: google-cloud-storage's default credentials (``STORAGE_EMULATOR_HOST`` is honoured).
- ``https://ACCOUNT.blob.core.windows.net/CONTAINER/prefix``, ``wasbs://CONTAINER@ACCOUNT.blob.core.windows.net/prefix``
  and ``abfss://CONTAINER@ACCOUNT.dfs.core.windows.net/prefix``: azure-storage-blob with azure-identity's
  ``DefaultAzureCredential`` (a managed identity in Azure), or ``AZURE_STORAGE_CONNECTION_STRING`` when set
  (a SAS, or a storage emulator such as Azurite).
"""

from __future__ import annotations

import tarfile
from pathlib import Path
from urllib.parse import urlsplit

from churnkit.exceptions import RegistryError

SCHEMES = ("s3://", "gs://", "wasbs://", "abfss://", "https://", "http://", "azureml://")
#: module -> (pip package, pinned in the ``serve`` extra)
PACKAGES = {"boto3": "boto3", "google.cloud.storage": "google-cloud-storage",
            "azure.storage.blob": "azure-storage-blob", "azure.identity": "azure-identity"}


def _require(module: str, uri: str):
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        package = PACKAGES[module]
        raise RegistryError(
            f"reading the model at {uri!r} needs the {package!r} package, which is not installed; install it "
            f"with: pip install -e '.[serve]' (the serving image includes it)"
        ) from None


def _relative(key: str, prefix: str) -> str | None:
    """The object's path below ``prefix`` (None for a folder marker or an object outside the folder)."""
    if prefix and not prefix.endswith("/"):
        if key == prefix:  # the URI names one object
            return key.rsplit("/", 1)[-1]
        prefix += "/"
    if not key.startswith(prefix):
        return None
    rel = key[len(prefix):]
    return rel if rel and not rel.endswith("/") else None


def _target(dest: Path, rel: str) -> Path:
    path = (dest / rel).resolve()
    if not path.is_relative_to(dest.resolve()):
        raise RegistryError(f"object name {rel!r} points outside the download folder; refusing to write it")
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def _s3(uri: str, dest: Path) -> int:
    boto3 = _require("boto3", uri)
    parts = urlsplit(uri)
    bucket, prefix = parts.netloc, parts.path.lstrip("/")
    client = boto3.client("s3")
    count = 0
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for obj in page.get("Contents", []):
            rel = _relative(obj["Key"], prefix)
            if rel:
                client.download_file(bucket, obj["Key"], str(_target(dest, rel)))
                count += 1
    return count


def _gs(uri: str, dest: Path) -> int:
    storage = _require("google.cloud.storage", uri)
    parts = urlsplit(uri)
    prefix = parts.path.lstrip("/")
    client = storage.Client()
    count = 0
    for blob in client.list_blobs(parts.netloc, prefix=prefix):
        rel = _relative(blob.name, prefix)
        if rel:
            blob.download_to_filename(str(_target(dest, rel)))
            count += 1
    return count


def _azure_location(uri: str) -> tuple[str, str, str]:
    """(account URL, container, prefix) of an Azure Blob / ADLS Gen2 URI."""
    parts = urlsplit(uri)
    if parts.scheme in ("wasbs", "abfss"):
        container, _, host = parts.netloc.partition("@")
        account = host.split(".", 1)[0]
        return f"https://{account}.blob.core.windows.net", container, parts.path.lstrip("/")
    container, _, prefix = parts.path.lstrip("/").partition("/")
    return f"https://{parts.netloc}", container, prefix


def _azure(uri: str, dest: Path, environ=None) -> int:
    import os

    env = os.environ if environ is None else environ
    blob = _require("azure.storage.blob", uri)
    account_url, container, prefix = _azure_location(uri)
    if env.get("AZURE_STORAGE_CONNECTION_STRING"):
        client = blob.ContainerClient.from_connection_string(env["AZURE_STORAGE_CONNECTION_STRING"], container)
    else:
        identity = _require("azure.identity", uri)
        client = blob.ContainerClient(account_url, container, credential=identity.DefaultAzureCredential())
    count = 0
    for item in client.list_blobs(name_starts_with=prefix or None):
        rel = _relative(item.name, prefix)
        if rel:
            with open(_target(dest, rel), "wb") as fh:
                client.download_blob(item.name).readinto(fh)
            count += 1
    return count


def _unpack_archive(dest: Path) -> None:
    """A SageMaker-style ``model.tar.gz`` downloaded alone is unpacked in place (files stay inside dest)."""
    files = [p for p in dest.iterdir()]
    if len(files) == 1 and files[0].name.endswith((".tar.gz", ".tgz")):
        with tarfile.open(files[0]) as tar:
            tar.extractall(dest, filter="data")  # refuses links and paths that leave dest
        files[0].unlink()


def upload_file(path, uri: str, deadline: float = 60.0) -> None:
    """Copy one local file to ``uri`` (``gs://BUCKET/NAME`` or ``s3://BUCKET/KEY``): the capture files a
    container writes, kept where the rollout controller reads them. ``deadline`` bounds the SDK's retries
    (its defaults retry for minutes while a container shuts down): on GCS the whole retry, on S3 each of
    at most 3 attempts (connect and read timeouts).

    Raises RegistryError for another scheme or when the SDK for it is missing.
    """
    parts = urlsplit(uri)
    key = parts.path.lstrip("/")
    if parts.scheme == "gs":
        storage = _require("google.cloud.storage", uri)
        from google.cloud.storage.retry import DEFAULT_RETRY

        storage.Client().bucket(parts.netloc).blob(key).upload_from_filename(
            str(path), timeout=deadline, retry=DEFAULT_RETRY.with_timeout(deadline))
    elif parts.scheme == "s3":
        boto3 = _require("boto3", uri)
        from botocore.config import Config as BotoConfig

        config = BotoConfig(connect_timeout=min(deadline, 10.0), read_timeout=deadline,
                            retries={"mode": "standard", "max_attempts": 3})
        boto3.client("s3", config=config).upload_file(str(path), parts.netloc, key)
    else:
        raise RegistryError(f"capture destination {uri!r}: only gs:// and s3:// are written; use a folder or one of those")


def download(uri: str, dest) -> Path:
    """Copy the model folder (or archive) at ``uri`` into ``dest``; returns ``dest``.

    Raises RegistryError when the scheme is unknown, the SDK for it is missing, or nothing is there.
    """
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    scheme = uri.split("://", 1)[0]
    if scheme == "s3":
        count = _s3(uri, dest)
    elif scheme == "gs":
        count = _gs(uri, dest)
    elif scheme in ("wasbs", "abfss") or (scheme == "https" and urlsplit(uri).netloc.endswith(".blob.core.windows.net")):
        count = _azure(uri, dest)
    elif scheme == "azureml":
        raise RegistryError(
            f"model {uri!r}: azureml:// URIs are resolved by Azure ML itself, which mounts the model and sets "
            "AZUREML_MODEL_DIR; start the container without --model, or pass the storage URL (https://ACCOUNT"
            ".blob.core.windows.net/CONTAINER/PATH)")
    else:
        raise RegistryError(
            f"model {uri!r}: no reader for this URI; use s3://BUCKET/PREFIX, gs://BUCKET/PREFIX, "
            "https://ACCOUNT.blob.core.windows.net/CONTAINER/PREFIX (or wasbs:// / abfss://), a folder, or models:/")
    if count == 0:
        raise RegistryError(f"model {uri!r}: no objects found under this URI; check the bucket and prefix "
                            "(the exported model folder, or its model.tar.gz)")
    _unpack_archive(dest)
    return dest
