"""Project invariants: pins agree, public surface, notebooks stored clean, CI wiring."""

from __future__ import annotations

import ast
import inspect
import json
import re
import tomllib
from pathlib import Path

import yaml

import churnkit

ROOT = Path(__file__).resolve().parent.parent


def test_environment_yml_matches_pyproject_pins():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    def pins(reqs):
        return {re.split(r"[\[=<>]", r)[0].lower(): r.split("==", 1)[1] for r in reqs if "==" in r}

    env_pins = pins(p for p in pip if isinstance(p, str))
    for name, version in pins(wanted := project["dependencies"] + project["optional-dependencies"]["test"]
                              + project["optional-dependencies"]["dev"]).items():
        assert env_pins.get(name) == version, f"{name}: pyproject {version}, environment.yml {env_pins.get(name)}"
    assert all("==" in r for r in wanted), "every dependency is pinned"
    assert any(d == "python=3.11" for d in env["dependencies"] if isinstance(d, str))


def test_public_surface_is_all():
    assert churnkit.__all__ == sorted(churnkit.__all__)
    public = {n for n, v in vars(churnkit).items() if not n.startswith("_") and not inspect.ismodule(v)}
    assert public <= set(churnkit.__all__), public - set(churnkit.__all__)
    for name in churnkit.__all__:
        assert hasattr(churnkit, name), name


def test_notebooks_are_stored_clean_and_thin():
    notebooks = sorted((ROOT / "notebooks").glob("*.ipynb"))
    # 00-import (an existing model) comes before the training path 01-train, 02-evaluate, ...
    assert [p.stem[:3] for p in notebooks][:3] == ["00-", "01-", "02-"]
    for path in notebooks:
        nb = json.loads(path.read_text())
        cells = nb["cells"]
        assert cells[0]["cell_type"] == "markdown", path.name
        tagged = [i for i, c in enumerate(cells) if "parameters" in c.get("metadata", {}).get("tags", [])]
        assert len(tagged) == 1 and tagged[0] != len(cells) - 1, path.name
        for c in cells:
            if c["cell_type"] != "code":
                continue
            assert c.get("outputs") == [] and c.get("execution_count") is None, path.name
            tree = ast.parse("".join(c["source"]))
            assert not [n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.ClassDef, ast.Lambda))], path.name
        params = "".join(cells[tagged[0]]["source"])
        for node in ast.parse(params).body:
            assert isinstance(node, ast.Assign)
            ast.literal_eval(node.value)


def test_ci_runs_the_readme_test_command():
    assert "make test" in (ROOT / ".ci" / "run").read_text()
    readme = (ROOT / "README.md").read_text()
    assert readme.index("make demo") < 400 and readme.index("make test") < 400
    makefile = (ROOT / "Makefile").read_text()
    for target in ("demo:", "test:", "lab:", "serve:", "bench:", "clean:"):
        assert f"\n{target}" in makefile


def test_every_test_folder_is_a_package():
    """tests/<area>/ folders carry an __init__.py: test files may share a basename across folders
    (monitor/test_public.py, rollout/test_public.py) and package-scoped fixtures end with their folder."""
    folders = {p.parent for p in (ROOT / "tests").rglob("test_*.py")} - {ROOT / "tests"}
    assert folders, "tests/ mirrors churnkit/ in sub-folders"
    # tests/ itself stays a plain folder: its conftest and *_support modules are imported by name
    assert not (ROOT / "tests" / "__init__.py").exists()
    for folder in sorted(folders):
        assert (folder / "__init__.py").exists(), f"{folder.relative_to(ROOT)} lacks an __init__.py"


def test_make_lab_starts_kernels_on_ipc_like_the_browser_test():
    makefile = (ROOT / "Makefile").read_text()
    lab = makefile[makefile.index("\nlab:"):makefile.index("\nserve:")]
    assert "--KernelManager.transport=ipc" in lab and '--KernelManager.ip="$$sockets"' in lab
    assert "jupyter --runtime-dir" in lab  # an absolute folder of the user's own, not the notebooks folder
