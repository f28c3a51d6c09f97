"""The select stage: ask the planner for a plan, keep the skills that can be trained and judged.

A skill is trained only when it has material, at least one candidate generator this install knows
(an unknown one among several is that candidate's ``failed`` in the generate stage; the others go on),
and at least ``evaluation.min_probes`` held-out probes (without them the gate could not show that it
helps). A skill left out gets one more decision row per item it would have used (selector
``consolidation``; its feedback instructions too), so ``runs explain`` says why those items were not used. The stage's result is the whole plan (a rerun
reads it back unchanged), the names of the skills to train, and why the others were left out.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from agent_sleep.consolidation.config import CycleConfig
from agent_sleep.consolidation.planning import Planner, decision_rows
from agent_sleep.errors import InvalidInputError
from agent_sleep.generators.registry import available_generators
from agent_sleep.interfaces import ExperienceReader
from agent_sleep.selectors.plan import ConsolidationPlan, SkillPlan

__all__ = ["SELECTOR", "select", "skipped_reason"]

SELECTOR = "consolidation"
"""The selector name of the decisions the run itself adds."""


def skipped_reason(skill: SkillPlan, config: CycleConfig) -> str | None:
    """Why this skill is not trained in this run, or None."""
    if not skill.has_material:
        return "no material to train on"
    known = available_generators()
    if not any(g in known for g in skill.generators):
        names = ", ".join(repr(g) for g in skill.generators)
        return f"generator {names} is not installed (available: {', '.join(known)})" if len(skill.generators) == 1 \
            else f"none of the candidate generators {names} is installed (available: {', '.join(known)})"
    need = config.evaluation.min_probes
    if len(skill.probes) < need:
        return f"{len(skill.probes)} held-out probe(s); the gate needs at least {need} to show that the skill helps"
    return None


def select(reader: ExperienceReader, agent: str, config: CycleConfig, planner: Planner, *, now: datetime,
           reference_texts: list[str]) -> tuple[dict[str, Any], list[dict[str, Any]]]:  # fmt: skip
    """(the stage result, the decision rows) for one run."""
    out = planner(reader, agent, config.selection, now=now, reference_texts=reference_texts)
    plan: ConsolidationPlan = out.plan.check()
    if plan.agent != agent:
        raise InvalidInputError(f"the planner made a plan for agent {plan.agent!r}, not {agent!r}")
    rows = decision_rows(out.decisions)
    trained: list[str] = []
    left_out: dict[str, str] = {}
    for skill in plan.skills:
        reason = skipped_reason(skill, config)
        if reason is None:
            trained.append(skill.skill)
            continue
        left_out[skill.skill] = reason
        items = [(kind, item, "train") for kind, item in skill.train_sources]
        items += [(p.source_kind, p.source_id, "probe") for p in skill.probes]
        items += [("feedback", i.feedback_id, "instruction") for i in skill.instructions]
        rows += [{"item_kind": kind, "item_id": item, "selector": SELECTOR, "kept": False, "skill": skill.skill,
                  "role": role, "reason": f"skill {skill.skill!r} not trained: {reason}"}
                 for kind, item, role in dict.fromkeys(items)]  # fmt: skip
    result = {"plan": plan.model_dump(mode="json"), "skills": trained, "left_out": left_out,
              "reference_texts": len(reference_texts), "decisions": len(rows)}  # fmt: skip
    return result, rows
