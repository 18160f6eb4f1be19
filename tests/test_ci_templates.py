"""The CI templates are valid YAML, run monthly and on demand with the notebook parameters as inputs, take
cloud credentials from OIDC (never as parameters), keep runs/ even on failure, and only call churnkit
commands and options that exist."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import click
import pytest
import yaml

from churnkit.cli import main
from churnkit.runner import PIPELINE_STEPS, notebook_parameters

ROOT = Path(__file__).resolve().parent.parent
CI = ROOT / "templates" / "ci"
INPUTS = {"data_path", "model", "auc_threshold", "deploy_target", "score_target"}
OPERATORS = {"|", "||", "&&", ";", ">", ">>", "<", "&", "(", ")"}


def _load(name: str) -> dict:
    return yaml.safe_load((CI / name).read_text())


def _scripts(node) -> list[str]:
    """Every shell script in a workflow document (run:, script:, inlineScript:, before/after_script:)."""
    found: list[str] = []
    if isinstance(node, dict):
        for key, value in node.items():
            if key in ("run", "script", "inlineScript", "before_script", "after_script"):
                found += [value] if isinstance(value, str) else [v for v in value if isinstance(v, str)]
            else:
                found += _scripts(value)
    elif isinstance(node, list):
        for item in node:
            found += _scripts(item)
    return found


def churnkit_calls(script: str) -> list[list[str]]:
    """The argument lists of every ``churnkit``/``.venv/bin/churnkit`` call in a shell script."""
    calls = []
    for line in script.replace("\\\n", " ").splitlines():  # one logical command line at a time
        lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
        lexer.whitespace_split = True
        words = list(lexer)
        for i, word in enumerate(words):
            if word == "churnkit" or word.endswith("/churnkit"):
                args = []
                for arg in words[i + 1:]:
                    if arg in OPERATORS:
                        break
                    args.append(arg)
                calls.append(args)
    return calls


def _resolve_choices(command: click.Command, args: list[str]) -> list[str]:
    """A ``$VARIABLE`` given to a choice option stands for one of its choices (the CI fills it in at run time)."""
    choices = {name: opt.type.choices for opt in command.params if isinstance(opt.type, click.Choice)
               for name in opt.opts}
    out = list(args)
    for i in range(1, len(out)):
        if out[i - 1] in choices and out[i].startswith("$"):
            out[i] = choices[out[i - 1]][0]
    return out


def _cron_is_monthly(cron: str) -> bool:
    minute, hour, day, month, weekday = cron.split()
    return minute.isdigit() and hour.isdigit() and day.isdigit() and month == "*" and weekday == "*"


TEMPLATES = ["github-monthly.yml", "azure-pipelines.yml", "gitlab-ci.yml"]


@pytest.mark.parametrize("name", TEMPLATES)
def test_every_churnkit_call_is_a_real_command_with_valid_options(name):
    calls = [c for s in _scripts(_load(name)) for c in churnkit_calls(s)]
    monthly = [c for c in calls if c[0] == "pipeline" and "--approved" not in c]
    assert len(monthly) == 1 and {"report", "runs", "image", "approve"} <= {c[0] for c in calls}
    # team mode: the approved version is deployed by number, after `churnkit approve` recorded the approval
    assert [c[0] for c in calls if c[0] == "approve" or "--approved" in c] == ["approve", "pipeline"]
    declared = {p.name for step in PIPELINE_STEPS for p in notebook_parameters(step)} | {"score_target"}  # the job's own
    for args in calls:
        command: click.Command = main
        while isinstance(command, click.Group):  # descend: `churnkit data synth ...`
            assert args[0] in command.commands, f"{name}: no `churnkit {args[0]}` command"
            command, args = command.commands[args[0]], args[1:]
        ctx = command.make_context(command.name, _resolve_choices(command, args))  # unknown options / bad values raise
        if command.name == "pipeline" and ctx.params["approved"]:
            assert ctx.params["approved"] == "$CANDIDATE" and ctx.params["runs_dir"] == "runs"
            assert {n for n, _ in ctx.params["pairs"]} == {"deploy_target", "endpoint"}
        elif command.name == "pipeline":
            names = {n for n, _ in ctx.params["pairs"]}
            assert names == INPUTS | {"endpoint"}, f"{name} passes {sorted(names)}"
            # the endpoint's name from the settings (Terraform's churnkit_env), else the notebooks' default
            assert dict(ctx.params["pairs"])["endpoint"] == "${CHURNKIT_ENDPOINT:-churn}"
            assert names <= declared, f"{name}: the pipeline's notebooks declare no {sorted(names - declared)}"
            assert ctx.params["runs_dir"] == "runs"
            values = [v for _, v in ctx.params["pairs"]]
            assert all(v.startswith("$") for v in values)  # from the environment, never pasted in


def test_github_workflow_runs_monthly_and_on_demand_with_oidc():
    wf = _load("github-monthly.yml")
    on = wf.get("on", wf.get(True))  # YAML 1.1 reads a bare `on` key as True
    assert all(_cron_is_monthly(s["cron"]) for s in on["schedule"])
    inputs = on["workflow_dispatch"]["inputs"]
    assert set(inputs) == INPUTS
    assert inputs["model"]["options"] == ["logreg", "hgb"]
    assert inputs["deploy_target"]["options"] == ["local", "sagemaker", "azureml", "vertex"]
    assert float(inputs["auc_threshold"]["default"]) == 0.85
    assert wf["permissions"]["id-token"] == "write" and wf["permissions"]["contents"] == "read"

    job = wf["jobs"]["pipeline"]
    steps = job["steps"]
    uses = [s.get("uses", "") for s in steps]
    for action in ("aws-actions/configure-aws-credentials@", "azure/login@", "google-github-actions/auth@"):
        step = steps[next(i for i, u in enumerate(uses) if u.startswith(action))]
        assert "DEPLOY_TARGET" in step["if"]  # each cloud signs in only when it is the target
        assert "secrets." not in str(step["with"])  # identities, not keys
    runs = [s.get("run", "") for s in steps]
    venv = next(i for i, r in enumerate(runs) if r.strip() == "make venv")
    pipeline = next(i for i, r in enumerate(runs) if "churnkit pipeline" in r)
    assert venv < pipeline
    assert steps[pipeline].get("shell") == "bash" and not steps[pipeline].get("continue-on-error")
    upload = steps[next(i for i, u in enumerate(uses) if u.startswith("actions/upload-artifact@"))]
    assert upload["if"] == "always()" and upload["with"]["path"].rstrip("/") == "runs"
    text = (CI / "github-monthly.yml").read_text()
    # no stored cloud credential anywhere; the one secret is the MLflow password (environment-scoped for production)
    assert set(re.findall(r"secrets\.\w+", text)) == {"secrets.MLFLOW_TRACKING_PASSWORD"}
    for script in _scripts(wf):
        assert "${{" not in script  # inputs reach the shell through env:, never pasted (script injection)
    for key in INPUTS:
        assert f"inputs.{key}" in str(job["env"])


def test_azure_devops_pipeline_is_scheduled_parameterized_and_keeps_runs():
    doc = _load("azure-pipelines.yml")
    assert doc["trigger"] == "none" and all(_cron_is_monthly(s["cron"]) for s in doc["schedules"])
    assert {p["name"] for p in doc["parameters"]} == INPUTS | {"serviceConnection", "serviceConnectionId"}
    job = doc["stages"][0]["jobs"][0]
    steps = job["steps"]
    cli = next(s for s in steps if s.get("task", "").startswith("AzureCLI@")
               and "churnkit pipeline" in s["inputs"]["inlineScript"])
    assert "churnkit pipeline" in cli["inputs"]["inlineScript"] and "set -euo pipefail" in cli["inputs"]["inlineScript"]
    assert set(cli["env"]) >= {"DATA_PATH", "MODEL", "AUC_THRESHOLD", "DEPLOY_TARGET"}
    publish = next(s for s in steps if s.get("task", "").startswith("PublishPipelineArtifact@"))
    assert publish["condition"] == "always()" and publish["inputs"]["targetPath"] == "runs"
    referenced = re.findall(r"\$\((\w+)\)", (CI / "azure-pipelines.yml").read_text())
    # no cloud key; the MLflow password is the one secret variable (mapped into the steps that talk to MLflow)
    assert {v for v in referenced if re.search("SECRET|PASSWORD|ACCESS_KEY|ACCOUNT_KEY", v)} == {"MLFLOW_TRACKING_PASSWORD"}
    # the service connection is resolved before the run: a template parameter, never a $(variable)
    for task in (s for s in steps if s.get("task", "").startswith("AzureCLI@")):
        assert task["inputs"]["azureSubscription"] == "${{ parameters.serviceConnection }}"
    # the federated token is renewed while the job runs (azure-identity re-reads the file)
    assert cli["inputs"]["addSpnToEnvironment"] is True
    script = cli["inputs"]["inlineScript"]
    assert 'export AZURE_FEDERATED_TOKEN_FILE=' in script and "SYSTEM_OIDCREQUESTURI" in script and "sleep 240" in script
    assert cli["env"]["SYSTEM_ACCESSTOKEN"] == "$(System.AccessToken)"
    assert "python.pythonLocation" in next(s for s in steps if s.get("task") == "Cache@2")["inputs"]["key"]


def test_gitlab_job_uses_id_tokens_and_keeps_runs_on_failure():
    doc = _load("gitlab-ci.yml")
    sources = " ".join(r["if"] for r in doc["workflow"]["rules"])
    assert '"schedule"' in sources and '"web"' in sources
    assert INPUTS == {k.lower() for k in doc["variables"]}
    assert doc["variables"]["DEPLOY_TARGET"]["options"] == ["local", "sagemaker", "azureml", "vertex"]
    job = doc["churn-monthly"]
    assert set(job["id_tokens"]) == {"AWS_ID_TOKEN", "AZURE_ID_TOKEN", "GCP_ID_TOKEN"}
    assert "platform.python_version()" in job["before_script"][0]  # one venv per interpreter patch version
    image = doc["serving-image"]
    assert image["stage"] == "image" and job["stage"] == "monthly" and doc["stages"] == ["image", "monthly", "approve"]
    assert image["id_tokens"] == job["id_tokens"] and image["artifacts"]["reports"]["dotenv"] == "image.env"
    assert any(s["name"].startswith("docker:") and s["name"].endswith("-dind") for s in image["services"])
    assert "churnkit image build --push" in " ".join(image["script"])
    assert job["artifacts"]["when"] == "always" and job["artifacts"]["paths"] == ["runs/"]
    setup = "\n".join(job["before_script"])
    for var in ("AWS_WEB_IDENTITY_TOKEN_FILE", "AZURE_FEDERATED_TOKEN_FILE", "GOOGLE_APPLICATION_CREDENTIALS"):
        assert re.search(rf"export {var}=\"\$tokens/", setup)  # token files live outside runs/


def test_each_platform_pauses_for_its_own_approval_gate_before_deploying_a_candidate():
    """Team mode: the job that approves and deploys waits for the platform's reviewer gate, and only after the
    monthly job left a candidate (GitHub environment with required reviewers, GitLab protected environment with
    a manual job, Azure DevOps environment with an approval check in its own stage)."""
    gh = _load("github-monthly.yml")["jobs"]["approve-deploy"]
    assert gh["environment"] == "churn-production" and gh["needs"] == "pipeline"
    assert gh["if"] == "needs.pipeline.outputs.candidate != ''"
    assert gh["env"]["CANDIDATE"] == "${{ needs.pipeline.outputs.candidate }}"
    assert "steps.monthly.outputs.candidate" in _load("github-monthly.yml")["jobs"]["pipeline"]["outputs"]["candidate"]

    gl = _load("gitlab-ci.yml")
    job = gl["approve-deploy"]
    assert job["when"] == "manual" and job["environment"]["name"] == "churn-production" and job["stage"] == "approve"
    assert job["needs"] == ["churn-monthly"] and gl["churn-monthly"]["artifacts"]["reports"]["dotenv"] == "approval.env"
    assert job.get("allow_failure", True)  # a month without a candidate does not block the pipeline

    az = _load("azure-pipelines.yml")
    monthly, approve = az["stages"]
    (deployment,) = approve["jobs"]
    assert deployment["environment"] == "churn-production" and approve["dependsOn"] == monthly["stage"]
    assert "dependencies.monthly.outputs['pipeline.monthly.candidate']" in approve["condition"]
    assert {"group": "churnkit-production"} in approve["variables"]
    steps = deployment["strategy"]["runOnce"]["deploy"]["steps"]
    script = next(s["inputs"]["inlineScript"] for s in steps if s.get("task", "").startswith("AzureCLI@"))
    assert script.index("churnkit approve") < script.index("churnkit pipeline")
    setter = next(s for s in monthly["jobs"][0]["steps"] if s.get("name") == "monthly")
    assert "task.setvariable variable=candidate;isOutput=true" in setter["inputs"]["inlineScript"]


def test_pre_commit_config_pins_the_project_tools_and_keeps_cell_tags():
    from pre_commit.clientlib import load_config

    config = load_config(str(ROOT / ".pre-commit-config.yaml"))  # pre-commit's own schema validation
    pins = (ROOT / "pyproject.toml").read_text()
    hooks = {h["id"]: (repo, h) for repo in config["repos"] for h in repo["hooks"]}
    ruff_repo, _ = hooks["ruff-check"]
    assert f'"ruff=={ruff_repo["rev"].lstrip("v")}"' in pins
    strip_repo, strip = hooks["nbstripout"]
    assert f'"nbstripout=={strip_repo["rev"]}"' in pins
    assert "cell.metadata.tags" in " ".join(strip["args"]) and "--keep-id" in strip["args"]


def test_github_credentials_last_the_job_and_the_cache_key_names_the_interpreter():
    wf = _load("github-monthly.yml")
    job = wf["jobs"]["pipeline"]
    steps = job["steps"]
    aws = next(s for s in steps if s.get("uses", "").startswith("aws-actions/configure-aws-credentials@"))
    assert int(aws["with"]["role-duration-seconds"]) >= job["timeout-minutes"] * 60
    python = next(s for s in steps if s.get("uses", "").startswith("actions/setup-python@"))
    cache = next(s for s in steps if s.get("uses", "").startswith("actions/cache@"))
    assert f"steps.{python['id']}.outputs.python-version" in cache["with"]["key"]
    image = next(s for s in steps if "churnkit image build --push" in s.get("run", ""))
    assert image["if"] == "env.DEPLOY_TARGET != 'local'" and "GITHUB_ENV" in image["run"]
    pipeline = next(s for s in steps if "churnkit pipeline" in s.get("run", ""))
    assert steps.index(image) < steps.index(pipeline)
    assert "ACTIONS_ID_TOKEN_REQUEST_URL" in pipeline["run"] and "AZURE_FEDERATED_TOKEN_FILE" in pipeline["run"]


SCHEMAS = {"github-monthly.yml": "vendor.github-workflows", "gitlab-ci.yml": "vendor.gitlab-ci",
           "azure-pipelines.yml": "vendor.azure-pipelines"}


@pytest.mark.parametrize("name", TEMPLATES)
def test_template_validates_against_its_platform_schema(name, tmp_path):
    """check-jsonschema with the schema it vendors for each platform (offline); a broken copy must fail."""
    import subprocess
    import sys

    exe = str(Path(sys.executable).with_name("check-jsonschema"))
    # Azure Pipelines' schema uses regex escapes that only Python's dialect reads
    cmd = [exe, "--regex-variant", "python", "--builtin-schema", SCHEMAS[name]]
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "NO_PROXY": "*", "HTTPS_PROXY": "http://127.0.0.1:9"}
    res = subprocess.run([*cmd, str(CI / name)], capture_output=True, text=True, timeout=120, env=env)
    assert res.returncode == 0, res.stdout + res.stderr
    broken = tmp_path / name
    doc = _load(name)
    if name == "github-monthly.yml":
        doc["jobs"]["pipeline"]["timeout-minutes"] = "two hours"
    elif name == "gitlab-ci.yml":
        doc["churn-monthly"]["artifacts"]["when"] = "sometimes"
    else:
        doc["stages"][0]["jobs"][0]["steps"][0] = {"checkout": "self", "unknownKey": 1}
    broken.write_text(yaml.safe_dump(doc))
    res = subprocess.run([*cmd, str(broken)], capture_output=True, text=True, timeout=120, env=env)
    assert res.returncode == 1, res.stdout + res.stderr
