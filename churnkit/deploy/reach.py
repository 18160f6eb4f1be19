"""A cloud that cannot be reached: bounded waits, and one line that says what was tried and what to check.

Every cloud client the deploy targets build gets a connect timeout and a retry budget, so a laptop off the
VPN, a wrong region or a dead proxy fails in bounded time instead of the SDKs' defaults (botocore: 60 s
connect timeout and up to 5 attempts; azure-core: 300 s and 10 retries):

- AWS (botocore ``Config``): connect 5 s, read 60 s, 3 attempts in ``standard`` retry mode
  (https://boto3.amazonaws.com/v1/documentation/api/latest/guide/retries.html);
- Azure (azure-core pipeline keywords, and the transport of azure-ai-ml's MLClient, which does not pass the
  timeouts on): connect 5 s, read 60 s, 2 retries
  (https://learn.microsoft.com/python/api/azure-core/azure.core.pipeline.policies.retrypolicy);
- Google Cloud: the SDKs' own deadlines (Vertex AI already answers in one line).

:func:`unreachable_error` turns the SDKs' network errors into :class:`CloudUnreachableError`.
"""

from __future__ import annotations

from churnkit.exceptions import CloudUnreachableError

CONNECT_TIMEOUT_S = 5
READ_TIMEOUT_S = 60
AWS_ATTEMPTS = 3
AZURE_RETRIES = 2
#: The longest a call to an unreachable AWS endpoint takes: every attempt's connect timeout plus standard
#: mode's backoff (at most 20 s between attempts).
AWS_BOUND_S = AWS_ATTEMPTS * CONNECT_TIMEOUT_S + (AWS_ATTEMPTS - 1) * 20
#: Azure: every attempt's connect timeout plus the pipeline's backoff (about 20 s over two retries, measured with
#: azure-ai-ml's MLClient failing each attempt at once).
AZURE_BOUND_S = (AZURE_RETRIES + 1) * CONNECT_TIMEOUT_S + 20
#: azure-core pipeline keywords every Azure client of the kit gets (the caller's own keywords win)
AZURE_KWARGS = {"connection_timeout": CONNECT_TIMEOUT_S, "read_timeout": READ_TIMEOUT_S, "retry_total": AZURE_RETRIES,
                "retry_backoff_max": 8}

_NETWORK = {  # exception class names of the SDKs' "could not reach the service" errors
    "EndpointConnectionError", "ConnectTimeoutError", "ReadTimeoutError", "ConnectionClosedError", "ProxyConnectionError",
    "ServiceRequestError", "ServiceRequestTimeoutError", "ServiceResponseTimeoutError", "TransportError",
}


def aws_config():
    """botocore's client ``Config`` with the kit's timeouts and retries."""
    from botocore.config import Config

    return Config(connect_timeout=CONNECT_TIMEOUT_S, read_timeout=READ_TIMEOUT_S,
                  retries={"mode": "standard", "total_max_attempts": AWS_ATTEMPTS})


def is_unreachable(exc: BaseException) -> bool:
    """True when ``exc`` (or what caused it) is an SDK's error for a service it could not reach."""
    seen = 0
    while exc is not None and seen < 5:
        if any(c.__name__ in _NETWORK for c in type(exc).__mro__):
            return True
        exc, seen = exc.__cause__ or exc.__context__, seen + 1
    return False


def unreachable_error(service: str, where: str, exc: BaseException) -> CloudUnreachableError:
    """One line: the service, where it was looked for, the SDK's first line, and what to check."""
    first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
    return CloudUnreachableError(
        f"{service} at {where} could not be reached ({type(exc).__name__}: {first}); check the network "
        "(VPN, proxy, firewall), the region and the credentials' cloud, then retry", service=service, where=where)


def from_exception(exc: BaseException) -> CloudUnreachableError | None:
    """The one-line error for an SDK network error no target caught (the CLI's last resort); None otherwise."""
    if not is_unreachable(exc):
        return None
    module = type(exc).__module__
    service = "AWS" if module.startswith("botocore") else "Azure" if module.startswith("azure") else \
        "Google Cloud" if module.startswith("google") else "the cloud"
    where = getattr(exc, "kwargs", {}).get("endpoint_url") or "its endpoint"
    return unreachable_error(service, where, exc)
