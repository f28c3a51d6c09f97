"""Sleep requests: "run this agent's cycle", from a schedule, a trigger or a person, one row each.

A request is written ``pending`` (:meth:`RequestStore.enqueue`, or :func:`add_request` inside a
schedule's firing transaction) by whoever asks, from any process; it never runs anything itself. The
worker that holds an agent's lease (:mod:`.leases`) takes *all* the agent's open requests at once
(:meth:`RequestStore.take`: ``pending`` ones, and ``running`` ones a holder that is gone left behind), so
requests that piled up while a run was going, or while no scheduler was up, coalesce into the next run.
When the run ends every taken request names it (``run_id``): the oldest is ``done``, the rest
``coalesced`` (``failed`` for all when the run failed). A run left unfinished puts its requests back to
``pending`` for the holder that resumes it. No request is dropped on the way.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from agent_sleep.errors import InvalidInputError, NotFoundError
from agent_sleep.names import check_agent_name
from agent_sleep.store.models import SleepRequest, new_id, utcnow
from agent_sleep.store.records import Record
from agent_sleep.store.store import ExperienceStore

__all__ = ["OPEN", "RequestRecord", "RequestStore", "add_request"]

OPEN = ("pending", "running")
STATUSES = ("pending", "running", "done", "coalesced", "failed")


class RequestRecord(Record):
    id: str
    agent: str
    source: str
    reason: str
    status: str
    run_id: str | None
    worker: str | None
    requested_at: datetime
    started_at: datetime | None
    ended_at: datetime | None
    detail: dict[str, Any] | None


def add_request(s: Session, agent: str, *, source: str, reason: str = "",
                detail: dict[str, Any] | None = None) -> RequestRecord:  # fmt: skip
    """Write a pending request in the caller's transaction (the agent row must exist)."""
    row = SleepRequest(id=new_id(), agent=agent, source=source, reason=reason, status="pending",
                       requested_at=utcnow(), detail=detail)  # fmt: skip
    s.add(row)
    s.flush()
    return RequestRecord.model_validate(row)


class RequestStore:
    """The ``sleep_requests`` table over a store's database (see the module docstring)."""

    def __init__(self, store: ExperienceStore) -> None:
        self.store = store

    def enqueue(self, agent: str, *, source: str = "manual", reason: str = "",
                detail: dict[str, Any] | None = None) -> RequestRecord:  # fmt: skip
        """A pending request for ``agent``'s next run; returns it (its id is what ``sleep --enqueue`` prints)."""
        check_agent_name(agent)
        self.store.ensure_agent(agent)
        with self.store.session() as s:
            return add_request(s, agent, source=source, reason=reason, detail=detail)

    def get(self, request_id: str) -> RequestRecord:
        with self.store.session() as s:
            row = s.get(SleepRequest, request_id)
            if row is None:
                raise NotFoundError(f"no sleep request {request_id!r}")
            return RequestRecord.model_validate(row)

    def list(self, *, agent: str | None = None, status: str | Sequence[str] | None = None,
             limit: int | None = None) -> list[RequestRecord]:  # fmt: skip
        """Requests oldest first."""
        stmt = select(SleepRequest).order_by(SleepRequest.requested_at, SleepRequest.id)
        if agent is not None:
            stmt = stmt.where(SleepRequest.agent == agent)
        if status is not None:
            wanted = [status] if isinstance(status, str) else list(status)
            if bad := [w for w in wanted if w not in STATUSES]:
                raise InvalidInputError(f"request status must be one of {', '.join(STATUSES)}, got {bad[0]!r}")
            stmt = stmt.where(SleepRequest.status.in_(wanted))
        if limit:
            stmt = stmt.limit(limit)
        with self.store.session() as s:
            return [RequestRecord.model_validate(r) for r in s.execute(stmt).scalars()]

    def agents_waiting(self) -> list[str]:
        """Agents with an open request (pending, or running under a holder that may be gone)."""
        with self.store.session() as s:
            rows = s.execute(select(SleepRequest.agent).where(SleepRequest.status.in_(OPEN)).distinct()).scalars()
            return sorted(rows)

    def take(self, agent: str, *, worker: str) -> list[RequestRecord]:
        """Every open request of ``agent``, now ``running`` under ``worker``, oldest first. Call it holding the
        agent's lease: that is what makes a ``running`` request left by another worker free to take."""
        now = utcnow()
        with self.store.session() as s:
            stmt = (select(SleepRequest).where(SleepRequest.agent == agent, SleepRequest.status.in_(OPEN))
                    .order_by(SleepRequest.requested_at, SleepRequest.id).with_for_update())  # fmt: skip
            rows = s.execute(stmt).scalars().all()
            for row in rows:
                row.status, row.worker, row.started_at = "running", worker, row.started_at or now
            s.flush()
            return [RequestRecord.model_validate(r) for r in rows]

    def attach(self, ids: Sequence[str], run_id: str) -> None:
        """Name the run that serves the requests (while it runs)."""
        self._update(ids, run_id=run_id)

    def finish(self, ids: Sequence[str], run_id: str | None, outcome: str, *, error: str | None = None) -> None:
        """The run ended: the oldest request ``done``, the others ``coalesced`` (all ``failed`` if it failed)."""
        now = utcnow()
        with self.store.session() as s:
            rows = s.execute(select(SleepRequest).where(SleepRequest.id.in_(list(ids)))
                             .order_by(SleepRequest.requested_at, SleepRequest.id)).scalars().all()  # fmt: skip
            for i, row in enumerate(rows):
                row.status = "failed" if outcome == "failed" else ("done" if i == 0 else "coalesced")
                row.run_id, row.ended_at = run_id, now
                row.detail = {**(row.detail or {}), "outcome": outcome, "served_with": len(rows),
                              **({"error": error} if error else {})}  # fmt: skip

    def put_back(self, ids: Sequence[str]) -> None:
        """The run was left unfinished (or never started): the requests wait for the next holder."""
        with self.store.session() as s:
            s.execute(update(SleepRequest).where(SleepRequest.id.in_(list(ids)), SleepRequest.status == "running")
                      .values(status="pending", worker=None))  # fmt: skip

    def _update(self, ids: Sequence[str], **values: Any) -> None:
        if not ids:
            return
        with self.store.session() as s:
            s.execute(update(SleepRequest).where(SleepRequest.id.in_(list(ids))).values(**values))
