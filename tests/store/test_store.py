"""Contract tests of the experience store; every test runs on SQLite and PostgreSQL."""

from __future__ import annotations

import threading
from datetime import datetime, timedelta, timezone

import pytest
from sqlalchemy import text

from agent_sleep.errors import (
    DatabaseUnavailableError,
    EncodingError,
    InvalidEventError,
    NotFoundError,
    PayloadTooLargeError,
    SchemaOutdatedError,
    SchemaTooNewError,
)
from agent_sleep.store import ExperienceStore


def _episode(store: ExperienceStore, agent: str = "helpdesk", **kw: object) -> str:
    eid = store.start_episode(agent, thread_id=kw.pop("thread_id", "t1"))  # type: ignore[arg-type]
    store.append_events(eid, [{"kind": "user_message", "content": "hi"}, {"kind": "assistant_message", "content": "hello"}])
    return eid


def test_episode_lifecycle(store: ExperienceStore) -> None:
    eid = _episode(store)
    store.append_events(eid, [{"kind": "tool_call", "name": "lookup", "payload": {"args": {"id": 1}}},
                              {"kind": "tool_result", "name": "lookup", "content": "ok"}])
    store.end_episode(eid, outcome="resolved")
    fid = store.add_feedback(eid, score=0.5, label="meh", comment="slow", source="human")
    store.add_feedback(eid, score=1.0, source="evaluator")

    ep = store.get_episode(eid)
    assert (ep.agent, ep.thread_id, ep.status, ep.outcome) == ("helpdesk", "t1", "completed", "resolved")
    assert ep.n_events == 4 and ep.n_feedback == 2 and ep.mean_score == pytest.approx(0.75)
    assert ep.started_at.tzinfo is not None and ep.ended_at is not None and ep.ended_at >= ep.started_at
    events = store.events(eid)
    assert [e.seq for e in events] == [0, 1, 2, 3]
    assert [e.kind for e in events] == ["user_message", "assistant_message", "tool_call", "tool_result"]
    assert events[2].payload == {"args": {"id": 1}} and events[2].name == "lookup"
    fb = store.feedback(eid)
    assert fb[0].id == fid and fb[0].comment == "slow" and {f.source for f in fb} == {"human", "evaluator"}


def test_unicode_round_trip(store: ExperienceStore) -> None:
    eid = store.start_episode("a")
    text_in = "naïve café – 東京 🚀"
    store.append_events(eid, [{"kind": "user_message", "content": text_in, "payload": {"k": "ü"}}])
    ev = store.events(eid)[0]
    assert ev.content == text_in and ev.payload == {"k": "ü"}


def test_query_api(store: ExperienceStore) -> None:
    good = _episode(store, "helpdesk")
    bad = _episode(store, "helpdesk", thread_id="t2")
    other = _episode(store, "billing")
    store.add_feedback(good, score=1.0, label="thumbs_up")
    store.add_feedback(bad, score=0.0, label="thumbs_down")
    store.end_episode(good, outcome="resolved")
    store.end_episode(bad, status="error", error="boom")

    ids = lambda eps: {e.id for e in eps}  # noqa: E731
    assert ids(store.episodes(agent="helpdesk")) == {good, bad}
    assert ids(store.episodes(min_score=0.5)) == {good}
    assert ids(store.episodes(max_score=0.5)) == {bad}
    assert ids(store.episodes(outcome="resolved")) == {good}
    assert ids(store.episodes(status="error")) == {bad}
    assert ids(store.episodes(feedback_label="thumbs_down")) == {bad}
    assert ids(store.episodes(has_feedback=False)) == {other}
    assert ids(store.episodes(thread_id="t2")) == {bad}
    now = datetime.now(timezone.utc)
    assert ids(store.episodes(since=now - timedelta(minutes=5))) == {good, bad, other}
    assert store.episodes(since=now + timedelta(minutes=5)) == []
    assert store.episodes(until=now - timedelta(minutes=5)) == []
    assert len(store.episodes(limit=2)) == 2
    assert [e.id for e in store.episodes(newest_first=True)][0] == other

    assert store.mark_consolidated([good, other], run_id="run-1") == 2
    left = store.episodes(unconsolidated=True)
    assert ids(left) == {bad}
    assert store.get_episode(good).consolidation_run == "run-1"


def test_documents_are_versioned_by_content(store: ExperienceStore) -> None:
    d1 = store.add_document("kb/returns.md", "Returns within 30 days.", title="Returns", agent="helpdesk")
    same = store.add_document("kb/returns.md", "Returns within 30 days.")
    d2 = store.add_document("kb/returns.md", b"Returns within 14 days.")
    assert (d1.version, same.version, d2.version) == (1, 1, 2)
    assert same.id == d1.id and d1.content_hash != d2.content_hash and len(d1.content_hash) == 64
    latest = store.documents()
    assert [d.version for d in latest] == [2]
    assert len(store.documents(latest_only=False)) == 2
    with pytest.raises(EncodingError, match="not valid UTF-8"):
        store.add_document("kb/bin", b"\xff\xfe\x00binary")
    with pytest.raises(InvalidEventError, match="empty"):
        store.add_document("kb/empty", "   ")


def test_skills(store: ExperienceStore) -> None:
    store.upsert_skill("refunds", description="handle refunds", kind="t2l", agent="helpdesk")
    store.upsert_skill("refunds", description="handle refunds v2", kind="t2l")
    with store.session() as s:
        from agent_sleep.store.models import Skill

        assert s.get(Skill, "refunds").description == "handle refunds v2"  # type: ignore[union-attr]


# -- bad input: clear errors, nothing half-written ----------------------------------------------------


def test_malformed_event_writes_nothing(store: ExperienceStore) -> None:
    eid = store.start_episode("a")
    with pytest.raises(InvalidEventError, match=r"event #1.*kind"):
        store.append_events(eid, [{"kind": "user_message", "content": "ok"}, {"kind": "shout", "content": "x"}])
    with pytest.raises(InvalidEventError, match=r"event #0: bogus: Extra inputs"):
        store.append_events(eid, [{"kind": "user_message", "bogus": 1}])
    with pytest.raises(InvalidEventError, match="expected a mapping"):
        store.append_events(eid, ["just a string"])  # type: ignore[list-item]
    assert store.events(eid) == []


def test_unknown_episode_is_named(store: ExperienceStore) -> None:
    for call in (lambda: store.get_episode("nope-123"), lambda: store.events("nope-123"),
                 lambda: store.append_events("nope-123", [{"kind": "user_message"}]),
                 lambda: store.add_feedback("nope-123", score=1), lambda: store.record_outcome("nope-123", "x"),
                 lambda: store.end_episode("nope-123")):
        with pytest.raises(NotFoundError, match="nope-123"):
            call()


def test_non_utf8_text_is_refused(store: ExperienceStore) -> None:
    eid = store.start_episode("a")
    with pytest.raises(EncodingError, match="content is not valid UTF-8"):
        store.append_events(eid, [{"kind": "user_message", "content": b"caf\xe9"}])
    with pytest.raises(EncodingError, match="content"):
        store.append_events(eid, [{"kind": "user_message", "content": "bad \udcff surrogate"}])
    with pytest.raises(EncodingError):
        store.add_feedback(eid, comment="\ud800")
    with pytest.raises(EncodingError, match="NUL"):
        store.append_events(eid, [{"kind": "user_message", "content": "a\x00b"}])
    assert store.events(eid) == []


def test_oversized_payload_is_refused(settings, tmp_path) -> None:  # type: ignore[no-untyped-def]
    small = settings.model_copy(update={"max_payload_bytes": 100})
    store = ExperienceStore(settings=small)
    eid = store.start_episode("a")
    with pytest.raises(PayloadTooLargeError, match=r"above the cap of 100"):
        store.append_events(eid, [{"kind": "user_message", "content": "ok"},
                                  {"kind": "tool_result", "content": "x" * 60, "payload": {"blob": "y" * 60}}])
    assert store.events(eid) == []
    store.close()


def test_feedback_needs_content_and_valid_source(store: ExperienceStore) -> None:
    eid = store.start_episode("a")
    with pytest.raises(InvalidEventError, match="at least one"):
        store.add_feedback(eid)
    with pytest.raises(InvalidEventError, match="source"):
        store.add_feedback(eid, score=1, source="robot")


def test_schema_newer_than_code_is_refused(store: ExperienceStore) -> None:
    with store.engine.begin() as conn:
        conn.execute(text("UPDATE alembic_version SET version_num = '9999_future'"))
    with pytest.raises(SchemaTooNewError, match="9999_future.*upgrade agent-sleep"):
        ExperienceStore(store.url, settings=store.settings)
    with pytest.raises(SchemaTooNewError):
        ExperienceStore(store.url, settings=store.settings, migrate=False)


def test_unmigrated_database_without_migrate_asks_for_init(db_url: str, settings) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(SchemaOutdatedError, match="agent-sleep init"):
        ExperienceStore(db_url, settings=settings, migrate=False)


def test_unreachable_database_is_named() -> None:
    with pytest.raises(DatabaseUnavailableError, match=r"127\.0\.0\.1:1/nowhere"):
        ExperienceStore("postgresql+psycopg://u:secret@127.0.0.1:1/nowhere")
    try:
        ExperienceStore("postgresql+psycopg://u:secret@127.0.0.1:1/nowhere")
    except DatabaseUnavailableError as exc:
        assert "secret" not in str(exc)


def test_concurrent_appenders_get_distinct_seqs(store: ExperienceStore) -> None:
    eid = store.start_episode("a")
    errors: list[BaseException] = []

    def worker(n: int) -> None:
        try:
            for i in range(10):
                store.append_events(eid, [{"kind": "custom", "content": f"{n}-{i}"}])
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert [e.seq for e in store.events(eid)] == list(range(40))


def test_models_match_migrations(store: ExperienceStore) -> None:
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    from agent_sleep.store.models import Base

    with store.engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    assert diff == []
