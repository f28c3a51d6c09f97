"""The chat model an agent uses while awake, served from the live runtime.

``LiveChatModel`` is a :class:`ChatLocalModel` whose every request runs on one
adapter stack: the agent's live stack at the moment the request starts (so a
hot-swap mid-generation never mixes versions), or a fixed stack given at
construction. Adapters with a routing spec apply only to requests that resemble their keys
(:mod:`agent_sleep.runtime.routing`). The stack's name is reported in ``response_metadata["stack"]``.
"""

from __future__ import annotations

from collections.abc import Sequence

from langchain_core.messages import BaseMessage
from pydantic import Field, InstanceOf

from agent_sleep.adapters.stack import PreparedStack
from agent_sleep.models.loader import BaseModelHandle
from agent_sleep.runtime.chat_model import ChatLocalModel, PinnedModel
from agent_sleep.runtime.live import LiveRuntime
from agent_sleep.runtime.routing import last_user_text


class LiveChatModel(ChatLocalModel):
    runtime: InstanceOf[LiveRuntime] = Field(exclude=True, repr=False)
    agent: str | None = None
    pinned: InstanceOf[PreparedStack] | None = Field(default=None, exclude=True, repr=False)
    """A stack to always use; otherwise the agent's live stack per request."""

    @property
    def _llm_type(self) -> str:
        return "agent-sleep-live"

    def _handle(self) -> BaseModelHandle:
        return self.runtime.handle

    def _pin(self, messages: Sequence[BaseMessage] = ()) -> PinnedModel:
        stack = self.pinned if self.pinned is not None else (
            self.runtime.pin(self.agent) if self.agent is not None else None)
        return self.runtime.pinned(stack, text=last_user_text(messages))
