"""Experience store: agents, episodes, events, feedback, documents and skills in SQL."""

from agent_sleep.store.conversation import ModelCall, model_calls
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

__all__ = [
    "DocumentRecord",
    "EpisodeQuery",
    "EpisodeRecord",
    "EventIn",
    "EventRecord",
    "ExperienceStore",
    "FeedbackRecord",
    "ModelCall",
    "model_calls",
    "normalize_episode_id",
]
