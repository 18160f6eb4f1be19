"""Azure ML entry script for azureml-inference-server-http (``azmlinfsrv``): init() loads, run() scores.

Same validation, compiled scorer and JSON shapes as ``churnkit serve`` (churnkit.serve), for Azure
ML deployments on a curated or custom *environment* rather than the churnkit container:

    azmlinfsrv --entry_script templates/azureml/score.py --port 5001   # AZUREML_MODEL_DIR set

- The model is the churnkit model folder at or below ``AZUREML_MODEL_DIR`` (``MLmodel``,
  ``model.skops``, ``churnkit-model.json`` from ``churnkit.serve.export_model``). It is loaded with
  skops (no MLflow needed) only if its sha256 matches the manifest (and ``CHURNKIT_MODEL_SHA256``
  when set); otherwise init() fails and the deployment does not start.
- POST /score takes every body ``churnkit serve`` takes (JSON shapes and text/csv) and answers
  ``{"predictions": [{"churn_probability", "churn"}], "model": {"name", "version"}}``; bad input gets
  400/413/415/422 ``{"error", "details"}``, never a stack trace.
- The environment needs churnkit importable (``pip install --no-deps churnkit`` beside
  scikit-learn, pandas, numpy, PyYAML and skops at the kit's pins, or PYTHONPATH at the source).
- Limits: ``CHURNKIT_MAX_BODY_BYTES`` (6 MiB) and ``CHURNKIT_MAX_ROWS`` (10000).
"""

import logging
import os

from churnkit.exceptions import SchemaError
from churnkit.serve import contracts
from churnkit.serve.loading import load_model_folder
from churnkit.serve.scorer import Scorer

try:  # raw HTTP access: content type, status codes and headers of our own
    from azureml_inference_server_http.api.aml_request import rawhttp
    from azureml_inference_server_http.api.aml_response import AMLResponse
except ImportError:  # imported outside the server (a notebook, a unit test): run() takes the body text

    def rawhttp(func):
        return func

    AMLResponse = None

log = logging.getLogger("churnkit.serve")
_state = {}


def init():
    """Load and verify the model under AZUREML_MODEL_DIR and build the scorer (once per worker)."""
    model_dir = os.environ.get("AZUREML_MODEL_DIR")
    if not model_dir:
        raise RuntimeError("AZUREML_MODEL_DIR is not set; Azure ML sets it to the registered model's folder")
    loaded = load_model_folder(model_dir)
    _state["loaded"] = loaded
    _state["scorer"] = Scorer.from_loaded(loaded, max_rows=int(os.environ.get("CHURNKIT_MAX_ROWS", contracts.DEFAULT_MAX_ROWS)))
    _state["max_body_bytes"] = int(os.environ.get("CHURNKIT_MAX_BODY_BYTES", contracts.DEFAULT_MAX_BODY_BYTES))
    log.info("churnkit score.py serving %s v%s (%s)", loaded.name, loaded.version, _state["scorer"].engine)


def _respond(obj, status, headers=None):
    if AMLResponse is None:
        return obj if status == 200 else {"status": status, **obj}
    return AMLResponse(contracts.dumps(obj), status, {"Content-Type": "application/json", **(headers or {})})


@rawhttp
def run(raw_data):
    """Score one request: a Flask request under azmlinfsrv, or a JSON body string when called directly."""
    loaded, scorer = _state["loaded"], _state["scorer"]
    if hasattr(raw_data, "get_data"):
        if raw_data.method != "POST":
            return _respond({"error": f"{raw_data.method} /score is not supported; POST the rows", "details": []}, 405)
        body, content_type = raw_data.get_data(), raw_data.headers.get("Content-Type")
    else:
        body = raw_data.encode() if isinstance(raw_data, str) else bytes(raw_data)
        content_type = "application/json"
    try:
        scored = contracts.score_request(body, content_type, scorer, loaded.name, str(loaded.version),
                                         max_body_bytes=_state["max_body_bytes"])
    except SchemaError as exc:
        return _respond(contracts.error_body(exc), exc.status)
    headers = {"X-Model-Latency-Ms": f"{scored.model_seconds * 1000:.3f}", "X-Model-Version": str(loaded.version)}
    return _respond(scored.body, 200, headers)
