"""Experience store: agents, episodes, events, feedback, documents and skills in SQL.

:class:`ExperienceStore` is the SQL store; :class:`~agent_sleep.store.memory.InMemoryExperienceStore`
keeps the same in memory, for tests of the stages. Names load on first use, so importing the
records or the memory store does not import SQLAlchemy.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    from agent_sleep.store.conversation import ModelCall, model_calls
    from agent_sleep.store.memory import InMemoryExperienceStore
    from agent_sleep.store.records import (
        DocumentRecord,
        EpisodeQuery,
        EpisodeRecord,
        EventIn,
        EventRecord,
        FeedbackRecord,
        normalize_episode_id,
    )
    from agent_sleep.store.store import ExperienceStore

_LAZY = {
    "DocumentRecord": "agent_sleep.store.records",
    "EpisodeQuery": "agent_sleep.store.records",
    "EpisodeRecord": "agent_sleep.store.records",
    "EventIn": "agent_sleep.store.records",
    "EventRecord": "agent_sleep.store.records",
    "ExperienceStore": "agent_sleep.store.store",
    "FeedbackRecord": "agent_sleep.store.records",
    "InMemoryExperienceStore": "agent_sleep.store.memory",
    "ModelCall": "agent_sleep.store.conversation",
    "model_calls": "agent_sleep.store.conversation",
    "normalize_episode_id": "agent_sleep.store.records",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'agent_sleep.store' has no attribute {name!r}")
    value = getattr(import_module(module), name)
    globals()[name] = value
    return value


__all__ = sorted(_LAZY)
