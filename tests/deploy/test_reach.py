"""A cloud that cannot be reached (a laptop off the VPN, a wrong region, a dead proxy): every command fails in
bounded time with one line naming the service, where it was looked for and what to check; a --plan that reads
live state says it could not, and still prints the requests it can build offline.

AWS: the real botocore clients pointed at a closed port on 127.0.0.1 (``AWS_ENDPOINT_URL``, botocore's own
setting); Azure ML: azure-ai-ml over a transport that raises azure-core's ServiceRequestError, and a credential
chain whose failure message runs over many lines, as DefaultAzureCredential's does.
"""

from __future__ import annotations

import json
import socket

import pytest
from deploy_support import cloud_store

from deploy.test_sagemaker import ENV as AWS_ENV


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # closed again when the block ends: connections are refused


@pytest.fixture
def offline_aws(tmp_path, monkeypatch):
    monkeypatch.delenv("AWS_REGION", raising=False)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{_closed_port()}")
    return cloud_store(tmp_path, monkeypatch, AWS_ENV)


def _cli(*args):
    from click.testing import CliRunner

    from churnkit.cli import main

    return CliRunner().invoke(main, list(args))


@pytest.mark.parametrize("args", [
    ("endpoint", "status", "--target", "sagemaker", "--endpoint", "churn"),
    ("deploy", "--target", "sagemaker", "--endpoint", "churn", "--model", "models:/churn@challenger"),
    ("monitor", "--latency", "--target", "sagemaker", "--endpoint", "churn", "--since", "30m"),
])
def test_unreachable_aws_is_one_line_naming_the_service_region_and_fix(offline_aws, args):
    res = _cli(*args)
    assert res.exit_code == 1 and res.exception is None or isinstance(res.exception, SystemExit), res.output
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: CloudUnreachableError: AWS "), res.stderr
    assert "region 'us-east-1'" in lines[0] and "check the network (VPN, proxy, firewall)" in lines[0]
    assert "Traceback" not in res.output


def test_guarded_plan_without_a_route_says_what_it_could_not_read(offline_aws):
    res = _cli("deploy", "--target", "sagemaker", "--endpoint", "churn", "--model", "models:/churn@challenger",
               "--guardrails", "canary", "--step", "10", "--plan")
    assert res.exit_code == 0, res.output
    plan = json.loads(res.stdout)
    assert "live state not readable (CloudUnreachableError: AWS sagemaker DescribeEndpoint" in plan["basis"]
    assert "its name, instance type and count are this target's defaults" in plan["basis"]
    ops = [r["operation"] for r in plan["requests"]]
    assert ops == ["PutObject", "CreateModel", "PutMetricAlarm", "PutMetricAlarm", "CreateEndpointConfig", "UpdateEndpoint"]
    latency = plan["requests"][2]["request"]
    assert latency["Statistic"] == "Maximum" and "p99 availability not read" in plan["basis"]


def test_aws_clients_carry_the_bounded_timeouts_and_retries(offline_aws):
    from churnkit.deploy import get_target
    from churnkit.deploy.reach import AWS_ATTEMPTS, CONNECT_TIMEOUT_S

    config = get_target("sagemaker", config=offline_aws).client("cloudwatch").meta.config
    assert (config.connect_timeout, config.retries["mode"], config.retries["total_max_attempts"]) == \
        (CONNECT_TIMEOUT_S, "standard", AWS_ATTEMPTS)


def test_unreachable_azure_and_a_failed_credential_chain_are_one_line(tmp_path, monkeypatch):
    from azure.core.exceptions import ClientAuthenticationError, ServiceRequestError

    from churnkit.deploy import get_target
    from churnkit.exceptions import CloudCredentialsError, CloudUnreachableError
    from deploy.test_azureml import ENV as AZURE_ENV
    from deploy.test_azureml import FakeCredential, _transport_class

    from churnkit.config import load_config

    for k, v in AZURE_ENV.items():
        monkeypatch.setenv(k, v)
    config = load_config(tmp_path / "runs")  # describe() reads no registry

    class NoRoute(_transport_class()):
        def request(self, method, url, data=None, **kwargs):
            raise ServiceRequestError("<urllib3.connection.HTTPSConnection object>: Failed to establish a new "
                                      "connection: [Errno 101] Network is unreachable")

    calls = []
    no_route = NoRoute()
    no_route.request = lambda *a, _f=no_route.request, **kw: calls.append(1) or _f(*a, **kw)
    t = get_target("azureml", config=config, credential=FakeCredential(),
                   client_kwargs={"transport": no_route, "retry_backoff_factor": 0.01})  # the test waits no backoff
    with pytest.raises(CloudUnreachableError, match=r"^Azure ML get endpoint at workspace 'ws-churn'.*Network is "
                                                    r"unreachable.*check the network") as err:
        t.describe()
    assert "\n" not in str(err.value) and len(calls) == 3  # the kit's retry budget: one attempt and two retries

    class Chain:  # what DefaultAzureCredential raises when every credential in its chain fails (26 lines)
        def get_token(self, *scopes, **kwargs):
            raise ClientAuthenticationError(
                "DefaultAzureCredential failed to retrieve a token from the included credentials.\n"
                "Attempted credentials:\n\tEnvironmentCredential: EnvironmentCredential authentication unavailable.\n"
                + "\n".join(f"\tline {i} of the chain" for i in range(22))
                + "\nTo mitigate this issue, please refer to the troubleshooting guidelines here at "
                  "https://aka.ms/azsdk/python/identity/defaultazurecredential/troubleshoot.")

        get_token_info = get_token

    t = get_target("azureml", config=config, credential=Chain(), client_kwargs={"transport": _transport_class()()})
    with pytest.raises(CloudCredentialsError) as err:
        t.describe()
    message = str(err.value)
    assert "\n" not in message and message.startswith("Azure ML get endpoint failed: DefaultAzureCredential failed "
                                                      "to retrieve a token from the included credentials")
    assert "az login" in message and "aka.ms/azsdk/python/identity/defaultazurecredential/troubleshoot" in message
