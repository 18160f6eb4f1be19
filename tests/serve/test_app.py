"""``churnkit serve`` as a real process on 127.0.0.1: every contract's routes and payloads, every bad
input, /metrics, data capture, Vertex's environment, a tampered artifact, and a fuzz pass."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from conftest import free_port
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from serve_support import CHURNKIT, REPO, Server, clean_env, expected_proba, json_rows, models, served_store

from churnkit.serve.contracts import DATA_KEYS

MAX_ROWS = 400
MAX_BODY = 300_000


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    base = tmp_path_factory.mktemp("serve")
    runs, loaded = served_store(base)
    capture = base / "capture"
    server = Server([CHURNKIT, "serve", "--model", "models:/churn@champion", "--runs-dir", str(runs), "--port", "0",
                     "--capture-dir", str(capture), "--max-rows", str(MAX_ROWS), "--max-body-bytes", str(MAX_BODY)],
                    clean_env(), base / "serve.log")
    client = httpx.Client(base_url=server.url, timeout=30.0)
    yield {"server": server, "client": client, "loaded": loaded, "runs": runs, "capture": capture, "base": base}
    client.close()
    server.close()


@pytest.fixture(scope="module")
def raw():
    return models().raw


def _probs(resp) -> list[float]:
    assert resp.status_code == 200, resp.text
    return [p["churn_probability"] for p in resp.json()["predictions"]]


def _post(client, path, body, content_type="application/json", **kw):
    data = body if isinstance(body, (bytes, str)) else json.dumps(body)
    return client.post(path, content=data, headers={"content-type": content_type, **kw.pop("headers", {})}, **kw)


# ---- contracts ---------------------------------------------------------------------------------------

def _model_seconds(metrics_text: str) -> float:
    from churnkit.serve.metrics import MODEL, parse_prometheus

    return sum(v for _, v in parse_prometheus(metrics_text)[MODEL + "_sum"])


def test_serve_line_and_sagemaker_routes(served, raw):
    c, loaded = served["client"], served["loaded"]
    assert re.search(r"^serving churn v1 on http://127\.0\.0\.1:\d+$", served["server"].output(), re.MULTILINE)
    assert c.get("/ping").status_code == 200
    resp = _post(c, "/invocations", {"instances": json_rows(raw.iloc[:5])})
    body = resp.json()
    assert body["model"] == {"name": "churn", "version": "1"}
    want = expected_proba(loaded.pipeline, loaded.schema, raw.iloc[:5])
    np.testing.assert_allclose(_probs(resp), want, rtol=0, atol=1e-6)
    assert [p["churn"] for p in body["predictions"]] == [bool(p >= loaded.threshold) for p in _probs(resp)]
    before = _model_seconds(c.get("/metrics").text)
    again = _post(c, "/invocations", {"instances": json_rows(raw.iloc[:5])})
    spent = _model_seconds(c.get("/metrics").text) - before  # the same time, counted by /metrics
    assert float(again.headers["x-model-latency-ms"]) == pytest.approx(1000 * spent, abs=0.0011)
    assert resp.headers["x-model-version"] == "1"
    assert resp.headers["content-type"] == "application/json"


def test_azure_routes(served, raw):
    c = served["client"]
    assert c.get("/").status_code == 200
    a = _probs(_post(c, "/score", {"data": json_rows(raw.iloc[:3])}))
    b = _probs(_post(c, "/invocations", {"instances": json_rows(raw.iloc[:3])}))
    assert a == b


def test_version_and_health(served):
    c, loaded = served["client"], served["loaded"]
    v = c.get("/version").json()
    assert v["name"] == "churn" and v["version"] == "1" and v["sha256"] == loaded.sha256
    assert v["uri"] == "models:/churn@champion" and v["threshold"] == loaded.threshold and v["churnkit"]
    assert v["engine"] == "numpy-logreg"
    h = c.get("/health").json()
    assert h["status"] == "ok" and h["version"] == "1"


def _bodies(raw, names):
    recs = json_rows(raw)
    cols = list(raw.columns)
    lists = [[r[c] for c in cols] for r in recs]
    positional = [[r[c] for c in names] for r in recs]
    js = "application/json"
    return {
        "instances objects": (js, {"instances": recs}),
        "instances lists + columns": (js, {"columns": cols, "instances": lists}),
        "instances lists, model order": (js, {"instances": positional}),
        "dataframe_split": (js, {"dataframe_split": {"columns": cols, "data": lists, "index": list(range(len(lists)))}}),
        "dataframe_records": (js, {"dataframe_records": recs}),
        "inputs objects": (js, {"inputs": recs}),
        "inputs columnar": (js, {"inputs": {c: [r[c] for r in recs] for c in cols}}),
        "azure data objects": (js, {"data": recs}),
        "azure data split": (js, {"data": {"columns": cols, "data": lists}}),
        "bare list": (js, recs),
        "vertex parameters ignored": (js, {"instances": recs, "parameters": {"x": 1}}),
        "csv with header": ("text/csv", raw.to_csv(index=False)),
        "csv without header": ("text/csv; charset=utf-8", raw[names].to_csv(index=False, header=False)),
        "curl -d (form content type)": ("application/x-www-form-urlencoded", {"instances": recs}),
    }


def test_every_payload_format_gives_identical_probabilities(served, raw):
    c, loaded = served["client"], served["loaded"]
    sample = raw.iloc[:40]
    want = expected_proba(loaded.pipeline, loaded.schema, sample)
    assert sample["total_charges"].str.strip().eq("").any()  # blanks: null in a nullable column
    assert (sample["payment_method"] == "Digital wallet").any()  # a category training never saw
    results = {name: _probs(_post(c, "/invocations", body, ctype)) for name, (ctype, body) in _bodies(sample, loaded.schema.names).items()}
    first = results["instances objects"]
    np.testing.assert_allclose(first, want, rtol=0, atol=1e-6)
    for name, got in results.items():
        assert got == first, name


def test_batch_up_to_the_row_limit(served, raw):
    import pandas as pd

    rows = json_rows(pd.concat([raw, raw], ignore_index=True).iloc[:MAX_ROWS])
    resp = _post(served["client"], "/invocations", {"instances": rows})
    assert len(_probs(resp)) == MAX_ROWS


# ---- bad input -------------------------------------------------------------------------------------

def _row(raw, **change):
    row = json_rows(raw.iloc[[2]])[0]
    row.update(change)
    return row


def _case_bodies(raw):
    r = _row(raw)
    no_tenure = {k: v for k, v in r.items() if k != "tenure"}
    big = json.dumps({"instances": [r] * 2000})
    return {
        "missing column": ({"instances": [no_tenure]}, "application/json", 422, "column 'tenure': missing"),
        "unknown column": ({"instances": [r | {"shoe_size": 42}]}, "application/json", 422, "unknown column 'shoe_size'"),
        "wrong type": ({"instances": [r | {"tenure": "abc"}]}, "application/json", 422, "expected a number, got 'abc'"),
        "null where training had none": ({"instances": [r | {"contract": None}]}, "application/json", 422,
                                         "column 'contract': null is not accepted"),
        "empty instances": ({"instances": []}, "application/json", 422, "no rows"),
        "too many rows": ({"instances": [r] * (MAX_ROWS + 1)}, "application/json", 413, "max_rows"),
        "body too large": (big, "application/json", 413, "max_body_bytes"),
        "wrong content type": ("tenure=1", "text/plain", 415, "unsupported content type"),
        "malformed JSON": ('{"instances": [', "application/json", 400, "malformed JSON"),
        "malformed CSV": (b'gender,tenure\n"Male,1\n', "text/csv", 400, "malformed CSV"),
        "unknown payload key": ({"rows": [r]}, "application/json", 400, "unknown key(s) ['rows']"),
    }


@pytest.mark.parametrize("case", ["missing column", "unknown column", "wrong type", "null where training had none",
                                  "empty instances", "too many rows", "body too large", "wrong content type",
                                  "malformed JSON", "malformed CSV", "unknown payload key"])
def test_bad_input_gets_4xx_json_naming_the_problem(served, raw, case):
    body, ctype, status, detail = _case_bodies(raw)[case]
    resp = _post(served["client"], "/invocations", body, ctype)
    assert resp.status_code == status, resp.text
    out = resp.json()
    assert set(out) == {"error", "details"} and out["error"]
    assert any(detail in d for d in out["details"]), out
    assert "Traceback" not in resp.text and resp.headers["x-model-version"] == "1"


def test_accepted_oddities(served, raw):
    c = served["client"]
    base = _probs(_post(c, "/invocations", {"instances": [_row(raw, total_charges="1234.5", monthly_charges=70.0)]}))
    text = _probs(_post(c, "/invocations", {"instances": [_row(raw, total_charges=" 1234.5 ", monthly_charges="70")]}))
    assert text == base  # numeric text reads like the number
    assert len(_probs(_post(c, "/invocations", {"instances": [_row(raw, total_charges=None)]}))) == 1  # nullable
    assert len(_probs(_post(c, "/invocations", {"instances": [_row(raw, contract="Three year")]}))) == 1  # unseen


def test_wrong_method_and_unknown_route_are_json(served):
    c = served["client"]
    resp = c.get("/invocations")
    assert resp.status_code == 405 and resp.json()["error"]
    resp = c.post("/predictions", content=b"{}")
    assert resp.status_code == 404 and "/invocations" in resp.json()["details"]


def test_internal_error_is_a_generic_500_and_logged(served, caplog):
    import asyncio

    from churnkit.serve.app import create_app

    app = create_app(served["loaded"])
    scorer = app.state.service.scorer

    def broken(batch):
        raise RuntimeError("secret internals")

    scorer.predict_batch = broken
    async def call():
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://app") as client:
            return await client.post("/invocations", json={"instances": [_row(models().raw)]})

    resp = asyncio.run(call())
    assert resp.status_code == 500
    assert resp.json() == {"error": "internal error while scoring; the server log has the details", "details": []}
    assert "secret" not in resp.text
    assert any("secret internals" in r.getMessage() or (r.exc_info and "secret internals" in str(r.exc_info[1]))
               for r in caplog.records)


# ---- metrics and capture ------------------------------------------------------------------------------

def _metric(text: str, metric: str, **labels) -> float:
    want = ",".join(f'{k}="{v}"' for k, v in labels.items())
    pattern = rf"^{re.escape(metric)}{re.escape('{' + want + '}') if labels else ''} (\S+)$"
    m = re.search(pattern, text, re.MULTILINE)
    return float(m.group(1)) if m else 0.0


def test_metrics_count_requests_rows_and_latency(served, raw):
    c = served["client"]
    before = c.get("/metrics").text
    _post(c, "/invocations", {"instances": json_rows(raw.iloc[:7])})
    _post(c, "/score", {"data": json_rows(raw.iloc[:2])})
    _post(c, "/invocations", {"instances": [_row(raw, tenure="abc")]})
    _post(c, "/invocations", "x", "text/plain")
    _post(c, "/invocations", "{", "application/json")
    resp = c.get("/metrics")
    after = resp.text
    assert resp.headers["content-type"].startswith("text/plain; version=0.0.4")

    def delta(metric, **labels):
        return _metric(after, metric, **labels) - _metric(before, metric, **labels)

    assert delta("churnkit_requests_total", route="/invocations", status="200") == 1
    assert delta("churnkit_requests_total", route="/score", status="200") == 1
    for status in ("422", "415", "400"):
        assert delta("churnkit_requests_total", route="/invocations", status=status) == 1
    assert delta("churnkit_prediction_rows_total") == 9
    assert delta("churnkit_model_latency_seconds_count") == 2
    assert delta("churnkit_overhead_latency_seconds_count") == 2
    assert delta("churnkit_churn_probability_count") == 9
    assert delta("churnkit_churn_probability_bucket", le="+Inf") == 9
    assert _metric(after, "churnkit_churn_probability_bucket", le="1.0") == _metric(after, "churnkit_churn_probability_count")
    assert _metric(after, "churnkit_model_info", name="churn", version="1", sha256=served["loaded"].sha256) == 1
    assert 0 < _metric(after, "churnkit_start_time_seconds") <= time.time()


def test_capture_writes_each_request_and_reader_returns_rows(served, raw):
    from churnkit.serve.capture import capture_files, read_capture

    sample = raw.iloc[100:103].assign(customer_id=["cap-a", "cap-b", "cap-c"])
    resp = _post(served["client"], "/invocations", {"instances": json_rows(sample)}, headers={"x-request-id": "cap-check-1"})
    served_probs = _probs(resp)
    assert resp.headers["x-request-id"] == "cap-check-1"
    deadline = time.monotonic() + 10
    line = None
    while line is None and time.monotonic() < deadline:
        for f in capture_files(served["capture"]):
            for text in f.read_text().splitlines():
                if '"cap-check-1"' in text:
                    line = json.loads(text)
        time.sleep(0.2)
    assert line is not None, "capture line not written within 10 s"
    # named per host, process and writer: two replicas rotating in the same second never share a name
    assert re.fullmatch(r"capture-\d{8}T\d{6}Z-.+-\d+-[0-9a-f]+-\d{4}\.jsonl", capture_files(served["capture"])[0].name)
    assert line["model_name"] == "churn" and line["model_version"] == "1" and line["predictions"] == served_probs
    assert line["inputs"] == json_rows(sample) and line["time"].startswith(time.strftime("%Y-", time.gmtime()))
    frame = read_capture(served["capture"])
    mine = frame[frame["customer_id"].isin(sample["customer_id"])]
    assert mine["churn_probability"].tolist() == served_probs
    assert {"churn_probability", "model_version", "time", *served["loaded"].schema.names} <= set(frame.columns)
    assert str(frame["time"].dtype).startswith("datetime64")


def test_capture_rotates_and_skips_a_torn_last_line(tmp_path):
    from churnkit.serve.capture import CaptureWriter, capture_files, read_capture

    w = CaptureWriter(tmp_path, max_bytes=300, flush_seconds=0.05)
    w.start()
    for i in range(6):
        w.write({"time": "2026-01-01T00:00:00+00:00", "request_id": str(i), "model_name": "churn", "model_version": "2",
                 "inputs": [{"tenure": i, "contract": "One year"}], "predictions": [i / 10]})
    w.close()
    files = capture_files(tmp_path)
    assert len(files) >= 2 and w.written == 6
    with open(files[-1], "ab") as fh:
        fh.write(b'{"time": "2026-01-01T00:0')
    frame = read_capture(tmp_path)
    assert frame["tenure"].tolist() == list(range(6)) and frame["churn_probability"].tolist() == [i / 10 for i in range(6)]
    assert set(frame["model_version"]) == {"2"}


# ---- fuzz ------------------------------------------------------------------------------------------

_scalars = st.one_of(st.none(), st.booleans(), st.integers(min_value=-(2**70), max_value=2**70),
                     st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=8))
_json = st.recursive(_scalars, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
                     max_leaves=10)


def _fuzz_bodies():
    names = models().schema.names
    row = st.fixed_dictionaries({n: _scalars for n in names}, optional={"customer_id": _scalars, "extra": _json})
    rows = st.lists(st.one_of(row, _json), max_size=4)
    return st.one_of(
        st.builds(lambda r: {"instances": r}, rows),
        st.builds(lambda r: {"dataframe_records": r}, rows),
        st.builds(lambda d, cols: {"dataframe_split": {"columns": cols, "data": d}},
                  st.lists(st.lists(_scalars, max_size=14), max_size=3), st.lists(st.sampled_from([*names, "x"]), max_size=14)),
        st.dictionaries(st.sampled_from([*DATA_KEYS, "columns", "parameters", "other"]), _json, max_size=3),
        _json,
    )


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(body=_fuzz_bodies(), as_csv=st.booleans())
def test_fuzz_never_5xx(served, body, as_csv):
    c = served["client"]
    if as_csv:
        resp = _post(c, "/invocations", json.dumps(body).replace("{", "\n").encode(), "text/csv")
    else:
        resp = _post(c, "/invocations", body)
    assert resp.status_code in (200, 400, 413, 415, 422), resp.text
    out = resp.json()
    assert ("predictions" in out) if resp.status_code == 200 else (set(out) == {"error", "details"})


# ---- Vertex, the container defaults, integrity ------------------------------------------------------

def test_vertex_environment_is_honoured(served, raw, tmp_path):
    from churnkit.serve import export_model

    folder = export_model(served["loaded"], tmp_path / "gcs" / "model")
    port = free_port()
    predict, health = "/v1/endpoints/123/deployedModels/456:predict", "/v1/endpoints/123/deployedModels/456"
    env = clean_env(AIP_HTTP_PORT=port, AIP_HEALTH_ROUTE=health, AIP_PREDICT_ROUTE=predict, AIP_STORAGE_URI=folder)
    server = Server([CHURNKIT, "serve", "--runs-dir", str(tmp_path / "runs")], env, tmp_path / "vertex.log", port=port)
    try:
        assert f"serving churn v1 on http://127.0.0.1:{port}" in server.output()
        assert httpx.get(server.url + health).status_code == 200
        resp = httpx.post(server.url + predict, json={"instances": json_rows(raw.iloc[:4]), "parameters": {}})
        assert resp.status_code == 200 and list(resp.json()) == ["predictions"]
        want = _probs(_post(served["client"], "/invocations", {"instances": json_rows(raw.iloc[:4])}))
        assert [p["churn_probability"] for p in resp.json()["predictions"]] == want
        assert resp.headers["x-model-version"] == "1"
        assert httpx.post(server.url + "/invocations", json={"instances": json_rows(raw.iloc[:1])}).status_code == 200
        bad = httpx.post(server.url + predict, json={"instances": [{"tenure": "abc"}]})
        assert bad.status_code == 422 and set(bad.json()) == {"error", "details"}
    finally:
        server.close()


def test_environment_defaults_chain():
    from churnkit.exceptions import ConfigError
    from churnkit.serve.app import environment_settings

    assert environment_settings({}) == {"model": "/opt/ml/model", "host": "127.0.0.1", "port": 8080,
                                        "vertex_health_route": None, "vertex_predict_route": None, "capture": None}
    assert environment_settings({"CHURNKIT_CAPTURE_URI": "gs://b/cap/"})["capture"] == "gs://b/cap/"
    env = {"AZUREML_MODEL_DIR": "/az", "AIP_STORAGE_URI": "gs://b/m", "AIP_HTTP_PORT": "7080"}
    assert environment_settings(env)["model"] == "gs://b/m" and environment_settings(env)["port"] == 7080
    assert environment_settings({"AZUREML_MODEL_DIR": "/az"})["model"] == "/az"
    assert environment_settings(env | {"CHURNKIT_MODEL_URI": "models:/churn@champion"})["model"] == "models:/churn@champion"
    with pytest.raises(ConfigError, match="AIP_HTTP_PORT 'http'"):
        environment_settings({"AIP_HTTP_PORT": "http"})


def test_dockerfile_runs_churnkit_serve_on_8080_for_every_cloud():
    text = (REPO / "templates" / "serving" / "Dockerfile").read_text()
    assert 'ENTRYPOINT ["churnkit"]' in text and 'CMD ["serve"]' in text and "EXPOSE 8080" in text
    assert "CHURNKIT_HOST=0.0.0.0" in text
    assert "tools/requirements.py --only serve" in text  # the serve extra's pins (tests/test_image.py checks them)


def test_tampered_registry_artifact_refuses_to_start(tmp_path, monkeypatch):
    from click.testing import CliRunner
    from deploy_support import registry_store

    import churnkit.serve.app
    from churnkit import registry
    from churnkit.cli import main
    from churnkit.config import load_config

    runs = registry_store(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)  # mlflow exports the last store it was pointed at
    monkeypatch.setenv("CHURNKIT_RUNS_DIR", str(runs))  # registry calls without a config resolve to this copy
    registry.setup_tracking(load_config(runs))
    registry.set_version_tag("1", "artifact_sha256", "0" * 64)
    assert registry.client().get_model_version("churn", "1").tags["churnkit.artifact_sha256"] == "0" * 64

    def must_not_start(*args, **kwargs):
        raise AssertionError("the server started with a tampered artifact")

    monkeypatch.setattr(churnkit.serve.app, "run_server", must_not_start)
    res = CliRunner().invoke(main, ["serve", "--model", "models:/churn/1", "--runs-dir", str(runs), "--port", "0"])
    assert res.exit_code == 1, res.output
    assert "error: IntegrityError: model 'models:/churn/1': artifact sha256" in res.output
    assert "does not match 0000000000000000" in res.output and "Traceback" not in res.output


def test_tampered_exported_folder_is_refused_before_loading(served, tmp_path):
    from churnkit.config import load_config
    from churnkit.exceptions import IntegrityError
    from churnkit.serve import export_model, load_serving_model

    folder = export_model(served["loaded"], tmp_path / "model")
    assert load_serving_model(str(folder), environ={}).version == "1"  # the manifest names the version
    with pytest.raises(IntegrityError, match="CHURNKIT_MODEL_SHA256"):
        load_serving_model(str(folder), environ={"CHURNKIT_MODEL_SHA256": "f" * 64})
    with pytest.raises(IntegrityError, match="does not match ffffffffffffffff... from CHURNKIT_MODEL_SHA256"):
        load_serving_model("models:/churn@champion", load_config(served["runs"]), environ={"CHURNKIT_MODEL_SHA256": "f" * 64})
    with open(Path(folder) / "model.skops", "ab") as fh:
        fh.write(b"\0")
    with pytest.raises(IntegrityError, match="does not match its churnkit-model.json: .model.skops. was changed"):
        load_serving_model(str(folder), environ={})
