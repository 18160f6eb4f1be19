"""The deploy-target interface: deploy a version as a variant, set traffic, describe, remove, plan.

Every target (``local``, ``sagemaker``, ``azureml``, ``vertex``) follows the same steps for a change:
compute the weights asked for, send the requests, re-read the live state and report each difference
between what was asked and what is live in ``EndpointState.drift`` (a cloud can roll back on its
own; Terraform and autoscalers can change things behind our back). ``plan`` returns the exact
requests a change would send, in the cloud API's own field names, and sends nothing.
"""

from __future__ import annotations

import os
import re
from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from churnkit.config import DEFAULT_MODEL_NAME, TAG, Config, load_config
from churnkit.deploy.telemetry import LIVE_STATUSES, MetricsScraper, TargetLimits, Window
from churnkit.exceptions import ConfigError, DeployTargetError, RolloutError

ACTIONS = ("deploy", "set_traffic", "remove", "stop")
#: Endpoint names every target accepts and that are safe as a folder and lock-file name: 1 to 63 lowercase
#: letters, digits and '-', starting and ending with a letter or digit (SageMaker's rule, lowercased).
ENDPOINT_NAME = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")
ENDPOINT_RULE = ("1 to 63 lowercase letters, digits and '-', starting and ending with a letter or digit "
                 "(e.g. churn, churn-eu-2)")


def check_endpoint_name(name) -> str:
    """``name`` when it is a valid endpoint name (``ENDPOINT_RULE``); DeployTargetError naming the value otherwise."""
    if not isinstance(name, str) or not ENDPOINT_NAME.fullmatch(name):
        raise DeployTargetError(f"endpoint name {name!r} is not valid: use {ENDPOINT_RULE}")
    return name


@dataclass
class VariantState:
    """One variant (SageMaker production variant, Azure deployment, Vertex deployed model, local process)."""

    name: str
    model_version: str
    weight: int
    status: str
    url: str = ""


@dataclass
class EndpointState:
    """What an endpoint serves, as read back from the live system.

    Attributes
    ----------
    variants : dict
        ``{variant name: VariantState}``.
    drift : list of str
        Differences between what the last change asked for and what is live (empty when they agree).
    details : dict
        Target-specific facts (endpoint config name, mirror traffic, router pid, ...).
    """

    target: str
    endpoint: str
    variants: dict[str, VariantState] = field(default_factory=dict)
    drift: list[str] = field(default_factory=list)
    url: str = ""
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def weights(self) -> dict[str, int]:
        """``{variant: weight}`` of every variant, weight 0 included."""
        return {name: v.weight for name, v in self.variants.items()}

    @property
    def exists(self) -> bool:
        return bool(self.variants)

    def variant_for_version(self, version: str | int) -> str | None:
        """The variant serving model ``version`` (None when no variant does)."""
        return next((n for n, v in self.variants.items() if str(v.model_version) == str(version)), None)

    def to_dict(self) -> dict:
        out = asdict(self)
        out["variants"] = {n: asdict(v) for n, v in self.variants.items()}
        return out

    def table(self):
        """The variants as a pandas DataFrame (the notebook's display)."""
        import pandas as pd

        rows = [asdict(v) for v in self.variants.values()]
        return pd.DataFrame(rows, columns=["name", "model_version", "weight", "status", "url"]).set_index("name")

    def summary(self) -> str:
        """One line per variant plus the drift, for the CLI and logs."""
        lines = [f"{self.target} endpoint {self.endpoint!r}" + (f" at {self.url}" if self.url else "")]
        if not self.variants:
            lines.append("  (nothing deployed)")
        for v in self.variants.values():
            lines.append(f"  {v.name:<12} v{v.model_version:<6} {v.weight:>3}%  {v.status}")
        lines += [f"  drift: {d}" for d in self.drift]
        return "\n".join(lines)

    def _repr_html_(self) -> str:
        drift = "".join(f"<li>{d}</li>" for d in self.drift)
        note = f"<p>drift between asked and live:</p><ul>{drift}</ul>" if drift else "<p>live state matches the request</p>"
        return f"<p><b>{self.target}</b> endpoint <code>{self.endpoint}</code> {self.url}</p>" + self.table().to_html() + note


@dataclass(frozen=True)
class Release:
    """A model version to deploy: where it comes from and the variant it becomes."""

    uri: str
    model_name: str
    version: str
    variant: str
    sha256: str = ""
    manifest_sha256: str = ""  # the serving manifest's digest recorded at registration (CHURNKIT_MANIFEST_SHA256)


def variant_name(version: str | int) -> str:
    """The variant a model version is deployed as: ``v<version>`` (the rollout maps aliases with it)."""
    return f"v{version}"


def resolve_release(model_uri: str, variant: str | None = None, config: Config | None = None) -> Release:
    """Resolve ``model_uri`` in the registry (no download) and name its variant.

    Raises
    ------
    DeployTargetError
        A ``runs:/`` URI or a folder (no registry version) without an explicit ``variant``.
    """
    from churnkit import registry

    mv = registry.find_version(model_uri, config)
    if mv is None:
        if not variant:
            raise DeployTargetError(
                f"model {model_uri!r} is not a registry version, so its variant name cannot be derived; "
                "pass variant='name' (--variant) or deploy a models:/name@alias URI"
            )
        return Release(model_uri, DEFAULT_MODEL_NAME, "local", variant)
    sha = dict(mv.tags).get(TAG + "artifact_sha256", "")
    return Release(model_uri, mv.name, str(mv.version), variant or variant_name(mv.version), sha,
                   dict(mv.tags).get(TAG + "manifest_sha256", ""))


def export_release(release: Release, dest: Path, config: Config | None = None) -> Path:
    """Write the verified model folder of ``release`` to ``dest`` with the serving manifest.

    The manifest (name, version, threshold, sha256) lets the serving container know what it serves
    and refuse a changed artifact; the sha256 is checked against the registry before anything ships.
    """
    from churnkit import registry
    from churnkit.serve.loading import export_model

    return export_model(registry.load_model(release.uri, config), dest)


def check_variant_free(release: Release, live: EndpointState) -> None:
    """Refuse to deploy a version under a variant name that serves another version."""
    current = live.variants.get(release.variant)
    if current is not None and str(current.model_version) != release.version:
        raise DeployTargetError(
            f"variant {release.variant!r} on endpoint {live.endpoint!r} already serves model v{current.model_version}; "
            f"pick another variant name for v{release.version}, or remove({release.variant!r}) first"
        )


def _weight(variant: str, w) -> int:
    """``w`` as an int percentage; raises DeployTargetError naming the variant and the value otherwise."""
    if isinstance(w, bool) or not isinstance(w, int | float) or int(w) != w or not 0 <= w <= 100:
        raise DeployTargetError(f"weight {w!r} for variant {variant!r} is not an integer from 0 to 100")
    return int(w)


def check_weights(weights: dict[str, int], known: list[str] | None = None) -> dict[str, int]:
    """Validate traffic weights: integers 0..100 summing to 100, on known variants.

    Raises
    ------
    DeployTargetError
        Naming the offending variant or the sum, and what is accepted.
    """
    out: dict[str, int] = {}
    for name, w in weights.items():
        out[name] = _weight(name, w)
        if known is not None and name not in known:
            raise DeployTargetError(f"no variant named {name!r} on the endpoint; deployed variants: {sorted(known)!r}")
    if sum(out.values()) != 100:
        raise DeployTargetError(f"traffic weights {out!r} sum to {sum(out.values())}; they must sum to 100")
    return out


def weights_with(current: dict[str, int], variant: str, weight: int) -> dict[str, int]:
    """The weights after adding (or re-weighting) ``variant`` at ``weight`` percent.

    The other variants share the remaining ``100 - weight`` in proportion to their current weights
    (largest remainder, so the result sums to exactly 100). A variant added to an endpoint where
    nothing else takes traffic gets 100: an endpoint always serves.
    """
    weight = _weight(variant, weight)
    others = {n: w for n, w in current.items() if n != variant}
    total = sum(others.values())
    if total <= 0:
        return {**{n: 0 for n in others}, variant: 100}
    return {**_share(others, 100 - weight), variant: weight}


def weights_without(current: dict[str, int], variant: str) -> dict[str, int]:
    """The weights after removing ``variant``; its share goes to the others in proportion."""
    others = {n: w for n, w in current.items() if n != variant}
    if not others:
        return {}
    if sum(others.values()) <= 0:
        first = next(iter(others))
        return {n: (100 if n == first else 0) for n in others}
    return _share(others, 100)


def _share(weights: dict[str, int], total: int) -> dict[str, int]:
    """Scale ``weights`` to integers summing to ``total`` (largest remainder)."""
    current = sum(weights.values())
    exact = {n: w * total / current for n, w in weights.items()}
    out = {n: int(x) for n, x in exact.items()}
    for n in sorted(exact, key=lambda n: exact[n] - out[n], reverse=True)[: total - sum(out.values())]:
        out[n] += 1
    return out


def compare(asked: dict[str, int], live: EndpointState, versions: dict[str, str] | None = None) -> list[str]:
    """Differences between the weights (and variant versions) asked for and the live endpoint."""
    drift = []
    for name, w in asked.items():
        v = live.variants.get(name)
        if v is None:
            drift.append(f"variant {name!r} was asked for at {w}% but is not live")
        elif v.weight != w:
            drift.append(f"variant {name!r} serves {v.weight}% but {w}% was asked for")
    for name, v in live.variants.items():
        if name not in asked:
            drift.append(f"variant {name!r} (v{v.model_version}, {v.weight}%) is live but was not asked for")
    for name, version in (versions or {}).items():
        v = live.variants.get(name)
        if v is not None and str(v.model_version) != str(version):
            drift.append(f"variant {name!r} serves model v{v.model_version} but v{version} was deployed")
    for name, v in live.variants.items():
        if name in asked and v.status.lower() not in LIVE_STATUSES:
            drift.append(f"variant {name!r} status is {v.status!r}")
    return drift


def env_settings(names: dict[str, str], target: str, environ: dict | None = None) -> dict[str, str]:
    """Read required settings from the environment: ``{key: VARIABLE}`` → ``{key: value}``.

    Accepts ``"A|B"`` for a variable with a fallback name.

    Raises
    ------
    ConfigError
        Naming every missing variable and what it holds.
    """
    env = os.environ if environ is None else environ
    out, missing = {}, []
    for key, spec in names.items():
        value = next((env[v] for v in spec.split("|") if env.get(v)), "")
        if value:
            out[key] = value
        else:
            missing.append(spec.replace("|", " (or ") + (")" if "|" in spec else ""))
    if missing:
        raise ConfigError(
            f"the {target!r} deploy target needs {', '.join(missing)} set in the environment; "
            "the Terraform template's outputs give the values (templates/terraform/)"
        )
    return out


def record_deploy(release: Release, state: EndpointState, weight: int, config: Config) -> None:
    """Tag the version with the deploy notebook and append the deployment to its history."""
    from churnkit import registry

    if release.version == "local":
        return
    registry.set_version_tag(release.version, "deploy_notebook", config.output_notebook,
                             model_name=release.model_name, config=config)
    live = state.variants.get(release.variant)
    live_w = live.weight if live else "not live"
    registry.record_history(release.model_name, release.version,
                            f"deployed to {state.target} endpoint {state.endpoint!r} as {release.variant} "
                            f"(asked {weight}%, live {live_w}%)", config)


def plan_table(requests: list[dict]):
    """Planned requests as a DataFrame (api, operation, request as JSON) for the notebook's display."""
    import json

    import pandas as pd

    rows = [{"api": r["api"], "operation": r["operation"], "request": json.dumps(r["request"], default=str)}
            for r in requests]
    return pd.DataFrame(rows, columns=["api", "operation", "request"])


def log_deployment(state: EndpointState, model_uri: str, requests: list[dict] | None = None) -> None:
    """Record the deployment on the active MLflow run: tags, the live state and the plan as JSON artifacts."""
    import json

    import mlflow

    if mlflow.active_run() is None:
        return
    from churnkit import registry

    version = registry.find_version(model_uri)
    mlflow.set_tags({TAG + "deploy_target": state.target, TAG + "endpoint": state.endpoint,
                     TAG + "deployed_uri": model_uri, TAG + "endpoint_weights": json.dumps(state.weights),
                     TAG + "deployed_version": str(version.version) if version is not None else "",
                     TAG + "endpoint_drift": json.dumps(state.drift)})
    mlflow.log_dict(state.to_dict(), "deploy/endpoint.json")
    if requests is not None:
        mlflow.log_dict({"requests": requests}, "deploy/plan.json")


class DeployTarget(ABC):
    """A place that serves model versions as weighted variants behind one endpoint.

    Subclasses implement the ``_apply_*`` steps, ``describe`` and the ``_plan_*`` request builders;
    the public methods here validate, apply, re-read the live state and report drift.
    """

    name: ClassVar[str] = ""

    def __init__(self, endpoint: str = "churn", config: Config | None = None):
        self.endpoint = check_endpoint_name(endpoint)
        self.config = config or load_config()
        self.plan_basis = ""
        self.plan_live = EndpointState(self.name, endpoint)

    # ---- public API ------------------------------------------------------------------------------
    def deploy(self, model_uri: str, variant: str | None = None, weight: int = 0) -> EndpointState:
        """Deploy ``model_uri`` as ``variant`` (default ``v<version>``) taking ``weight`` % of traffic.

        The other variants share the rest in proportion; the first variant of an endpoint takes 100 %.
        """
        release = resolve_release(model_uri, variant, self.config)
        before = self.describe()
        check_variant_free(release, before)
        asked = weights_with(self.current_weights(before), release.variant, weight)
        self._apply_deploy(release, asked, before)
        state = self._verify(asked, {release.variant: release.version})
        record_deploy(release, state, asked[release.variant], self.config)
        return state

    def set_traffic(self, weights: dict[str, int]) -> EndpointState:
        """Set traffic weights (summing to 100) on deployed variants; unnamed variants get 0."""
        before = self.describe()
        asked = check_weights(weights, list(before.variants))
        asked = {n: asked.get(n, 0) for n in before.variants}
        self._apply_traffic(asked, before)
        return self._verify(asked)

    def remove(self, variant: str) -> EndpointState:
        """Take ``variant`` out of traffic (its share goes to the others), drain it, then delete it."""
        before = self.describe()
        self._check_removable(variant, before)
        asked = weights_without(before.weights, variant)
        self._apply_remove(variant, asked, before)
        return self._verify(asked)

    def current_weights(self, live: EndpointState) -> dict[str, int]:
        """The weights a new variant is added to (the live ones)."""
        return live.weights

    # ---- what the rollout controller reads ------------------------------------------------------------
    @property
    def state_dir(self) -> Path:
        """This endpoint's folder under the runs folder (its local state, capture, logs)."""
        return self.config.runs_dir / "deploy" / self.name / self.endpoint

    @abstractmethod
    def telemetry(self, variants: list[str], since: float, until: float | None = None) -> dict[str, Window]:
        """``{variant: Window}`` of the requests each of ``variants`` served from ``since`` to ``until``
        (unix seconds; ``until`` None = now), each window naming the source of its numbers. A variant
        with no data yet is absent or has 0 requests: the caller counts that as too little traffic."""

    def telemetry_queries(self, variants: list[str], since: float, until: float | None = None) -> list[dict]:
        """The reads :meth:`telemetry` sends for this window, as planned requests (``churnkit rollout --plan``)."""
        return [request(self.name, "telemetry", {"endpoint": self.endpoint, "variants": list(variants),
                                                 "since": since, "until": until})]

    def telemetry_resolution(self) -> float:
        """The shortest bake (seconds) this target's telemetry can judge: metric period plus ingestion delay."""
        return self.limits().min_bake_s

    @abstractmethod
    def captured_inputs(self, variants: list[str], since: float):
        """The model inputs ``variants`` served since ``since`` (a DataFrame), or None where capture is off."""

    def captured_scores(self, variant: str, since: float, limit: int = 200):
        """Up to ``limit`` rows ``variant`` served since ``since`` with the score it answered (column
        ``churn_probability``), for the serving-parity check; None where the capture does not pair a row
        with its score (the check then says it was not judged)."""

    def limits(self) -> TargetLimits:
        """The platform's traffic, guardrail and telemetry limits, checked before any request."""
        return TargetLimits()

    @abstractmethod
    def describe(self) -> EndpointState:
        """Read the live state (an endpoint that does not exist has no variants)."""

    @abstractmethod
    def stop(self) -> EndpointState:
        """Delete the endpoint and everything serving behind it (idempotent)."""

    def plan(self, action: str, **kw) -> list[dict]:
        """The exact requests ``action`` would send, in the cloud API's field names; nothing is sent.

        The live state is read when that is possible without side effects (and without failing on
        missing credentials); otherwise the plan assumes a new endpoint. ``self.plan_basis`` says which,
        and ``self.plan_live`` is the state the plan was made against.
        """
        if action not in ACTIONS:
            raise DeployTargetError(f"no plan action named {action!r}; available: {', '.join(map(repr, ACTIONS))}")
        live = kw.pop("live", None)
        if live is None:
            live = self._live_for_plan()
        else:
            self.plan_basis = "live state given by the caller"
        self.plan_live = live
        if action == "deploy":
            release = resolve_release(kw["model_uri"], kw.get("variant"), self.config)
            check_variant_free(release, live)
            asked = weights_with(self.current_weights(live), release.variant, kw.get("weight", 0))
            return self._plan_deploy(release, asked, live)
        if action == "set_traffic":
            asked = check_weights(kw["weights"], list(live.variants) if live.exists else None)
            return self._plan_traffic({n: asked.get(n, 0) for n in live.variants} or asked, live)
        if action == "remove":
            self._check_removable(kw["variant"], live)
            return self._plan_remove(kw["variant"], weights_without(live.weights, kw["variant"]), live)
        return self._plan_stop(live)

    # ---- steps for subclasses ---------------------------------------------------------------------
    @abstractmethod
    def _apply_deploy(self, release: Release, asked: dict[str, int], before: EndpointState) -> None: ...

    @abstractmethod
    def _apply_traffic(self, asked: dict[str, int], before: EndpointState) -> None: ...

    @abstractmethod
    def _apply_remove(self, variant: str, asked: dict[str, int], before: EndpointState) -> None: ...

    @abstractmethod
    def _plan_deploy(self, release: Release, asked: dict[str, int], live: EndpointState) -> list[dict]: ...

    @abstractmethod
    def _plan_traffic(self, asked: dict[str, int], live: EndpointState) -> list[dict]: ...

    @abstractmethod
    def _plan_remove(self, variant: str, asked: dict[str, int], live: EndpointState) -> list[dict]: ...

    @abstractmethod
    def _plan_stop(self, live: EndpointState) -> list[dict]: ...

    def _verify(self, asked: dict[str, int], versions: dict[str, str] | None = None) -> EndpointState:
        state = self.describe()
        state.drift = compare(asked, state, versions)
        return state

    def _live_for_plan(self) -> EndpointState:
        try:
            live = self.describe()
        except Exception as exc:  # no credentials or no SDK: plan against an empty endpoint
            self.plan_basis = f"live state not readable ({type(exc).__name__}: {exc}); planned as a new endpoint"
            return EndpointState(self.name, self.endpoint)
        self.plan_basis = "live state read from the endpoint" if live.exists else "endpoint does not exist yet"
        return live

    def _empty(self, **details) -> EndpointState:
        return EndpointState(self.name, self.endpoint, details=details)

    def _check_removable(self, variant: str, live: EndpointState) -> None:
        if variant not in live.variants:
            raise DeployTargetError(
                f"no variant named {variant!r} on {self.name} endpoint {self.endpoint!r}; "
                f"deployed variants: {sorted(live.variants)!r}"
            )
        if len(live.variants) == 1:
            raise DeployTargetError(
                f"variant {variant!r} is the only one on {self.name} endpoint {self.endpoint!r}; "
                "stop() deletes the endpoint, or deploy another version first"
            )


def request(api: str, operation: str, params: dict, **extra) -> dict:
    """One planned request: the API, the operation and its parameters in the API's field names."""
    return {"api": api, "operation": operation, "request": params, **extra}


class CloudTarget(DeployTarget):
    """A managed-cloud target: settings from environment variables ``ENV``, constructor arguments winning.

    Telemetry defaults to scraping each variant's ``/metrics``, which works wherever the variant URLs
    reach the kit's server (Kubernetes services, tests); a managed endpoint routes only predict calls,
    so each cloud target reads its own metrics service instead.
    """

    ENV: ClassVar[dict[str, str]] = {}

    def __init__(self, endpoint: str, config: Config | None, overrides: dict[str, str | None],
                 environ: dict | None = None):
        super().__init__(endpoint, config)
        self._overrides = {k: v for k, v in overrides.items() if v}
        self._environ = environ
        self._scraper = MetricsScraper()

    def telemetry(self, variants: list[str], since: float, until: float | None = None) -> dict[str, Window]:
        live = self.describe()
        urls = {}
        for name in variants:
            v = live.variants.get(name)
            url = (v.url if v is not None else "") or ""
            if not url.startswith(("http://", "https://")):
                raise RolloutError(
                    f"variant {name!r} on {self.name} endpoint {self.endpoint!r} has no URL serving the kit's "
                    f"/metrics (url {url!r}), so the controller cannot judge it; use SageMaker's guardrails "
                    "(churnkit deploy --guardrails) or a target whose variants expose /metrics")
            urls[name] = url
        return self._scraper.windows(urls, since)

    def captured_inputs(self, variants: list[str], since: float):
        return None

    @property
    def settings(self) -> dict[str, str]:
        """Every setting of ``ENV``; a missing one raises ConfigError naming its variable."""
        missing = {k: v for k, v in self.ENV.items() if k not in self._overrides}
        return {**env_settings(missing, self.name, self._environ), **self._overrides}


class ManagedCloudTarget(CloudTarget):
    """A managed endpoint (SageMaker, Azure ML, Vertex AI) whose telemetry comes from the cloud: request
    counts and latency from its metrics service, scores and inputs from its data capture, read by one
    :class:`~churnkit.deploy.cloud_telemetry.CaptureTelemetry` per target (:meth:`make_reader`).

    Its limits say that metrics arrive ``METRIC_PERIOD`` + ``METRIC_DELAY`` seconds late and that the
    scores come apart from the request counts (``scores_delayed``).
    """

    #: the metric period and ingestion delay of the cloud's endpoint metrics (seconds)
    METRIC_PERIOD: ClassVar[float] = 60.0
    METRIC_DELAY: ClassVar[float] = 120.0
    MAX_VARIANTS: ClassVar[int] = 10

    def limit_notes(self) -> dict:
        """What :meth:`limits` adds about this cloud (its ``notes``)."""
        return {}

    def make_reader(self):
        """A new telemetry reader of this endpoint."""
        raise NotImplementedError

    @property
    def telemetry_reader(self):
        """This endpoint's reader, made once (it keeps the capture files it parsed)."""
        if getattr(self, "_telemetry", None) is None:
            self._telemetry = self.make_reader()
        return self._telemetry

    def telemetry(self, variants: list[str], since: float, until: float | None = None) -> dict[str, Window]:
        """Per-variant windows over the complete, ingested metric periods in ``[since, until]`` (a period still
        open or not yet ingested shows no traffic), scores from the capture."""
        return self.telemetry_reader.windows(variants, since, until)

    def captured_inputs(self, variants: list[str], since: float):
        return self.telemetry_reader.inputs(variants, since)

    def telemetry_queries(self, variants: list[str], since: float, until: float | None = None) -> list[dict]:
        return self.telemetry_reader.queries(variants, since, until)

    def limits(self) -> TargetLimits:
        return TargetLimits(max_variants=self.MAX_VARIANTS, min_weight_step=1, telemetry_period_s=self.METRIC_PERIOD,
                            telemetry_delay_s=self.METRIC_DELAY, notes=self.limit_notes(), scores_delayed=True)
