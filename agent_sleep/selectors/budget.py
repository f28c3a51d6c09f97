"""``budget``: at most ``max_episodes`` episodes, ``max_documents`` documents and ``max_chars`` characters
per run, the most valuable first.

Value order, best first: documents (newest first) before episodes; among episodes, corrected ones
(and those whose feedback carries an instruction) first, then by mean feedback score (unrated counts as 0.5), then newest first, then by id. The
selector holds what it keeps in two heaps and, whenever a cap is exceeded, drops the least valuable
held item (for a count cap, of that kind), so the result is the best items in that order up to the
first that would break a cap, whatever the batch size. Memory is bounded by the caps; time is
``O(n log k)``. It hands the kept items on at the end of the stream (``flush``), so selectors after it
see them then. When the source sends documents before episodes (it does), the result does not depend
on the order of the stream either.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable
from typing import Any

from pydantic import Field

from agent_sleep.interfaces import Decision, Selection
from agent_sleep.selectors.base import SelectorContext, SelectorParams
from agent_sleep.selectors.candidates import Candidate, DocumentCandidate, EpisodeCandidate

__all__ = ["BudgetParams", "BudgetSelector", "value"]


class BudgetParams(SelectorParams):
    max_episodes: int | None = Field(default=500, ge=0)
    max_documents: int | None = Field(default=20, ge=0)
    max_chars: int | None = Field(default=4_000_000, ge=0)


def value(item: Candidate) -> tuple[Any, ...]:
    """The budget's sort key: larger is more valuable."""
    if isinstance(item, DocumentCandidate):
        return (1, 0, 0.0, item.created_at.timestamp(), item.id)
    score = item.mean_score
    return (0, int(item.corrected_by is not None or bool(item.corrections) or bool(item.instructions)),
            0.5 if score is None else score,
            item.started_at.timestamp(), item.id)  # fmt: skip


def size(item: Candidate) -> int:
    if isinstance(item, DocumentCandidate):
        return len(item.text)
    return sum(len(str(m.get("content") or "")) for m in item.messages)


class BudgetSelector:
    name = "budget"
    Params = BudgetParams

    def __init__(self, params: BudgetParams, context: SelectorContext | None = None) -> None:
        self.params = params
        self._heaps: dict[str, list[tuple[tuple[Any, ...], int, Candidate]]] = {"episode": [], "document": []}
        self._chars = 0

    @classmethod
    def from_params(cls, params: BudgetParams, context: SelectorContext) -> BudgetSelector:
        return cls(params, context)

    def select(self, items: Iterable[Candidate], /) -> Selection[Candidate]:
        dropped: list[Decision] = []
        p = self.params
        for item in items:
            heap = self._heaps[item.kind]
            n = size(item)
            heapq.heappush(heap, (value(item), n, item))
            self._chars += n
            cap = p.max_episodes if item.kind == "episode" else p.max_documents
            if cap is not None and len(heap) > cap:
                dropped.append(self._evict(heap, f"over max_{item.kind}s={cap}: {cap} more valuable kept"))
            while p.max_chars is not None and self._chars > p.max_chars:
                dropped.append(self._evict(self._least(), f"over max_chars={p.max_chars:,}: the more valuable "
                                                          "items fill the budget"))
        return Selection((), tuple(dropped))

    def flush(self) -> Selection[Candidate]:
        held = sorted((e for h in self._heaps.values() for e in h), key=lambda e: e[0], reverse=True)
        self._heaps = {"episode": [], "document": []}
        self._chars = 0
        return Selection(tuple(e[2] for e in held),
                         tuple(Decision(e[2].id, True, f"within budget (value rank {i + 1})", self.name)
                               for i, e in enumerate(held)))  # fmt: skip

    def _least(self) -> list[tuple[tuple[Any, ...], int, Candidate]]:
        episodes, documents = self._heaps["episode"], self._heaps["document"]
        if episodes and (not documents or episodes[0][0] < documents[0][0]):
            return episodes
        return documents

    def _evict(self, heap: list[tuple[tuple[Any, ...], int, Candidate]], reason: str) -> Decision:
        _, n, item = heapq.heappop(heap)
        self._chars -= n
        return Decision(item.id, False, reason, self.name)
