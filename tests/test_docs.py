"""The documentation site: its Python examples run (Sybil), it builds strictly, and what it shows comes from the code.

``mkdocs build --strict`` fails on a broken link, a missing page or a missing example file; every console output
a page shows is included from ``docs/examples/`` (written by ``tools/docs_examples.py`` from real runs), never typed.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
from sybil import Sybil
from sybil.parsers.markdown import PythonCodeBlockParser

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
PAGES = sorted(p for p in DOCS.rglob("*.md") if "examples" not in p.parts)
SNIPPET = re.compile(r'^--8<-- "([^"]+)"$')


def _examples():
    """tools/docs_examples.py, the script that writes docs/examples/ (tools/ is not a package)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("docs_examples", ROOT / "tools" / "docs_examples.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _fences(text: str):
    """``(info string, body lines)`` of every fenced code block in a Markdown page."""
    for match in re.finditer(r"^([ \t]*)```(\w*)[^\n]*\n(.*?)^\1```", text, flags=re.M | re.S):
        yield match.group(2), match.group(3).splitlines()


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.relative_to(DOCS).as_posix())
def test_python_examples_in_the_docs_run(page):
    document = Sybil(parsers=[PythonCodeBlockParser()]).parse(page)
    for example in document.examples():
        example.evaluate()


def test_the_docs_have_python_examples_and_sybil_runs_them(tmp_path):
    ran = sum(len(list(Sybil(parsers=[PythonCodeBlockParser()]).parse(p).examples())) for p in PAGES)
    assert ran >= 1
    broken = tmp_path / "broken.md"
    broken.write_text("# t\n\n```python\nassert 1 + 1 == 3\n```\n")
    with pytest.raises(AssertionError):
        for example in Sybil(parsers=[PythonCodeBlockParser()]).parse(broken).examples():
            example.evaluate()


def test_console_output_comes_only_from_generated_examples():
    EXAMPLES = _examples().EXAMPLES
    included = set()
    for page in PAGES:
        for info, body in _fences(page.read_text()):
            if info != "console":
                continue
            lines = [line.strip() for line in body if line.strip()]
            assert len(lines) == 1 and SNIPPET.match(lines[0]), (
                f"{page.relative_to(ROOT)}: a console block shows output typed by hand; include a file of "
                f"docs/examples/ instead (tools/docs_examples.py): {lines[:3]}")
            included.add(SNIPPET.match(lines[0]).group(1))
    assert included <= {f"examples/{name}.txt" for name in EXAMPLES}, included
    for name in included:
        assert (DOCS / name).read_text().startswith("$ "), name


def test_the_params_example_is_what_the_command_prints_today():
    examples = _examples()
    assert examples.run_example("params", examples.EXAMPLES["params"]) == (DOCS / "examples" / "params.txt").read_text()


def test_the_site_builds_strictly_with_generated_references(tmp_path):
    site = tmp_path / "site"
    done = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)], cwd=ROOT,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    cli = (site / "reference" / "cli" / "index.html").read_text()
    from churnkit.cli import main

    for command in main.commands:  # every command, including ones added later, from the click group
        assert f"churnkit {command}" in cli, command
    notebooks = (site / "reference" / "notebooks" / "index.html").read_text()
    for path in sorted((ROOT / "notebooks").glob("[0-9][0-9]-*.ipynb")):
        assert f'id="{path.stem}"' in notebooks, path.stem
    assert "auc_threshold" in notebooks and "load_table" in (site / "reference" / "api" / "index.html").read_text()
    assert "deployer_role_arn" in (site / "reference" / "terraform" / "index.html").read_text()


def test_the_readme_is_short_starts_with_the_two_commands_and_links_into_the_site():
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 200
    first_block = readme.split("```bash\n", 1)[1].split("```", 1)[0].splitlines()
    assert [line.split()[:2] for line in first_block] == [["make", "demo"], ["make", "test"]]
    links = re.findall(r"\]\(([^)#]+)\)", readme)
    assert any(link.startswith("docs/") for link in links)
    for link in links:
        assert (ROOT / link).is_file(), link
