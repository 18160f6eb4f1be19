"""The reviewer's HTML index of ``churnkit report``: rendered notebooks and one page over the runs.

The data comes from :mod:`churnkit.audit.runs`; this module renders and lays it out.

The page is static and self-contained: inline CSS, no script, relative links to the rendered notebooks
so the runs folder can be zipped, uploaded as a CI artifact and browsed anywhere.
"""

from __future__ import annotations

import functools
import html
import json
import os
from datetime import datetime
from pathlib import Path
from urllib.parse import quote

from churnkit.audit.runs import FAILED, collect, failure, key_metrics, key_parameters
from churnkit.clock import human_minutes, iso_from_ms
from churnkit.config import TAG, Config, load_config
from churnkit.runner.approval import production_review

CSS = """
body { font: 14px/1.45 system-ui, -apple-system, Segoe UI, Helvetica, Arial, sans-serif; margin: 24px; color: #1d1d1f; }
h1 { font-size: 22px; margin: 0 0 4px; } h2 { font-size: 17px; margin: 28px 0 8px; }
.meta { color: #666; margin: 0 0 16px; }
table { border-collapse: collapse; width: 100%; }
th, td { text-align: left; vertical-align: top; padding: 6px 8px; border-bottom: 1px solid #e3e3e3; }
th { background: #f5f5f7; font-weight: 600; }
tr.failed > td { background: #fde2e1; }
tr.failed > td:first-child { box-shadow: inset 4px 0 0 #c62828; }
table.notebooks { margin: 4px 0 8px; } table.notebooks th { background: #fafafa; }
.status { font-weight: 600; } .status-FINISHED { color: #1b7f3b; } .status-RUNNING { color: #8a6d00; }
.status-FAILED, .status-KILLED, .status-INCOMPLETE { color: #c62828; }
.error { color: #b71c1c; font-family: ui-monospace, Menlo, Consolas, monospace; font-size: 12.5px; }
.gate.passed { color: #1b7f3b; } .gate.refused { color: #8a4b00; }
.gate, .rollout { white-space: pre-wrap; font-size: 12.5px; }
.alias { display: inline-block; padding: 0 6px; margin-right: 4px; border-radius: 8px; background: #e8eefc; }
.params, .metrics { font-family: ui-monospace, Menlo, Consolas, monospace; font-size: 12.5px; }
.missing { color: #888; } details summary { cursor: pointer; color: #0b57d0; }
a { color: #0b57d0; }
tr.flagged > td { background: #fde2e1; } .flag { color: #b71c1c; font-weight: 600; }
"""


def _e(value) -> str:
    return html.escape("" if value is None else str(value), quote=True)


def _rel(target: str | Path, out: Path) -> str:
    return quote(os.path.relpath(Path(target).resolve(), out.parent.resolve()).replace(os.sep, "/"))


def run_url(ui: str, experiment_id: str, run_id: str) -> str:
    """The MLflow UI page of a run."""
    return f"{ui}/#/experiments/{quote(str(experiment_id))}/runs/{quote(run_id)}"


def version_url(ui: str, name: str, version: str) -> str:
    """The MLflow UI page of a registered model version."""
    return f"{ui}/#/models/{quote(name)}/versions/{quote(str(version))}"


def _when(iso: str | None) -> str:
    return (iso or "").replace("T", " ").removesuffix("Z")[:16]


def _duration(entry: dict) -> str:
    if not entry["started"] or not entry["finished"]:
        return ""
    fmt = "%Y-%m-%dT%H:%M:%SZ"
    secs = (datetime.strptime(entry["finished"], fmt) - datetime.strptime(entry["started"], fmt)).total_seconds()
    return f"{secs:.0f} s" if secs < 120 else f"{secs / 60:.1f} min"


def _commit(entry: dict) -> str:
    commit = entry.get("git_commit")
    if not commit or commit == "unknown":
        return ""
    dirty = " (dirty)" if entry.get("git_dirty") else ""
    return f'<br><span class="commit" title="git commit {_e(commit)}{dirty}">{_e(commit[:8])}{dirty}</span>'


class _Page:
    def __init__(self, runs, parents, versions, rendered, out: Path, ui: str):
        self.runs, self.parents, self.versions, self.rendered = runs, parents, versions, rendered
        self.out, self.ui = out, ui
        self.by_run = {e["run_id"]: e for e in runs if e["run_id"]}

    # ---- links -----------------------------------------------------------------------------------
    def notebook_link(self, path: str | None, label: str | None = None, anchor: str = "") -> str:
        if not path:
            return '<span class="missing">—</span>'
        label = label or f"{Path(path).parent.name}/{Path(path).stem}"
        if path in self.rendered:
            return f'<a class="notebook-link" href="{_rel(self.rendered[path], self.out)}{anchor}">{_e(label)}</a>'
        if Path(path).is_file():
            return f'<a class="notebook-link" href="{_rel(path, self.out)}">{_e(label)}</a>'
        return f'<span class="missing" title="{_e(path)} is not on this machine">{_e(label)}</span>'

    def version_link(self, name: str, version: str | None) -> str:
        if not version:
            return ""
        return (f'<a class="model-version" href="#model-{_e(name)}-v{_e(version)}">{_e(name)} v{_e(version)}</a> '
                f'(<a class="mlflow-version" href="{_e(version_url(self.ui, name, version))}">MLflow</a>)')

    # ---- pipeline rows ---------------------------------------------------------------------------
    def outcome(self, e: dict) -> str:
        parts = []
        if e.get("error"):
            where, detail = failure(e["error"])
            if e["error"].get("cell") is not None:
                link = self.notebook_link(e["output_notebook"], "see the cell", "#papermill-error-cell")
                text = f'failed in <span class="failed-cell">{_e(where)}</span>: {_e(detail)}'
            else:
                link = self.notebook_link(e["output_notebook"], "open the notebook")
                text = f'<span class="failed-cell">{_e(where)}</span>: {_e(detail)}'
            parts.append(f'<div class="error">✗ {text} · {link}</div>')
        if e.get("gate"):
            g = e["gate"]
            verdict = "passed" if g["passed"] else "refused"
            parts.append(f'<div class="gate {verdict}"><b>gate {verdict}</b>: {_e(g["summary"])}</div>')
        if e.get("rollout"):
            r = e["rollout"]
            parts.append(f'<div class="rollout"><b>rollout {_e(r["decision"]).replace("_", " ")}</b>'
                         f' (v{_e(r.get("challenger"))} vs champion v{_e(r.get("champion"))}): {_e(r.get("reason"))}</div>')
        if e.get("event"):
            parts.append(f'<div class="event">{_e(e["event"])}</div>')
        if e.get("score"):
            parts.append(self.score_link(e["score"]))
        return "".join(parts)

    def score_link(self, score: dict) -> str:
        """A link to the partition a scoring run wrote (a folder here, or its cloud URI as text)."""
        where = f'{score["output"].rstrip("/")}/{score["partition"]}' if score.get("partition") else score["output"]
        engine = f' on {_e(score["engine"])}' if score.get("engine") else ""
        if "://" in where or not Path(where).exists():
            return f'<div class="score-output">scored output{engine}: <code>{_e(where)}</code></div>'
        return f'<div class="score-output"><a class="score-output" href="{_rel(where, self.out)}">scored output</a>{engine}</div>'


    def notebook_row(self, e: dict) -> str:
        failed = " failed" if e["status"] in FAILED else ""
        mlflow = (f'<a class="mlflow-run" href="{_e(run_url(self.ui, e["experiment_id"], e["run_id"]))}">run</a>'
                  if e["run_id"] else '<span class="missing">not in MLflow</span>')
        raw = f' · <a href="{_rel(e["output_notebook"], self.out)}">.ipynb</a>' if e["output_notebook"] and Path(
            e["output_notebook"]).is_file() else ""
        return (f'<tr class="notebook{failed}" data-run-id="{_e(e["run_id"])}" data-notebook="{_e(e["notebook"])}" '
                f'data-status="{_e(e["status"])}">'
                f'<td>{self.notebook_link(e["output_notebook"], e["notebook"])}{raw}</td>'
                f'<td><span class="status status-{_e(e["status"])}">{_e(e["status"])}</span></td>'
                f'<td>{_e(_when(e["started"]))}</td><td>{_e(_duration(e))}</td>'
                f'<td class="params">{_e(key_parameters(e))}</td>'
                f'<td class="metrics">{_e(key_metrics(e, seconds=False))}</td><td>{self.outcome(e)}</td>'
                f'<td>{mlflow}{"<br>" + self.version_link(e["model_name"], e["model_version"]) if e["model_version"] else ""}'
                f'{_commit(e)}</td></tr>')

    def pipeline(self, key: str, entries: list[dict]) -> str:
        entries = sorted(entries, key=lambda e: (e["started"] or "", e["notebook"]))
        parent = self.parents.get(key)
        statuses = [e["status"] for e in entries]
        status = parent["status"] if parent else next((s for s in FAILED + ("RUNNING",) if s in statuses), "FINISHED")
        failed = status in FAILED or any(s in FAILED for s in statuses)
        started = parent["started"] if parent else entries[0]["started"]
        gates = [e for e in entries if e.get("gate")]
        gate = ""
        if gates:
            g = gates[-1]["gate"]
            gate = f'<span class="gate {"passed" if g["passed"] else "refused"}">{"passed" if g["passed"] else "refused"}</span>'
        events = " · ".join(f'{_e(e["event"])}' for e in entries if e.get("event"))
        errors = [e for e in entries if e.get("error")]
        if errors:
            err = errors[0]["error"]
            where = f"cell {err['cell']}: {err.get('ename')}" if err.get("cell") is not None else failure(err)[0]
            events = (f'<span class="error">✗ {_e(errors[0]["notebook"])} {_e(where)}</span>'
                      + (" · " + events if events else ""))
        mlflow = (f'<a class="mlflow-run" href="{_e(run_url(self.ui, parent["experiment_id"], parent["run_id"]))}">'
                  "pipeline run</a>") if parent else ""
        label = key if entries[0]["pipeline_id"] else f"{entries[0]['notebook']} (no pipeline)"
        n = len(entries)
        rows = "".join(self.notebook_row(e) for e in entries)
        return (f'<tbody class="pipeline" id="pipeline-{_e(key)}" data-pipeline-id="{_e(key)}" data-status="{_e(status)}">'
                f'<tr class="pipeline-row{" failed" if failed else ""}">'
                f'<td>{_e(_when(started))}</td><td>{_e(label)}</td>'
                f'<td><span class="status status-{_e(status)}">{_e(status)}</span></td>'
                f'<td>{n} notebook{"s" if n != 1 else ""}</td><td>{gate}</td><td>{events}</td><td>{mlflow}</td></tr>'
                f'<tr class="notebooks-row"><td colspan="7"><details{" open" if failed else ""}>'
                f'<summary>{_e(", ".join(e["notebook"] for e in entries))}</summary>'
                '<table class="notebooks"><thead><tr><th>Notebook</th><th>Status</th><th>Started (UTC)</th>'
                '<th>Took</th><th>Parameters</th><th>Metrics</th><th>Outcome</th><th>MLflow</th></tr></thead>'
                f'<tbody>{rows}</tbody></table></details></td></tr></tbody>')

    def pipelines(self) -> str:
        groups: dict[str, list[dict]] = {}
        for e in self.runs:
            groups.setdefault(e["pipeline_id"] or f"run-{e['run_id']}", []).append(e)
        if not groups:
            return '<p class="missing">No runs yet: run <code>churnkit pipeline</code> first.</p>'
        body = "".join(self.pipeline(k, v) for k, v in groups.items())
        return ('<table class="runs"><thead><tr><th>Started (UTC)</th><th>Pipeline</th><th>Status</th>'
                '<th>Notebooks</th><th>Gate</th><th>Model / failure</th><th>MLflow</th></tr></thead>'
                f"{body}</table>")

    # ---- model versions --------------------------------------------------------------------------
    def version_row(self, v: dict) -> str:
        tags = v["tags"]
        links = [self.notebook_link(tags.get(TAG + k)) for k in ("train_notebook", "evaluate_notebook", "deploy_notebook")]
        rollout_run = self.by_run.get(tags.get(TAG + "rollout_run_id") or "")
        if tags.get(TAG + "rollout_notebook") or not rollout_run:
            links.append(self.notebook_link(tags.get(TAG + "rollout_notebook")))
        elif rollout_run["output_notebook"]:
            links.append(self.notebook_link(rollout_run["output_notebook"]))
        else:  # `churnkit rollout` from a shell: the decision record lives in its MLflow run
            url = run_url(self.ui, rollout_run["experiment_id"], rollout_run["run_id"])
            links.append(f'<a class="mlflow-run" href="{_e(url)}">rollout run</a>')
        decision = tags.get(TAG + "rollout_decision", "")
        if decision:
            links[-1] += f' <span class="rollout">({_e(decision.replace("_", " "))})</span>'
        auc = tags.get(TAG + "holdout_roc_auc")
        history = json.loads(tags.get(TAG + "history", "[]") or "[]")
        hist = "".join(f"<li>{_e(_when(h.get('time')))} {_e(h.get('event'))}</li>" for h in history[-8:])
        n = len(history)
        hist = f"<details><summary>{n} event{'s' if n != 1 else ''}</summary><ul>{hist}</ul></details>" if n else ""
        created = _when(iso_from_ms(v["created"]))
        aliases = "".join(f'<span class="alias">{_e(a)}</span>' for a in v["aliases"])
        return (f'<tr class="version" id="model-{_e(v["name"])}-v{_e(v["version"])}" data-version="{_e(v["version"])}">'
                f'<td>{_e(v["name"])}</td>'
                f'<td><a class="mlflow-version" href="{_e(version_url(self.ui, v["name"], v["version"]))}">v{_e(v["version"])}</a></td>'
                f"<td>{aliases}</td><td>{_e(created)}</td>"
                f'<td class="metrics">{_e(f"{float(auc):.4f}") if auc else ""}</td>'
                + "".join(f'<td class="lineage">{link}</td>' for link in links)
                + f"<td>{hist}</td></tr>")

    def approvals(self, config) -> str:
        """Every production version: the candidate it came from, who approved it, when, the note, gate and rollout."""
        rows = production_review(self.versions, config)
        if not rows:
            return ""
        body = []
        for r in rows:
            gate = r["gate"] or {}
            verdict = ("passed" if gate.get("passed") else "not passed") + (
                f"; overridden: {r['override_gate']}" if r["override_gate"] else "")
            if r["approved_by"]:
                who = f"approved by {_e(r['approved_by'])} at {_e(_when(r['approved_at']))}"
            else:
                who = f'<span class="flag">FLAGGED: {_e(r["flag"])}</span>' if r["flag"] else "no recorded approval"
            events = "".join(f"<li>{_e(_when(h.get('time')))} {_e(h.get('event'))}</li>" for h in r["rollout"][-8:])
            body.append(f'<tr class="approval{" flagged" if r["flag"] else ""}" data-version="{_e(r["version"])}">'
                        f'<td>{self.version_link(r["name"], r["version"])}</td>'
                        f'<td>{"".join(f"<span class=alias>{_e(a)}</span>" for a in r["aliases"])}</td>'
                        f'<td>{_e(r["source"] or "")}</td><td>{who}</td><td>{_e(r["note"] or "")}</td>'
                        f'<td>{_e(verdict)}</td><td><ul>{events}</ul></td></tr>')
        return ('<h2 id="approvals">Production hand-off</h2><table class="approvals"><thead><tr><th>Production version'
                '</th><th>Aliases</th><th>Candidate</th><th>Approval</th><th>Note</th><th>Gate</th><th>Rollout</th>'
                f'</tr></thead><tbody>{"".join(body)}</tbody></table>')

    def models(self) -> str:
        if not self.versions:
            return '<p class="missing">No registered model versions yet.</p>'
        rows = "".join(self.version_row(v) for v in self.versions)
        return ('<table class="models"><thead><tr><th>Model</th><th>Version</th><th>Aliases</th><th>Registered (UTC)</th>'
                '<th>Holdout AUC</th><th>Trained by</th><th>Evaluated by</th><th>Deployed by</th><th>Rolled out by</th>'
                f"<th>History</th></tr></thead><tbody>{rows}</tbody></table>")


def page(runs, parents, versions, rendered, *, out: Path, ui: str, config) -> str:
    """The whole index page."""
    p = _Page(runs, parents, versions, rendered, out, ui)
    failed = sum(e["status"] in FAILED for e in runs)
    now = human_minutes()
    return (
        '<!doctype html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>churnkit runs</title><style>{CSS}</style></head><body>"
        f'<h1>churnkit runs</h1><p class="meta">{len(runs)} notebook runs, {failed} failed · generated {_e(now)} '
        f'from {_e(config.runs_dir)} · tracking {_e(config.tracking_uri)} · '
        f'<a href="{_e(ui)}">MLflow UI</a></p>'
        f'<h2 id="pipelines">Pipeline runs</h2>{p.pipelines()}'
        f'<h2 id="models">Registered model versions</h2>{p.models()}'
        f"{p.approvals(config)}"
        "</body></html>\n"
    )


# JupyterLab's look without its <script> tags (require.js, MathJax, mermaid come from a CDN): the index is
# an audit artifact browsed offline, and it should run no third-party code.
_OFFLINE_TEMPLATE = ("{%- extends 'lab/index.html.j2' -%}{% block html_head_js %}{% endblock %}"
                     "{% block html_head_js_mathjax %}{% endblock %}{% block html_head_js_mermaidjs %}{% endblock %}")


@functools.cache
def _html_exporter():
    from jinja2 import DictLoader
    from nbconvert import HTMLExporter

    return HTMLExporter(extra_loaders=[DictLoader({"churnkit_offline.html.j2": _OFFLINE_TEMPLATE})],
                        template_file="churnkit_offline.html.j2")


def render_notebook(path: str | os.PathLike) -> Path:
    """Render an executed notebook to HTML beside it (``NN-name.html``); reused while newer than the notebook.

    The notebook is redacted once more before rendering, in case it was not written by the runner.
    """
    import nbformat

    from churnkit.runner.secrets import redact_notebook

    path = Path(path)
    target = path.with_suffix(".html")
    if target.exists() and target.stat().st_mtime >= path.stat().st_mtime:
        return target
    clean, _ = redact_notebook(json.loads(path.read_text(encoding="utf-8")))
    body, _ = _html_exporter().from_notebook_node(nbformat.reads(json.dumps(clean), as_version=4))
    tmp = target.with_suffix(".html.tmp")
    tmp.write_text(body, encoding="utf-8")
    tmp.replace(target)  # a reader never sees half a file
    return target


def write_report(config: Config | None = None, out: str | os.PathLike | None = None, *,
                 ui_url: str | None = None, limit: int | None = None) -> Path:
    """Write the static HTML index of the runs folder (default ``<runs>/index.html``); returns its path.

    One row per pipeline run, expandable into its notebooks (each rendered to HTML and linked), failures
    highlighted with the failed cell and error, gate verdicts and rollout decisions, links to the MLflow
    UI (``MLFLOW_UI_URL``, default http://127.0.0.1:5000) and a section of registered model versions
    linking back to the notebooks that produced, evaluated, deployed and rolled out each.
    """
    config = config or load_config()
    out = Path(out) if out else config.runs_dir / "index.html"
    out.parent.mkdir(parents=True, exist_ok=True)
    runs, parents, versions = collect(config, limit)
    notebooks = {e["output_notebook"] for e in runs if e["output_notebook"]}
    notebooks |= {v["tags"].get(TAG + k) for v in versions for k in ("train_notebook", "evaluate_notebook",
                                                                     "deploy_notebook", "rollout_notebook")}
    rendered = {nb: render_notebook(nb) for nb in sorted(n for n in notebooks if n and Path(n).is_file())}
    ui = (ui_url or os.environ.get("MLFLOW_UI_URL") or "http://127.0.0.1:5000").rstrip("/")
    html = page(runs, parents, versions, rendered, out=out, ui=ui, config=config)
    tmp = out.with_suffix(".tmp")
    tmp.write_text(html, encoding="utf-8")
    tmp.replace(out)
    return out
