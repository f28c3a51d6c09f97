"""How a report writes its numbers and times: one function per kind, shared by Markdown and HTML.

Both views call these, so they show the same digits for the same value (a test compares them).
Accuracies and their changes get three decimals, seconds one, times are UTC to the second.
"""

from __future__ import annotations

from datetime import datetime, timezone

__all__ = ["accuracy", "ci", "delta", "seconds", "when"]


def accuracy(value: float) -> str:
    return f"{value:.3f}"


def delta(value: float) -> str:
    return f"{value:+.3f}"


def ci(low: float, high: float) -> str:
    return f"{low:+.3f} .. {high:+.3f}"


def seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def when(value: datetime | None) -> str:
    """``2026-11-29 06:58:11`` (UTC); ``-`` for none."""
    if value is None:
        return "-"
    value = value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value.astimezone(timezone.utc)
    return value.strftime("%Y-%m-%d %H:%M:%S")
