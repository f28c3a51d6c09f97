"""Experience store: agents, episodes, events, feedback, documents and skills in SQL."""

from agent_sleep.store.records import (
    DocumentRecord,
    EpisodeQuery,
    EpisodeRecord,
    EventIn,
    EventRecord,
    FeedbackRecord,
)
from agent_sleep.store.store import ExperienceStore

__all__ = [
    "DocumentRecord",
    "EpisodeQuery",
    "EpisodeRecord",
    "EventIn",
    "EventRecord",
    "ExperienceStore",
    "FeedbackRecord",
]
