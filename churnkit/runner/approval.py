"""The production hand-off: a reviewer approves (or rejects) a candidate into the production registered model.

Team mode has two registered models: candidates (``churn``; 02-evaluate and ``churnkit import`` register
there, data scientists hold EDIT) and production (``churn-production``; only approvers and the CI identity
write it, and it holds ``champion``, ``challenger`` and ``previous``). :func:`approve` copies a candidate into
production with MLflow's ``copy_model_version`` (the copy's source is the candidate, so the model folder,
its file manifest and the rollout reference files in it travel unchanged, and every tag of the candidate is
carried), then records the lineage, who approved it, when and why on both versions. The tracking server's
own permissions are the gate; the checks here give a clear message before a request is refused.

Tags written (JSON values):

- ``churnkit.approval`` on both versions: ``{"decision", "by", "at", "note", "override_gate", ...}``;
- ``churnkit.lineage`` on the production version: the source version, its run, gate evidence, the file
  manifest (names and digest) and the rollout reference files;
- ``churnkit.source_model`` / ``churnkit.source_version`` on the production version (searchable).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

from churnkit import registry
from churnkit.artifact import FILES_MANIFEST, verify_files
from churnkit.clock import iso_seconds
from churnkit.config import ALIAS_CHALLENGER, ALIAS_CHAMPION, DEFAULT_MODEL_NAME, TAG, Config, load_config
from churnkit.exceptions import ApprovalError, ChurnkitError, RegistryError
from churnkit.runner import secrets
from churnkit.tracking import current_user

APPROVAL = TAG + "approval"
LINEAGE = TAG + "lineage"
SOURCE_MODEL = TAG + "source_model"
SOURCE_VERSION = TAG + "source_version"
CLOUD_TARGETS = ("sagemaker", "azureml", "vertex")
MAX_NOTE = 2000


@dataclass
class Decision:
    """One approval or rejection, as recorded on the versions."""

    decision: str  # "approved" | "rejected"
    model: str
    version: str
    production_model: str
    production_version: str | None
    by: str
    at: str
    note: str
    override_gate: str = ""
    alias: str | None = None
    lineage: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)

    def summary(self) -> str:
        if self.decision == "rejected":
            return f"rejected {self.model} v{self.version} by {self.by} at {self.at}: {self.note}"
        override = f" (gate overridden: {self.override_gate})" if self.override_gate else ""
        return (f"approved {self.model} v{self.version} → {self.production_model} v{self.production_version} as "
                f"{self.alias} by {self.by} at {self.at}{override}: {self.note}\n"
                f"deploy it by number: churnkit pipeline --approved {self.version} -p model_name {self.model}")


def check_note(text: str, what: str = "--note") -> str:
    """The note, stripped; refused when empty, too long or looking like a credential (the kit's secret rules).

    Raises
    ------
    ApprovalError
        Nothing was sent to the registry.
    """
    note = (text or "").strip()
    if not note:
        raise ApprovalError(f"{what} is empty; say why, e.g. --note 'holdout AUC +0.02, reviewed the drift report'")
    if len(note) > MAX_NOTE:
        raise ApprovalError(f"{what} has {len(note)} characters; keep it under {MAX_NOTE} and link to the details")
    found = secrets.find_secrets(note)
    if found:
        raise ApprovalError(f"{what} looks like it holds a credential ({found[0].kind}): {secrets.redact_text(note)!r}; "
                            "the note is stored in the registry for everyone to read: remove the secret")
    return note


def read_tag(tags: dict, key: str) -> dict | None:
    try:
        value = json.loads(tags.get(key) or "null")
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def gate_passed(tags: dict) -> bool:
    """True when the version's recorded gate passed on a measured AUC (a skipped gate is not a pass)."""
    gate = read_tag(tags, TAG + "gate") or {}
    auc = gate.get("challenger_auc")
    return bool(gate.get("passed")) and isinstance(auc, (int, float)) and math.isfinite(auc)


def _team(model_name: str, config: Config) -> registry.Team:
    team = registry.team_models(model_name, config)
    if team is None:
        raise ApprovalError(f"model {model_name!r} has no production model {model_name + registry.PRODUCTION_SUFFIX!r}; "
                            "set up team mode first: `churnkit team init` (see docs/approval.md)")
    if model_name != team.candidates:
        raise ApprovalError(f"model {model_name!r} is the production model; approve a version of the candidates "
                            f"model: `churnkit approve {team.candidates} VERSION --note ...`")
    return team


def _candidate(model_name: str, version: str, config: Config):
    if not str(version).strip().isdigit():
        raise ApprovalError(f"version {version!r} is not a version number; pass the number `churnkit runs` shows")
    return registry.get_version(model_name, str(version).strip(), config)


def _decided(mv, team: registry.Team) -> dict | None:
    record = read_tag(mv.tags, APPROVAL)
    return record if record and record.get("decision") in ("approved", "rejected") else None


def _verified_files(model_name: str, version: str, tags: dict, config: Config) -> tuple[str, list[str]]:
    """Download the candidate and check every file against its manifest; returns the digest and the file names."""
    local, _ = registry.resolve_model(f"models:/{model_name}/{version}", config)
    digest = verify_files(local, tags.get(TAG + "files_sha256"), f"registered version {model_name} v{version}")
    files = sorted(json.loads((Path(local) / FILES_MANIFEST).read_text())["files"])
    return digest, files


def _lineage(mv, digest: str, files: list[str]) -> dict:
    tags = mv.tags
    return {
        "source_model": mv.name,
        "source_version": str(mv.version),
        "source_run_id": tags.get(TAG + "train_run_id") or mv.run_id,
        "gate": read_tag(tags, TAG + "gate") or {},
        "holdout": {k.removeprefix(TAG + "holdout_"): v for k, v in tags.items() if k.startswith(TAG + "holdout_")},
        "evaluate_notebook": tags.get(TAG + "evaluate_notebook", ""),
        "train_notebook": tags.get(TAG + "train_notebook", ""),
        "files_sha256": digest,
        "files": files,
        "rollout_reference": [f for f in files if "reference" in f.lower() or f.startswith("rollout")],
        "artifact_sha256": tags.get(TAG + "artifact_sha256", ""),
        "data_sha256": tags.get(TAG + "data_sha256", ""),
        "git_commit": tags.get(TAG + "git_commit", ""),
    }


def approve(model_name: str, version: str, note: str, *, override_gate: str = "",
            config: Config | None = None) -> Decision:
    """Copy candidate ``model_name`` v``version`` into the production model with its lineage and the approval.

    The copy becomes ``champion`` when production has none, else ``challenger`` (a rollout promotes it).

    Raises
    ------
    ApprovalError
        Not team mode, not a candidate, already approved or rejected, a failed or skipped gate without
        ``override_gate``, or a note that is empty or holds a credential.
    RegistryError
        An unknown version.
    IntegrityError
        The candidate's files do not match its manifest.
    PermissionDeniedError
        The server refused (the message names the permission and who grants it).

    On any failure the registry is as it was: a copy already made is deleted again.
    """
    config = config or load_config()
    note = check_note(note)
    override = check_note(override_gate, "--override-gate") if override_gate else ""
    team = _team(model_name, config)
    mv = _candidate(model_name, version, config)
    version = str(mv.version)
    decided = _decided(mv, team)
    if decided:
        where = (f" as {decided.get('production_model')} v{decided.get('production_version')}"
                 if decided["decision"] == "approved" else "")
        raise ApprovalError(f"{model_name} v{version} was already {decided['decision']}{where} by {decided.get('by')!r} "
                            f"at {decided.get('at')}; register a new candidate for another decision")
    if not gate_passed(mv.tags) and not override:
        gate = read_tag(mv.tags, TAG + "gate") or {}
        why = "; ".join(gate.get("reasons") or gate.get("notes") or ["no gate verdict recorded"])
        raise ApprovalError(f"{model_name} v{version} did not pass the gate ({why}); approve it anyway only with "
                            "--override-gate 'REASON' (recorded on both versions)")
    if mv.status != "READY":
        raise ApprovalError(f"{model_name} v{version} is {mv.status!r}, not READY; wait for its registration to finish")
    digest, files = _verified_files(model_name, version, mv.tags, config)
    who, at = current_user(config), iso_seconds()
    lineage = _lineage(mv, digest, files)
    role = ALIAS_CHAMPION if registry.get_champion(team.production, config) is None else ALIAS_CHALLENGER
    record = {"decision": "approved", "by": who, "at": at, "note": note, "override_gate": override}
    copy = registry.copy_version(model_name, version, team.production, config)
    produced = str(copy.version)
    try:
        _first_copy(model_name, version, team.production, produced, config)
        # the serving manifest names the model and version it serves: the copy is sealed under its own
        registry.seal_version(team.production, produced, config)
        registry.set_version_tags(team.production, produced, {
            APPROVAL: json.dumps(record | {"source_model": model_name, "source_version": version}),
            LINEAGE: json.dumps(lineage),
            SOURCE_MODEL: model_name,
            SOURCE_VERSION: version,
            TAG + "history": "[]",  # the candidate's history stays on the candidate
        }, config)
        registry.record_history(team.production, produced, f"approved from {model_name} v{version} by {who}: {note}",
                                config)
        registry.set_version_tags(model_name, version, {APPROVAL: json.dumps(
            record | {"production_model": team.production, "production_version": produced})}, config)
        try:
            registry.set_alias(role, produced, team.production, f"approved from {model_name} v{version}", config)
            registry.record_history(model_name, version, f"approved by {who} into {team.production} v{produced}"
                                    f" as {role}: {note}", config)
        except BaseException:
            _forget(model_name, version, config)
            raise
    except BaseException:
        _undo_copy(team.production, produced, config)
        raise
    return Decision("approved", model_name, version, team.production, produced, who, at, note, override, role, lineage)


def _first_copy(model_name: str, version: str, production: str, produced: str, config: Config) -> None:
    """Two approvals of one candidate at once: each lists the copies of it after making its own (a copy's
    source is set when it is created); the lowest-numbered copy goes on, any other is undone by its maker."""
    source = f"models:/{model_name}/{version}"
    copies = sorted(int(v["version"]) for v in registry.list_versions(production, config) if v["source"] == source)
    if copies and copies[0] < int(produced):
        raise ApprovalError(f"{model_name} v{version} is being approved by someone else at the same time (as "
                            f"{production} v{copies[0]}); this copy was undone: see `churnkit runs` for the decision")


def _forget(model_name: str, version: str, config: Config) -> None:
    try:
        registry.delete_version_tag(model_name, version, APPROVAL, config)
    except Exception:  # the copy is deleted next; an approval tag naming a deleted copy is reported, not hidden
        pass


def _undo_copy(production: str, version: str, config: Config) -> None:
    try:
        registry.delete_version(production, version, config)
    except Exception:
        pass


def reject(model_name: str, version: str, note: str, *, config: Config | None = None) -> Decision:
    """Record a refusal on candidate ``model_name`` v``version`` (nothing is copied).

    Raises
    ------
    ApprovalError
        Not team mode, not a candidate, already decided, or a bad note.
    """
    config = config or load_config()
    note = check_note(note)
    team = _team(model_name, config)
    mv = _candidate(model_name, version, config)
    version = str(mv.version)
    decided = _decided(mv, team)
    if decided:
        raise ApprovalError(f"{model_name} v{version} was already {decided['decision']} by {decided.get('by')!r} at "
                            f"{decided.get('at')}; a decision is recorded once")
    who, at = current_user(config), iso_seconds()
    registry.set_version_tags(model_name, version, {APPROVAL: json.dumps(
        {"decision": "rejected", "by": who, "at": at, "note": note, "production_model": team.production})}, config)
    registry.record_history(model_name, version, f"rejected by {who}: {note}", config)
    return Decision("rejected", model_name, version, team.production, None, who, at, note)


# --------------------------------------------------------------------------------------------------
# The pipeline and the notebooks
# --------------------------------------------------------------------------------------------------

def hand_off(model_name: str, version: str, config: Config | None = None, pipeline_id: str = "") -> tuple[str, dict]:
    """What a pipeline does with the candidate it registered, before deploying:

    - ``("churnkit approve churn 7", {})``: team mode with approval required; it stops there;
    - ``("", {"model_name": production, "model_version": N})``: team mode without approval required; the
      pipeline copied the candidate itself (recorded as approved by its identity, the note says why);
    - ``("", {})``: no team mode; it deploys the candidate as before.
    """
    team = registry.team_models(model_name, config) if version else None
    if team is None or model_name != team.candidates:
        return "", {}
    if team.approval_required:
        return f"churnkit approve {model_name} {version}", {}
    decision = approve(model_name, version, f"approval not required ({registry.APPROVAL_REQUIRED}=false on "
                       f"{team.production}): copied by pipeline {pipeline_id or '(unnamed)'}", config=config)
    return "", {"model_name": team.production, "model_version": decision.production_version}


def approved_release(model_name: str, version: str, config: Config | None = None) -> tuple[str, str]:
    """``(production model, production version)`` approved from candidate ``model_name`` v``version``.

    Raises
    ------
    ApprovalError
        The candidate has no recorded approval (or it was rejected).
    """
    config = config or load_config()
    team = _team(model_name, config)
    mv = _candidate(model_name, version, config)
    record = read_tag(mv.tags, APPROVAL) or {}
    if record.get("decision") != "approved" or not record.get("production_version"):
        state = f"was {record['decision']}" if record.get("decision") else "is not approved"
        raise ApprovalError(f"{model_name} v{mv.version} {state}; only an approved version is deployed: "
                            f"`churnkit approve {model_name} {mv.version} --note ...` (needs MANAGE on {team.production!r})")
    production = registry.get_version(team.production, record["production_version"], config)
    if (read_tag(production.tags, APPROVAL) or {}).get("decision") != "approved":
        raise ApprovalError(f"{team.production} v{production.version} carries no approval; approve the candidate again")
    return team.production, str(production.version)


def check_approved(model_uri: str, deploy_target: str, config: Config | None = None) -> None:
    """The notebooks' guardrail: refuse a cloud deploy or rollout of a version a team model has not approved.

    Client-side help only (the server's permissions are the real gate); the local target and models
    without team mode are never refused.

    Raises
    ------
    ApprovalError
        ``model_uri`` names a candidate, or a production version with no recorded approval.
    """
    if deploy_target not in CLOUD_TARGETS or not model_uri.startswith("models:/"):
        return
    config = config or load_config()
    mv = registry.find_version(model_uri, config)
    team = registry.team_models(mv.name, config)
    if team is None or not team.approval_required:
        return
    if mv.name == team.candidates:
        raise ApprovalError(f"{mv.name} v{mv.version} is a candidate; {deploy_target} serves only approved versions of "
                            f"{team.production!r}: `churnkit approve {mv.name} {mv.version} --note ...`, then deploy "
                            f"the {team.production} version it prints")
    record = read_tag(mv.tags, APPROVAL) or {}
    if record.get("decision") != "approved":
        source = mv.tags.get(SOURCE_VERSION) or "VERSION"
        raise ApprovalError(f"{mv.name} v{mv.version} has no recorded approval; {deploy_target} serves only approved "
                            f"versions: `churnkit approve {team.candidates} {source} --note ...`")


# --------------------------------------------------------------------------------------------------
# The reviewer's view
# --------------------------------------------------------------------------------------------------

def production_review(versions: list[dict], config: Config | None = None) -> list[dict]:
    """For every version of a production model in ``versions`` (:func:`registry.list_versions` dicts): the
    candidate it came from, who approved it, when, the note, the gate and the rollout records, and
    ``flag`` when a model requiring approval holds a version without one."""
    required: dict[str, bool] = {}
    out = []
    for v in versions:
        if not v["name"].endswith(registry.PRODUCTION_SUFFIX):
            continue
        if v["name"] not in required:
            try:
                team = registry.team_models(v["name"], config)
            except ChurnkitError:
                team = None
            required[v["name"]] = bool(team and team.approval_required)
        tags = v["tags"]
        approval = read_tag(tags, APPROVAL) or {}
        lineage = read_tag(tags, LINEAGE) or {}
        history = _history(tags)
        approved = approval.get("decision") == "approved"
        flag = "" if approved or not required[v["name"]] else "no recorded approval in a model that requires one"
        out.append({
            "name": v["name"], "version": v["version"], "aliases": v.get("aliases", []),
            "source": f"{tags.get(SOURCE_MODEL)} v{tags.get(SOURCE_VERSION)}" if tags.get(SOURCE_VERSION) else None,
            "approved_by": approval.get("by") if approved else None, "approved_at": approval.get("at") if approved else None,
            "note": approval.get("note") if approved else None, "override_gate": approval.get("override_gate") or None,
            "gate": lineage.get("gate") or read_tag(tags, TAG + "gate"),
            "files_sha256": lineage.get("files_sha256") or tags.get(TAG + "files_sha256"),
            "rollout": [h for h in history if "rollout" in h.get("event", "") or h.get("event", "").startswith("alias")],
            "flag": flag,
        })
    return out


def _history(tags: dict) -> list[dict]:
    try:
        value = json.loads(tags.get(TAG + "history") or "[]")
    except ValueError:
        return []
    return [h for h in value if isinstance(h, dict)] if isinstance(value, list) else []


def review_lines(rows: list[dict]) -> list[str]:
    """``churnkit runs``' block of production versions (empty without team mode)."""
    if not rows:
        return []
    lines = ["", "production versions (approvals)"]
    for r in rows:
        aliases = f" [{', '.join(r['aliases'])}]" if r["aliases"] else ""
        if r["approved_by"]:
            gate = r["gate"] or {}
            verdict = ("gate passed" if gate.get("passed") else "gate NOT passed") + (
                f", overridden: {r['override_gate']}" if r["override_gate"] else "")
            lines.append(f"  {r['name']} v{r['version']}{aliases} from {r['source']}: approved by {r['approved_by']} "
                         f"at {r['approved_at']} ({verdict}): {r['note']}")
        else:
            lines.append(f"  {r['name']} v{r['version']}{aliases}: " + ("FLAGGED: " + r["flag"] if r["flag"]
                                                                       else "no recorded approval"))
        for h in r["rollout"][-3:]:
            lines.append(f"      {h.get('time', '')}  {h.get('event', '')}")
    return lines


def version_decision(model_name: str = DEFAULT_MODEL_NAME, version: str = "", config: Config | None = None) -> dict:
    """The recorded decision on a version ({} when none), for notebooks and tests."""
    try:
        return read_tag(registry.get_version(model_name, version, config).tags, APPROVAL) or {}
    except RegistryError:
        return {}
