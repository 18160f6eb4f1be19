"""Notebooks run cell by cell in a live kernel (as JupyterLab runs them) record one honest MLflow run per
execution: parameters as edited, FAILED/KILLED with the cell, and 02-evaluate says which candidate it took."""

from __future__ import annotations

import re
import shutil
import time

import pytest
from lab_support import LabKernel, text_of

from churnkit import registry
from churnkit.runner import notebooks_dir, run_notebook

SMALL = {"rows = 4000": "rows = 600"}
SLEEP = "import time\ntime.sleep(60)"


@pytest.fixture
def lab(tmp_path, runs_config):
    """A copy of the notebooks and a kernel factory; kernels started here are shut down at the end."""
    folder = tmp_path / "notebooks"
    shutil.copytree(notebooks_dir(), folder)
    kernels = []

    def start(name: str) -> LabKernel:
        k = LabKernel(folder / f"{name}.ipynb", {"CHURNKIT_RUNS_DIR": str(runs_config.runs_dir)})
        kernels.append(k)
        return k

    yield start
    for k in kernels:
        k.shutdown(now=True)


def _runs(config, notebook: str) -> list:
    """The notebook's runs, oldest first."""
    experiment = registry.setup_tracking(config)
    return list(registry.client(config).search_runs([experiment], f"tags.`churnkit.notebook` = '{notebook}'",
                                              order_by=["attributes.start_time ASC"]))


def test_each_run_all_is_its_own_run_and_failures_are_recorded_with_the_cell(lab, runs_config):
    k = lab("01-train")
    assert all(status == "ok" for status, _ in k.run_all(SMALL))
    # The data scientist changes the model and runs everything again in the same kernel.
    second = k.run_all(SMALL | {'model = "logreg"': 'model = "hgb"'})
    assert [s for s, _ in second] == ["ok"] * 4, text_of(second[-1][1])
    # A typo in the label column: the second cell fails.
    third = k.run_all(SMALL | {'label_column = "churn"': 'label_column = "Churn"'})
    assert third[-1][0] == "error" and "LabelError" in text_of(third[-1][1])

    first_run, hgb_run, failed_run = _runs(runs_config, "01-train")
    assert first_run.info.status == hgb_run.info.status == "FINISHED"
    assert first_run.data.params["model"] == "logreg" and hgb_run.data.params["model"] == "hgb"
    for run in (first_run, hgb_run, failed_run):  # every parameters-cell value is logged
        assert run.data.params["data_path"] == "" and run.data.params["rows"] == "600"
        assert run.data.tags["churnkit.interactive"] == "true" and run.data.tags["churnkit.lab_session"]
    assert first_run.data.tags["churnkit.model_uri"] != hgb_run.data.tags["churnkit.model_uri"]
    assert failed_run.info.status == "FAILED"
    assert failed_run.data.params["label_column"] == "Churn"
    assert failed_run.data.tags["churnkit.failed_cell"] == "2"
    assert failed_run.data.tags["churnkit.error"].startswith("LabelError: label column 'Churn'")
    outputs = [o for _, outs in second for o in outs]
    assert not [o for o in outputs if o["type"] == "stream" and o["name"] == "stderr"], "no warnings or bars"

    # An error in the parameters cell of the next Run All is not charged to the run before it.
    k.run_all(SMALL)
    assert k.run_all({"rows = 4000": "rows = 600 +"})[0][0] == "error"
    assert _runs(runs_config, "01-train")[-1].info.status == "RUNNING"

    # The stop button in the middle of a cell: the run ends KILLED, naming the cell.
    status, _ = k.execute(SLEEP, "scratch", interrupt_after=1.0)
    assert status == "error"
    killed = _runs(runs_config, "01-train")[-1]
    assert killed.info.status == "KILLED" and killed.data.tags["churnkit.error"].startswith("KeyboardInterrupt")

    # JupyterLab shuts the kernel down while a cell runs (it interrupts, then asks it to exit): KILLED too.
    k.run_all(SMALL)
    k.kc.execute(SLEEP)  # not waited for: the shutdown arrives while the cell runs
    _wait_for_busy(k)
    k.shutdown()
    stopped = _runs(runs_config, "01-train")[-1]
    assert stopped.info.status == "KILLED" and stopped.info.run_id != killed.info.run_id
    assert "KeyboardInterrupt" in stopped.data.tags["churnkit.error"]


def _wait_for_busy(k: LabKernel) -> None:
    while True:
        m = k.kc.get_iopub_msg(timeout=30)
        if m["msg_type"] == "execute_input":
            time.sleep(0.5)
            return


def test_evaluate_prefers_this_sessions_candidate_and_says_so(lab, runs_config):
    # Only a headless candidate exists: 02-evaluate takes it and says it is not from this session.
    headless = run_notebook("01-train", {"rows": 600}, config=runs_config, progress=False)
    evaluate = lab("02-evaluate")
    results = evaluate.run_all()
    assert [s for s, _ in results] == ["ok"] * 4, text_of(results[-1][1])
    shown = text_of(results[1][1])
    assert f"candidate  run {headless.run_id} (01-train, model logreg)" in shown
    assert "no usable candidate was trained in this JupyterLab session, so took the newest in the store" in shown
    assert "registered churn v1" in text_of(results[3][1])

    # Trained in this session: preferred, and the record says which one was evaluated.
    train = lab("01-train")
    train.run_all(SMALL | {'model = "logreg"': 'model = "hgb"'})
    ours = _runs(runs_config, "01-train")[-1]
    assert ours.data.tags["churnkit.interactive"] == "true"
    results = evaluate.run_all()
    assert [s for s, _ in results] == ["ok"] * 4, text_of(results[-1][1])
    shown = text_of(results[1][1])
    assert f"candidate  run {ours.info.run_id} (01-train, model hgb)" in shown
    assert "trained    " in shown and "in this JupyterLab session" in shown
    assert "chosen     the newest candidate trained in this JupyterLab session" in shown
    assert f"sha256     {ours.data.tags['churnkit.data_sha256']}" in shown
    assert re.search(r"^(PASSED|REFUSED): ", text_of(results[2][1]), re.M)
    first_eval, second_eval = _runs(runs_config, "02-evaluate")
    assert second_eval.data.tags["churnkit.candidate_run_id"] == ours.info.run_id
    assert first_eval.data.tags["churnkit.registered_version"] == "1"  # the first record is left as it was
    assert first_eval.info.status == "FINISHED"
    assert not [o for _, outs in results for o in outs if o["type"] == "execute_result"
                and o["data"].get("text/plain", "").startswith("{")], "no bare dict left as a cell output"
    train.shutdown()  # shutting down an idle kernel finishes its run
    assert _runs(runs_config, "01-train")[-1].info.status == "FINISHED"
