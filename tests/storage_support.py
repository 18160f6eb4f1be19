"""gcp-storage-emulator (PyPI) on 127.0.0.1 for the gs:// model reads: Vertex passes ``AIP_STORAGE_URI``."""

from __future__ import annotations

import contextlib
import subprocess
import sys
import time
from pathlib import Path

import httpx
from conftest import free_port


@contextlib.contextmanager
def gcs_emulator():
    """Yields ``(host URL, google.cloud.storage.Client)`` of a fresh in-memory emulator; stops it afterwards."""
    from google.api_core.client_options import ClientOptions
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import storage

    port = free_port()
    exe = str(Path(sys.executable).with_name("gcp-storage-emulator"))
    proc = subprocess.Popen([exe, "start", "--host", "127.0.0.1", "--port", str(port), "--in-memory", "-q"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    host = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                httpx.get(host + "/storage/v1/b", timeout=1.0)
                break
            except httpx.HTTPError:
                assert time.monotonic() < deadline, "gcp-storage-emulator did not start"
                assert proc.poll() is None, f"gcp-storage-emulator exited with {proc.returncode}"
                time.sleep(0.2)
        yield host, storage.Client(project="churn-proj", credentials=AnonymousCredentials(),
                                   client_options=ClientOptions(api_endpoint=host))
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def upload_folder(bucket, folder: Path, prefix: str) -> None:
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            bucket.blob(f"{prefix}/{path.relative_to(folder)}").upload_from_filename(str(path))


# Azurite's documented development account (not a secret: every Azurite install accepts it).
AZURITE_ACCOUNT = "devstoreaccount1"
AZURITE_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="


@contextlib.contextmanager
def azurite_blob():
    """Yields the connection string of a fresh in-memory Azurite blob service (npm azurite, `make test-setup`)."""
    import shutil

    exe = shutil.which("azurite-blob")
    assert exe, "azurite-blob is not installed; `make test-setup` installs it (npm install -g azurite@3.37.0)"
    port = free_port()
    proc = subprocess.Popen([exe, "--blobHost", "127.0.0.1", "--blobPort", str(port), "--inMemoryPersistence",
                             "--skipApiVersionCheck", "--disableTelemetry", "--silent"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                httpx.get(f"http://127.0.0.1:{port}/", timeout=1.0)
                break
            except httpx.HTTPError:
                assert time.monotonic() < deadline and proc.poll() is None, "Azurite did not start"
                time.sleep(0.2)
        yield (f"DefaultEndpointsProtocol=http;AccountName={AZURITE_ACCOUNT};AccountKey={AZURITE_KEY};"
               f"BlobEndpoint=http://127.0.0.1:{port}/{AZURITE_ACCOUNT};")
    finally:
        proc.terminate()
        proc.wait(timeout=10)
