"""MkDocs hook: the reference pages generated from the code at every build.

- ``<!-- notebook-parameters -->``: one table per notebook in ``notebooks/`` (name, default, type and the comment
  on each line), read with the runner's own parser: a new notebook or parameter appears at the next build;
- ``<!-- terraform-modules -->``: each module under ``templates/terraform`` with its variables and outputs;
- ``<!-- python-api -->``: a mkdocstrings entry for every name ``churnkit`` exports, and the runner's.

The command line reference needs no hook: mkdocs-click walks the click group, new commands included.
"""

from __future__ import annotations

import json
from pathlib import Path

MARKER = "<!-- notebook-parameters -->"
ROOT = Path(__file__).resolve().parent.parent


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def notebook_tables(folder: Path = ROOT / "notebooks") -> str:
    from churnkit.runner.params import notebook_parameters

    out = []
    for path in sorted(folder.glob("[0-9][0-9]-*.ipynb")):
        first = json.loads(path.read_text())["cells"][0]
        title = "".join(first.get("source", "")).splitlines()[0].lstrip("# ").strip() if first else path.stem
        out += [f"## {path.stem}", "", f"{title}. Run it headless: `churnkit run {path.stem} -p NAME VALUE`.", "",
                "| parameter | default | type | meaning |", "|---|---|---|---|"]
        for p in notebook_parameters(path):
            out.append(f"| `{p.name}` | `{_cell(json.dumps(p.default))}` | {p.type_name} | {_cell(p.comment)} |")
        out.append("")
    return "\n".join(out)


TERRAFORM_MARKER = "<!-- terraform-modules -->"
API_MARKER = "<!-- python-api -->"
#: Runner entry points CI scripts call, documented beside the names ``churnkit`` exports.
RUNNER_API = ("churnkit.runner.run_notebook", "churnkit.runner.run_pipeline", "churnkit.config.load_config")


def _unquote(text) -> str:
    text = str(text)
    return text[1:-1] if len(text) >= 2 and text[0] == text[-1] == '"' else text


def terraform_tables(folder: Path = ROOT / "templates" / "terraform") -> str:
    """One section per module: what its main.tf header says, then its variables and outputs."""
    import hcl2

    out = []
    for module in sorted(p for p in folder.iterdir() if p.is_dir()):
        header = []
        main = module / "main.tf"
        for line in (main.read_text().splitlines() if main.exists() else []):
            if not line.startswith("#"):
                break
            header.append(line.lstrip("# ").rstrip())
        text = " ".join(h for h in header if h and not h.startswith("terraform "))
        apply = f"`cd templates/terraform/{module.name} && terraform init && terraform apply`"
        out += [f"## {module.name}", "", text, "", apply, "", "| variable | default | meaning |", "|---|---|---|"]
        blocks = {"variable": [], "output": []}
        for path in sorted(module.glob("*.tf")):
            for kind, items in hcl2.loads(path.read_text()).items():
                if kind in blocks:
                    blocks[kind] += [(_unquote(name), body) for item in items for name, body in item.items()]
        for name, body in blocks["variable"]:
            default = f"`{_cell(_unquote(body['default']))}`" if "default" in body else "required"
            out.append(f"| `{name}` | {default} | {_cell(_unquote(body.get('description', '')))} |")
        out += ["", "| output | meaning |", "|---|---|"]
        out += [f"| `{name}` | {_cell(_unquote(body.get('description', '')))} |" for name, body in blocks["output"]]
        out.append("")
    return "\n".join(out)


def api_directives() -> str:
    """A mkdocstrings directive per name in ``churnkit.__all__`` (where it is defined), then the runner's."""
    import importlib

    import churnkit

    out = []
    for name in churnkit.__all__:
        target = churnkit._EXPORTS.get(name)
        if target is None:
            continue
        module, attr = target if isinstance(target, tuple) else (target, name)
        value = getattr(importlib.import_module(module), attr)
        out += [f"::: {value.__module__}.{value.__qualname__}", "    options:", f"      heading: ck.{name}", ""]
    out += ["## Headless runs (CI)", ""]
    out += [f"::: {path}\n" for path in RUNNER_API]
    return "\n".join(out)


def on_page_markdown(markdown: str, page, config, files) -> str:
    for marker, make in ((MARKER, notebook_tables), (TERRAFORM_MARKER, terraform_tables), (API_MARKER, api_directives)):
        if marker in markdown:
            markdown = markdown.replace(marker, make())
    return markdown
