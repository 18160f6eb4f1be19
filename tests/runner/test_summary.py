"""The pipeline's summary for CI: built from the steps' tags alone."""

from __future__ import annotations

import json
from pathlib import Path

from churnkit.runner import PipelineResult, RunResult, pipeline_summary


def test_summary_lists_the_gate_reasons_and_notes():
    gate = {"passed": False, "reasons": ["holdout roc_auc 0.81 is not above 0.85"],
            "notes": ["schema change: columns added ['plan']"], "challenger_auc": 0.81, "auc_threshold": 0.85}
    ev = RunResult("02-evaluate", Path("/runs/p/02-evaluate.ipynb"), "r2", "FINISHED", {"model_name": "churn"}, 1.0,
                   tags={"churnkit.gate": json.dumps(gate), "churnkit.aliases": json.dumps({"champion": "1"})},
                   metrics={"holdout_roc_auc": 0.81})
    out = pipeline_summary(PipelineResult("p", Path("/runs/p"), [ev], "r0"))
    lines = out["text"].splitlines()
    assert "gate     REFUSED" in lines
    assert "  - holdout roc_auc 0.81 is not above 0.85" in lines
    assert "  note: schema change: columns added ['plan']" in lines
    assert out["registered_version"] is None and out["metrics"] == {"roc_auc": 0.81}
