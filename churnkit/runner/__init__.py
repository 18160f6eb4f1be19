"""Running notebooks headless: their parameters, execution with papermill, and the monthly pipeline.

Modules: ``params`` (declared parameters, checking passed values), ``execution`` (one notebook run and
its record), ``pipeline`` (train → evaluate → deploy → rollout), ``guard`` (redacted writes, partial
notebooks), ``secrets`` (credential detection and redaction).
"""

from churnkit.runner.execution import (
    RunResult,
    failed_cell,
    new_run_folder,
    reproducibility_tags,
    rerun_notebook,
    rerun_parameters,
    run_notebook,
)
from churnkit.runner.params import (
    Parameter,
    check_parameters,
    find_notebook,
    notebook_parameters,
    notebooks_dir,
    split_parameters,
)
from churnkit.runner.pipeline import PIPELINE_STEPS, PipelineResult, pipeline_summary, run_pipeline

__all__ = [
    "PIPELINE_STEPS",
    "Parameter",
    "PipelineResult",
    "RunResult",
    "check_parameters",
    "failed_cell",
    "find_notebook",
    "new_run_folder",
    "notebook_parameters",
    "notebooks_dir",
    "pipeline_summary",
    "reproducibility_tags",
    "rerun_notebook",
    "rerun_parameters",
    "run_notebook",
    "run_pipeline",
    "split_parameters",
]
