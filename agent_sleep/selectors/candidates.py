"""What flows through the selector chain: one episode or one document, with the text selectors read.

Selectors are pure steps over these frozen values (see :class:`agent_sleep.interfaces.Selector`): a
filter keeps or drops an item; a transform (redaction) keeps it and hands on a changed copy made with
:meth:`EpisodeCandidate.replace`. The chain reads candidates from the store in batches
(:mod:`agent_sleep.selectors.source`), so a selector must not assume it sees every item at once
unless it says so.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

__all__ = ["Candidate", "DocumentCandidate", "EpisodeCandidate", "FeedbackItem"]


@dataclass(frozen=True)
class FeedbackItem:
    """One piece of feedback on an episode (``correction``: the right answer when the agent was wrong;
    ``instruction``: how the agent should behave from now on, in every conversation)."""

    id: str
    score: float | None
    label: str | None
    comment: str | None
    correction: str | None
    source: str
    created_at: datetime
    instruction: str | None = None


@dataclass(frozen=True)
class EpisodeCandidate:
    """An episode as chat messages (``{"role", "content"}``, assistant turns may carry ``"tool_calls"``
    ``[{"name", "arguments"}]``, tool results ``{"role": "tool", "name", "content"}``) plus its feedback.

    ``instruction_only``: why the conversation itself is not used (a selector would have dropped it) while
    its feedback's instructions still are: a filter that drops an episode whose feedback carries an
    instruction keeps it in this form instead (see :meth:`keep_instructions`), and the planner reads only
    the instructions of such an episode, never trains on or probes its conversation."""

    id: str
    agent: str
    started_at: datetime
    status: str
    outcome: str | None
    messages: tuple[dict[str, Any], ...]
    feedback: tuple[FeedbackItem, ...] = ()
    consolidated_at: datetime | None = None
    corrected_by: str | None = None  # the feedback whose correction replaced the final answer in ``messages``
    instruction_only: str | None = None
    kind: Literal["episode"] = "episode"

    @property
    def text(self) -> str:
        """The conversation as one string (user and assistant turns), for duplicate and novelty checks."""
        return "\n".join(
            f"{m['role']}: {m.get('content') or ''}" for m in self.messages if m.get("role") in ("user", "assistant")
        )

    @property
    def scores(self) -> tuple[float, ...]:
        return tuple(f.score for f in self.feedback if f.score is not None)

    @property
    def mean_score(self) -> float | None:
        s = self.scores
        return sum(s) / len(s) if s else None

    @property
    def corrections(self) -> tuple[FeedbackItem, ...]:
        return tuple(f for f in self.feedback if f.correction)

    @property
    def instructions(self) -> tuple[FeedbackItem, ...]:
        """The feedback that says how the agent should behave from now on, oldest first."""
        return tuple(sorted((f for f in self.feedback if f.instruction and f.instruction.strip()),
                            key=lambda f: (f.created_at, f.id)))  # fmt: skip

    def keep_instructions(self, why: str) -> tuple[EpisodeCandidate, str] | None:
        """When a selector would drop this episode for ``why``: the instruction-only copy to hand on instead,
        and the reason to record; None when the episode carries no instruction (drop it)."""
        if not self.instructions:
            return None
        if self.instruction_only is not None:
            return self, f"{why}; already used for its instruction only"
        return (self.replace(instruction_only=why),
                f"{why}; kept for its feedback's instruction only (the conversation is not trained on or held out)")

    @property
    def has_assistant_turn(self) -> bool:
        return any(m.get("role") == "assistant" for m in self.messages)

    def final_answer(self) -> int | None:
        """Index of the final answer: the last assistant message with text (None if there is none)."""
        for i in range(len(self.messages) - 1, -1, -1):
            m = self.messages[i]
            if m.get("role") == "assistant" and (m.get("content") or "").strip():
                return i
        return None

    def question_before(self, index: int) -> str | None:
        """The text of the last user message before message ``index`` (None if there is none)."""
        for i in range(index - 1, -1, -1):
            m = self.messages[i]
            if m.get("role") == "user" and (m.get("content") or "").strip():
                return str(m["content"])
        return None

    def replace(self, **changes: Any) -> EpisodeCandidate:
        return dataclasses.replace(self, **changes)


@dataclass(frozen=True)
class DocumentCandidate:
    """One document version (a new or changed document in the store is a signal too)."""

    id: str
    agent: str | None
    source: str
    version: int
    title: str | None
    text: str
    created_at: datetime
    meta: dict[str, Any] = dataclasses.field(default_factory=dict)
    consolidated_at: datetime | None = None
    kind: Literal["document"] = "document"

    def replace(self, **changes: Any) -> DocumentCandidate:
        return dataclasses.replace(self, **changes)


Candidate = EpisodeCandidate | DocumentCandidate
