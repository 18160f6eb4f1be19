"""Regenerate ``churnkit/trusted.py``: the exact (module, qualname) pairs a model file may name.

Two sources, both read from the libraries installed where this runs:

- skops's own trusted-type lists (``skops/io/_trusted_types.py``, skops 0.16: every scikit-learn
  estimator from ``sklearn.utils.all_estimators``, the loss/link/binning internals, NumPy's scalar
  types, ufuncs and bit generators), minus the few estimators listed in ``EXCLUDED`` below;
- every global and type that real files of a churn model corpus name (:func:`benign_corpus`): plain
  pickles at protocols 2 to 5, ``joblib.dump`` with each compression it supports, ``.skops`` files.

Each entry is ``(name in the file: module, name) -> (resolved __module__, __qualname__, kind)``;
kind is ``class``, ``constructor`` (a function that real pickles call to rebuild arrays, random
states and bytes) or ``ufunc`` (NumPy functions a FunctionTransformer holds). Nothing else (no
module, no other function) is ever listed. Run it after upgrading scikit-learn, NumPy, SciPy, pandas,
joblib or skops, and commit the result::

    python tools/trusted_types.py          # rewrite churnkit/trusted.py
    python tools/trusted_types.py --check  # exit 1 when the checked-in list differs
"""

from __future__ import annotations

import argparse
import importlib
import io
import json
import pickle
import sys
import warnings
import zipfile
from pathlib import Path

OUT = Path(__file__).resolve().parents[1] / "churnkit" / "trusted.py"

#: Functions real pickles call to rebuild objects; listed by the name the pickle uses. Each is harmless
#: whatever arguments it gets (it builds an array, a scalar, bytes or a random state from its arguments,
#: and any class it is handed must itself be listed).
CONSTRUCTORS = {
    ("numpy._core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "scalar"),
    ("numpy._core.numeric", "_frombuffer"),
    ("numpy.random._pickle", "__bit_generator_ctor"), ("numpy.random._pickle", "__generator_ctor"),
    ("numpy.random._pickle", "__randomstate_ctor"),
    ("numpy.random.bit_generator", "__pyx_unpickle_SeedSequence"),
    ("_codecs", "encode"),  # protocol 2 writes bytes as _codecs.encode(text, 'latin1'); churnkit allows latin1 only
    ("copyreg", "_reconstructor"),
    ("pandas._libs.internals", "_unpickle_block"), ("pandas.core.indexes.base", "_new_Index"),
    ("pandas._libs.arrays", "__pyx_unpickle_NDArrayBacked"),
}
#: Names older libraries wrote that resolve to a listed object today (NumPy 1.x ``numpy.core``,
#: Python 2's ``__builtin__``/``copy_reg``, which protocol-2 pickles name).
ALIASES = {
    ("numpy.core.multiarray", "_reconstruct"): ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"): ("numpy._core.multiarray", "scalar"),
    ("numpy.core.numeric", "_frombuffer"): ("numpy._core.numeric", "_frombuffer"),
    ("copy_reg", "_reconstructor"): ("copyreg", "_reconstructor"),
}
#: Builtins real pickles of models name (containers and scalars; never a function).
BUILTINS = ("bool", "bytearray", "bytes", "complex", "dict", "float", "frozenset", "int", "list", "object", "range",
            "set", "slice", "str", "tuple")
#: Estimators skops trusts that churnkit does not: text vectorizers read files named by the *served*
#: rows when ``input='filename'`` (a request could make the server open a path).
EXCLUDED = {("sklearn.feature_extraction.text", n) for n in
            ("CountVectorizer", "HashingVectorizer", "TfidfVectorizer")}
#: Libraries whose versions the list was generated with (a different version may move a class).
LIBRARIES = ("scikit-learn", "numpy", "scipy", "pandas", "joblib", "skops")


def benign_corpus(rows: int = 300, seed: int = 0) -> dict:
    """``{name: fitted estimator}``: what churn teams save, fitted on a small synthetic month.

    Pipelines with ColumnTransformer, SimpleImputer, OneHot/Ordinal encoders, StandardScaler/
    QuantileTransformer, a FunctionTransformer with a NumPy function; LogisticRegression,
    HistGradientBoosting, RandomForest, GradientBoosting, ExtraTrees, SVC with probability,
    CalibratedClassifierCV, Voting and Stacking classifiers. Returns the models and the training rows
    under ``"__X__"``/``"__y__"``.
    """
    import numpy as np
    from sklearn.calibration import CalibratedClassifierCV
    from sklearn.compose import ColumnTransformer
    from sklearn.ensemble import (ExtraTreesClassifier, GradientBoostingClassifier, HistGradientBoostingClassifier,
                                  RandomForestClassifier, StackingClassifier, VotingClassifier)
    from sklearn.impute import SimpleImputer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline, make_pipeline
    from sklearn.preprocessing import (FunctionTransformer, OneHotEncoder, OrdinalEncoder, QuantileTransformer,
                                       StandardScaler)
    from sklearn.svm import SVC, LinearSVC

    from churnkit.data import load_table

    data = load_table("", rows=rows, month=1, seed=seed)
    X, y = data.X, data.y.to_numpy()
    num, cat = data.schema.numeric, data.schema.categorical

    def onehot():
        return ColumnTransformer([
            ("num", make_pipeline(SimpleImputer(strategy="median"), StandardScaler()), num),
            ("cat", make_pipeline(SimpleImputer(strategy="constant", fill_value="missing"),
                                  OneHotEncoder(handle_unknown="ignore")), cat)])

    def ordinal():
        return ColumnTransformer([
            ("num", make_pipeline(SimpleImputer(), FunctionTransformer(np.log1p), QuantileTransformer(n_quantiles=50)),
             [c for c in num if (X[c].dropna() >= 0).all()]),
            ("cat", OrdinalEncoder(handle_unknown="use_encoded_value", unknown_value=-1, encoded_missing_value=-2),
             cat)])

    rng = np.random.RandomState(seed)
    models = {
        "logreg": Pipeline([("prep", onehot()), ("clf", LogisticRegression(max_iter=500))]),
        "hgb": Pipeline([("prep", ordinal()), ("clf", HistGradientBoostingClassifier(max_iter=20, random_state=seed))]),
        "random_forest": Pipeline([("prep", ordinal()), ("clf", RandomForestClassifier(20, random_state=rng))]),
        "gradient_boosting": Pipeline([("prep", onehot()), ("clf", GradientBoostingClassifier(n_estimators=20))]),
        "extra_trees": Pipeline([("prep", onehot()), ("clf", ExtraTreesClassifier(20, random_state=seed))]),
        "svc": Pipeline([("prep", onehot()), ("clf", SVC(probability=True, random_state=seed))]),
        "calibrated_linear_svc": Pipeline([("prep", onehot()), ("clf", CalibratedClassifierCV(LinearSVC()))]),
        "voting": Pipeline([("prep", onehot()), ("clf", VotingClassifier(
            [("lr", LogisticRegression(max_iter=500)), ("rf", RandomForestClassifier(10, random_state=seed))],
            voting="soft"))]),
        "stacking": Pipeline([("prep", onehot()), ("clf", StackingClassifier(
            [("lr", LogisticRegression(max_iter=500)), ("et", ExtraTreesClassifier(10, random_state=seed))]))]),
    }
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fitted = {name: m.fit(X, y) for name, m in models.items()}
    return fitted | {"__X__": X, "__y__": y}


def _extra_objects() -> list:
    """Objects beside models that model files hold: frames, series, categoricals, sparse matrices."""
    import numpy as np
    import pandas as pd
    import scipy.sparse as sp

    frame = pd.DataFrame({"tenure": [1.0, None, 3.0], "plan": pd.Categorical(["a", "b", None]), "id": ["x", "y", "z"]})
    return [frame, frame["tenure"], frame.set_index("id"), sp.csr_matrix(np.eye(3)), sp.csc_matrix(np.eye(2)),
            np.random.default_rng(0), np.random.RandomState(0), np.array(["a", None], dtype=object)]


def _pickle_names(obj) -> set[tuple[str, str]]:
    """Every (module, name) the real unpickler asks for when loading ``obj`` pickled every way."""
    import joblib
    from joblib.numpy_pickle import NumpyUnpickler

    seen: set[tuple[str, str]] = set()

    class Plain(pickle.Unpickler):
        def find_class(self, module, name):
            seen.add((module, name))
            return super().find_class(module, name)

    class Joblib(NumpyUnpickler):
        def find_class(self, module, name):
            seen.add((module, name))
            return super().find_class(module, name)

    for protocol in (2, 3, 4, 5):
        Plain(io.BytesIO(pickle.dumps(obj, protocol=protocol))).load()
    buf = io.BytesIO()
    joblib.dump(obj, buf)
    buf.seek(0)
    Joblib("", buf, None).load()
    return seen


def _skops_names(obj, loaders: set) -> set[tuple[str, str]]:
    import skops.io

    from churnkit.scan import skops_schema_types

    schema = json.loads(zipfile.ZipFile(io.BytesIO(skops.io.dumps(obj))).read("schema.json"))
    pairs, used = skops_schema_types(schema)
    loaders |= used
    return pairs


def _skops_lists() -> set[tuple[str, str]]:
    from skops.io import _trusted_types as t

    names = (t.PRIMITIVE_TYPE_NAMES + t.CONTAINER_TYPE_NAMES + t.SKLEARN_ESTIMATOR_TYPE_NAMES
             + t.SKLEARN_INTERNAL_TYPE_NAMES + t.NUMPY_UFUNC_TYPE_NAMES + t.NUMPY_RANDOM_BIT_GENERATOR_TYPE_NAMES
             + t.NUMPY_DTYPE_TYPE_NAMES)
    return {tuple(n.rsplit(".", 1)) for n in names}


def _resolve(module: str, name: str):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if module == "__builtin__":
            module = "builtins"
        obj = importlib.import_module(module)
        for part in name.split("."):
            obj = getattr(obj, part)
    return obj


def _kind(obj, pair) -> str | None:
    import numpy as np

    if isinstance(obj, type):
        return "class"
    if isinstance(obj, np.ufunc):
        return "ufunc"
    if pair in CONSTRUCTORS:
        return "constructor"
    return None


def generate() -> tuple[dict[tuple[str, str], tuple[str, str, str]], list[str]]:
    """``{(module, name) as a file names it: (__module__, __qualname__, kind)}`` under the installed libraries,
    and the skops loaders the corpus's ``.skops`` files use."""
    corpus = benign_corpus()
    wanted = set(_skops_lists())
    loaders: set[str] = set()
    for name, obj in corpus.items():
        if not name.startswith("__"):
            wanted |= _pickle_names(obj) | _skops_names(obj, loaders)
    for obj in _extra_objects():
        wanted |= _pickle_names(obj)
    wanted |= {("builtins", b) for b in BUILTINS} | {("__builtin__", b) for b in BUILTINS}
    wanted |= set(CONSTRUCTORS) | set(ALIASES)
    out = {}
    for pair in sorted(wanted - EXCLUDED):
        try:
            obj = _resolve(*pair)
        except (ImportError, AttributeError):
            continue  # a name another version of the library uses
        kind = _kind(obj, ALIASES.get(pair, pair))
        module, qualname = getattr(obj, "__module__", None), getattr(obj, "__qualname__", None)
        if kind is None or not isinstance(module, str) or not isinstance(qualname, str):
            continue  # a plain function or an object without an identity to check: never listed
        if pair[0] == "builtins" and pair[1] not in BUILTINS:
            continue  # skops lists builtins.map; a pickle of a model needs only the containers above
        out[pair] = (module, qualname, kind)
    return out, sorted(loaders - {"MethodNode", "PartialNode", "OperatorFuncNode"})


def render(entries: dict, loaders: list[str]) -> str:
    from importlib.metadata import version

    versions = {lib: version(lib) for lib in LIBRARIES}
    lines = ['"""The exact (module, name) pairs a model file may name: generated, do not edit.',
             "",
             "Regenerate with ``python tools/trusted_types.py`` (see that script for the sources) after",
             "upgrading a library listed in :data:`GENERATED_WITH`.",
             '"""',
             "",
             f"GENERATED_WITH = {json.dumps(versions, sort_keys=True)}",
             "",
             "#: (module, name) as a pickle, joblib or skops file names it -> (__module__, __qualname__, kind)",
             "ENTRIES = {"]
    lines += [f"    {pair!r}: {value!r}," for pair, value in sorted(entries.items())]
    lines.append("}")
    lines += ["", "#: skops loaders the corpus's .skops files use (never MethodNode, PartialNode, OperatorFuncNode)",
              f"SKOPS_LOADERS = {tuple(loaders)!r}"]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 when churnkit/trusted.py is out of date")
    args = parser.parse_args(argv)
    text = render(*generate())
    if args.check:
        if OUT.read_text() != text:
            print(f"{OUT} is out of date: run python tools/trusted_types.py and commit it", file=sys.stderr)
            return 1
        print(f"{OUT} is up to date")
        return 0
    OUT.write_text(text)
    print(f"wrote {OUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
