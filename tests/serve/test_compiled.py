"""The compiled scorer stored at export: same probabilities as sklearn, no sklearn at serving start."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from serve_support import REPO, clean_env, expected_proba, models, served_store

from churnkit.exceptions import IntegrityError


@pytest.mark.parametrize("kind", ["logreg", "hgb"])
def test_round_trip_scores_like_sklearn_small_and_large_batches(kind):
    from churnkit.serve.compiled import from_bytes, to_bytes
    from churnkit.serve.scorer import Scorer

    m = models()
    built = Scorer(m.pipelines[kind], m.schema)
    assert built.fallback_reason == ""
    restored = Scorer.from_compiled(from_bytes(to_bytes(built.model)), m.schema)
    assert restored.engine == built.engine and restored.pipeline is None
    rows = m.raw.drop(columns=["customer_id", "churn"], errors="ignore")
    for frame in (rows.head(3), rows):  # 300 rows: above the tree walk's sklearn hand-over, walked here
        got = restored.predict_frame(frame)
        assert np.allclose(got, expected_proba(m.pipelines[kind], m.schema, frame), rtol=0, atol=1e-9)


def test_export_records_the_scorer_and_serving_loads_it_without_sklearn(tmp_path):
    from churnkit.serve.loading import MANIFEST, export_model, load_model_folder

    _, loaded = served_store(tmp_path)
    folder = export_model(loaded, tmp_path / "model")
    entry = json.loads((folder / MANIFEST).read_text())["scorer"]
    assert entry["engine"] == "numpy-logreg" and (folder / entry["file"]).exists()

    code = ("import sys, json; from churnkit.serve.loading import load_model_folder; from churnkit.serve.app import create_app;"
            f"m = load_model_folder({str(folder)!r}, compiled=True); app = create_app(m);"
            "print(json.dumps({'engine': app.state.service.scorer.engine, 'pipeline': m.pipeline is None,"
            "'loaded': sorted(k for k in ('sklearn', 'scipy', 'pandas', 'skops', 'mlflow', 'matplotlib') if k in sys.modules)}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=str(REPO), env=clean_env(),
                         timeout=120)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout.strip().splitlines()[-1]) == {"engine": "numpy-logreg", "pipeline": True, "loaded": []}

    plain = load_model_folder(folder)  # the default still loads the pipeline (monitoring, Azure's score.py)
    assert plain.pipeline is not None and plain.compiled is None
    (folder / entry["file"]).write_bytes((folder / entry["file"]).read_bytes() + b"\0")
    with pytest.raises(IntegrityError, match="compiled scorer .* does not match"):
        load_model_folder(folder, compiled=True)


@pytest.mark.parametrize("damage, reason", [
    (lambda a: a["child"].__setitem__(0, 10**6), "outside the"),  # a child beyond the nodes
    (lambda a: a["child"].__setitem__(0, 0), "points to itself on one side only"),
    (lambda a: a["child"].__setitem__(slice(2, 4), [0, 0]), "reached twice"),  # node 1 loops back to its root
    (lambda a: a["value"].__setitem__(-1, np.nan), "not finite"),
    (lambda a: a["active"].__setitem__(0, 0), "does not match"),
])
def test_malformed_trees_are_refused_at_load_not_looped_or_misrouted(damage, reason):
    """A compiled file whose sha256 was recomputed after editing it (a manifest rewritten too) still fails
    to load with a clear error; nothing hangs in a cycle or scores with a wrong tree."""
    import io

    from churnkit.serve.compiled import from_bytes, to_bytes
    from churnkit.serve.scorer import Scorer

    m = models()
    data = to_bytes(Scorer(m.pipelines["hgb"], m.schema).model)
    arrays = dict(np.load(io.BytesIO(data), allow_pickle=False))
    arrays = {k: v.copy() for k, v in arrays.items()}
    assert arrays["child"][0] == 1 and arrays["child"][1] != 1  # the first root splits: node 1 is its left child
    damage(arrays)
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    with pytest.raises(IntegrityError, match=f"compiled scorer trees are malformed .*{reason}"):
        from_bytes(buf.getvalue())
