"""Deploy targets behind one interface, looked up by name.

``get_target("local" | "sagemaker" | "azureml" | "vertex", **options)`` returns a ``DeployTarget``.
Cloud SDKs are imported only inside their own module, when a target is used.
"""

from __future__ import annotations

from importlib import import_module

from churnkit.deploy.base import DeployTarget, EndpointState, VariantState, log_deployment, plan_table, variant_name
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


def open_target(name: str, endpoint: str = "churn", port: int = 8000, config=None, autoscaling=None) -> DeployTarget:
    """The target the notebooks and the CLI use: ``port`` applies to the local router only, ``autoscaling``
    (an AutoscalingPolicy, validated for the target's cloud) to the cloud targets only."""
    options = {"endpoint": endpoint, "config": config}
    if autoscaling is not None:
        options["autoscaling"] = autoscaling.validate(name)  # `local` has none: a clear error here
    if name == "local":
        options["port"] = port
    return get_target(name, **options)


def model_uri_for(model_name: str = "churn", model_alias: str = "auto", target: DeployTarget | None = None,
                  config=None, version: str = "") -> str:
    """The registry URI to deploy: ``models:/<name>@<alias>``, or ``models:/<name>/<version>`` by number.

    With ``version`` (a pipeline deploys the version it registered, never what an alias points at by
    then), the URI names that version, or the champion's number when the version is a challenger and
    the endpoint serves nothing yet.

    ``model_alias="auto"`` means the ``challenger`` when one exists, else the ``champion``; when
    ``target`` is given and its endpoint serves nothing yet, the champion goes first (a challenger
    is deployed next to a serving champion, never in its place).

    Raises
    ------
    DeployTargetError
        The model has no version under that alias (or none at all for ``"auto"``).
    """
    from churnkit import registry
    from churnkit.config import ALIAS_CHALLENGER, ALIAS_CHAMPION
    from churnkit.exceptions import ChurnkitError

    current = registry.aliases(model_name, config)
    if str(version):
        registry.find_version(f"models:/{model_name}/{version}", config)  # raises when it is not registered
        if current.get(ALIAS_CHAMPION) not in (None, str(version)) and target is not None:
            try:
                serving = target.describe().exists
            except ChurnkitError:  # no credentials (a plan): deploy the version asked for
                serving = True
            if not serving:
                return f"models:/{model_name}/{current[ALIAS_CHAMPION]}"
        return f"models:/{model_name}/{version}"
    alias = model_alias
    if model_alias == "auto":
        alias = ALIAS_CHALLENGER if ALIAS_CHALLENGER in current else ALIAS_CHAMPION
        if alias == ALIAS_CHALLENGER and ALIAS_CHAMPION in current and target is not None:
            try:
                serving = target.describe().exists
            except ChurnkitError:  # no credentials (a plan): keep the challenger
                serving = True
            alias = ALIAS_CHALLENGER if serving else ALIAS_CHAMPION
    if alias not in current:
        raise DeployTargetError(
            f"model {model_name!r} has no version with alias {alias!r} (aliases: {current!r}); "
            "run 01-train and 02-evaluate first, or pass model_alias with one of those"
        )
    return f"models:/{model_name}@{alias}"


__all__ = ["TARGETS", "DeployTarget", "EndpointState", "VariantState", "get_target", "log_deployment", "model_uri_for",
           "open_target", "plan_table", "target_class", "variant_name"]
