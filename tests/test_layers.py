"""The package's structure: one-way layers, public names, what the serving layer loads, declared target capabilities."""

from __future__ import annotations

import inspect
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def test_imports_run_one_way_through_the_layers():
    """import-linter's layers contract in pyproject.toml: no module imports from a layer above it."""
    lint = Path(sys.executable).with_name("lint-imports")
    res = subprocess.run([str(lint), "--no-cache"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "churnkit layers run one way KEPT" in res.stdout


def test_every_package_module_is_placed_in_a_layer():
    import tomllib

    layers = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]["contracts"][0]["layers"]
    placed = {name.strip() for layer in layers for name in layer.split("|")}
    top = {f"churnkit.{p.stem}" for p in (ROOT / "churnkit").glob("*.py") if p.stem != "__init__"}
    top |= {f"churnkit.{p.parent.name}" for p in (ROOT / "churnkit").glob("*/__init__.py")}
    assert top <= placed, f"modules outside the layers contract: {sorted(top - placed)}"
    assert not [p.name for p in (ROOT / "churnkit").glob("_*.py") if p.name != "__init__.py"], "private flat modules"


def _loaded_after(statement: str) -> list[str]:
    code = f"import sys, json; {statement}; print(json.dumps(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    return json.loads(out.stdout)


def test_the_serving_layer_loads_no_mlflow_matplotlib_or_upper_layers():
    mods = _loaded_after("import churnkit.serve.app, churnkit.serve.loading, churnkit.serve.scorer, churnkit.serve.capture")
    assert "churnkit.serve.app" in mods
    banned = [m for m in mods if m.split(".")[0] in ("mlflow", "matplotlib", "papermill")
              or m.startswith(("churnkit.deploy", "churnkit.rollout", "churnkit.monitor", "churnkit.registry",
                               "churnkit.tracking", "churnkit.runner", "churnkit.audit"))]
    assert banned == []


def test_importing_the_package_face_loads_nothing_until_a_name_is_used():
    mods = _loaded_after("import churnkit")
    assert [m for m in mods if m.startswith("churnkit")] == ["churnkit", "churnkit.version"]


@pytest.mark.parametrize("package, names", [
    ("churnkit", ["ChurnkitError", "Dataset", "Schema", "__version__", "build_monitor_report", "cloud_latency",
                  "cloud_latency_summary", "describe_dataset", "describe_schema_diff", "evaluate_holdout", "expect_alias", "gate",
                  "get_target", "import_model", "load_candidate", "load_champion", "load_model",
                  "load_monitor_inputs", "load_monitored_model", "load_table", "log_candidate", "log_deployment",
                  "log_evaluation", "log_monitor_report", "measure_latency", "model_uri_for", "open_target",
                  "plan_rollout", "plan_table", "plot_cloud_latency", "plot_evaluation", "plot_rollout", "probe_rows",
                  "record_registration", "register_candidate", "rollout_history", "run_rollout", "scan_model_file",
                  "schema_diff", "score_base", "score_paths", "split_holdout", "start_run", "synth_month", "train_model",
                  "write_demo_model"]),
    ("churnkit.batch", ["Explainer", "ScoreMeta", "ScoreSummary", "ScoreWriter", "build_explainer", "read_partition",
                        "read_scores", "top_reasons", "write_scores"]),
    ("churnkit.runner", ["PIPELINE_STEPS", "Parameter", "PipelineResult", "RunResult", "check_parameters", "failed_cell",
                         "find_notebook", "new_run_folder", "notebook_parameters", "notebooks_dir", "pipeline_summary",
                         "reproducibility_tags", "rerun_notebook", "rerun_parameters", "run_notebook", "run_pipeline",
                         "split_parameters"]),
    ("churnkit.audit", ["ENTRY_KEYS", "FAILED", "RUN_KEYS", "collect", "format_table", "list_runs", "render_notebook",
                        "write_report"]),
    ("churnkit.rollout", ["CANARY_STEPS", "DECISIONS", "DEFAULT_INTERVAL", "LINEAR_STEPS", "MIN_PSI_SCORES", "STRATEGIES",
                          "Check", "RolloutLock", "RolloutRecord", "StepRecord", "Thresholds", "Verdict", "bake_interval",
                          "check_bake", "check_error_rate",
                          "check_input_drift", "check_limits", "check_live", "check_p99", "check_prediction_psi", "early_breach",
                          "enough_traffic", "judge_step", "log_record", "pid_alive", "plan_rollout", "plan_steps", "plot_rollout", "psi",
                          "read_state", "record_outcome", "rollback", "rollout", "rollout_dir", "rollout_history",
                          "should_roll_back", "state_path", "write_state"]),
])
def test_public_names(package, names):
    import importlib

    module = importlib.import_module(package)
    assert module.__all__ == names
    for name in names:
        assert getattr(module, name) is not None, name


def test_what_the_controller_reads_is_declared_on_every_target():
    from churnkit.deploy import TARGETS, target_class
    from churnkit.deploy.base import DeployTarget

    assert {"telemetry", "captured_inputs"} <= DeployTarget.__abstractmethods__
    for name in TARGETS:
        cls = target_class(name)
        assert not inspect.isabstract(cls), (name, cls.__abstractmethods__)
        for method in ("telemetry", "captured_inputs", "telemetry_resolution", "limits"):
            assert callable(getattr(cls, method)), (name, method)
    rollout_src = "".join(p.read_text() for p in (ROOT / "churnkit" / "rollout").glob("*.py"))
    assert "getattr(target" not in rollout_src and "getattr(self.target" not in rollout_src
