"""A model folder cannot run code: every file is hashed, only skops loads, nothing goes on sys.path.

Each test plants something into a registered model's folder (or an exported copy with its manifests
rewritten to match) and starts ``churnkit serve`` as a real process: it must refuse with a message
naming the file and the fix, and the planted payload (which would create a marker file) never runs.
"""

from __future__ import annotations

import json
import pickle
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from serve_support import CHURNKIT, REPO, Server, clean_env

from churnkit.artifact import FILES_MANIFEST, MANIFEST_ENV, SCORER_FILE, SERVING_MANIFEST, SERVING_UNLISTED, UNLISTED
from churnkit.data import file_sha256




class _Payload:
    """Unpickling this runs code (what a cloudpickle or pickle model file can do)."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').write('payload ran')",))


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """A runs folder with churn v1 registered through the library; the folder of v1 on disk."""
    base = tmp_path_factory.mktemp("integrity")
    runs = base / "runs"
    script = (
        "import mlflow\n"
        "from churnkit import registry\n"
        "from churnkit.config import load_config\n"
        "from churnkit.data import load_table\n"
        "from churnkit.evaluate import gate\n"
        "from churnkit.model import split_holdout, train_model\n"
        f"config = load_config({str(runs)!r})\n"
        "registry.setup_tracking(config)\n"
        "ds = load_table('', rows=800, seed=0)\n"
        "split = split_holdout(ds, 0.25, 0)\n"
        "pipe = train_model(split, ds.schema, 'logreg', 0)\n"
        "with mlflow.start_run():\n"
        "    run_id = registry.log_candidate(pipe, ds, split, model='logreg', seed=0)\n"
        "cand = registry.load_candidate(run_id, config)\n"
        "registry.register_candidate(cand, gate(0.99, None, 0.5, -1.0), threshold=0.5, config=config)\n"
        "from churnkit.serve import export_model\n"
        "loaded = registry.load_model('models:/churn/1', config)\n"
        f"export_model(loaded, {str(base / 'exported')!r})\n"
        "print(loaded.manifest_sha256)\n"
        "print(loaded.path)\n"
    )
    done = subprocess.run([str(Path(CHURNKIT).with_name("python")), "-c", script], env=clean_env(), cwd=str(base),
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    *_, pin, path = done.stdout.strip().splitlines()
    folder = Path(path)
    assert (folder / "MLmodel").is_file() and len(pin) == 64
    (base / "pin").write_text(pin)
    return runs, folder, base


@pytest.fixture
def pristine(store):
    """The store, with v1's folder restored after the test whatever the test planted."""
    runs, folder, base = store
    backup = base / "backup"
    shutil.rmtree(backup, ignore_errors=True)
    shutil.copytree(folder, backup)
    yield runs, folder, base
    shutil.rmtree(folder)
    shutil.copytree(backup, folder)


def _serve(model: str, runs: Path, log: Path, **env) -> subprocess.CompletedProcess:
    """``churnkit serve`` as a real process; a server that starts anyway is stopped and reported."""
    args = [CHURNKIT, "serve", "--model", model, "--runs-dir", str(runs), "--port", "0"]
    try:
        return subprocess.run(args, env=clean_env(**env), cwd=str(REPO), capture_output=True, text=True, timeout=60)
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"churnkit serve started with the planted folder instead of refusing it:\n{exc.stderr}")


def _plant_code(folder: Path, marker: Path) -> None:
    """MLflow's `code:` directory with a package shadowing skops: importing skops would run the payload."""
    mlmodel = yaml.safe_load((folder / "MLmodel").read_text())
    mlmodel["flavors"]["sklearn"]["code"] = "code"
    (folder / "MLmodel").write_text(yaml.safe_dump(mlmodel))
    pkg = folder / "code" / "skops"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text(f"open({str(marker)!r}, 'w').write('payload ran')\n")


def _plant_cloudpickle(folder: Path, marker: Path) -> None:
    mlmodel = yaml.safe_load((folder / "MLmodel").read_text())
    mlmodel["flavors"]["sklearn"].update(pickled_model="model.pkl", serialization_format="cloudpickle")
    mlmodel["flavors"]["python_function"]["model_path"] = "model.pkl"
    (folder / "MLmodel").write_text(yaml.safe_dump(mlmodel))
    (folder / "model.pkl").write_bytes(pickle.dumps(_Payload(marker)))


def _rewrite_manifests(folder: Path) -> None:
    """What someone with write access to an exported folder can do: make both manifests match again."""
    files = {p.relative_to(folder).as_posix(): file_sha256(p) for p in sorted(folder.rglob("*"))
             if p.is_file() and p.name not in UNLISTED}
    (folder / FILES_MANIFEST).write_text(json.dumps({"format": 1, "files": files}))
    export = json.loads((folder / SERVING_MANIFEST).read_text())
    export["files"] = {p.relative_to(folder).as_posix(): file_sha256(p) for p in sorted(folder.rglob("*"))
                       if p.is_file() and p.name not in SERVING_UNLISTED}
    model_file = yaml.safe_load((folder / "MLmodel").read_text())["flavors"]["sklearn"]["pickled_model"]
    export["sha256"] = file_sha256(folder / model_file)
    if export.get("scorer") and (folder / SCORER_FILE).exists():
        export["scorer"]["sha256"] = file_sha256(folder / SCORER_FILE)
    (folder / SERVING_MANIFEST).write_text(json.dumps(export, sort_keys=True, separators=(",", ":")))


def _export(runs: Path, base: Path, name: str) -> Path:
    """A copy of v1 as ``export_model`` wrote it (with churnkit-model.json), for one test to change."""
    dest = base / name
    shutil.rmtree(dest, ignore_errors=True)
    return Path(shutil.copytree(base / "exported", dest))


def test_untouched_folder_serves(pristine, tmp_path):
    runs, folder, _ = pristine
    server = Server([CHURNKIT, "serve", "--model", "models:/churn/1", "--runs-dir", str(runs), "--port", "0"],
                    clean_env(), tmp_path / "serve.log")
    try:
        import httpx

        version = httpx.get(server.url + "/version", timeout=5).json()
        assert version["version"] == "1" and version["sha256"] == file_sha256(folder / "model.skops")
    finally:
        server.close()


def test_code_directory_is_refused_and_never_runs(pristine, tmp_path):
    runs, folder, _ = pristine
    marker = tmp_path / "pwned"
    _plant_code(folder, marker)
    done = _serve("models:/churn/1", runs, tmp_path / "serve.log")
    assert done.returncode == 1, done.stderr
    assert "IntegrityError" in done.stderr and "'MLmodel' was changed" in done.stderr
    assert "'code/skops/__init__.py' is not in the manifest" in done.stderr
    assert "register the model again" in done.stderr and "Traceback" not in done.stderr
    assert not marker.exists()


@pytest.mark.parametrize("change", ["extra file", "changed file", "manifest rewritten"])
def test_any_change_to_the_registered_folder_is_refused(pristine, tmp_path, change):
    runs, folder, _ = pristine
    if change == "extra file":
        (folder / "notes.txt").write_text("planted")
        expected = "'notes.txt' is not in the manifest"
    elif change == "changed file":  # a file the old check (model file only) never looked at
        (folder / "requirements.txt").write_text("evil-package==1.0\n")
        expected = "'requirements.txt' was changed"
    else:
        (folder / "notes.txt").write_text("planted")
        manifest = json.loads((folder / FILES_MANIFEST).read_text())
        manifest["files"]["notes.txt"] = file_sha256(folder / "notes.txt")
        (folder / FILES_MANIFEST).write_text(json.dumps(manifest))
        expected = f"{FILES_MANIFEST} sha256"
    done = _serve("models:/churn/1", runs, tmp_path / "serve.log")
    assert done.returncode == 1, done.stderr
    assert expected in done.stderr and "IntegrityError" in done.stderr and "Traceback" not in done.stderr


@pytest.mark.parametrize("plant", ["code directory", "cloudpickle format"])
def test_exported_folder_with_matching_manifests_still_loads_no_code(pristine, tmp_path, plant):
    """Manifests rewritten to match: the loader itself refuses code directories and non-skops formats."""
    runs, _, base = pristine
    folder = _export(runs, base, "exported-" + plant.split()[0])
    marker = tmp_path / "pwned"
    (_plant_code if plant == "code directory" else _plant_cloudpickle)(folder, marker)
    _rewrite_manifests(folder)
    done = _serve(str(folder), runs, tmp_path / "serve.log")
    assert done.returncode == 1, done.stderr
    expected = "declares a code directory 'code'" if plant == "code directory" else "serialized as 'cloudpickle'"
    assert expected in done.stderr and "Traceback" not in done.stderr
    assert not marker.exists()


def test_changed_exported_folder_is_refused(pristine, tmp_path):
    runs, _, base = pristine
    folder = _export(runs, base, "exported-changed")
    (folder / "conda.yaml").write_text("dependencies: [evil]\n")
    done = _serve(str(folder), runs, tmp_path / "serve.log")
    assert done.returncode == 1 and "'conda.yaml' was changed" in done.stderr, done.stderr


def test_extra_trusted_types_are_refused(pristine, tmp_path):
    runs, _, base = pristine
    folder = _export(runs, base, "exported-trust")
    mlmodel = yaml.safe_load((folder / "MLmodel").read_text())
    mlmodel["flavors"]["sklearn"]["skops_trusted_types"].append("builtins.exec")
    (folder / "MLmodel").write_text(yaml.safe_dump(mlmodel))
    _rewrite_manifests(folder)
    done = _serve(str(folder), runs, tmp_path / "serve.log")
    assert done.returncode == 1 and "asks skops to trust ['builtins.exec']" in done.stderr, done.stderr


# ---- the pinned serving manifest: every file and every value serve reads --------------------------

def _pinned(base: Path) -> dict:
    return {MANIFEST_ENV: (base / "pin").read_text()}


def test_export_digest_is_the_one_recorded_at_registration(pristine):
    import hashlib

    _, _, base = pristine
    manifest = (base / "exported" / SERVING_MANIFEST).read_bytes()
    assert hashlib.sha256(manifest).hexdigest() == (base / "pin").read_text()
    body = json.loads(manifest)
    assert (body["name"], body["version"], body["threshold"]) == ("churn", "1", 0.5)
    assert body["scorer"]["file"] == SCORER_FILE and "MLmodel" in body["files"] and FILES_MANIFEST in body["files"]


def _tamper_file(folder: Path, rel: str) -> None:
    path = folder / rel
    path.write_bytes(path.read_bytes() + b"\n# changed\n")


def _files_of(base: Path) -> list[str]:
    folder = base / "exported"
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())


@pytest.mark.parametrize("rewrite", [False, True], ids=["as-is", "manifest-rewritten"])
def test_every_file_of_an_exported_folder_is_covered_by_the_pin(pristine, rewrite):
    """Change any file (the manifest itself, the scorer, MLmodel, the skops file...): refused under the pin,
    also when the attacker rewrites the folder's manifests to match."""
    from churnkit.exceptions import IntegrityError
    from churnkit.serve.loading import load_model_folder

    runs, _, base = pristine
    files = _files_of(base)
    assert {SERVING_MANIFEST, SCORER_FILE, "MLmodel", FILES_MANIFEST} <= set(files)
    for rel in files:
        folder = _export(runs, base, "tampered")
        _tamper_file(folder, rel)
        if rel in SERVING_UNLISTED - {SERVING_MANIFEST, SCORER_FILE}:  # MLflow's download note: never read
            loaded = load_model_folder(folder, environ=_pinned(base), compiled=True)
            assert (loaded.name, loaded.version, loaded.threshold) == ("churn", "1", 0.5), rel
            continue
        if rewrite and rel != SERVING_MANIFEST:
            _rewrite_manifests(folder)
        with pytest.raises(IntegrityError):
            load_model_folder(folder, environ=_pinned(base), compiled=True)


@pytest.mark.parametrize("key, value", [("threshold", 0.01), ("name", "other"), ("version", "9"),
                                        ("scorer.sha256", "0" * 64), ("scorer.engine", "numpy-trees"),
                                        ("files.MLmodel", "0" * 64), ("format", 1)])
def test_every_value_of_the_manifest_is_covered_by_the_pin(pristine, key, value):
    from churnkit.exceptions import IntegrityError
    from churnkit.serve.loading import load_model_folder

    runs, _, base = pristine
    folder = _export(runs, base, "edited")
    manifest = json.loads((folder / SERVING_MANIFEST).read_text())
    where, _, leaf = key.rpartition(".")
    (manifest[where] if where else manifest)[leaf] = value
    (folder / SERVING_MANIFEST).write_text(json.dumps(manifest, sort_keys=True, separators=(",", ":")))
    with pytest.raises(IntegrityError, match="does not match the pinned"):
        load_model_folder(folder, environ=_pinned(base), compiled=True)


def test_a_planted_file_is_refused_and_an_untouched_folder_serves_its_own_values(pristine):
    from churnkit.exceptions import IntegrityError
    from churnkit.serve.loading import load_model_folder

    runs, _, base = pristine
    folder = _export(runs, base, "planted")
    loaded = load_model_folder(folder, environ=_pinned(base), compiled=True)
    assert (loaded.name, loaded.version, loaded.threshold, loaded.pinned) == ("churn", "1", 0.5, True)
    assert loaded.compiled is not None
    (folder / "extra.py").write_text("print('hi')\n")
    with pytest.raises(IntegrityError, match="'extra.py' is not in the manifest"):
        load_model_folder(folder, environ=_pinned(base), compiled=True)


def test_served_folder_reports_its_pin(pristine, tmp_path):
    """A real server: pinned it says so in /version; unpinned it warns at start and says "pinned": false;
    a pinned server refuses a folder whose scorer was altered with its hash updated in the manifest."""
    import httpx
    from serve_support import Server

    runs, _, base = pristine
    folder = _export(runs, base, "served")
    for env, pinned in ((_pinned(base), True), ({}, False)):
        server = Server([CHURNKIT, "serve", "--model", str(folder), "--port", "0"], clean_env(**env),
                        tmp_path / f"serve-{pinned}.log")
        try:
            version = httpx.get(server.url + "/version", timeout=10).json()
            assert version["pinned"] is pinned and version["version"] == "1"
            assert ("unpinned" in server.output()) is (not pinned)
        finally:
            server.close()
    scorer = folder / SCORER_FILE
    scorer.write_bytes(scorer.read_bytes()[:-8] + b"\0" * 8)
    _rewrite_manifests(folder)
    done = _serve(str(folder), runs, tmp_path / "serve.log", **_pinned(base))
    assert done.returncode == 1 and "does not match the pinned" in done.stderr and "Traceback" not in done.stderr
