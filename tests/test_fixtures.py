"""Every recorded cloud response or record under tests/fixtures names where it comes from: a JSON fixture in its
``source`` (with ``built`` saying how: a documented sample as printed, or field by field from the documented
schema), any other file in a ``<name>.source`` beside it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

FIXTURES = Path(__file__).parent / "fixtures"
#: not cloud responses: notebooks the runner tests execute, and Terraform test files
NOT_RECORDED = {".ipynb", ".hcl", ".source"}


def _sources(text) -> list[str]:
    items = text if isinstance(text, list) else [text]
    return [s for s in items if isinstance(s, str) and "https://" in s]


@pytest.mark.parametrize("path", sorted(p for p in FIXTURES.rglob("*") if p.is_file() and p.suffix not in NOT_RECORDED),
                         ids=lambda p: p.name)
def test_every_fixture_names_its_source(path):
    if path.suffix == ".json":
        doc = json.loads(path.read_text())
        if "resources" in doc and "about" in doc:  # the provider argument lists: a documentation URL per resource
            docs = [r.get("doc", "") for r in doc["resources"].values()]
            assert docs and all(d.startswith("https://registry.terraform.io/") for d in docs)
            return
        assert _sources(doc.get("source")), f"{path.name}: no 'source' with the documentation URL it was taken from"
        assert doc.get("built"), f"{path.name}: say how it was built ('built')"
    else:
        sidecar = path.with_name(path.name + ".source")
        assert sidecar.is_file(), f"{path.name}: no {sidecar.name} beside it naming its source"
        assert "https://" in sidecar.read_text() and "built:" in sidecar.read_text()
