"""A kernel started ahead (the pipeline's) runs a notebook exactly as one papermill starts: same namespace, same
environment, same execution counts and outputs; only the modules it imported in the background differ."""

from __future__ import annotations

import json

import pytest

NOTEBOOK = {
    "cells": [
        {"cell_type": "markdown", "id": "m0", "metadata": {}, "source": "# Test fixture: what a kernel holds"},
        {"cell_type": "code", "id": "p0", "metadata": {"tags": ["parameters"]}, "outputs": [], "execution_count": None,
         "source": "seed = 0  # a parameter"},
        {"cell_type": "code", "id": "c0", "metadata": {}, "outputs": [], "execution_count": None,
         "source": "import os, sys\n"
                   "print(sorted(n for n in globals() if not n.startswith('_')))\n"
                   "print(os.environ['CHURNKIT_OUTPUT_NOTEBOOK'], os.environ['MLFLOW_RUN_ID'], os.getcwd())\n"
                   "print('mlflow' in sys.modules)"},
    ],
    "metadata": {"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}},
    "nbformat": 4, "nbformat_minor": 5,
}


def _lines(path) -> tuple[list[str], list]:
    nb = json.loads(path.read_text())
    cell = nb["cells"][-1]
    text = "".join("".join(o["text"]) for o in cell["outputs"] if o.get("name") == "stdout")
    return text.splitlines(), [c.get("execution_count") for c in nb["cells"] if c["cell_type"] == "code"]


@pytest.mark.parametrize("warm", [False, True], ids=["papermill's kernel", "warm kernel"])
def test_a_warm_kernel_runs_the_notebook_as_a_fresh_one_would(warm, runs_config, tmp_path):
    import os

    from churnkit.runner import run_notebook
    from churnkit.runner.execution import KERNEL_ENV
    from churnkit.runner.kernel import WarmKernel

    notebooks = tmp_path / "notebooks"
    notebooks.mkdir()
    path = notebooks / "what-it-holds.ipynb"
    path.write_text(json.dumps(NOTEBOOK))
    kernel = WarmKernel(notebooks, {**os.environ, **KERNEL_ENV}) if warm else None
    res = run_notebook(path, {"seed": 3}, config=runs_config, progress=False, kernel=kernel)
    (names, where, preloaded), counts = _lines(res.output_path)
    assert names == "['In', 'Out', 'exit', 'get_ipython', 'open', 'os', 'quit', 'seed', 'sys']"  # nothing bound in the background
    assert where == f"{res.output_path} {res.run_id} {notebooks}"
    assert counts == [1, 2, 3]  # the injected parameters cell, the parameters cell, the cell: silent requests count none
    assert preloaded == str(warm)
    assert res.status == "FINISHED" and res.parameters == {"seed": 3}
    if warm:
        assert kernel.stopped and not kernel.km.has_kernel  # stopped with the run, as papermill stops its own


def test_papermill_is_imported_without_the_uri_grammars_it_never_uses():
    """jsonschema's optional iri checker compiles Lark grammars at import; papermill never checks formats."""
    import subprocess
    import sys

    code = ("import sys\n"
            "from churnkit.runner.execution import import_papermill\n"
            "pm = import_papermill()\n"
            "assert 'jsonschema' in sys.modules and 'rfc3987_syntax' not in sys.modules\n"
            "import nbformat, rfc3987_syntax\n"  # importable again afterwards
            "nbformat.validate(nbformat.read('notebooks/01-train.ipynb', as_version=4))\n"
            "print(pm.__name__)")
    from pathlib import Path

    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          cwd=Path(__file__).resolve().parents[2])
    assert done.returncode == 0 and done.stdout.strip() == "papermill", done.stderr
