"""Per-request routing: a routed adapter applies only to requests that resemble what it learned.

An adapter whose manifest carries a :class:`~agent_sleep.adapters.manifest.RoutingSpec` (the sleep
cycle writes one when its config's ``routing`` is on: the user questions of the skill's training
conversations, or its documents' sentences) is applied to a request only when the request's last
user message is close enough to one of its keys: cosine similarity of sentence embeddings (MiniLM)
at or above the spec's threshold. Otherwise the request runs on the rest of the stack, bit for bit
as if the adapter were not deployed. A skill learned from a night of order-status corrections then
cannot change how the agent answers "What is the capital of Peru?".

:class:`Router` embeds each adapter's keys once (cached by adapter name: a registered version never
changes) and scores one request text against them. The runtime uses it to pick a request's sub-stack
(:meth:`~agent_sleep.runtime.live.LiveRuntime.route`); the gate uses the same decision per evaluation
item (:mod:`agent_sleep.consolidation.gating`), so what is measured is what will run. Adapters of one routing
``group`` (the sleep cycle groups a night's ``d2l`` adapters: one per document) compete: of those that fire on a
request only the closest applies (:func:`applying`), since a question is about one document; stacking every
firing document adapter kept less of each one's accuracy (``evals/results/d2l_multi.md``).

Measured on the demo's day with the default threshold (0.55): the held-out rephrasings of the day's
questions score 0.63-0.93 against the day's questions; the general-knowledge and instruction guard
items at most 0.35; the helpdesk guard items up to 0.57 (help-centre notes about order numbers).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from agent_sleep.adapters.manifest import RoutingSpec
from agent_sleep.errors import ConfigError
from agent_sleep.selectors.embeddings import Embedder, MiniLMEmbedder

__all__ = ["Router", "applying", "last_user_text"]


class Router:
    """Scores request texts against routed adapters' keys; one per runtime, safe to share across threads."""

    def __init__(self, embedder: Embedder | Callable[[], Embedder] | None = None) -> None:
        self._embedder: Embedder | None = embedder if isinstance(embedder, Embedder) else None
        self._factory: Callable[[], Embedder] = embedder if callable(embedder) and self._embedder is None \
            else (lambda: MiniLMEmbedder(threads=1))  # fmt: skip
        self._keys: dict[str, Any] = {}
        self._lock = threading.Lock()

    @property
    def embedder(self) -> Embedder:
        with self._lock:
            if self._embedder is None:
                self._embedder = self._factory()
            return self._embedder

    def _check(self, spec: RoutingSpec) -> None:
        if spec.encoder.casefold() != self.embedder.name.casefold():
            raise ConfigError(f"routing keys were written for encoder {spec.encoder!r}; this runtime embeds with "
                              f"{self.embedder.name!r}")  # fmt: skip

    def _keys_of(self, name: str, spec: RoutingSpec) -> np.ndarray:
        """``name``'s key vectors, embedded on first use."""
        self._check(spec)
        keys = self._keys.get(name)
        if keys is None:
            keys = self._keys[name] = self.embedder.embed(list(spec.keys))
        return keys

    def similarity(self, name: str, spec: RoutingSpec, text: str) -> float:
        """The best cosine similarity of ``text`` to ``name``'s keys."""
        return float(self.similarities(name, spec, [text])[0])

    def similarities(self, name: str, spec: RoutingSpec, texts: Sequence[str]) -> np.ndarray:
        """Per text, the best cosine similarity to ``name``'s keys (one batch: for scoring many items)."""
        return self.similarity_table({name: spec}, texts)[:, 0]

    def similarity_table(self, specs: Mapping[str, RoutingSpec], texts: Sequence[str]) -> np.ndarray:
        """``[texts, adapters]``: each text's best cosine similarity to each adapter's keys, adapters in ``specs``
        order; the texts are embedded once, however many adapters are compared."""
        keys = [self._keys_of(name, spec) for name, spec in specs.items()]
        if not texts or not keys:
            return np.zeros((len(texts), len(keys)), dtype=np.float32)
        vectors = self.embedder.embed([t or "" for t in texts])
        return np.stack([(vectors @ k.T).max(axis=1) for k in keys], axis=1)

    def fires(self, name: str, spec: RoutingSpec, text: str) -> bool:
        return self.similarity(name, spec, text) >= spec.threshold

    def active(self, items: Sequence[tuple[str, float]], specs: Mapping[str, RoutingSpec | None],
               text: str | None) -> tuple[tuple[str, float], ...]:  # fmt: skip
        """The stack items that apply to a request whose last user message is ``text`` (None: every item).
        The text is embedded once, whatever the number of routed items."""
        if text is None or not any(specs.get(n) for n, _ in items):
            return tuple(items)
        vector = self.embedder.embed([text])[0]
        near = {n: float((self._keys_of(n, spec) @ vector).max()) for n, _ in items if (spec := specs.get(n))}
        on = applying(near, specs)
        return tuple((n, w) for n, w in items if specs.get(n) is None or n in on)


def applying(near: Mapping[str, float], specs: Mapping[str, RoutingSpec | None]) -> set[str]:
    """The routed adapters that apply to one request, given each one's best similarity ``near`` to it: those that
    reach their threshold, and of a ``group``, only the closest of those (ties: the first name in sorted order).
    The runtime and the gate both decide with this rule."""
    firing = sorted(n for n, sim in near.items() if (spec := specs.get(n)) is not None and sim >= spec.threshold)
    best: dict[str, str] = {}
    for n in firing:
        group = specs[n].group  # type: ignore[union-attr]
        if group is not None and (group not in best or near[n] > near[best[group]]):
            best[group] = n
    return {n for n in firing if specs[n].group is None or best[specs[n].group] == n}  # type: ignore[union-attr]


def last_user_text(messages: Sequence[Any]) -> str | None:
    """The text of the last user message (LangChain messages or ``{"role", "content"}`` dicts); None if none."""
    for m in reversed(messages):
        role = m.get("role") if isinstance(m, Mapping) else getattr(m, "type", None)
        if role in ("user", "human"):
            content = m.get("content") if isinstance(m, Mapping) else getattr(m, "content", "")
            if isinstance(content, list):  # content parts: keep the text ones
                content = " ".join(str(p.get("text", "")) if isinstance(p, Mapping) else str(p) for p in content)
            return str(content or "")
    return None
