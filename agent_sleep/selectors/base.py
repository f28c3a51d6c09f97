"""What every selector shares: its params model, the run's context, and the episode-filter base class.

A selector (see :class:`agent_sleep.interfaces.Selector`) is a small step the chain calls batch by
batch. It writes nothing and reads nothing but its input (``prompts`` alone also reads the store), so the same stream of candidates gives the
same selection. A selector may remember what it saw earlier in the same run (``near_dup`` does) — the
registry builds a fresh one for every run — and it may *hold* items until the stream ends (``budget``
does): such a selector also has ``flush() -> Selection``, which the chain calls once at the end; every
item then gets exactly one decision from it, either when it is given or at ``flush``.

Built from config through :mod:`agent_sleep.selectors.registry`: a selector class has ``Params`` (a
:class:`SelectorParams` model: frozen, unknown keys refused) and ``from_params(params, context)``.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import ClassVar

from pydantic import BaseModel, ConfigDict

from agent_sleep.interfaces import Decision, ExperienceReader, Selection
from agent_sleep.selectors.candidates import Candidate, EpisodeCandidate

__all__ = ["EpisodeFilter", "SelectorContext", "SelectorParams", "Verdict"]


class SelectorParams(BaseModel):
    """Base of each selector's parameters (what a user writes under ``params:`` in the chain)."""

    model_config = ConfigDict(frozen=True, extra="forbid")


@dataclass(frozen=True)
class SelectorContext:
    """What a selector may know about the run besides its params: whose experiences, the time the run
    treats as now, texts already consolidated (for novelty checks), and the store, for the one step
    that must read more of an episode than a batch carries (``prompts``: the recorded model input)."""

    agent: str
    now: datetime
    reference_texts: tuple[str | tuple[str, str], ...] = ()  # texts, or (id, text) pairs
    reader: ExperienceReader | None = None


@dataclass(frozen=True)
class Verdict:
    """An episode filter's answer for one episode: keep it (maybe as a changed copy) or drop it, and why."""

    kept: bool
    reason: str
    item: EpisodeCandidate | None = None  # a changed copy to hand on; None: the episode as given


class EpisodeFilter:
    """A selector that judges episodes one at a time and hands documents on untouched.

    An episode used for its feedback's instruction only (``instruction_only``) is handed on untouched: its
    conversation is not used whatever a filter would say. An episode a filter drops whose feedback carries
    an instruction is handed on in that form instead (:meth:`EpisodeCandidate.keep_instructions`): an
    instruction says how to behave in every conversation, so a bad score or a failed outcome of the one it
    came with does not void it."""

    name: ClassVar[str]
    Params: ClassVar[type[SelectorParams]]

    def __init__(self, params: SelectorParams, context: SelectorContext) -> None:
        self.params = params
        self.context = context

    @classmethod
    def from_params(cls, params: SelectorParams, context: SelectorContext) -> EpisodeFilter:
        return cls(params, context)

    def judge(self, episode: EpisodeCandidate) -> Verdict:
        raise NotImplementedError

    def select(self, items: Iterable[Candidate], /) -> Selection[Candidate]:
        kept: list[Candidate] = []
        decisions: list[Decision] = []
        for item in items:
            if not isinstance(item, EpisodeCandidate):
                kept.append(item)
                decisions.append(Decision(item.id, True, "not an episode: handed on", self.name))
                continue
            if item.instruction_only is not None:
                kept.append(item)
                decisions.append(Decision(item.id, True, "used for its instruction only: not judged", self.name))
                continue
            verdict = self.judge(item)
            if verdict.kept:
                kept.append(verdict.item if verdict.item is not None else item)
                decisions.append(Decision(item.id, True, verdict.reason, self.name))
                continue
            instead = item.keep_instructions(verdict.reason)
            if instead is not None:
                kept.append(instead[0])
            decisions.append(Decision(item.id, instead is not None, instead[1] if instead else verdict.reason,
                                      self.name))  # fmt: skip
        return Selection(tuple(kept), tuple(decisions))
