"""The experience store: what an agent lived through, in SQL.

``ExperienceStore`` is the one object the rest of agent-sleep talks to for
experiences: capture writes batches of ops through :meth:`write_ops`, the CLI
and users call the typed methods, and the consolidation job reads with
:meth:`episodes`. Every write is one transaction: it lands whole or not at all.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import Connection, Engine, Select, and_, case, exists, func, insert, select, update
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

from agent_sleep.config import Settings, get_settings
from agent_sleep.errors import DatabaseUnavailableError, InvalidEventError, NotFoundError
from agent_sleep.names import check_name
from agent_sleep.store import engine as engine_mod
from agent_sleep.store.batches import DEFAULT_BATCH_SIZE, EpisodeBundle, Turn
from agent_sleep.store.models import Agent, Document, Episode, Event, Feedback, Skill, new_id, utcnow
from agent_sleep.store.ops import Op, apply_ops
from agent_sleep.store.records import (
    EPISODE_STATUSES,
    FEEDBACK_NEEDS,
    DocumentRecord,
    EpisodeQuery,
    EpisodeRecord,
    EventIn,
    EventRecord,
    FeedbackIn,
    FeedbackRecord,
    as_utc,
    check_text,
    normalize_episode_id,
    validate,
)

if TYPE_CHECKING:
    from agent_sleep.store.conversation import ModelCall


class ExperienceStore:
    """Experience log over SQLite (default) or PostgreSQL.

    ``ExperienceStore()`` opens the default SQLite file in the data directory and
    migrates it to the newest schema; pass ``url`` for another database and
    ``migrate=False`` to refuse (rather than perform) a migration.
    """

    def __init__(
        self,
        url: str | None = None,
        *,
        settings: Settings | None = None,
        migrate: bool = True,
        engine: Engine | None = None,
    ) -> None:
        self.settings = settings or get_settings(database_url=url)
        self.url = url or self.settings.resolved_database_url
        self.engine = engine or engine_mod.make_engine(self.url)
        engine_mod.check_connection(self.engine)
        if migrate:
            engine_mod.migrate(self.engine)
        else:
            engine_mod.check_schema(self.engine)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)

    # -- plumbing -----------------------------------------------------------------
    @property
    def dialect(self) -> str:
        return self.engine.dialect.name

    @property
    def safe_url(self) -> str:
        return engine_mod.safe_url(self.url)

    def close(self) -> None:
        self.engine.dispose()

    def __enter__(self) -> ExperienceStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def session(self) -> Iterator[Session]:
        """A transaction: committed on success, rolled back on error; outages become DatabaseUnavailableError."""
        try:
            with self._sessions.begin() as session:
                yield session
        except OperationalError as exc:
            raise DatabaseUnavailableError(f"database {self.safe_url} failed: {exc.orig}") from exc

    def write_ops(self, ops: Sequence[Op]) -> int:
        """Apply a batch of capture ops in one transaction (idempotent)."""
        try:
            with self.engine.begin() as conn:
                return apply_ops(conn, ops)
        except OperationalError as exc:
            raise DatabaseUnavailableError(f"database {self.safe_url} failed: {exc.orig}") from exc

    # -- writes -------------------------------------------------------------------
    def ensure_agent(self, name: str, metadata: dict[str, Any] | None = None) -> None:
        self._check_name(name, "agent name")
        self.write_ops([{"op": "agent", "name": name, "meta": metadata or {}, "ts": time.time()}])

    def start_episode(
        self,
        agent: str,
        *,
        thread_id: str | None = None,
        episode_id: str | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> str:
        self._check_name(agent, "agent name")
        eid = normalize_episode_id(episode_id) if episode_id else new_id()
        self.write_ops(
            [{"op": "episode_start", "id": eid, "agent": agent, "thread_id": thread_id,
              "meta": metadata or {}, "ts": time.time()}]
        )
        return eid

    def append_events(self, episode_id: str, events: Iterable[EventIn | dict[str, Any]]) -> list[str]:
        """Validate all events first, then append them after the episode's last one."""
        cap = self.settings.max_payload_bytes
        parsed = [EventIn.parse(e, max_bytes=cap, where=f"event #{i}") for i, e in enumerate(events)]
        episode_id = self.resolve_episode_id(episode_id)
        auto_seq = all(e.seq is None for e in parsed)
        for attempt in range(8):
            try:
                return self._insert_events(episode_id, parsed)
            except IntegrityError as exc:
                # Two writers picked the same next seq (SQLite has no row locks): retry
                # with a fresh max. Explicit seqs that collide are the caller's error.
                if not auto_seq or attempt == 7:
                    raise InvalidEventError(
                        f"events conflict with existing ones in episode {episode_id!r}: {exc.orig}"
                    ) from exc
                time.sleep(0.005 * (attempt + 1))
        raise AssertionError("unreachable")

    def _insert_events(self, episode_id: str, parsed: list[EventIn]) -> list[str]:
        ids: list[str] = []
        with self.session() as s:
            # Row lock on PostgreSQL so two appenders cannot pick the same seq.
            found = s.execute(select(Episode.id).where(Episode.id == episode_id).with_for_update()).scalar()
            if found is None:
                raise NotFoundError(f"no episode with id {episode_id!r}")
            last = s.execute(select(func.max(Event.seq)).where(Event.episode_id == episode_id)).scalar()
            seq = -1 if last is None else last
            rows: list[dict[str, Any]] = []
            for e in parsed:
                seq = e.seq if e.seq is not None else seq + 1
                ids.append(e.id or new_id())
                rows.append({"id": ids[-1], "episode_id": episode_id, "seq": seq, "kind": e.kind, "name": e.name,
                             "content": e.content, "payload": e.payload, "created_at": as_utc(e.created_at) or utcnow()})
            # A plain insert, not the capture path's insert-or-ignore: a clash must fail loudly.
            s.execute(insert(Event), rows)
        return ids

    def end_episode(self, episode_id: str, *, status: str = "completed", outcome: str | None = None,
                    error: str | None = None) -> None:
        if status not in EPISODE_STATUSES:
            raise InvalidEventError(f"status must be one of {', '.join(EPISODE_STATUSES)}, got {status!r}")
        episode_id = self.resolve_episode_id(episode_id)
        self.write_ops([{"op": "episode_end", "id": episode_id, "status": status, "outcome": outcome,
                         "error": error, "ts": time.time()}])

    def record_outcome(self, episode_id: str, outcome: str) -> None:
        """Label how an episode turned out (e.g. "resolved"), at any time later."""
        outcome = check_text(outcome, "outcome")
        episode_id = self.resolve_episode_id(episode_id)
        with self.session() as s:
            n = s.execute(update(Episode).where(Episode.id == episode_id).values(outcome=outcome)).rowcount
            if not n:
                raise NotFoundError(f"no episode with id {episode_id!r}")

    def add_feedback(self, episode_id: str, *, score: float | None = None, label: str | None = None,
                     comment: str | None = None, source: str = "human", correction: str | None = None,
                     instruction: str | None = None) -> str:
        """Record feedback for an episode; works from any process at any later time.

        ``correction``: the right answer when the agent answered wrong. ``instruction``: how the agent
        should behave from now on, in every conversation ("always ask for the order number first").
        Each alone is valid feedback."""
        fb = validate(FeedbackIn, {"score": score, "label": label, "comment": comment, "source": source,
                                   "correction": correction, "instruction": instruction}, "feedback")  # fmt: skip
        if fb.empty:
            raise InvalidEventError(FEEDBACK_NEEDS)
        episode_id = self.resolve_episode_id(episode_id)
        fid = new_id()
        self.write_ops([{"op": "feedback", "id": fid, "episode_id": episode_id, **fb.model_dump(), "ts": time.time()}])
        return fid

    def add_document(self, source: str, content: str | bytes, *, title: str | None = None,
                     agent: str | None = None, metadata: dict[str, Any] | None = None) -> DocumentRecord:
        """Store a knowledge source; unchanged content returns the existing version."""
        text = check_text(content, f"document {source!r}")
        if not text.strip():
            raise InvalidEventError(f"document {source!r} is empty")
        if len(text.encode("utf-8")) > self.settings.max_payload_bytes * 50:
            raise InvalidEventError(f"document {source!r} is larger than {self.settings.max_payload_bytes * 50:,} bytes")
        digest = hashlib.sha256(text.encode("utf-8")).hexdigest()
        with self.session() as s:
            if agent is not None:
                self._ensure_agent_row(s, agent)
            latest = s.execute(
                select(Document).where(Document.source == source).order_by(Document.version.desc()).limit(1)
            ).scalar()
            if latest is not None and latest.content_hash == digest:
                return DocumentRecord.model_validate(latest)
            doc = Document(source=source, title=title, content=text, content_hash=digest, agent=agent,
                           version=(latest.version + 1) if latest else 1, meta=metadata or {}, created_at=utcnow())
            s.add(doc)
            s.flush()
            return DocumentRecord.model_validate(doc)

    def upsert_skill(self, name: str, *, description: str = "", kind: str = "custom",
                     agent: str | None = None) -> None:
        self._check_name(name, "skill name")
        with self.session() as s:
            if agent is not None:
                self._ensure_agent_row(s, agent)
            skill = s.get(Skill, name)
            if skill is None:
                s.add(Skill(name=name, description=description, kind=kind, agent=agent, meta={}, created_at=utcnow()))
            else:
                skill.description, skill.kind = description or skill.description, kind

    def mark_consolidated(self, episode_ids: Sequence[str], run_id: str) -> int:
        """Flag episodes as turned into adapters by consolidation run ``run_id``."""
        with self.session() as s:
            return s.execute(
                update(Episode).where(Episode.id.in_([normalize_episode_id(e) for e in episode_ids]))
                .values(consolidated_at=utcnow(), consolidation_run=run_id)
            ).rowcount

    def mark_documents_consolidated(self, document_ids: Sequence[str], run_id: str) -> int:
        """Flag document versions as internalised by consolidation run ``run_id``; returns how many exist."""
        ids = list(dict.fromkeys(document_ids))
        n = 0
        with self.session() as s:
            for start in range(0, len(ids), 500):  # well below every backend's limit on bound parameters
                n += s.execute(
                    update(Document).where(Document.id.in_(ids[start : start + 500]))
                    .values(consolidated_at=utcnow(), consolidation_run=run_id)
                ).rowcount
        return n

    # -- reads --------------------------------------------------------------------
    def get_episode(self, episode_id: str) -> EpisodeRecord:
        """The episode ``episode_id`` names (any UUID spelling, or the run id of a run that continued it)."""
        rows = self._episode_rows(select_filter=Episode.id == self.resolve_episode_id(episode_id))
        if not rows:
            raise NotFoundError(f"no episode with id {episode_id!r}")
        return rows[0]

    def episodes(self, query: EpisodeQuery | None = None, **filters: Any) -> list[EpisodeRecord]:
        """Episodes matching ``query`` (or the same fields as keyword arguments)."""
        q = query or EpisodeQuery(**filters)
        conds: list[Any] = []
        if q.agent is not None:
            conds.append(Episode.agent == q.agent)
        if q.thread_id is not None:
            conds.append(Episode.thread_id == q.thread_id)
        if q.episode_ids is not None:
            with self.session() as s:
                conds.append(Episode.id.in_([self._resolve(s, e) or e for e in q.episode_ids]))
        if q.since is not None:
            conds.append(Episode.started_at >= as_utc(q.since))
        if q.until is not None:
            conds.append(Episode.started_at < as_utc(q.until))
        if q.status is not None:
            conds.append(Episode.status == q.status)
        if q.outcome is not None:
            conds.append(Episode.outcome == q.outcome)
        if q.unconsolidated:
            conds.append(Episode.consolidated_at.is_(None))
        if q.feedback_label is not None:
            conds.append(exists().where(and_(Feedback.episode_id == Episode.id, Feedback.label == q.feedback_label)))
        if q.has_feedback is not None:
            has = exists().where(Feedback.episode_id == Episode.id)
            conds.append(has if q.has_feedback else ~has)
        return self._episode_rows(
            select_filter=and_(*conds) if conds else None, min_score=q.min_score, max_score=q.max_score,
            limit=q.limit, newest_first=q.newest_first,
        )

    def _episode_rows(self, *, select_filter: Any = None, min_score: float | None = None,
                      max_score: float | None = None, limit: int | None = None,
                      newest_first: bool = False) -> list[EpisodeRecord]:
        n_events = select(Event.episode_id, func.count().label("n")).group_by(Event.episode_id).subquery()
        fb = (
            select(Feedback.episode_id, func.avg(Feedback.score).label("mean"), func.count().label("n"))
            .group_by(Feedback.episode_id).subquery()
        )
        stmt: Select[Any] = (
            select(Episode, n_events.c.n, fb.c.mean, fb.c.n)
            .outerjoin(n_events, n_events.c.episode_id == Episode.id)
            .outerjoin(fb, fb.c.episode_id == Episode.id)
        )
        if select_filter is not None:
            stmt = stmt.where(select_filter)
        if min_score is not None:
            stmt = stmt.where(fb.c.mean >= min_score)
        if max_score is not None:
            stmt = stmt.where(fb.c.mean <= max_score)
        order = Episode.started_at.desc() if newest_first else Episode.started_at
        stmt = stmt.order_by(order, Episode.id)
        if limit:
            stmt = stmt.limit(limit)
        with self.session() as s:
            out = []
            for ep, n_ev, mean, n_fb in s.execute(stmt):
                rec = EpisodeRecord.model_validate(ep).model_copy(
                    update={"n_events": n_ev or 0, "mean_score": None if mean is None else float(mean),
                            "n_feedback": n_fb or 0})
                out.append(rec)
            return out

    def episode_batches(self, agent: str, *, since: datetime | None = None, until: datetime | None = None,
                        unconsolidated: bool = True, consolidated: bool = False,
                        kinds: Sequence[str] | None = None,
                        batch_size: int = DEFAULT_BATCH_SIZE) -> Iterator[list[EpisodeBundle]]:
        """``agent``'s episodes, oldest first (ties by id), ``batch_size`` at a time, each with its turns (only
        ``kinds``, if given) and feedback.

        One ordered query over the episodes is streamed (a server-side cursor on PostgreSQL; SQLite steps
        its cursor), so the database sorts once and memory holds one batch; each batch's events and feedback
        come with one query each. ``unconsolidated`` keeps only episodes no run has consolidated yet,
        ``consolidated`` only those a run has (both False: all). The whole read is one transaction: a consistent snapshot (readers do not
        block capture's writes: SQLite runs in WAL mode)."""
        if batch_size < 1:
            raise InvalidEventError(f"batch_size must be at least 1, got {batch_size}")
        ep = Episode.__table__.c
        conds = [ep.agent == agent]
        if unconsolidated:
            conds.append(ep.consolidated_at.is_(None))
        if consolidated:
            conds.append(ep.consolidated_at.is_not(None))
        if since is not None:
            conds.append(ep.started_at >= as_utc(since))
        if until is not None:
            conds.append(ep.started_at < as_utc(until))
        stmt = (select(ep.id, ep.agent, ep.thread_id, ep.started_at, ep.status, ep.outcome, ep.consolidated_at)
                .where(*conds).order_by(ep.started_at, ep.id))  # fmt: skip
        fb = Feedback.__table__
        try:
            with self.engine.connect() as conn:
                result = conn.execution_options(stream_results=True, yield_per=batch_size).execute(stmt)
                for rows in result.partitions():
                    ids = [r.id for r in rows]
                    turns = self._turns_of(conn, ids, kinds)
                    feedback: dict[str, list[FeedbackRecord]] = {}
                    for f in conn.execute(select(fb).where(fb.c.episode_id.in_(ids))
                                          .order_by(fb.c.created_at, fb.c.id)):  # fmt: skip
                        feedback.setdefault(f.episode_id, []).append(FeedbackRecord.model_validate(f))
                    yield [EpisodeBundle(id=r.id, agent=r.agent, thread_id=r.thread_id,
                                         started_at=as_utc(r.started_at), status=r.status, outcome=r.outcome,
                                         consolidated_at=as_utc(r.consolidated_at), turns=tuple(turns.get(r.id, ())),
                                         feedback=tuple(feedback.get(r.id, ()))) for r in rows]  # fmt: skip
        except OperationalError as exc:
            raise DatabaseUnavailableError(f"database {self.safe_url} failed: {exc.orig}") from exc

    @staticmethod
    def _turns_of(conn: Connection, ids: list[str], kinds: Sequence[str] | None) -> dict[str, list[Turn]]:
        ev = Event.__table__.c
        payload = Event.payload  # JSON paths read in SQL (the rest of a payload, a model's input, stays there),
        # as text, only on the kinds that carry them, decoded here when present: far fewer JSON values to decode
        calls = case((ev.kind == "assistant_message", payload["tool_calls"].as_string()), else_=None)
        args = case((ev.kind == "tool_call", payload["args"].as_string()), else_=None)
        call_id = case((ev.kind.in_(("tool_call", "tool_result")), payload["tool_call_id"].as_string()), else_=None)
        # Other kinds are filtered here, not in SQL: a condition on kind would lead SQLite to its kind index
        # (every event of the kind) instead of the (episode_id, seq) one. Their content is not read.
        content = ev.content if kinds is None else case((ev.kind.in_(list(kinds)), ev.content), else_=None)
        wanted = None if kinds is None else frozenset(kinds)
        stmt = (select(ev.episode_id, ev.seq, ev.kind, ev.name, content, calls, call_id, args)
                .where(ev.episode_id.in_(ids)).order_by(ev.episode_id, ev.seq))  # fmt: skip
        out: dict[str, list[Turn]] = {}
        for eid, seq, kind, name, text, tool_calls, tool_call_id, arguments in conn.execute(stmt):
            if wanted is None or kind in wanted:
                out.setdefault(eid, []).append(Turn(seq, kind, name, text, _json_value(tool_calls), tool_call_id,
                                                    _json_value(arguments)))
        return out

    def events(self, episode_id: str) -> list[EventRecord]:
        episode_id = self.resolve_episode_id(episode_id)
        with self.session() as s:
            rows = s.execute(select(Event).where(Event.episode_id == episode_id).order_by(Event.seq)).scalars()
            return [EventRecord.model_validate(r) for r in rows]

    def model_calls(self, episode_id: str) -> list[ModelCall]:
        """Each model call of the episode with the exact messages and tools the model was given."""
        from agent_sleep.store.conversation import model_calls

        return model_calls(self.events(episode_id))

    def model_calls_of(self, episode_ids: Sequence[str], *, chunk: int = 500) -> dict[str, list[ModelCall]]:
        """:meth:`model_calls` of many episodes (stored ids) with one query per ``chunk`` of them; an
        episode with no recorded model call is absent."""
        from agent_sleep.store.conversation import MODEL_CALL_KINDS, model_calls

        ids = list(dict.fromkeys(episode_ids))
        found: dict[str, list[EventRecord]] = {}
        with self.session() as s:
            for start in range(0, len(ids), chunk):
                rows = s.execute(select(Event).where(Event.episode_id.in_(ids[start : start + chunk]),
                                                     Event.kind.in_(MODEL_CALL_KINDS))
                                 .order_by(Event.episode_id, Event.seq)).scalars()  # fmt: skip
                for r in rows:
                    found.setdefault(r.episode_id, []).append(EventRecord.model_validate(r))
        return {eid: calls for eid, events in found.items() if (calls := model_calls(events))}

    def feedback(self, episode_id: str) -> list[FeedbackRecord]:
        episode_id = self.resolve_episode_id(episode_id)
        with self.session() as s:
            rows = s.execute(
                select(Feedback).where(Feedback.episode_id == episode_id).order_by(Feedback.created_at, Feedback.id)
            ).scalars()
            return [FeedbackRecord.model_validate(r) for r in rows]

    def documents(self, *, agent: str | None = None, source: str | None = None, latest_only: bool = True,
                  unconsolidated: bool = False, since: datetime | None = None) -> list[DocumentRecord]:
        stmt = select(Document)
        if agent is not None:
            stmt = stmt.where(Document.agent == agent)
        if source is not None:
            stmt = stmt.where(Document.source == source)
        if unconsolidated:
            stmt = stmt.where(Document.consolidated_at.is_(None))
        if since is not None:
            stmt = stmt.where(Document.created_at >= as_utc(since))
        if latest_only:
            newest = select(Document.source, func.max(Document.version).label("v")).group_by(Document.source).subquery()
            stmt = stmt.join(newest, and_(newest.c.source == Document.source, newest.c.v == Document.version))
        with self.session() as s:
            return [DocumentRecord.model_validate(d) for d in s.execute(stmt.order_by(Document.created_at)).scalars()]

    def agents(self) -> list[str]:
        with self.session() as s:
            return list(s.execute(select(Agent.name).order_by(Agent.name)).scalars())

    def count_events(self) -> int:
        with self.session() as s:
            return int(s.execute(select(func.count()).select_from(Event)).scalar() or 0)

    def resolve_episode_id(self, episode_id: str) -> str:
        """The stored id of the episode ``episode_id`` names, or NotFoundError naming it.

        Accepts a UUID in any spelling (see ``normalize_episode_id``) and the run id of a run that
        continued an episode (a resumed graph), whose ``resume`` event carries that id.
        """
        norm = normalize_episode_id(episode_id)
        with self.session() as s:
            found = self._resolve(s, norm)
            if found is None and norm != str(episode_id):  # an id stored before ids were normalised
                found = self._resolve(s, str(episode_id))
        if found is None:
            raise NotFoundError(f"no episode with id {episode_id!r}")
        return found

    # -- helpers ------------------------------------------------------------------
    @staticmethod
    def _resolve(s: Session, eid: str) -> str | None:
        if s.get(Episode, eid) is not None:
            return eid
        return s.execute(select(Event.episode_id).where(Event.id == eid, Event.kind == "resume")).scalar()

    @staticmethod
    def _ensure_agent_row(s: Session, name: str) -> None:
        check_name(name, "agent name", error=InvalidEventError)
        if s.get(Agent, name) is None:
            s.add(Agent(name=name, meta={}, created_at=utcnow()))
            s.flush()

    @staticmethod
    def _check_name(name: str, what: str) -> None:
        check_name(name, what, error=InvalidEventError)


def _json_value(text: Any) -> Any:
    """A JSON path read as text (``->>`` / ``json_extract``): objects and arrays come as JSON text, a
    string as itself (it is not JSON then: kept as it is), numbers as numbers."""
    if not isinstance(text, str) or not text or text[0] not in "[{":
        return text
    try:
        return json.loads(text)
    except ValueError:
        return text
