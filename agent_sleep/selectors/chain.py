"""The chain: selectors in order, fed batch by batch, with a record of what each dropped or changed.

:meth:`Chain.feed` runs one batch through every selector (each reads the previous one's ``kept``);
:meth:`Chain.finish` ends the stream: each selector that holds items (``flush``) hands them on, in
chain order, through the selectors after it. The chain keeps an :class:`ItemDecision` for every item a
selector dropped and for every item it handed on changed (a corrected conversation, a redacted text);
an item handed on unchanged leaves no record, so a run of 100,000 episodes stores one row for each
drop, not one for each selector. ``stats`` counts kept and dropped items per selector.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from agent_sleep.errors import ConfigError
from agent_sleep.interfaces import Selection, Selector
from agent_sleep.selectors.candidates import Candidate

__all__ = ["Chain", "ItemDecision"]


@dataclass(frozen=True)
class ItemDecision:
    """One row of ``selection_decisions``: what ``selector`` did with one episode, document or feedback
    instruction, and why.

    ``skill`` and ``role`` (``train``, ``probe`` or, for a feedback instruction in a skill's description,
    ``instruction``) are set on the planner's final decision for an item."""

    item_kind: Literal["episode", "document", "feedback"]
    item_id: str
    selector: str
    kept: bool
    reason: str
    skill: str | None = None
    role: Literal["train", "probe", "instruction"] | None = None


class Chain:
    def __init__(self, selectors: Sequence[Selector[Any]]) -> None:
        names = [s.name for s in selectors]
        if len(set(names)) != len(names):
            raise ConfigError(f"a chain names each selector once, got {names}")
        self.selectors = tuple(selectors)
        self._documents: set[str] = set()  # ids of the documents seen (few), to tell an id's kind later
        self.decisions: list[ItemDecision] = []
        self.stats: dict[str, dict[str, int]] = {n: {"kept": 0, "dropped": 0} for n in names}

    def feed(self, items: Sequence[Candidate]) -> list[Candidate]:
        """Run ``items`` through the whole chain; returns what came out of the end (held items come later)."""
        out = list(items)
        for selector in self.selectors:
            if not out:
                break
            out = self._apply(selector, out)
        return out

    def finish(self) -> list[Candidate]:
        """End of the stream: what the holding selectors kept, run through the selectors after them."""
        carry: list[Candidate] = []
        for selector in self.selectors:
            if carry:
                carry = self._apply(selector, carry)
            flush = getattr(selector, "flush", None)
            if callable(flush):
                carry += self._record(selector, [], flush())
        return carry

    def _apply(self, selector: Selector[Any], items: list[Candidate]) -> list[Candidate]:
        return self._record(selector, items, selector.select(items))

    def _record(self, selector: Selector[Any], given: list[Candidate], selection: Selection[Any]) -> list[Candidate]:
        self._documents.update(c.id for c in given if c.kind == "document")
        before = {c.id: c for c in given}
        kept = list(selection.kept)
        changed = {c.id for c in kept if c.id in before and c is not before[c.id] and c != before[c.id]}
        counts = self.stats[selector.name]
        for d in selection.decisions:
            if d.kept:
                counts["kept"] += 1
                if d.item in changed:
                    self.decisions.append(ItemDecision(self._kind(d.item), d.item, selector.name, True, d.reason))
            else:
                counts["dropped"] += 1
                self.decisions.append(ItemDecision(self._kind(d.item), d.item, selector.name, False, d.reason))
        return kept

    def _kind(self, item_id: str) -> Literal["episode", "document"]:
        return "document" if item_id in self._documents else "episode"
