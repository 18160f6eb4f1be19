"""templates/azureml/score.py under the real azureml-inference-server-http (``azmlinfsrv``) on 127.0.0.1.

azureml-inference-server-http pins opentelemetry/pydantic below the kit's pins, so it lives in its own
venv (``.venv-azml``, made by ``make test-setup``) with churnkit on PYTHONPATH.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import httpx
import numpy as np
import pytest
from conftest import free_port
from serve_support import REPO, Server, clean_env, expected_proba, json_rows, models, served_store

SCORE_PY = REPO / "templates" / "azureml" / "score.py"
AZML_PYTHON = REPO / ".venv-azml" / "bin" / "python"
# azmlinfsrv always binds 0.0.0.0; tests bind loopback only, so its entry point runs with the host set.
LAUNCH = ("import sys; import azureml_inference_server_http.amlserver as s; s.DEFAULT_HOST = '127.0.0.1'; "
          "sys.argv = ['azmlinfsrv', *sys.argv[1:]]; sys.exit(s.run())")


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    from churnkit.serve import export_model

    base = tmp_path_factory.mktemp("azml")
    _, loaded = served_store(base)
    export_model(loaded, base / "model-dir" / "churn" / "1")  # Azure ML mounts the registered folder below the dir
    return base, loaded


@pytest.fixture(scope="module")
def azml(exported):
    if not AZML_PYTHON.exists():
        pytest.fail(f"{AZML_PYTHON} is missing; run `make test-setup` (it builds the azureml-inference-server-http venv)")
    base, loaded = exported
    port = free_port()
    env = clean_env(AZUREML_MODEL_DIR=base / "model-dir", PYTHONPATH=REPO, HOME=base)
    server = Server([str(AZML_PYTHON), "-c", LAUNCH, "--entry_script", str(SCORE_PY), "--port", str(port)], env,
                    base / "azmlinfsrv.log", port=port, timeout=90)
    yield server, loaded
    server.close()


def test_azmlinfsrv_scores_with_the_churnkit_scorer(azml):
    server, loaded = azml
    raw = models().raw.iloc[:30]
    assert "Users's init has completed successfully" in server.output()
    resp = httpx.post(server.url + "/score", json={"data": json_rows(raw)}, timeout=30)
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["model"] == {"name": "churn", "version": "1"}
    got = [p["churn_probability"] for p in body["predictions"]]
    np.testing.assert_allclose(got, expected_proba(loaded.pipeline, loaded.schema, raw), rtol=0, atol=1e-6)
    assert resp.headers["x-model-version"] == "1" and float(resp.headers["x-model-latency-ms"]) > 0
    csv = httpx.post(server.url + "/score", content=raw.to_csv(index=False), headers={"content-type": "text/csv"})
    assert [p["churn_probability"] for p in csv.json()["predictions"]] == got


@pytest.mark.parametrize("body, content_type, status", [
    (json.dumps({"data": [{"tenure": "abc"}]}), "application/json", 422),
    ("{", "application/json", 400),
    ("tenure=1", "text/plain", 415),
])
def test_azmlinfsrv_bad_input_is_4xx_json(azml, body, content_type, status):
    server, _ = azml
    resp = httpx.post(server.url + "/score", content=body, headers={"content-type": content_type})
    assert resp.status_code == status
    assert set(resp.json()) == {"error", "details"} and "Traceback" not in resp.text


def _load_score_module():
    spec = importlib.util.spec_from_file_location("churnkit_azure_score", SCORE_PY)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_score_py_refuses_a_tampered_model_and_scores_plain_text_in_process(exported, monkeypatch, tmp_path):
    import shutil

    from churnkit.exceptions import IntegrityError

    base, _ = exported
    score = _load_score_module()
    monkeypatch.setenv("AZUREML_MODEL_DIR", str(base / "model-dir"))
    score.init()
    out = score.run(json.dumps({"data": json_rows(models().raw.iloc[:2])}))
    assert len(out["predictions"]) == 2 and out["model"]["version"] == "1"
    assert score.run('{"data": []}')["status"] == 422
    tampered = Path(shutil.copytree(base / "model-dir", tmp_path / "tampered"))
    with open(next(tampered.glob("**/model.skops")), "ab") as fh:
        fh.write(b"\0")
    monkeypatch.setenv("AZUREML_MODEL_DIR", str(tampered))
    with pytest.raises(IntegrityError, match="churnkit-model.json: .model.skops. was changed"):
        score.init()
