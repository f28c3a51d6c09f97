"""The three ways a report is written, and which one a file name asks for.

``json`` is the :class:`~.model.Report` dumped as it is, on one line (computed sections included, times
in ISO 8601 UTC to the second); ``md`` and ``html`` render the same model (:mod:`.markdown`, :mod:`.page`). Only ``html`` loads
matplotlib, so the other two stay quick.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal, get_args

from agent_sleep.errors import InvalidInputError
from agent_sleep.reports.model import Report

__all__ = ["FORMATS", "Format", "format_for", "render"]

Format = Literal["html", "md", "json"]
FORMATS: tuple[str, ...] = get_args(Format)
_SUFFIXES = {".html": "html", ".htm": "html", ".md": "md", ".markdown": "md", ".json": "json"}


def format_for(path: str | Path | None, default: Format = "md") -> Format:
    """The format a file name implies by its suffix (``default`` without a file; an unknown suffix is an error)."""
    if path is None:
        return default
    suffix = Path(path).suffix.lower()
    if suffix not in _SUFFIXES:
        raise InvalidInputError(f"cannot tell the report format from {str(path)!r}: name it .html, .md or .json, "
                                "or give --format")  # fmt: skip
    return _SUFFIXES[suffix]  # type: ignore[return-value]


def render(report: Report, fmt: str) -> str:
    """``report`` as text in ``fmt`` (one of :data:`FORMATS`)."""
    if fmt == "json":
        return report.model_dump_json() + "\n"  # one line: the CLI's "--json is one JSON object"
    if fmt == "md":
        from agent_sleep.reports.markdown import render_markdown

        return render_markdown(report)
    if fmt == "html":
        from agent_sleep.reports.page import render_html

        return render_html(report)
    raise InvalidInputError(f"report format must be one of {', '.join(FORMATS)}, got {fmt!r}")
