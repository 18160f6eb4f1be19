"""Parameters are checked before any kernel starts; a failed cell still leaves its notebook."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from churnkit import registry
from churnkit.exceptions import NotebookExecutionError, NotebookNotFoundError, ParameterError
from churnkit.runner import check_parameters, find_notebook, notebook_parameters, run_notebook, split_parameters


def test_parameters_are_read_with_defaults_and_comments():
    ps = {p.name: p for p in notebook_parameters("01-train")}
    for name, default in {"data_path": "", "label_column": "churn", "id_columns": [], "model": "logreg", "seed": 0}.items():
        assert ps[name].default == default
        assert ps[name].comment  # every parameter is explained
    ev = {p.name: p.default for p in notebook_parameters("02-evaluate")}
    assert ev["auc_threshold"] == 0.85 and ev["min_improvement"] == 0.0 and ev["model_name"] == "churn"


def test_notebook_names_resolve():
    assert find_notebook("01-train") == find_notebook("train") == find_notebook("01-train.ipynb")
    with pytest.raises(NotebookNotFoundError, match="'99-nope'.*'01-train'"):
        find_notebook("99-nope")


def test_values_are_typed_from_defaults():
    declared = notebook_parameters("01-train")
    out = check_parameters({"seed": "7", "holdout_size": "0.3", "id_columns": "a, b", "model": "hgb"}, declared)
    assert out == {"seed": 7, "holdout_size": 0.3, "id_columns": ["a", "b"], "model": "hgb"}
    assert check_parameters({"id_columns": '["x"]'}, declared)["id_columns"] == ["x"]


@pytest.mark.parametrize(
    "params, match",
    [
        ({"seeed": "1"}, r"unknown parameter 'seeed'.*data_path.*seed"),
        ({"seed": "one"}, r"'seed' expects an integer, got 'one'"),
        ({"holdout_size": "big"}, r"expects a number"),
        ({"api_token": "x"}, r"looks like a credential"),
        ({"aws_secret": "x"}, r"looks like a credential"),
    ],
)
def test_bad_parameters_are_usage_errors(params, match):
    with pytest.raises(ParameterError, match=match) as err:
        check_parameters(params, notebook_parameters("01-train"), "01-train")
    assert err.value.exit_code == 2


def test_pipeline_routes_parameters_to_the_notebooks_that_declare_them():
    out = split_parameters({"seed": "3", "auc_threshold": "0.9"}, ("01-train", "02-evaluate"))
    assert out == {"01-train": {"seed": 3}, "02-evaluate": {"auc_threshold": 0.9}}
    with pytest.raises(ParameterError, match="unknown parameter 'colour'"):
        split_parameters({"colour": "red"}, ("01-train", "02-evaluate"))


_SPAWNED: list[str] = []


def _watch_processes(event: str, args) -> None:
    if event in ("subprocess.Popen", "os.posix_spawn", "os.exec", "os.fork"):
        _SPAWNED.append(f"{event} {args[:2]!r}")


@pytest.fixture
def spawned():
    """Every process this test starts (Python's audit events; a kernel is a process)."""
    if not getattr(sys, "_churnkit_process_hook", False):
        sys.addaudithook(_watch_processes)
        sys._churnkit_process_hook = True
    _SPAWNED.clear()
    yield _SPAWNED
    _SPAWNED.clear()


def test_the_process_watch_sees_a_process_start(spawned):
    subprocess.run([sys.executable, "-c", "pass"], check=True)
    assert spawned and spawned[0].startswith("subprocess.Popen")


def test_unknown_parameter_starts_no_kernel_and_writes_nothing(runs_config, spawned):
    with pytest.raises(ParameterError):
        run_notebook("01-train", {"nope": 1}, config=runs_config)
    kernels = [p for p in spawned if "ipykernel" in p or "python" in p.lower()]
    assert kernels == []  # no kernel started (a library may still ask `uname -p` on import)
    assert not runs_config.runs_dir.exists() or not any(runs_config.runs_dir.iterdir())


def test_failed_cell_keeps_the_notebook_and_marks_the_run_failed(runs_config):
    with pytest.raises(NotebookExecutionError) as err:
        run_notebook("01-train", {"data_path": "/no/such/file.csv"}, config=runs_config, progress=False)
    exc = err.value
    assert exc.cell_index == 2 and exc.ename == "DataError"
    nb = json.loads(open(exc.output_path).read())
    errors = [o for c in nb["cells"] for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert any("/no/such/file.csv" in o["evalue"] for o in errors)
    run = registry.client().get_run(exc.run_id)
    assert run.info.status == "FAILED"
    assert run.data.tags["churnkit.output_notebook"] == exc.output_path
    assert run.data.params["data_path"] == "/no/such/file.csv"
    assert registry.client().list_artifacts(exc.run_id, "notebook")[0].path == "notebook/01-train.ipynb"
