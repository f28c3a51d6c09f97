"""Serve the live runtime over the OpenAI-compatible API.

Request ``model`` names, tried in this order:

* an agent with a deployment: its live stack, pinned when the request is resolved;
* the base model's name (``smollm2-135m-instruct``): no adapters;
* a stack ``agent:stack@vN``, or adapters ``skill[@vN|@live]`` joined by ``+``
  (e.g. ``refunds@v2+tone``; see :mod:`agent_sleep.registry.refs`), each skill once;
* an agent the store knows but that has no deployment yet: the base model.

``system_fingerprint`` in every response is the exact version that ran:
``agent:stack@vN#<deployment seq>`` for agents, the concrete adapter versions
(``refunds@v2+tone@v1``) for adapter lists, ``<base name>#<content hash>`` for
the base model. Aliases and bare skill names are resolved to a concrete version
on every request (one registry read per adapter), so ``refunds@live`` follows
deploys; prepared stacks are cached by concrete version only.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from agent_sleep.errors import InvalidInputError, NotFoundError, RequestError
from agent_sleep.names import did_you_mean
from agent_sleep.registry.records import refuse_rejected
from agent_sleep.registry.refs import check_one_per_skill, is_stack_ref, parse_adapter_list, parse_stack_ref
from agent_sleep.serving.resolver import ResolvedChat

if TYPE_CHECKING:
    from agent_sleep.adapters.stack import PreparedStack
    from agent_sleep.registry.records import AdapterVersionRecord
    from agent_sleep.runtime.live import LiveRuntime

SERVED_STATUSES = ("live", "approved", "candidate")


class LiveResolver:
    """A :class:`~agent_sleep.serving.resolver.ModelResolver` over a :class:`LiveRuntime`."""

    cache_size = 16  # prepared ad-hoc stacks kept (least recently used dropped)

    def __init__(self, runtime: LiveRuntime, **generation: Any) -> None:
        self.runtime = runtime
        self.generation = generation
        self.base_name = runtime.handle.spec
        self.base_version = f"{self.base_name}#{runtime.handle.content_hash[:12]}"
        self._stacks: OrderedDict[tuple[str, ...], PreparedStack] = OrderedDict()
        self._lock = threading.Lock()

    def list_models(self) -> list[str]:
        registry = self.runtime.registry
        names = [self.base_name, *self.runtime.agents(), *registry.store.agents()]
        names += [a.name for a in registry.adapters() if a.status in SERVED_STATUSES]
        return list(dict.fromkeys(names))  # an agent both live and in the store is listed once

    def resolve(self, name: str) -> ResolvedChat:
        state = self.runtime.live(name)
        if state is not None:
            return self._chat(name, state.stack, state.version)
        if name == self.base_name:
            return self._chat(name, None, self.base_version)
        try:
            stack = self._stack(name) if is_stack_ref(name) else self._adapters(name)
        except NotFoundError as exc:
            if name in self.runtime.registry.store.agents():
                return self._chat(name, None, self.base_version)  # a known agent, not deployed yet
            hint = did_you_mean(name, self.list_models()) or f" ({exc})"
            raise NotFoundError(f"no agent, stack or adapter named {name!r}{hint}") from None
        return self._chat(name, stack, stack.name)

    def _chat(self, name: str, stack: PreparedStack | None, version: str) -> ResolvedChat:
        from agent_sleep.runtime.live_chat import LiveChatModel

        chat = LiveChatModel(runtime=self.runtime, pinned=stack, model=name, **self.generation)
        return ResolvedChat(model=chat, version=version)

    def _adapters(self, name: str) -> PreparedStack:
        """``skill[@vN|@alias]+...``, each resolved to its concrete version now."""
        try:
            refs = parse_adapter_list(name)
        except InvalidInputError as exc:
            raise NotFoundError(str(exc)) from None  # a malformed name names nothing
        try:
            check_one_per_skill(refs)
        except InvalidInputError as exc:
            raise RequestError(str(exc), param="model") from None
        records = [self.runtime.registry.get(ref) for ref in refs]
        _refuse_rejected(records)  # checked per request: a version rejected after it was cached is not served
        concrete = tuple(rec.name for rec in records)
        return self._cached(concrete, lambda: self.runtime.prepare_adapters(list(concrete)))

    def _stack(self, name: str) -> PreparedStack:
        """``agent:stack@vN`` (a concrete version already)."""
        try:
            ref = parse_stack_ref(name)
        except InvalidInputError as exc:
            raise NotFoundError(str(exc)) from None
        stack = self.runtime.registry.get_stack(ref)
        _refuse_rejected([self.runtime.registry.get(item.adapter) for item in stack.items])
        return self._cached((str(ref),), lambda: self.runtime.prepare(stack))

    def _cached(self, key: tuple[str, ...], prepare: Callable[[], PreparedStack]) -> PreparedStack:
        # Keys are concrete versions (immutable), so an entry never goes stale; only its memory is bounded.
        with self._lock:
            if key in self._stacks:
                self._stacks.move_to_end(key)
                return self._stacks[key]
        stack = prepare()
        with self._lock:
            self._stacks[key] = stack
            while len(self._stacks) > self.cache_size:
                self._stacks.popitem(last=False)
        return stack


def _refuse_rejected(records: Sequence[AdapterVersionRecord]) -> None:
    try:
        refuse_rejected(records)
    except InvalidInputError as exc:
        raise RequestError(str(exc), param="model") from None
