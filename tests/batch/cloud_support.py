"""Round trips for the cloud batch services: the same input scored by the local engine and, from a service's raw
output files, written through the same output writer; the two outputs must hold the same rows and ranks."""

from __future__ import annotations

from pathlib import Path

MONTH = "2026-11"
REASONS = 2


def prepared(loaded):
    """The compiled scorer, its explainer and the local engine's kernel spec (as ``churnkit score`` builds them)."""
    from churnkit.batch.engine import KernelSpec
    from churnkit.batch.reasons import build_explainer
    from churnkit.serve.compiled import to_bytes
    from churnkit.serve.scorer import Scorer

    scorer = Scorer(loaded.pipeline, loaded.schema, loaded.threshold)
    explainer = build_explainer(scorer.model, loaded.schema, pipeline=loaded.pipeline)
    spec = KernelSpec(schema=loaded.schema.to_dict(), id_column="customer_id", compiled=to_bytes(scorer.model),
                      reasons=REASONS, explainer=explainer.to_bytes(), sample_rows=0)
    return explainer, spec


def meta(loaded):
    from churnkit.batch.output import ScoreMeta

    return ScoreMeta(model_name=loaded.name, model_version=str(loaded.version), threshold=loaded.threshold, run_id="",
                     id_column="customer_id", score_month=MONTH, reasons=REASONS)


def local_output(loaded, input_csv: Path, out: Path):
    """The local engine's output of ``input_csv``."""
    from churnkit.batch.engine import run_local
    from churnkit.batch.output import ScoreWriter
    from churnkit.batch.source import open_source

    _, spec = prepared(loaded)
    with ScoreWriter(out, meta(loaded)) as writer:
        run = run_local(open_source(str(input_csv)), spec, writer, workers=1, progress=False)
        return writer.commit(run.rows_in)


def cloud_output(loaded, input_csv: Path, raw, out: Path, service: str):
    """A service's raw score frame written through the output writer, joined to ``input_csv`` by id."""
    from churnkit.batch.cloud import write_raw_scores
    from churnkit.batch.output import ScoreWriter
    from churnkit.batch.source import open_source

    explainer, _ = prepared(loaded)
    table = open_source(str(input_csv)).dataset.to_table()
    with ScoreWriter(out, meta(loaded)) as writer:
        counts = write_raw_scores(raw, table, loaded.schema, "customer_id", writer, explainer=explainer,
                                  reasons=REASONS, service=service)
        return writer.commit(counts["rows_in"], extra={"engine": service, **counts})


def assert_same_output(local: Path, cloud: Path) -> None:
    """Same scored rows (ids, probabilities to 1e-9, ranks, deciles, reasons) and the same refused ids."""
    import numpy as np

    from churnkit.batch.output import read_scores

    a = read_scores(local).to_pandas().sort_values("rank").reset_index(drop=True)
    b = read_scores(cloud).to_pandas().sort_values("rank").reset_index(drop=True)
    assert len(a) == len(b) > 0
    assert a["customer_id"].tolist() == b["customer_id"].tolist()
    np.testing.assert_allclose(a["churn_probability"], b["churn_probability"], rtol=0, atol=1e-9)
    for col in ("rank", "decile", "churn", "reason_1", "reason_2"):
        assert a[col].tolist() == b[col].tolist(), col
    refused = []
    for out in (local, cloud):
        errors = read_scores(out, errors=True).to_pandas() if (out / "errors").is_dir() else None
        refused.append(sorted(errors["customer_id"]) if errors is not None and len(errors) else [])
    assert refused[0] == refused[1]
