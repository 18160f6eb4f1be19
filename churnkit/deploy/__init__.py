"""Deploy targets behind one interface, looked up by name.

``get_target("local" | "sagemaker" | "azureml" | "vertex", **options)`` returns a ``DeployTarget``.
Cloud SDKs are imported only inside their own module, when a target is used.
"""

from __future__ import annotations

from importlib import import_module

from churnkit.deploy.base import DeployTarget, EndpointState, VariantState, variant_name
from churnkit.exceptions import DeployTargetError

#: name -> "module:class"; modules load on first use so an absent cloud SDK costs nothing.
TARGETS = {
    "local": "churnkit.deploy.local:LocalTarget",
    "sagemaker": "churnkit.deploy.sagemaker:SageMakerTarget",
    "azureml": "churnkit.deploy.azureml:AzureMLTarget",
    "vertex": "churnkit.deploy.vertex:VertexTarget",
}


def target_class(name: str) -> type[DeployTarget]:
    """The class registered under ``name``.

    Raises
    ------
    DeployTargetError
        ``no deploy target named 'gke'; available: 'local', 'sagemaker', 'azureml', 'vertex'``.
    """
    if name not in TARGETS:
        raise DeployTargetError(f"no deploy target named {name!r}; available: {', '.join(map(repr, TARGETS))}")
    module, cls = TARGETS[name].split(":")
    return getattr(import_module(module), cls)


def get_target(name: str, **options) -> DeployTarget:
    """Build the deploy target ``name`` with its options (``endpoint=``, ``config=``, target-specific ones)."""
    return target_class(name)(**options)


__all__ = ["TARGETS", "DeployTarget", "EndpointState", "VariantState", "get_target", "target_class", "variant_name"]
