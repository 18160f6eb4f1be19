"""Batch scoring of the whole customer base: ranked, explained, partitioned Parquet (DESIGN §7c).

Modules: ``output`` (the one output format: staging, exact ranks, atomic partition swap, errors/ and
row accounting; every engine and cloud writes through it or matches it), ``reasons`` (per-row
contributions: exact for logistic regression, path attribution for trees), ``source`` (reading the
input in record batches), ``engine`` (the local engine: processes over record batches through the
compiled scorer), ``spark`` (the same output on Spark; pyspark imported lazily), ``run`` (the
command and the notebook: model, reference, drift, MLflow); the clouds' batch services in ``sagemaker``,
``azureml`` and ``vertex`` (SDKs imported lazily), sharing waiting and raw-output reading in ``cloud``.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "ScoreMeta": "churnkit.batch.output",
    "ScoreSummary": "churnkit.batch.output",
    "ScoreWriter": "churnkit.batch.output",
    "write_scores": "churnkit.batch.output",
    "read_partition": "churnkit.batch.output",
    "read_scores": "churnkit.batch.output",
    "Explainer": "churnkit.batch.reasons",
    "build_explainer": "churnkit.batch.reasons",
    "top_reasons": "churnkit.batch.reasons",
}

__all__ = ["Explainer", "ScoreMeta", "ScoreSummary", "ScoreWriter", "build_explainer", "read_partition", "read_scores",
           "top_reasons", "write_scores"]


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'churnkit.batch' has no attribute {name!r}")
