"""Team mode against a real ``mlflow server --app-name basic-auth`` (sqlite, 127.0.0.1): the data scientist
registers candidates and cannot write production; the approver's ``churnkit approve`` copies a version with its
lineage and records the decision; bad input leaves the registry as it was; the pipeline stops for approval and
deploys the approved version; the reviewer's view shows it.

The set-up bootstraps the server's admin with one password and changes it through the auth API at once
(MLflow ships no default password and refuses the legacy one), sets ``MLFLOW_FLASK_SERVER_SECRET_KEY``, and
bounds MLflow's client retries so a dead server fails a command in seconds.
"""

from __future__ import annotations

import contextlib
import json
import secrets
import threading
from pathlib import Path

import mlflow
import pytest
from click.testing import CliRunner
from tracking_support import MlflowServer, free_port

from churnkit import registry
from churnkit.cli import main
from churnkit.config import load_config, scoped_environ
from churnkit.data import load_table
from churnkit.evaluate import GateResult, evaluate_holdout, gate
from churnkit.exceptions import ApprovalError, IntegrityError, PermissionDeniedError
from churnkit.model import split_holdout, train_model
from churnkit.runner import approval
from churnkit.team import apply_team, plan_team

PASSWORDS = {"dana": "Dana-" + secrets.token_urlsafe(12), "ali": "Ali-" + secrets.token_urlsafe(12)}
BOUNDED = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
           "MLFLOW_HTTP_REQUEST_TIMEOUT": "20"}


@pytest.fixture(scope="module")
def team_server(tmp_path_factory):
    base = tmp_path_factory.mktemp("basic-auth")
    ini = base / "basic_auth.ini"
    # keys of mlflow/server/auth/basic_auth.ini (MLflow 3.17.2); the auth store gets its own sqlite file
    ini.write_text("[mlflow]\ndefault_permission = READ\n"
                   f"database_uri = sqlite:///{base / 'auth.db'}\nadmin_username = admin\n"
                   "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
                   # one PBKDF2 check per user and 10 minutes instead of one per request (the ini's own advice)
                   "auth_cache_ttl_seconds = 600\n")
    bootstrap = "Boot-" + secrets.token_urlsafe(12)
    server = MlflowServer(f"sqlite:///{base / 'server.db'}", base / "artifacts", base / "server.log",
                          args=("--app-name", "basic-auth"),
                          env={"MLFLOW_AUTH_CONFIG_PATH": str(ini), "MLFLOW_AUTH_ADMIN_PASSWORD": bootstrap,
                               "MLFLOW_FLASK_SERVER_SECRET_KEY": secrets.token_hex(16)}).start(timeout=180)
    from mlflow.server.auth.client import AuthServiceClient

    admin = "Admin-" + secrets.token_urlsafe(12)
    try:
        with scoped_environ({"MLFLOW_TRACKING_USERNAME": "admin", "MLFLOW_TRACKING_PASSWORD": bootstrap} | BOUNDED):
            auth = AuthServiceClient(server.url)
            auth.update_user_password("admin", admin, current_password=bootstrap)  # the bootstrap one is gone
        server.passwords = PASSWORDS | {"admin": admin}
        server.bootstrap = bootstrap
        with _as(server, "admin"):
            for user in ("dana", "ali"):
                auth.create_user(user, PASSWORDS[user])
            apply_team(plan_team("churn", data_scientists=["dana"], approvers=["ali"]), load_config(base / "runs"),
                       echo=lambda m: None)
        yield server
    finally:
        server.stop()


@contextlib.contextmanager
def _as(server, user: str | None):
    creds = {"MLFLOW_TRACKING_USERNAME": user, "MLFLOW_TRACKING_PASSWORD": server.passwords[user] if user else None}
    with scoped_environ({"MLFLOW_TRACKING_URI": server.url, "MLFLOW_RUN_ID": None} | BOUNDED | creds):
        yield


def _env(server, user: str) -> dict:
    return {"MLFLOW_TRACKING_URI": server.url, "MLFLOW_TRACKING_USERNAME": user,
            "MLFLOW_TRACKING_PASSWORD": server.passwords[user], **BOUNDED}


def _register(config, model_name="churn", seed=0, verdict: GateResult | None = None) -> str:
    """Train on a small synthetic month, log it and register it through the library (02-evaluate's calls)."""
    registry.setup_tracking(config)
    ds = load_table("", rows=600, seed=seed)
    split = split_holdout(ds, 0.25, seed)
    pipe = train_model(split, ds.schema, "logreg", seed)
    with mlflow.start_run():
        run_id = registry.log_candidate(pipe, ds, split, model="logreg", seed=seed)
    cand = registry.load_candidate(run_id, config)
    ev = evaluate_holdout(cand.pipeline, cand.X_holdout, cand.y_holdout)
    verdict = verdict or gate(ev.challenger["roc_auc"], auc_threshold=0.5)
    return registry.register_candidate(cand, verdict, model_name=model_name, metrics=ev.challenger,
                                       threshold=ev.threshold, config=config)


def _snapshot(server, *names):
    """Every version and alias of the models, with every tag, read as the admin."""
    c = mlflow.MlflowClient(server.url, server.url)
    with _as(server, "admin"):
        return {n: (dict(c.get_registered_model(n).aliases),
                    sorted((v.version, tuple(sorted(v.tags.items()))) for v in c.search_model_versions(f"name='{n}'")))
                for n in names}


def _cli(server, user, *args):
    return CliRunner().invoke(main, list(args), env=_env(server, user))


def test_team_init_prints_every_step_and_only_an_admin_applies_it(team_server, tmp_path):
    done = _cli(team_server, "dana", "team", "init", "--data-scientist", "dana", "--approver", "ali", "--ci", "ci-bot")
    assert done.exit_code == 0, done.output
    assert "grant READ on registered model 'churn-production' to 'dana'" in done.output
    assert "grant MANAGE on registered model 'churn-production' to 'ali'" in done.output
    assert "grant MANAGE on registered model 'churn-production' to 'ci-bot'" in done.output
    assert "nothing was changed" in done.output
    refused = _cli(team_server, "dana", "team", "init", "--approver", "ali", "--apply", "--runs-dir", str(tmp_path))
    assert refused.exit_code == 1 and "PermissionDeniedError" in refused.output and "not an MLflow admin" in refused.output
    from mlflow.server.auth.client import AuthServiceClient

    with _as(team_server, "admin"):
        auth = AuthServiceClient(team_server.url)
        assert auth.get_user_permission("dana", "registered_model", "churn-production").permission == "READ"
        assert auth.get_user_permission("ali", "registered_model", "churn-production").permission == "MANAGE"
        assert auth.get_user_permission("dana", "registered_model", "churn").permission == "EDIT"


def test_data_scientist_registers_candidates_but_cannot_write_production(team_server, tmp_path):
    with _as(team_server, "dana"):
        config = load_config(tmp_path / "runs")
        version = _register(config)
        assert version and registry.aliases("churn", config) == {}  # candidates hold no serving alias
        before = _snapshot(team_server, "churn", "churn-production")
        with pytest.raises(PermissionDeniedError) as err:
            registry.set_alias("champion", version, "churn-production", config=config)
        assert "'dana'" in str(err.value) and "EDIT" in str(err.value) and "churn-production" in str(err.value)
        assert "admin" in str(err.value) and "\n" not in str(err.value)
    done = _cli(team_server, "dana", "approve", "churn", version, "--note", "looks good", "--runs-dir", str(tmp_path))
    lines = [line for line in done.output.splitlines() if line.strip()]
    assert done.exit_code == 1 and len(lines) == 1, done.output
    assert lines[0].startswith("error: PermissionDeniedError: user 'dana' may not create a version of registered "
                               "model 'churn-production'")
    assert _snapshot(team_server, "churn", "churn-production") == before


def test_approver_copies_the_candidate_with_its_lineage_and_the_decision(team_server, tmp_path):
    with _as(team_server, "dana"):
        config = load_config(tmp_path / "runs")
        version = _register(config, seed=1)
        candidate_tags = registry.get_version("churn", version, config).tags
    done = _cli(team_server, "ali", "approve", "churn", version, "--note", "AUC up, drift report reviewed",
                "--json", "--runs-dir", str(tmp_path))
    assert done.exit_code == 0, done.output
    decision = json.loads(done.output)
    assert decision["by"] == "ali" and decision["production_model"] == "churn-production"
    produced = decision["production_version"]
    with _as(team_server, "ali"):
        mv = registry.get_version("churn-production", produced, config)
        assert mv.source == f"models:/churn/{version}"
        assert registry.aliases("churn-production", config)[decision["alias"]] == produced
        lineage = json.loads(mv.tags["churnkit.lineage"])
        assert lineage["source_version"] == version and lineage["gate"]["passed"]
        assert lineage["files_sha256"] == candidate_tags["churnkit.files_sha256"] == mv.tags["churnkit.files_sha256"]
        assert "MLmodel" in lineage["files"]
        for key, value in candidate_tags.items():  # every artifact tag travels, including ones added later
            if key.startswith("churnkit.") and key not in ("churnkit.history", "churnkit.manifest_sha256"):
                assert mv.tags[key] == value, key
        sealed = mv.tags["churnkit.manifest_sha256"]  # the serving manifest names the model and version it serves
        assert sealed != candidate_tags["churnkit.manifest_sha256"]
        on_production = json.loads(mv.tags["churnkit.approval"])
        on_candidate = json.loads(registry.get_version("churn", version, config).tags["churnkit.approval"])
        assert on_production["by"] == on_candidate["by"] == "ali"
        assert on_production["note"] == on_candidate["note"] == "AUC up, drift report reviewed"
        assert on_candidate["production_version"] == produced and on_production["source_version"] == version
        assert "approved from churn" in registry.version_history(produced, "churn-production", config)[-1]["event"]
        assert "approved by ali" in registry.version_history(version, "churn", config)[-1]["event"]
        loaded = registry.load_model(f"models:/churn-production/{produced}", config)  # manifest verified on load
        assert loaded.version == produced
        assert registry.manifest_sha256(mv.source, loaded.pipeline, loaded.schema, "churn-production", produced,
                                        loaded.threshold) == sealed  # what deploy pins for the copy

    before = _snapshot(team_server, "churn", "churn-production")
    twice = _cli(team_server, "ali", "approve", "churn", version, "--note", "again", "--runs-dir", str(tmp_path))
    assert twice.exit_code == 1 and "already approved as churn-production v" in twice.output
    unknown = _cli(team_server, "ali", "approve", "churn", "999", "--note", "x", "--runs-dir", str(tmp_path))
    assert unknown.exit_code == 1 and "has no version '999'" in unknown.output
    secret = _cli(team_server, "ali", "approve", "churn", version, "--note", "ok, password=hunter2hunter2",
                  "--runs-dir", str(tmp_path))
    assert secret.exit_code == 1 and "credential" in secret.output and "hunter2hunter2" not in secret.output
    rejected_after = _cli(team_server, "ali", "reject", "churn", version, "--note", "no", "--runs-dir", str(tmp_path))
    assert rejected_after.exit_code == 1 and "already approved" in rejected_after.output
    assert _snapshot(team_server, "churn", "churn-production") == before


def test_gate_override_rejection_and_a_tampered_candidate(team_server, tmp_path):
    skipped = GateResult(passed=True, notes=["gate skipped on purpose (--no-gate)"])  # what an unlabelled import records
    with _as(team_server, "dana"):
        config = load_config(tmp_path / "runs")
        unchecked = _register(config, seed=2, verdict=skipped)
        to_reject = _register(config, seed=3)
        tampered = _register(config, seed=4)
    with _as(team_server, "ali"):
        before = _snapshot(team_server, "churn", "churn-production")
        with pytest.raises(ApprovalError, match="did not pass the gate .*--override-gate"):
            approval.approve("churn", unchecked, "ship it", config=config)
        assert _snapshot(team_server, "churn", "churn-production") == before
        decision = approval.approve("churn", unchecked, "ship it", override_gate="labels arrive next month",
                                    config=config)
        assert json.loads(registry.get_version("churn-production", decision.production_version, config)
                          .tags["churnkit.approval"])["override_gate"] == "labels arrive next month"

        refusal = approval.reject("churn", to_reject, "worse lift in the top decile", config=config)
        assert refusal.decision == "rejected" and refusal.by == "ali"
        with pytest.raises(ApprovalError, match="was already rejected"):
            approval.approve("churn", to_reject, "changed my mind", config=config)

        # a file of the candidate changed on the server's artifact store after registration
        mv = registry.get_version("churn", tampered, config)
        run_dir = next(p for p in Path(team_server.artifacts).rglob("MLmodel")
                       if mv.source.removeprefix("models:/") in str(p)).parent  # the logged model's folder
        with open(run_dir / "MLmodel", "a") as fh:
            fh.write("\n# edited\n")
        before = _snapshot(team_server, "churn", "churn-production")
        with pytest.raises(IntegrityError, match="was changed"):
            approval.approve("churn", tampered, "fine", config=config)
        assert _snapshot(team_server, "churn", "churn-production") == before


def test_two_approvals_of_one_candidate_at_once_leave_one_copy(team_server, tmp_path):
    with _as(team_server, "dana"):
        config = load_config(tmp_path / "runs")
        candidate = _register(config, seed=6)
    with _as(team_server, "ali"):
        start = threading.Barrier(2)
        outcomes: list = []

        def approve_it():
            start.wait()
            try:
                outcomes.append(approval.approve("churn", candidate, "reviewed twice at once", config=config))
            except ApprovalError as exc:
                outcomes.append(exc)

        threads = [threading.Thread(target=approve_it) for _ in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(300)
        won = [o for o in outcomes if isinstance(o, approval.Decision)]
        assert len(outcomes) == 2 and len(won) == 1, outcomes
        copies = [v["version"] for v in registry.list_versions("churn-production", config)
                  if v["source"] == f"models:/churn/{candidate}"]
        assert copies == [won[0].production_version]
        recorded = json.loads(registry.get_version("churn", candidate, config).tags["churnkit.approval"])
        assert recorded["production_version"] == won[0].production_version


def test_without_required_approval_the_pipeline_copies_its_candidate_itself(team_server, tmp_path):
    with _as(team_server, "admin"):
        config = load_config(tmp_path / "runs")
        apply_team(plan_team("churnq", data_scientists=["dana"], approvers=["ali"], require_approval=False), config,
                   echo=lambda m: None)
    with _as(team_server, "ali"):  # the CI identity runs the pipeline
        candidate = _register(config, model_name="churnq", seed=7)
        awaiting, released = approval.hand_off("churnq", candidate, config, "p-1")
        assert awaiting == "" and released["model_name"] == "churnq-production"
        mv = registry.get_version("churnq-production", released["model_version"], config)
        record = json.loads(mv.tags["churnkit.approval"])
        assert record["by"] == "ali" and "approval not required" in record["note"] and "p-1" in record["note"]
        assert approval.hand_off("churn", "5", config) == ("churnkit approve churn 5", {})  # approval required
        assert approval.hand_off("solo", "5", config) == ("", {})  # no production model: as without team mode


def test_guardrail_refuses_unapproved_versions_on_cloud_targets(team_server, tmp_path):
    with _as(team_server, "dana"):
        config = load_config(tmp_path / "runs")
        candidate = _register(config, seed=5)
    with _as(team_server, "ali"):
        with pytest.raises(ApprovalError, match=f"churnkit approve churn {candidate}"):
            approval.check_approved(f"models:/churn/{candidate}", "sagemaker", config)
        approval.check_approved(f"models:/churn/{candidate}", "local", config)  # the local target is never refused
        # a version copied into production around `churnkit approve` (an admin's script): refused and flagged
        rogue = mlflow.MlflowClient(team_server.url, team_server.url).copy_model_version(
            f"models:/churn/{candidate}", "churn-production").version
        with pytest.raises(ApprovalError, match="no recorded approval"):
            approval.check_approved(f"models:/churn-production/{rogue}", "vertex", config)
        rows = approval.production_review(registry.list_versions("churn-production", config), config)
        flagged = next(r for r in rows if r["version"] == str(rogue))
        assert flagged["flag"] and flagged["approved_by"] is None
        approved = next(r for r in rows if r["approved_by"])
        approval.check_approved(f"models:/churn-production/{approved['version']}", "azureml", config)


def test_pipeline_stops_for_approval_then_deploys_the_approved_version(team_server, tmp_path, local_endpoint_cleanup):
    runs = tmp_path / "runs"
    with _as(team_server, "admin"):  # a second team model, so its first approved version becomes champion
        apply_team(plan_team("churnp", data_scientists=["dana"], approvers=["ali"]), load_config(runs),
                   echo=lambda m: None)
    port = str(free_port())
    params = ["-p", "model_name", "churnp", "-p", "rows", "800", "-p", "port", port, "--runs-dir", str(runs)]
    first = _cli(team_server, "dana", "pipeline", *params)
    assert first.exit_code == 0, first.output
    version = next(line for line in first.output.splitlines() if "awaiting approval" in line)
    assert "awaiting approval: `churnkit approve churnp 1`" in version
    assert "03-deploy skipped: awaiting approval" in first.output and "▶ 03-deploy" not in first.output
    refused = _cli(team_server, "ali", "pipeline", "--approved", "1", *params)
    assert refused.exit_code == 1 and "is not approved" in refused.output
    approved = _cli(team_server, "ali", "approve", "churnp", "1", "--note", "first model", "--runs-dir", str(runs))
    assert approved.exit_code == 0, approved.output
    second = _cli(team_server, "ali", "pipeline", "--approved", "1", "--json", *params)
    assert second.exit_code == 0, second.output
    summary = json.loads(second.stdout)
    assert summary["deployment"]["deployed_uri"] == "models:/churnp-production/1"

    report = _cli(team_server, "ali", "report", "--runs-dir", str(runs))
    assert report.exit_code == 0, report.output
    html = Path(report.output.strip().splitlines()[-1]).read_text()
    assert "churnp-production" in html and "approved by ali" in html and "first model" in html
    listing = _cli(team_server, "ali", "runs", "--runs-dir", str(runs))
    assert "churnp-production v1 [champion] from churnp v1: approved by ali" in listing.output


def test_a_dead_server_fails_approve_in_one_line(tmp_path):
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there; the kit's own retry budget applies
    done = CliRunner().invoke(main, ["approve", "churn", "1", "--note", "ok", "--runs-dir", str(tmp_path)],
                              env={"MLFLOW_TRACKING_URI": url, "MLFLOW_HTTP_REQUEST_MAX_RETRIES": None,
                                   "MLFLOW_HTTP_REQUEST_TIMEOUT": None, "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": None})
    lines = [line for line in done.output.splitlines() if line.strip()]
    assert done.exit_code == 1 and len(lines) == 1 and "TrackingServerError" in lines[0] and url in lines[0], done.output
