"""Helpers for the model-trust tests: the benign corpus, in-process conversion, planted pickles.

The benign corpus comes from ``tools/trusted_types.py`` (the list is generated from the same models).
``convert_in_process`` runs the isolated child's conversion in the test process: for tests about the
allow-list and formats, which would otherwise start a Python child per file; the tests about the
isolation itself use the real child.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def tools_module():
    spec = importlib.util.spec_from_file_location("trusted_types_tool", ROOT / "tools" / "trusted_types.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _in_process(entry, header, body, **_):
    from churnkit.importer import convert_model
    from churnkit.sandbox import Isolation

    head, data = convert_model(header, body)
    return head, data, Isolation("in-process (test)", "none")


@pytest.fixture
def convert_in_process(monkeypatch):
    import churnkit.sandbox

    monkeypatch.setattr(churnkit.sandbox, "run_isolated", _in_process)
