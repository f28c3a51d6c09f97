"""One contract, every backend: the SQL store on SQLite and PostgreSQL, and the in-memory store.

Each test body runs on each backend, so the memory store the stages' tests use behaves as the
SQL store does: the same records, ordering, filters and errors.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from agent_sleep.config import Settings
from agent_sleep.errors import EncodingError, InvalidEventError, NotFoundError, PayloadTooLargeError
from agent_sleep.interfaces import DocumentView, EpisodeView, EventView, ExperienceReader, FeedbackView
from agent_sleep.store import EpisodeQuery
from agent_sleep.store.memory import InMemoryExperienceStore
from tests.conftest import BACKENDS, _drop_pg_database, _fresh_pg_database
from tests.helpers_protocols import protocol_mismatches


@pytest.fixture(params=[*BACKENDS, "memory"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Any]:
    """A fresh, empty store: ExperienceStore on SQLite / PostgreSQL, or InMemoryExperienceStore."""
    settings = Settings(data_dir=tmp_path / "data", max_payload_bytes=1_000)
    if request.param == "memory":
        yield InMemoryExperienceStore(settings=settings)
        return
    from agent_sleep.store import ExperienceStore

    name = None
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'experience.sqlite'}"
    else:
        url, name = _fresh_pg_database()
    s = ExperienceStore(settings=settings.model_copy(update={"database_url": url}))
    try:
        yield s
    finally:
        s.close()
        if name is not None:
            _drop_pg_database(name)


def _ids(records: Any) -> list[str]:
    return [r.id for r in records]


def _episode(store: Any, agent: str = "helpdesk", thread: str = "t1", **meta: Any) -> str:
    eid = store.start_episode(agent, thread_id=thread, metadata=meta or None)
    store.append_events(eid, [{"kind": "user_message", "content": "hi"}, {"kind": "assistant_message", "content": "hello"}])
    return eid


def test_every_backend_is_an_experience_reader(store: Any) -> None:
    assert isinstance(store, ExperienceReader)
    assert protocol_mismatches(store, ExperienceReader) == []
    eid = _episode(store)
    store.add_feedback(eid, score=1.0)
    store.add_document("kb/a.md", "text")
    assert isinstance(store.episodes()[0], EpisodeView)
    assert isinstance(store.events(eid)[0], EventView)
    assert isinstance(store.feedback(eid)[0], FeedbackView)
    assert isinstance(store.documents()[0], DocumentView)


def test_records_of_an_episode(store: Any) -> None:
    eid = _episode(store, tier={"level": 2, "tags": ("a", "b")})
    store.append_events(eid, [{"kind": "tool_call", "name": "lookup", "payload": {"args": {"id": 1}}},
                              {"kind": "tool_result", "name": "lookup", "content": "naïve café – 東京 🚀"}])
    store.end_episode(eid, outcome="resolved")
    store.add_feedback(eid, label="slow", comment="took long")  # no score: counted, but not in the mean
    time.sleep(0.002)
    store.add_feedback(eid, score=0.5, source="evaluator")
    time.sleep(0.002)
    store.add_feedback(eid, score=1.0)

    ep = store.get_episode(eid)
    assert (ep.agent, ep.thread_id, ep.status, ep.outcome, ep.error) == ("helpdesk", "t1", "completed", "resolved", None)
    assert (ep.n_events, ep.n_feedback, ep.mean_score) == (4, 3, pytest.approx(0.75))
    assert ep.meta == {"tier": {"level": 2, "tags": ["a", "b"]}}  # as JSON hands it back
    assert ep.started_at.tzinfo is not None and ep.ended_at is not None and ep.ended_at >= ep.started_at
    assert (ep.consolidated_at, ep.consolidation_run) == (None, None)

    events = store.events(eid)
    assert [(e.seq, e.kind) for e in events] == [(0, "user_message"), (1, "assistant_message"), (2, "tool_call"),
                                                 (3, "tool_result")]  # fmt: skip
    assert events[2].payload == {"args": {"id": 1}} and events[2].name == "lookup" and events[2].content == ""
    assert events[3].content == "naïve café – 東京 🚀" and all(e.episode_id == eid for e in events)
    feedback = store.feedback(eid)
    assert [(f.score, f.label, f.source) for f in feedback] == [(None, "slow", "human"), (0.5, None, "evaluator"),
                                                                (1.0, None, "human")]  # fmt: skip
    assert feedback == sorted(feedback, key=lambda f: (f.created_at, f.id))
    assert store.agents() == ["helpdesk"] and store.count_events() == 4

    store.record_outcome(eid, "escalated")
    store.end_episode(eid, status="error", error="boom")  # no outcome given: the last one stays
    ep = store.get_episode(eid)
    assert (ep.status, ep.outcome, ep.error) == ("error", "escalated", "boom")


def test_records_are_detached_copies(store: Any) -> None:
    eid = store.start_episode("a", metadata={"k": [1]})
    store.append_events(eid, [{"kind": "custom", "payload": {"k": [1]}}])
    doc = store.add_document("kb/a.md", "text", metadata={"k": [1]})
    store.get_episode(eid).meta["k"].append(2)
    store.events(eid)[0].payload["k"].append(2)
    doc.meta["k"].append(2)
    store.documents()[0].meta["k"].append(2)
    assert store.get_episode(eid).meta == store.events(eid)[0].payload == store.documents()[0].meta == {"k": [1]}


def test_episode_filters(store: Any) -> None:
    before = datetime.now(timezone.utc) - timedelta(seconds=1)
    good = _episode(store, "helpdesk")
    bad = _episode(store, "helpdesk", thread="t2")
    other = _episode(store, "billing")
    unscored = _episode(store, "billing", thread="t3")
    store.add_feedback(good, score=1.0, label="thumbs_up")
    store.add_feedback(good, score=0.5)
    store.add_feedback(bad, score=0.0, label="thumbs_down")
    store.add_feedback(unscored, label="thumbs_up")
    store.end_episode(good, outcome="resolved")
    store.end_episode(bad, status="error", error="boom")
    everyone = {good, bad, other, unscored}

    def ids(**filters: Any) -> set[str]:
        return set(_ids(store.episodes(**filters)))

    assert ids() == everyone
    assert ids(agent="helpdesk") == {good, bad} and ids(agent="nobody") == set()
    assert ids(thread_id="t2") == {bad}
    assert ids(status="error") == {bad} and ids(status="running") == {other, unscored}
    assert ids(outcome="resolved") == {good}
    assert ids(feedback_label="thumbs_up") == {good, unscored}
    assert ids(min_score=0.75) == {good} and ids(min_score=0.0) == {good, bad}  # the mean, 0.75, is inclusive
    assert ids(max_score=0.5) == {bad} and ids(max_score=0.75) == {good, bad}
    assert ids(has_feedback=True) == {good, bad, unscored} and ids(has_feedback=False) == {other}
    assert ids(agent="billing", feedback_label="thumbs_up") == {unscored}
    assert ids(since=before) == everyone and ids(until=before) == set()
    third = store.get_episode(other).started_at
    assert ids(since=third) == {other, unscored} and ids(until=third) == {good, bad}  # since >=, until <
    assert ids(since=third.replace(tzinfo=None)) == {other, unscored}  # naive means UTC
    assert set(_ids(store.episodes(EpisodeQuery(agent="billing"), agent="helpdesk"))) == {other, unscored}
    with pytest.raises(ValidationError):
        store.episodes(agnet="helpdesk")


def test_episode_order_and_limit(store: Any) -> None:
    made = []
    for i in range(4):
        made.append(_episode(store, thread=f"t{i}"))
        time.sleep(0.002)  # distinct start times; ties would go by id
    assert _ids(store.episodes()) == made
    assert _ids(store.episodes(newest_first=True)) == made[::-1]
    assert _ids(store.episodes(limit=2)) == made[:2]
    assert _ids(store.episodes(limit=2, newest_first=True)) == made[:1:-1]
    assert _ids(store.episodes(thread_id="t3", limit=3)) == made[3:]
    with pytest.raises(ValidationError):
        store.episodes(limit=0)


def test_mark_consolidated(store: Any) -> None:
    a, b, c = (_episode(store, thread=t) for t in ("t1", "t2", "t3"))
    assert store.mark_consolidated([a, b, b, "nope-123"], "run-1") == 2  # unknown ids skipped, repeats once
    assert set(_ids(store.episodes(unconsolidated=True))) == {c}
    first = store.get_episode(a)
    assert first.consolidation_run == "run-1" and first.consolidated_at is not None
    assert store.mark_consolidated([a], "run-2") == 1  # again: the newer run is recorded
    again = store.get_episode(a)
    assert again.consolidation_run == "run-2" and again.consolidated_at >= first.consolidated_at
    assert store.mark_consolidated([], "run-3") == 0
    assert set(_ids(store.episodes(unconsolidated=False))) == {a, b, c}


def test_feedback_may_carry_a_correction(store: Any) -> None:
    eid = _episode(store)
    store.add_feedback(eid, correction="Refunds take 5 days.")  # a correction alone is feedback
    time.sleep(0.002)
    store.add_feedback(eid, score=0.0, comment="wrong", correction="Refunds take 5 business days.")
    time.sleep(0.002)
    store.add_feedback(eid, score=1.0)
    got = store.feedback(eid)
    assert [(f.score, f.comment, f.correction) for f in got] == [
        (None, None, "Refunds take 5 days."), (0.0, "wrong", "Refunds take 5 business days."), (1.0, None, None)]
    assert store.get_episode(eid).n_feedback == 3 and store.get_episode(eid).mean_score == pytest.approx(0.5)
    with pytest.raises(InvalidEventError, match="correction must not be blank"):
        store.add_feedback(eid, correction=" \n ")
    with pytest.raises(EncodingError, match="not valid UTF-8"):
        store.add_feedback(eid, correction="\ud800")
    with pytest.raises(InvalidEventError, match="score, label, comment, correction or instruction"):
        store.add_feedback(eid)
    assert len(store.feedback(eid)) == 3


def test_feedback_may_carry_an_instruction(store: Any) -> None:
    eid = _episode(store)
    fid = store.add_feedback(eid, instruction="Always ask for the order number first.")  # alone, it is feedback
    time.sleep(0.002)
    store.add_feedback(eid, score=0.0, correction="Order A1 shipped.", instruction="Never guess a date.")
    got = store.feedback(eid)
    assert [(f.id, f.score, f.correction, f.instruction) for f in got] == [
        (fid, None, None, "Always ask for the order number first."), (got[1].id, 0.0, "Order A1 shipped.",
                                                                      "Never guess a date.")]  # fmt: skip
    assert store.get_episode(eid).n_feedback == 2
    with pytest.raises(InvalidEventError, match="an instruction must not be blank"):
        store.add_feedback(eid, instruction="  ")
    with pytest.raises(EncodingError, match="not valid UTF-8"):
        store.add_feedback(eid, instruction="\ud800")
    batches = getattr(store, "episode_batches", None)
    if callable(batches):  # what the selectors read
        (bundle,) = next(iter(batches("helpdesk", kinds=("user_message",))))
        assert [f.instruction for f in bundle.feedback] == ["Always ask for the order number first.",
                                                            "Never guess a date."]
    assert len(store.feedback(eid)) == 2


def test_mark_documents_consolidated(store: Any) -> None:
    a = store.add_document("kb/a.md", "Alpha.", agent="helpdesk")
    b = store.add_document("kb/b.md", "Beta.", agent="helpdesk")
    assert store.mark_documents_consolidated([a.id, a.id, "nope"], "run-1") == 1
    assert _ids(store.documents(unconsolidated=True)) == [b.id]
    done = store.documents(source="kb/a.md")[0]
    assert done.consolidation_run == "run-1" and done.consolidated_at is not None
    a2 = store.add_document("kb/a.md", "Alpha, changed.", agent="helpdesk")  # a new version is a signal again
    assert _ids(store.documents(unconsolidated=True)) == [b.id, a2.id]
    assert store.mark_documents_consolidated([], "run-2") == 0


def test_episode_batches(store: Any) -> None:
    made = []
    for i in range(5):
        made.append(_episode(store, thread=f"t{i}"))
        time.sleep(0.002)
    store.append_events(made[0], [
        {"kind": "assistant_message", "content": "", "payload": {"tool_calls": [{"id": "c1", "name": "lookup",
                                                                   "args": {"q": "A1"}}], "model_input": {"x": 1}}},
        {"kind": "tool_call", "name": "lookup", "payload": {"args": {"q": "A1"}, "tool_call_id": "c1"}},
        {"kind": "tool_result", "name": "lookup", "content": "shipped", "payload": {"tool_call_id": "c1"}},
        {"kind": "run_output", "content": "{}"}])  # fmt: skip
    store.add_feedback(made[1], score=0.0, correction="fixed")
    _episode(store, "billing")
    store.mark_consolidated([made[4]], "run-1")

    batches = list(store.episode_batches("helpdesk", batch_size=2))
    assert [[b.id for b in batch] for batch in batches] == [made[:2], made[2:4]]
    first = batches[0][0]
    assert (first.agent, first.thread_id, first.status, first.consolidated_at) == ("helpdesk", "t0", "running", None)
    assert [(t.seq, t.kind, t.content) for t in first.turns] == [
        (0, "user_message", "hi"), (1, "assistant_message", "hello"), (2, "assistant_message", ""),
        (3, "tool_call", ""), (4, "tool_result", "shipped"), (5, "run_output", "{}")]
    assert first.turns[2].tool_calls == [{"id": "c1", "name": "lookup", "args": {"q": "A1"}}]
    assert (first.turns[3].args, first.turns[3].tool_call_id, first.turns[3].name) == ({"q": "A1"}, "c1", "lookup")
    assert first.turns[4].tool_call_id == "c1" and first.turns[0].tool_calls is None
    assert [f.correction for f in batches[0][1].feedback] == ["fixed"] and first.feedback == ()

    only = list(store.episode_batches("helpdesk", kinds=["user_message", "tool_result"], unconsolidated=False))
    assert [b.id for b in only[0]] == made and [t.kind for t in only[0][0].turns] == ["user_message", "tool_result"]
    since = store.get_episode(made[3]).started_at
    assert [b.id for batch in store.episode_batches("helpdesk", since=since, unconsolidated=False)
            for b in batch] == made[3:]  # fmt: skip
    assert list(store.episode_batches("nobody")) == []
    with pytest.raises(InvalidEventError, match="batch_size"):
        next(store.episode_batches("helpdesk", batch_size=0))


def test_documents(store: Any) -> None:
    start = datetime.now(timezone.utc) - timedelta(seconds=1)
    d1 = store.add_document("kb/returns.md", "Returns within 30 days.", title="Returns", agent="helpdesk",
                            metadata={"lang": "en"})  # fmt: skip
    same = store.add_document("kb/returns.md", "Returns within 30 days.")
    time.sleep(0.002)
    other = store.add_document("kb/billing.md", b"Invoices monthly.", agent="billing")
    time.sleep(0.002)
    d2 = store.add_document("kb/returns.md", "Returns within 14 days.")  # a new version, no agent
    assert (d1.version, same.version, d2.version, other.version) == (1, 1, 2, 1)
    assert same.id == d1.id and same == d1 and d1.content_hash != d2.content_hash and len(d1.content_hash) == 64
    assert (d1.title, d1.agent, d1.meta, d1.consolidated_at) == ("Returns", "helpdesk", {"lang": "en"}, None)
    assert other.content == "Invoices monthly." and sorted(store.agents()) == ["billing", "helpdesk"]

    assert _ids(store.documents()) == [other.id, d2.id]  # each source's newest version, oldest first
    assert _ids(store.documents(latest_only=False)) == [d1.id, other.id, d2.id]
    assert _ids(store.documents(source="kb/returns.md", latest_only=False)) == [d1.id, d2.id]
    assert _ids(store.documents(agent="billing")) == [other.id]
    # latest_only looks at every version of a source first: helpdesk's v1 is not the newest any more.
    assert store.documents(agent="helpdesk") == []
    assert _ids(store.documents(agent="helpdesk", latest_only=False)) == [d1.id]
    assert _ids(store.documents(since=other.created_at)) == [other.id, d2.id]
    assert _ids(store.documents(since=start, latest_only=False)) == [d1.id, other.id, d2.id]
    assert _ids(store.documents(unconsolidated=True)) == [other.id, d2.id]


def test_unknown_ids_are_named(store: Any) -> None:
    for call in (lambda: store.get_episode("nope-123"), lambda: store.events("nope-123"),
                 lambda: store.feedback("nope-123"), lambda: store.append_events("nope-123", [{"kind": "custom"}]),
                 lambda: store.add_feedback("nope-123", score=1), lambda: store.record_outcome("nope-123", "x"),
                 lambda: store.end_episode("nope-123")):  # fmt: skip
        with pytest.raises(NotFoundError, match="nope-123"):
            call()


def test_bad_input_is_refused_and_nothing_is_half_written(store: Any) -> None:
    eid = store.start_episode("a")
    with pytest.raises(InvalidEventError, match=r"event #1.*kind"):
        store.append_events(eid, [{"kind": "user_message", "content": "ok"}, {"kind": "shout"}])
    with pytest.raises(InvalidEventError, match="expected a mapping"):
        store.append_events(eid, ["just a string"])
    with pytest.raises(EncodingError, match="content is not valid UTF-8"):
        store.append_events(eid, [{"kind": "user_message", "content": b"caf\xe9"}])
    with pytest.raises(PayloadTooLargeError, match="above the cap of 1,000"):
        store.append_events(eid, [{"kind": "user_message", "content": "ok"}, {"kind": "custom", "content": "x" * 1001}])
    with pytest.raises(InvalidEventError, match="malformed event #0"):  # an unknown episode with bad events:
        store.append_events("nope-123", [{"kind": "shout"}])  # the events are checked first
    assert store.events(eid) == [] and store.count_events() == 0

    store.append_events(eid, [{"kind": "custom", "seq": 5}, {"kind": "custom"}])
    with pytest.raises(InvalidEventError, match="conflict"):
        store.append_events(eid, [{"kind": "custom", "seq": 7}, {"kind": "custom", "seq": 6}])
    with pytest.raises(InvalidEventError, match="conflict"):
        store.append_events(eid, [{"kind": "custom", "seq": 5}])
    assert [e.seq for e in store.events(eid)] == [5, 6]

    with pytest.raises(InvalidEventError, match="status must be"):
        store.end_episode(eid, status="done")
    with pytest.raises(InvalidEventError, match="at least one"):
        store.add_feedback(eid)
    with pytest.raises(InvalidEventError, match="source"):
        store.add_feedback(eid, score=1, source="robot")
    with pytest.raises(InvalidEventError, match="agent name"):
        store.start_episode(" ")
    with pytest.raises(EncodingError, match="not valid UTF-8"):
        store.add_document("kb/bin", b"\xff\xfe\x00binary")
    with pytest.raises(InvalidEventError, match="empty"):
        store.add_document("kb/empty", "   ")
    with pytest.raises(InvalidEventError, match="larger than 50,000 bytes"):
        store.add_document("kb/big", "x" * 50_001)
    assert store.feedback(eid) == [] and store.documents() == [] and store.get_episode(eid).status == "running"


def test_starting_a_known_episode_id_again_changes_nothing(store: Any) -> None:
    eid = store.start_episode("a", thread_id="t1", episode_id="ep-1", metadata={"n": 1})
    assert store.start_episode("b", thread_id="t2", episode_id="ep-1", metadata={"n": 2}) == eid == "ep-1"
    ep = store.get_episode("ep-1")
    assert (ep.agent, ep.thread_id, ep.meta) == ("a", "t1", {"n": 1})
    assert store.agents() == ["a", "b"]


def test_the_memory_store_loads_no_sqlalchemy() -> None:
    code = ("import sys\nfrom agent_sleep.store import InMemoryExperienceStore, EpisodeRecord\n"
            "InMemoryExperienceStore().start_episode('a')\nprint('sqlalchemy' in sys.modules)")  # fmt: skip
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
