"""Consolidation runs: one sleep cycle of an agent, select → generate → evaluate → deploy, state in SQL.

:func:`~agent_sleep.consolidation.cycle.run_cycle` runs (or resumes) one cycle and returns a
:class:`~agent_sleep.consolidation.result.CycleResult`; :class:`~agent_sleep.consolidation.runs.RunStore`
reads and writes the run tables; :func:`~agent_sleep.consolidation.config.load_cycle_config` reads a
cycle's YAML config. The recipe that drives them is ``pipelines/sleep/run_cycle.py``. Names load on
first use: importing this package loads no model code.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    from agent_sleep.consolidation.config import CycleConfig, load_cycle_config
    from agent_sleep.consolidation.cycle import run_cycle
    from agent_sleep.consolidation.result import CycleResult, SkillResult
    from agent_sleep.consolidation.runs import RunStore

_LAZY = {
    "CycleConfig": "agent_sleep.consolidation.config",
    "CycleResult": "agent_sleep.consolidation.result",
    "RunStore": "agent_sleep.consolidation.runs",
    "SkillResult": "agent_sleep.consolidation.result",
    "load_cycle_config": "agent_sleep.consolidation.config",
    "run_cycle": "agent_sleep.consolidation.cycle",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'agent_sleep.consolidation' has no attribute {name!r}")
    value = getattr(import_module(module), name)
    globals()[name] = value
    return value


__all__ = sorted(_LAZY)
