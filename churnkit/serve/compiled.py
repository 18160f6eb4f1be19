"""The compiled scorer stored in the model folder, so a server starts without sklearn.

At export (:func:`churnkit.serve.loading.export_model`, which every deploy target calls) the fitted
pipeline is compiled to numpy arrays and checked against sklearn's ``predict_proba`` on probe rows;
the arrays go to ``churnkit-scorer.npz`` (plain arrays, loaded with ``allow_pickle=False``) and the
manifest records the file, its sha256, the engine and the check. ``churnkit serve`` then loads the
arrays alone: no skops, no sklearn, no scipy on the container's cold start. A folder without the file
(exported by an older kit) is served through sklearn as before.
"""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path

import numpy as np

from churnkit.artifact import SCORER_FILE
from churnkit.exceptions import IntegrityError



def _prep_arrays(prep) -> dict:
    maps = [[sorted((k for k in m if k is not None), key=m.get), m.get(None, -1)] for m in prep.cat_maps]
    return {"num_pos": prep.num_pos, "medians": prep.medians, "means": prep.means, "scales": prep.scales,
            "cat_pos": np.asarray(prep.cat_pos, dtype=np.int64), "cat_offsets": np.asarray(prep.cat_offsets, dtype=np.int64),
            "cat_sizes": np.asarray(prep.cat_sizes, dtype=np.int64), "n_features": np.asarray(prep.n_features),
            "cat_maps": np.asarray(json.dumps(maps))}


def _prep_from(a):
    from churnkit.serve.scorer import _Prep

    maps = []
    for cats, none_index in json.loads(str(a["cat_maps"])):
        mapping = {c: k for k, c in enumerate(cats)}
        mapping[None] = int(none_index)
        maps.append(mapping)
    return _Prep(a["num_pos"], a["medians"], a["means"], a["scales"], a["cat_pos"].tolist(), maps,
                 a["cat_offsets"].tolist(), a["cat_sizes"].tolist(), int(a["n_features"]))


def to_bytes(compiled) -> bytes:
    """The compiled model (``_Linear`` or ``_Trees``) as ``.npz`` bytes."""
    arrays = {"engine": np.asarray(compiled.engine), **_prep_arrays(compiled.prep)}
    if compiled.engine == "numpy-logreg":
        arrays.update(w_num=compiled.w_num, intercept=np.asarray(compiled.intercept),
                      w_cat_sizes=np.asarray([len(w) for w in compiled.w_cat], dtype=np.int64),
                      w_cat=np.concatenate(compiled.w_cat) if compiled.w_cat else np.zeros(0))
    elif compiled.engine == "numpy-trees":
        arrays.update(feat=compiled.feat.astype(np.int64), thr=compiled.thr, child=compiled.child.astype(np.int64),
                      value=compiled.value, roots=compiled.roots.astype(np.int64),
                      active=np.asarray(compiled.active, dtype=np.int64), baseline=np.asarray(compiled.baseline))
    else:
        raise TypeError(f"engine {compiled.engine!r} cannot be stored")
    return _npz(arrays)


def _npz(arrays: dict) -> bytes:
    """``np.savez`` bytes with fixed member times: the same model gives the same bytes (its sha256 is recorded
    in the registry at registration, long before an export writes the file)."""
    import zipfile

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as z:
        for name, value in arrays.items():
            member = io.BytesIO()
            np.lib.format.write_array(member, np.asanyarray(value), allow_pickle=False)
            z.writestr(zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0)), member.getvalue())
    return buf.getvalue()


def from_bytes(data: bytes):
    """The compiled model back from :func:`to_bytes` (large tree batches use the numpy walk: no sklearn)."""
    from churnkit.serve.scorer import _Linear, _Trees

    a = np.load(io.BytesIO(data), allow_pickle=False)
    prep = _prep_from(a)
    engine = str(a["engine"])
    if engine == "numpy-logreg":
        w_cat = np.split(a["w_cat"], np.cumsum(a["w_cat_sizes"])[:-1]) if len(a["w_cat_sizes"]) else []
        return _Linear(prep, a["w_num"], w_cat, float(a["intercept"]))
    if engine == "numpy-trees":
        try:
            return _Trees(prep, None, a["feat"], a["thr"], a["child"], a["value"], a["roots"], a["active"].tolist(),
                          float(a["baseline"]))
        except ValueError as exc:
            raise IntegrityError(f"compiled scorer trees are malformed ({exc}); export the model again") from None
    raise IntegrityError(f"compiled scorer engine {engine!r} is not one this version of churnkit reads; export the "
                         "model again with this version")


def compile_entry(pipeline, schema, threshold: float) -> tuple[bytes, dict] | None:
    """The compiled scorer's bytes and manifest entry, or None when the pipeline has no compiled path."""
    from churnkit.serve.scorer import Scorer

    scorer = Scorer(pipeline, schema, threshold)  # compiles and self-checks against sklearn
    if scorer.model is scorer.sklearn:
        return None
    data = to_bytes(scorer.model)
    return data, {"file": SCORER_FILE, "engine": scorer.engine, "sha256": hashlib.sha256(data).hexdigest(),
                  "checked": "equal to sklearn predict_proba within 1e-9 on probe rows"}


def write_compiled(loaded, folder) -> dict | None:
    """Compile ``loaded``'s pipeline, check it against sklearn, write it to ``folder``; the manifest entry.

    None when the pipeline has no compiled path (the server then scores with sklearn).
    """
    made = compile_entry(loaded.pipeline, loaded.schema, loaded.threshold)
    if made is None:
        return None
    data, entry = made
    (Path(folder) / SCORER_FILE).write_bytes(data)
    return entry


def read_compiled(folder, entry: dict):
    """The compiled model recorded by ``entry`` (the manifest's ``scorer``), its sha256 checked first."""
    path = Path(folder) / entry.get("file", SCORER_FILE)
    data = path.read_bytes()
    sha = hashlib.sha256(data).hexdigest()
    if sha != entry.get("sha256"):
        raise IntegrityError(f"compiled scorer {str(path)!r}: sha256 {sha[:16]}... does not match "
                             f"{str(entry.get('sha256'))[:16]}... in the manifest; export the model again")
    return from_bytes(data)
