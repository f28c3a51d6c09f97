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

Sections (:class:`~agent_sleep.adapters.manifest.RoutingSpec` ``sections``): a long document's ``d2l`` adapter
holds every chunk, each a slice of the rank with the chunk's sentences as keys. Where the adapter applies, the
request gets the section closest to it (plus the rows no section claims) under the name ``{adapter}#{k}``
(:func:`section_name`); :func:`~agent_sleep.adapters.sections.section_layers` cuts those rows out. Summing all of
a fact-dense document's chunks answered 6-11 % of its questions, the chunk the question went to 78 %
(``evals/results/niah_dense_needles_route.md``).

A request that names a rare name an adapter's keys hold (a word the encoder's vocabulary lacks, capitalised
mid-sentence: an invented organisation, product or place) gets the spec's ``name_bonus`` added to its similarity
to that adapter (the sleep cycle writes 0.1 for ``d2l``): "What do you type on the side-door keypad of Ravdell
Mills?" reaches "Ravdell Mills set its alarm to switch off on 4019." at cosine 0.40-0.49, around the d2l threshold.
Sections are still chosen by cosine alone.

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
from agent_sleep.key_terms import rare_names, term_set
from agent_sleep.selectors.embeddings import Embedder, MiniLMEmbedder

__all__ = ["Router", "applying", "last_user_text", "section_name", "split_section"]

_SECTION = "#"


def section_name(adapter: str, section: int) -> str:
    """The name a stack item has when only section ``section`` of ``adapter`` applies: ``{adapter}#{section}``."""
    return f"{adapter}{_SECTION}{section}"


def split_section(name: str) -> tuple[str, int | None]:
    """``(adapter, section)`` of a stack item's name (section None: the whole adapter)."""
    adapter, mark, section = name.rpartition(_SECTION)
    if not mark or not section.isdigit():
        return name, None
    return adapter, int(section)


class Router:
    """Scores request texts against routed adapters' keys; one per runtime, safe to share across threads."""

    def __init__(self, embedder: Embedder | Callable[[], Embedder] | None = None) -> None:
        if embedder is not None and not isinstance(embedder, Embedder) and not callable(embedder):
            raise ConfigError(f"{type(embedder).__name__} is not an Embedder: it needs name, dim, embed() and "
                              "words() (the encoder's common words, for rare-name routing; empty if it has none)")
        self._embedder: Embedder | None = embedder if isinstance(embedder, Embedder) else None
        self._factory: Callable[[], Embedder] = embedder if callable(embedder) and self._embedder is None \
            else (lambda: MiniLMEmbedder(threads=1))  # fmt: skip
        self._keys: dict[str, Any] = {}
        self._terms: dict[str, frozenset[str]] = {}
        self._known: frozenset[str] | None = None
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
        """``name``'s key vectors (its keys, then each section's), embedded on first use."""
        return self._embedded(name, spec)[0]

    def _embedded(self, name: str, spec: RoutingSpec) -> tuple[np.ndarray, np.ndarray]:
        """``name``'s key vectors and, per vector, the section it belongs to (-1: the adapter's own keys)."""
        self._check(spec)
        found = self._keys.get(name)
        if found is None:
            texts = _key_texts(spec)
            counts = [len(spec.keys), *(len(s.keys) for s in spec.sections)]
            owners = np.repeat(np.arange(-1, len(spec.sections)), counts)
            found = self._keys[name] = (self.embedder.embed(texts), owners)
        return found

    def _bonus(self, name: str, spec: RoutingSpec, names: Sequence[set[str]]) -> np.ndarray:
        """Per request (its rare names, :meth:`names`), ``spec.name_bonus`` where ``name``'s keys hold one of them."""
        if not spec.name_bonus or not any(names):  # most requests name nothing rare: no key terms needed
            return np.zeros(len(names), dtype=np.float32)
        terms = self._terms.get(name)
        if terms is None:
            terms = self._terms[name] = frozenset().union(*map(term_set, _key_texts(spec)))
        return np.array([spec.name_bonus if n & terms else 0.0 for n in names], dtype=np.float32)

    def names(self, texts: Sequence[str]) -> list[set[str]]:
        """Per text, its rare names (:func:`~agent_sleep.key_terms.rare_names` against the encoder's words)."""
        if self._known is None:
            self._known = self.embedder.words()
        return [rare_names(t or "", self._known) for t in texts]

    def _near(self, name: str, spec: RoutingSpec, vectors: np.ndarray, names: Sequence[set[str]]) -> np.ndarray:
        """Per embedded request: its best cosine to ``name``'s keys plus the name bonus: what firing compares."""
        return (vectors @ self._keys_of(name, spec).T).max(axis=1) + self._bonus(name, spec, names)

    def sections_of(self, name: str, spec: RoutingSpec, vectors: np.ndarray) -> np.ndarray:
        """Per embedded request (rows of ``vectors``), the section of ``name`` whose keys are closest (-1 when
        ``name`` has no sections)."""
        if not spec.sections:
            return np.full(len(vectors), -1)
        keys, owners = self._embedded(name, spec)
        sims = vectors @ keys[owners >= 0].T
        return owners[owners >= 0][sims.argmax(axis=1)]

    def sections(self, name: str, spec: RoutingSpec, texts: Sequence[str]) -> np.ndarray:
        """Per text, the section of ``name`` it goes to (-1: ``name`` has no sections)."""
        return self.match(name, spec, texts)[1]

    def match(self, name: str, spec: RoutingSpec, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """Per text, its similarity to ``name`` (:meth:`similarities`) and the section it goes to (:meth:`sections`),
        the texts embedded once."""
        if not texts:
            return np.zeros(0, dtype=np.float32), np.full(0, -1)
        vectors = self.embedder.embed([t or "" for t in texts])
        return self._near(name, spec, vectors, self.names(texts)), self.sections_of(name, spec, vectors)

    def similarity(self, name: str, spec: RoutingSpec, text: str) -> float:
        """``text``'s similarity to ``name`` (:meth:`similarities`)."""
        return float(self.similarities(name, spec, [text])[0])

    def similarities(self, name: str, spec: RoutingSpec, texts: Sequence[str]) -> np.ndarray:
        """Per text, the best cosine similarity to ``name``'s keys, plus the spec's ``name_bonus`` where the text
        names a rare name the keys hold: the number compared with the threshold (one batch: for many items)."""
        return self.similarity_table({name: spec}, texts)[:, 0]

    def similarity_table(self, specs: Mapping[str, RoutingSpec], texts: Sequence[str]) -> np.ndarray:
        """``[texts, adapters]``: each text's similarity to each adapter (:meth:`similarities`), adapters in
        ``specs`` order; the texts are embedded once, however many adapters are compared."""
        if not texts or not specs:
            return np.zeros((len(texts), len(specs)), dtype=np.float32)
        vectors = self.embedder.embed([t or "" for t in texts])
        names = self.names(texts)
        return np.stack([self._near(name, spec, vectors, names) for name, spec in specs.items()], axis=1)

    def fires(self, name: str, spec: RoutingSpec, text: str) -> bool:
        return self.similarity(name, spec, text) >= spec.threshold

    def active(self, items: Sequence[tuple[str, float]], specs: Mapping[str, RoutingSpec | None],
               text: str | None) -> tuple[tuple[str, float], ...]:  # fmt: skip
        """The stack items that apply to a request whose last user message is ``text`` (None: every item); an
        adapter with sections as the section the text goes to (:func:`section_name`). The text is embedded once,
        whatever the number of routed items."""
        if text is None or not any(specs.get(n) for n, _ in items):
            return tuple(items)
        vector, names = self.embedder.embed([text]), self.names([text])
        near = {n: float(self._near(n, spec, vector, names)[0]) for n, _ in items if (spec := specs.get(n))}
        on = applying(near, specs)
        out = []
        for n, w in items:
            spec = specs.get(n)
            if spec is None:
                out.append((n, w))
            elif n in on:
                out.append((section_name(n, int(self.sections_of(n, spec, vector)[0])) if spec.sections else n, w))
        return tuple(out)


def _key_texts(spec: RoutingSpec) -> list[str]:
    """A spec's keys, then each section's, in order: what an adapter is matched against."""
    return list(spec.keys) + [k for s in spec.sections for k in s.keys]


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
