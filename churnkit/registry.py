"""The model registry: candidates, registered versions, aliases and their history, verified loading.

With :mod:`churnkit.tracking`, the only modules that touch MLflow; every function takes the
configuration explicitly (``config=None`` reads the environment at that call). Registration happens only on a passed
gate; a refused candidate leaves the registry exactly as it was, and a registration that fails half
way is undone before the error propagates.
"""

from __future__ import annotations

import contextlib
import io
import json
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
    TAG,
    Config,
    load_config,
)
from churnkit.clock import iso_seconds
from churnkit.artifact import (
    FILES_MANIFEST,
    MANIFEST_TAG,
    TRUSTED_TYPES,
    LoadedModel,
    artifact_sha256,
    load_estimator,
    read_metadata,
    serving_manifest,
    verify_files,
    write_files_manifest,
)
from churnkit.data import Dataset, Schema
from churnkit.evaluate import GateResult
from churnkit.exceptions import ChurnkitError, IntegrityError, RegistryError
from churnkit.tracking import (
    client,
    git_commit,
    mlflow_module,
    package_versions,
    permission_error,
    pip_requirements,
    server_error,
    setup_tracking,
)

# --------------------------------------------------------------------------------------------------
# Candidates (one per 01-train run)
# --------------------------------------------------------------------------------------------------

def log_candidate(pipeline, dataset: Dataset, split, *, model: str, seed: int,
                  skops_trusted_types: list[str] | None = None) -> str:
    """Log a trained candidate to the active run: params, schema, holdout, the model. Returns the run id.

    ``skops_trusted_types``: the non-default types the model's skops file needs (default: those of
    ``build_model`` pipelines; an imported model passes the ones its scan allowed).
    """
    mlflow = mlflow_module()
    run = mlflow.active_run()
    if run is None:
        raise RegistryError("no active MLflow run; call churnkit.start_run(notebook) before log_candidate")
    commit, dirty = git_commit()
    logged = mlflow.get_run(run.info.run_id).data.params  # a notebook parameter of the same name stays as set
    mlflow.log_params({k: v for k, v in {"model": model, "seed": seed, "rows": dataset.rows,
                                         "features": len(dataset.schema.columns)}.items() if k not in logged})
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
        skops_trusted_types=skops_trusted_types or list(TRUSTED_TYPES),
    )
    # The manifest of every file of the logged folder; its sha256 goes on the run, then on the version.
    with tempfile.TemporaryDirectory() as tmp:
        local = Path(mlflow.artifacts.download_artifacts(info.model_uri, dst_path=tmp))
        files_sha = write_files_manifest(local)
        from mlflow import MlflowClient

        MlflowClient().log_model_artifact(info.model_id, str(local / FILES_MANIFEST))
    mlflow.set_tags({TAG + "model_uri": info.model_uri, TAG + "files_sha256": files_sha})
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
    files_sha256: str = ""


def latest_candidate_run(config: Config | None = None) -> str:
    """The id of the newest 01-train run that logged a candidate and did not fail.

    A run still RUNNING counts: in JupyterLab the 01-train kernel keeps its run open while 02-evaluate runs.
    """
    mlflow = mlflow_module()
    setup_tracking(config)
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


def load_candidate(train_run_id: str = "", config: Config | None = None, *,
                   also_trusted: tuple[str, ...] = ()) -> Candidate:
    """Load a candidate logged by 01-train (the newest when ``train_run_id`` is empty).

    ``also_trusted``: skops types the caller vouches for (an import with ``--trust``; see :func:`load_estimator`).
    """
    mlflow = mlflow_module()
    c = client(config)
    run_id = train_run_id or latest_candidate_run(config)
    try:
        run = c.get_run(run_id)
    except Exception as exc:
        raise RegistryError(f"training run {run_id!r} not found in {mlflow.get_tracking_uri()!r}; pass a run id from `churnkit runs`") from exc
    model_uri = run.data.tags.get(TAG + "model_uri")
    if not model_uri:
        raise RegistryError(f"run {run_id!r} logged no candidate model; pass the run id of a 01-train run")
    local = Path(mlflow.artifacts.download_artifacts(model_uri))
    files_sha = verify_files(local, run.data.tags.get(TAG + "files_sha256"), f"training run {run_id}")
    sha = artifact_sha256(local)
    pipeline = load_estimator(local, tuple(also_trusted))
    schema = Schema.from_dict(read_metadata(local)["churnkit_schema"])
    holdout, y = read_holdout(run_id)
    return Candidate(run_id, model_uri, pipeline, schema, holdout, y, sha, dict(run.data.tags), files_sha)


def read_holdout(run_id: str) -> tuple[pd.DataFrame, pd.Series]:
    """The held-out rows (typed features) and labels a 01-train run logged."""
    holdout = pd.read_parquet(mlflow_module().artifacts.download_artifacts(run_id=run_id, artifact_path="holdout/holdout.parquet"))
    y = holdout.pop("__label__")
    return holdout, y


# --------------------------------------------------------------------------------------------------
# Artifacts
# --------------------------------------------------------------------------------------------------

# read_metadata, model_file and artifact_sha256 live in churnkit.artifact (no MLflow there).


# --------------------------------------------------------------------------------------------------
# Registry
# --------------------------------------------------------------------------------------------------

# --------------------------------------------------------------------------------------------------
# Team mode: candidates, and a production model only approvers and CI write
# --------------------------------------------------------------------------------------------------

#: The production registered model of candidates ``churn`` is ``churn-production``.
PRODUCTION_SUFFIX = "-production"
#: Registered-model tags of the production model: approval required ("true"/"false"), its candidates' model.
APPROVAL_REQUIRED = TAG + "approval_required"
CANDIDATES_MODEL = TAG + "candidates_model"


@dataclass(frozen=True)
class Team:
    """The two registered models of team mode: ``candidates`` (data scientists register there) and
    ``production`` (written by approvers and CI; holds champion, challenger, previous)."""

    candidates: str
    production: str
    approval_required: bool


@contextlib.contextmanager
def server_answers(resource: str, config: Config | None = None):
    """Turn the tracking server's 401/403 (and a server that does not answer) into one-line kit errors."""
    try:
        yield
    except ChurnkitError:
        raise
    except Exception as exc:
        error = permission_error(exc, config, resource=resource) or server_error(exc, config)
        if error is None:
            raise
        raise error from None


def team_models(model_name: str = DEFAULT_MODEL_NAME, config: Config | None = None) -> Team | None:
    """The team-mode pair ``model_name`` belongs to (as candidates or as production), or None.

    Team mode is on when the production model exists (``churnkit team init`` creates it); with the
    embedded single-user default there is none and nothing changes.
    """
    c = client(config)
    production = model_name if model_name.endswith(PRODUCTION_SUFFIX) else model_name + PRODUCTION_SUFFIX
    try:
        with server_answers(f"registered model {production!r}", config):
            model = c.get_registered_model(production)
    except ChurnkitError:
        raise
    except Exception as exc:
        if getattr(exc, "error_code", "") == "RESOURCE_DOES_NOT_EXIST":  # no production model: no team mode
            return None
        raise
    candidates = model.tags.get(CANDIDATES_MODEL) or production.removesuffix(PRODUCTION_SUFFIX)
    if model_name not in (candidates, production):
        return None
    return Team(candidates, production, model.tags.get(APPROVAL_REQUIRED, "false").strip().lower() == "true")


def get_version(model_name: str, version: str, config: Config | None = None):
    """The ModelVersion ``model_name`` v``version``.

    Raises
    ------
    RegistryError
        The model or the version does not exist; the message lists the versions it has.
    """
    c = client(config)
    try:
        with server_answers(f"registered model {model_name!r}", config):
            return c.get_model_version(model_name, str(version))
    except RegistryError:
        raise
    except Exception:
        known = [v["version"] for v in list_versions(model_name, config)]
        raise RegistryError(f"model {model_name!r} has no version {str(version)!r}; registered versions: "
                            f"{', '.join(reversed(known)) or 'none'} (see `churnkit runs` or the MLflow UI)") from None


def copy_version(model_name: str, version: str, dst_name: str, config: Config | None = None):
    """Copy ``model_name`` v``version`` into ``dst_name`` (MLflow's ``copy_model_version``): the new version's
    source is ``models:/model_name/version`` and it carries every tag of the source. Returns it, READY."""
    c = client(config)
    # MLflow prints "Registered model ... already exists" and "Copied version ..." on stderr: not the kit's news
    with server_answers(f"registered model {dst_name!r}", config), contextlib.redirect_stderr(io.StringIO()):
        mv = c.copy_model_version(f"models:/{model_name}/{version}", dst_name)
        _wait_ready(c, dst_name, mv.version)
    return mv


def set_version_tags(model_name: str, version: str, tags: dict[str, str], config: Config | None = None) -> None:
    c = client(config)
    with server_answers(f"registered model {model_name!r}", config):
        for key, value in tags.items():
            c.set_model_version_tag(model_name, str(version), key, value)


def delete_version_tag(model_name: str, version: str, key: str, config: Config | None = None) -> None:
    with server_answers(f"registered model {model_name!r}", config):
        client(config).delete_model_version_tag(model_name, str(version), key)


def delete_version(model_name: str, version: str, config: Config | None = None) -> None:
    with server_answers(f"registered model {model_name!r}", config):
        client(config).delete_model_version(model_name, str(version))


def get_alias_version(alias: str, model_name: str = DEFAULT_MODEL_NAME, config: Config | None = None):
    """The ModelVersion behind ``alias``, or None when the alias (or the model) does not exist."""
    c = client(config)
    try:
        return c.get_model_version_by_alias(model_name, alias)
    except Exception:
        return None


def get_champion(model_name: str = DEFAULT_MODEL_NAME, config: Config | None = None):
    return get_alias_version(ALIAS_CHAMPION, model_name, config)


def aliases(model_name: str = DEFAULT_MODEL_NAME, config: Config | None = None) -> dict[str, str]:
    """``{alias: version}`` for the registered model ({} when it does not exist yet)."""
    c = client(config)
    try:
        return {a: str(v) for a, v in c.get_registered_model(model_name).aliases.items()}
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
    config: Config | None = None,
    tags: dict[str, str] | None = None,
    files: dict[str, bytes] | None = None,
) -> str | None:
    """Register ``candidate`` if ``verdict`` passed; returns the new version, or None (nothing touched).

    ``tags`` are added to the version's own (an imported model's source file, scanner verdict, ...).
    ``files`` (name → bytes; the version's rollout reference, :mod:`churnkit.reference`) are written into
    the candidate's model folder before the version is created, and the folder's manifest is computed again
    over every file, so the version's recorded manifest covers them (:func:`attach_files`).

    The first version becomes ``champion``; later ones become ``challenger`` until a rollout promotes
    them. On any failure after the version was created, the version (and a model this call created, if
    no other process registered a version of it meanwhile) is deleted so the registry is left as it was.

    Safe under concurrent registration (two pipelines, two machines on one server): creating the
    model tolerates "already exists", and when several versions race to be the first, the lowest
    number becomes ``champion`` and the others ``challenger``.
    """
    if not verdict.passed:
        return None
    extra_tags = dict(tags or {})
    config = config or load_config()
    c = client(config)
    t0 = time.perf_counter()
    if files:
        attach_files(candidate, files, config)
    champion = get_champion(model_name, config)
    before = _highest_version(c, model_name)
    tags = {
        TAG + "data_sha256": candidate.tags.get(TAG + "data_sha256", ""),
        TAG + "rows": candidate.tags.get(TAG + "rows", ""),
        TAG + "git_commit": candidate.tags.get(TAG + "git_commit", ""),
        TAG + "git_dirty": candidate.tags.get(TAG + "git_dirty", ""),
        TAG + "sklearn_version": package_versions()["scikit-learn"],
        TAG + "artifact_sha256": candidate.artifact_sha256,
        TAG + "files_sha256": candidate.files_sha256,
        TAG + "threshold": repr(float(threshold)),
        TAG + "train_run_id": candidate.run_id,
        TAG + "train_notebook": candidate.tags.get(TAG + "output_notebook", ""),
        TAG + "evaluate_notebook": output_notebook or config.output_notebook,
        TAG + "gate": json.dumps(verdict.to_dict()),
    }
    for k, v in (metrics or {}).items():
        tags[TAG + "holdout_" + k] = repr(float(v))
    tags.update(extra_tags)
    team = team_models(model_name, config)
    if team is not None and model_name == team.production:
        raise RegistryError(f"model {model_name!r} is the production model: register into {team.candidates!r} and "
                            f"approve the version with `churnkit approve {team.candidates} VERSION --note ...`")
    mv, created = None, False
    try:
        created = _ensure_registered_model(c, model_name)
        mv = _create_version(c, model_name, candidate, tags)
        _wait_ready(c, model_name, mv.version)
        c.set_model_version_tag(model_name, mv.version, MANIFEST_TAG,
                                manifest_sha256(candidate.model_uri, candidate.pipeline, candidate.schema, model_name,
                                                str(mv.version), threshold))
        if team is not None:  # a candidate: the production model's aliases move only by approval and rollout
            role = f"a candidate for {team.production!r}"
        else:
            role = _set_first_alias(c, model_name, str(mv.version), before, champion, config)
        record_history(model_name, mv.version, f"registered as {role}: {verdict.summary()}", config)
    except Exception as exc:
        _undo(c, model_name, mv.version if mv is not None else None, created)
        denied = permission_error(exc, config, resource=f"registered model {model_name!r}")
        if denied is not None:
            raise denied from None
        raise RegistryError(f"registering {candidate.model_uri!r} as {model_name!r} failed and was undone: {exc}") from exc
    if mlflow_module().active_run():
        mlflow_module().log_metric("registration_seconds", time.perf_counter() - t0)
    return str(mv.version)


def manifest_sha256(model_uri: str, pipeline, schema: Schema, name: str, version: str, threshold: float) -> str:
    """The digest of the serving manifest an export of this version writes (every file, threshold, name,
    version, compiled scorer): recorded at registration as ``churnkit.manifest_sha256``, pinned by deploy targets.

    Compute it last, once every file of the version's folder is written.
    """
    import hashlib

    # the one import of the serving layer from here: the compiled scorer is part of what is sealed
    from churnkit.serve.compiled import compile_entry

    with tempfile.TemporaryDirectory() as tmp:
        local = Path(mlflow_module().artifacts.download_artifacts(model_uri, dst_path=tmp))
        made = compile_entry(pipeline, schema, threshold)
        data = serving_manifest(local, name, version, threshold, made[1] if made else None)
    return hashlib.sha256(data).hexdigest()


def seal_version(model_name: str, version: str, config: Config | None = None) -> str:
    """Record (again) the serving-manifest digest of an existing version, e.g. one copied under another name.

    The digest covers the version's name and number, so a copy needs its own; returns it.
    """
    loaded = load_model(f"models:/{model_name}/{version}", config)
    mv = client(config).get_model_version(model_name, str(version))
    digest = manifest_sha256(mv.source, loaded.pipeline, loaded.schema, model_name, str(version), loaded.threshold)
    client(config).set_model_version_tag(model_name, str(version), MANIFEST_TAG, digest)
    return digest


def attach_files(candidate: Candidate, files: dict[str, bytes], config: Config | None = None) -> str:
    """Write ``files`` into the candidate's model folder and compute its manifest again; returns its sha256.

    The folder is checked against the manifest its training run recorded first; the new manifest's sha256
    goes on the training run (and on ``candidate``) so the version registered next records it. A file the
    folder already holds (the candidate was registered before) is kept as it is: another version's manifest
    covers it.

    Raises
    ------
    RegistryError
        A file name that is not a plain name in the folder.
    IntegrityError
        The folder no longer matches its recorded manifest.
    """
    sha = _attach(candidate.model_uri, candidate.files_sha256, f"training run {candidate.run_id}", files, config,
                  keep_existing=True)
    if sha != candidate.files_sha256:
        client(config).set_tag(candidate.run_id, TAG + "files_sha256", sha)
        candidate.files_sha256 = sha
        candidate.tags[TAG + "files_sha256"] = sha
    return sha


def attach_version_files(version: str, files: dict[str, bytes], model_name: str = DEFAULT_MODEL_NAME,
                         config: Config | None = None) -> str:
    """Write ``files`` into a registered version's folder (replacing files of the same name), compute its
    manifest again and record it on the version; returns the manifest's sha256 (``churnkit reference build``)."""
    c = client(config)
    mv = c.get_model_version(model_name, str(version))
    where = f"registered version {model_name} v{version}"
    sha = _attach(mv.source, mv.tags.get(TAG + "files_sha256"), where, files, config, keep_existing=False)
    c.set_model_version_tag(model_name, str(version), TAG + "files_sha256", sha)
    run_id = mv.tags.get(TAG + "train_run_id") or mv.run_id
    if run_id:
        c.set_tag(run_id, TAG + "files_sha256", sha)
    if mv.tags.get(MANIFEST_TAG):  # the serving manifest covers every file: seal the folder again
        seal_version(model_name, str(version), config)
    record_history(model_name, str(version), f"files {sorted(files)!r} written into the model folder; manifest "
                                             f"{sha[:16]}... recorded", config)
    return sha


def _attach(model_uri: str, expected: str | None, where: str, files: dict[str, bytes], config: Config | None,
            *, keep_existing: bool) -> str:
    bad = [n for n in files if not n or "/" in n or "\\" in n or n.startswith(".") or n == FILES_MANIFEST]
    if bad:
        raise RegistryError(f"file name(s) {bad!r} cannot be added to a model folder: use plain names such as "
                            "'churnkit-reference.json'")
    if not model_uri.startswith("models:/"):
        raise RegistryError(f"model {model_uri!r} is not a logged model (models:/m-...); files can be added only "
                            "to a model logged by churnkit.log_candidate")
    mlflow = mlflow_module()
    setup_tracking(config)
    with tempfile.TemporaryDirectory() as tmp:
        local = Path(mlflow.artifacts.download_artifacts(model_uri, dst_path=tmp))
        sha = verify_files(local, expected or None, where)
        new = {n: data for n, data in files.items() if not (keep_existing and (local / n).exists())}
        if not new:
            return sha
        for name, data in new.items():
            (local / name).write_bytes(data)
        sha = write_files_manifest(local)
        from mlflow import MlflowClient

        uploader = MlflowClient(tracking_uri=config.tracking_uri if config else None)
        for name in [*new, FILES_MANIFEST]:  # the manifest last: a folder read meanwhile fails verification
            uploader.log_model_artifact(model_uri.removeprefix("models:/"), str(local / name))
    return sha


def _set_first_alias(c, model_name: str, version: str, before: int, champion, config) -> str:
    """``champion`` for the first version (the lowest of racing first ones), else ``challenger``; returns it."""
    alias = _first_role(c, model_name, version, before, config) if champion is None else ALIAS_CHALLENGER
    c.set_registered_model_alias(model_name, alias, version)
    if alias == ALIAS_CHAMPION:  # another first version may have taken the alias meanwhile: one champion
        now = get_champion(model_name, config)
        if now is not None and str(now.version) != version:
            alias = ALIAS_CHALLENGER
            c.set_registered_model_alias(model_name, alias, version)
    return alias


def _highest_version(c, name: str) -> int:
    try:
        return max((int(v.version) for v in c.search_model_versions(f"name = '{name}'")), default=0)
    except Exception:
        return 0


def _ensure_registered_model(c, name: str) -> bool:
    """Create the registered model unless it exists; True only when this call created it."""
    try:
        c.get_registered_model(name)
        return False
    except Exception:
        pass
    try:
        c.create_registered_model(name, description="Customer churn probability (churnkit).")
        return True
    except Exception:  # another process created it between the two calls ("already exists")
        c.get_registered_model(name)  # raises if it really is not there
        return False


def _create_version(c, name: str, candidate: Candidate, tags: dict, attempts: int = 5):
    """Create the model version; retried when a concurrent registration took the same number."""
    for attempt in range(attempts):
        try:
            return c.create_model_version(name, source=candidate.model_uri, run_id=candidate.run_id, tags=tags,
                                          model_id=candidate.model_uri.removeprefix("models:/"))
        except Exception:
            if attempt == attempts - 1:
                raise
            time.sleep(0.2 * (attempt + 1))
    raise AssertionError("unreachable")


def _first_role(c, name: str, version: str, before: int, config) -> str:
    """With no champion yet: the lowest version registered since ``before`` (this one or a racing one) leads."""
    if get_champion(name, config) is not None:
        return ALIAS_CHALLENGER
    racing = [int(v.version) for v in c.search_model_versions(f"name = '{name}'")
              if int(v.version) > before and v.status == "READY"]
    return ALIAS_CHAMPION if min(racing, default=int(version)) >= int(version) else ALIAS_CHALLENGER


def _wait_ready(c, name: str, version: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        status = c.get_model_version(name, version).status
        if status == "READY":
            return
        if status == "FAILED_REGISTRATION" or time.monotonic() > deadline:
            raise RegistryError(f"model version {name!r} v{version} is {status!r}, not READY")
        time.sleep(0.1)


def _undo(c, name: str, version: str | None, created: bool) -> None:
    """Delete what this registration created: its version, and the model only if it created it and no
    other version of it exists (another process may have registered one meanwhile)."""
    try:
        if version is not None:
            c.delete_model_version(name, version)
        if created and not c.search_model_versions(f"name = '{name}'"):
            c.delete_registered_model(name)
    except Exception:
        pass


def set_alias(alias: str, version: str, model_name: str = DEFAULT_MODEL_NAME, reason: str = "",
              config: Config | None = None) -> None:
    with server_answers(f"registered model {model_name!r}", config):
        client(config).set_registered_model_alias(model_name, alias, str(version))
    if reason:
        record_history(model_name, version, f"alias {alias}: {reason}", config)


def expect_alias(alias: str, version: str, model_name: str = DEFAULT_MODEL_NAME, config: Config | None = None) -> None:
    """Raise unless ``alias`` points at ``version`` ("" checks nothing): a pipeline acts on its own version only.

    Raises
    ------
    RegistryError
        The alias moved to another version (another pipeline registered one) or does not exist.
    """
    if not str(version):
        return
    held = get_alias_version(alias, model_name, config)
    if held is None or str(held.version) != str(version):
        now = f"v{held.version}" if held is not None else "no version"
        raise RegistryError(f"model {model_name!r} alias {alias!r} points at {now}, not at v{version} that this run "
                            f"was given; another registration moved it: run the pipeline again, or roll out "
                            f"{alias!r} explicitly with `churnkit rollout`")


def delete_alias(alias: str, model_name: str = DEFAULT_MODEL_NAME, config: Config | None = None) -> None:
    c = client(config)
    try:
        c.delete_registered_model_alias(model_name, alias)
    except Exception:
        pass


def promote(version: str, model_name: str = DEFAULT_MODEL_NAME, reason: str = "", config: Config | None = None) -> None:
    """Make ``version`` the champion; the old champion becomes ``previous``; drop ``challenger`` if it was it."""
    old = get_champion(model_name, config)
    if old is not None and str(old.version) != str(version):
        set_alias(ALIAS_PREVIOUS, old.version, model_name, f"replaced by v{version}", config)
    set_alias(ALIAS_CHAMPION, version, model_name, reason or "promoted", config)
    ch = get_alias_version(ALIAS_CHALLENGER, model_name, config)
    if ch is not None and str(ch.version) == str(version):
        delete_alias(ALIAS_CHALLENGER, model_name, config)


def set_version_tag(version: str, key: str, value: str, model_name: str = DEFAULT_MODEL_NAME,
                    config: Config | None = None) -> None:
    client(config).set_model_version_tag(model_name, str(version), key if key.startswith(TAG) else TAG + key, value)


def record_history(model_name: str, version: str, event: str, config: Config | None = None) -> None:
    """Append ``event`` (UTC time stamped) to the version's ``churnkit.history`` tag (a JSON list)."""
    c = client(config)
    mv = c.get_model_version(model_name, str(version))
    history = json.loads(mv.tags.get(TAG + "history", "[]"))
    history.append({"time": iso_seconds(), "event": event})
    c.set_model_version_tag(model_name, str(version), TAG + "history", json.dumps(history[-50:]))


def version_history(version: str, model_name: str = DEFAULT_MODEL_NAME, config: Config | None = None) -> list[dict]:
    return json.loads(client(config).get_model_version(model_name, str(version)).tags.get(TAG + "history", "[]"))


def version_holdout(version: str, model_name: str = DEFAULT_MODEL_NAME,
                    config: Config | None = None) -> tuple[pd.DataFrame, pd.Series]:
    """The held-out rows and labels of the training run behind a registered version (for replaying traffic)."""
    mv = client(config).get_model_version(model_name, str(version))
    run_id = mv.tags.get(TAG + "train_run_id") or mv.run_id
    if not run_id:
        raise RegistryError(f"model {model_name!r} v{version} records no training run; register it through 02-evaluate")
    return read_holdout(run_id)


def list_versions(model_name: str | None = None, config: Config | None = None) -> list[dict]:
    """Every registered version of ``model_name`` (default: of every model), newest first per model.

    Each is a plain dict: ``name, version, aliases, tags, run_id, status, created`` (epoch ms), ``source``.
    """
    c = client(config)
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
    c = client(config)
    rest = uri.removeprefix("models:/")
    try:
        if "@" in rest:
            name, alias = rest.split("@", 1)
            return c.get_model_version_by_alias(name, alias)
        name, version = rest.rsplit("/", 1)
        return c.get_model_version(name, version)
    except Exception as exc:
        raise RegistryError(
            f"model {uri!r} not found in the registry at {mlflow_module().get_tracking_uri()!r}; "
            f"registered aliases: {aliases(rest.split('@')[0].split('/')[0], config)!r}"
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
    mlflow = mlflow_module()
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
    if verify:  # every file against the manifest recorded at registration, before anything is read
        where = f"registered version {tags['__name__']} v{tags['__version__']}" if "__version__" in tags else "none"
        verify_files(local, tags.get(TAG + "files_sha256"), where)
    sha = artifact_sha256(local)
    expected = tags.get(TAG + "artifact_sha256")
    if verify and expected and expected != sha:
        raise IntegrityError(
            f"model {uri!r}: artifact sha256 {sha[:16]}... does not match {expected[:16]}... recorded at "
            "registration; the file was changed after registration: re-register the model or restore the artifact"
        )
    pipeline = load_estimator(local)
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
        manifest_sha256=tags.get(MANIFEST_TAG, ""),
    )


def load_champion(model_name: str = DEFAULT_MODEL_NAME, config: Config | None = None) -> LoadedModel | None:
    """The serving champion, verified, or None when no version holds the alias yet.

    In team mode the champion of candidates ``model_name`` is the production model's: the gate compares a
    candidate with what serves.
    """
    team = team_models(model_name, config)
    if team is not None:
        model_name = team.production
    if get_champion(model_name, config) is None:
        return None
    return load_model(f"models:/{model_name}@{ALIAS_CHAMPION}", config)


def record_registration(version: str | None, model_name: str = DEFAULT_MODEL_NAME, config: Config | None = None) -> dict:
    """Tag the active run with the registration outcome; returns the registry's aliases for display."""
    mlflow = mlflow_module()
    current = aliases(model_name, config)
    mlflow.set_tags({TAG + "registered_version": version or "", TAG + "model_name": model_name,
                     TAG + "aliases": json.dumps(current)})
    return current
