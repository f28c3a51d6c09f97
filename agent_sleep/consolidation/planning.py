"""The select stage's contract: a planner turns the experience store into a :class:`ConsolidationPlan`.

The run does not choose experiences itself; it calls a planner (the selector chain of
:mod:`agent_sleep.selectors`) with the raw ``selection`` config, the time, and the texts the agent
already knows (the probes of its live skills, for novelty checks), and stores what comes back: the
plan as the stage's result, and one ``selection_decisions`` row per decision (``runs explain``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any, Protocol, runtime_checkable

from agent_sleep.interfaces import ExperienceReader
from agent_sleep.selectors.config import parse_selection_config
from agent_sleep.selectors.plan import ConsolidationPlan
from agent_sleep.selectors.planner import build_plan

__all__ = ["PlanDecisionView", "PlanResultView", "Planner", "decision_rows", "default_planner", "selectors_planner"]


@runtime_checkable
class PlanDecisionView(Protocol):
    """Why one item was kept or dropped, by which selector, and (once assigned) for which skill and role."""

    @property
    def item_kind(self) -> str: ...  # episode | document
    @property
    def item_id(self) -> str: ...
    @property
    def selector(self) -> str: ...
    @property
    def kept(self) -> bool: ...
    @property
    def reason(self) -> str: ...
    @property
    def skill(self) -> str | None: ...
    @property
    def role(self) -> str | None: ...  # train | probe | None


@runtime_checkable
class PlanResultView(Protocol):
    @property
    def plan(self) -> ConsolidationPlan: ...
    @property
    def decisions(self) -> Sequence[PlanDecisionView]: ...


class Planner(Protocol):
    """``planner(reader, agent, selection, now=..., reference_texts=...)``: reads, writes nothing."""

    def __call__(self, reader: ExperienceReader, agent: str, selection: Mapping[str, Any], /, *, now: datetime,
                 reference_texts: Sequence[str]) -> PlanResultView: ...  # fmt: skip


def default_planner() -> Planner:
    """The selector chain's planner: the raw ``selection`` config checked as a
    :class:`~agent_sleep.selectors.config.SelectionConfig`, then
    :func:`~agent_sleep.selectors.planner.build_plan`."""
    return selectors_planner


def selectors_planner(reader: ExperienceReader, agent: str, selection: Mapping[str, Any], /, *, now: datetime,
                      reference_texts: Sequence[str]) -> PlanResultView:  # fmt: skip
    """:func:`~agent_sleep.selectors.planner.build_plan` over ``selection``. Novelty compares with what the
    agent consolidated before (the planner reads those episodes and documents itself, framed as the
    candidates are); ``reference_texts`` (the live skills' probes) are not candidates' shape and are unused."""
    del reference_texts
    config = parse_selection_config(selection, where="selection")
    return build_plan(reader, agent, config, now=now)


def decision_rows(decisions: Sequence[PlanDecisionView]) -> list[dict[str, Any]]:
    """The planner's decisions as ``selection_decisions`` rows."""
    return [{"item_kind": d.item_kind, "item_id": d.item_id, "selector": d.selector, "kept": bool(d.kept),
             "reason": d.reason, "skill": d.skill, "role": d.role} for d in decisions]  # fmt: skip
