"""UTC time stamps in the kit's formats: one home, so records, file names and the index agree."""

from __future__ import annotations

from datetime import UTC, datetime


def utcnow() -> str:
    """Now as ISO 8601 with milliseconds and a ``Z`` (decision records, capture lines)."""
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def iso_seconds(when: datetime | None = None) -> str:
    """``2026-12-01T10:13:00Z`` (history entries, run times in the index)."""
    return (when or datetime.now(UTC)).astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def iso_from_ms(ms: int | None) -> str | None:
    """An epoch-milliseconds time (MLflow's) as :func:`iso_seconds`, or None."""
    return iso_seconds(datetime.fromtimestamp(ms / 1000, UTC)) if ms else None


def iso_from_text(text: str | None) -> str | None:
    """Any ISO 8601 text normalised to :func:`iso_seconds`, or None for empty text."""
    return iso_seconds(datetime.fromisoformat(text)) if text else None


def file_stamp(when: datetime | None = None) -> str:
    """``20261201T101300Z``: sortable and safe in file names."""
    return (when or datetime.now(UTC)).astimezone(UTC).strftime("%Y%m%dT%H%M%SZ")


def human_minutes(when: datetime | None = None) -> str:
    """``2026-12-01 10:13 UTC`` for pages people read."""
    return (when or datetime.now(UTC)).astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC")
