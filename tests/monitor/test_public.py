"""The face of churnkit.monitor: its exact public names, a light import, imports flowing one way."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import churnkit.monitor

PACKAGE = Path(churnkit.monitor.__file__).parent

#: What each module of the package may import from the package (lower modules only; plots/html are leaves).
ALLOWED = {
    "drift": set(),
    "latency": set(),
    "plots": set(),
    "cloud": set(),
    "html": set(),
    "report": {"drift", "plots", "html"},
    "inputs": {"latency"},
    "files": {"inputs", "report", "html"},
    "__init__": {"drift", "latency", "report", "inputs", "files"},
}
#: Layers above the monitor that none of its modules may import.
ABOVE = ("churnkit.rollout", "churnkit._rollout", "churnkit.runner", "churnkit.audit", "churnkit._audit", "churnkit.cli")


def test_public_names_are_exactly_these():
    assert churnkit.monitor.__all__ == [
        "MonitorInputs",
        "MonitorReport",
        "build_monitor_report",
        "counts_in_bins",
        "latency_breakdown",
        "load_monitor_inputs",
        "load_monitored_model",
        "log_monitor_report",
        "measure_latency",
        "monitor_files",
        "population_stability_index",
        "probe_rows",
        "quantile_edges",
        "read_current",
        "recommend",
    ]
    for name in churnkit.monitor.__all__:
        assert getattr(churnkit.monitor, name).__module__.startswith("churnkit.monitor."), name


def test_import_loads_no_plotting_stack():
    code = ("import sys, churnkit.monitor; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] == 'matplotlib' "
            "or m in ('churnkit.monitor.plots', 'churnkit.monitor.html')))")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "[]"


def _imported(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names |= {f"{node.module}.{a.name}" for a in node.names}  # `from churnkit import rollout`
    return names


def test_imports_inside_the_package_flow_one_way():
    modules = {p.stem for p in PACKAGE.glob("*.py")}
    assert modules == set(ALLOWED), "a new module needs its place in ALLOWED"
    for stem in sorted(modules):
        imported = _imported(PACKAGE / f"{stem}.py")
        ours = {n.split(".")[2] for n in imported if n.startswith("churnkit.monitor.")}
        assert ours <= ALLOWED[stem], f"{stem} imports {sorted(ours - ALLOWED[stem])}"
        assert not [n for n in imported if n.startswith(ABOVE)], f"{stem} imports a layer above the monitor"
