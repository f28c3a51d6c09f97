"""Per-agent leases: exactly one process at a time may drive an agent's consolidation runs.

A lease is one ``agent_leases`` row per agent: ``owner`` (``host:pid:token`` of the worker holding it),
``token`` (the fencing token, +1 on every acquisition), ``expires_at`` and ``run_id`` (the run the holder
drives, once it has one). Every operation is one short transaction whose decision is a single
conditional ``UPDATE`` (after an ``INSERT ... ON CONFLICT DO NOTHING`` that makes sure the row exists),
so two schedulers started by mistake on one database, or any number of worker processes, agree on one
holder: PostgreSQL serialises the updates on the row lock (and re-checks the condition on the row a
concurrent winner wrote), SQLite on its write lock. APScheduler's job store plays no part in it.

**Clocks.** Expiry is written and compared with the *database's* clock (PostgreSQL ``clock_timestamp()``,
SQLite ``strftime('now')``), never a worker's, so a worker whose clock is minutes off can neither steal a
live lease nor keep a dead one. The only time a holder measures itself is how long it has gone without a
successful renewal (a monotonic interval, unaffected by clock offsets): after ``seconds - margin`` it
treats the lease as lost (:class:`LeaseKeeper`), ``margin`` covering the renewal's own round trip and clock
*rate* drift. Renewal runs on a heartbeat thread every third of the lease while a cycle runs.

**Fencing.** Renewal, release and :meth:`LeaseStore.set_run` only succeed while ``owner`` *and* ``token``
are still the caller's: once another worker has taken the lease over (after it expired) the old holder's
writes to the lease fail, its keeper reports the lease lost, and its cycle stops at the next stage
boundary (:class:`~agent_sleep.consolidation.cycle.RunGuard`). The new holder finds the old holder's run
in ``run_id``, declares it orphaned and resumes it (:mod:`.worker`), which makes the new cycle the run's
owner. The run's own records are fenced by that owner, not by the lease: every stage write and the finish
(:class:`~agent_sleep.consolidation.runs.RunStore`) only succeeds while the writer still owns the running
run, so an old holder that is still inside a stage when this happens cannot overwrite the new holder's
stage results or progress, mark a stage failed or end the run; its cycle stops at that refused write
(:class:`~agent_sleep.errors.RunTakenOverError`). Its deploy is conditional on the live deployment it checked.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import DateTime, func, or_, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from agent_sleep.errors import InvalidInputError
from agent_sleep.store.models import AgentLease
from agent_sleep.store.records import Record, as_utc
from agent_sleep.store.store import ExperienceStore

__all__ = ["Acquired", "Held", "LeaseKeeper", "LeaseRecord", "LeaseStore", "db_now", "db_now_plus"]

log = logging.getLogger("agent_sleep.scheduling")
_SQLITE_TS = "%Y-%m-%d %H:%M:%f000"  # SQLAlchemy's SQLite datetime layout: microseconds from milliseconds


def db_now(dialect: str) -> Any:
    """The database's current time as a SQL expression (comparable with stored datetimes)."""
    if dialect == "postgresql":
        return func.clock_timestamp(type_=DateTime(timezone=True))
    return func.strftime(_SQLITE_TS, "now", type_=DateTime(timezone=True))


def db_now_plus(dialect: str, seconds: float) -> Any:
    """The database's time ``seconds`` from now, as a SQL expression."""
    if dialect == "postgresql":
        return func.clock_timestamp(type_=DateTime(timezone=True)) + timedelta(seconds=seconds)
    return func.strftime(_SQLITE_TS, "now", f"{seconds:+.3f} seconds", type_=DateTime(timezone=True))


def _utc(value: Any) -> datetime:
    out = as_utc(value)
    assert out is not None
    return out


class LeaseRecord(Record):
    agent: str
    owner: str | None
    token: int
    run_id: str | None
    acquired_at: datetime | None
    renewed_at: datetime | None
    expires_at: datetime | None


@dataclass(frozen=True)
class Acquired:
    """The lease is ours: ``token`` fences it. ``previous_run``: a run an earlier holder left unfinished
    (to resume); ``expired``: taken from a holder whose lease ran out rather than one that released it."""

    agent: str
    owner: str
    token: int
    expires_at: datetime
    previous_owner: str | None
    previous_run: str | None
    expired: bool


@dataclass(frozen=True)
class Held:
    """Someone else holds an unexpired lease on the agent (by the database's clock)."""

    agent: str
    owner: str
    token: int
    expires_at: datetime


class LeaseStore:
    """The ``agent_leases`` table over a store's database (see the module docstring)."""

    def __init__(self, store: ExperienceStore, *, seconds: float = 60.0) -> None:
        if not seconds > 0:
            raise InvalidInputError(f"a lease lasts a positive number of seconds, got {seconds!r}")
        self.store, self.seconds = store, float(seconds)
        self._dialect = store.dialect

    def _mine(self, agent: str, owner: str, token: int) -> Any:
        return (AgentLease.agent == agent, AgentLease.owner == owner, AgentLease.token == token)

    def acquire(self, agent: str, owner: str) -> Acquired | Held:
        """Take the agent's lease if it is free or expired; else say who holds it. One transaction."""
        now, later = db_now(self._dialect), db_now_plus(self._dialect, self.seconds)
        insert = pg_insert if self._dialect == "postgresql" else sqlite_insert
        with self.store.session() as s:
            # A write first: SQLite takes its write lock here (waiting on busy_timeout), PostgreSQL makes sure
            # the row exists for the row lock below.
            s.execute(insert(AgentLease).values(agent=agent, owner=None, token=0).on_conflict_do_nothing())
            before = s.execute(select(AgentLease.owner, AgentLease.token, AgentLease.run_id, AgentLease.expires_at)
                               .where(AgentLease.agent == agent).with_for_update()).one()  # fmt: skip
            won = s.execute(
                update(AgentLease)
                .where(AgentLease.agent == agent,
                       or_(AgentLease.owner.is_(None), AgentLease.expires_at.is_(None), AgentLease.expires_at <= now))
                .values(owner=owner, token=AgentLease.token + 1, acquired_at=now, renewed_at=now, expires_at=later)
                .returning(AgentLease.token, AgentLease.expires_at)
                .execution_options(synchronize_session=False)
            ).first()  # fmt: skip
        if won is None:
            return Held(agent=agent, owner=str(before.owner), token=int(before.token),
                        expires_at=_utc(before.expires_at))  # fmt: skip
        return Acquired(agent=agent, owner=owner, token=int(won.token), expires_at=_utc(won.expires_at),
                        previous_owner=before.owner, previous_run=before.run_id,
                        # The row is locked, so winning it from a holder means that holder's lease had run
                        # out. (Not a second comparison with the clock: PostgreSQL's clock_timestamp() moves
                        # between statements, and a lease expiring in between read as "released".)
                        expired=before.owner is not None)  # fmt: skip

    def renew(self, lease: Acquired) -> datetime | None:
        """Push the expiry ``seconds`` past the database's now; None if the lease is no longer ours."""
        now, later = db_now(self._dialect), db_now_plus(self._dialect, self.seconds)
        with self.store.session() as s:
            row = s.execute(update(AgentLease).where(*self._mine(lease.agent, lease.owner, lease.token))
                            .values(renewed_at=now, expires_at=later).returning(AgentLease.expires_at)
                            .execution_options(synchronize_session=False)).first()  # fmt: skip
        return None if row is None else _utc(row.expires_at)

    def set_run(self, lease: Acquired, run_id: str | None) -> bool:
        """Record the run the holder drives (None: it finished); False if the lease is no longer ours."""
        with self.store.session() as s:
            n = s.execute(update(AgentLease).where(*self._mine(lease.agent, lease.owner, lease.token))
                          .values(run_id=run_id).execution_options(synchronize_session=False)).rowcount  # fmt: skip
        return bool(n)

    def release(self, lease: Acquired) -> bool:
        """Give the lease up now (``run_id`` stays: a run left unfinished is the next holder's to resume)."""
        with self.store.session() as s:
            n = s.execute(update(AgentLease).where(*self._mine(lease.agent, lease.owner, lease.token))
                          .values(owner=None, expires_at=None)
                          .execution_options(synchronize_session=False)).rowcount  # fmt: skip
        return bool(n)

    def get(self, agent: str) -> LeaseRecord | None:
        with self.store.session() as s:
            row = s.get(AgentLease, agent)
            return None if row is None else LeaseRecord.model_validate(row)

    def all(self) -> list[LeaseRecord]:
        with self.store.session() as s:
            return [LeaseRecord.model_validate(r) for r in s.execute(select(AgentLease).order_by(AgentLease.agent))
                    .scalars()]  # fmt: skip

    def now(self) -> datetime:
        """The database's clock (what expiry is measured against)."""
        with self.store.session() as s:
            return _utc(s.execute(select(db_now(self._dialect))).scalar())


class LeaseKeeper:
    """Renews a lease on a daemon thread every ``seconds / 3`` while a cycle runs (a context manager).

    :attr:`lost` is None while the lease is held, else why it is not: the database said another holder
    has it, or no renewal has succeeded for ``seconds - margin`` (the database may be unreachable; the
    lease must be assumed gone before it really expires; ``margin`` defaults to a quarter of the lease, at
    most 5 s). :meth:`stop` ends the thread.
    """

    def __init__(self, leases: LeaseStore, lease: Acquired, *, margin: float | None = None) -> None:
        self.leases, self.lease = leases, lease
        self.interval = leases.seconds / 3
        margin = min(5.0, leases.seconds / 4) if margin is None else margin
        self.deadline = max(leases.seconds - margin, self.interval)
        self._lost: str | None = None
        self._stop = threading.Event()
        self._last_ok = time.monotonic()
        self._thread = threading.Thread(target=self._run, name=f"agent-sleep-lease-{lease.agent}", daemon=True)

    @property
    def lost(self) -> str | None:
        if self._lost is None and time.monotonic() - self._last_ok > self.deadline:
            self._lost = (f"the lease on {self.lease.agent!r} could not be renewed for "
                          f"{time.monotonic() - self._last_ok:.0f} s (lease {self.leases.seconds:g} s)")  # fmt: skip
        return self._lost

    def mark_lost(self, why: str) -> None:
        """Another part of the holder learnt the lease is gone (a fenced write failed)."""
        self._lost = self._lost or why

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            started = time.monotonic()
            try:
                expires = self.leases.renew(self.lease)
            except Exception as exc:  # a flaky database must not end the run from this thread
                log.warning("renewing the lease on %s failed: %s", self.lease.agent, exc)
                continue
            if expires is None:
                self._lost = f"another worker took the lease on {self.lease.agent!r} over (token {self.lease.token})"
                log.warning("%s", self._lost)
                return
            self._last_ok = started

    def __enter__(self) -> LeaseKeeper:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=10)
