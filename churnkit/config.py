"""Settings, read once into a frozen object (no work at import time)."""

from __future__ import annotations

import contextlib
import logging
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

from churnkit.exceptions import ConfigError

DEFAULT_MODEL_NAME = "churn"
EXPERIMENT_NAME = "churnkit"
ALIAS_CHAMPION = "champion"
ALIAS_CHALLENGER = "challenger"
ALIAS_PREVIOUS = "previous"
TAG = "churnkit."  # prefix of every MLflow tag and cloud resource tag the kit writes


@dataclass(frozen=True)
class Config:
    """Where runs, the MLflow store and its artifacts live.

    Parameters
    ----------
    runs_dir : Path
        The audit trail folder: executed notebooks and, by default, the embedded MLflow store.
    tracking_uri : str
        ``MLFLOW_TRACKING_URI`` when set (a team server), else sqlite under ``runs_dir``.
    embedded : bool
        True when the tracking store is the embedded sqlite file.
    output_notebook : str
        The executed notebook this process writes (``CHURNKIT_OUTPUT_NOTEBOOK``, set by the runner for
        its kernel); "" outside ``churnkit run``.
    pipeline_id : str
        The pipeline this process belongs to (``CHURNKIT_PIPELINE_ID``); "" outside ``churnkit pipeline``.
    """

    runs_dir: Path
    tracking_uri: str
    embedded: bool
    output_notebook: str = ""
    pipeline_id: str = ""

    @property
    def artifact_location(self) -> str | None:
        """Artifact root for new experiments: ``runs_dir/artifacts`` for a local sqlite store (embedded, or
        a ``sqlite:`` ``MLFLOW_TRACKING_URI``), whatever the working directory; a server decides otherwise.

        Without it MLflow puts a sqlite store's artifacts in ``./mlruns`` of the process that logs them
        (``notebooks/mlruns`` for a JupyterLab kernel).
        """
        local = self.embedded or self.tracking_uri.startswith("sqlite:")
        return (self.runs_dir / "artifacts").resolve().as_uri() if local else None


def default_runs_dir() -> Path:
    """``runs/`` of the source checkout (so JupyterLab in notebooks/ and the CLI share one store), else ./runs."""
    root = Path(__file__).resolve().parent.parent
    return root / "runs" if (root / "notebooks").is_dir() and (root / "pyproject.toml").is_file() else Path("runs")


def load_config(runs_dir: str | os.PathLike | None = None, environ: dict | None = None) -> Config:
    """Resolve settings: ``runs_dir`` argument > ``CHURNKIT_RUNS_DIR`` > ``runs/`` (see :func:`default_runs_dir`).

    Parameters
    ----------
    runs_dir : path, optional
        Overrides the environment (the CLI's ``--runs-dir``).
    environ : dict, optional
        The environment to read (default ``os.environ``); tests pass their own.
    """
    env = os.environ if environ is None else environ
    chosen = runs_dir or env.get("CHURNKIT_RUNS_DIR") or default_runs_dir()
    path = Path(chosen).expanduser().resolve()
    if path.exists() and not path.is_dir():
        raise ConfigError(
            f"runs folder {str(path)!r} exists and is not a folder; pass --runs-dir with a folder path "
            "or unset CHURNKIT_RUNS_DIR"
        )
    run = {"output_notebook": env.get("CHURNKIT_OUTPUT_NOTEBOOK", ""), "pipeline_id": env.get("CHURNKIT_PIPELINE_ID", "")}
    uri = env.get("MLFLOW_TRACKING_URI", "").strip()
    if uri:
        return Config(runs_dir=path, tracking_uri=uri, embedded=False, **run)
    return Config(runs_dir=path, tracking_uri=f"sqlite:///{path / 'mlflow.db'}", embedded=True, **run)


#: Log levels ``CHURNKIT_LOG_LEVEL`` accepts; DEBUG and INFO also show what is meant for a terminal.
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
#: tqdm's warning in a kernel without ipywidgets (MLflow imports ``tqdm.auto`` as it loads).
IPROGRESS_WARNING = "IProgress not found"


def log_level(verbose: bool = False, environ: dict | None = None) -> str:
    """The level asked for: ``"INFO"`` with ``verbose`` (the CLI's ``--verbose``), else ``CHURNKIT_LOG_LEVEL``,
    else ``"WARNING"``.

    Raises
    ------
    ConfigError
        When ``CHURNKIT_LOG_LEVEL`` names no level.
    """
    env = os.environ if environ is None else environ
    given = env.get("CHURNKIT_LOG_LEVEL", "").strip()
    level = given.upper() or "WARNING"
    if level not in LOG_LEVELS:
        raise ConfigError(f"CHURNKIT_LOG_LEVEL={given!r} is not a log level; use one of {', '.join(LOG_LEVELS)} "
                          "or unset it")
    return "INFO" if verbose and level not in ("DEBUG", "INFO") else level


def quiet_outputs(level: str = "WARNING") -> None:
    """Keep messages meant for a terminal out of stderr and cell outputs, unless ``level`` is DEBUG or INFO.

    MLflow draws "Downloading artifacts" bars on stderr for every artifact download and logs its database
    set-up at INFO; tqdm warns about ipywidgets in a kernel. ``MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR`` is MLflow's
    only switch for its bars (read at each download), so it is the one environment variable set here, and only
    when the user has not set it.
    """
    logging.getLogger("churnkit").setLevel(level)
    if level in ("DEBUG", "INFO"):
        logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        return
    warnings.filterwarnings("ignore", message=IPROGRESS_WARNING)
    # the database set-up, and the wait for a version's creation a registry server logs at each registration
    for name in ("mlflow.store.db.utils", "alembic.runtime.migration", "mlflow.store.model_registry.abstract_store"):
        logging.getLogger(name).setLevel(logging.WARNING)
    # A notebook run the kit stops (SIGTERM, a dead kernel) is reported in one line naming the output notebook;
    # nbclient's own "Kernel died while waiting for execute reply" (papermill's logger) and asyncio's "Task
    # exception was never retrieved" for the execute request it left pending would repeat it as a traceback.
    for name in ("papermill", "asyncio"):
        logging.getLogger(name).setLevel(logging.CRITICAL)
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")


@contextlib.contextmanager
def scoped_environ(values: dict[str, str | None]):
    """Set (or, for None, unset) environment variables for the block's duration, then restore them."""
    old = {k: os.environ.get(k) for k in values}

    def apply(pairs):
        for k, v in pairs.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v

    apply(values)
    try:
        yield
    finally:
        apply(old)
