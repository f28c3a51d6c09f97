"""The consolidation plan: what one sleep cycle will learn, per skill, each item linked to its sources.

The selection stage writes it (and one :class:`~agent_sleep.interfaces.Decision` per candidate item);
the generate stage reads ``train`` material (documents, conversations, the description), the evaluate
stage reads ``probes``. A probe is never also trained on: :meth:`ConsolidationPlan.check` refuses a
plan where a probe's source episode trains any skill or gives an instruction to any skill's
description (t2l trains on the description). Every text here is already redacted.

``candidates`` names the generators a run tries on the same material and probes (each gated, the
better admitted one deployed, see :mod:`agent_sleep.consolidation.gating`); by default the planner
sets ``(sft, t2l)`` for a skill with conversations and a description, ``(t2l,)`` for a description
alone, else just ``generator``. The plan is plain JSON (``model_dump(mode="json")``)
so a run can store it and a rerun can read it back unchanged.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from agent_sleep.errors import InvalidInputError

__all__ = ["ConsolidationPlan", "PlannedConversation", "PlannedDocument", "PlannedInstruction", "PlannedProbe",
           "SkillPlan"]

ItemKind = Literal["episode", "document"]


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class PlannedDocument(_Frozen):
    """One document version to internalise (``d2l``)."""

    id: str
    source: str
    version: int
    title: str | None = None
    text: str = Field(min_length=1)


class PlannedConversation(_Frozen):
    """One conversation to train on (``sft``): chat messages ``{"role", "content"}`` (assistant ones may
    carry ``"tool_calls"``). ``corrected``: a wrong final answer was replaced by the feedback's correction."""

    episode_id: str
    messages: tuple[dict[str, Any], ...] = Field(min_length=2)
    corrected: bool = False


class PlannedProbe(_Frozen):
    """A held-out question with its reference answer, and where it came from. ``system``: the system
    prompt the agent answered it under (the evaluate stage asks it under the same one)."""

    question: str = Field(min_length=1)
    answer: str = Field(min_length=1)
    system: str | None = None
    origin: Literal["correction", "feedback", "document"]
    source_kind: ItemKind
    source_id: str


class PlannedInstruction(_Frozen):
    """One feedback instruction in a skill's description ("always ask for the order number first")."""

    feedback_id: str
    episode_id: str
    text: str = Field(min_length=1)


class SkillPlan(_Frozen):
    """The material for one skill's next adapter version, and the generator(s) that will make it.

    ``description``: what the skill should do, in words (t2l's material): a declared description, then
    the feedback ``instructions`` it holds, one a line. ``candidates``: the generators tried on the same
    material and probes, in order (the first is ``generator``); empty means ``generator`` alone."""

    skill: str
    generator: str  # a name in agent_sleep.generators.registry: d2l | sft | gradient_cd | t2l
    description: str = ""
    documents: tuple[PlannedDocument, ...] = ()
    conversations: tuple[PlannedConversation, ...] = ()
    probes: tuple[PlannedProbe, ...] = ()
    instructions: tuple[PlannedInstruction, ...] = ()
    candidates: tuple[str, ...] = ()

    @model_validator(mode="after")
    def _candidates(self) -> SkillPlan:
        if len(set(self.candidates)) != len(self.candidates):
            raise ValueError(f"skill {self.skill!r}: candidates repeat: {list(self.candidates)}")
        if self.candidates and self.candidates[0] != self.generator:
            raise ValueError(f"skill {self.skill!r}: the first candidate must be the generator {self.generator!r}, "
                             f"got {list(self.candidates)}")
        return self

    @property
    def generators(self) -> tuple[str, ...]:
        """The generators to try, in order: ``candidates``, or ``generator`` alone."""
        return self.candidates or (self.generator,)

    @property
    def train_sources(self) -> tuple[tuple[ItemKind, str], ...]:
        return tuple(("document", d.id) for d in self.documents) + tuple(
            ("episode", c.episode_id) for c in self.conversations
        )

    @property
    def instruction_episodes(self) -> tuple[str, ...]:
        """The episodes whose feedback's instructions are in the description (consumed with the skill)."""
        return tuple(dict.fromkeys(i.episode_id for i in self.instructions))

    @property
    def has_material(self) -> bool:
        return bool(self.documents or self.conversations or self.description)


class ConsolidationPlan(_Frozen):
    """Per-skill plans for one agent, plus what the run consumes (marked consolidated when it ends)."""

    agent: str
    skills: tuple[SkillPlan, ...] = ()
    episodes: tuple[str, ...] = ()  # every episode the plan uses (train, probe or instruction)
    documents: tuple[str, ...] = ()  # every document version the plan uses
    stats: dict[str, dict[str, int]] = Field(default_factory=dict)  # selector -> {"kept": n, "dropped": n}

    @property
    def empty(self) -> bool:
        return not any(s.has_material for s in self.skills)

    def skill(self, name: str) -> SkillPlan:
        for s in self.skills:
            if s.skill == name:
                return s
        raise InvalidInputError(f"the plan has no skill {name!r}; it has {[s.skill for s in self.skills]}")

    def check(self) -> ConsolidationPlan:
        """Refuse a plan that names a skill twice, or evaluates on an episode that any skill trains on
        (a stack holds every skill, so a probe trained by one skill would flatter another)."""
        names = [s.skill for s in self.skills]
        if len(set(names)) != len(names):
            raise InvalidInputError(f"the plan names a skill more than once: {names}")
        trained = {src for s in self.skills for src in s.train_sources if src[0] == "episode"}
        described = {("episode", e) for s in self.skills for e in s.instruction_episodes}
        for s in self.skills:
            leaked = [p for p in s.probes if (p.source_kind, p.source_id) in trained]
            if leaked:
                raise InvalidInputError(
                    f"skill {s.skill!r}: {len(leaked)} probe(s) come from episodes the plan also trains on "
                    f"(first: {leaked[0].source_id})"
                )
            told = [p for p in s.probes if (p.source_kind, p.source_id) in described]
            if told:
                raise InvalidInputError(
                    f"skill {s.skill!r}: {len(told)} probe(s) come from episodes whose feedback instruction is in a "
                    f"description the plan trains on (first: {told[0].source_id})"
                )
        return self
