"""Credential patterns: find them in text and notebooks, and redact them with a visible marker.

Credentials reach churnkit from the environment or the cloud SDK's default chain, never as notebook
parameters. A cell can still print one by mistake (an environment dump, a connection string in an
exception); the runner passes every write of an output notebook through :func:`redact_notebook_json`,
so neither the file in ``runs/`` nor the MLflow artifact ever holds the secret. A redacted value is
replaced by ``[REDACTED:<kind>]`` so a reviewer sees that something was removed and what it was.
"""

from __future__ import annotations

import functools
import json
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

MARKER = "[REDACTED:{kind}]"
_NOT_REDACTED = r"(?!\[REDACTED:)"
# Output payloads that are base64 bytes, not text: never scanned (and never hold a typed secret).
_BINARY_MIME = ("image/png", "image/jpeg", "image/gif", "image/webp", "application/pdf")


@dataclass(frozen=True)
class Pattern:
    """One credential shape: ``kind`` names it in the marker; ``group`` is the part that is secret.

    The rest of the match (``AccountKey=``, ``Bearer``, ``password =``) stays readable so a reviewer
    can tell which setting leaked.
    """

    kind: str
    regex: re.Pattern
    group: int = 0


def _p(kind: str, pattern: str, group: int = 0, flags: int = 0) -> Pattern:
    return Pattern(kind, re.compile(pattern, flags), group)


# Specific shapes first, generic assignments last (a marker never matches a later pattern).
PATTERNS: tuple[Pattern, ...] = (
    _p("private-key", r"-----BEGIN (?:[A-Z0-9]+ )*PRIVATE KEY-----"
                      r"(?:[\s\S]{0,20000}?-----END (?:[A-Z0-9]+ )*PRIVATE KEY-----|[A-Za-z0-9+/=\s\\]*)"),
    _p("aws-access-key", r"(?<![A-Z0-9])(?:AKIA|ASIA|ABIA|ACCA|AGPA|AIDA|AIPA|ANPA|ANVA|APKA|AROA|ASCA)"
                         r"[A-Z0-9]{16}(?![A-Z0-9])"),
    _p("aws-secret-key", r"(aws_?secret_?access_?key|aws_?secret_?key|secret_?access_?key)"
                         r"([\"']?\s*[:=]\s*[\"']?)" + _NOT_REDACTED + r"([A-Za-z0-9/+=]{16,})", 3, re.IGNORECASE),
    _p("azure-storage-key", r"((?:Account|SharedAccess)Key=)([A-Za-z0-9+/]{20,}={0,2})", 2, re.IGNORECASE),
    _p("azure-sas", r"((?:^|[?&;\s\"'])sig=)" + _NOT_REDACTED + r"([A-Za-z0-9%+/=]{10,})", 2, re.IGNORECASE),
    _p("gcp-api-key", r"(?<![A-Za-z0-9_-])AIza[0-9A-Za-z_-]{35}(?![A-Za-z0-9_-])"),
    _p("github-token", r"\b(?:gh[pousr]_[A-Za-z0-9]{36,}|github_pat_[A-Za-z0-9_]{22,})"),
    _p("slack-token", r"\bxox[abprs]-[A-Za-z0-9-]{10,}"),
    _p("jwt", r"\beyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}"),
    _p("bearer-token", r"(\bbearer\s+)" + _NOT_REDACTED + r"([A-Za-z0-9\-._~+/]{16,}=*)", 2, re.IGNORECASE),
    _p("basic-auth", r"(authorization[\"']?\s*[:=]\s*[\"']?basic\s+)([A-Za-z0-9+/]{12,}={0,2})", 2, re.IGNORECASE),
    _p("url-password", r"\b([a-z][a-z0-9+.-]*://[^\s:/@\"'<>]+:)" + _NOT_REDACTED + r"([^\s@/\"'<>]+)(?=@)", 2, re.IGNORECASE),
    _p("password", r"\b([A-Za-z_]*(?:password|passwd|pwd))([\"']?\s*[:=]\s*)(?![\s\"'])" + _NOT_REDACTED
                   + r"([^\s\"',;&)\]}]+)", 3, re.IGNORECASE),
    _p("password", r"\b([A-Za-z_]*(?:password|passwd|pwd))([\"']?\s*[:=]\s*)([\"'])" + _NOT_REDACTED
                   + r"([^\"'\n]+)\3", 4, re.IGNORECASE),
    _p("secret-assignment", r"\b([A-Za-z_]*(?:secret|token|api_?key|access_?key|private_?key|credential)s?)"
                            r"([\"']?\s*[:=]\s*)([\"'])" + _NOT_REDACTED + r"([^\"'\n]{8,})\3", 4, re.IGNORECASE),
)


@dataclass(frozen=True)
class Finding:
    """A credential found in a text: its kind and the character span of the secret part."""

    kind: str
    start: int
    end: int


def find_secrets(text: str) -> list[Finding]:
    """Every credential-shaped value in ``text`` (spans refer to ``text`` as given).

    Parameters
    ----------
    text : str
        Any text: a parameter value, a cell output, a whole notebook as JSON.
    """
    found = []
    for pat in PATTERNS:
        for m in pat.regex.finditer(text):
            found.append(Finding(pat.kind, m.start(pat.group), m.end(pat.group)))
    return sorted(found, key=lambda f: f.start)


def redact_text(text: str, counts: Counter | None = None) -> str:
    """``text`` with every credential replaced by ``[REDACTED:<kind>]``; idempotent.

    Parameters
    ----------
    text : str
    counts : Counter, optional
        Incremented by one per redaction, keyed by kind.
    """
    new, found = _redact_once(text)
    if counts is not None:
        counts.update(dict(found))
    return new


@functools.lru_cache(maxsize=4096)
def _redact_once(text: str) -> tuple[str, tuple[tuple[str, int], ...]]:
    """Redact one string, remembered: papermill saves the whole notebook after every cell, and the
    strings of earlier cells are the same each time, so each is scanned once, not once per save."""
    counts: Counter = Counter()
    for pat in PATTERNS:
        def _sub(m: re.Match, pat: Pattern = pat) -> str:
            counts[pat.kind] += 1
            whole, start, end = m.group(0), m.start(pat.group) - m.start(), m.end(pat.group) - m.start()
            return whole[:start] + MARKER.format(kind=pat.kind) + whole[end:]

        text = pat.regex.sub(_sub, text)
    return text, tuple(counts.items())


def _is_split_text(items: list) -> bool:
    """A multi-line string stored as a list of lines (nbformat's on-disk form for source and text)."""
    return bool(items) and all(isinstance(s, str) for s in items) and all(s.endswith("\n") for s in items[:-1])


def _redact(obj: Any, counts: Counter) -> Any:
    if isinstance(obj, str):
        return redact_text(obj, counts)
    if isinstance(obj, list):
        if len(obj) > 1 and _is_split_text(obj):
            joined = "".join(obj)
            new = redact_text(joined, counts)
            return obj if new == joined else new.splitlines(keepends=True)
        return [_redact(v, counts) for v in obj]
    if isinstance(obj, dict):
        return {k: v if k in _BINARY_MIME else _redact(v, counts) for k, v in obj.items()}
    return obj


def redact_notebook(nb: dict) -> tuple[dict, Counter]:
    """A copy of the notebook ``nb`` (cells, outputs, metadata) with every credential redacted.

    Returns the new notebook and the number of redactions by kind. Image payloads are not scanned.
    """
    counts: Counter = Counter()
    return _redact(nb, counts), counts


def redact_notebook_json(buf: str) -> tuple[str, Counter]:
    """Redact a serialized notebook; returns ``buf`` unchanged (byte for byte) when nothing was found.

    A text that is not JSON is redacted as plain text.
    """
    try:
        nb = json.loads(buf)
    except ValueError:
        counts: Counter = Counter()
        return redact_text(buf, counts), counts
    new, counts = redact_notebook(nb)
    if not counts:
        return buf, counts
    return json.dumps(new, indent=1, sort_keys=True, ensure_ascii=False) + "\n", counts


def redact_file(path: str | Path) -> Counter:
    """Redact a notebook (or any text file) in place; returns the redactions by kind."""
    path = Path(path)
    buf = path.read_text(encoding="utf-8")
    new, counts = redact_notebook_json(buf)
    if new != buf:
        path.write_text(new, encoding="utf-8")
    return counts


def describe(counts: Counter) -> str:
    """``"2 aws-access-key, 1 password"`` for messages and tags."""
    return ", ".join(f"{n} {kind}" for kind, n in sorted(counts.items()))
