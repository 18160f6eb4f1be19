"""A model folder on disk: its metadata, the file that gets deserialized, its sha256 and file manifest.

Every file of a model folder is listed with its sha256 in ``churnkit-files.json`` (written when the
candidate is logged; the manifest's own sha256 is recorded on the run and the registered version).
:func:`verify_files` checks the folder against it before anything in it is read, ``MLmodel`` included,
and :func:`load_estimator` deserializes only skops files with the kit's trusted types.

MLflow-free on purpose: the serving container and the Azure ML ``score.py`` read model folders
through this module without the MLflow client.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from churnkit.data import Schema, file_sha256
from churnkit.exceptions import IntegrityError


@dataclass
class LoadedModel:
    """A verified model ready to score: the fitted pipeline plus everything serving needs."""

    pipeline: Any
    schema: Schema
    threshold: float
    name: str
    version: str
    sha256: str
    uri: str
    path: Path
    compiled: Any = None  # the numpy scorer stored at export (churnkit.serve.compiled); pipeline is then None
    manifest_sha256: str = ""  # the serving manifest's digest recorded at registration ("" unknown)
    pinned: bool = True  # False: a folder served without a pinned manifest digest (said at start and in /version)


def read_mlmodel(model_dir: str | Path) -> dict:
    import yaml

    return yaml.safe_load((Path(model_dir) / "MLmodel").read_text()) or {}


def read_metadata(model_dir: str | Path) -> dict:
    return read_mlmodel(model_dir).get("metadata") or {}


def model_file(model_dir: str | Path) -> Path:
    name = read_mlmodel(model_dir).get("flavors", {}).get("sklearn", {}).get("pickled_model")
    if not name:
        raise IntegrityError(f"{str(model_dir)!r} has no sklearn model file in its MLmodel; it is not a churnkit model")
    return confined(model_dir, name, "its MLmodel")


def artifact_sha256(model_dir: str | Path) -> str:
    """sha256 of the serialized model file (the bytes that get deserialized)."""
    return file_sha256(model_file(model_dir))


# --------------------------------------------------------------------------------------------------
# The file manifest: every file of the folder, hashed, checked before anything in it is read
# --------------------------------------------------------------------------------------------------

FILES_MANIFEST = "churnkit-files.json"
#: The compiled scorer an export adds (plain arrays loaded with allow_pickle=False; its sha256 is in the
#: export manifest and checked before it is read).
SCORER_FILE = "churnkit-scorer.npz"
#: Files a model folder may hold outside the manifest: the manifest itself, the export manifest
#: (``churnkit.serve.loading.MANIFEST``, written next to a copied folder) with its compiled scorer, and
#: the file MLflow's client writes into every folder it downloads (model name and version; never read).
UNLISTED = frozenset({FILES_MANIFEST, "churnkit-model.json", SCORER_FILE, "registered_model_meta"})
#: The only types beyond skops' defaults a churnkit model may ask skops to trust when it is loaded.
TRUSTED_TYPES = ("numpy.dtype", "sklearn.ensemble._hist_gradient_boosting.predictor.TreePredictor")
#: Whoever runs the server (never the model folder) may trust more types, comma-separated: estimator
#: classes of their own, importable where the model loads.
TRUSTED_TYPES_ENV = "CHURNKIT_TRUSTED_TYPES"


def trusted_types(environ=None) -> set[str]:
    """The kit's trusted types plus those the operator names in ``CHURNKIT_TRUSTED_TYPES``."""
    import os

    env = os.environ if environ is None else environ
    return set(TRUSTED_TYPES) | {t.strip() for t in env.get(TRUSTED_TYPES_ENV, "").split(",") if t.strip()}


def _folder_files(folder: Path) -> dict[str, Path]:
    """Every entry below ``folder`` by its POSIX path relative to it; a symlink is refused, not followed."""
    out = {}
    for path in sorted(folder.rglob("*")):
        rel = path.relative_to(folder).as_posix()
        if path.is_symlink():
            raise IntegrityError(f"model folder {str(folder)!r} holds a symbolic link {rel!r}; a model folder holds "
                                 "plain files only: remove it or register the model again")
        if path.is_file():
            out[rel] = path
    return out


#: The export manifest (churnkit.serve.loading.MANIFEST): everything serve reads from an exported folder.
SERVING_MANIFEST = "churnkit-model.json"
#: Tag holding the serving manifest's sha256, recorded at registration and pinned by the deploy targets.
MANIFEST_TAG = "churnkit.manifest_sha256"
#: Environment variable a container gets the pinned digest in.
MANIFEST_ENV = "CHURNKIT_MANIFEST_SHA256"
#: Files outside the serving manifest's file list: itself, its compiled scorer (its sha256 is a value of the
#: manifest) and the name/version note MLflow's client writes into every download (never read).
SERVING_UNLISTED = frozenset({SERVING_MANIFEST, SCORER_FILE, "registered_model_meta"})


def serving_manifest(model_dir: str | Path, name: str, version: str, threshold: float,
                     scorer: dict | None) -> bytes:
    """The serving manifest of a model folder, canonical JSON: every file's sha256 plus every value serve reads.

    The same folder and values give the same bytes, so the digest recorded at registration equals the
    digest of the manifest an export writes.
    """
    folder = Path(model_dir)
    files = {rel: file_sha256(p) for rel, p in _folder_files(folder).items() if rel not in SERVING_UNLISTED}
    body = {"format": 2, "name": str(name), "version": str(version), "threshold": float(threshold),
            "scorer": scorer, "files": files, "sha256": file_sha256(model_file(folder))}
    return json.dumps(body, sort_keys=True, separators=(",", ":")).encode()


def verify_serving_manifest(model_dir: str | Path, pin: str | None) -> dict:
    """Check an exported folder against its serving manifest and the manifest against ``pin``; return it.

    Runs before anything else in the folder is read. Every file but :data:`SERVING_UNLISTED` must be
    listed with its sha256 (an extra file, a missing one, a changed one are refused).

    Raises
    ------
    IntegrityError
        Naming the file or the digest that differs and the fix.
    """
    folder = Path(model_dir)
    path = folder / SERVING_MANIFEST
    if path.is_symlink() or not path.is_file():
        raise IntegrityError(f"model folder {str(folder)!r} has no {SERVING_MANIFEST}; export it again with "
                             "churnkit.serve.export_model (churnkit deploy does)")
    data = path.read_bytes()
    sha = hashlib.sha256(data).hexdigest()
    if pin and sha != pin:
        raise IntegrityError(f"model folder {str(folder)!r}: {SERVING_MANIFEST} sha256 {sha[:16]}... does not match "
                             f"the pinned {pin[:16]}... ({MANIFEST_ENV}, recorded at registration); the folder or "
                             "its threshold, name, version or scorer was changed: export the version again")
    try:
        manifest = json.loads(data)
        listed = dict(manifest["files"])
    except (ValueError, KeyError, TypeError) as exc:
        raise IntegrityError(f"{str(path)!r} is not a churnkit serving manifest ({exc}); export the model again") from exc
    problems = _differences(folder, listed, SERVING_UNLISTED, "")
    if problems:
        raise IntegrityError(f"model folder {str(folder)!r} does not match its {SERVING_MANIFEST}: "
                             + "; ".join(problems) + "; export the version again")
    return manifest


def write_files_manifest(model_dir: str | Path) -> str:
    """Write ``churnkit-files.json`` (the sha256 of every file of the folder) and return its own sha256."""
    folder = Path(model_dir)
    files = {rel: file_sha256(p) for rel, p in _folder_files(folder).items() if rel not in UNLISTED}
    data = json.dumps({"format": 1, "files": files}, indent=1, sort_keys=True).encode()
    (folder / FILES_MANIFEST).write_bytes(data)
    return hashlib.sha256(data).hexdigest()


def verify_files(model_dir: str | Path, expected: str | None, source: str) -> str:
    """Check every file of the folder against its manifest, and the manifest against ``expected``.

    Runs before any file of the folder (``MLmodel`` included) is read. Returns the manifest's sha256.

    Raises
    ------
    IntegrityError
        No manifest; the manifest differs from ``expected`` (recorded by ``source``); a listed file is
        missing or changed; a file is not listed (planted).
    """
    folder = Path(model_dir)
    path = folder / FILES_MANIFEST
    if not path.is_file() or path.is_symlink():
        raise IntegrityError(f"model folder {str(folder)!r} has no {FILES_MANIFEST} (the sha256 of each of its files); "
                             "it was not logged by churnkit.log_candidate: train and register it again with "
                             "01-train and 02-evaluate")
    data = path.read_bytes()
    sha = hashlib.sha256(data).hexdigest()
    if expected and sha != expected:
        raise IntegrityError(f"model folder {str(folder)!r}: {FILES_MANIFEST} sha256 {sha[:16]}... does not match "
                             f"{expected[:16]}... recorded by {source}; the folder was changed after registration: "
                             "restore it or register the model again")
    try:
        listed = json.loads(data)["files"]
    except (ValueError, KeyError, TypeError) as exc:
        raise IntegrityError(f"{str(path)!r} is not a churnkit file manifest ({exc}); register the model again") from exc
    problems = _differences(folder, listed, UNLISTED, " (added after registration)")
    if problems:
        raise IntegrityError(f"model folder {str(folder)!r} does not match its {FILES_MANIFEST}: " + "; ".join(problems)
                             + "; restore the folder from the registry or register the model again")
    return sha


def _differences(folder: Path, listed: dict, unlisted, planted_note: str) -> list[str]:
    """What differs between ``folder`` and a manifest's ``listed`` sha256s: planted, missing and changed files."""
    present = {rel: p for rel, p in _folder_files(folder).items() if rel not in unlisted}
    return ([f"{rel!r} is not in the manifest{planted_note}" for rel in sorted(set(present) - set(listed))]
            + [f"{rel!r} is missing" for rel in sorted(set(listed) - set(present))]
            + [f"{rel!r} was changed (sha256 differs)" for rel in sorted(set(listed) & set(present))
               if file_sha256(present[rel]) != listed[rel]])


def load_estimator(model_dir: str | Path, also_trusted: tuple[str, ...] = ()):
    """Deserialize the folder's sklearn model with skops, trusting exactly the allow-listed types.

    Call it after :func:`verify_files`. Unlike ``mlflow.sklearn.load_model`` it never puts a folder
    on ``sys.path`` (MLflow's ``code:`` directory) and refuses every format but skops (:func:`check_flavor`).
    Every type the file names passes :func:`churnkit.scan.resolve_global` (the exact list, the
    operator's ``CHURNKIT_TRUSTED_TYPES`` and ``also_trusted``: types the caller itself vouches for,
    ``churnkit import --trust-type``, never the folder).
    """
    from churnkit.scan import load_skops, parse_types, scan_skops_bytes

    path, _ = check_flavor(model_dir, also_trusted)
    extra = parse_types(sorted(trusted_types() | set(also_trusted)))
    data = path.read_bytes()
    return load_skops(data, scan_skops_bytes(data, str(path), extra), extra)


def check_flavor(model_dir: str | Path, also_trusted: tuple[str, ...] = ()) -> tuple[Path, list[str]]:
    """The skops file and trusted types of the folder's sklearn flavor, after refusing a ``code:`` directory,
    any format but skops, a model file outside the folder, and trusted types beyond the exact allow-list
    (plus the operator's and ``also_trusted``).

    Runs before a server scores with a folder in any way, the compiled scorer included.
    """
    from churnkit.scan import allowed, parse_types

    folder = Path(model_dir)
    flavor = (read_mlmodel(folder).get("flavors") or {}).get("sklearn") or {}
    if flavor.get("code"):
        raise IntegrityError(f"model folder {str(folder)!r} declares a code directory {flavor['code']!r} in its MLmodel; "
                             "churnkit never loads code shipped with a model: register a model logged by "
                             "churnkit.log_candidate")
    fmt = flavor.get("serialization_format", "skops")
    name = str(flavor.get("pickled_model") or "")
    if fmt != "skops" or not name.endswith(".skops"):
        raise IntegrityError(f"model file {name!r} in {str(folder)!r} is serialized as {fmt!r}; churnkit loads only "
                             "skops files (no code runs when they load): log the model with churnkit.log_candidate")
    path = confined(folder, name, "its MLmodel")
    trusted = [str(t) for t in flavor.get("skops_trusted_types") or []]
    extra = parse_types(sorted(trusted_types() | set(also_trusted)))
    untrusted = sorted(t for t in trusted if not allowed(t, extra))
    if untrusted:
        raise IntegrityError(f"model folder {str(folder)!r} asks skops to trust {untrusted!r}, which are not on "
                             "churnkit's exact allow-list; register a model logged by churnkit.log_candidate, or, "
                             f"if you vouch for these classes, name them in {TRUSTED_TYPES_ENV} where the model is "
                             "served")
    return path, trusted


def confined(folder: str | Path, name: str, where: str) -> Path:
    """``folder / name``, refused unless it resolves inside ``folder`` (no ``..``, no absolute path, no link out).

    Raises
    ------
    IntegrityError
        Naming the path and the file that named it.
    """
    folder = Path(folder)
    root = folder.resolve()
    path = (folder / str(name))
    try:
        inside = path.resolve().relative_to(root)
    except ValueError:
        inside = None
    if not str(name) or inside is None or str(inside) == ".":
        raise IntegrityError(f"{where} in {str(folder)!r} names {str(name)!r}, a path outside the folder; a model "
                             "folder's files must lie inside it: export or save the model again")
    return path
