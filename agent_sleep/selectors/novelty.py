"""Novelty: drop a candidate whose text is already consolidated (a near restatement of a reference).

:class:`NoveltySelector` embeds the reference texts once (what earlier runs consolidated: documents,
episodes, corrections), then embeds candidates batch by batch as the chain streams them, and drops a
candidate whose highest cosine similarity to any reference is at or above ``threshold``. Each decision
says the similarity and which reference was nearest. A known conversation whose feedback carries an
instruction is handed on for the instruction only (the instruction is the news); an episode used for
its instruction only is not compared.

It compares against the references only, never against earlier candidates in the same stream:
repeats within one run are the duplicate selector's job, and comparing within the stream would make a
decision depend on the order and batching of the items, where a selector must give the same selection
for the same input. Texts longer than the embedder's window (256 tokens for MiniLM) are judged by
their beginning.

References must be texts of the same shape as the candidates' ``text``: an episode's text carries
``user:``/``assistant:`` turns, and that framing alone moves MiniLM's cosine a lot (a restatement
scored 0.95 against a bare reference sentence but 0.77 against the same sentence framed as an
episode). :meth:`NoveltySelector.from_candidates` builds the references from consolidated candidates.

The default threshold, 0.85, comes from ``evals/novelty_threshold.py`` (30 + 30 + 15 helpdesk pairs,
MiniLM). As bare texts, paraphrases of one request or fact scored 0.59-0.88 (median 0.78), different
requests on the same topic 0.22-0.78 (median 0.50), unrelated ones below 0.37; framed as episodes
(``user: ...`` plus a shared opening reply) 0.72-0.94 (median 0.81), 0.31-0.78 and below 0.58. At 0.85
no same-topic request is dropped in either framing, with a margin of 0.07 over the highest one ("cancel
my subscription" against "pause my subscription", 0.78); 6 of 30 bare and 9 of 30 episode paraphrases
are dropped. 0.80 drops 12 and 19 of them with no margin left; dropping new material costs knowledge,
keeping a restatement only costs compute, so the default errs on keeping.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from itertools import islice
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np

from agent_sleep.errors import ConfigError
from agent_sleep.interfaces import Decision, Identified, Selection
from pydantic import Field

from agent_sleep.selectors.base import SelectorContext, SelectorParams
from agent_sleep.selectors.embeddings import Embedder, MiniLMEmbedder

if TYPE_CHECKING:
    import numpy.typing as npt

__all__ = ["DEFAULT_THRESHOLD", "NoveltySelector"]

DEFAULT_THRESHOLD = 0.85
T = TypeVar("T", bound=Identified)


class NoveltySelector:
    """Keeps candidates unlike every reference text (cosine similarity below ``threshold``).

    ``reference_texts``: plain texts (named ``ref-0``, ``ref-1``... in reasons) or ``(id, text)`` pairs.
    A candidate needs ``id`` and ``text`` (episode and document candidates have both).
    ``batch_size``: candidates embedded at a time.
    """

    class Params(SelectorParams):
        """What a chain config may set under ``novelty``'s ``params:``."""

        threshold: float = Field(default=DEFAULT_THRESHOLD, ge=-1.0, le=1.0)
        batch_size: int = Field(default=256, ge=1)
        max_length: int = Field(default=128, ge=8, le=256)  # tokens embedded per text

    @classmethod
    def from_params(cls, params: NoveltySelector.Params, context: SelectorContext) -> NoveltySelector:
        """MiniLM over the run's references (``context.reference_texts``: texts or ``(id, text)`` pairs)."""
        embedder = MiniLMEmbedder(max_length=params.max_length)
        return cls(embedder, context.reference_texts, threshold=params.threshold, batch_size=params.batch_size)

    def __init__(self, embedder: Embedder, reference_texts: Sequence[str] | Sequence[tuple[str, str]] = (), *,
                 threshold: float = DEFAULT_THRESHOLD, name: str = "novelty", batch_size: int = 256) -> None:  # fmt: skip
        if not -1.0 <= threshold <= 1.0:
            raise ConfigError(f"novelty threshold must be a cosine similarity in [-1, 1], got {threshold}")
        if batch_size < 1:
            raise ConfigError(f"novelty batch_size must be at least 1, got {batch_size}")
        self.embedder = embedder
        self.threshold = threshold
        self.batch_size = batch_size
        self._name = name
        pairs = [(f"ref-{i}", r) if isinstance(r, str) else (str(r[0]), r[1]) for i, r in enumerate(reference_texts)]
        self.reference_ids = tuple(p[0] for p in pairs)
        self._reference_texts = tuple(p[1] for p in pairs)
        self._references: npt.NDArray[np.float32] | None = None

    @classmethod
    def from_candidates(cls, embedder: Embedder, consolidated: Iterable[Identified], **kwargs: Any) -> NoveltySelector:
        """References from already consolidated candidates (episodes, documents): their ids and texts."""
        return cls(embedder, [(c.id, c.text) for c in consolidated], **kwargs)  # type: ignore[attr-defined]

    @property
    def name(self) -> str:
        return self._name

    def references(self) -> npt.NDArray[np.float32]:
        """The reference embeddings, computed on first use and kept."""
        if self._references is None:
            self._references = self.embedder.embed(self._reference_texts)
        return self._references

    def select(self, items: Iterable[T], /) -> Selection[T]:
        kept: list[T] = []
        decisions: list[Decision] = []
        for batch in _batches(items, self.batch_size):
            for item, keep, reason in self._judge(batch):
                if keep:
                    kept.append(item)
                decisions.append(Decision(item.id, keep, reason, self._name))
        return Selection(tuple(kept), tuple(decisions))

    def _judge(self, batch: list[T]) -> Iterator[tuple[T, bool, str]]:
        if not self._reference_texts:
            for item in batch:
                yield item, True, "novel: nothing consolidated to compare with"
            return
        aside = [i for i in batch if getattr(i, "instruction_only", None) is not None]
        for item in aside:  # its conversation is not used: nothing to compare
            yield item, True, "used for its instruction only: not compared"
        batch = [i for i in batch if getattr(i, "instruction_only", None) is None]
        if not batch:
            return
        texts = []
        for item in batch:
            text = getattr(item, "text", None)
            if not isinstance(text, str):
                raise TypeError(f"NoveltySelector needs items with a text; {type(item).__name__} {item.id!r} has none")
            texts.append(text)
        references = self.references()
        sims = self.embedder.embed(texts) @ references.T
        nearest = sims.argmax(axis=1)
        for item, row, j in zip(batch, sims, nearest, strict=True):
            sim, ref = float(row[j]), self.reference_ids[j]
            if sim >= self.threshold:
                why = f"already consolidated: cosine {sim:.3f} >= {self.threshold:.2f} to reference {ref}"
                keep = getattr(item, "keep_instructions", None)
                instead = keep(why) if callable(keep) else None
                if instead is not None:  # a new instruction on a known conversation is still news
                    yield instead[0], True, instead[1]  # type: ignore[misc]
                else:
                    yield item, False, why
            else:
                yield item, True, f"novel: max cosine {sim:.3f} < {self.threshold:.2f} (nearest reference {ref})"


def _batches(items: Iterable[T], size: int) -> Iterator[list[T]]:
    it = iter(items)
    while batch := list(islice(it, size)):
        yield batch
