"""Model files built to run code during ``churnkit import``: each refused, its payload never run.

One test per class of attack, each with a file built here (the payload is harmless: it creates a marker
path, or fetches a URL from a loopback server that records requests). Each proves the payload never ran
(marker absent, no request seen) and that the registry is unchanged. These go through the real isolated
child; the allow-list itself is what refuses them.
"""

from __future__ import annotations

import http.server
import io
import json
import pickle
import shutil
import threading
import zipfile
from pathlib import Path

import joblib
import pytest

from churnkit.exceptions import UnsafeModelError
from test_importer import cli, f, populated, unchanged  # noqa: F401 - fixtures

# --- hand-written pickle opcodes (pickletools documents each: Lib/pickletools.py) ---------------------------
PROTO4, MARK, TUPLE, REDUCE, STOP, POP, EMPTY_DICT = b"\x80\x04", b"(", b"t", b"R", b".", b"0", b"}"


def text(s: str) -> bytes:
    data = s.encode()
    return b"\x8c" + bytes([len(data)]) + data if len(data) < 256 else b"X" + len(data).to_bytes(4, "little") + data


def global4(module: str, name: str) -> bytes:
    """STACK_GLOBAL: protocol 4 resolves ``name`` as an attribute path from ``module``."""
    return text(module) + text(name) + b"\x93"


def call(module: str, name: str, *args: bytes) -> bytes:
    return global4(module, name) + MARK + b"".join(args) + TUPLE + REDUCE


def blob(data: bytes) -> bytes:
    return b"B" + len(data).to_bytes(4, "little") + data  # BINBYTES


def pickle_file(tmp_path: Path, body: bytes, name: str = "model.pkl") -> Path:
    path = tmp_path / name
    path.write_bytes(PROTO4 + body + STOP)
    return path


class Recorder:
    """A loopback HTTP server that records every request it sees."""

    def __init__(self):
        seen = self.seen = []

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                seen.append(self.path)
                self.send_response(200)
                self.end_headers()
                self.wfile.write(b"a b\n1 2\n")

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/payload"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def recorder():
    r = Recorder()
    yield r
    r.close()


def refused(path, f, populated, *needles) -> str:  # noqa: F811
    res = cli(path, "--sample", f["sample"], "--runs-dir", populated.runs_dir)
    assert res.exit_code == 1, res.output
    assert res.stderr.startswith("error: ") and "Traceback" not in res.stderr, res.stderr
    for needle in needles:
        assert needle in res.stderr, res.stderr
    assert unchanged(populated)
    return res.stderr


# 1. Dotted names reach modules an allowed package imports ---------------------------------------------------
@pytest.mark.parametrize("module, name", [("sklearn", "os.mkdir"), ("numpy._core._methods", "pickle.os.mkdir")])
def test_dotted_name_through_an_allowed_package_is_refused(module, name, f, populated, tmp_path):  # noqa: F811
    marker = tmp_path / "ran"
    path = pickle_file(tmp_path, call(module, name, text(str(marker))))
    refused(path, f, populated, f"{module}.{name}", "exact allow-list", "--trust-type")
    assert not marker.exists()


# 2. Functions inside the allowed packages do I/O --------------------------------------------------------------
def test_dataframe_writer_inside_an_allowed_package_is_refused(f, populated, tmp_path):  # noqa: F811
    marker = tmp_path / "written.csv"
    frame = call("pandas", "DataFrame")
    path = pickle_file(tmp_path, call("pandas", "DataFrame.to_csv", frame, text(str(marker))))
    refused(path, f, populated, "pandas.DataFrame.to_csv")
    assert not marker.exists()


def test_reader_that_fetches_a_url_is_refused(f, populated, tmp_path, recorder):  # noqa: F811
    path = pickle_file(tmp_path, call("pandas", "read_fwf", text(recorder.url)))
    refused(path, f, populated, "pandas.read_fwf")
    assert recorder.seen == []


# 3. Denied names bypassed: names a deny-list never thought of, getattr with the name as a string -----------
def test_process_launch_under_a_name_no_deny_list_has_is_refused(f, populated, tmp_path):  # noqa: F811
    marker = tmp_path / "ran"
    argv = b"]" + MARK + text("touch") + text(str(marker)) + b"e"  # EMPTY_LIST MARK ... APPENDS
    path = pickle_file(tmp_path, call("pandas._config.localization", "subprocess.check_call", argv))
    refused(path, f, populated, "subprocess.check_call")
    assert not marker.exists()


def test_getattr_with_the_name_as_a_string_is_refused(f, populated, tmp_path):  # noqa: F811
    marker = tmp_path / "ran"
    # getattr reached through a module that imports builtins; "mkdir" only ever appears as a string
    mkdir = call("numpy._core.numeric", "builtins.getattr", global4("sklearn", "os"), text("mkdir"))
    path = pickle_file(tmp_path, mkdir + MARK + text(str(marker)) + TUPLE + REDUCE)
    refused(path, f, populated, "numpy._core.numeric.builtins.getattr")
    assert not marker.exists()


# 4. An allowed module reaches an unrestricted inner unpickler fed a bytes literal ----------------------------
def test_inner_unpickler_fed_a_bytes_literal_is_refused(f, populated, tmp_path):  # noqa: F811
    marker = tmp_path / "ran"
    inner = b"cos\nmkdir\n(V" + str(marker).encode() + b"\ntR."  # protocol 0: os.mkdir(marker)
    path = pickle_file(tmp_path, call("numpy._core._methods", "pickle._loads", blob(inner)))
    refused(path, f, populated, "pickle._loads")
    assert not marker.exists()


# 5. The static walk must model the unpickler (MARK followed by POP) ------------------------------------------
def test_mark_then_pop_cannot_hide_the_global_the_unpickler_resolves(f, populated, tmp_path):  # noqa: F811
    from churnkit.importer import scan_model_file

    marker = tmp_path / "ran"
    # CPython's POP drops a mark on top of the stack, not the item below it: STACK_GLOBAL then takes
    # "pandas._config.localization", where a walk that popped the item sees "numpy".
    body = (text("numpy") + text("pandas._config.localization") + MARK + POP + text("subprocess.check_call")
            + b"\x93" + MARK + b"]" + MARK + text("touch") + text(str(marker)) + b"e" + TUPLE + REDUCE)
    path = pickle_file(tmp_path, body)
    verdict = scan_model_file(path)
    assert "pandas._config.localization.subprocess.check_call" in verdict.globals, verdict.globals
    assert "numpy.subprocess.check_call" not in verdict.globals
    refused(path, f, populated, "subprocess.check_call")
    assert not marker.exists()


def test_a_global_the_walk_did_not_report_is_refused_by_the_unpickler(tmp_path):
    from churnkit.scan import ScanVerdict, restricted_unpickler

    data = PROTO4 + call("sklearn.pipeline", "Pipeline", b"]") + STOP
    verdict = ScanVerdict("model", "pickle", pairs=[])  # a walk that saw nothing
    with pytest.raises(UnsafeModelError, match="did not see"):
        restricted_unpickler(data, verdict).load()


# 6. skops must trust only the exact list, never what get_untrusted_types returns ---------------------------
def skops_file(tmp_path: Path, node: dict) -> Path:
    import skops

    path = tmp_path / "model.skops"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("schema.json", json.dumps(node | {"protocol": 2, "_skops_version": skops.__version__}))
    return path


def _str(value: str, i: int) -> dict:
    return {"__class__": "str", "__module__": "builtins", "__loader__": "JsonNode", "content": json.dumps(value),
            "is_json": True, "__id__": i}


def test_skops_reduce_node_calling_a_library_function_is_refused(f, populated, tmp_path, recorder):  # noqa: F811
    node = {"__class__": "read_fwf", "__module__": "pandas", "__loader__": "ConstructorFromReduceNode",
            "content": {"__class__": "tuple", "__module__": "builtins", "__loader__": "TupleNode",
                        "content": [_str(recorder.url, 1)], "__id__": 2}, "__id__": 3}
    path = skops_file(tmp_path, node)
    refused(path, f, populated, "pandas.read_fwf")
    assert recorder.seen == []


def test_skops_method_node_is_refused(tmp_path):
    from churnkit.importer import scan_model_file

    node = {"__class__": "DataFrame", "__module__": "pandas", "__loader__": "MethodNode",
            "content": {"func": "to_csv", "obj": {"__class__": "DataFrame", "__module__": "pandas",
                                                  "__loader__": "ObjectNode", "__id__": 1}}, "__id__": 2}
    verdict = scan_model_file(skops_file(tmp_path, node))
    assert not verdict.safe and "skops loader MethodNode" in verdict.refused


# 7. MLmodel paths are confined to their folder --------------------------------------------------------------
@pytest.mark.parametrize("how", ["dotdot", "absolute", "symlink"])
def test_mlmodel_path_outside_its_folder_is_refused(how, f, populated, tmp_path):  # noqa: F811
    elsewhere = tmp_path / "elsewhere.joblib"
    shutil.copy(f["pipeline"], elsewhere)
    folder = tmp_path / "mlflow-model"
    folder.mkdir()
    name = {"dotdot": "../elsewhere.joblib", "absolute": str(elsewhere), "symlink": "model.joblib"}[how]
    if how == "symlink":
        (folder / "model.joblib").symlink_to(elsewhere)
    (folder / "MLmodel").write_text(f"flavors:\n  sklearn:\n    pickled_model: {name}\n"
                                    "    serialization_format: cloudpickle\n")
    refused(folder, f, populated, "outside the folder")


def test_serving_refuses_a_model_file_outside_its_folder(tmp_path):
    from churnkit.artifact import model_file
    from churnkit.exceptions import IntegrityError

    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "MLmodel").write_text("flavors:\n  sklearn:\n    pickled_model: ../x.skops\n")
    with pytest.raises(IntegrityError, match="outside the folder"):
        model_file(tmp_path / "m")


# The isolation itself, below the allow-list ---------------------------------------------------------------
def test_trusted_file_still_runs_without_network_or_file_writes(tmp_path, recorder):
    """``--trust`` lifts the allow-list, not the child: a payload that runs cannot write or reach the network."""
    from churnkit.exceptions import ModelFileError
    from churnkit.importer import load_foreign_model

    marker = tmp_path / "ran"
    writes = pickle_file(tmp_path, call("os", "mkdir", text(str(marker))), "writes.pkl")
    fetches = pickle_file(tmp_path, call("urllib.request", "urlopen", text(recorder.url)), "fetches.pkl")
    for path in (writes, fetches):
        with pytest.raises(ModelFileError, match="not allowed|could not be loaded"):
            load_foreign_model(path, trust=True)
    assert not marker.exists() and recorder.seen == []


def test_runaway_file_is_stopped_by_the_limits(tmp_path, monkeypatch):
    """A pickle that allocates without end is stopped by the child's memory limit, with one clear line."""
    from churnkit import sandbox
    from churnkit.exceptions import ModelFileError
    from churnkit.importer import load_foreign_model

    real = sandbox.run_isolated
    monkeypatch.setattr(sandbox, "run_isolated", lambda *a, **k: real(*a, **(k | {"memory_bytes": 1200 * 2**20})))
    huge = call("builtins", "bytearray", b"J" + (1 << 31).to_bytes(4, "little", signed=False)[:3] + b"\x7f")
    path = pickle_file(tmp_path, huge)
    with pytest.raises(ModelFileError, match="memory|limit|could not be loaded"):
        load_foreign_model(path, trust=True)


def test_payload_bytes_are_live(tmp_path):
    """The same os.mkdir bytes do create the marker when plain pickle loads them: the tests above prove something."""
    marker = tmp_path / "ran"
    pickle.loads(PROTO4 + call("sklearn", "os.mkdir", text(str(marker))) + STOP)  # noqa: S301
    assert marker.exists()
    marker.rmdir()
    pickle.loads(PROTO4 + call("numpy._core._methods", "pickle._loads",  # noqa: S301
                               blob(b"cos\nmkdir\n(V" + str(marker).encode() + b"\ntR.")) + STOP)
    assert marker.exists()
    marker.rmdir()
    pickle.loads(PROTO4 + call("numpy._core.numeric", "builtins.getattr", global4("sklearn", "os"),  # noqa: S301
                               text("mkdir")) + MARK + text(str(marker)) + TUPLE + REDUCE + STOP)
    assert marker.exists()


def test_benign_joblib_round_trip_through_the_child(f, tmp_path):  # noqa: F811
    """A real child converts a real model; the parent never unpickles it."""
    from churnkit.importer import load_foreign_model
    from churnkit.data import read_table

    model = joblib.load(f["hgb"])
    foreign = load_foreign_model(f["hgb"], sample=read_table(f["sample"]))
    assert foreign.scan.safe and "child process" in foreign.isolation
    from churnkit.importer import read_sample

    X = read_sample(f["sample"], foreign.columns).X
    assert abs(foreign.pipeline.predict_proba(X)[:, 1] - model.predict_proba(X)[:, 1]).max() == 0
    assert io  # noqa: B018


def test_decompression_bomb_is_refused_before_it_is_expanded(tmp_path, monkeypatch):
    from churnkit.exceptions import ModelFileError
    from churnkit.importer import load_foreign_model

    path = tmp_path / "bomb.joblib"
    joblib.dump(bytes(8 * 2**20), path, compress=("zlib", 9))  # 8 MB of zeros, a few KB on disk
    assert path.stat().st_size < 64 * 2**10
    monkeypatch.setenv("CHURNKIT_MAX_MODEL_BYTES", str(2**20))
    with pytest.raises(ModelFileError, match="decompresses to more than 1048576 bytes"):
        load_foreign_model(path)
