"""The live runtime: one base model, a live adapter stack per agent, hot-swapped.

Adapters are applied by forward hooks (``agent_sleep.adapters.stack.LoraHooks``)
that read the stack bound to the *current request*; a request pins the agent's
live :class:`PreparedStack` when it starts and runs every step on it. Making a
new stack live is therefore one reference assignment between requests: no
request ever sees a mix, and the old stack's tensors are freed when the last
request holding it finishes (reference counting is the drain).

The registry in SQL is the source of truth: ``deploy``/``rollback`` write it
and then switch locally; :meth:`LiveRuntime.sync` (run by :meth:`watch`, about
every 0.25 s, and at once on PostgreSQL NOTIFY: :mod:`agent_sleep.registry.notify`)
applies deployments made by other processes. The stack that was live before
stays prepared ("warm"), so a rollback to it needs no disk access.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from agent_sleep.adapters.stack import LoraHooks, PreparedStack, prepare_stack
from agent_sleep.errors import NotFoundError
from agent_sleep.models.loader import BaseModelHandle, load_base_model
from agent_sleep.registry import AdapterRegistry, DeploymentRecord, StackRecord
from agent_sleep.registry.notify import listen
from agent_sleep.registry.refs import AdapterRef, StackRef, check_one_per_skill
from agent_sleep.runtime.chat_model import PinnedModel
from agent_sleep.runtime.deploy import AdapterVerdict, DeployOutcome, check_stack, deploy_validated

if TYPE_CHECKING:
    from agent_sleep.adapters.artifact import LoraWeights
    from agent_sleep.runtime.live_chat import LiveChatModel

log = logging.getLogger("agent_sleep.runtime")


@dataclass(frozen=True)
class LiveState:
    """What is live for one agent: the deployment and its prepared stack."""

    deployment: DeploymentRecord
    stack: PreparedStack

    @property
    def version(self) -> str:
        return f"{self.deployment.stack.name}#{self.deployment.seq}"


class LiveRuntime:
    """Serve several agents from one base model, each on its own live stack."""

    def __init__(self, registry: AdapterRegistry, *, model: str | None = None, handle: BaseModelHandle | None = None,
                 validate: bool = True, max_delta_norm: float | None = None, cache_adapters: int = 32) -> None:
        self.registry = registry
        settings = registry.store.settings
        self.handle = handle or load_base_model(model or settings.model, settings=settings)
        self.hooks = LoraHooks.attach(self.handle.model)
        self.validate = validate
        self.max_delta_norm = max_delta_norm  # None: the validation module's default bound
        self._live: dict[str, LiveState] = {}
        self._warm: dict[str, LiveState] = {}  # the state live before the current one, per agent
        self._layers: OrderedDict[str, Mapping[str, LoraWeights]] = OrderedDict()  # adapter name -> layers (LRU)
        self._cache_size = cache_adapters
        self._verdicts: dict[str, AdapterVerdict] = {}
        self._lock = threading.RLock()  # serialises switches; readers never take it
        self._watcher: threading.Thread | None = None
        self._stop = threading.Event()
        self.last_sync_error: str | None = None

    # -- reading what is live (hot path: no locks) -------------------------------------------
    def live(self, agent: str) -> LiveState | None:
        return self._live.get(agent)

    def agents(self) -> list[str]:
        return sorted(self._live)

    def pin(self, agent: str) -> PreparedStack | None:
        """The stack live for ``agent`` right now (None: base model only)."""
        state = self._live.get(agent)
        return state.stack if state else None

    def pinned(self, stack: PreparedStack | None) -> PinnedModel:
        """The shared model, for one request whose generations run on ``stack``."""
        return PinnedModel(self.handle, stack, self.hooks.activate)

    @contextmanager
    def using(self, stack: PreparedStack | None) -> Iterator[None]:
        """Run model calls in this block on ``stack`` (for direct ``model(...)`` use)."""
        with self.hooks.activate(stack):
            yield

    # -- preparing stacks ---------------------------------------------------------------------
    def _adapter_layers(self, name: str) -> Mapping[str, LoraWeights]:
        from agent_sleep.adapters.artifact import lora_layers, read_adapter

        with self._lock:
            if name in self._layers:
                self._layers.move_to_end(name)
                return self._layers[name]
        layers = lora_layers(read_adapter(self.registry.get(name).path))
        with self._lock:
            self._layers[name] = layers
            while len(self._layers) > self._cache_size:
                self._layers.popitem(last=False)
        return layers

    def prepare(self, stack: StackRecord) -> PreparedStack:
        """Load (cache or disk) and combine a stack's adapters; does not make it live."""
        items = [(i.adapter, self._adapter_layers(i.adapter), i.weight) for i in stack.items]
        prepared = prepare_stack(stack.name, items, dtype=self.handle.dtype, device=self.handle.device)
        self.hooks.ensure(list(prepared.layers))
        return prepared

    def prepare_adapters(self, refs: Sequence[str | AdapterRef | tuple[str | AdapterRef, float]]) -> PreparedStack:
        """A prepared stack of explicit adapters (``skill@vN`` or ``skill``), not tied to an agent."""
        items = []
        for ref in refs:
            name, weight = (ref, 1.0) if isinstance(ref, str | AdapterRef) else ref
            rec = self.registry.get(name)
            items.append((rec.name, self._adapter_layers(rec.name), float(weight)))
        check_one_per_skill(name for name, _, _ in items)
        label = "+".join(n if w == 1.0 else f"{n}*{w:g}" for n, _, w in items) or "base"
        prepared = prepare_stack(label, items, dtype=self.handle.dtype, device=self.handle.device)
        self.hooks.ensure(list(prepared.layers))
        return prepared

    def _switch(self, agent: str, state: LiveState) -> None:
        with self._lock:
            old = self._live.get(agent)
            if old is not None and old.deployment.stack.id != state.deployment.stack.id:
                self._warm[agent] = old
            self._live[agent] = state  # the switch: one reference assignment

    # -- changing what is live ----------------------------------------------------------------
    def deploy(self, agent: str, target: str | StackRef | AdapterRef | Sequence[Any], *, actor: str = "runtime",
               reason: str = "", run_id: str | None = None) -> DeployOutcome:
        """Validate, record in the registry, prepare, and switch ``agent`` to the new stack."""
        outcome = deploy_validated(self.registry, agent, target, actor=actor, reason=reason, run_id=run_id,
                                   validate=self.validate, handle=self.handle, max_delta_norm=self.max_delta_norm,
                                   cache=self._verdicts)
        if outcome.deployment is not None:
            self._activate(outcome.deployment)
        return outcome

    def rollback(self, agent: str, *, to: str | None = None, actor: str = "runtime",
                 reason: str = "rollback") -> DeployOutcome:
        dep = self.registry.rollback(agent, to=to, actor=actor, reason=reason)
        self._activate(dep)
        return DeployOutcome(status="deployed", deployment=dep)

    def remove_skill(self, agent: str, skill: str, *, actor: str = "runtime", reason: str = "") -> DeployOutcome:
        dep = self.registry.remove_skill(agent, skill, actor=actor, reason=reason)
        self._activate(dep)
        return DeployOutcome(status="deployed", deployment=dep)

    def _activate(self, dep: DeploymentRecord) -> None:
        with self._lock:
            current = self._live.get(dep.agent)
            if current is not None and current.deployment.seq >= dep.seq:
                return  # already there (e.g. sync got it first)
            warm = self._warm.get(dep.agent)
            if warm is not None and warm.deployment.stack.id == dep.stack.id:
                prepared = warm.stack  # rollback to the previous stack: no disk, no re-prepare
            elif current is not None and current.deployment.stack.id == dep.stack.id:
                prepared = current.stack
            else:
                prepared = self.prepare(dep.stack)
            self._switch(dep.agent, LiveState(dep, prepared))

    def load(self, agent: str) -> LiveState | None:
        """Switch ``agent`` to its newest deployment in the registry (validated); None if it has none."""
        dep = self.registry.live(agent)
        if dep is not None:
            self._apply(dep)
        return self._live.get(agent)

    def sync(self) -> list[str]:
        """Apply deployments other processes wrote to the registry; returns agents switched."""
        changed = []
        for agent, (seq, _dep_id) in self.registry.live_heads().items():
            current = self._live.get(agent)
            if current is not None and current.deployment.seq >= seq:
                continue
            dep = self.registry.live(agent)
            if dep is not None and self._apply(dep):
                changed.append(agent)
        return changed

    def _apply(self, dep: DeploymentRecord) -> bool:
        if self.validate and dep.stack.items:
            bad = [v for v in check_stack(self.registry, dep.stack, self.handle, self._verdicts, self.max_delta_norm) if not v.ok]
            if bad:
                # Deployed elsewhere but refused by this model: keep serving what we have.
                self.last_sync_error = "; ".join(f"{v.adapter}: {v.reason}" for v in bad)
                log.error("not switching %s to %s: %s", dep.agent, dep.stack.name, self.last_sync_error)
                return False
        self._activate(dep)
        return True

    def watch(self, interval: float = 0.25) -> None:
        """Follow the registry from a background thread (LISTEN/NOTIFY on PostgreSQL, else polling)."""
        if self._watcher is not None:
            return
        self._stop.clear()
        self._watcher = threading.Thread(target=self._watch_loop, args=(interval,), daemon=True,
                                         name="agent-sleep-runtime-watch")
        self._watcher.start()

    def stop(self) -> None:
        self._stop.set()
        if self._watcher is not None:
            self._watcher.join(timeout=5)
            self._watcher = None

    def _watch_loop(self, interval: float) -> None:
        if self.registry.engine.dialect.name == "postgresql":
            try:
                listen(self.registry.engine.url, self._sync_logged, self._stop, interval=interval)
            except Exception as exc:  # fall back to polling
                log.info("LISTEN unavailable (%s); polling the registry", exc)
        while not self._stop.is_set():
            self._sync_logged()
            self._stop.wait(interval)

    def _sync_logged(self, _agent: str | None = None) -> None:
        try:
            self.sync()
        except Exception as exc:  # a flaky database must not kill the watcher
            self.last_sync_error = str(exc)
            log.warning("registry sync failed: %s", exc)

    # -- using it -----------------------------------------------------------------------------
    def chat_model(self, agent: str | None = None, *,
                   adapters: Sequence[str | AdapterRef | tuple[str | AdapterRef, float]] | None = None,
                   **generation: Any) -> LiveChatModel:
        """A LangChain chat model: ``agent``'s live stack per request, or a fixed adapter list."""
        from agent_sleep.runtime.live_chat import LiveChatModel

        pinned = self.prepare_adapters(adapters) if adapters else None
        return LiveChatModel(runtime=self, agent=agent, pinned=pinned, model=self.handle.spec, **generation)

    def wait_for(self, agent: str, seq: int, timeout: float = 5.0) -> bool:
        """Block until ``agent`` runs deployment ``seq`` or newer (tests, scripts)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            state = self._live.get(agent)
            if state is not None and state.deployment.seq >= seq:
                return True
            time.sleep(0.01)
        return False

    def require_agent(self, agent: str) -> LiveState:
        state = self._live.get(agent)
        if state is None:
            raise NotFoundError(f"agent {agent!r} has no live deployment")
        return state

