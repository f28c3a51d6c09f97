"""The live runtime: one base model, a live adapter stack per agent, hot-swapped.

Adapters are applied by forward hooks (``agent_sleep.adapters.stack.LoraHooks``)
that read the stack bound to the *current request*; a request pins the agent's
live :class:`PreparedStack` when it starts and runs every step on it. Making a
new stack live is therefore one reference assignment between requests: no
request ever sees a mix, and the old stack's tensors are freed when the last
request holding it finishes (reference counting is the drain).

The registry in SQL is the source of truth: ``deploy``/``rollback`` validate,
write it and then switch locally; :meth:`LiveRuntime.sync` (run by
:meth:`watch`, about every 0.25 s, and at once on PostgreSQL NOTIFY:
:mod:`agent_sleep.registry.notify`) applies deployments made by other
processes, after validating them itself. A deployment it refuses is logged
once and kept as a :class:`Refusal`; it is tried again only after a growing
pause (5 s, doubling up to 5 min), or at once when a newer deployment comes.
The stack that was live before stays prepared ("warm"), so a rollback to it
needs no disk access. Every switch is logged at INFO on ``agent_sleep.runtime``
(``helpdesk: switched to helpdesk:stack@v2#2 (deploy by consolidation, run R)
from helpdesk:stack@v1#1; ...``); ``agent-sleep serve`` prints these lines.

Lifecycle: ``with LiveRuntime(registry) as runtime: runtime.watch(); ...``
stops the watcher on leaving the block; a watcher still running when the
interpreter exits is stopped and joined first (it may be inside torch code,
which must not be running while the process tears down).
"""

from __future__ import annotations

import logging
import threading
import time
import weakref
from collections import OrderedDict
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from agent_sleep.adapters.manifest import RoutingSpec
from agent_sleep.adapters.sections import section_layers
from agent_sleep.adapters.stack import LoraHooks, PreparedStack, check_weight, prepare_stack, stack_label
from agent_sleep.errors import AgentSleepError, NotFoundError
from agent_sleep.models.loader import BaseModelHandle, load_base_model
from agent_sleep.registry import AdapterRegistry, DeploymentRecord, StackRecord
from agent_sleep.registry.notify import listen
from agent_sleep.registry.records import refuse_rejected
from agent_sleep.registry.refs import AdapterRef, StackRef, check_one_per_skill
from agent_sleep.runtime.chat_model import PinnedModel
from agent_sleep.runtime.deploy import (
    DeployOutcome,
    VerdictCache,
    check_stack,
    deploy_validated,
    rollback_validated,
)
from agent_sleep.runtime.routing import Router, section_name, split_section

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


@dataclass(frozen=True)
class Refusal:
    """A deployment this runtime would not switch to: why, how often it tried, when it tries again."""

    deployment: DeploymentRecord
    reason: str
    attempts: int
    retry_at: float  # time.monotonic() of the next attempt


def _stop_watcher(stop: threading.Event, thread: threading.Thread) -> None:
    stop.set()
    if thread is not threading.current_thread():
        thread.join(timeout=60)  # a validation in progress finishes; then the loop sees the event


class LiveRuntime:
    """Serve several agents from one base model, each on its own live stack.

    A context manager: leaving ``with LiveRuntime(...) as runtime:`` stops the watcher.
    """

    REFUSAL_BACKOFF = (5.0, 300.0)  # seconds before the first retry of a refused deployment; the most

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
        self._routing: dict[str, RoutingSpec | None] = {}  # adapter name -> its routing spec (None: always applies)
        self._routed: OrderedDict[tuple[Any, ...], PreparedStack | None] = OrderedDict()  # sub-stacks, LRU
        self.router = Router()
        self._cache_size = cache_adapters
        self._verdicts: VerdictCache = {}
        self._lock = threading.RLock()  # serialises switches; readers never take it
        self._watcher: threading.Thread | None = None
        self._finalizer: weakref.finalize | None = None
        self._stop = threading.Event()
        self._refused: dict[str, Refusal] = {}
        self.last_sync_error: str | None = None

    def __enter__(self) -> LiveRuntime:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # -- reading what is live (hot path: no locks) -------------------------------------------
    def live(self, agent: str) -> LiveState | None:
        return self._live.get(agent)

    def agents(self) -> list[str]:
        return sorted(self._live)

    def pin(self, agent: str) -> PreparedStack | None:
        """The stack live for ``agent`` right now (None: base model only)."""
        state = self._live.get(agent)
        return state.stack if state else None

    def pinned(self, stack: PreparedStack | None, *, text: str | None = None) -> PinnedModel:
        """The shared model, for one request whose generations run on ``stack`` (routed by ``text``, the
        request's last user message, when some of its adapters are routed: see :meth:`route`)."""
        return PinnedModel(self.handle, self.route(stack, text), self.hooks.activate)

    def routing(self, name: str) -> RoutingSpec | None:
        """The routing spec in ``name``'s manifest (None: the adapter applies to every request)."""
        name = split_section(name)[0]
        if name not in self._routing:
            self._adapter_layers(name)
        return self._routing.get(name)

    def route(self, stack: PreparedStack | None, text: str | None) -> PreparedStack | None:
        """The part of ``stack`` that applies to a request whose last user message is ``text``.

        Adapters without a routing spec always apply; a routed one applies when ``text`` is close to one of
        its keys (:class:`~agent_sleep.runtime.routing.Router`), and one with routed sections as the section
        closest to ``text`` (``{adapter}#{k}``). ``text`` None, or every adapter applying whole, gives ``stack``
        itself; none applying gives None (the base model). Sub-stacks are cached.
        """
        if stack is None or text is None:
            return stack
        # an item that is already one section (``{adapter}#{k}``, asked for by name) applies as it is
        specs = {name: None if split_section(name)[1] is not None else self.routing(name) for name, _ in stack.items}
        if not any(specs.values()):
            return stack
        active = self.router.active(stack.items, specs, text)
        if active == tuple(stack.items):  # every adapter whole (a sectioned one applies as one section)
            return stack
        if not active:
            return None
        key = (stack.name, stack.items, active)
        with self._lock:
            if key in self._routed:
                self._routed.move_to_end(key)
                return self._routed[key]
        items = [(name, self._adapter_layers(name), weight) for name, weight in active]
        sub = prepare_stack(stack_label(active), items, dtype=self.handle.dtype, device=self.handle.device,
                            combine=stack.combine)  # fmt: skip
        with self._lock:
            self._routed[key] = sub
            while len(self._routed) > self._cache_size:
                self._routed.popitem(last=False)
        return sub

    @contextmanager
    def using(self, stack: PreparedStack | None) -> Iterator[None]:
        """Run model calls in this block on ``stack`` (for direct ``model(...)`` use)."""
        with self.hooks.activate(stack):
            yield

    # -- preparing stacks ---------------------------------------------------------------------
    def _adapter_layers(self, name: str) -> Mapping[str, LoraWeights]:
        """``name``'s LoRA layers (cached); ``{adapter}#{k}``: only routed section ``k``'s rank rows and the shared
        ones (:func:`~agent_sleep.adapters.sections.section_layers`)."""
        from agent_sleep.adapters.artifact import lora_layers, read_adapter

        with self._lock:
            if name in self._layers:
                self._layers.move_to_end(name)
                return self._layers[name]
        adapter, section = split_section(name)
        if section is not None:
            spec = self.routing(adapter)
            if spec is None or not spec.sections:
                raise NotFoundError(f"{adapter} has no routed sections, so there is no {name}")
            layers = section_layers(self._adapter_layers(adapter), spec, section, adapter)
            with self._lock:
                self._layers[name] = layers
            return layers
        artifact = read_adapter(self.registry.get(name).path)
        layers = lora_layers(artifact)
        with self._lock:
            self._layers[name] = layers
            self._routing[name] = artifact.manifest.routing if artifact.manifest is not None else None
            while len(self._layers) > self._cache_size:
                self._layers.popitem(last=False)
        return layers

    def _refuse_rejected(self, names: Sequence[str]) -> None:
        refuse_rejected([self.registry.get(name) for name in names])

    def prepare(self, stack: StackRecord) -> PreparedStack:
        """Load (cache or disk) and combine a stack's adapters; does not make it live. Refuses rejected versions."""
        self._refuse_rejected([i.adapter for i in stack.items])
        items = [(i.adapter, self._adapter_layers(i.adapter), i.weight) for i in stack.items]
        prepared = prepare_stack(stack.name, items, dtype=self.handle.dtype, device=self.handle.device)
        self.hooks.ensure(list(prepared.layers))
        return prepared

    def prepare_adapters(self, refs: Sequence[str | AdapterRef | tuple[str | AdapterRef, float]]) -> PreparedStack:
        """A prepared stack of explicit adapters (``skill@vN`` or ``skill``; ``skill@vN#k``: only its routed
        section ``k``, as :meth:`route` serves it), not tied to an agent.

        Weights must be ones a stack may use (``check_weight``); a rejected version is refused.
        """
        items = []
        for ref in refs:
            name, weight = (ref, 1.0) if isinstance(ref, str | AdapterRef) else ref
            name, section = split_section(name) if isinstance(name, str) else (name, None)
            rec = self.registry.get(name)
            weight = check_weight(weight, rec.name)
            self._refuse_rejected([rec.name])
            item = rec.name if section is None else section_name(rec.name, section)
            items.append((item, self._adapter_layers(item), weight))
        check_one_per_skill(split_section(name)[0] for name, _, _ in items)
        prepared = prepare_stack(stack_label([(n, w) for n, _, w in items]), items, dtype=self.handle.dtype,
                                 device=self.handle.device)
        self.hooks.ensure(list(prepared.layers))
        return prepared

    def _switch(self, agent: str, state: LiveState) -> None:
        with self._lock:
            old = self._live.get(agent)
            if old is not None and old.deployment.stack.id != state.deployment.stack.id:
                self._warm[agent] = old
            self._live[agent] = state  # the switch: one reference assignment
            refused = self._refused.get(agent)
            if refused is not None and refused.deployment.seq <= state.deployment.seq:
                del self._refused[agent]
        dep = state.deployment
        how = f"{dep.kind} by {dep.actor}" + (f", run {dep.run_id}" if dep.run_id else "")
        if old is None:
            log.info("%s: serving %s (%s)", agent, state.version, how)
        else:
            log.info("%s: switched to %s (%s) from %s; requests in flight finish on the stack they started with",
                     agent, state.version, how, old.version)

    # -- changing what is live ----------------------------------------------------------------
    def deploy(self, agent: str, target: str | StackRef | AdapterRef | Sequence[Any], *, actor: str = "runtime",
               reason: str = "", run_id: str | None = None, detail: Mapping[str, Any] | None = None,
               expected_seq: int | None = None) -> DeployOutcome:
        """Validate, record in the registry, prepare, and switch ``agent`` to the new stack.

        ``expected_seq``: only while deployment #``expected_seq`` is live (else DeployConflictError).
        """
        outcome = deploy_validated(self.registry, agent, target, actor=actor, reason=reason, run_id=run_id,
                                   validate=self.validate, handle=self.handle, max_delta_norm=self.max_delta_norm,
                                   cache=self._verdicts, layers_of=self._adapter_layers, detail=detail,
                                   expected_seq=expected_seq)  # fmt: skip
        if outcome.deployment is not None:
            self._activate(outcome.deployment)
        return outcome

    def rollback(self, agent: str, *, to: str | None = None, actor: str = "runtime",
                 reason: str = "rollback", expected_seq: int | None = None,
                 detail: Mapping[str, Any] | None = None) -> DeployOutcome:
        """Validate the earlier stack like a deploy, then make it live again (``rejected``: nothing changed).

        ``expected_seq``: only while deployment #``expected_seq`` is live (else DeployConflictError).
        """
        outcome = rollback_validated(self.registry, agent, to=to, actor=actor, reason=reason, validate=self.validate,
                                     handle=self.handle, max_delta_norm=self.max_delta_norm, cache=self._verdicts,
                                     layers_of=self._adapter_layers, expected_seq=expected_seq, detail=detail)
        if outcome.deployment is not None:
            self._activate(outcome.deployment)
        return outcome

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
        """Apply deployments other processes wrote to the registry; returns agents switched.

        A deployment refused before is skipped until its retry time (see :meth:`refusal`).
        """
        return self._sync()

    def _sync(self, stop: threading.Event | None = None) -> list[str]:
        changed = []
        for agent, (seq, dep_id) in self.registry.live_heads().items():
            if stop is not None and stop.is_set():
                break  # the watcher is being stopped (maybe at exit): no new validation
            current = self._live.get(agent)
            if current is not None and current.deployment.seq >= seq:
                continue
            refused = self._refused.get(agent)
            if refused is not None and refused.deployment.id == dep_id and time.monotonic() < refused.retry_at:
                continue
            dep = self.registry.live(agent)
            if dep is not None and self._apply(dep):
                changed.append(agent)
        return changed

    def refusal(self, agent: str) -> Refusal | None:
        """The newest deployment of ``agent`` this runtime refused to switch to, if it still stands."""
        return self._refused.get(agent)

    def _apply(self, dep: DeploymentRecord) -> bool:
        """Validate (not recording anything: the deployer did) and switch; a refusal keeps what is live."""
        reason = None
        try:
            if self.validate and dep.stack.items:
                verdict = check_stack(self.registry, dep.stack, self.handle, self._verdicts, self.max_delta_norm,
                                      record=False, layers_of=self._adapter_layers)
                reason = verdict.reason
            if reason is None:
                self._activate(dep)
        except AgentSleepError as exc:  # e.g. a rejected version or an unreadable folder
            reason = str(exc)
        if reason is not None:
            self._refuse(dep, reason)
            return False
        return True

    def _refuse(self, dep: DeploymentRecord, reason: str) -> None:
        """Keep serving what we have; say so once per deployment and reason, then back off."""
        with self._lock:
            prev = self._refused.get(dep.agent)
            again = prev is not None and prev.deployment.id == dep.id
            attempts = prev.attempts + 1 if again and prev is not None else 1
            first, most = self.REFUSAL_BACKOFF
            delay = min(most, first * 2 ** (attempts - 1))
            self._refused[dep.agent] = Refusal(dep, reason, attempts, time.monotonic() + delay)
            self.last_sync_error = reason
        if again and prev is not None and prev.reason == reason:
            log.debug("still not switching %s to %s (attempt %d): %s", dep.agent, dep.stack.name, attempts, reason)
        else:
            log.error("not switching %s to %s #%d: %s (next try in %gs, or at the next deployment)", dep.agent,
                      dep.stack.name, dep.seq, reason, delay)

    def watch(self, interval: float = 0.25) -> None:
        """Follow the registry from a background thread (LISTEN/NOTIFY on PostgreSQL, else polling).

        End it with :meth:`stop` or a ``with`` block; at interpreter exit it is stopped and joined.
        """
        if self._watcher is not None and self._watcher.is_alive():
            return
        self._stop.clear()
        thread = threading.Thread(target=self._watch_loop, args=(interval,), daemon=True,
                                  name="agent-sleep-runtime-watch")
        self._watcher = thread
        if self._finalizer is not None:
            self._finalizer.detach()  # from a watcher that ended on its own
        # Runs at exit (before the interpreter tears down) or when stop() detaches it. It holds the
        # event and the thread, not the runtime, so it keeps nothing alive.
        self._finalizer = weakref.finalize(self, _stop_watcher, self._stop, thread)
        thread.start()

    def stop(self) -> None:
        """Stop the watcher (waiting for a sync in progress); a no-op when none runs."""
        self._stop.set()
        thread, self._watcher = self._watcher, None
        if self._finalizer is not None:
            self._finalizer.detach()
            self._finalizer = None
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=60)

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
            self._sync(self._stop)
        except Exception as exc:  # a flaky database must not kill the watcher
            # Once per distinct error, not every poll: an outage would otherwise log 4 lines a second.
            level = logging.DEBUG if str(exc) == self.last_sync_error else logging.WARNING
            self.last_sync_error = str(exc)
            log.log(level, "registry sync failed: %s", exc)

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

