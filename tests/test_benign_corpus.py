"""No false refusals: what churn teams really save imports without --trust and scores as the original.

The corpus (tools/trusted_types.py ``benign_corpus``) is fitted once on a synthetic month. Every model
goes through the exact allow-list as a joblib file; one goes through every pickle protocol, joblib
compression and skops. The conversion runs in this process here (the child's isolation has its own
tests in test_model_trust.py); one model is imported end to end through the real child and served.
"""

from __future__ import annotations

import pickle

import joblib
import numpy as np
import pytest

from churnkit.exceptions import UnsafeModelError
from churnkit.importer import load_foreign_model, sample_from_frame
from model_trust_support import convert_in_process, tools_module  # noqa: F401 - fixture
from test_importer import store  # noqa: F401 - fixture

_CORPUS: dict = {}


def corpus() -> dict:
    if not _CORPUS:
        from churnkit.data import synth_month

        _CORPUS.update(tools_module().benign_corpus(rows=300))
        _CORPUS["__sample__"] = synth_month(rows=120, month=2, seed=3)  # unseen categories, blanks, IDs
    return _CORPUS


MODELS = ["logreg", "hgb", "random_forest", "gradient_boosting", "extra_trees", "svc", "calibrated_linear_svc",
          "voting", "stacking"]
FORMATS = [("pickle", p) for p in (2, 3, 4, 5)] + [("joblib", c) for c in (0, "zlib", "gzip", "bz2", "lzma", "xz")] \
    + [("skops", None)]


def _save(model, kind, how, tmp_path):
    if kind == "pickle":
        path = tmp_path / f"model-p{how}.pkl"
        path.write_bytes(pickle.dumps(model, protocol=how))
    elif kind == "joblib":
        path = tmp_path / f"model-{how}.joblib"
        joblib.dump(model, path, compress=(how, 3) if how else 0)
    else:
        import skops.io

        path = tmp_path / "model.skops"
        skops.io.dump(model, path)
    return path


def _same_probabilities(foreign, model, sample) -> None:
    X = sample_from_frame(sample, foreign.columns).X
    want = model.predict_proba(X)[:, 1]
    assert np.array_equal(foreign.pipeline.predict_proba(X)[:, 1], want)
    assert np.array_equal(foreign.proba, want)


@pytest.mark.usefixtures("convert_in_process")
@pytest.mark.parametrize("name", MODELS)
def test_every_corpus_model_imports_without_trust(name, tmp_path):
    c = corpus()
    path = _save(c[name], "joblib", "zlib" if name == "random_forest" else 0, tmp_path)
    foreign = load_foreign_model(path, sample=c["__sample__"])
    assert foreign.scan.safe and not foreign.trusted, foreign.scan.refused
    _same_probabilities(foreign, c[name], c["__sample__"])


@pytest.mark.usefixtures("convert_in_process")
@pytest.mark.parametrize("kind, how", FORMATS, ids=[f"{k}-{h}" for k, h in FORMATS])
def test_every_format_imports_without_trust(kind, how, tmp_path):
    c = corpus()
    path = _save(c["hgb"], kind, how, tmp_path)
    foreign = load_foreign_model(path, sample=c["__sample__"])
    assert foreign.scan.safe, foreign.scan.refused
    _same_probabilities(foreign, c["hgb"], c["__sample__"])


@pytest.mark.usefixtures("convert_in_process")
def test_a_class_outside_the_list_is_named_with_how_to_vouch_for_it(tmp_path):
    from rollout_models import MISBEHAVING, misbehaving

    c = corpus()
    path = _save(misbehaving(c["logreg"]), "joblib", 0, tmp_path)
    with pytest.raises(UnsafeModelError, match=f"'{MISBEHAVING}'.*--trust-type {MISBEHAVING}") as err:
        load_foreign_model(path)
    assert err.value.refused == [MISBEHAVING]
    foreign = load_foreign_model(path, trust_types=[MISBEHAVING], sample=c["__sample__"])
    assert foreign.trust_types == [MISBEHAVING] and not foreign.trusted
    with pytest.raises(UnsafeModelError, match="not a dotted class name"):
        load_foreign_model(path, trust_types=["Misbehaving"])


def test_imported_forest_serves_the_original_probabilities(store, tmp_path):  # noqa: F811
    """End to end through the real child: import, register (digest recorded), serve with the compiled scorer."""
    from churnkit import registry
    from churnkit.data import write_table
    from churnkit.importer import import_model
    from churnkit.serve import Scorer, export_model, load_model_folder

    c = corpus()
    path = _save(c["random_forest"], "joblib", "zlib", tmp_path)
    sample = c["__sample__"]
    result = import_model(path, write_table(sample, tmp_path / "sample.csv"), no_gate=True, config=store)
    assert result.version == "1" and "child process" in result.tags["churnkit.isolation"]
    loaded = registry.load_model("models:/churn/1", store)
    assert len(loaded.manifest_sha256) == 64
    assert registry.seal_version("churn", "1", store) == loaded.manifest_sha256  # recomputing gives the same digest
    folder = export_model(loaded, tmp_path / "exported")
    served = load_model_folder(folder, environ={"CHURNKIT_MANIFEST_SHA256": loaded.manifest_sha256}, compiled=True)
    X = sample_from_frame(sample, result.columns).X
    proba = Scorer.from_loaded(served).predict_frame(X)
    assert np.allclose(proba, c["random_forest"].predict_proba(X)[:, 1], rtol=0, atol=1e-9)


def test_checked_in_allow_list_is_what_the_script_generates():
    assert tools_module().main(["--check"]) == 0
