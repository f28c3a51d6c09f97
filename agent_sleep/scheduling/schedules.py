"""Schedules: when an agent sleeps, one ``schedules`` row each; the table is the source of truth.

Four kinds, with their ``spec``:

* ``cron`` ``{"cron": "0 3 * * *"}``: five-field crontab, in UTC;
* ``interval`` ``{"seconds": 3600}``: every N seconds, counted from the schedule's creation (so every
  scheduler process computes the same fire times);
* ``new_episodes`` ``{"min_episodes": 50}``: once N episodes newer than the last firing are waiting
  to be consolidated;
* ``documents`` ``{}``: once a new or changed document (a new version) is waiting.

Firing is :meth:`ScheduleStore.fire`: a compare-and-set on ``last_fired_at`` and the request it
causes, in one transaction. Every scheduler that sees a schedule due calls it with the same fire time
(the cron or interval slot, or the newest episode or document counted); one wins and writes the
request, the others learn that it was already enqueued. So two schedulers on one database never
double a request, and a slot missed while no scheduler ran is caught up once (see :mod:`.triggers`).
Not here: timers and trigger polling (:mod:`.triggers`), running anything (:mod:`.worker`).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal, get_args

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError

from agent_sleep.errors import ConfigError, NotFoundError
from agent_sleep.names import check_agent_name, did_you_mean
from agent_sleep.scheduling.requests import RequestRecord, add_request
from agent_sleep.store.models import Schedule, new_id, utcnow
from agent_sleep.store.records import Record, as_utc
from agent_sleep.store.store import ExperienceStore

__all__ = ["KINDS", "TIMED", "Kind", "ScheduleRecord", "ScheduleStore", "check_spec", "describe", "schedule_id"]

Kind = Literal["cron", "interval", "new_episodes", "documents"]
KINDS: tuple[str, ...] = get_args(Kind)
TIMED = ("cron", "interval")
_CAS_ATTEMPTS = 8


class ScheduleRecord(Record):
    id: str
    agent: str
    kind: str
    spec: dict[str, Any]
    config_path: str | None
    enabled: bool
    created_at: datetime
    last_fired_at: datetime | None


def check_spec(kind: str, spec: dict[str, Any]) -> list[str]:
    """Every problem with a schedule's kind and spec (empty: valid)."""
    if kind not in KINDS:
        return [f"unknown schedule kind {kind!r}{did_you_mean(kind, KINDS)} (one of {', '.join(KINDS)})"]
    want = {"cron": {"cron"}, "interval": {"seconds"}, "new_episodes": {"min_episodes"}, "documents": set()}[kind]
    problems = [f"{kind}: unknown key {k!r}" for k in spec if k not in want]
    problems += [f"{kind}: missing {k!r}" for k in sorted(want - set(spec))]
    if problems:
        return problems
    if kind == "cron":
        from apscheduler.triggers.cron import CronTrigger

        expr = spec["cron"]
        try:
            if not isinstance(expr, str):
                raise ValueError("not a string")
            CronTrigger.from_crontab(expr, timezone=timezone.utc)
        except ValueError as exc:
            problems.append(f"cron {expr!r} is not a five-field crontab (minute hour day month weekday): {exc}")
    elif kind == "interval":
        seconds = spec["seconds"]
        if isinstance(seconds, bool) or not isinstance(seconds, int | float) or not seconds >= 1:
            problems.append(f"interval: seconds must be a number >= 1, got {seconds!r}")
    elif kind == "new_episodes":
        n = spec["min_episodes"]
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            problems.append(f"new_episodes: min_episodes must be a whole number >= 1, got {n!r}")
    return problems


def describe(kind: str, spec: dict[str, Any]) -> str:
    """The schedule in words, for lists and decision lines."""
    if kind == "cron":
        return f"cron '{spec['cron']}' (UTC)"
    if kind == "interval":
        return f"every {spec['seconds']:g} s"
    if kind == "new_episodes":
        return f"after {spec['min_episodes']} new episodes"
    return "on new or changed documents"


def schedule_id(agent: str, kind: str, spec: dict[str, Any], config_path: str | None) -> str:
    """A stable id for a schedule declared in a scheduler config file: the same entry is one row, however
    many schedulers load the file."""
    key = json.dumps([agent, kind, spec, config_path], sort_keys=True)
    return "cfg" + hashlib.sha256(key.encode()).hexdigest()[:29]


class ScheduleStore:
    """The ``schedules`` table over a store's database (see the module docstring)."""

    def __init__(self, store: ExperienceStore) -> None:
        self.store = store

    def add(self, agent: str, kind: str, spec: dict[str, Any], *, config_path: str | Path | None = None,
            declared: bool = False) -> tuple[ScheduleRecord, bool]:  # fmt: skip
        """Add a schedule; ``(record, created)``. ``declared``: from a config file, with a stable id, so adding
        it again (another scheduler loading the same file) finds the existing row instead of a second one."""
        check_agent_name(agent)
        problems = check_spec(kind, spec)
        if problems:
            raise ConfigError("invalid schedule: " + "; ".join(problems))
        path = str(Path(config_path).expanduser().resolve()) if config_path is not None else None
        sid = schedule_id(agent, kind, spec, path) if declared else None
        self.store.ensure_agent(agent)
        values = {"agent": agent, "kind": kind, "spec": dict(spec), "config_path": path, "enabled": True,
                  "created_at": utcnow(), "last_fired_at": None}  # fmt: skip
        try:
            with self.store.session() as s:
                if sid is not None and (row := s.get(Schedule, sid)) is not None:
                    return ScheduleRecord.model_validate(row), False
                row = Schedule(id=sid or new_id(), **values)
                s.add(row)
                s.flush()
                return ScheduleRecord.model_validate(row), True
        except IntegrityError:  # another scheduler declared the same entry a moment ago
            assert sid is not None
            return self.get(sid), False

    def get(self, schedule_id: str) -> ScheduleRecord:
        """The schedule with this id, or with this unique prefix (at least 4 characters)."""
        with self.store.session() as s:
            row = s.get(Schedule, schedule_id)
            if row is None and len(schedule_id) >= 4:
                found = s.execute(select(Schedule).where(Schedule.id.startswith(schedule_id, autoescape=True))
                                  .limit(2)).scalars().all()  # fmt: skip
                if len(found) > 1:
                    raise NotFoundError(f"schedule id prefix {schedule_id!r} names more than one schedule")
                row = found[0] if found else None
            if row is None:
                known = s.execute(select(Schedule.id)).scalars().all()
                raise NotFoundError(f"no schedule {schedule_id!r}{did_you_mean(schedule_id, known)}")
            return ScheduleRecord.model_validate(row)

    def list(self, *, agent: str | None = None, enabled_only: bool = False) -> list[ScheduleRecord]:
        stmt = select(Schedule).order_by(Schedule.agent, Schedule.created_at, Schedule.id)
        if agent is not None:
            stmt = stmt.where(Schedule.agent == agent)
        if enabled_only:
            stmt = stmt.where(Schedule.enabled.is_(True))
        with self.store.session() as s:
            return [ScheduleRecord.model_validate(r) for r in s.execute(stmt).scalars()]

    def remove(self, schedule_id: str) -> ScheduleRecord:
        """Delete the schedule (requests it already made stay)."""
        rec = self.get(schedule_id)
        with self.store.session() as s:
            row = s.get(Schedule, rec.id)
            if row is not None:
                s.delete(row)
        return rec

    def fire(self, schedule: ScheduleRecord, fired_at: datetime, *, reason: str,
             detail: dict[str, Any] | None = None,
             recount: Callable[[datetime], tuple[str, dict[str, Any]]] | None = None) -> RequestRecord | None:
        """Move ``last_fired_at`` to ``fired_at`` and write the request, if no one did it for this time yet.

        ``recount(previous)``: the reason and detail of this firing given the firing it follows (a timer's
        slot count depends on which slot fired last, and only this transaction knows that for sure: another
        scheduler may have fired a slot in between). The move is a compare-and-set on the value read here.
        """
        with self.store.session() as s:
            for attempt in range(_CAS_ATTEMPTS):
                row = s.execute(select(Schedule.last_fired_at)
                                .where(Schedule.id == schedule.id, Schedule.enabled.is_(True))).first()
                if row is None:
                    return None
                stored, previous = row[0], as_utc(row[0])
                if previous is not None and previous >= fired_at:
                    return None
                if attempt == _CAS_ATTEMPTS - 1:  # a value that never compares equal to itself: the plain move
                    same, previous = (Schedule.last_fired_at.is_(None) | (Schedule.last_fired_at < fired_at)), None
                else:
                    same = Schedule.last_fired_at.is_(None) if stored is None else Schedule.last_fired_at == stored
                won = s.execute(update(Schedule).where(Schedule.id == schedule.id, Schedule.enabled.is_(True), same)
                                .values(last_fired_at=fired_at)
                                .execution_options(synchronize_session=False)).rowcount  # fmt: skip
                if won:
                    break  # else another firing moved it since the read: look again
            else:
                return None
            if recount is not None and previous is not None:
                reason, detail = recount(previous)
            source = f"schedule:{schedule.id}" if schedule.kind in TIMED else f"trigger:{schedule.kind}"
            return add_request(s, schedule.agent, source=source, reason=reason,
                               detail={"schedule": schedule.id, "fired_at": fired_at.isoformat(), **(detail or {})})

