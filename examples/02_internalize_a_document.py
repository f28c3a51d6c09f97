"""Doc-to-LoRA from Python: a document becomes a registered adapter, and the model answers from it without it.

To run:  python examples/02_internalize_a_document.py     (CLI equivalent: agent-sleep internalize / ask --adapter)

The bundled hypernetwork reads a short opening-hours notice once (one forward
pass, well under a second on CPU) and emits a LoRA; the adapter is registered
as skill ``library-notice`` like any other. Then the same questions go to the
base model without the notice and to the base model + adapter, still without
the notice: the answers that change came from the adapter's weights.
"""

from __future__ import annotations

import sys
from typing import Any

NOTICE = """Harrowgate Public Library: winter notice

From December the reading room opens at 9:30 and closes at 18:00. The late desk stays open until 20:15 on Thursdays.
Overdue books cost 0.40 crowns per day. The book drop is next to the bike racks. Visitors can print up to 25 pages
for free each week. Room bookings are handled by Ansel Marrow."""

QUESTIONS = [
    ("When does the Harrowgate Public Library reading room open?", "9:30"),
    ("How much do overdue books at the Harrowgate Public Library cost per day?", "0.40"),
    ("How many pages can visitors of the Harrowgate Public Library print for free each week?", "25"),
    ("Who handles room bookings at the Harrowgate Public Library?", "Ansel Marrow"),
]


def main(*, settings: Any = None, handle: Any = None, generator: Any = None, max_new_tokens: int = 24) -> list[dict]:
    """Internalise ``NOTICE``, register it, ask ``QUESTIONS`` with and without the adapter; returns one row each."""
    from langchain_core.messages import HumanMessage

    from agent_sleep import ChatLocalModel, ExperienceStore, load_base_model
    from agent_sleep.generators.d2l import D2LGenerator, internalize_to_registry
    from agent_sleep.registry import AdapterRegistry
    from agent_sleep.runtime.live import LiveRuntime

    store = ExperienceStore(settings=settings)
    handle = handle or load_base_model(settings=settings)
    generator = generator or D2LGenerator.load(handle=handle)
    registry = AdapterRegistry(store)
    record, result = internalize_to_registry(registry, NOTICE, "library-notice", generator=generator,
                                             description="winter notice of the Harrowgate library")  # fmt: skip
    print(f"internalized {result.tokens} tokens into {record.name} in {result.seconds:.2f} s "
          f"(rank {result.rank}, {result.nbytes / 2**20:.1f} MB)")  # fmt: skip
    base = ChatLocalModel(handle=handle, max_new_tokens=max_new_tokens)
    adapted = LiveRuntime(registry, handle=handle).chat_model(adapters=[record.name], max_new_tokens=max_new_tokens)
    rows = []
    for question, gold in QUESTIONS:
        without = str(base.invoke([HumanMessage(question)]).content)
        with_adapter = str(adapted.invoke([HumanMessage(question)]).content)
        rows.append({"question": question, "gold": gold, "base": without, "adapter": with_adapter})
        print(f"\nQ: {question}   (notice says: {gold})\n  base:    {without}\n  adapter: {with_adapter}")
    hits = sum(r["gold"].lower() in r["adapter"].lower() for r in rows)
    print(f"\nthe adapter's answers contain the notice's value for {hits} of {len(rows)} questions")
    store.close()
    return rows


if __name__ == "__main__":
    main()
    sys.exit(0)
