"""The one exception tree of churnkit.

Every message says what failed, the offending value (repr) and how to fix it. Exceptions carry
structured fields so callers (the CLI, the server, notebooks) can act on them without parsing text.
"""

from __future__ import annotations


class ChurnkitError(Exception):
    """Base class of every error churnkit raises on purpose."""

    #: CLI exit code: 1 = a failure the user can act on, 2 = usage.
    exit_code = 1


class ConfigError(ChurnkitError):
    """A setting (environment variable, runs folder, tracking URI) is unusable."""


class DataError(ChurnkitError):
    """A table cannot be read or does not fit the task (label, columns, rows)."""


class LabelError(DataError):
    """The label column is missing, has one class, or uses spellings we cannot map."""


class ModelKindError(ChurnkitError):
    """An unknown model kind was asked for."""

    exit_code = 2


class ParameterError(ChurnkitError):
    """A notebook parameter is unknown, of the wrong type, or looks like a secret."""

    exit_code = 2

    def __init__(self, message: str, *, name: str | None = None, valid: list[str] | None = None):
        super().__init__(message)
        self.name = name
        self.valid = list(valid or [])


class NotebookNotFoundError(ChurnkitError):
    """No notebook matches the name given on the command line."""

    exit_code = 2


class NotebookExecutionError(ChurnkitError):
    """A cell failed while a notebook ran headless; the output notebook was still written."""

    def __init__(
        self,
        message: str,
        *,
        output_path: str,
        cell_index: int | None = None,
        ename: str | None = None,
        evalue: str | None = None,
        run_id: str | None = None,
    ):
        super().__init__(message)
        self.output_path = output_path
        self.cell_index = cell_index
        self.ename = ename
        self.evalue = evalue
        self.run_id = run_id


class TrackingServerError(ConfigError):
    """The MLflow tracking server (``MLFLOW_TRACKING_URI``) did not answer within the kit's retry budget."""

    def __init__(self, message: str, *, uri: str = ""):
        super().__init__(message)
        self.uri = uri


class RunNotFoundError(ChurnkitError):
    """A run id (``churnkit run --rerun``) is not in the tracking store, or is not a notebook run."""


class RegistryError(ChurnkitError):
    """The model registry refused an operation, or a model URI does not resolve."""


class IntegrityError(RegistryError):
    """A model artifact's sha256 does not match the one recorded at registration."""


class SchemaError(ChurnkitError):
    """A scoring request does not fit the model's input schema (mapped to HTTP 4xx by the server)."""

    def __init__(self, message: str, *, status: int = 422, details: list[str] | None = None):
        super().__init__(message)
        self.status = status
        self.details = list(details or [])


class RequestError(SchemaError):
    """A scoring request cannot be read at all: malformed body (400), too large (413), wrong type (415)."""


class DeployTargetError(ChurnkitError):
    """An unknown deploy target, or a target that cannot do what was asked."""


class AutoscalingError(DeployTargetError):
    """An autoscaling policy a cloud would refuse (max below min, a target of 0, a cooldown out of range),
    or autoscaling asked of a target that has none."""

    exit_code = 2


class CloudCredentialsError(ConfigError):
    """A cloud SDK found no usable credentials; the message adds the variables churnkit reads."""


class CloudUnreachableError(ConfigError):
    """A cloud service did not answer within the kit's connect timeout and retries (no route, VPN off, proxy,
    DNS); ``service`` and ``where`` (region or endpoint) name what was tried."""

    def __init__(self, message: str, *, service: str = "", where: str = ""):
        super().__init__(message)
        self.service = service
        self.where = where


class MonitoringPermissionError(CloudCredentialsError):
    """The identity may not read the cloud's metrics; the message names the permission and the Terraform output."""


class MissingExtraError(ChurnkitError):
    """A cloud SDK is not installed; the message names the extra to install."""

    def __init__(self, extra: str, module: str):
        super().__init__(
            f"the {extra!r} deploy target needs the {module!r} package, which is not installed; "
            f"install it with: pip install -e '.[{extra}]'"
        )
        self.extra = extra
        self.module = module


class RolloutError(ChurnkitError):
    """A rollout cannot start or continue (no challenger, no champion, lock held)."""


class ReferenceMissingError(RolloutError):
    """A registered version has no rollout reference and none can be built from what its run recorded."""

    def __init__(self, message: str, *, version: str = ""):
        super().__init__(message)
        self.version = version


class RolloutLockedError(RolloutError):
    """Another rollout holds the lock on the same endpoint; ``pid`` and ``path`` name the holder and the lock."""

    def __init__(self, message: str, *, pid: int | None = None, path: str | None = None):
        super().__init__(message)
        self.pid = pid
        self.path = path


class PipelineLockedError(ChurnkitError):
    """Another pipeline on the same model holds the lock; ``holder`` has its pid, host, since and command."""

    def __init__(self, message: str, *, holder: dict | None = None, path: str | None = None):
        super().__init__(message)
        self.holder = dict(holder or {})
        self.path = path


class TelemetryAccessError(RolloutError):
    """A cloud refused to let the controller read its telemetry; the message names the permission and the
    Terraform output (identity) that grants it. Raised before any traffic moves."""


class MonitorError(ChurnkitError):
    """Reference and current data cannot be compared."""


class ModelImportError(ChurnkitError):
    """A model file cannot be imported: not a binary classifier, or its sample does not fit it."""


class ModelFileError(ModelImportError):
    """A model file is missing, corrupted, truncated, or not a format churnkit imports."""


class UnsafeModelError(ModelImportError):
    """A model file names globals outside the allow-list; nothing in it was loaded. ``refused`` lists them."""

    def __init__(self, message: str, *, refused: list[str] | None = None):
        super().__init__(message)
        self.refused = list(refused or [])


class ApprovalError(RegistryError):
    """A version cannot be approved or rejected (already decided, failed gate, not a candidate, a bad note);
    nothing in the registry changed."""


class PermissionDeniedError(RegistryError):
    """The tracking server refused a request (HTTP 403, or 401 for credentials it does not accept).

    ``permission`` is the MLflow permission the request needs (READ, EDIT, MANAGE), ``resource`` what it
    needs it on, ``user`` the identity the server saw; the message names who grants it.
    """

    def __init__(self, message: str, *, user: str = "", permission: str = "", resource: str = ""):
        super().__init__(message)
        self.user = user
        self.permission = permission
        self.resource = resource


class ScoreError(ChurnkitError):
    """Batch scoring cannot run: a bad input, id column, engine or model (the message names the fix)."""

    def __init__(self, message: str, *, columns: list[str] | None = None):
        super().__init__(message)
        self.columns = list(columns or [])


class ScoreOutputError(ScoreError):
    """The score output folder cannot be written as asked (not a score output, bad partition, accounting)."""


class CloudBatchError(ScoreError):
    """A batch scoring job on a cloud's batch service cannot start, failed, or its output cannot be read."""


class CloudBatchLimitError(CloudBatchError):
    """A batch job request a service would refuse (payload × concurrency, filter length, instance type, region);
    raised before anything is sent or billed. ``field`` names the request field, ``value`` its value."""

    exit_code = 2

    def __init__(self, message: str, *, field: str = "", value=None):
        super().__init__(message)
        self.field = field
        self.value = value


class CloudBatchJobError(CloudBatchError):
    """A batch job ended in failure on the service: ``job`` its name, ``reason`` the service's failure reason,
    ``error_lines`` the first lines of its first error file."""

    def __init__(self, message: str, *, job: str = "", reason: str = "", error_lines: list[str] | None = None):
        super().__init__(message)
        self.job = job
        self.reason = reason
        self.error_lines = list(error_lines or [])


class CloudBatchInterrupted(CloudBatchError):
    """The client stopped waiting (Ctrl-C) while the job still runs on the service; ``job`` names it and
    ``resume``/``stop`` are the commands to wait for it again or to stop it."""

    exit_code = 130

    def __init__(self, message: str, *, job: str = "", resume: str = "", stop: str = ""):
        super().__init__(message)
        self.job = job
        self.resume = resume
        self.stop = stop
