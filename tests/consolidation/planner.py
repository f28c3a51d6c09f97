"""TEST CODE: a small, real planner for the consolidation tests, standing in until the selectors' one is wired in.

It reads the store as the real chain does and keeps simple rules, each recorded as a decision:

* ``reply``: an episode needs a user question and an assistant answer;
* ``score``: its mean feedback score must be at least ``selection["min_score"]`` (default 0.5);
* ``split``: per skill (episode metadata ``"skill"``, default ``"general"``), every third kept episode
  becomes a held-out probe (question: its first user message; answer: metadata ``"answer"`` or its last
  reply), the others are trained on with generator ``selection["generator"]`` (default ``sft``), or with
  each of ``selection["candidates"]`` in turn (the first leads).

The plan is checked by :meth:`ConsolidationPlan.check` like any other.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from agent_sleep.interfaces import ExperienceReader
from agent_sleep.selectors.plan import ConsolidationPlan, PlannedConversation, PlannedProbe, SkillPlan


@dataclass(frozen=True)
class Decision:
    item_kind: str
    item_id: str
    selector: str
    kept: bool
    reason: str
    skill: str | None = None
    role: str | None = None


@dataclass(frozen=True)
class PlanResult:
    plan: ConsolidationPlan
    decisions: tuple[Decision, ...]


def _messages(reader: ExperienceReader, episode_id: str) -> list[dict[str, Any]]:
    roles = {"user_message": "user", "assistant_message": "assistant"}
    return [{"role": roles[e.kind], "content": e.content} for e in reader.events(episode_id) if e.kind in roles]


def simple_planner(reader: ExperienceReader, agent: str, selection: Mapping[str, Any], /, *, now: datetime,
                 reference_texts: Sequence[str]) -> PlanResult:  # fmt: skip
    min_score = float(selection.get("min_score", 0.5))
    candidates = tuple(str(c) for c in selection.get("candidates") or ())
    generator = candidates[0] if candidates else str(selection.get("generator", "sft"))
    decisions: list[Decision] = []
    kept: dict[str, list[tuple[Any, list[dict[str, Any]]]]] = {}
    for ep in reader.episodes(agent=agent, unconsolidated=True, status="completed", until=now):
        messages = _messages(reader, ep.id)
        skill = str(ep.meta.get("skill", "general"))
        if not all(any(m["role"] == role and m["content"].strip() for m in messages) for role in ("user", "assistant")):
            decisions.append(Decision("episode", ep.id, "reply", False, "no question and answer in the episode"))
            continue
        decisions.append(Decision("episode", ep.id, "reply", True, "has a question and an answer"))
        if ep.mean_score is None or ep.mean_score < min_score:
            decisions.append(Decision("episode", ep.id, "score", False,
                                      f"mean feedback score {ep.mean_score} is below {min_score}"))
            continue
        decisions.append(Decision("episode", ep.id, "score", True, f"mean feedback score {ep.mean_score:.2f}"))
        kept.setdefault(skill, []).append((ep, messages))
    skills = []
    for skill, items in kept.items():
        train, probes = [], []
        for n, (ep, messages) in enumerate(items):
            if n % 3 == 2:
                question = next(m["content"] for m in messages if m["role"] == "user")
                answer = str(ep.meta.get("answer") or [m for m in messages if m["role"] == "assistant"][-1]["content"])
                probes.append(PlannedProbe(question=question, answer=answer, origin="feedback", source_kind="episode",
                                           source_id=ep.id))
                decisions.append(Decision("episode", ep.id, "split", True, "held out as a probe", skill, "probe"))
            else:
                train.append(PlannedConversation(episode_id=ep.id, messages=tuple(messages)))
                decisions.append(Decision("episode", ep.id, "split", True, "trained on", skill, "train"))
        skills.append(SkillPlan(skill=skill, generator=generator, description=f"{skill} (test planner)",
                                conversations=tuple(train), probes=tuple(probes), candidates=candidates))
    episodes = tuple(ep.id for items in kept.values() for ep, _ in items)
    plan = ConsolidationPlan(agent=agent, skills=tuple(skills), episodes=episodes).check()
    return PlanResult(plan=plan, decisions=tuple(decisions))
