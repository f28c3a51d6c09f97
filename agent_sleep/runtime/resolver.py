"""Serve the live runtime over the OpenAI-compatible API.

Request ``model`` names: an agent (its live stack, pinned when the request is
resolved), a stack ``agent:stack@vN``, or adapters ``skill[@vN]`` joined by
``+`` (e.g. ``refunds@v2+tone``). ``system_fingerprint`` in every response is the
exact version that ran: ``agent:stack@vN#<deployment seq>`` for agents.
"""

from __future__ import annotations

from typing import Any

from agent_sleep.errors import NotFoundError
from agent_sleep.serving.resolver import ResolvedChat


class LiveResolver:
    def __init__(self, runtime: Any, **generation: Any) -> None:
        self.runtime = runtime
        self.generation = generation
        self._adapter_stacks: dict[str, Any] = {}

    def list_models(self) -> list[str]:
        names = list(self.runtime.agents())
        names += [a.name for a in self.runtime.registry.adapters() if a.status in ("live", "approved", "candidate")]
        return names

    def resolve(self, name: str) -> ResolvedChat:
        from agent_sleep.runtime.live_chat import LiveChatModel

        state = self.runtime.live(name)
        if state is not None:
            chat = LiveChatModel(runtime=self.runtime, pinned=state.stack, model=name, **self.generation)
            return ResolvedChat(model=chat, version=state.version)
        if ":stack@" in name:
            stack = self.runtime.prepare(self.runtime.registry.get_stack(name))
        else:
            stack = self._adapter_stacks.get(name)
            if stack is None:
                try:
                    stack = self.runtime.prepare_adapters(name.split("+"))
                except NotFoundError:
                    raise NotFoundError(f"no agent, stack or adapter named {name!r}") from None
                self._adapter_stacks[name] = stack
        chat = LiveChatModel(runtime=self.runtime, pinned=stack, model=name, **self.generation)
        return ResolvedChat(model=chat, version=stack.name)
