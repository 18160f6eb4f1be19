"""Real-time scoring: one server speaking SageMaker's, Vertex AI's, Azure ML's and MLflow's contracts.

Modules: ``validation`` (rows vs the training schema), ``scorer`` (compiled scoring, sklearn
fallback), ``contracts`` (request bodies and responses), ``app`` (Starlette routes, metrics),
``capture`` (data capture), ``loading`` (verified model loading). Names are imported lazily so
``churnkit.serve.scorer`` works without Starlette or MLflow (the Azure ML ``score.py`` needs that).
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "Scorer": "churnkit.serve.scorer",
    "create_app": "churnkit.serve.app",
    "export_model": "churnkit.serve.loading",
    "load_model_folder": "churnkit.serve.loading",
    "load_serving_model": "churnkit.serve.loading",
    "read_capture": "churnkit.serve.capture",
    "run_server": "churnkit.serve.app",
}

__all__ = ["Scorer", "create_app", "export_model", "load_model_folder", "load_serving_model", "read_capture",
           "run_server"]


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'churnkit.serve' has no attribute {name!r}")
