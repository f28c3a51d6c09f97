"""Candidates from the stores: events as chat messages, episodes streamed in batches (never all at once)."""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event

from agent_sleep.config import Settings
from agent_sleep.generators.sft import _to_messages
from agent_sleep.selectors.config import SelectionConfig
from agent_sleep.selectors.planner import build_plan
from agent_sleep.selectors.source import chat_messages, document_candidates, episode_candidates
from agent_sleep.store import ExperienceStore, InMemoryExperienceStore
from agent_sleep.store.batches import Turn
from tests.helpers_selection import log_episode

CAPTURED = [  # what the middleware / callback write for one tool-using turn
    {"kind": "system_message", "content": "You are the helpdesk."},
    {"kind": "user_message", "content": "Where is A1?"},
    {"kind": "assistant_message", "content": "", "payload": {
        "tool_calls": [{"id": "c1", "name": "order_status", "args": {"order": "A1"}}], "model_input": {"big": 1}}},
    {"kind": "tool_call", "name": "order_status", "payload": {"args": {"order": "A1"}, "tool_call_id": "c1"}},
    {"kind": "tool_result", "name": "order_status", "content": "shipped", "payload": {"tool_call_id": "c1"}},
    {"kind": "custom", "content": "plumbing"},
    {"kind": "assistant_message", "content": "A1 has shipped."},
    {"kind": "run_output", "content": "{\"messages\": []}"},
]  # fmt: skip


@pytest.fixture(params=["sqlite", "memory"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Any]:
    settings = Settings(data_dir=tmp_path / "data")
    if request.param == "memory":
        yield InMemoryExperienceStore(settings=settings)
        return
    s = ExperienceStore(f"sqlite:///{tmp_path / 'e.sqlite'}", settings=settings)
    yield s
    s.close()


def test_events_become_chat_messages(store: Any) -> None:
    eid = log_episode(store, "unused", None, events=tuple(CAPTURED))
    [[cand]] = list(episode_candidates(store, "helpdesk"))
    assert cand.id == eid and cand.status == "completed"
    assert cand.messages == (
        {"role": "user", "content": "unused"},
        {"role": "system", "content": "You are the helpdesk."},
        {"role": "user", "content": "Where is A1?"},
        {"role": "assistant", "content": "", "tool_calls": [{"name": "order_status", "arguments": {"order": "A1"},
                                                             "id": "c1"}]},
        {"role": "tool", "content": "shipped", "name": "order_status", "tool_call_id": "c1"},
        {"role": "assistant", "content": "A1 has shipped."},
    )  # fmt: skip
    assert len(_to_messages(cand.messages, "conversation")) == 6  # the sft generator reads them as they are


def test_tool_calls_logged_only_as_events_join_the_assistant_turn() -> None:
    turns = [Turn(0, "user_message", None, "Where is A1?"),
             Turn(1, "tool_call", "order_status", "A1", tool_call_id="c9"),
             Turn(2, "tool_result", "order_status", "shipped", tool_call_id="c9"),
             Turn(3, "assistant_message", None, "It shipped."),
             Turn(4, "tool_call", "log", '{"level": 1}'),
             Turn(5, "tool_call", "log", "")]  # fmt: skip
    msgs = chat_messages(turns)
    assert msgs[1] == {"role": "assistant", "content": "",
                       "tool_calls": [{"name": "order_status", "arguments": {"input": "A1"}, "id": "c9"}]}
    assert msgs[3] == {"role": "assistant", "content": "It shipped."}
    assert msgs[4] == {"role": "assistant", "content": "", "tool_calls": [
        {"name": "log", "arguments": {"level": 1}}, {"name": "log", "arguments": {}}]}
    _to_messages(msgs, "conversation")


def test_documents_are_the_new_or_changed_ones(store: Any) -> None:
    a = store.add_document("kb/a.md", "Alpha.", agent="helpdesk", metadata={"probes": []})
    store.add_document("kb/b.md", "Beta.", agent="billing")
    store.mark_documents_consolidated([a.id], "run-1")
    c = store.add_document("kb/c.md", "Gamma.", agent="helpdesk")
    assert [d.id for d in document_candidates(store, "helpdesk")] == [c.id]
    a2 = store.add_document("kb/a.md", "Alpha, changed.", agent="helpdesk")
    docs = document_candidates(store, "helpdesk")
    assert [(d.id, d.source, d.version, d.text) for d in docs] == [(c.id, "kb/c.md", 1, "Gamma."),
                                                                   (a2.id, "kb/a.md", 2, "Alpha, changed.")]


def test_the_sql_store_is_read_in_batches(tmp_path: Path) -> None:
    store = ExperienceStore(f"sqlite:///{tmp_path / 'e.sqlite'}", settings=Settings(data_dir=tmp_path))
    for i in range(45):
        eid = log_episode(store, f"question {i} about parcel {i * 13}", f"answer {i} with detail {i * 7}")
        if i % 3 == 0:
            store.add_feedback(eid, score=1.0)
    statements: list[str] = []
    event.listen(store.engine, "before_cursor_execute", lambda *a: statements.append(a[2]))
    result = build_plan(store, "helpdesk", SelectionConfig(batch_size=10))
    assert len(result.plan.skill("helpdesk-dialog").conversations) + sum(
        len(s.probes) for s in result.plan.skills) == 45
    batches = math.ceil(45 / 10)
    reads = {t: sum(1 for s in statements if s.lstrip().upper().startswith("SELECT") and f"FROM {t}" in s)
             for t in ("episodes", "events", "feedback")}  # fmt: skip
    # one streamed query for the candidates and one for novelty's references (none consolidated yet), two per batch,
    # and one for the model calls of what the budget hands on (``prompts``)
    assert reads == {"episodes": 2, "events": batches + 1, "feedback": batches}
    assert len(statements) <= 2 * batches + 5  # + the documents queries; nothing per episode


def test_the_memory_store_is_read_in_batches() -> None:
    class Counting(InMemoryExperienceStore):
        sizes: list[int] = []

        def episode_batches(self, *args: Any, **kwargs: Any) -> Iterator[Any]:
            for batch in super().episode_batches(*args, **kwargs):
                self.sizes.append(len(batch))
                yield batch

        def events(self, episode_id: str) -> Any:
            raise AssertionError("read per episode")

    store = Counting()
    for i in range(23):
        log_episode(store, f"question {i} about parcel {i * 13}", f"answer {i} with detail {i * 7}")
    result = build_plan(store, "helpdesk", SelectionConfig(batch_size=5))
    assert store.sizes == [5, 5, 5, 5, 3] and len(result.plan.episodes) == 23


def test_a_reader_with_only_the_protocol_is_read_through_it() -> None:
    """A reader without episode_batches (any ExperienceReader) gives the same candidates and plan."""
    inner = InMemoryExperienceStore()
    for i in range(7):
        eid = log_episode(inner, f"question {i} about parcel {i * 13}", f"answer {i} with detail {i * 7}",
                          events=tuple(CAPTURED[2:5]))
        inner.add_feedback(eid, score=1.0, correction=f"fixed {i}" if i % 2 else None)

    class ProtocolOnly:
        def episodes(self, **filters: Any) -> Any:
            return inner.episodes(**filters)

        def events(self, episode_id: str, /) -> Any:
            return inner.events(episode_id)

        def feedback(self, episode_id: str, /) -> Any:
            return inner.feedback(episode_id)

        def documents(self, **kwargs: Any) -> Any:
            return inner.documents(**kwargs)

        def mark_consolidated(self, episode_ids: Any, run_id: str, /) -> int:
            return inner.mark_consolidated(episode_ids, run_id)

        def mark_documents_consolidated(self, document_ids: Any, run_id: str, /) -> int:
            return inner.mark_documents_consolidated(document_ids, run_id)

    reader: Any = ProtocolOnly()
    slow = [c for batch in episode_candidates(reader, "helpdesk", batch_size=3) for c in batch]
    fast = [c for batch in episode_candidates(inner, "helpdesk", batch_size=3) for c in batch]
    assert slow == fast and len(slow) == 7
    assert build_plan(reader, "helpdesk").plan == build_plan(inner, "helpdesk").plan
