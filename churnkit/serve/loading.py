"""Finding and loading the model a server scores with, verified by sha256.

``churnkit serve`` loads through :func:`churnkit.registry.load_model` (models:/, runs:/, a folder);
a cloud storage URI (``gs://``, ``s3://``, Azure Blob; Vertex passes one in ``AIP_STORAGE_URI``) is
downloaded first by :mod:`churnkit.serve.storage` (the storage SDKs, no MLflow). A model folder copied out of the registry carries ``churnkit-model.json`` (name,
version, threshold, sha256; written by :func:`export_model`) so a container knows what it serves and
refuses a changed artifact. :func:`load_model_folder` does the same without MLflow, for the Azure ML
``score.py`` environment. Every file of a folder is checked against its ``churnkit-files.json`` before
anything in it is read, and only skops files load (:mod:`churnkit.artifact`).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from churnkit.exceptions import IntegrityError, RegistryError
from churnkit.artifact import (
    MANIFEST_ENV,
    SERVING_MANIFEST,
    LoadedModel,
    serving_manifest,
    verify_serving_manifest,
    artifact_sha256,
    check_flavor,
    load_estimator,
    read_metadata,
    verify_files,
)
from churnkit.serve.storage import SCHEMES as REMOTE_SCHEMES, download

MANIFEST = SERVING_MANIFEST


def read_manifest(folder) -> dict:
    path = Path(folder) / MANIFEST
    if not path.exists():
        return {}
    try:
        return json.loads(path.read_text())
    except ValueError as exc:
        raise RegistryError(f"{str(path)!r} is not valid JSON ({exc}); re-export the model with export_model") from exc


def export_model(loaded: LoadedModel, dest) -> Path:
    """Copy a loaded model's folder to ``dest`` with its serving manifest, ready to upload to an endpoint.

    The manifest lists every file's sha256 plus the threshold, name, version and the compiled
    scorer's entry (:func:`churnkit.artifact.serving_manifest`); its digest equals the one recorded
    at registration (``churnkit.manifest_sha256``), which the deploy targets pin on the container.

    Raises
    ------
    IntegrityError
        The export's digest differs from the one recorded at registration.
    """
    import hashlib

    from churnkit.serve.compiled import write_compiled

    dest = Path(dest)
    shutil.copytree(loaded.path, dest, dirs_exist_ok=True)
    scorer = write_compiled(loaded, dest)  # sklearn-checked numpy arrays: a server starts without sklearn
    data = serving_manifest(dest, loaded.name, str(loaded.version), loaded.threshold, scorer)
    sha = hashlib.sha256(data).hexdigest()
    if loaded.manifest_sha256 and sha != loaded.manifest_sha256:
        raise IntegrityError(f"exporting {loaded.uri!r} gives a serving manifest sha256 {sha[:16]}... that differs from "
                             f"{loaded.manifest_sha256[:16]}... recorded at registration; the container would refuse it: "
                             "export with the library versions the version was registered with, or register it again")
    (dest / MANIFEST).write_bytes(data)
    return dest


def _check_sha256(sha: str, uri: str, expected: dict) -> None:
    """Raise IntegrityError naming the first source in ``{source: sha256}`` that disagrees with ``sha``."""
    for source, want in expected.items():
        if want and want != sha:
            raise IntegrityError(
                f"model {uri!r}: artifact sha256 {sha[:16]}... does not match {want[:16]}... from {source}; "
                "the file was changed after export: restore the artifact or export the model again, "
                "or unset CHURNKIT_MODEL_SHA256 if it names another model"
            )


def verify_folder(folder, uri: str, environ=None) -> str:
    """The artifact's sha256, checked against the folder's manifest and ``CHURNKIT_MODEL_SHA256``.

    Runs before anything is deserialized. Raises IntegrityError naming the source that disagrees.
    """
    env = os.environ if environ is None else environ
    sha = artifact_sha256(folder)
    _check_sha256(sha, uri, {MANIFEST: read_manifest(folder).get("sha256"),
                             "CHURNKIT_MODEL_SHA256": env.get("CHURNKIT_MODEL_SHA256")})
    return sha


def apply_manifest(loaded: LoadedModel, environ=None) -> LoadedModel:
    """``CHURNKIT_MODEL_NAME``, ``CHURNKIT_MODEL_VERSION`` and ``CHURNKIT_MODEL_THRESHOLD`` (the operator's,
    set by the deploy targets on the container) win over the folder's pinned manifest."""
    env = os.environ if environ is None else environ
    loaded.name = str(env.get("CHURNKIT_MODEL_NAME") or loaded.name)
    loaded.version = str(env.get("CHURNKIT_MODEL_VERSION") or loaded.version)
    threshold = env.get("CHURNKIT_MODEL_THRESHOLD")
    if threshold not in (None, ""):
        try:
            loaded.threshold = float(threshold)
        except ValueError:
            raise RegistryError(f"threshold {threshold!r} (CHURNKIT_MODEL_THRESHOLD or {MANIFEST}) is not a number; "
                                "set a probability such as 0.5") from None
    return loaded


def find_model_folder(root) -> Path:
    """The folder holding ``MLmodel`` at or below ``root`` (Azure ML nests the registered folder)."""
    root = Path(root)
    if (root / "MLmodel").exists():
        return root
    found = sorted(p.parent for p in root.glob("**/MLmodel") if len(p.relative_to(root).parts) <= 4)
    if not found:
        raise RegistryError(f"no MLmodel file at or below {str(root)!r}; point it at an exported churnkit model folder")
    return found[0]


def load_model_folder(folder, uri: str | None = None, environ=None, *, compiled: bool = False) -> LoadedModel:
    """Load an MLflow sklearn model folder without MLflow (skops), verified against its manifests.

    An exported folder is checked against its serving manifest (every file, threshold, name, version,
    scorer) and, when ``CHURNKIT_MANIFEST_SHA256`` pins it, the manifest against that digest; name,
    version and threshold then come from the manifest alone. A folder without a pin is served and
    reported as unpinned (``pinned`` False). ``compiled=True`` loads the compiled scorer instead of the
    pipeline (no sklearn; ``pipeline`` is None) when the manifest records one.
    """
    import hashlib

    from churnkit.data import Schema

    env = os.environ if environ is None else environ
    folder = find_model_folder(folder)
    pin = str(env.get(MANIFEST_ENV) or "")
    if pin or (folder / MANIFEST).exists():
        manifest = verify_serving_manifest(folder, pin)  # before any other file is read
        digest = hashlib.sha256((folder / MANIFEST).read_bytes()).hexdigest()
    else:  # a bare folder logged by churnkit: its own file manifest, no pinned values
        verify_files(folder, None, MANIFEST)
        manifest, digest = {}, ""
    meta = read_metadata(folder)
    if "churnkit_schema" not in meta:
        raise RegistryError(f"model folder {str(folder)!r} carries no churnkit schema in its MLmodel; train it with 01-train")
    uri = uri or str(folder)
    sha = verify_folder(folder, uri, environ)  # before deserializing anything
    check_flavor(folder)  # no code directory, skops only, known trusted types: whichever way it is scored
    stored = manifest.get("scorer") if compiled else None
    model = None
    if stored:
        from churnkit.serve.compiled import read_compiled

        model = read_compiled(folder, stored)
    loaded = LoadedModel(
        pipeline=None if model is not None else load_estimator(folder), compiled=model,
        schema=Schema.from_dict(meta["churnkit_schema"]),
        threshold=float(manifest.get("threshold", meta.get("churnkit_threshold", 0.5))),
        name=str(manifest.get("name") or meta.get("churnkit_name", "churn")),
        version=str(manifest.get("version") or "local"), sha256=sha, uri=uri, path=folder,
        manifest_sha256=digest, pinned=bool(pin),
    )
    return apply_manifest(loaded, environ)


def load_serving_model(uri: str, config=None, environ=None, *, compiled: bool = False) -> LoadedModel:
    """The model ``churnkit serve`` scores with: registry URI, folder, or cloud storage URI; sha256 verified."""
    if uri.startswith(REMOTE_SCHEMES):
        import tempfile

        try:
            local = download(uri, tempfile.mkdtemp(prefix="churnkit-model-"))
        except RegistryError:
            raise
        except Exception as exc:
            raise RegistryError(f"model {uri!r} could not be downloaded ({type(exc).__name__}: {exc}); check the "
                                "URI and that this machine can read it") from exc
    elif Path(uri).is_dir():
        local = uri
    else:  # models:/ and runs:/: the registry checks the sha256 it recorded
        from churnkit.registry import load_model

        loaded = load_model(uri, config)
        env = os.environ if environ is None else environ
        _check_sha256(loaded.sha256, uri, {"CHURNKIT_MODEL_SHA256": env.get("CHURNKIT_MODEL_SHA256")})
        return loaded
    # /opt/ml/model and Azure ML may hold the model folder below the root; no MLflow on this path
    return load_model_folder(local, uri, environ, compiled=compiled)
