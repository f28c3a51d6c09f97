"""What makes a request: timers for cron and interval schedules, and polled triggers on new material.

**Timers.** Each scheduler process runs one APScheduler 3 ``BackgroundScheduler`` with its default
*in-memory* job store: a job per enabled cron or interval schedule, rebuilt from the ``schedules``
table whenever it changes (:meth:`Timers.sync`). APScheduler only says *when*: its executor here
(:class:`_FireExecutor`) hands the due slot times to the service, which fires the schedule in SQL
(:meth:`~.schedules.ScheduleStore.fire`, a compare-and-set on ``last_fired_at``). Nothing is pickled
into an APScheduler job store, so there is no second source of truth, no job module to keep importable
and no shared job table two schedulers could fight over. Slots missed while no scheduler ran are
caught up once: a job whose first slot after ``last_fired_at`` (or after the schedule's creation) is
already past starts due now; APScheduler (``coalesce`` off, no misfire grace) hands the executor every
missed slot in one call, and the executor coalesces them: one request, for the newest slot, whose
reason says how many it covers. A firing that fails (the database is away) is caught up the same way
once a poll succeeds again: the job is re-added from ``last_fired_at``.

**Polled triggers.** ``new_episodes`` and ``documents`` schedules are checked every poll
(:func:`check_trigger`): the unconsolidated episodes (not still running) or documents of the agent
newer than the last firing. The fire time is the newest one counted, a time from the database, so
every scheduler computes the same value and one firing wins.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

from apscheduler.executors.base import BaseExecutor
from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.base import BaseTrigger
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.interval import IntervalTrigger
from sqlalchemy import func, or_, select

from agent_sleep.scheduling.schedules import TIMED, ScheduleRecord, describe
from agent_sleep.store.models import Document, Episode, utcnow
from agent_sleep.store.records import as_utc
from agent_sleep.store.store import ExperienceStore

__all__ = ["Due", "Timers", "check_trigger", "timer_trigger"]

log = logging.getLogger("agent_sleep.scheduling")
UTC = timezone.utc


def timer_trigger(schedule: ScheduleRecord) -> BaseTrigger:
    """The APScheduler trigger of a cron or interval schedule (intervals count from the schedule's creation)."""
    if schedule.kind == "cron":
        return CronTrigger.from_crontab(schedule.spec["cron"], timezone=UTC)
    if schedule.kind == "interval":
        return IntervalTrigger(seconds=float(schedule.spec["seconds"]), start_date=as_utc(schedule.created_at),
                               timezone=UTC)  # fmt: skip
    raise ValueError(f"schedule {schedule.id} ({schedule.kind}) has no timer")


@dataclass(frozen=True)
class Due:
    """A schedule that should fire at ``fired_at`` (a slot, or the newest item counted).

    ``recount``: for a timer, the reason and detail given the slot that fired last (see
    :meth:`~.schedules.ScheduleStore.fire`); ``reason`` and ``detail`` are what this process saw.
    """

    schedule: ScheduleRecord
    fired_at: datetime
    reason: str
    detail: dict[str, Any]
    recount: Callable[[datetime], tuple[str, dict[str, Any]]] | None = None


class _FireExecutor(BaseExecutor):
    """Instead of calling a job, hand its due slot times to the service (see the module docstring)."""

    def __init__(self, due: Callable[[str, list[datetime]], None]) -> None:
        super().__init__()
        self._due = due

    def submit_job(self, job: Any, run_times: list[datetime]) -> None:
        self._due(job.id, list(run_times))  # one short transaction; it logs its own errors

    def _do_submit_job(self, job: Any, run_times: list[datetime]) -> None:  # pragma: no cover - submit_job is ours
        self._due(job.id, list(run_times))


def _noop() -> None:  # the jobs' callable: the executor above never calls it
    return None


class Timers:
    """One APScheduler job per enabled cron/interval schedule; ``on_due(Due)`` when one is due."""

    def __init__(self, on_due: Callable[[Due], None]) -> None:
        self._on_due = on_due
        self._lock = threading.Lock()
        self._jobs: dict[str, ScheduleRecord] = {}
        self._failed: set[str] = set()  # schedules whose firing failed: the next sync re-adds them to catch up
        self._scheduler = BackgroundScheduler(
            timezone=UTC, executors={"default": _FireExecutor(self._fired)},
            job_defaults={"coalesce": False, "max_instances": 1, "misfire_grace_time": None},
        )  # fmt: skip

    def start(self) -> None:
        self._scheduler.start()

    def stop(self) -> None:
        if self._scheduler.running:
            self._scheduler.shutdown(wait=False)

    def sync(self, schedules: list[ScheduleRecord]) -> list[str]:
        """Make the jobs match the enabled timed schedules; one line per job added, changed or removed."""
        wanted = {s.id: s for s in schedules if s.enabled and s.kind in TIMED}
        lines = []
        with self._lock:
            for sid in sorted(set(self._jobs) - set(wanted)):
                gone = self._jobs.pop(sid)
                if self._scheduler.get_job(sid) is not None:
                    self._scheduler.remove_job(sid)
                lines.append(f"timer removed: schedule {sid} for {gone.agent} ({describe(gone.kind, gone.spec)})")
            for sid, sched in wanted.items():
                old = self._jobs.get(sid)
                if old is not None and (old.kind, old.spec) == (sched.kind, sched.spec) and sid not in self._failed:
                    self._jobs[sid] = sched
                    continue
                self._failed.discard(sid)
                trigger = timer_trigger(sched)
                kwargs: dict[str, Any] = {}
                catch_up = _first_missed(trigger, sched)
                if catch_up is not None:
                    kwargs["next_run_time"] = catch_up
                self._scheduler.add_job(_noop, trigger, id=sid, replace_existing=True, **kwargs)
                self._jobs[sid] = sched
                what = "added" if old is None else ("changed" if (old.kind, old.spec) != (sched.kind, sched.spec)
                                                    else "re-added after a failed firing")
                lines.append(f"timer {what}: schedule {sid} for {sched.agent}, {describe(sched.kind, sched.spec)}"
                             + (f"; a slot at {catch_up:%Y-%m-%d %H:%M:%S} was missed: due now" if catch_up else ""))
        return lines

    @property
    def retry_pending(self) -> bool:
        """A firing failed (the database was away): the next :meth:`sync` re-adds its job to catch the slot up."""
        return bool(self._failed)

    def next_fire(self, schedule_id: str) -> datetime | None:
        job = self._scheduler.get_job(schedule_id)
        return None if job is None else job.next_run_time

    def _fired(self, job_id: str, run_times: list[datetime]) -> None:
        with self._lock:
            sched = self._jobs.get(job_id)
        if sched is None:
            return
        slot = as_utc(run_times[-1])
        assert slot is not None
        trigger = timer_trigger(sched)

        def recount(previous: datetime) -> tuple[str, dict[str, Any]]:
            slots = slots_between(trigger, previous, slot)
            return _timer_reason(sched, slot, slots), {"slots": slots}

        try:
            self._on_due(Due(sched, slot, _timer_reason(sched, slot, len(run_times)), {"slots": len(run_times)},
                             recount))
        except Exception as exc:  # noqa: BLE001 - the scheduler thread must survive a database outage
            with self._lock:
                self._failed.add(job_id)
            log.warning("schedule %s: firing its %s slot failed (caught up at the next poll): %s", sched.id,
                        slot.isoformat(), exc)  # fmt: skip


def _timer_reason(schedule: ScheduleRecord, slot: datetime, slots: int) -> str:
    return f"{describe(schedule.kind, schedule.spec)}: slot {slot:%Y-%m-%d %H:%M:%S} UTC" + (
        f" ({slots - 1} earlier missed slot(s) coalesced into it)" if slots > 1 else "")


def slots_between(trigger: BaseTrigger, after: datetime, upto: datetime, *, cap: int = 100_000) -> int:
    """How many of the trigger's slots fall in ``(after, upto]`` (at most ``cap``: a counter, not a clock)."""
    if isinstance(trigger, IntervalTrigger):  # arithmetic: an every-second timer down for a month is 2.6M slots
        step, start = trigger.interval, trigger.start_date

        def index(t: datetime) -> int:  # slots in [start, t]
            return 0 if t < start else (t - start) // step + 1

        return min(cap, max(0, index(upto) - index(after)))
    count, t = 0, after
    while count < cap:
        nxt = trigger.get_next_fire_time(t, t + timedelta(microseconds=1))
        if nxt is None or nxt > upto:
            break
        count, t = count + 1, nxt
    return count


def _first_missed(trigger: BaseTrigger, schedule: ScheduleRecord) -> datetime | None:
    """The first slot after the last firing (or the schedule's creation), if it is already past."""
    base = as_utc(schedule.last_fired_at or schedule.created_at)
    assert base is not None
    first = trigger.get_next_fire_time(None, base + timedelta(microseconds=1))
    now = utcnow()
    return first if first is not None and first <= now else None


def check_trigger(store: ExperienceStore, schedule: ScheduleRecord) -> tuple[Due | None, str]:
    """Whether a ``new_episodes`` or ``documents`` schedule is due now, and a line saying why (or why not)."""
    since = as_utc(schedule.last_fired_at)
    if schedule.kind == "new_episodes":
        need = int(schedule.spec["min_episodes"])
        stmt = select(func.count(), func.max(Episode.started_at)).where(
            Episode.agent == schedule.agent, Episode.consolidated_at.is_(None), Episode.status != "running")
        if since is not None:
            stmt = stmt.where(Episode.started_at > since)
        what = "new unconsolidated episode(s)"
    elif schedule.kind == "documents":
        need = 1
        stmt = select(func.count(), func.max(Document.created_at)).where(
            or_(Document.agent == schedule.agent, Document.agent.is_(None)), Document.consolidated_at.is_(None))
        if since is not None:
            stmt = stmt.where(Document.created_at > since)
        what = "new or changed unconsolidated document(s)"
    else:
        raise ValueError(f"schedule {schedule.id} ({schedule.kind}) is not a polled trigger")
    with store.session() as s:
        count, newest = s.execute(stmt).one()
    head = f"trigger {schedule.id} for {schedule.agent} ({describe(schedule.kind, schedule.spec)})"
    if count < need or newest is None:
        return None, f"{head}: {count} {what}, need {need}: not due"
    fired = as_utc(newest)
    assert fired is not None
    reason = f"{describe(schedule.kind, schedule.spec)}: {count} {what}"
    return Due(schedule, fired, reason, {"count": int(count)}), f"{head}: {count} {what} >= {need}: due"
