"""MLflow: tracking setup, candidate logging and the model registry.

This is the only module that touches MlflowClient's registry. Registration happens only on a passed
gate; a refused candidate leaves the registry exactly as it was, and a registration that fails half
way is undone before the error propagates.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from churnkit.config import (
    ALIAS_CHALLENGER,
    ALIAS_CHAMPION,
    ALIAS_PREVIOUS,
    DEFAULT_MODEL_NAME,
    EXPERIMENT_NAME,
    Config,
    load_config,
    scoped_environ,
)
from churnkit.artifact import LoadedModel, artifact_sha256, read_metadata
from churnkit.data import Dataset, Schema
from churnkit.evaluate import GateResult
from churnkit.exceptions import IntegrityError, RegistryError

TAG = "churnkit."


def _mlflow():
    import mlflow

    return mlflow


def client():
    from mlflow import MlflowClient

    return MlflowClient()


_configured: dict[str, str] = {}


def _point_mlflow(uri: str) -> None:
    """Set MLflow's tracking and registry URI for this process only.

    ``mlflow.set_tracking_uri`` also exports ``MLFLOW_TRACKING_URI``/``MLFLOW_REGISTRY_URI``; left there,
    the next :func:`load_config` would mistake our embedded store for a team server, so they are restored.
    """
    mlflow = _mlflow()
    kept = {k: os.environ.get(k) for k in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")}
    with scoped_environ(kept):
        mlflow.set_tracking_uri(uri)
        mlflow.set_registry_uri(uri)


def setup_tracking(config: Config | None = None) -> str:
    """Point MLflow at the configured store and make sure the ``churnkit`` experiment exists.

    Without ``config``, the store this process last set up is kept (else settings are loaded).
    Returns the experiment id. Idempotent and cheap after the first call per store.
    """
    mlflow = _mlflow()
    if config is None and _configured:
        _point_mlflow(_configured["uri"])
        return _configured["experiment_id"]
    config = config or load_config()
    if _configured.get("uri") == config.tracking_uri:
        _point_mlflow(config.tracking_uri)
        return _configured["experiment_id"]
    if config.embedded:
        config.runs_dir.mkdir(parents=True, exist_ok=True)
    _point_mlflow(config.tracking_uri)
    exp = mlflow.get_experiment_by_name(EXPERIMENT_NAME)
    if exp is None:
        try:
            exp_id = mlflow.create_experiment(EXPERIMENT_NAME, artifact_location=config.artifact_location)
        except Exception:  # another process created it meanwhile
            exp_id = mlflow.get_experiment_by_name(EXPERIMENT_NAME).experiment_id
    else:
        exp_id = exp.experiment_id
    mlflow.set_experiment(experiment_id=exp_id)
    _configured.update(uri=config.tracking_uri, experiment_id=exp_id)
    return exp_id


def start_run(notebook: str, config: Config | None = None):
    """Start (or resume) this notebook's MLflow run.

    Under ``churnkit run`` the runner created the run and passed its id in ``MLFLOW_RUN_ID``; in
    JupyterLab a fresh run is started. Either way the run is active afterwards and returned.
    """
    setup_tracking(config)
    mlflow = _mlflow()
    active = mlflow.active_run()
    if active is not None:
        return active
    run_id = os.environ.get("MLFLOW_RUN_ID")
    if run_id:
        return mlflow.start_run(run_id=run_id)
    return mlflow.start_run(run_name=notebook, tags={TAG + "notebook": notebook, TAG + "interactive": "true"})


def git_commit(cwd: str | os.PathLike | None = None) -> tuple[str, bool]:
    """The git commit of ``cwd`` (default: the current folder) and whether its work tree is dirty.

    Returns ``("unknown", False)`` outside git.
    """
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, check=True,
                             cwd=cwd).stdout.strip()
        dirty = bool(
            subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True,
                           timeout=5, cwd=cwd).stdout.strip()
        )
        return sha, dirty
    except Exception:
        return "unknown", False


def package_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for pkg in ("scikit-learn", "pandas", "numpy", "mlflow", "papermill", "churnkit"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = "not installed"
    return out


def pip_requirements() -> list[str]:
    """Explicit requirements for the logged model (inferring them costs seconds)."""
    v = package_versions()
    return [f"scikit-learn=={v['scikit-learn']}", f"pandas=={v['pandas']}", f"numpy=={v['numpy']}"]


# --------------------------------------------------------------------------------------------------
# Candidates (one per 01-train run)
# --------------------------------------------------------------------------------------------------

def log_candidate(pipeline, dataset: Dataset, split, *, model: str, seed: int,
                  skops_trusted_types: list[str] | None = None) -> str:
    """Log a trained candidate to the active run: params, schema, holdout, the model. Returns the run id.

    ``skops_trusted_types``: the non-default types the model's skops file needs (default: those of
    ``build_model`` pipelines; an imported model passes the ones its scan allowed).
    """
    mlflow = _mlflow()
    run = mlflow.active_run()
    if run is None:
        raise RegistryError("no active MLflow run; call churnkit.start_run(notebook) before log_candidate")
    commit, dirty = git_commit()
    mlflow.log_params({"model": model, "seed": seed, "rows": dataset.rows, "features": len(dataset.schema.columns)})
    mlflow.set_tags(
        {
            TAG + "data_sha256": dataset.sha256,
            TAG + "data_source": dataset.source,
            TAG + "rows": str(dataset.rows),
            TAG + "git_commit": commit,
            TAG + "git_dirty": str(dirty).lower(),
            TAG + "packages": json.dumps(package_versions()),
            TAG + "role": "candidate",
        }
    )
    with tempfile.TemporaryDirectory() as tmp:
        holdout = split.X_holdout.copy()
        holdout["__label__"] = split.y_holdout.to_numpy()
        holdout.to_parquet(Path(tmp) / "holdout.parquet", index=False)
        mlflow.log_artifact(str(Path(tmp) / "holdout.parquet"), "holdout")
    import mlflow.sklearn

    info = mlflow.sklearn.log_model(
        pipeline,
        name="model",
        pip_requirements=pip_requirements(),
        metadata={"churnkit_schema": dataset.schema.to_dict(), "churnkit_model_kind": model},
        input_example=None,
        # Types our own pipelines contain; artifacts are sha256-checked against the registry before loading.
        skops_trusted_types=skops_trusted_types or ["numpy.dtype",
                                                    "sklearn.ensemble._hist_gradient_boosting.predictor.TreePredictor"],
    )
    mlflow.set_tag(TAG + "model_uri", info.model_uri)
    return run.info.run_id


@dataclass
class Candidate:
    run_id: str
    model_uri: str
    pipeline: Any
    schema: Schema
    X_holdout: pd.DataFrame
    y_holdout: pd.Series
    artifact_sha256: str
    tags: dict


def latest_candidate_run() -> str:
    """The id of the newest 01-train run that logged a candidate and did not fail.

    A run still RUNNING counts: in JupyterLab the 01-train kernel keeps its run open while 02-evaluate runs.
    """
    mlflow = _mlflow()
    setup_tracking()
    runs = mlflow.search_runs(
        filter_string=f"tags.`{TAG}role` = 'candidate'",
        order_by=["attributes.start_time DESC"],
        max_results=50,
        output_format="list",
    )
    for run in runs:
        if run.info.status not in ("FAILED", "KILLED") and run.data.tags.get(TAG + "model_uri"):
            return run.info.run_id
    raise RegistryError("no training run with a logged candidate found; run 01-train first or pass train_run_id")


def load_candidate(train_run_id: str = "") -> Candidate:
    """Load a candidate logged by 01-train (the newest when ``train_run_id`` is empty)."""
    mlflow = _mlflow()
    setup_tracking()
    run_id = train_run_id or latest_candidate_run()
    try:
        run = client().get_run(run_id)
    except Exception as exc:
        raise RegistryError(f"training run {run_id!r} not found in {mlflow.get_tracking_uri()!r}; pass a run id from `churnkit runs`") from exc
    model_uri = run.data.tags.get(TAG + "model_uri")
    if not model_uri:
        raise RegistryError(f"run {run_id!r} logged no candidate model; pass the run id of a 01-train run")
    local = Path(mlflow.artifacts.download_artifacts(model_uri))
    sha = artifact_sha256(local)
    import mlflow.sklearn

    pipeline = mlflow.sklearn.load_model(str(local))
    schema = Schema.from_dict(read_metadata(local)["churnkit_schema"])
    holdout, y = read_holdout(run_id)
    return Candidate(run_id, model_uri, pipeline, schema, holdout, y, sha, dict(run.data.tags))


def read_holdout(run_id: str) -> tuple[pd.DataFrame, pd.Series]:
    """The held-out rows (typed features) and labels a 01-train run logged."""
    holdout = pd.read_parquet(_mlflow().artifacts.download_artifacts(run_id=run_id, artifact_path="holdout/holdout.parquet"))
    y = holdout.pop("__label__")
    return holdout, y


# --------------------------------------------------------------------------------------------------
# Artifacts
# --------------------------------------------------------------------------------------------------

# read_metadata, model_file and artifact_sha256 live in churnkit.artifact (no MLflow there).


# --------------------------------------------------------------------------------------------------
# Registry
# --------------------------------------------------------------------------------------------------

def get_alias_version(alias: str, model_name: str = DEFAULT_MODEL_NAME):
    """The ModelVersion behind ``alias``, or None when the alias (or the model) does not exist."""
    setup_tracking()
    try:
        return client().get_model_version_by_alias(model_name, alias)
    except Exception:
        return None


def get_champion(model_name: str = DEFAULT_MODEL_NAME):
    return get_alias_version(ALIAS_CHAMPION, model_name)


def aliases(model_name: str = DEFAULT_MODEL_NAME) -> dict[str, str]:
    """``{alias: version}`` for the registered model ({} when it does not exist yet)."""
    setup_tracking()
    try:
        return {a: str(v) for a, v in client().get_registered_model(model_name).aliases.items()}
    except Exception:
        return {}


def register_candidate(
    candidate: Candidate,
    verdict: GateResult,
    *,
    model_name: str = DEFAULT_MODEL_NAME,
    metrics: dict[str, float] | None = None,
    threshold: float = 0.5,
    output_notebook: str = "",
    tags: dict[str, str] | None = None,
) -> str | None:
    """Register ``candidate`` if ``verdict`` passed; returns the new version, or None (nothing touched).

    ``tags`` are added to the version's own (an imported model's source file, scanner verdict, ...).

    The first version becomes ``champion``; later ones become ``challenger`` until a rollout promotes
    them. On any failure after the version was created, the version (and a model created for it) is
    deleted so the registry is left as it was.
    """
    if not verdict.passed:
        return None
    extra_tags = dict(tags or {})
    setup_tracking()
    c = client()
    t0 = time.perf_counter()
    existed = True
    try:
        c.get_registered_model(model_name)
    except Exception:
        existed = False
    champion = get_champion(model_name)
    tags = {
        TAG + "data_sha256": candidate.tags.get(TAG + "data_sha256", ""),
        TAG + "rows": candidate.tags.get(TAG + "rows", ""),
        TAG + "git_commit": candidate.tags.get(TAG + "git_commit", ""),
        TAG + "git_dirty": candidate.tags.get(TAG + "git_dirty", ""),
        TAG + "sklearn_version": package_versions()["scikit-learn"],
        TAG + "artifact_sha256": candidate.artifact_sha256,
        TAG + "threshold": repr(float(threshold)),
        TAG + "train_run_id": candidate.run_id,
        TAG + "train_notebook": candidate.tags.get(TAG + "output_notebook", ""),
        TAG + "evaluate_notebook": output_notebook or os.environ.get("CHURNKIT_OUTPUT_NOTEBOOK", ""),
        TAG + "gate": json.dumps(verdict.to_dict()),
    }
    for k, v in (metrics or {}).items():
        tags[TAG + "holdout_" + k] = repr(float(v))
    tags.update(extra_tags)
    mv = None
    try:
        if not existed:
            c.create_registered_model(model_name, description="Customer churn probability (churnkit).")
        mv = c.create_model_version(model_name, source=candidate.model_uri, run_id=candidate.run_id, tags=tags,
                                    model_id=candidate.model_uri.removeprefix("models:/"))
        _wait_ready(c, model_name, mv.version)
        alias = ALIAS_CHALLENGER if champion is not None else ALIAS_CHAMPION
        c.set_registered_model_alias(model_name, alias, mv.version)
        record_history(model_name, mv.version, f"registered as {alias}: {verdict.summary()}")
    except Exception as exc:
        if mv is not None:
            _undo(c, model_name, mv.version, existed)
        elif not existed:
            _undo(c, model_name, None, existed)
        raise RegistryError(f"registering {candidate.model_uri!r} as {model_name!r} failed and was undone: {exc}") from exc
    if _mlflow().active_run():
        _mlflow().log_metric("registration_seconds", time.perf_counter() - t0)
    return str(mv.version)


def _wait_ready(c, name: str, version: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        status = c.get_model_version(name, version).status
        if status == "READY":
            return
        if status == "FAILED_REGISTRATION" or time.monotonic() > deadline:
            raise RegistryError(f"model version {name!r} v{version} is {status!r}, not READY")
        time.sleep(0.1)


def _undo(c, name: str, version: str | None, existed: bool) -> None:
    try:
        if version is not None:
            c.delete_model_version(name, version)
        if not existed:
            c.delete_registered_model(name)
    except Exception:
        pass


def set_alias(alias: str, version: str, model_name: str = DEFAULT_MODEL_NAME, reason: str = "") -> None:
    setup_tracking()
    client().set_registered_model_alias(model_name, alias, str(version))
    if reason:
        record_history(model_name, version, f"alias {alias}: {reason}")


def delete_alias(alias: str, model_name: str = DEFAULT_MODEL_NAME) -> None:
    setup_tracking()
    try:
        client().delete_registered_model_alias(model_name, alias)
    except Exception:
        pass


def promote(version: str, model_name: str = DEFAULT_MODEL_NAME, reason: str = "") -> None:
    """Make ``version`` the champion; the old champion becomes ``previous``; drop ``challenger`` if it was it."""
    old = get_champion(model_name)
    if old is not None and str(old.version) != str(version):
        set_alias(ALIAS_PREVIOUS, old.version, model_name, f"replaced by v{version}")
    set_alias(ALIAS_CHAMPION, version, model_name, reason or "promoted")
    ch = get_alias_version(ALIAS_CHALLENGER, model_name)
    if ch is not None and str(ch.version) == str(version):
        delete_alias(ALIAS_CHALLENGER, model_name)


def set_version_tag(version: str, key: str, value: str, model_name: str = DEFAULT_MODEL_NAME) -> None:
    setup_tracking()
    client().set_model_version_tag(model_name, str(version), key if key.startswith(TAG) else TAG + key, value)


def record_history(model_name: str, version: str, event: str) -> None:
    """Append ``event`` (UTC time stamped) to the version's ``churnkit.history`` tag (a JSON list)."""
    c = client()
    mv = c.get_model_version(model_name, str(version))
    history = json.loads(mv.tags.get(TAG + "history", "[]"))
    history.append({"time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "event": event})
    c.set_model_version_tag(model_name, str(version), TAG + "history", json.dumps(history[-50:]))


def version_history(version: str, model_name: str = DEFAULT_MODEL_NAME) -> list[dict]:
    setup_tracking()
    return json.loads(client().get_model_version(model_name, str(version)).tags.get(TAG + "history", "[]"))


def version_holdout(version: str, model_name: str = DEFAULT_MODEL_NAME) -> tuple[pd.DataFrame, pd.Series]:
    """The held-out rows and labels of the training run behind a registered version (for replaying traffic)."""
    setup_tracking()
    mv = client().get_model_version(model_name, str(version))
    run_id = mv.tags.get(TAG + "train_run_id") or mv.run_id
    if not run_id:
        raise RegistryError(f"model {model_name!r} v{version} records no training run; register it through 02-evaluate")
    return read_holdout(run_id)


def list_versions(model_name: str | None = None, config: Config | None = None) -> list[dict]:
    """Every registered version of ``model_name`` (default: of every model), newest first per model.

    Each is a plain dict: ``name, version, aliases, tags, run_id, status, created`` (epoch ms), ``source``.
    """
    setup_tracking(config)
    c = client()
    names = [model_name] if model_name else sorted(m.name for m in c.search_registered_models())
    out = []
    for name in names:
        try:
            model = c.get_registered_model(name)
        except Exception:  # noqa: BLE001 - a model that does not exist has no versions
            continue
        held: dict[str, list[str]] = {}
        for alias, version in model.aliases.items():
            held.setdefault(str(version), []).append(alias)
        versions = c.search_model_versions(f"name = '{name}'")
        for mv in sorted(versions, key=lambda v: -int(v.version)):
            out.append({"name": mv.name, "version": str(mv.version), "aliases": sorted(held.get(str(mv.version), [])),
                        "tags": dict(mv.tags), "run_id": mv.run_id, "status": mv.status,
                        "created": mv.creation_timestamp, "source": mv.source})
    return out


# --------------------------------------------------------------------------------------------------
# Loading for serving and scoring
# --------------------------------------------------------------------------------------------------

def find_version(uri: str, config: Config | None = None):
    """The registry's ModelVersion behind ``models:/name@alias`` or ``models:/name/N`` (no download).

    Returns None for ``runs:/`` URIs and folders, which are not registry versions.

    Raises
    ------
    RegistryError
        The URI names a model, version or alias the registry does not have.
    """
    if not uri.startswith("models:/"):
        return None
    setup_tracking(config)
    rest = uri.removeprefix("models:/")
    try:
        if "@" in rest:
            name, alias = rest.split("@", 1)
            return client().get_model_version_by_alias(name, alias)
        name, version = rest.rsplit("/", 1)
        return client().get_model_version(name, version)
    except Exception as exc:
        raise RegistryError(
            f"model {uri!r} not found in the registry at {_mlflow().get_tracking_uri()!r}; "
            f"registered aliases: {aliases(rest.split('@')[0].split('/')[0])!r}"
        ) from exc


def resolve_model(uri: str, config: Config | None = None) -> tuple[Path, dict]:
    """Download ``uri`` (models:/name@alias, models:/name/version, runs:/id/model, or a folder).

    Returns the local model folder and the registry tags of the version, plus its ``__name__`` and
    ``__version__`` ({} for runs:/ and folders).
    """
    path = Path(uri)
    if path.is_dir():
        if not (path / "MLmodel").exists():
            raise RegistryError(f"folder {uri!r} has no MLmodel file; pass an MLflow model folder or a models:/ URI")
        return path, {}
    if not uri.startswith(("models:/", "runs:/")):
        raise RegistryError(
            f"model {uri!r} is neither a folder nor a models:/ or runs:/ URI; use e.g. models:/churn@champion"
        )
    setup_tracking(config)
    mlflow = _mlflow()
    tags: dict = {}
    target = uri
    if uri.startswith("models:/"):
        mv = find_version(uri, config)
        tags = dict(mv.tags) | {"__name__": mv.name, "__version__": str(mv.version)}
        target = mv.source
    try:
        local = Path(mlflow.artifacts.download_artifacts(target))
    except Exception as exc:
        raise RegistryError(f"model {uri!r} could not be downloaded ({exc}); check the URI and the tracking store") from exc
    return local, tags


def load_model(uri: str, config: Config | None = None, *, verify: bool = True) -> LoadedModel:
    """Load a model for scoring, refusing it when its sha256 differs from the registered one."""
    local, tags = resolve_model(uri, config)
    sha = artifact_sha256(local)
    expected = tags.get(TAG + "artifact_sha256")
    if verify and expected and expected != sha:
        raise IntegrityError(
            f"model {uri!r}: artifact sha256 {sha[:16]}... does not match {expected[:16]}... recorded at "
            "registration; the file was changed after registration: re-register the model or restore the artifact"
        )
    import mlflow.sklearn

    pipeline = mlflow.sklearn.load_model(str(local))
    meta = read_metadata(local)
    if "churnkit_schema" not in meta:
        raise RegistryError(f"model {uri!r} carries no churnkit schema in its MLmodel metadata; train it with 01-train")
    return LoadedModel(
        pipeline=pipeline,
        schema=Schema.from_dict(meta["churnkit_schema"]),
        threshold=float(tags.get(TAG + "threshold", meta.get("churnkit_threshold", 0.5))),
        name=tags.get("__name__", meta.get("churnkit_name", DEFAULT_MODEL_NAME)),
        version=tags.get("__version__", "local"),
        sha256=sha,
        uri=uri,
        path=local,
    )


def load_champion(model_name: str = DEFAULT_MODEL_NAME) -> LoadedModel | None:
    """The serving champion, verified, or None when no version holds the alias yet."""
    if get_champion(model_name) is None:
        return None
    return load_model(f"models:/{model_name}@{ALIAS_CHAMPION}")


def log_evaluation(evaluation, verdict: GateResult, figure=None) -> None:
    """Log holdout metrics, the gate verdict and the evaluation figure to the active run."""
    mlflow = _mlflow()
    mlflow.log_metrics({f"holdout_{k}": v for k, v in evaluation.challenger.items()})
    if evaluation.champion is not None:
        mlflow.log_metrics({f"champion_holdout_{k}": v for k, v in evaluation.champion.items()})
    mlflow.log_metric("threshold", evaluation.threshold)
    mlflow.set_tags(
        {
            TAG + "gate_passed": str(verdict.passed).lower(),
            TAG + "gate_summary": verdict.summary()[:4000],
            TAG + "gate": json.dumps(verdict.to_dict()),
        }
    )
    if figure is not None:
        mlflow.log_figure(figure, "evaluation.png")


def record_registration(version: str | None, model_name: str = DEFAULT_MODEL_NAME) -> dict:
    """Tag the active run with the registration outcome; returns the registry's aliases for display."""
    mlflow = _mlflow()
    current = aliases(model_name)
    mlflow.set_tags({TAG + "registered_version": version or "", TAG + "model_name": model_name,
                     TAG + "aliases": json.dumps(current)})
    return current
