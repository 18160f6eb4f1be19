"""Team mode set-up on an MLflow server with its own authentication (``mlflow server --app-name basic-auth``).

:func:`plan_team` lists every step (the experiment, the two registered models, the users and their
permissions); :func:`apply_team` carries them out through MLflow's auth REST API
(``mlflow.server.auth.client.AuthServiceClient``, MLflow 3.17.2: ``get_user``,
``grant_user_permission(username, resource_type, resource_id, permission)`` with resource types
``experiment`` and ``registered_model``), as an admin whose credentials come from
``MLFLOW_TRACKING_USERNAME``/``MLFLOW_TRACKING_PASSWORD``. Re-running it is harmless: existing objects are
kept and grants are set to the planned level.

Who gets what:

================  ===================  ======================  ====================
                  experiment churnkit  candidates (``churn``)   production
================  ===================  ======================  ====================
data scientists   EDIT                 EDIT                     READ
approvers         EDIT                 EDIT (records decision)  MANAGE
CI identity       EDIT                 EDIT                     MANAGE
================  ===================  ======================  ====================

MANAGE is what moving and deleting aliases needs (rollout, rollback); EDIT creates versions and sets tags.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from churnkit.config import EXPERIMENT_NAME, Config, load_config
from churnkit.exceptions import ConfigError, PermissionDeniedError
from churnkit.registry import APPROVAL_REQUIRED, CANDIDATES_MODEL, PRODUCTION_SUFFIX, server_answers
from churnkit.tracking import client, current_user

GRANT_ROUTE = "POST /api/3.0/mlflow/users/permissions/grant"


@dataclass
class Step:
    action: str  # "create-experiment" | "create-model" | "tag-model" | "check-user" | "grant"
    text: str
    request: str
    args: dict
    done: bool = False
    result: str = ""

    def to_dict(self) -> dict:
        return asdict(self)


def _names(values) -> list[str]:
    out = []
    for value in values or ():
        out += [v.strip() for v in str(value).split(",") if v.strip()]
    return list(dict.fromkeys(out))


def plan_team(model_name: str, *, data_scientists=(), approvers=(), ci=(), require_approval: bool = True) -> list[Step]:
    """Every step of the set-up, in order; nothing is sent."""
    if model_name.endswith(PRODUCTION_SUFFIX):
        raise ConfigError(f"model {model_name!r} is a production name; pass the candidates model (e.g. 'churn')")
    ds, ap, bots = _names(data_scientists), _names(approvers), _names(ci)
    if not (ap or bots):
        raise ConfigError("name at least one --approver or --ci user: only they may write the production model")
    both = sorted(set(ds) & (set(ap) | set(bots)))
    if both:
        raise ConfigError(f"user(s) {both!r} are named as data scientist and as approver/CI; one role per account")
    production = model_name + PRODUCTION_SUFFIX
    flag = "true" if require_approval else "false"
    steps = [
        Step("create-experiment", f"experiment {EXPERIMENT_NAME!r} exists", "POST /api/2.0/mlflow/experiments/create",
             {"name": EXPERIMENT_NAME}),
        Step("create-model", f"registered model {model_name!r} (candidates) exists",
             "POST /api/2.0/mlflow/registered-models/create", {"name": model_name}),
        Step("create-model", f"registered model {production!r} (production) exists",
             "POST /api/2.0/mlflow/registered-models/create", {"name": production}),
        Step("tag-model", f"{production!r} tag {APPROVAL_REQUIRED} = {flag}, {CANDIDATES_MODEL} = {model_name!r}",
             "POST /api/2.0/mlflow/registered-models/set-tag",
             {"name": production, "tags": {APPROVAL_REQUIRED: flag, CANDIDATES_MODEL: model_name}}),
    ]
    for user in ds + ap + bots:
        steps.append(Step("check-user", f"user {user!r} exists (an admin creates it: MLflow UI /signup or "
                          "POST /api/2.0/mlflow/users/create)", "GET /api/2.0/mlflow/users/get", {"username": user}))
    grants = ([(u, "EDIT", "EDIT", "READ") for u in ds] + [(u, "EDIT", "EDIT", "MANAGE") for u in ap]
              + [(u, "EDIT", "EDIT", "MANAGE") for u in bots])
    for user, on_experiment, on_candidates, on_production in grants:
        for rtype, rid, perm in (("experiment", EXPERIMENT_NAME, on_experiment),
                                 ("registered_model", model_name, on_candidates),
                                 ("registered_model", production, on_production)):
            steps.append(Step("grant", f"grant {perm} on {rtype.replace('_', ' ')} {rid!r} to {user!r}", GRANT_ROUTE,
                              {"username": user, "resource_type": rtype, "resource_id": rid, "permission": perm}))
    return steps


def apply_team(steps: list[Step], config: Config | None = None, echo=print) -> list[Step]:
    """Carry out ``steps`` as the admin the environment's credentials name.

    Raises
    ------
    PermissionDeniedError
        The credentials are not an admin's (the message names MLFLOW_TRACKING_USERNAME).
    ConfigError
        The tracking store is not a server, or a user to grant to does not exist.
    """
    config = config or load_config()
    if config.embedded or not config.tracking_uri.startswith(("http://", "https://")):
        raise ConfigError(f"team mode needs an MLflow server with authentication, not {config.tracking_uri!r}; set "
                          "MLFLOW_TRACKING_URI to it (`mlflow server --app-name basic-auth`), or run without --apply")
    from mlflow.server.auth.client import AuthServiceClient

    me = current_user(config)
    auth = AuthServiceClient(config.tracking_uri)
    with server_answers("the user list", config):
        admin = auth.get_user(me).is_admin
    if not admin:
        raise PermissionDeniedError(f"user {me!r} is not an MLflow admin; `churnkit team init --apply` runs with an "
                                    "admin's MLFLOW_TRACKING_USERNAME/MLFLOW_TRACKING_PASSWORD (the server's "
                                    "admin_username)", user=me, permission="admin")
    c = client(config)
    experiment_id = ""
    for step in steps:
        with server_answers(step.text, config):
            step.result = _apply(step, c, auth, experiment_id)
            if step.action == "create-experiment":
                experiment_id = step.result
        step.done = True
        echo(f"✓ {step.text}")
    return steps


def _apply(step: Step, c, auth, experiment_id: str) -> str:
    a = step.args
    if step.action == "create-experiment":
        exp = c.get_experiment_by_name(a["name"])
        return exp.experiment_id if exp is not None else c.create_experiment(a["name"])
    if step.action == "create-model":
        try:
            c.get_registered_model(a["name"])
            return "exists"
        except Exception:  # RESOURCE_DOES_NOT_EXIST
            c.create_registered_model(a["name"], description="Customer churn probability (churnkit).")
            return "created"
    if step.action == "tag-model":
        for key, value in a["tags"].items():
            c.set_registered_model_tag(a["name"], key, value)
        return "tagged"
    if step.action == "check-user":
        try:
            auth.get_user(a["username"])
        except Exception as exc:
            if "403" in str(exc) or "401" in str(exc):
                raise
            raise ConfigError(f"user {a['username']!r} does not exist on the server; create it first (MLflow UI "
                              "/signup, or POST /api/2.0/mlflow/users/create as the admin), then run this again") from None
        return "exists"
    rid = experiment_id if a["resource_type"] == "experiment" else a["resource_id"]
    try:
        auth.grant_user_permission(a["username"], a["resource_type"], rid, a["permission"])
    except Exception as exc:  # a grant from an earlier run: set it to the planned level
        if getattr(exc, "error_code", "") != "RESOURCE_ALREADY_EXISTS":
            raise
        auth.revoke_user_permission(a["username"], a["resource_type"], rid)
        auth.grant_user_permission(a["username"], a["resource_type"], rid, a["permission"])
    return a["permission"]
