"""An experience store in memory: the reference :class:`~agent_sleep.interfaces.ExperienceReader`.

For tests of the stages and for short-lived scripts. It has the write methods the
SQL :class:`~agent_sleep.store.ExperienceStore` spells the same way (episodes, events,
outcomes, feedback, documents) and its read side with the same semantics: ordering,
filters, validation errors and NotFoundError for unknown ids. ``tests/store/test_reader_contract.py``
runs one body over both. Values are validated by the same record types, so
what one accepts or refuses, the other does too.

Not here: persistence (everything is gone with the object), the capture path's
``write_ops``, skills and the adapter registry, which need SQL.
"""

from __future__ import annotations

import copy
import hashlib
import json
import threading
import time
import uuid
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from agent_sleep.config import Settings, get_settings
from agent_sleep.errors import InvalidEventError, NotFoundError
from agent_sleep.names import check_name
from agent_sleep.store.batches import DEFAULT_BATCH_SIZE, EpisodeBundle, turn_of
from agent_sleep.store.conversation import ModelCall, model_calls
from agent_sleep.store.records import (
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
    validate,
)

__all__ = ["InMemoryExperienceStore"]


def _new_id() -> str:
    return uuid.uuid4().hex


def _now() -> datetime:
    return datetime.now(timezone.utc)


def _json(value: dict[str, Any], what: str) -> dict[str, Any]:
    """A copy as the SQL store's JSON columns would hand it back (tuples become lists, keys strings)."""
    try:
        return json.loads(json.dumps(value))  # type: ignore[no-any-return]
    except (TypeError, ValueError) as exc:
        raise InvalidEventError(f"{what} is not JSON-serialisable ({exc})") from exc


@dataclass
class _Episode:
    id: str
    agent: str
    thread_id: str | None
    started_at: datetime
    meta: dict[str, Any]
    ended_at: datetime | None = None
    status: str = "running"
    outcome: str | None = None
    error: str | None = None
    consolidated_at: datetime | None = None
    consolidation_run: str | None = None
    events: list[EventRecord] = field(default_factory=list)
    feedback: list[FeedbackRecord] = field(default_factory=list)

    def mean_score(self) -> float | None:
        scores = [f.score for f in self.feedback if f.score is not None]
        return sum(scores) / len(scores) if scores else None

    def record(self) -> EpisodeRecord:
        return EpisodeRecord(
            id=self.id, agent=self.agent, thread_id=self.thread_id, started_at=self.started_at, ended_at=self.ended_at,
            status=self.status, outcome=self.outcome, error=self.error, meta=copy.deepcopy(self.meta),
            consolidated_at=self.consolidated_at, consolidation_run=self.consolidation_run, n_events=len(self.events),
            mean_score=self.mean_score(), n_feedback=len(self.feedback),
        )  # fmt: skip


class InMemoryExperienceStore:
    """Agents, episodes, events, feedback and documents in dicts, behind one lock (thread-safe)."""

    def __init__(self, *, settings: Settings | None = None) -> None:
        self.settings = settings or get_settings()
        self._lock = threading.RLock()
        self._agents: dict[str, tuple[datetime, dict[str, Any]]] = {}
        self._episodes: dict[str, _Episode] = {}
        self._event_ids: set[str] = set()
        self._documents: list[DocumentRecord] = []

    # -- plumbing (the SQL store's, so either fits where a store is opened and closed) --
    def close(self) -> None:
        pass

    def __enter__(self) -> InMemoryExperienceStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- writes -------------------------------------------------------------------
    def ensure_agent(self, name: str, metadata: dict[str, Any] | None = None) -> None:
        _check_name(name, "agent name")
        meta = _json(metadata or {}, "agent metadata")
        with self._lock:
            self._agents.setdefault(name, (_now(), meta))

    def start_episode(self, agent: str, *, thread_id: str | None = None, episode_id: str | None = None,
                      metadata: dict[str, Any] | None = None) -> str:  # fmt: skip
        _check_name(agent, "agent name")
        eid = episode_id or _new_id()
        meta = _json(metadata or {}, "episode metadata")
        started = as_utc(time.time())
        assert started is not None
        with self._lock:
            self._agents.setdefault(agent, (started, {}))
            # Starting an episode id that exists is a no-op, as the SQL store's idempotent capture ops make it.
            self._episodes.setdefault(eid, _Episode(eid, agent, thread_id, started, meta))
        return eid

    def append_events(self, episode_id: str, events: Iterable[EventIn | dict[str, Any]]) -> list[str]:
        """Validate all events first, then append them after the episode's last one (all or nothing)."""
        cap = self.settings.max_payload_bytes
        parsed = [EventIn.parse(e, max_bytes=cap, where=f"event #{i}") for i, e in enumerate(events)]
        with self._lock:
            ep = self._require(episode_id)
            taken = {e.seq for e in ep.events}
            seq = max(taken, default=-1)
            rows: list[EventRecord] = []
            for e in parsed:
                seq = e.seq if e.seq is not None else seq + 1
                eid = e.id or _new_id()
                if seq in taken or eid in self._event_ids or eid in {r.id for r in rows}:
                    what = f"seq {seq} is taken" if seq in taken else f"event id {eid!r} exists"
                    raise InvalidEventError(f"events conflict with existing ones in episode {episode_id!r}: {what}")
                taken.add(seq)
                rows.append(EventRecord(id=eid, episode_id=episode_id, seq=seq, kind=e.kind, name=e.name,
                                        content=e.content, payload=_json(e.payload, "event payload"),
                                        created_at=as_utc(e.created_at) or _now()))  # fmt: skip
            ep.events.extend(rows)
            self._event_ids.update(r.id for r in rows)
        return [r.id for r in rows]

    def end_episode(self, episode_id: str, *, status: str = "completed", outcome: str | None = None,
                    error: str | None = None) -> None:  # fmt: skip
        if status not in ("completed", "error", "running"):
            raise InvalidEventError(f"status must be completed, error or running, got {status!r}")
        with self._lock:
            ep = self._require(episode_id)
            ep.ended_at, ep.status, ep.error = as_utc(time.time()), status, error
            if outcome is not None:
                ep.outcome = outcome

    def record_outcome(self, episode_id: str, outcome: str) -> None:
        """Label how an episode turned out (e.g. "resolved"), at any time later."""
        outcome = check_text(outcome, "outcome")
        with self._lock:
            self._require(episode_id).outcome = outcome

    def add_feedback(self, episode_id: str, *, score: float | None = None, label: str | None = None,
                     comment: str | None = None, source: str = "human",
                     correction: str | None = None, instruction: str | None = None) -> str:  # fmt: skip
        fb = validate(FeedbackIn, {"score": score, "label": label, "comment": comment, "source": source,
                                   "correction": correction, "instruction": instruction}, "feedback")  # fmt: skip
        if fb.empty:
            raise InvalidEventError(FEEDBACK_NEEDS)
        fid = _new_id()
        with self._lock:
            self._require(episode_id).feedback.append(
                FeedbackRecord(id=fid, episode_id=episode_id, created_at=as_utc(time.time()), **fb.model_dump()))
        return fid

    def add_document(self, source: str, content: str | bytes, *, title: str | None = None,
                     agent: str | None = None, metadata: dict[str, Any] | None = None) -> DocumentRecord:  # fmt: skip
        """Store a knowledge source; unchanged content returns the existing version."""
        text = check_text(content, f"document {source!r}")
        if not text.strip():
            raise InvalidEventError(f"document {source!r} is empty")
        if len(text.encode("utf-8")) > self.settings.max_payload_bytes * 50:
            raise InvalidEventError(f"document {source!r} is larger than {self.settings.max_payload_bytes * 50:,} bytes")
        if agent is not None:
            _check_name(agent, "agent name")
        digest = hashlib.sha256(text.encode("utf-8")).hexdigest()
        meta = _json(metadata or {}, "document metadata")
        with self._lock:
            now = _now()
            if agent is not None:
                self._agents.setdefault(agent, (now, {}))
            versions = [d for d in self._documents if d.source == source]
            latest = max(versions, key=lambda d: d.version, default=None)
            if latest is not None and latest.content_hash == digest:
                return _copy(latest)
            doc = DocumentRecord(id=_new_id(), agent=agent, source=source, title=title, content=text,
                                 content_hash=digest, version=(latest.version + 1) if latest else 1, created_at=now,
                                 meta=meta, consolidated_at=None)  # fmt: skip
            self._documents.append(doc)
            return _copy(doc)

    def mark_consolidated(self, episode_ids: Sequence[str], run_id: str) -> int:
        """Flag episodes as turned into adapters by consolidation run ``run_id``; returns how many exist."""
        with self._lock:
            found = [self._episodes[i] for i in set(episode_ids) if i in self._episodes]
            now = _now()
            for ep in found:
                ep.consolidated_at, ep.consolidation_run = now, run_id
            return len(found)

    def mark_documents_consolidated(self, document_ids: Sequence[str], run_id: str) -> int:
        """Flag document versions as internalised by consolidation run ``run_id``; returns how many exist."""
        wanted = set(document_ids)
        with self._lock:
            now, n = _now(), 0
            for i, d in enumerate(self._documents):
                if d.id in wanted:
                    self._documents[i] = d.model_copy(update={"consolidated_at": now, "consolidation_run": run_id})
                    n += 1
            return n

    # -- reads --------------------------------------------------------------------
    def get_episode(self, episode_id: str) -> EpisodeRecord:
        with self._lock:
            return self._require(episode_id).record()

    def episodes(self, query: EpisodeQuery | None = None, **filters: Any) -> list[EpisodeRecord]:
        """Episodes matching ``query`` (or the same fields as keyword arguments)."""
        q = query or EpisodeQuery(**filters)
        since, until = as_utc(q.since), as_utc(q.until)
        with self._lock:
            out = []
            for ep in self._episodes.values():
                rec = ep.record()
                labels = {f.label for f in ep.feedback}
                if ((q.agent is not None and rec.agent != q.agent)
                        or (q.thread_id is not None and rec.thread_id != q.thread_id)
                        or (since is not None and rec.started_at < since)
                        or (until is not None and rec.started_at >= until)
                        or (q.status is not None and rec.status != q.status)
                        or (q.outcome is not None and rec.outcome != q.outcome)
                        or (q.unconsolidated and rec.consolidated_at is not None)
                        or (q.feedback_label is not None and q.feedback_label not in labels)
                        or (q.has_feedback is not None and bool(ep.feedback) != q.has_feedback)
                        # A missing mean compares as SQL NULL does: never matches a score bound.
                        or (q.min_score is not None and (rec.mean_score is None or rec.mean_score < q.min_score))
                        or (q.max_score is not None and (rec.mean_score is None or rec.mean_score > q.max_score))):
                    continue
                out.append(rec)
        out.sort(key=lambda e: e.id)  # ties on started_at go by id, ascending either way
        out.sort(key=lambda e: e.started_at, reverse=q.newest_first)
        return out[: q.limit] if q.limit else out

    def episode_batches(self, agent: str, *, since: datetime | None = None, until: datetime | None = None,
                        unconsolidated: bool = True, consolidated: bool = False,
                        kinds: Sequence[str] | None = None,
                        batch_size: int = DEFAULT_BATCH_SIZE) -> Iterator[list[EpisodeBundle]]:
        """``agent``'s episodes, oldest first (ties by id), ``batch_size`` at a time, with turns and feedback
        (as :meth:`ExperienceStore.episode_batches <agent_sleep.store.ExperienceStore.episode_batches>`)."""
        if batch_size < 1:
            raise InvalidEventError(f"batch_size must be at least 1, got {batch_size}")
        since_utc, until_utc, wanted = as_utc(since), as_utc(until), None if kinds is None else set(kinds)
        with self._lock:
            chosen = sorted(
                (e for e in self._episodes.values() if e.agent == agent
                 and not (unconsolidated and e.consolidated_at is not None)
                 and not (consolidated and e.consolidated_at is None)
                 and (since_utc is None or e.started_at >= since_utc)
                 and (until_utc is None or e.started_at < until_utc)),
                key=lambda e: (e.started_at, e.id))  # fmt: skip
            ids = [e.id for e in chosen]
        for start in range(0, len(ids), batch_size):
            batch = []
            with self._lock:
                for eid in ids[start : start + batch_size]:
                    ep = self._episodes[eid]
                    events = sorted(ep.events, key=lambda e: e.seq)
                    batch.append(EpisodeBundle(
                        id=ep.id, agent=ep.agent, thread_id=ep.thread_id, started_at=ep.started_at, status=ep.status,
                        outcome=ep.outcome, consolidated_at=ep.consolidated_at,
                        turns=tuple(turn_of(_copy(e)) for e in events if wanted is None or e.kind in wanted),
                        feedback=tuple(sorted(ep.feedback, key=lambda f: (f.created_at, f.id)))))  # fmt: skip
            yield batch

    def events(self, episode_id: str) -> list[EventRecord]:
        with self._lock:
            return [_copy(e) for e in sorted(self._require(episode_id).events, key=lambda e: e.seq)]

    def model_calls(self, episode_id: str) -> list[ModelCall]:
        """Each model call of the episode with the exact messages and tools the model was given."""
        return model_calls(self.events(episode_id))

    def model_calls_of(self, episode_ids: Sequence[str]) -> dict[str, list[ModelCall]]:
        """:meth:`model_calls` of many episodes; an episode with no recorded model call is absent."""
        out = {}
        for eid in dict.fromkeys(episode_ids):
            with self._lock:
                ep = self._episodes.get(eid)
                events = [_copy(e) for e in sorted(ep.events, key=lambda e: e.seq)] if ep is not None else []
            calls = model_calls(events)
            if calls:
                out[eid] = calls
        return out

    def feedback(self, episode_id: str) -> list[FeedbackRecord]:
        with self._lock:
            return sorted(self._require(episode_id).feedback, key=lambda f: (f.created_at, f.id))

    def documents(self, *, agent: str | None = None, source: str | None = None, latest_only: bool = True,
                  unconsolidated: bool = False, since: datetime | None = None) -> list[DocumentRecord]:  # fmt: skip
        since_utc = as_utc(since)
        with self._lock:
            newest: dict[str, int] = {}
            for d in self._documents:  # over every version, before the other filters (as the SQL join does)
                newest[d.source] = max(newest.get(d.source, 0), d.version)
            docs = [
                _copy(d) for d in self._documents
                if (agent is None or d.agent == agent) and (source is None or d.source == source)
                and not (unconsolidated and d.consolidated_at is not None)
                and (since_utc is None or d.created_at >= since_utc)
                and (not latest_only or d.version == newest[d.source])
            ]  # fmt: skip
        return sorted(docs, key=lambda d: d.created_at)

    def agents(self) -> list[str]:
        with self._lock:
            return sorted(self._agents)

    def count_events(self) -> int:
        with self._lock:
            return len(self._event_ids)

    # -- helpers ------------------------------------------------------------------
    def _require(self, episode_id: str) -> _Episode:
        ep = self._episodes.get(episode_id)
        if ep is None:
            raise NotFoundError(f"no episode with id {episode_id!r}")
        return ep


def _copy(record: Any) -> Any:
    """A record whose dicts the caller may change without changing the store (SQL reads hand back fresh ones)."""
    return record.model_copy(deep=True)


def _check_name(name: str, what: str) -> None:
    check_name(name, what, error=InvalidEventError)
