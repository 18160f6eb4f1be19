"""The HTML index renders in a real browser: rows, links and the failure highlight (headless Chromium)."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
from html import unescape

import pytest
from audit_support import audit_store

from churnkit.audit import write_report

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
FAILED_BG = "rgb(253, 226, 225)"  # tr.failed > td in churnkit/_audit_html.py

# Runs in the page after load and writes what the browser computed into <body data-*>, which
# --dump-dom then prints: layout and CSS as Chromium applied them, not as the HTML text claims.
PROBE = """<script>
const d = document.body.dataset;
const cellBg = (row) => row ? getComputedStyle(row.cells[0]).backgroundColor : "missing";
d.failedBg = cellBg(document.querySelector("tr.pipeline-row.failed"));
d.failedNotebookBg = cellBg(document.querySelector("tr.notebook.failed"));
d.okBg = cellBg(document.querySelector("tr.pipeline-row:not(.failed)"));
d.pipelines = document.querySelectorAll("tbody.pipeline").length;
const links = [...document.querySelectorAll("a.notebook-link")];
d.hiddenBefore = links.filter((a) => !a.checkVisibility()).length;
document.querySelectorAll("details").forEach((x) => { x.open = true; });
d.links = links.length;
d.visibleLinks = links.filter((a) => a.checkVisibility() && a.getBoundingClientRect().width > 0).length;
d.linkTargets = links.map((a) => a.href).join(" ");
d.failedCell = document.querySelector("tr.notebook.failed .failed-cell").textContent;
d.failedVisible = document.querySelector("tr.notebook.failed .failed-cell").checkVisibility();
d.versions = document.querySelectorAll("tr.version").length;
d.mlflowRuns = document.querySelectorAll("a.mlflow-run").length;
</script>"""


def _dump_dom(url: str, profile) -> str:
    args = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync",
            "--disable-dev-shm-usage", f"--user-data-dir={profile}", "--dump-dom", url]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=90)
    finally:  # Chromium forks helpers: end the whole group, even on timeout or failure
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert proc.returncode == 0, f"chromium exited with {proc.returncode}"
    return out


@pytest.mark.browser
@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (`make test-setup` installs Debian's chromium)")
def test_index_renders_rows_links_and_failure_highlight_in_chromium(tmp_path_factory, tmp_path):
    with pytest.MonkeyPatch.context() as mp:
        for name in ("MLFLOW_TRACKING_URI", "MLFLOW_RUN_ID", "CHURNKIT_RUNS_DIR"):
            mp.delenv(name, raising=False)
        store = audit_store(tmp_path_factory.mktemp("audit"))
        index = write_report(store.config)
    probe = index.with_name("probe.html")
    probe.write_text(index.read_text().replace("</body>", PROBE + "</body>"))
    dom = _dump_dom(probe.as_uri(), tmp_path / "profile")
    body = re.search(r"<body([^>]*)>", dom).group(1)
    data = {k: unescape(v) for k, v in re.findall(r'data-([a-z-]+)="([^"]*)"', body)}

    assert data["failed-bg"] == FAILED_BG and data["failed-notebook-bg"] == FAILED_BG
    assert data["ok-bg"] != FAILED_BG
    assert int(data["pipelines"]) >= 3  # the pipeline, the failed run, the orphaned notebook
    assert int(data["hidden-before"]) > 0  # a finished pipeline's notebooks start folded
    assert int(data["links"]) >= 5 and data["visible-links"] == data["links"]
    targets = data["link-targets"].split()
    assert all(t.startswith(store.config.runs_dir.as_uri()) for t in targets)
    assert any(t.endswith(f"{store.pipeline.pipeline_id}/02-evaluate.html") for t in targets)
    assert data["failed-cell"] == "code cell 3" and data["failed-visible"] == "true"
    assert data["versions"] == "2" and int(data["mlflow-runs"]) >= 5
