"""Terraform templates: formatted, parseable, wired to the variables the deploy targets read, and the
AWS one valid against the hashicorp/aws provider from a local filesystem mirror (no internet)."""

from __future__ import annotations

import json
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
def test_template_parses_and_has_its_files(cloud):
    names = sorted(p.name for p in (ROOT / cloud).glob("*.tf"))
    assert {"deployer.tf", "main.tf", "outputs.tf", "variables.tf"} <= set(names), names
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
    assert len(alarms) == 2
    metrics = {res[k]["metric_name"] for k in res if k.startswith("aws_cloudwatch_metric_alarm.")}
    # no prediction-drift alarm: blue and green fleets share one variant name, so their scores cannot be told apart
    assert metrics == {"ModelLatency", "Invocation5XXErrors"}
    capture = res["aws_sagemaker_endpoint_configuration.churn"]["data_capture_config"][0]
    assert capture["enable_capture"] is True
    # the alarm names match the ones the sagemaker target creates and rolls back on
    from churnkit.deploy.sagemaker import SageMakerTarget

    names = [r["request"]["AlarmName"] for r in SageMakerTarget(endpoint="churn", role_arn="r", bucket="b",
                                                                 image_uri="i", region="eu-west-1").alarm_requests("v1")]
    locals_ = {k: v for block in tree["locals"] for k, v in block.items()}["alarms"]
    rendered = [v.replace("${var.endpoint_name}", "churn").replace("${var.variant_name}", "v1") for v in locals_.values()]
    assert sorted(rendered) == sorted(names)
    statements = [s for d in tree["data"] for k, named in d.items() if k == "aws_iam_policy_document"
                  for n, body in named.items() if n == "execution" for s in body["statement"]]
    wildcard = [s["sid"] for s in statements if s["resources"] == ["*"]]
    assert sorted(wildcard) == ["EcrLogin", "EndpointMetrics"]  # account-level actions only
    assert not any("*" in a for s in statements for a in s["actions"])


def test_aws_execution_role_reads_the_alarms_and_the_alarms_watch_the_new_fleet():
    """https://docs.aws.amazon.com/sagemaker/latest/dg/deployment-guardrails-configuration.html: the execution role
    needs cloudwatch:DescribeAlarms on the auto-rollback alarms; EndpointConfigName picks the new fleet."""
    tree = parse("aws")
    statements = [s for d in tree["data"] for k, named in d.items() if k == "aws_iam_policy_document"
                  for n, body in named.items() if n == "execution" for s in body["statement"]]
    (alarms,) = [s for s in statements if "cloudwatch:DescribeAlarms" in s["actions"]]
    arn = "arn:${local.partition}:cloudwatch:${var.region}:${local.account}:alarm:${var.endpoint_name}-*"
    assert alarms["resources"] == [arn]
    res = resources(tree)
    config = res["aws_sagemaker_endpoint_configuration.churn"]["name"]
    local = {k: v for block in tree["locals"] for k, v in block.items()}["new_fleet"]
    assert local["EndpointConfigName"] == config
    for name in ("aws_cloudwatch_metric_alarm.model_latency_p99", "aws_cloudwatch_metric_alarm.invocation_5xx"):
        assert res[name]["dimensions"] == "${local.new_fleet}"


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


@pytest.fixture(scope="module")
def aws_workdir(tmp_path_factory):
    """templates/terraform/aws copied and `terraform init`ed against the provider mirror: (folder, env)."""
    found = find_mirror()
    if found is None:
        pytest.skip(f"no filesystem mirror of hashicorp/aws for linux_amd64 in {MIRROR_ROOTS} or TF_CLI_CONFIG_FILE; "
                    "terraform init needs one (there is no internet here)")
    mirror, version = found
    major, minor = (int(x) for x in version.split(".")[:2])
    assert major == 5 and minor >= 60, f"the template pins aws >= 5.60, < 6.0; the mirror has {version}"
    tmp_path = tmp_path_factory.mktemp("tf")
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
    return work, env


def test_aws_init_and_validate_against_the_provider_mirror(aws_workdir):
    work, env = aws_workdir
    valid = subprocess.run([TERRAFORM, "validate", "-json", "-no-color"], cwd=work, env=env, capture_output=True,
                           text=True, timeout=300)
    report = json.loads(valid.stdout)
    assert report["valid"] is True, report["diagnostics"]
    assert report["warning_count"] == 0, report["diagnostics"]


def test_aws_plans_autoscaling_and_ci_trust_with_a_mocked_provider(aws_workdir):
    """`terraform test` plans with mock_provider: counts, for_each, preconditions, without credentials."""
    work, env = aws_workdir
    (work / "tests").mkdir(exist_ok=True)
    shutil.copy(Path(__file__).parent / "fixtures" / "terraform" / "aws_plan.tftest.hcl", work / "tests")
    res = subprocess.run([TERRAFORM, "test", "-no-color"], cwd=work, env=env, capture_output=True, text=True,
                         timeout=300)
    assert res.returncode == 0, res.stdout + res.stderr
    assert 'run "endpoint_with_autoscaling_and_ci_trust"... pass' in res.stdout
    assert 'run "min_above_instance_count_is_refused"... pass' in res.stdout
    assert "Success! 2 passed, 0 failed." in res.stdout


# ---- autoscaling, the deployer identity, the defects fixed -------------------------------------------------
def _policy(tree: dict, name: str) -> list[dict]:
    return [s for d in tree["data"] for k, named in d.items() if k == "aws_iam_policy_document"
            for n, body in named.items() if n == name for s in body.get("statement", [])]


def _variables(tree: dict) -> dict:
    return {name: body for block in tree["variable"] for name, body in block.items()}


def _outputs(tree: dict) -> dict:
    return {name: body for block in tree["output"] for name, body in block.items()}


def test_aws_autoscales_the_variant_on_invocations_per_instance():
    tree = parse("aws")
    res = resources(tree)
    target = res["aws_appautoscaling_target.variant"]
    assert target["scalable_dimension"] == "sagemaker:variant:DesiredInstanceCount"
    assert target["service_namespace"] == "sagemaker"
    assert target["min_capacity"] == "${var.min_instances}" and target["max_capacity"] == "${var.max_instances}"
    policy = res["aws_appautoscaling_policy.invocations"]
    assert policy["policy_type"] == "TargetTrackingScaling"
    tracking = policy["target_tracking_scaling_policy_configuration"][0]
    assert tracking["predefined_metric_specification"][0]["predefined_metric_type"] == "SageMakerVariantInvocationsPerInstance"
    assert tracking["scale_in_cooldown"] == "${var.scale_in_cooldown_seconds}"
    assert tracking["scale_out_cooldown"] == "${var.scale_out_cooldown_seconds}"
    assert {"min_instances", "max_instances", "target_invocations_per_instance", "scale_in_cooldown_seconds",
            "scale_out_cooldown_seconds"} <= set(_variables(tree))


def test_aws_deployer_role_is_least_privilege_and_trusts_the_ci_by_oidc():
    tree = parse("aws")
    statements = {s["sid"]: s for s in _policy(tree, "deployer")}
    actions = {a for s in statements.values() for a in s["actions"]}
    assert not [a for a in actions if a.endswith(":*") or a == "*"]
    # telemetry reads the rollout controller and the latency diagnosis need
    assert {"cloudwatch:GetMetricData", "cloudwatch:ListMetrics", "cloudwatch:PutMetricData", "s3:GetObject",
            "s3:ListBucket"} <= actions
    assert statements["PublishKitMetrics"]["condition"][0]["values"] == ["churnkit"]
    assert statements["ReadDataCapture"]["resources"] == [
        "${aws_s3_bucket.churnkit.arn}/churnkit/capture/${var.endpoint_name}/*"]
    # the endpoint's variants' autoscaling, endpoint actions on this endpoint only
    assert {"application-autoscaling:RegisterScalableTarget", "application-autoscaling:PutScalingPolicy",
            "application-autoscaling:DescribeScalableTargets", "application-autoscaling:DescribeScalingPolicies"} <= actions
    assert all(r.endswith(("endpoint/${var.endpoint_name}", "-*")) for r in statements["EndpointLifecycle"]["resources"])
    # iam:PassRole of the execution role only, to SageMaker only
    passrole = [s for s in statements.values() if "iam:PassRole" in s["actions"]]
    assert len(passrole) == 1 and passrole[0]["resources"] == ["${aws_iam_role.sagemaker.arn}"]
    assert passrole[0]["condition"][0]["values"] == ["sagemaker.amazonaws.com"]
    wildcard = sorted(sid for sid, s in statements.items() if s["resources"] == ["*"])
    assert wildcard == ["DescribeAutoscaling", "EcrLogin", "ListEndpoints", "PublishKitMetrics", "ReadMetrics"]
    # trust: web identity per CI, audience and subject pinned; sessions long enough for the 120-minute job
    trust = next(body for d in tree["data"] for k, named in d.items() if k == "aws_iam_policy_document"
                 for n, body in named.items() if n == "deployer_trust")
    oidc = trust["dynamic"][0]["statement"]["content"][0]
    assert oidc["actions"] == ["sts:AssumeRoleWithWebIdentity"]
    assert [c["test"] for c in oidc["condition"]] == ["StringEquals", "StringLike"]
    locals_ = {k: v for block in tree["locals"] for k, v in block.items()}
    assert {"github", "gitlab", "azure_devops"} == set(locals_["oidc"])
    assert int(_variables(tree)["deployer_session_seconds"]["default"]) >= 120 * 60
    outputs = _outputs(tree)
    assert outputs["deployer_role_arn"]["value"] == "${aws_iam_role.deployer.arn}"


def test_azure_defects_are_fixed_and_the_deployer_has_its_roles():
    tree = parse("azure")
    res = resources(tree)
    provider = tree["provider"][0]["azurerm"]
    assert "var.subscription_id" in provider["subscription_id"] and "subscription_id" in _variables(tree)
    vault = res["azurerm_key_vault.churnkit"]
    assert vault["rbac_authorization_enabled"] is True and "enable_rbac_authorization" not in vault
    # the longest name the validation allows still fits Key Vault's 24 characters
    longest = vault["name"].replace("${substr(var.name, 0, 14)}", "n" * 14).replace("${local.suffix}", "s" * 6)
    assert len(longest) <= 24 and "substr(var.name, 0, 14)" in vault["name"]
    # the endpoint's own identity gets its pull/read rights from Azure ML: no duplicate assignments
    assignments = [k for k in res if k.startswith("azurerm_role_assignment.")]
    assert assignments == ["azurerm_role_assignment.deployer"]
    locals_ = {k: v for block in tree["locals"] for k, v in block.items()}
    roles = {v["role"] for v in locals_["deployer_roles"].values()}
    assert roles == {"AzureML Data Scientist", "Monitoring Reader", "Storage Blob Data Reader", "AcrPush"}
    assert "containers/azureml-blobstore-" in locals_["capture_container"]
    federated = str(locals_["federated"])
    assert "token.actions.githubusercontent.com" in federated and "vstoken.dev.azure.com" in federated
    assert "project_path:${var.gitlab_project}" in federated
    assert "local.suffix" in locals_["endpoint_name"]  # unique per region by default
    assert res["azapi_resource.endpoint"]["name"] == "${local.endpoint_name}"
    autoscale = res["azurerm_monitor_autoscale_setting.deployment"]
    rules = autoscale["profile"][0]["rule"]
    assert [r["scale_action"][0]["direction"] for r in rules] == ["Increase", "Decrease"]
    assert {r["metric_trigger"][0]["metric_name"] for r in rules} == {"CpuUtilizationPercentage"}
    assert {"deployer_client_id", "tenant_id", "deployer_roles"} <= set(_outputs(tree))


def test_gcp_deployer_and_federation_without_the_unneeded_registry_grant():
    tree = parse("gcp")
    res = resources(tree)
    assert not [k for k, v in res.items() if k.startswith("google_artifact_registry_repository_iam_member.")
                and "google_service_account.serve" in str(v.get("member"))]
    project_roles = re.findall(r'"(roles/[^"]+)"', res["google_project_iam_member.deployer"]["for_each"])
    assert project_roles == ["roles/aiplatform.user", "roles/monitoring.viewer"]
    bucket_roles = re.findall(r'"(roles/[^"]+)"', res["google_storage_bucket_iam_member.deployer"]["for_each"])
    assert "roles/storage.objectViewer" in bucket_roles
    assert res["google_service_account_iam_member.ci_impersonates_deployer"]["role"] == "roles/iam.workloadIdentityUser"
    assert res["google_iam_workload_identity_pool_provider.ci"]["oidc"][0]["issuer_uri"] == "${each.value.issuer}"
    env = _outputs(tree)["churnkit_env"]["value"]
    assert "CHURNKIT_GCP_MIN_REPLICAS" in env and "CHURNKIT_GCP_MAX_REPLICAS" in env
    assert {"deployer_service_account", "workload_identity_provider"} <= set(_outputs(tree))


def test_vertex_target_reads_the_replicas_terraform_exports():
    from churnkit.deploy.vertex import VertexTarget

    target = VertexTarget(environ={"CHURNKIT_GCP_MIN_REPLICAS": "2", "CHURNKIT_GCP_MAX_REPLICAS": "5"})
    assert (target.min_replicas, target.max_replicas) == (2, 5)
    assert (VertexTarget(environ={}).min_replicas, VertexTarget(environ={}).max_replicas) == (1, 1)
    assert VertexTarget(min_replicas=3, environ={"CHURNKIT_GCP_MIN_REPLICAS": "2"}).min_replicas == 3


ARGUMENTS = json.loads((Path(__file__).parent / "fixtures" / "terraform_arguments.json").read_text())


def _unknown_arguments(kind: str, body: dict) -> list[str]:
    spec = ARGUMENTS["resources"][kind]
    allowed = set(spec["arguments"]) | set(ARGUMENTS["meta_arguments"])
    blocks = spec.get("blocks", {})
    bad = []

    def walk(node: dict, path: str, names: set[str]):
        for key, value in node.items():
            if key.startswith("__"):
                continue
            if key not in names:
                bad.append(f"{kind}: {path + '.' if path else ''}{key}")
                continue
            sub = f"{path}.{key}" if path else key
            if sub in blocks and isinstance(value, list):
                for item in value:
                    if isinstance(item, dict):
                        walk(item, sub, set(blocks[sub]) | {"dynamic"})

    walk(body, "", allowed)
    return bad


@pytest.mark.parametrize("cloud", ["azure", "gcp"])
def test_every_resource_argument_is_one_the_provider_documents(cloud):
    """No provider schema is reachable here: the pinned argument lists stand in for `terraform validate`."""
    seen = resources(parse(cloud))
    missing = sorted({k.split(".")[0] for k in seen} - set(ARGUMENTS["resources"]))
    assert not missing, f"no pinned argument list for {missing} in tests/fixtures/terraform_arguments.json"
    bad = [b for key, body in seen.items() for b in _unknown_arguments(key.split(".")[0], body)]
    assert not bad, bad
    assert _unknown_arguments("azurerm_key_vault", {"enable_rbac_authorization": True}) == [
        "azurerm_key_vault: enable_rbac_authorization"]  # the check can fail
