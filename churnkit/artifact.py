"""A model folder on disk: its metadata, the file that gets deserialized, and its sha256.

MLflow-free on purpose: the serving container and the Azure ML ``score.py`` read model folders
through this module without the MLflow client.
"""

from __future__ import annotations

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


def read_mlmodel(model_dir: str | Path) -> dict:
    import yaml

    return yaml.safe_load((Path(model_dir) / "MLmodel").read_text()) or {}


def read_metadata(model_dir: str | Path) -> dict:
    return read_mlmodel(model_dir).get("metadata") or {}


def model_file(model_dir: str | Path) -> Path:
    name = read_mlmodel(model_dir).get("flavors", {}).get("sklearn", {}).get("pickled_model")
    if not name:
        raise IntegrityError(f"{str(model_dir)!r} has no sklearn model file in its MLmodel; it is not a churnkit model")
    return Path(model_dir) / name


def artifact_sha256(model_dir: str | Path) -> str:
    """sha256 of the serialized model file (the bytes that get deserialized)."""
    return file_sha256(model_file(model_dir))
