"""Credentials never reach an output notebook, its MLflow artifact, or a parameter."""

from __future__ import annotations

import base64
import json
from collections import Counter
from pathlib import Path

import pytest

from churnkit.runner import secrets
from churnkit.exceptions import NotebookExecutionError, ParameterError
from churnkit.runner import check_parameters, notebook_parameters, run_notebook

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "secrets.ipynb"

# Each value as tests/fixtures/secrets.ipynb assembles it at run time (the file itself holds none).
PLANTED = {
    "aws-access-key": ["AKIAZ7EXAMPLEQ4KEYID", "ASIAQ3EXAMPLESESSION"],
    "aws-secret-key": ["wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"],
    "azure-storage-key": ["Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="],
    "azure-sas": ["k2Z9xq0Jt3yWZpXEXAMPLEsig%2Bv0%3D"],
    "private-key": ["MIIEvQIBADANBgkqhkiG9w0BAQEFAASCBKcwggSjAgEAAoIBAQC7EXAMPLE"],
    "bearer-token": ["ya29.a0AfB_byEXAMPLEbearerTOKEN0123456789"],
    "password": ["hunter2-EXAMPLE"],
}
ALL_PLANTED = [v for values in PLANTED.values() for v in values]


@pytest.mark.parametrize(
    "text, kind, kept",
    [
        ("export AWS_ACCESS_KEY_ID=AKIAIOSFODNN7EXAMPLE", "aws-access-key", "export AWS_ACCESS_KEY_ID="),
        ("aws_secret_access_key = wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY", "aws-secret-key", "aws_secret_access_key = "),
        ('{"AWS_SECRET_ACCESS_KEY": "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"}', "aws-secret-key", '{"AWS_SECRET_ACCESS_KEY": "'),
        ("AccountName=a;AccountKey=Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IF==;EndpointSuffix=core.windows.net",
         "azure-storage-key", "AccountName=a;AccountKey="),
        ("https://a.blob.core.windows.net/c/x.csv?sv=2024-05-04&sp=r&sig=abcdEFGH1234%2Bxyz%3D", "azure-sas", "&sp=r&sig="),
        ("-----BEGIN RSA PRIVATE KEY-----\nMIIEowIBAAKCAQEA\nxyz\n-----END RSA PRIVATE KEY-----", "private-key", ""),
        ('"private_key": "-----BEGIN PRIVATE KEY-----\\nMIIEvQIBADAN\\n-----END PRIVATE KEY-----\\n"', "private-key",
         '"private_key": "'),
        ("Authorization: Bearer abcdef0123456789abcdef", "bearer-token", "Authorization: Bearer "),
        ("Authorization: Basic dXNlcjpzM2NyM3RwYXNz", "basic-auth", "Authorization: Basic "),
        ("token eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.c2lnbmF0dXJlX3BhcnQ", "jwt", "token "),
        ("key=AIzaSyA1234567890abcdefghijklmnopqrstuv", "gcp-api-key", "key="),
        ("ghp_0123456789abcdefghijklmnopqrstuvwxyz", "github-token", ""),
        ("postgresql://churn:s3cr3tpw@db.example.com:5432/mlflow", "url-password", "postgresql://churn:"),
        ("DB_PASSWORD=hunter2", "password", "DB_PASSWORD="),
        ("password: 'correct horse'", "password", "password: '"),
        ('client_secret = "0123456789abcdef"', "secret-assignment", 'client_secret = "'),
    ],
)
def test_each_credential_shape_is_redacted_with_a_visible_marker(text, kind, kept):
    counts = Counter()
    out = secrets.redact_text(text, counts)
    assert f"[REDACTED:{kind}]" in out
    assert kept in out  # the setting's name stays readable
    assert counts[kind] == 1
    assert [f.kind for f in secrets.find_secrets(text)][:1] == [kind]
    assert secrets.redact_text(out) == out  # idempotent: papermill rewrites the file after every cell


@pytest.mark.parametrize(
    "text",
    [
        "holdout roc_auc 0.9326 > 0.85; model = logreg; seed = 0",
        'x = os.environ["DB_PASSWORD"]',
        "token counts: 12 tokens, password field left empty",
        "s3://bucket/churn/2024-05.parquet",
        "customerID 7590-VHVEG MonthlyCharges 29.85",
        "https://example.com/path?sig=short",
    ],
)
def test_ordinary_notebook_text_is_left_alone(text):
    assert secrets.redact_text(text) == text
    assert secrets.find_secrets(text) == []


def test_notebook_redaction_joins_split_lines_and_skips_images():
    pem = "-----BEGIN PRIVATE KEY-----\nMIIEvQIBADANBgkqhkiG9w0BAQEFAASC\n-----END PRIVATE KEY-----\n"
    png = base64.b64encode(b"AKIAIOSFODNN7EXAMPLE" + bytes(range(64))).decode()
    nb = {"cells": [{"cell_type": "code", "source": ["print(key)\n"], "metadata": {}, "outputs": [
        {"output_type": "stream", "name": "stdout", "text": pem.splitlines(keepends=True)},
        {"output_type": "display_data", "data": {"image/png": png, "text/plain": ["AKIAIOSFODNN7EXAMPLE"]}},
    ]}], "metadata": {}}
    buf = json.dumps(nb)
    out, counts = secrets.redact_notebook_json(buf)
    cell = json.loads(out)["cells"][0]
    assert "".join(cell["outputs"][0]["text"]) == "[REDACTED:private-key]\n"
    assert cell["outputs"][1]["data"]["image/png"] == png  # base64 bytes are not text: never rewritten
    assert cell["outputs"][1]["data"]["text/plain"] == ["[REDACTED:aws-access-key]"]
    assert counts == Counter({"private-key": 1, "aws-access-key": 1})
    clean = json.dumps({"cells": [], "metadata": {"x": "nothing secret"}})
    assert secrets.redact_notebook_json(clean) == (clean, Counter())  # unchanged byte for byte


@pytest.mark.parametrize(
    "name, value",
    [
        ("data_path", "postgresql://churn:s3cr3tpw@db.example.com/churn"),
        ("data_path", "https://a.blob.core.windows.net/c/m.parquet?sv=2024-05-04&sig=abcdEFGH1234%2Bxyz"),
        ("label_column", "AKIAIOSFODNN7EXAMPLE"),
        ("id_columns", '["customerID", "AKIAIOSFODNN7EXAMPLE"]'),
    ],
)
def test_parameter_values_that_look_like_credentials_are_refused(name, value):
    with pytest.raises(ParameterError, match=rf"parameter '{name}' has a value that looks like a credential") as err:
        check_parameters({name: value}, notebook_parameters("01-train"), "01-train")
    assert err.value.exit_code == 2
    assert "s3cr3tpw" not in str(err.value) and "AKIAIOSFODNN7EXAMPLE" not in str(err.value)
    assert "REDACTED" in str(err.value)


def test_planted_credentials_never_reach_the_notebook_file_or_mlflow(runs_config, monkeypatch):
    from papermill.iorw import papermill_io

    from churnkit import registry

    writes: list[str] = []
    local = papermill_io.get_handler("local")
    real_write = local.write

    def recording_write(buf, path):  # every version of the file papermill writes, mid-run included
        writes.append(buf)
        return real_write(buf, path)

    monkeypatch.setattr(local, "write", recording_write)
    with pytest.raises(NotebookExecutionError) as err:
        run_notebook(FIXTURE, config=runs_config, progress=False)
    exc = err.value
    assert exc.ename == "PermissionError" and exc.cell_index == 6
    assert "[REDACTED:azure-storage-key]" in str(exc) and PLANTED["azure-storage-key"][0] not in str(exc)

    on_disk = Path(exc.output_path).read_text()
    artifact = Path(registry.client().download_artifacts(exc.run_id, "notebook/secrets.ipynb")).read_text()
    assert len(writes) >= 5  # papermill saved the notebook during execution, not only at the end
    for text in [on_disk, artifact, *writes]:
        leaked = [v for v in ALL_PLANTED if v in text]
        assert leaked == []
    for kind in PLANTED:
        assert f"[REDACTED:{kind}]" in on_disk, kind
    assert artifact == on_disk
    nb = json.loads(on_disk)
    printed = "".join(t for c in nb["cells"] for o in c.get("outputs", []) for t in o.get("text", []))
    assert "aws_secret_access_key = [REDACTED:aws-secret-key]" in printed  # readable around the marker
    tags = registry.client().get_run(exc.run_id).data.tags
    counts = json.loads(tags["churnkit.redactions"])
    assert counts["aws-access-key"] == 2 and counts["azure-storage-key"] >= 2
    assert set(PLANTED) <= set(counts)


def test_counts_are_kept_when_a_string_is_seen_again():
    """Every save of a notebook redacts the same strings again; the remembered result still counts them."""
    from collections import Counter

    text = "key AKIAABCDEFGHIJKLMNOP in a cell"
    first, second = Counter(), Counter()
    assert secrets.redact_text(text, first) == secrets.redact_text(text, second)
    assert first == second and sum(first.values()) == 1
    assert "AKIA" not in secrets.redact_text(text)
