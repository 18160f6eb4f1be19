"""What a model file would import when loaded, found without loading it.

Unpickling runs code: every global a pickle names is imported and may be called. Before churnkit
loads a foreign ``.joblib``/``.pkl`` file it lists every global the file names and refuses any
outside :data:`ALLOWED_MODULES` (scikit-learn, NumPy, SciPy, pandas, the boosting libraries and a few
named builtins), naming the offending global.

The walk is static: :mod:`pickletools` decodes each opcode, a small symbolic stack follows what is
built (nothing is imported, nothing called). joblib writes raw array bytes *inside* its pickle
stream after each ``NumpyArrayWrapper``; the walk skips them using the wrapper's declared shape and
dtype, and follows the nested pickle of object arrays, so the globals after the first array are
seen too. picklescan (the scanner the Hugging Face Hub runs) classifies the globals found: its
"dangerous" verdict (``os.system``, ``builtins.eval``, ...) is reported with ours. picklescan alone
stops at joblib's first raw array (a parse error it reports as a partial scan), which would let a
payload placed after an array through; hence the walk.

``.skops`` files list their types through :func:`skops.io.get_untrusted_types`; the same allow-list
decides which of them may be trusted.
"""

from __future__ import annotations

import io
import math
import pickletools
from dataclasses import dataclass, field

from churnkit.exceptions import ModelFileError

#: Packages whose classes and functions a model pickle may name (module prefix match).
ALLOWED_PACKAGES = ("sklearn", "numpy", "scipy", "pandas", "xgboost", "lightgbm")
#: Exact modules and names outside those packages that real scikit-learn pickles need.
ALLOWED_NAMES = {
    "joblib.numpy_pickle": {"NumpyArrayWrapper"},
    "builtins": {"slice", "set", "frozenset", "complex", "bytearray", "dict", "list", "tuple", "int", "float",
                 "str", "bytes", "bool", "range", "object"},
    "copyreg": {"_reconstructor", "__newobj__"},
    "collections": {"OrderedDict", "defaultdict", "Counter", "deque"},
    "_codecs": {"encode"},
    "datetime": {"datetime", "date", "timedelta", "timezone"},
}
#: Inside the allowed packages: modules and names that read or write files, reach the network, run
#: processes or code (refused even though their package is allowed).
DENIED_SUBMODULES = ("numpy.testing", "numpy.f2py", "numpy.distutils", "numpy.ctypeslib", "numpy.lib.npyio",
                     "numpy.lib._npyio_impl", "numpy.lib._datasource", "numpy.lib.format", "numpy.lib.utils",
                     "numpy._core.memmap", "numpy.core.memmap", "numpy.compat", "numpy.random._examples",
                     "sklearn.datasets", "sklearn.utils._testing", "sklearn.externals", "sklearn.utils._show_versions",
                     "scipy.io", "scipy._lib._testutils", "scipy.weave", "scipy.datasets", "pandas.io", "pandas.util",
                     "pandas._testing", "pandas.core.computation", "xgboost.tracker", "xgboost.rabit",
                     "xgboost.collective", "xgboost.testing", "lightgbm.libpath")
DENIED_NAMES = {"load", "loads", "save", "savez", "savez_compressed", "savetxt", "loadtxt", "genfromtxt", "fromfile",
                "tofile", "memmap", "open", "eval", "exec", "compile", "system", "popen", "read_pickle", "to_pickle",
                "read_csv", "read_parquet", "read_json", "read_sql", "DataSource", "query", "__import__",
                "get_include", "show_config", "run_module", "runstring", "load_library"}
#: Double-underscore names allowed inside the packages: NumPy's random-generator pickling constructors.
DUNDER_CONSTRUCTORS = ("__bit_generator_ctor", "__generator_ctor", "__randomstate_ctor", "__pyx_unpickle_SeedSequence")
MAX_DEPTH = 8  # nested object-array pickles


@dataclass
class ScanVerdict:
    """What a model file names: every global, those refused, and the scanner's summary.

    ``safe`` is True when every global is inside the allow-list. ``refused`` lists
    ``module.name`` strings outside it, ``dangerous`` those picklescan marks dangerous.
    """

    path: str
    format: str  # "joblib" | "pickle" | "skops"
    globals: list[str] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)
    dangerous: list[str] = field(default_factory=list)
    scanner: str = ""

    @property
    def safe(self) -> bool:
        return not self.refused

    def summary(self) -> str:
        if self.safe:
            return f"clean: {len(self.globals)} globals, all inside the allow-list ({self.scanner})"
        return (f"refused: {len(self.refused)} of {len(self.globals)} globals outside the allow-list: "
                f"{', '.join(self.refused[:10])}" + (f"; dangerous: {', '.join(self.dangerous[:10])}" if self.dangerous else "")
                + f" ({self.scanner})")

    def to_dict(self) -> dict:
        return {"format": self.format, "safe": self.safe, "globals": len(self.globals), "refused": self.refused,
                "dangerous": self.dangerous, "scanner": self.scanner}


def allowed(qualname: str) -> bool:
    """True when the global or type ``module.name`` is inside the allow-list (see :func:`allowed_global`)."""
    module, _, name = qualname.rpartition(".")
    return allowed_global(module, name)


def allowed_global(module: str, name: str) -> bool:
    """True when the global ``name`` of ``module`` (as a pickle names it) is inside the allow-list."""
    if not module or not name or "unknown" in (module, name):
        return False
    if name in ALLOWED_NAMES.get(module, ()):
        return True
    top = module.split(".")[0]
    if top not in ALLOWED_PACKAGES:
        return False
    if any(module == d or module.startswith(d + ".") for d in DENIED_SUBMODULES):
        return False
    # protocol 4 names may be dotted paths through a class ("ndarray.tofile"): every part is judged
    parts = name.split(".")
    return not any(p in DENIED_NAMES or (p.startswith("__") and p not in DUNDER_CONSTRUCTORS) for p in parts)


def _picklescan_dangerous(found: set[tuple[str, str]]) -> tuple[list[str], str]:
    from importlib.metadata import version

    from picklescan.scanner import SafetyLevel, _build_scan_result_from_raw_globals

    result = _build_scan_result_from_raw_globals(found, "model")
    dangerous = sorted(f"{g.module}.{g.name}" for g in result.globals if g.safety == SafetyLevel.Dangerous)
    return dangerous, f"picklescan {version('picklescan')} + churnkit joblib-aware opcode walk"


# --------------------------------------------------------------------------------------------------
# The static walk
# --------------------------------------------------------------------------------------------------

class _Global:
    __slots__ = ("module", "name")

    def __init__(self, module, name):
        self.module, self.name = module, name

    def qualname(self) -> str:
        return f"{self.module}.{self.name}"


class _Obj:
    """Something the pickle would build by calling ``func(*args)``; ``state`` is what BUILD sets."""

    __slots__ = ("args", "func", "state")

    def __init__(self, func, args):
        self.func, self.args, self.state = func, args, None


_MARK = object()


def _unhashable_safe_dict(pairs):
    out = {}
    for k, v in pairs:
        try:
            out[k] = v
        except TypeError:
            pass
    return out


def _array_bytes(state, where: str) -> tuple[int, bool, int | None]:
    """(bytes of raw data, has objects, alignment) of a joblib ``NumpyArrayWrapper`` from its BUILD state."""
    import numpy as np

    if not isinstance(state, dict):
        raise ModelFileError(f"{where}: a joblib array header has no readable state; the file is corrupted or "
                             "not written by joblib.dump")
    dtype, shape = state.get("dtype"), state.get("shape")
    if not isinstance(shape, tuple) or not all(isinstance(s, int) and s >= 0 for s in shape):
        raise ModelFileError(f"{where}: a joblib array declares shape {shape!r}; the file is corrupted")
    if not (isinstance(dtype, _Obj) and isinstance(dtype.func, _Global) and dtype.func.name == "dtype"
            and dtype.args and isinstance(dtype.args[0], str)):
        raise ModelFileError(f"{where}: a joblib array declares no plain dtype; the file is corrupted")
    st = dtype.state if isinstance(dtype.state, tuple) else ()
    try:
        base = np.dtype(dtype.args[0])  # a type code such as 'f8', 'U5', 'O8', 'V24': parsing it runs nothing
    except TypeError as exc:
        raise ModelFileError(f"{where}: a joblib array has dtype {dtype.args[0]!r} ({exc}); the file is corrupted") from exc
    itemsize = st[5] if len(st) > 5 and isinstance(st[5], int) and st[5] > 0 else base.itemsize
    flags = st[7] if len(st) > 7 and isinstance(st[7], int) else 0
    has_objects = base.hasobject or bool(flags & 1)
    align = state.get("numpy_array_alignment_bytes")
    return math.prod(shape) * itemsize, has_objects, align if isinstance(align, int) else None


def _read_exact(fh, n: int, where: str) -> None:
    if n < 0 or len(fh.read(n)) != n:
        raise ModelFileError(f"{where}: the file ends inside an array's data; it is truncated: copy or export it again")


def _walk(fh, found: set, where: str, depth: int = 0) -> None:
    """Walk one pickle (up to its STOP) collecting globals; skip joblib's raw arrays as joblib would read them."""
    if depth > MAX_DEPTH:
        raise ModelFileError(f"{where}: object arrays nested more than {MAX_DEPTH} deep; refusing to walk further")
    stack: list = []
    marks: list[int] = []
    memo: dict = {}

    def pop_mark():
        if not marks:
            raise ModelFileError(f"{where}: the pickle pops a mark it never set; the file is corrupted")
        k = marks.pop()
        items = stack[k:]
        del stack[k:]
        return items

    def pop():
        if not stack:
            raise ModelFileError(f"{where}: the pickle pops an empty stack; the file is corrupted")
        return stack.pop()

    saw_stop = False
    try:
        for op, arg, pos in pickletools.genops(fh):
            name = op.name
            if name in ("PROTO", "FRAME"):
                continue
            if name == "STOP":
                saw_stop = True
                break
            if name == "MARK":
                marks.append(len(stack))
            elif name == "POP":
                if stack:
                    stack.pop()
                elif marks:
                    marks.pop()
            elif name == "POP_MARK":
                pop_mark()
            elif name == "DUP":
                stack.append(stack[-1] if stack else None)
            elif name in ("GLOBAL", "INST"):
                module, _, gname = str(arg).partition(" ")
                found.add((module, gname))
                g = _Global(module, gname)
                stack.append(g if name == "GLOBAL" else _Obj(g, tuple(pop_mark())))
            elif name == "STACK_GLOBAL":
                gname, module = pop(), pop()
                if not isinstance(module, str) or not isinstance(gname, str):
                    found.add(("unknown", "unknown"))  # computed at load time: cannot be checked, refused
                    stack.append(_Global("unknown", "unknown"))
                else:
                    found.add((module, gname))
                    stack.append(_Global(module, gname))
            elif name in ("PERSID", "BINPERSID", "EXT1", "EXT2", "EXT4", "NEXT_BUFFER", "READONLY_BUFFER"):
                found.add(("unknown", name.lower()))  # resolved by the loader, not the file: refused
                stack.append(None)
            elif name == "REDUCE":
                args, func = pop(), pop()
                stack.append(_Obj(func, args if isinstance(args, tuple) else ()))
            elif name == "NEWOBJ":
                args, cls = pop(), pop()
                stack.append(_Obj(cls, args if isinstance(args, tuple) else ()))
            elif name == "NEWOBJ_EX":
                _kw, args, cls = pop(), pop(), pop()
                stack.append(_Obj(cls, args if isinstance(args, tuple) else ()))
            elif name == "OBJ":
                items = pop_mark()
                stack.append(_Obj(items[0] if items else None, tuple(items[1:])))
            elif name == "BUILD":
                state = pop()
                target = stack[-1] if stack else None
                if isinstance(target, _Obj):
                    target.state = state
                    func = target.func
                    if isinstance(func, _Global) and func.module == "joblib.numpy_pickle" \
                            and func.name == "NumpyArrayWrapper":
                        stack.pop()
                        size, has_objects, align = _array_bytes(state, where)
                        if has_objects:
                            _walk(fh, found, where, depth + 1)
                        else:
                            if align is not None:
                                pad = fh.read(1)
                                if len(pad) != 1:
                                    raise ModelFileError(f"{where}: the file ends inside an array header; it is truncated")
                                _read_exact(fh, pad[0], where)
                            _read_exact(fh, size, where)
                        stack.append(None)  # the array joblib would put there
            elif name in ("EMPTY_TUPLE",):
                stack.append(())
            elif name in ("EMPTY_LIST",):
                stack.append([])
            elif name in ("EMPTY_DICT",):
                stack.append({})
            elif name in ("EMPTY_SET",):
                stack.append(set())
            elif name == "TUPLE":
                stack.append(tuple(pop_mark()))
            elif name in ("TUPLE1", "TUPLE2", "TUPLE3"):
                n = int(name[-1])
                items = [pop() for _ in range(n)][::-1]
                stack.append(tuple(items))
            elif name == "LIST":
                stack.append(list(pop_mark()))
            elif name == "DICT":
                items = pop_mark()
                stack.append(_unhashable_safe_dict(zip(items[::2], items[1::2])))
            elif name == "FROZENSET":
                pop_mark()
                stack.append(frozenset())
            elif name == "APPEND":
                v = pop()
                if stack and isinstance(stack[-1], list):
                    stack[-1].append(v)
            elif name == "APPENDS":
                items = pop_mark()
                if stack and isinstance(stack[-1], list):
                    stack[-1].extend(items)
            elif name == "SETITEM":
                v, k = pop(), pop()
                if stack and isinstance(stack[-1], dict):
                    stack[-1].update(_unhashable_safe_dict([(k, v)]))
            elif name == "SETITEMS":
                items = pop_mark()
                if stack and isinstance(stack[-1], dict):
                    stack[-1].update(_unhashable_safe_dict(zip(items[::2], items[1::2])))
            elif name == "ADDITEMS":
                pop_mark()
            elif name in ("PUT", "BINPUT", "LONG_BINPUT"):
                memo[arg] = stack[-1] if stack else None
            elif name == "MEMOIZE":
                memo[len(memo)] = stack[-1] if stack else None
            elif name in ("GET", "BINGET", "LONG_BINGET"):
                if arg not in memo:
                    raise ModelFileError(f"{where}: the pickle reads memo slot {arg!r} it never wrote; the file is corrupted")
                stack.append(memo[arg])
            elif name in ("NONE",):
                stack.append(None)
            elif name == "NEWTRUE":
                stack.append(True)
            elif name == "NEWFALSE":
                stack.append(False)
            elif op.arg is not None and len(op.stack_after) == 1 and not op.stack_before:
                stack.append(arg)  # a literal: int, float, str, bytes
            else:
                raise ModelFileError(f"{where}: unsupported pickle opcode {name} at byte {pos}; the file is corrupted")
    except ModelFileError:
        raise
    except (ValueError, EOFError, KeyError, IndexError, UnicodeDecodeError, OverflowError) as exc:
        raise ModelFileError(f"{where}: not a readable pickle ({type(exc).__name__}: {exc}); the file is corrupted, "
                             "truncated, or not a model saved with joblib.dump / pickle.dump") from exc
    if not saw_stop:
        raise ModelFileError(f"{where}: the pickle stream ends before its STOP opcode; the file is truncated: "
                             "copy or export it again")


def decompress_joblib(raw: bytes, where: str) -> tuple[bytes, str]:
    """The pickle bytes of a joblib file (decompressed when joblib.dump compressed it) and the format name."""
    from joblib.numpy_pickle_utils import _detect_compressor

    kind = _detect_compressor(io.BytesIO(raw))
    if kind == "not-compressed":
        return raw, "joblib" if b"joblib.numpy_pickle" in raw[:4096] else "pickle"
    if kind == "compat":
        raise ModelFileError(f"{where}: written by joblib older than 0.10 (arrays in companion files); load it with "
                             "that joblib and save it again with joblib.dump")
    from joblib.numpy_pickle import _validate_fileobject_and_memmap

    try:
        with _validate_fileobject_and_memmap(io.BytesIO(raw), where, None) as (fobj, _):
            return fobj.read(), f"joblib ({kind})"
    except Exception as exc:
        raise ModelFileError(f"{where}: a {kind}-compressed joblib file that cannot be decompressed ({exc}); "
                             "it is truncated or corrupted") from exc


def scan_pickle_bytes(data: bytes, where: str, fmt: str = "pickle") -> ScanVerdict:
    """Every global the pickle in ``data`` names (joblib arrays skipped), judged against the allow-list."""
    if not data:
        raise ModelFileError(f"{where}: the file is empty; pass a model saved with joblib.dump or pickle.dump")
    if data[:1] != b"\x80" and data[:1] not in (b"(", b"c", b"]", b"}"):
        raise ModelFileError(f"{where}: not a pickle (starts with {data[:8]!r}); pass a .joblib/.pkl model file, "
                             "a .skops file or an MLflow model folder")
    found: set[tuple[str, str]] = set()
    _walk(io.BytesIO(data), found, where)
    names = sorted(f"{m}.{n}" for m, n in found)
    dangerous, scanner = _picklescan_dangerous(found)
    refused = sorted({f"{m}.{n}" for m, n in found if not allowed_global(m, n)} | set(dangerous))
    return ScanVerdict(path=where, format=fmt, globals=names, refused=refused, dangerous=dangerous, scanner=scanner)


def scan_skops_bytes(data: bytes, where: str) -> ScanVerdict:
    """The types a ``.skops`` file would need trusted, judged against the same allow-list."""
    from importlib.metadata import version

    import skops.io

    try:
        untrusted = skops.io.get_untrusted_types(data=data)
    except Exception as exc:
        raise ModelFileError(f"{where}: not a readable .skops file ({type(exc).__name__}: {exc}); it is truncated or "
                             "corrupted: save it again with skops.io.dump") from exc
    names = sorted(untrusted)
    refused = [t for t in names if not allowed(t)]
    return ScanVerdict(path=where, format="skops", globals=names, refused=refused, dangerous=[],
                       scanner=f"skops {version('skops')} get_untrusted_types")
