"""Terraform templates: formatted, parseable, wired to the variables the deploy targets read, and the
AWS one valid against the hashicorp/aws provider from a local filesystem mirror (no internet)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent / "templates" / "terraform"
CLOUDS = ("aws", "azure", "gcp")
TERRAFORM = shutil.which("terraform") or "/usr/local/bin/terraform"
MIRROR_ROOTS = ("/opt/tf-plugins", "/usr/share/terraform/plugins", "/usr/local/share/terraform/plugins",
                "~/.terraform.d/plugins", "~/.local/share/terraform/plugins")


def _unquote(tree):
    if isinstance(tree, dict):
        return {k.strip('"'): _unquote(v) for k, v in tree.items()}
    if isinstance(tree, list):
        return [_unquote(v) for v in tree]
    return tree.strip('"') if isinstance(tree, str) else tree


def parse(cloud: str) -> dict[str, list]:
    """Every block of the cloud's .tf files, by block type (python-hcl2), quotes removed from labels."""
    import hcl2

    out: dict[str, list] = {}
    for path in sorted((ROOT / cloud).glob("*.tf")):
        for kind, blocks in _unquote(hcl2.loads(path.read_text())).items():
            out.setdefault(kind, []).extend(blocks)
    return out


def resources(tree: dict) -> dict[str, dict]:
    return {f"{kind}.{name}": body for block in tree.get("resource", []) for kind, named in block.items()
            for name, body in named.items()}


def find_mirror(provider: str = "hashicorp/aws") -> tuple[Path, str] | None:
    """A filesystem mirror holding ``provider`` for this platform: (mirror root, newest version)."""
    roots = [Path(os.path.expanduser(r)) for r in MIRROR_ROOTS]
    rc = os.environ.get("TF_CLI_CONFIG_FILE")
    if rc and Path(rc).is_file():
        roots += [Path(p) for p in re.findall(r'path\s*=\s*"([^"]+)"', Path(rc).read_text())]
    for root in roots:
        base = root / "registry.terraform.io" / provider
        versions = sorted((d.name for d in base.glob("*") if (d / "linux_amd64").is_dir()),
                          key=lambda v: tuple(int(x) for x in re.findall(r"\d+", v)))
        if versions:
            return root, versions[-1]
    return None


@pytest.mark.parametrize("cloud", CLOUDS)
def test_template_parses_and_has_the_three_files(cloud):
    assert sorted(p.name for p in (ROOT / cloud).glob("*.tf")) == ["main.tf", "outputs.tf", "variables.tf"]
    tree = parse(cloud)
    assert tree["terraform"] and tree["variable"] and tree["output"]
    for block in tree["variable"]:
        for name, body in block.items():
            assert body.get("description"), f"{cloud} variable {name} has no description"


def test_terraform_fmt_check():
    if not Path(TERRAFORM).exists():
        pytest.fail(f"terraform not found at {TERRAFORM}")
    res = subprocess.run([TERRAFORM, "fmt", "-check", "-recursive", "-diff", str(ROOT)], capture_output=True, text=True,
                         timeout=60)
    assert res.returncode == 0, res.stdout + res.stderr


@pytest.mark.parametrize("cloud,module", [("aws", "sagemaker"), ("azure", "azureml"), ("gcp", "vertex")])
def test_outputs_give_every_variable_the_target_reads(cloud, module):
    """``terraform output -raw churnkit_env`` sets exactly the variables the deploy target reads."""
    from importlib import import_module

    env = import_module(f"churnkit.deploy.{module}").ENV
    needed = {spec.split("|")[0] for spec in env.values()}
    text = (ROOT / cloud / "outputs.tf").read_text()
    block = text[text.index('output "churnkit_env"'):]
    exported = set(re.findall(r"^\s+([A-Z][A-Z0-9_]+)\s+=", block, re.M))
    assert needed <= exported, f"{cloud}: churnkit_env lacks {sorted(needed - exported)}"


def test_aws_has_guardrails_alarms_and_a_least_privilege_role():
    tree = parse("aws")
    res = resources(tree)
    endpoint = res["aws_sagemaker_endpoint.churn"]
    policy = endpoint["deployment_config"][0]["blue_green_update_policy"][0]
    routing = policy["traffic_routing_configuration"][0]
    assert routing["type"] == "CANARY" and routing["canary_size"][0]["type"] == "CAPACITY_PERCENT"
    alarms = endpoint["deployment_config"][0]["auto_rollback_configuration"][0]["alarms"]
    assert len(alarms) == 3
    metrics = {res[k]["metric_name"] for k in res if k.startswith("aws_cloudwatch_metric_alarm.")}
    assert metrics == {"ModelLatency", "Invocation5XXErrors", "PredictionDriftPSI"}
    capture = res["aws_sagemaker_endpoint_configuration.churn"]["data_capture_config"][0]
    assert capture["enable_capture"] is True
    # the alarm names match the ones the sagemaker target creates and rolls back on
    from churnkit.deploy.sagemaker import SageMakerTarget

    names = [r["request"]["AlarmName"] for r in SageMakerTarget(endpoint="churn", role_arn="r", bucket="b",
                                                                 image_uri="i", region="eu-west-1").alarm_requests("v1")]
    locals_ = tree["locals"][0]["alarms"]
    rendered = [v.replace("${var.endpoint_name}", "churn").replace("${var.variant_name}", "v1") for v in locals_.values()]
    assert sorted(rendered) == sorted(names)
    statements = [s for d in tree["data"] for k, named in d.items() if k == "aws_iam_policy_document"
                  for n, body in named.items() if n == "execution" for s in body["statement"]]
    wildcard = [s["sid"] for s in statements if s["resources"] == ["*"]]
    assert sorted(wildcard) == ["EcrLogin", "EndpointMetrics"]  # account-level actions only
    assert not any("*" in a for s in statements for a in s["actions"])


def test_azure_uses_azapi_for_the_online_endpoint():
    res = resources(parse("azure"))
    endpoint = res["azapi_resource.endpoint"]
    assert endpoint["type"].startswith("Microsoft.MachineLearningServices/workspaces/onlineEndpoints@")
    for kind in ("azurerm_machine_learning_workspace", "azurerm_container_registry", "azurerm_key_vault",
                 "azurerm_storage_account", "azurerm_application_insights"):
        assert any(k.startswith(kind + ".") for k in res), kind
    assert res["azurerm_container_registry.churnkit"]["admin_enabled"] is False


def test_gcp_has_bucket_registry_service_account_and_endpoint():
    res = resources(parse("gcp"))
    for kind in ("google_storage_bucket", "google_artifact_registry_repository", "google_service_account",
                 "google_vertex_ai_endpoint"):
        assert any(k.startswith(kind + ".") for k in res), kind
    serve_roles = re.findall(r'"(roles/[^"]+)"', res["google_project_iam_member.serve_observability"]["for_each"])
    assert serve_roles == ["roles/logging.logWriter", "roles/monitoring.metricWriter"]  # no editor/owner role
    assert res["google_storage_bucket_iam_member.serve_reads_models"]["role"] == "roles/storage.objectViewer"


def test_aws_init_and_validate_against_the_provider_mirror(tmp_path):
    found = find_mirror()
    if found is None:
        pytest.skip(f"no filesystem mirror of hashicorp/aws for linux_amd64 in {MIRROR_ROOTS} or TF_CLI_CONFIG_FILE; "
                    "terraform init needs one (there is no internet here)")
    mirror, version = found
    major, minor = (int(x) for x in version.split(".")[:2])
    assert major == 5 and minor >= 60, f"the template pins aws >= 5.60, < 6.0; the mirror has {version}"
    work = tmp_path / "aws"
    shutil.copytree(ROOT / "aws", work)
    rc = tmp_path / "terraformrc"
    rc.write_text('provider_installation {\n  filesystem_mirror {\n    path    = "%s"\n'
                  '    include = ["registry.terraform.io/hashicorp/*"]\n  }\n'
                  '  direct {\n    exclude = ["registry.terraform.io/*/*"]\n  }\n}\n' % mirror)
    env = {**os.environ, "TF_CLI_CONFIG_FILE": str(rc), "TF_IN_AUTOMATION": "1", "CHECKPOINT_DISABLE": "1"}
    env.pop("TF_PLUGIN_CACHE_DIR", None)
    init = subprocess.run([TERRAFORM, "init", "-backend=false", "-input=false", "-no-color"], cwd=work, env=env,
                          capture_output=True, text=True, timeout=300)
    assert init.returncode == 0, init.stdout + init.stderr
    assert f"hashicorp/aws v{version}" in init.stdout
    valid = subprocess.run([TERRAFORM, "validate", "-json", "-no-color"], cwd=work, env=env, capture_output=True,
                           text=True, timeout=300)
    import json

    report = json.loads(valid.stdout)
    assert report["valid"] is True, report["diagnostics"]
    assert report["warning_count"] == 0, report["diagnostics"]
