"""Episodes in batches, with their events and feedback: how a reader of the whole store streams it.

``ExperienceStore.episode_batches`` and ``InMemoryExperienceStore.episode_batches`` yield lists of
:class:`EpisodeBundle`, oldest first (ties by id). The SQL store streams one ordered query over the
episodes and reads each batch's events and feedback with one query each, so reading N episodes costs
``1 + 2 * N / batch_size`` queries and memory for one batch, never the whole table.

An event comes as a :class:`Turn`: the fields a conversation needs (the payload's ``tool_calls``,
``tool_call_id`` and ``args``), never the rest of the payload, which can hold a model call's whole
input. Not here: turning turns into chat messages (the selectors' source does that).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from agent_sleep.interfaces import EventView
from agent_sleep.store.records import FeedbackRecord

__all__ = ["DEFAULT_BATCH_SIZE", "EpisodeBundle", "Turn", "turn_of"]

DEFAULT_BATCH_SIZE = 500


@dataclass(frozen=True, slots=True)
class Turn:
    """One event of an episode, as a step of its conversation."""

    seq: int
    kind: str
    name: str | None
    content: str
    tool_calls: Any = None  # payload["tool_calls"]: an assistant message's calls [{"id", "name", "args"}]
    tool_call_id: Any = None  # payload["tool_call_id"]: which call a tool_call / tool_result event belongs to
    args: Any = None  # payload["args"]: a tool_call event's arguments


@dataclass(frozen=True, slots=True)
class EpisodeBundle:
    """An episode with its turns (``seq`` order, only the kinds asked for) and feedback (oldest first)."""

    id: str
    agent: str
    thread_id: str | None
    started_at: datetime
    status: str
    outcome: str | None
    consolidated_at: datetime | None
    turns: tuple[Turn, ...]
    feedback: tuple[FeedbackRecord, ...]


def turn_of(event: EventView) -> Turn:
    payload = event.payload or {}
    return Turn(seq=event.seq, kind=event.kind, name=event.name, content=event.content,
                tool_calls=payload.get("tool_calls"), tool_call_id=payload.get("tool_call_id"),
                args=payload.get("args"))  # fmt: skip
