"""The runner never loses a run: timeouts, dead kernels, MemoryError and SIGTERM leave a marked partial
notebook and a FAILED/KILLED MLflow run; every run records what reproduces it; --rerun repeats one."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from churnkit import registry
from churnkit.signals import RunTerminated, sigterm_raises
from churnkit.cli import main
from churnkit.exceptions import NotebookExecutionError
from churnkit.runner import find_notebook, notebook_parameters, reproducibility_tags, run_notebook

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
SLEEP, CRASH = FIXTURES / "sleep.ipynb", FIXTURES / "crash.ipynb"


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """One runs folder for this module's tests (each looks its runs up by id, so they do not interfere)."""
    from churnkit.config import load_config

    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        mp.delenv("MLFLOW_RUN_ID", raising=False)
        runs = tmp_path_factory.mktemp("runner") / "runs"
        mp.setenv("CHURNKIT_RUNS_DIR", str(runs))
        yield load_config(runs)


def _cells(path) -> list[dict]:
    return [c for c in json.loads(Path(path).read_text())["cells"] if c["cell_type"] == "code"]


def _text(cell: dict) -> str:
    return "".join("".join(o.get("text", "")) for o in cell.get("outputs", []))


def _assert_marked(path, ename: str, cell_source: str) -> dict:
    """The partial notebook shows where the run stopped: error output, failed status, banner on top."""
    nb = json.loads(Path(path).read_text())
    assert "papermill-error-cell-tag" in nb["cells"][0]["metadata"]["tags"]
    cell = next(c for c in _cells(path) if cell_source in "".join(c["source"]))
    assert [o["ename"] for o in cell["outputs"] if o["output_type"] == "error"][-1] == ename
    assert cell["metadata"]["papermill"]["status"] == "failed"
    return cell


def test_a_hanging_cell_is_stopped_by_the_cell_timeout(store):
    with pytest.raises(NotebookExecutionError) as err:
        run_notebook(SLEEP, {"seconds": 120}, config=store, progress=False, cell_timeout=2)
    exc = err.value
    assert (exc.ename, exc.cell_index) == ("CellTimeoutError", 3)
    assert "cell timeout (2 s)" in exc.evalue
    cell = _assert_marked(exc.output_path, "CellTimeoutError", "time.sleep")
    banner = "".join(json.loads(Path(exc.output_path).read_text())["cells"][0]["source"])
    assert "The run stopped: CellTimeoutError" in banner
    assert "sleeping" in _text(cell)  # output printed before the timeout is kept
    assert _cells(exc.output_path)[-1]["outputs"] == []  # the cells after it never ran
    run = registry.client().get_run(exc.run_id)
    assert run.info.status == "FAILED"
    assert run.data.tags["churnkit.failed_cell"] == "3" and run.data.tags["churnkit.cell_timeout"] == "2"
    assert run.data.tags["churnkit.error"].startswith("CellTimeoutError: ")
    assert registry.client().list_artifacts(exc.run_id, "notebook")[0].path == "notebook/sleep.ipynb"


@pytest.mark.parametrize(
    "how, ename",
    [("exit", "DeadKernelError"), ("memory", "MemoryError")],
)
def test_kernel_death_and_memory_errors_keep_the_partial_notebook(store, how, ename):
    with pytest.raises(NotebookExecutionError) as err:
        run_notebook(CRASH, {"how": how}, config=store, progress=False)
    exc = err.value
    assert (exc.ename, exc.cell_index) == (ename, 3)
    assert exc.exit_code == 1
    cells = _cells(exc.output_path)
    first = next(c for c in cells if "before the failing cell" in "".join(c["source"]))
    assert "before the failing cell" in _text(first)  # the work done before the crash is on disk
    assert cells[-1]["outputs"] == []
    _assert_marked(exc.output_path, ename, "os._exit")
    run = registry.client().get_run(exc.run_id)
    assert run.info.status == "FAILED" and run.data.tags["churnkit.status"] == "FAILED"
    assert run.data.tags["churnkit.failed_cell"] == "3"
    local = registry.client().download_artifacts(exc.run_id, "notebook/crash.ipynb")
    assert Path(local).read_text() == Path(exc.output_path).read_text()


def _children(pid: int) -> list[int]:
    try:
        return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/status").read_text().split("State:")[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"  # a zombie has exited; only its parent's bookkeeping is left


@pytest.fixture
def churnkit_process():
    """Starts ``python -m churnkit.cli ...``; kills it and its kernel at the end, whatever happened."""
    procs: list[subprocess.Popen] = []
    kernels: list[int] = []

    def start(*args, env=None):
        proc = subprocess.Popen([sys.executable, "-m", "churnkit.cli", *args], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, env=env)
        procs.append(proc)
        return proc, kernels

    yield start
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
            proc.communicate(timeout=30)
    for pid in kernels:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def test_sigterm_keeps_the_partial_notebook_and_marks_the_run_killed(store, churnkit_process):
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "MLFLOW_RUN_ID")}
    earlier = set(store.runs_dir.glob("*/sleep.ipynb"))
    proc, kernels = churnkit_process("run", str(SLEEP), "-p", "seconds", "300", "--runs-dir",
                                     str(store.runs_dir), env=env)
    deadline = time.monotonic() + 180
    output = None
    while time.monotonic() < deadline and proc.poll() is None:  # wait until the long cell is running
        found = list(set(store.runs_dir.glob("*/sleep.ipynb")) - earlier)
        with contextlib.suppress(ValueError, OSError, IndexError):
            cell = next(c for c in _cells(found[0]) if "time.sleep" in "".join(c["source"]))
            if cell["metadata"]["papermill"]["status"] == "running":
                output = found[0]
                break
        time.sleep(0.2)
    assert output is not None, f"the sleeping cell never started: {proc.communicate(timeout=60)}"
    kernels += _children(proc.pid)
    assert kernels, "the kernel should be a child of the churnkit process"
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert "RunTerminated" in err and str(output) in err
    assert out == ""
    _assert_marked(output, "RunTerminated", "time.sleep")
    (run,) = registry.client().search_runs([registry.setup_tracking(store)],
                                           filter_string=f"tags.`churnkit.output_notebook` = '{output}'")
    assert run.info.status == "KILLED" and run.data.tags["churnkit.status"] == "KILLED"
    assert run.data.tags["churnkit.failed_cell"] == "3"
    assert registry.client().list_artifacts(run.info.run_id, "notebook")[0].path == "notebook/sleep.ipynb"
    deadline = time.monotonic() + 60
    while any(_alive(k) for k in kernels) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not any(_alive(k) for k in kernels), "the kernel outlived the terminated run"


def test_sigterm_handler_is_installed_only_while_running_and_restored():
    before = signal.getsignal(signal.SIGTERM)
    # re-entrant: the pipeline and each of its notebooks install it
    with pytest.raises(RunTerminated) as err, sigterm_raises(), sigterm_raises():
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)  # the handler raises before this returns
    assert err.value.signum == signal.SIGTERM
    assert signal.getsignal(signal.SIGTERM) is before


def test_every_run_records_what_reproduces_it(tmp_path):
    data = tmp_path / "may.csv"
    data.write_text("customerID,tenure,churn\n1,3,Yes\n2,40,No\n")
    path = find_notebook("01-train")
    tags = reproducibility_tags(path, notebook_parameters(path), {"data_path": str(data), "seed": 7})
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=path.parent, capture_output=True, text=True,
                          check=True).stdout.strip()
    assert tags["churnkit.git_commit"] == head and tags["churnkit.git_dirty"] in ("true", "false")
    assert tags["churnkit.data_sha256"] == hashlib.sha256(data.read_bytes()).hexdigest()
    assert tags["churnkit.seed"] == "7"
    assert tags["churnkit.notebook_sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    packages = json.loads(tags["churnkit.packages"])
    assert {"python", "scikit-learn", "pandas", "mlflow", "papermill"} <= set(packages)
    assert json.loads(tags["churnkit.defaults"])["model"] == "logreg"


def test_rerun_executes_the_same_notebook_with_the_same_parameters(store):
    first = run_notebook(SLEEP, {"seconds": 0}, config=store, progress=False)
    for key in ("churnkit.git_commit", "churnkit.git_dirty", "churnkit.packages", "churnkit.notebook_sha256"):
        assert first.tags[key]
    runner = CliRunner()
    res = runner.invoke(main, ["run", "--rerun", first.run_id[:8], "--runs-dir", str(store.runs_dir)])
    assert res.exit_code == 0, res.output
    again = Path(res.stdout.strip().splitlines()[-1])
    assert again.name == "sleep.ipynb" and again.parent != first.output_path.parent and again.exists()
    (rerun,) = registry.client().search_runs([registry.setup_tracking(store)],
                                             filter_string=f"tags.`churnkit.rerun_of` = '{first.run_id}'")
    assert json.loads(rerun.data.tags["churnkit.parameters"]) == {"seconds": 0}
    assert rerun.data.tags["churnkit.notebook_path"] == str(SLEEP) and rerun.info.status == "FINISHED"

    both = runner.invoke(main, ["run", "01-train", "--rerun", first.run_id, "--runs-dir", str(store.runs_dir)])
    assert both.exit_code == 2 and "either a NOTEBOOK or --rerun RUN_ID" in both.output
    unknown = runner.invoke(main, ["run", "--rerun", "0" * 32, "--runs-dir", str(store.runs_dir)])
    assert unknown.exit_code == 1 and "not in the tracking store" in unknown.output
    assert "churnkit runs" in unknown.output


def test_rerun_of_a_pipeline_run_names_the_pipeline_command(store):
    from churnkit.exceptions import RunNotFoundError
    from churnkit.runner import rerun_parameters

    exp = registry.setup_tracking(store)
    parent = registry.client().create_run(exp, tags={"churnkit.notebook": "pipeline",
                                                     "churnkit.parameters": json.dumps({"model": "hgb", "rows": 900})})
    with pytest.raises(RunNotFoundError, match=r"`churnkit pipeline -p model hgb -p rows 900`"):
        rerun_parameters(parent.info.run_id, store)


def test_a_pipeline_stopped_by_sigterm_ends_its_parent_run_killed(store, monkeypatch):
    import churnkit.runner as runner

    parents = []

    def terminated_step(*args, parent_run_id=None, **kwargs):  # SIGTERM arrives while the first step runs
        parents.append(parent_run_id)
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)  # the runner's handler raises before this returns

    monkeypatch.setattr("churnkit.runner.pipeline.run_notebook", terminated_step)
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(RunTerminated):
        runner.run_pipeline({}, config=store, progress=False, echo=lambda *_: None)
    assert signal.getsignal(signal.SIGTERM) is before
    parent = registry.client().get_run(parents[0])
    assert parent.info.status == "KILLED" and parent.data.tags["churnkit.status"] == "KILLED"


@pytest.mark.parametrize("source, words", [
    ("seed = 0  # ok\nrows = (\n", "is not valid Python (line 2"),
    ("seed = 0  # ok\nrows = int('5')  # not a literal\n", "parameter 'rows' in bad.ipynb is not a literal (\"int('5')\")"),
])
def test_a_broken_parameters_cell_is_a_usage_error_naming_it(tmp_path, source, words):
    import nbformat

    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(source, metadata={"tags": ["parameters"]})])
    path = tmp_path / "bad.ipynb"
    nbformat.write(nb, path)
    res = CliRunner().invoke(main, ["params", str(path)])
    assert res.exit_code == 2 and res.exc_info[0] is SystemExit, res.output
    assert words in res.stderr
