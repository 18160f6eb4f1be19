"""A notebook's declared parameters, and checking what a user passes against them.

The ``parameters`` cell holds literal assignments with a comment each; a value passed to ``churnkit
run``/``pipeline`` that the notebook does not declare, that has the wrong type, or that looks like a
credential is refused before any kernel starts (papermill itself only warns).
"""

from __future__ import annotations

import ast
import io
import json
import os
import tokenize
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from churnkit.exceptions import NotebookNotFoundError, ParameterError
from churnkit.runner import secrets

SECRET_WORDS = ("token", "secret", "password", "passwd", "key", "credential")


def notebooks_dir() -> Path:
    """Where the kit's notebooks live: ``CHURNKIT_NOTEBOOKS_DIR`` or ``notebooks/`` beside the package."""
    env = os.environ.get("CHURNKIT_NOTEBOOKS_DIR")
    return Path(env) if env else Path(__file__).resolve().parents[2] / "notebooks"


def find_notebook(name: str | os.PathLike) -> Path:
    """Resolve ``01-train``, ``01-train.ipynb``, ``train`` or a path to a notebook file."""
    p = Path(name)
    if p.suffix == ".ipynb" and p.exists():
        return p.resolve()
    folder = notebooks_dir()
    available = sorted(q.stem for q in folder.glob("[0-9][0-9]-*.ipynb"))
    stem = p.stem if p.suffix == ".ipynb" else str(name)
    for cand in available:
        if stem == cand or cand.split("-", 1)[1] == stem:
            return folder / f"{cand}.ipynb"
    raise NotebookNotFoundError(f"no notebook named {str(name)!r}; available: {', '.join(map(repr, available))}")


@dataclass(frozen=True)
class Parameter:
    name: str
    default: Any
    comment: str
    source: str

    @property
    def type_name(self) -> str:
        return type(self.default).__name__


def _parameters_cell(nb: dict, path: Path) -> dict:
    tagged = [c for c in nb["cells"] if "parameters" in c.get("metadata", {}).get("tags", [])]
    if len(tagged) != 1:
        raise ParameterError(f"notebook {str(path)!r} has {len(tagged)} cells tagged 'parameters'; it needs exactly one")
    return tagged[0]


def notebook_parameters(notebook: str | os.PathLike) -> list[Parameter]:
    """The notebook's declared parameters: name, literal default, and the comment on its line."""
    path = find_notebook(notebook)
    nb = json.loads(path.read_text())
    cell = _parameters_cell(nb, path)
    source = "".join(cell["source"]) if isinstance(cell["source"], list) else cell["source"]
    try:
        body = ast.parse(source).body
    except SyntaxError as exc:
        raise ParameterError(f"the parameters cell of {path.name} is not valid Python (line {exc.lineno}: {exc.msg}); "
                             "it holds literal assignments only, e.g. seed = 0") from None
    comments: dict[int, str] = {}
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.COMMENT:
            comments[tok.start[0]] = tok.string.lstrip("#").strip()
    params = []
    for node in body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            try:
                default = ast.literal_eval(node.value)
            except (ValueError, TypeError):
                raise ParameterError(f"parameter {node.targets[0].id!r} in {path.name} is not a literal "
                                     f"({ast.get_source_segment(source, node.value)!r}); use a literal default",
                                     name=node.targets[0].id) from None
            params.append(Parameter(node.targets[0].id, default, comments.get(node.lineno, ""), ast.get_source_segment(source, node.value)))
    return params


def looks_secret(name: str) -> bool:
    low = name.lower()
    return any(w in low for w in SECRET_WORDS)


def _coerce(raw: Any, default: Any, name: str) -> Any:
    if not isinstance(raw, str):
        value = raw
    elif isinstance(default, bool):
        low = raw.strip().lower()
        if low not in ("true", "false", "1", "0", "yes", "no"):
            raise ParameterError(f"parameter {name!r} expects true/false, got {raw!r}", name=name)
        value = low in ("true", "1", "yes")
    elif isinstance(default, int):
        try:
            value = int(raw)
        except ValueError:
            raise ParameterError(f"parameter {name!r} expects an integer, got {raw!r}", name=name) from None
    elif isinstance(default, float):
        try:
            value = float(raw)
        except ValueError:
            raise ParameterError(f"parameter {name!r} expects a number, got {raw!r}", name=name) from None
    elif isinstance(default, list):
        text = raw.strip()
        if text.startswith("["):
            try:
                value = json.loads(text)
            except json.JSONDecodeError:
                raise ParameterError(f"parameter {name!r} expects a JSON list or comma-separated names, got {raw!r}", name=name) from None
        else:
            value = [v.strip() for v in text.split(",") if v.strip()]
    else:
        value = raw
    if default is not None and not isinstance(value, type(default)) and not (isinstance(default, float) and isinstance(value, int)):
        raise ParameterError(
            f"parameter {name!r} expects {type(default).__name__} (default {default!r}), got {value!r}", name=name
        )
    return value


def check_parameters(parameters: dict[str, Any], declared: list[Parameter], notebook: str = "") -> dict[str, Any]:
    """Validate and type parameters against the notebook's declarations, before any kernel starts.

    Raises
    ------
    ParameterError
        Unknown name (lists the valid ones), a value of the wrong type, or a name or value that looks
        like a credential (credentials come from the environment or the cloud SDK's default chain).
    """
    by_name = {p.name: p for p in declared}
    out = {}
    for name, raw in parameters.items():
        if looks_secret(name):
            raise ParameterError(
                f"parameter {name!r} looks like a credential; credentials are never notebook parameters: "
                "set them in the environment or the cloud SDK's default credential chain",
                name=name,
            )
        if name not in by_name:
            valid = sorted(by_name)
            where = f" of {notebook}" if notebook else ""
            raise ParameterError(f"unknown parameter {name!r}; valid parameters{where}: {', '.join(valid)}", name=name, valid=valid)
        out[name] = _coerce(raw, by_name[name].default, name)
        text = out[name] if isinstance(out[name], str) else json.dumps(out[name])
        found = secrets.find_secrets(text)
        if found:
            raise ParameterError(
                f"parameter {name!r} has a value that looks like a credential ({found[0].kind}): "
                f"{secrets.redact_text(text)!r}; credentials are never notebook parameters: set them in the "
                "environment or the cloud SDK's default credential chain",
                name=name,
            )
    return out


def split_parameters(parameters: dict[str, Any], steps: tuple[str, ...]) -> dict[str, dict[str, Any]]:
    """Route each pipeline parameter to every step that declares it; unknown names are errors."""
    declared = {s: notebook_parameters(s) for s in steps}
    out: dict[str, dict[str, Any]] = {s: {} for s in steps}
    valid = sorted({p.name for ps in declared.values() for p in ps})
    for name, value in parameters.items():
        takers = [s for s in steps if any(p.name == name for p in declared[s])]
        if looks_secret(name) or not takers:
            check_parameters({name: value}, [p for ps in declared.values() for p in ps], "the pipeline")
            raise ParameterError(f"unknown parameter {name!r}; valid: {', '.join(valid)}", name=name, valid=valid)
        for s in takers:
            out[s].update(check_parameters({name: value}, declared[s], s))
    return out
