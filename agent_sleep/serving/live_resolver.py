"""Serve the live runtime over the OpenAI-compatible API.

Request ``model`` names: an agent (its live stack, pinned when the request is
resolved), a stack ``agent:stack@vN``, or adapters ``skill[@vN]`` joined by
``+`` (e.g. ``refunds@v2+tone``); see :mod:`agent_sleep.registry.refs`.
``system_fingerprint`` in every response is the exact version that ran:
``agent:stack@vN#<deployment seq>`` for agents.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from agent_sleep.errors import InvalidInputError, NotFoundError
from agent_sleep.registry.refs import StackRef, is_stack_ref, parse_adapter_list, parse_stack_ref
from agent_sleep.serving.resolver import ResolvedChat

if TYPE_CHECKING:
    from agent_sleep.adapters.stack import PreparedStack
    from agent_sleep.registry.refs import AdapterRef
    from agent_sleep.runtime.live import LiveRuntime


class LiveResolver:
    """A :class:`~agent_sleep.serving.resolver.ModelResolver` over a :class:`LiveRuntime`."""

    def __init__(self, runtime: LiveRuntime, **generation: Any) -> None:
        self.runtime = runtime
        self.generation = generation
        self._adapter_stacks: dict[str, PreparedStack] = {}

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
        ref = self._parse(name)
        if isinstance(ref, StackRef):
            stack = self.runtime.prepare(self.runtime.registry.get_stack(ref))
        else:
            cached = self._adapter_stacks.get(name)
            if cached is None:
                try:
                    cached = self.runtime.prepare_adapters(ref)
                except NotFoundError:
                    raise NotFoundError(f"no agent, stack or adapter named {name!r}") from None
                self._adapter_stacks[name] = cached
            stack = cached
        chat = LiveChatModel(runtime=self.runtime, pinned=stack, model=name, **self.generation)
        return ResolvedChat(model=chat, version=stack.name)

    @staticmethod
    def _parse(name: str) -> StackRef | tuple[AdapterRef, ...]:
        """What a model name that is not an agent refers to; a malformed one names nothing (NotFoundError)."""
        try:
            return parse_stack_ref(name) if is_stack_ref(name) else parse_adapter_list(name)
        except InvalidInputError as exc:
            raise NotFoundError(f"no agent, stack or adapter named {name!r} ({exc})") from None
