"""`churnkit runs` and `churnkit report`: the reviewer's view of the runs folder."""

from __future__ import annotations

import json
import os
import re
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote

import pytest
from audit_support import PLANTED_KEY, audit_store
from click.testing import CliRunner

from churnkit.audit import ENTRY_KEYS, RUN_KEYS, format_table, list_runs, render_notebook, write_report
from churnkit.cli import main


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    with pytest.MonkeyPatch.context() as mp:
        for name in ("MLFLOW_TRACKING_URI", "MLFLOW_RUN_ID", "CHURNKIT_RUNS_DIR"):
            mp.delenv(name, raising=False)
        yield audit_store(tmp_path_factory.mktemp("audit"))


@pytest.fixture(scope="module")
def entries(store):
    return list_runs(store.config)


def test_one_entry_per_notebook_run_newest_first_with_the_contract_keys(store, entries):
    assert [tuple(e) for e in entries] == [ENTRY_KEYS] * len(entries)  # the contract's keys first, then extras
    assert ENTRY_KEYS[: len(RUN_KEYS)] == RUN_KEYS
    started = [e["started"] for e in entries]
    assert started == sorted(started, reverse=True)
    by_nb = {}
    for e in entries:
        by_nb.setdefault(e["notebook"], []).append(e)
    assert "pipeline" not in by_nb  # the pipeline's parent run is not a notebook run
    assert sorted(by_nb) == ["01-train", "02-evaluate", "crash", "rollout", "sleep"]
    assert len(by_nb["crash"]) == 2  # the failed run, and the notebook MLflow never heard of

    train, evaluate = by_nb["01-train"][0], by_nb["02-evaluate"][0]
    assert train["pipeline_id"] == evaluate["pipeline_id"] == store.pipeline.pipeline_id
    assert train["status"] == "FINISHED" and train["output_notebook"] == str(store.pipeline.step("01-train").output_path)
    assert train["parameters"]["rows"] == 1500 and train["parameters"]["model"] == "logreg"  # passed + defaults
    assert train["passed_parameters"] == {"rows": 1500}
    assert train["git_commit"] and train["finished"] >= train["started"]
    assert evaluate["model_version"] == "1" and evaluate["event"] == "registered v1 as champion"
    assert evaluate["gate"]["passed"] is True and "0.85" in evaluate["gate"]["summary"]
    assert evaluate["metrics"]["holdout_roc_auc"] > 0.85

    deploy = by_nb["sleep"][0]
    assert (deploy["model_version"], deploy["event"]) == ("1", "deployed v1 to local endpoint 'churn'")
    assert deploy["deployment"] == {"target": "local", "endpoint": "churn", "uri": "models:/churn@champion",
                                    "weights": {"v1": 100}}
    rollout = by_nb["rollout"][0]
    assert (rollout["model_version"], rollout["event"]) == ("2", "rolled back v2")
    assert rollout["rollout"]["reason"].startswith("p99 latency") and rollout["output_notebook"] is None

    failed = next(e for e in by_nb["crash"] if e["source"] == "mlflow")
    assert failed["status"] == "FAILED" and failed["run_id"] == store.failed.run_id
    assert failed["error"] == {"cell": 3, "ename": "ValueError", "evalue": "churn column has one class"}
    orphan = entries[-1]
    assert orphan["source"] == "folder" and orphan["run_id"] is None
    assert orphan["status"] == "INCOMPLETE" and orphan["output_notebook"] == str(store.orphan)
    assert orphan["pipeline_id"] == "20200101T000000Z-dead00" and orphan["parameters"] == {"how": "raise"}


def test_runs_json_prints_one_list_and_the_text_table_is_compact(store, entries):
    runner = CliRunner()
    res = runner.invoke(main, ["runs", "--json", "--runs-dir", str(store.config.runs_dir)])
    assert res.exit_code == 0, res.output
    listed = json.loads(res.stdout)  # stdout holds the JSON list and nothing else
    assert [e["run_id"] for e in listed] == [e["run_id"] for e in entries]
    newest = runner.invoke(main, ["runs", "--json", "--limit", "2", "--runs-dir", str(store.config.runs_dir)])
    assert [e["run_id"] for e in json.loads(newest.stdout)] == [e["run_id"] for e in entries[:2]]

    text = runner.invoke(main, ["runs", "--runs-dir", str(store.config.runs_dir)]).stdout
    lines = text.splitlines()
    assert lines[0].split() == ["STARTED", "(UTC)", "RUN", "PIPELINE", "NOTEBOOK", "STATUS", "PARAMETERS", "METRICS",
                                "MODEL"]
    evaluate = next(ln for ln in lines if " 02-evaluate " in ln)
    assert store.pipeline.pipeline_id in evaluate and "churn registered v1 as champion" in evaluate
    assert re.search(r"auc 0\.\d+", evaluate)
    assert any("churn deployed v1 to local endpoint 'churn'" in ln for ln in lines) and any("churn rolled back v2" in ln for ln in lines)
    failed = lines.index(next(ln for ln in lines if store.failed.run_id[:8] in ln))
    assert "FAILED" in lines[failed] and "how=raise" in lines[failed]
    assert lines[failed + 1].strip().startswith("✗ code cell 3: ValueError: churn column has one class")
    assert format_table([]).startswith("no runs yet")


class _Links(HTMLParser):
    def __init__(self):
        super().__init__()
        self.hrefs: list[str] = []
        self.rows: list[dict] = []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "a" and a.get("href"):
            self.hrefs.append(a["href"])
        if tag in ("tr", "tbody"):
            self.rows.append({"tag": tag, **a})


def test_report_links_rendered_notebooks_mlflow_and_model_lineage(store, entries, monkeypatch):
    monkeypatch.setenv("MLFLOW_UI_URL", "https://mlflow.example.com/")
    out = write_report(store.config)
    assert out == store.config.runs_dir / "index.html"
    page = out.read_text()
    parser = _Links()
    parser.feed(page)
    local = [h for h in parser.hrefs if not h.startswith(("https:", "http:", "#"))]
    for href in local:  # every relative link resolves inside the runs folder
        assert (out.parent / unquote(href.split("#")[0])).is_file(), href
    for step in store.pipeline.steps:
        rendered = step.output_path.with_suffix(".html")
        assert rendered.is_file() and f'{store.pipeline.pipeline_id}/{rendered.name}' in local
    failed_html = Path(store.failed.output_path).with_suffix(".html")
    assert f"{failed_html.parent.name}/{failed_html.name}#papermill-error-cell" in local

    exp = entries[0]["experiment_id"]
    assert f"https://mlflow.example.com/#/experiments/{exp}/runs/{store.pipeline.step('01-train').run_id}" in parser.hrefs
    assert f"https://mlflow.example.com/#/experiments/{exp}/runs/{store.pipeline.run_id}" in parser.hrefs
    assert "https://mlflow.example.com/#/models/churn/versions/1" in parser.hrefs
    assert f"https://mlflow.example.com/#/experiments/{exp}/runs/{store.rollout_run_id}" in parser.hrefs

    pipelines = [r for r in parser.rows if r["tag"] == "tbody" and "pipeline" in r.get("class", "")]
    assert {r["data-pipeline-id"] for r in pipelines} >= {store.pipeline.pipeline_id, "20200101T000000Z-dead00"}
    failed_rows = [r for r in parser.rows if r["tag"] == "tr" and "failed" in r.get("class", "").split()]
    assert any(r.get("data-run-id") == store.failed.run_id for r in failed_rows)
    assert not any(r.get("data-run-id") == store.pipeline.step("02-evaluate").run_id for r in failed_rows)
    assert 'failed in <span class="failed-cell">code cell 3</span>: ValueError: churn column has one class' in page
    assert "gate passed</b>: PASSED: holdout roc_auc" in page
    assert "rollout rolled back</b> (v2 vs champion v1): p99 latency 3.1x" in page

    versions = {r["data-version"]: r for r in parser.rows if r["tag"] == "tr" and r.get("class") == "version"}
    assert set(versions) == {"1", "2"}
    v1 = page[page.index('id="model-churn-v1"'):].split("</tr>")[0]
    for step in ("01-train", "02-evaluate"):
        assert f'{store.pipeline.pipeline_id}/{step}.html"' in v1  # trained and evaluated by these notebooks
    assert f'{store.pipeline.pipeline_id}/sleep.html"' in v1  # deployed by this one
    assert '<span class="alias">champion</span>' in v1
    v2 = page[page.index('id="model-churn-v2"'):].split("</tr>")[0]
    assert '<span class="alias">challenger</span>' in v2 and "rolled back" in v2 and "rollout run" in v2


def test_rendering_is_cached_by_notebook_mtime_and_redacts(store):
    notebook = store.pipeline.step("01-train").output_path
    first = render_notebook(notebook)
    stamp = first.stat().st_mtime_ns
    assert render_notebook(notebook).stat().st_mtime_ns == stamp  # unchanged notebook: not rendered again
    os.utime(notebook, ns=(stamp + 10**9, stamp + 10**9))
    assert render_notebook(notebook).stat().st_mtime_ns > stamp  # newer notebook: rendered again

    html = render_notebook(store.orphan).read_text()  # written by hand, not by the runner: redacted anyway
    assert PLANTED_KEY not in html and "[REDACTED:aws-access-key]" in html
    assert "<script src=" not in html  # the page runs no third-party code


def test_report_on_an_empty_runs_folder(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    res = CliRunner().invoke(main, ["report", "--runs-dir", str(tmp_path / "runs"), "--out", str(tmp_path / "r.html")])
    assert res.exit_code == 0, res.output
    page = (tmp_path / "r.html").read_text()
    assert "No runs yet" in page and "No registered model versions yet" in page
    assert not (tmp_path / "runs" / "mlflow.db").exists()  # reading the runs creates no MLflow store
    listed = CliRunner().invoke(main, ["runs", "--runs-dir", str(tmp_path / "runs")])
    assert listed.exit_code == 0 and listed.stdout.startswith("no runs yet")
