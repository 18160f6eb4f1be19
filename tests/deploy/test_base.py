"""The deploy-target interface: lookup by name, weights arithmetic, drift, release resolution, the CLI."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner
from deploy_support import cloud_store

from churnkit.deploy.base import EndpointState, VariantState, check_weights, compare, weights_with, weights_without
from churnkit.exceptions import DeployTargetError

AWS = {"CHURNKIT_AWS_ROLE_ARN": "arn:aws:iam::123456789012:role/churnkit-sagemaker", "CHURNKIT_AWS_BUCKET": "b",
       "CHURNKIT_AWS_IMAGE_URI": "123456789012.dkr.ecr.eu-west-1.amazonaws.com/churnkit-serve:0.1.0",
       "AWS_DEFAULT_REGION": "eu-west-1", "AWS_EC2_METADATA_DISABLED": "true",
       "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent", "AWS_CONFIG_FILE": "/nonexistent"}


def test_unknown_target_lists_the_available_ones():
    from churnkit.deploy import TARGETS, get_target

    with pytest.raises(DeployTargetError) as err:
        get_target("gke")
    assert str(err.value) == "no deploy target named 'gke'; available: 'local', 'sagemaker', 'azureml', 'vertex'"
    assert list(TARGETS) == ["local", "sagemaker", "azureml", "vertex"]


def test_weights_arithmetic_sums_to_100():
    assert weights_with({}, "v1", 0) == {"v1": 100}  # the first variant always serves
    assert weights_with({"v1": 100}, "v2", 10) == {"v1": 90, "v2": 10}
    assert weights_with({"v1": 50, "v2": 50}, "v3", 33) == {"v1": 34, "v2": 33, "v3": 33}
    assert weights_with({"v1": 20, "v2": 80}, "v2", 40) == {"v1": 60, "v2": 40}  # re-weighting an existing variant
    assert sum(weights_with({"v1": 70, "v2": 30}, "v2", 40).values()) == 100
    assert weights_without({"v1": 60, "v2": 30, "v3": 10}, "v1") == {"v2": 75, "v3": 25}
    assert weights_without({"v1": 100, "v2": 0}, "v1") == {"v2": 100}
    with pytest.raises(DeployTargetError, match="not an integer from 0 to 100"):
        weights_with({"v1": 100}, "v2", 150)
    with pytest.raises(DeployTargetError, match="weight 'half' for variant 'v2' is not an integer"):
        weights_with({}, "v2", "half")  # checked on a new endpoint too, never a ValueError


def test_check_weights_names_the_problem():
    assert check_weights({"v1": 90, "v2": 10}, ["v1", "v2"]) == {"v1": 90, "v2": 10}
    with pytest.raises(DeployTargetError, match=r"sum to 90; they must sum to 100"):
        check_weights({"v1": 80, "v2": 10})
    with pytest.raises(DeployTargetError, match=r"no variant named 'v9' on the endpoint; deployed variants: \['v1'\]"):
        check_weights({"v9": 100}, ["v1"])
    with pytest.raises(DeployTargetError, match="weight 12.5 for variant 'v1'"):
        check_weights({"v1": 12.5})


def test_compare_reports_every_difference():
    live = EndpointState("x", "churn", {"v1": VariantState("v1", "1", 100, "InService"),
                                        "v3": VariantState("v3", "3", 0, "Failed")})
    assert compare({"v1": 90, "v2": 10}, live, {"v1": "2"}) == [
        "variant 'v1' serves 100% but 90% was asked for",
        "variant 'v2' was asked for at 10% but is not live",
        "variant 'v3' (v3, 0%) is live but was not asked for",
        "variant 'v1' serves model v1 but v2 was deployed",
    ]
    assert compare({"v1": 100, "v3": 0}, live) == ["variant 'v3' status is 'Failed'"]


def test_state_table_and_dict():
    state = EndpointState("local", "churn", {"v1": VariantState("v1", "1", 100, "running", "http://x")}, ["d"])
    assert state.table().loc["v1", "weight"] == 100
    assert json.loads(json.dumps(state.to_dict()))["variants"]["v1"]["model_version"] == "1"
    assert state.variant_for_version(1) == "v1" and state.variant_for_version("2") is None
    assert "drift: d" in state.summary() and "<li>d</li>" in state._repr_html_()


@pytest.fixture
def store(tmp_path, monkeypatch):
    for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE", "AWS_REGION"):
        monkeypatch.delenv(k, raising=False)
    return cloud_store(tmp_path, monkeypatch, AWS)


def test_release_resolution(store):
    from churnkit.deploy.base import resolve_release

    rel = resolve_release("models:/churn@challenger", config=store)
    assert (rel.model_name, rel.version, rel.variant, len(rel.sha256)) == ("churn", "2", "v2", 64)
    assert resolve_release("models:/churn/1", "blue", store).variant == "blue"
    with pytest.raises(DeployTargetError, match="pass variant='name'"):
        resolve_release("runs:/abc/model", config=store)
    from churnkit.exceptions import RegistryError

    with pytest.raises(RegistryError, match="not found in the registry"):
        resolve_release("models:/churn@nope", config=store)


def test_model_uri_for_auto(store):
    from churnkit.deploy import model_uri_for

    class Empty:
        def describe(self):
            return EndpointState("local", "churn")

    class Serving:
        def describe(self):
            return EndpointState("local", "churn", {"v1": VariantState("v1", "1", 100, "running")})

    assert model_uri_for("churn", "auto", config=store) == "models:/churn@challenger"
    assert model_uri_for("churn", "auto", Serving(), store) == "models:/churn@challenger"
    assert model_uri_for("churn", "auto", Empty(), store) == "models:/churn@champion"  # champion goes first
    assert model_uri_for("churn", "champion", config=store) == "models:/churn@champion"
    with pytest.raises(DeployTargetError, match="no version with alias 'previous'"):
        model_uri_for("churn", "previous", config=store)


def _cli(*args):
    from churnkit.cli import main

    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def test_cli_deploy_plan_without_credentials_prints_the_requests(store):
    res = _cli("deploy", "--target", "sagemaker", "--model", "models:/churn@challenger", "--plan",
               "--runs-dir", str(store.runs_dir))
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    assert (out["target"], out["action"]) == ("sagemaker", "deploy") and "planned as a new endpoint" in out["basis"]
    config = next(r["request"] for r in out["requests"] if r["operation"] == "CreateEndpointConfig")
    assert config["ProductionVariants"][0]["VariantName"] == "v2"
    assert config["ProductionVariants"][0]["InitialVariantWeight"] == 100.0

    res = _cli("deploy", "--target", "sagemaker", "--model", "models:/churn@champion", "--plan", "--guardrails",
               "canary", "--runs-dir", str(store.runs_dir))
    # guardrails replace the live variant: without credentials the plan says what it could not read and still
    # prints the requests it can build offline
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    assert "live state not readable (CloudCredentialsError" in out["basis"] and "not read from the endpoint" in out["basis"]
    assert [r["operation"] for r in out["requests"]][-1] == "UpdateEndpoint"


def test_cli_local_plan_status_and_usage_errors(store):
    res = _cli("deploy", "--target", "local", "--port", "18999", "--model", "models:/churn@champion", "--plan",
               "--runs-dir", str(store.runs_dir))
    out = json.loads(res.stdout)
    assert [r["request"].get("name") for r in out["requests"][:2]] == ["router", "v1"]
    assert out["requests"][0]["request"]["listen"] == "http://127.0.0.1:18999"
    status = _cli("endpoint", "status", "--target", "local", "--json", "--runs-dir", str(store.runs_dir))
    assert json.loads(status.stdout)["variants"] == {}
    stop = _cli("endpoint", "stop", "--target", "local", "--runs-dir", str(store.runs_dir))
    assert stop.exit_code == 0 and "nothing deployed" in stop.stdout
    bad = _cli("deploy", "--target", "gke", "--model", "models:/churn@champion")
    assert bad.exit_code == 2 and "no deploy target named 'gke'" in bad.stderr
    bad = _cli("endpoint", "traffic", "--target", "local", "v1=abc", "--runs-dir", str(store.runs_dir))
    assert bad.exit_code == 2 and "is not VARIANT=WEIGHT" in bad.stderr
    bad = _cli("deploy", "--target", "local", "--model", "models:/churn@champion", "--guardrails", "canary",
               "--runs-dir", str(store.runs_dir))
    assert bad.exit_code == 2 and "--guardrails works with --target sagemaker" in bad.stderr


@pytest.fixture
def recording_aws(monkeypatch):
    """A stand-in AWS endpoint on 127.0.0.1 that records every operation and answers as SageMaker does for
    an endpoint that does not exist (400 ValidationException); credentials are set so requests are sent."""
    import http.server
    import threading

    seen: list[str] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self):
            self.rfile.read(int(self.headers.get("content-length", 0)))
            seen.append(self.headers.get("x-amz-target", self.path).split(".")[-1])
            body = json.dumps({"__type": "ValidationException", "message": "Could not find endpoint"}).encode()
            self.send_response(400)
            self.send_header("content-type", "application/x-amz-json-1.1")
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *a):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    for k, v in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                 "AWS_ENDPOINT_URL": f"http://127.0.0.1:{server.server_port}", "AWS_MAX_ATTEMPTS": "1"}.items():
        monkeypatch.setenv(k, v)
    yield seen
    server.shutdown()


def test_cli_endpoint_plans_send_nothing_and_refuse_unknown_variants(store, recording_aws):
    res = _cli("endpoint", "stop", "--target", "sagemaker", "--plan", "--runs-dir", str(store.runs_dir))
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    assert (out["target"], out["action"]) == ("sagemaker", "stop")
    assert recording_aws and all(op.startswith(("Describe", "List")) for op in recording_aws), recording_aws
    res = _cli("endpoint", "traffic", "v1=90", "v2=10", "--target", "sagemaker", "--plan", "--runs-dir", str(store.runs_dir))
    out = json.loads(res.stdout)
    assert out["action"] == "set_traffic"
    weights = {v["VariantName"]: v["DesiredWeight"] for r in out["requests"] for v in r["request"].get("DesiredWeightsAndCapacities", [])}
    assert weights == {"v1": 90.0, "v2": 10.0}
    res = _cli("endpoint", "remove", "v1", "--target", "sagemaker", "--plan", "--runs-dir", str(store.runs_dir))
    assert res.exit_code == 1 and "no variant named 'v1'" in res.stderr  # nothing deployed to plan against
    assert all(op.startswith(("Describe", "List")) for op in recording_aws), recording_aws  # read, never changed
