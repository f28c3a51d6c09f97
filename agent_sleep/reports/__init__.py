"""Reports across sleep cycles: what every run of an agent did, over time, in one document.

:func:`~agent_sleep.reports.collect.collect_report` reads the run tables and the registry into one
typed :class:`~agent_sleep.reports.model.Report` (runs with seconds per stage, each skill's target
metric, the gate's deltas with their confidence intervals, guard scores, the deployment timeline with
rollbacks, selection counts); :func:`~agent_sleep.reports.formats.render` writes it as JSON (the model
dumped), Markdown, or one self-contained HTML page with plots. ``agent-sleep report`` is the CLI.

Why a package of its own, apart from ``consolidation/report.py``: that one describes a single run and
is written into the run's folder as the run ends; this one reads many runs back from SQL at any time,
including runs still going, and never writes to the database. Names load on first use.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    from agent_sleep.reports.collect import collect_report
    from agent_sleep.reports.formats import FORMATS, format_for, render
    from agent_sleep.reports.model import AgentReport, Report

_LAZY = {
    "AgentReport": "agent_sleep.reports.model",
    "FORMATS": "agent_sleep.reports.formats",
    "Report": "agent_sleep.reports.model",
    "collect_report": "agent_sleep.reports.collect",
    "format_for": "agent_sleep.reports.formats",
    "render": "agent_sleep.reports.formats",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'agent_sleep.reports' has no attribute {name!r}")
    value = getattr(import_module(module), name)
    globals()[name] = value
    return value


__all__ = sorted(_LAZY)
