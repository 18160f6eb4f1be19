"""The model-file scan: every global a pickle names, found without loading it; planted payloads never run.

Real joblib dumps of the kit's own pipeline shapes and of other scikit-learn estimators are clean; pickles
that would call ``os.system``, ``subprocess.Popen`` or ``builtins.eval`` are refused with the global named,
and a marker file each payload would create proves it never ran (the same bytes do create it when a child
process unpickles them, so the payloads are live).
"""

from __future__ import annotations

import pickle
import subprocess
import sys
from pathlib import Path

import joblib
import numpy as np
import pytest

from churnkit.exceptions import ModelFileError, UnsafeModelError
from churnkit.importer import load_foreign_model, scan_model_file
from churnkit.scan import allowed, allowed_global

from model_trust_support import convert_in_process  # noqa: F401 - fixture

pytestmark = pytest.mark.usefixtures("convert_in_process")  # the allow-list under test; the isolation: test_trust.py

_FITTED: dict = {}


def fitted() -> dict:
    """The kit's two pipeline shapes plus a forest and a boosting model on numeric columns (fitted once)."""
    if not _FITTED:
        from sklearn.ensemble import GradientBoostingClassifier, RandomForestClassifier

        from churnkit.data import load_table
        from churnkit.model import build_model

        ds = load_table("", rows=600, seed=1)
        num = ds.X[ds.schema.numeric].fillna(0)
        _FITTED["logreg"] = build_model("logreg", ds.schema, seed=1).fit(ds.X, ds.y)
        _FITTED["hgb"] = build_model("hgb", ds.schema, seed=1).set_params(clf__max_iter=20).fit(ds.X, ds.y)
        _FITTED["forest"] = RandomForestClassifier(n_estimators=4, random_state=0).fit(num, ds.y)
        _FITTED["gboost"] = GradientBoostingClassifier(n_estimators=4, random_state=0).fit(num, ds.y)
    return _FITTED


class Popen:
    """Pickles as a call to ``subprocess.Popen(argv)``."""

    def __init__(self, argv):
        self.argv = argv

    def __reduce__(self):
        return (subprocess.Popen, (self.argv,))


class Eval:
    """Pickles as a call to ``builtins.eval(code)``."""

    def __init__(self, code):
        self.code = code

    def __reduce__(self):
        return (eval, (self.code,))


def os_system_pickle(marker: Path) -> bytes:
    """Protocol 0, written by hand so the global is spelled ``os system`` (pickle itself writes ``posix``)."""
    return b"cos\nsystem\n(S'touch " + str(marker).encode() + b"'\ntR."


def planted(kind: str, tmp_path: Path) -> tuple[Path, Path, str]:
    """(model file, marker the payload would create, the global it names)."""
    marker = tmp_path / f"{kind}-ran"
    if kind == "os.system":
        path = tmp_path / "model.pkl"
        path.write_bytes(os_system_pickle(marker))
        return path, marker, "os.system"
    model = pickle.loads(pickle.dumps(fitted()["logreg"]))
    clf = model.steps[-1][1]
    if kind == "subprocess.Popen":  # after the pipeline's arrays: where a joblib-blind scan stops looking
        clf.notes_ = Popen(["touch", str(marker)])
        path = tmp_path / "model.joblib"
        joblib.dump(model, path)
    else:
        clf.notes_ = Eval(f"open({str(marker)!r}, 'w').close()")
        path = tmp_path / "model.joblib"
        joblib.dump(model, path, compress=3)
    return path, marker, kind


@pytest.mark.parametrize("kind", ["logreg", "hgb", "forest", "gboost"])
@pytest.mark.parametrize("compress", [0, 3])
def test_real_joblib_dumps_are_clean_and_every_global_after_the_arrays_is_seen(kind, compress, tmp_path):
    path = tmp_path / "model.joblib"
    joblib.dump(fitted()[kind], path, compress=compress)
    verdict = scan_model_file(path)
    assert verdict.safe, verdict.refused
    assert "joblib.numpy_pickle.NumpyArrayWrapper" in verdict.globals
    last = {"logreg": "sklearn.linear_model._logistic.LogisticRegression",
            "hgb": "sklearn.ensemble._hist_gradient_boosting.predictor.TreePredictor",
            "forest": "sklearn.tree._tree.Tree", "gboost": "sklearn.tree._tree.Tree"}[kind]
    assert last in verdict.globals  # pickled after many raw arrays


def test_picklescan_alone_stops_at_the_first_joblib_array(tmp_path):
    """Why churnkit walks joblib files itself: picklescan misses what follows the first array."""
    from picklescan.scanner import scan_file_path

    path = tmp_path / "model.joblib"
    joblib.dump(fitted()["logreg"], path)
    seen = {f"{g.module}.{g.name}" for g in scan_file_path(str(path)).globals}
    assert "sklearn.linear_model._logistic.LogisticRegression" not in seen
    assert "sklearn.linear_model._logistic.LogisticRegression" in scan_model_file(path).globals


def test_plain_pickle_of_a_pipeline_is_clean(tmp_path):
    path = tmp_path / "model.pkl"
    path.write_bytes(pickle.dumps(fitted()["hgb"]))
    verdict = scan_model_file(path)
    assert verdict.safe and verdict.format == "pickle"
    assert "sklearn.pipeline.Pipeline" in verdict.globals


@pytest.mark.parametrize("kind", ["os.system", "subprocess.Popen", "builtins.eval"])
def test_planted_payload_is_refused_by_name_and_never_runs(kind, tmp_path):
    path, marker, name = planted(kind, tmp_path)
    verdict = scan_model_file(path)
    assert name in verdict.refused and name in verdict.dangerous  # picklescan agrees it is dangerous
    with pytest.raises(UnsafeModelError) as err:
        load_foreign_model(path)
    assert name in str(err.value) and name in err.value.refused
    assert "--trust" in str(err.value)
    assert not marker.exists()
    # the payload is live: the same bytes run it when unpickled (in a child process)
    loader = "import joblib, sys; joblib.load(sys.argv[1])"
    subprocess.run([sys.executable, "-c", loader, str(path)], capture_output=True, timeout=60)
    for _ in range(50):
        if marker.exists():
            break
        import time

        time.sleep(0.1)
    assert marker.exists()


@pytest.mark.parametrize("content, message", [
    (b"", "empty"),
    (b"PK\x03\x04 not a pickle at all", "not a pickle"),
    (b"\x80\x05\x95\x10\x00\x00\x00\x00\x00\x00\x00\x8c\x07sklearn", "truncated"),
])
def test_unreadable_files_are_refused_before_loading(content, message, tmp_path):
    path = tmp_path / "model.pkl"
    path.write_bytes(content)
    with pytest.raises(ModelFileError, match=message):
        load_foreign_model(path)


@pytest.mark.parametrize("compress", [0, 3])
def test_truncated_joblib_file_is_refused(compress, tmp_path):
    path = tmp_path / "model.joblib"
    joblib.dump(fitted()["hgb"], path, compress=compress)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelFileError, match="truncated|corrupted"):
        load_foreign_model(path)


def test_trust_loads_a_file_naming_globals_outside_the_allow_list(tmp_path):
    import operator

    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import FunctionTransformer

    X = np.array([[1.0, -2.0], [-3.0, 4.0], [5.0, -6.0], [-7.0, 8.0]])
    model = make_pipeline(FunctionTransformer(operator.abs), LogisticRegression()).fit(X, [0, 1, 0, 1])
    path = tmp_path / "model.joblib"
    joblib.dump(model, path)
    with pytest.raises(UnsafeModelError, match="_operator.abs"):
        load_foreign_model(path, columns="a,b")
    foreign = load_foreign_model(path, trust=True, columns="a,b")
    assert foreign.trusted and foreign.scan.refused == ["_operator.abs"]
    assert foreign.wrapped and foreign.columns == ["a", "b"]


def test_skops_file_types_are_judged_by_the_same_allow_list(tmp_path):
    import skops.io

    path = tmp_path / "model.skops"
    skops.io.dump(fitted()["hgb"], path)
    verdict = scan_model_file(path)
    assert verdict.format == "skops" and verdict.safe
    assert "sklearn.ensemble._hist_gradient_boosting.predictor.TreePredictor" in verdict.globals


@pytest.mark.parametrize("name, ok", [
    ("sklearn.pipeline.Pipeline", True), ("numpy._core.multiarray._reconstruct", True),
    ("numpy.random._pickle.__generator_ctor", True), ("builtins.slice", True),
    ("builtins.eval", False), ("builtins.getattr", False), ("os.system", False), ("posix.system", False),
    ("subprocess.Popen", False), ("numpy.load", False), ("numpy.testing._private.utils.runstring", False),
    ("pandas.io.pickle.read_pickle", False), ("sklearn.datasets.fetch_openml", False), ("numpy.__builtins__", False),
    ("functools.partial", False), ("unknown.unknown", False),
])
def test_allow_list(name, ok):
    assert allowed(name) is ok


@pytest.mark.parametrize("module, name, ok", [
    ("numpy", "ndarray", True), ("numpy", "ndarray.tofile", False), ("pandas.core.frame", "DataFrame.to_pickle", False),
    ("sklearn.pipeline", "Pipeline.__init__.__globals__", False), ("builtins", "slice", True), ("builtins", "eval", False),
])
def test_dotted_names_are_judged_part_by_part(module, name, ok):
    """Protocol 4 resolves dotted names through attributes: each part must pass."""
    assert allowed_global(module, name) is ok


def test_restricted_loader_refuses_what_the_scan_would(tmp_path):
    """The second line: joblib's unpickler resolves only allow-listed globals even if a file got past the scan."""

    from churnkit.scan import ScanVerdict, restricted_unpickler

    data = os_system_pickle(tmp_path / "ran")
    verdict = ScanVerdict("model", "pickle", pairs=[("posix", "system"), ("os", "system")])  # as if the scan passed
    with pytest.raises(UnsafeModelError, match="system"):
        restricted_unpickler(data, verdict).load()
    assert not (tmp_path / "ran").exists()


def test_skops_file_with_a_type_outside_the_allow_list_is_refused(tmp_path):
    import operator

    import skops.io
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import FunctionTransformer

    X = np.array([[1.0, -2.0], [-3.0, 4.0], [5.0, -6.0], [-7.0, 8.0]])
    path = tmp_path / "model.skops"
    skops.io.dump(make_pipeline(FunctionTransformer(operator.abs), LogisticRegression()).fit(X, [0, 1, 0, 1]), path)
    with pytest.raises(UnsafeModelError, match="_operator.abs"):
        load_foreign_model(path, columns=["a", "b"])


def test_mlflow_folder_must_be_the_sklearn_flavor_and_its_file_is_scanned(tmp_path):
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "MLmodel").write_text("flavors:\n  python_function:\n    loader_module: my_loader\n")
    with pytest.raises(ModelFileError, match=r"flavors \['python_function'\], not 'sklearn'"):
        load_foreign_model(folder)
    (folder / "MLmodel").write_text("flavors:\n  sklearn:\n    pickled_model: model.pkl\n"
                                    "    serialization_format: cloudpickle\n")
    marker = tmp_path / "ran"
    (folder / "model.pkl").write_bytes(os_system_pickle(marker))
    with pytest.raises(UnsafeModelError, match="os.system"):
        load_foreign_model(folder)
    assert not marker.exists()
