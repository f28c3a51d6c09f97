"""Requests coalesce and are never dropped; schedules fire once per slot however many schedulers see them
(compare-and-set in SQL), missed slots are caught up once, and triggers fire on new material."""

from __future__ import annotations

import time
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import update

from agent_sleep.errors import ConfigError, DatabaseUnavailableError, NotFoundError
from agent_sleep.scheduling.requests import RequestStore
from agent_sleep.scheduling.schedules import ScheduleStore, check_spec
from agent_sleep.scheduling.triggers import Due, Timers, check_trigger, slots_between, timer_trigger
from agent_sleep.store.models import Schedule, utcnow
from tests.scheduling.conftest import AGENT


def test_open_requests_coalesce_into_one_run_and_later_ones_wait(store: Any) -> None:
    reqs = RequestStore(store)
    ids = [reqs.enqueue(AGENT, source="manual", reason=f"r{i}").id for i in range(3)]
    taken = reqs.take(AGENT, worker="h:1:a")
    assert [r.id for r in taken] == ids and {r.status for r in taken} == {"running"}
    late = reqs.enqueue(AGENT, reason="while the run goes")
    reqs.finish(ids, "run-1", "no_signal")
    rows = {r.id: r for r in reqs.list(agent=AGENT)}
    assert [rows[i].status for i in ids] == ["done", "coalesced", "coalesced"]
    assert {rows[i].run_id for i in ids} == {"run-1"} and rows[ids[0]].detail["served_with"] == 3
    assert rows[late.id].status == "pending" and reqs.agents_waiting() == [AGENT]
    # A run left unfinished puts its requests back; a holder that is gone leaves them running: both are taken.
    again = reqs.take(AGENT, worker="h:2:b")
    reqs.put_back([again[0].id])
    assert reqs.get(late.id).status == "pending"
    assert [r.id for r in reqs.take(AGENT, worker="h:3:c")] == [late.id]
    assert [r.id for r in reqs.take(AGENT, worker="h:4:d")] == [late.id]  # "running" under a gone worker
    reqs.finish([late.id], "run-2", "failed", error="boom")
    assert reqs.get(late.id).status == "failed" and reqs.agents_waiting() == []


def test_schedule_specs_are_checked_and_declared_schedules_are_added_once(store: Any) -> None:
    assert check_spec("cron", {"cron": "0 3 * * *"}) == []
    assert "five-field" in check_spec("cron", {"cron": "0 3 * *"})[0]
    assert "did you mean 'interval'" in check_spec("intervall", {})[0]
    assert check_spec("interval", {"seconds": 0}) and check_spec("new_episodes", {"min_episodes": 0})
    assert check_spec("documents", {"x": 1}) == ["documents: unknown key 'x'"]
    schedules = ScheduleStore(store)
    with pytest.raises(ConfigError, match="missing 'seconds'"):
        schedules.add(AGENT, "interval", {})
    a, created = schedules.add(AGENT, "cron", {"cron": "0 3 * * *"}, declared=True)
    b, again = schedules.add(AGENT, "cron", {"cron": "0 3 * * *"}, declared=True)
    assert created and not again and a.id == b.id
    c, _ = schedules.add(AGENT, "cron", {"cron": "0 3 * * *"})  # by hand: a schedule of its own
    assert c.id != a.id and len(schedules.list(agent=AGENT)) == 2
    assert schedules.remove(c.id[:8]).id == c.id and [s.id for s in schedules.list()] == [a.id]
    with pytest.raises(NotFoundError):
        schedules.get(c.id)


def test_a_slot_fires_once_however_many_schedulers_see_it(store: Any) -> None:
    one, two = ScheduleStore(store), ScheduleStore(store)  # two schedulers on one database
    sched, _ = one.add(AGENT, "interval", {"seconds": 60})
    slot = utcnow().replace(microsecond=0)
    first = one.fire(sched, slot, reason="slot")
    assert first is not None and first.source == f"schedule:{sched.id}"
    assert two.fire(sched, slot, reason="slot") is None
    assert two.fire(sched, slot - timedelta(seconds=60), reason="an older slot") is None
    assert two.fire(sched, slot + timedelta(seconds=60), reason="next slot") is not None
    assert len(RequestStore(store).list(agent=AGENT)) == 2


def test_a_late_schedulers_coalesced_slots_count_only_the_slots_nobody_fired(store: Any) -> None:
    """Scheduler B wakes late and sees slots 2 and 3 due; A fired slot 2 meanwhile: B's firing covers 1 slot."""
    one, two = ScheduleStore(store), ScheduleStore(store)
    sched, _ = one.add(AGENT, "interval", {"seconds": 60})
    trigger = timer_trigger(sched)
    slot = [sched.created_at + timedelta(seconds=60 * k) for k in range(4)]

    def recount(at: Any) -> Any:
        return lambda previous: (f"covers {slots_between(trigger, previous, at)}",
                                 {"slots": slots_between(trigger, previous, at)})

    assert one.fire(sched, slot[1], reason="A: slot 1", detail={"slots": 1}, recount=recount(slot[1])) is not None
    assert one.fire(sched, slot[2], reason="A: slot 2", detail={"slots": 1}, recount=recount(slot[2])) is not None
    late = two.fire(sched, slot[3], reason="B: slots 2 and 3", detail={"slots": 2}, recount=recount(slot[3]))
    assert late is not None and late.detail["slots"] == 1 and late.reason == "covers 1"
    assert slots_between(trigger, slot[0], slot[3]) == 3 and slots_between(trigger, slot[3], slot[3]) == 0


def _episodes(store: Any, n: int) -> None:
    for _ in range(n):
        eid = store.start_episode(AGENT)
        store.append_events(eid, [{"kind": "user_message", "content": "hi"}])
        store.end_episode(eid)


def test_triggers_fire_on_new_episodes_and_new_documents(store: Any) -> None:
    schedules = ScheduleStore(store)
    episodes, _ = schedules.add(AGENT, "new_episodes", {"min_episodes": 3})
    docs, _ = schedules.add(AGENT, "documents", {})
    _episodes(store, 2)
    due, line = check_trigger(store, episodes)
    assert due is None and "2 new unconsolidated episode(s), need 3: not due" in line
    _episodes(store, 1)
    due, line = check_trigger(store, episodes)
    assert due is not None and due.detail == {"count": 3}
    assert schedules.fire(due.schedule, due.fired_at, reason=due.reason) is not None
    assert schedules.fire(due.schedule, due.fired_at, reason=due.reason) is None  # a second scheduler
    due, _ = check_trigger(store, schedules.get(episodes.id))
    assert due is None  # counted from the last firing
    _episodes(store, 3)
    assert check_trigger(store, schedules.get(episodes.id))[0] is not None

    assert check_trigger(store, docs)[0] is None
    store.add_document("kb/returns.md", "Returns take 30 days.")
    due, _ = check_trigger(store, docs)
    assert due is not None and schedules.fire(due.schedule, due.fired_at, reason=due.reason) is not None
    assert check_trigger(store, schedules.get(docs.id))[0] is None
    store.add_document("kb/returns.md", "Returns take 60 days.")  # changed: a new version
    assert check_trigger(store, schedules.get(docs.id))[0] is not None
    sources = sorted(r.source for r in RequestStore(store).list(agent=AGENT))
    assert sources == ["trigger:documents", "trigger:new_episodes"]


def test_timers_of_two_schedulers_make_one_request_per_slot(store: Any) -> None:
    schedules = ScheduleStore(store)
    sched, _ = schedules.add(AGENT, "interval", {"seconds": 1})
    fired: list[Any] = []

    def on_due(due: Due) -> None:
        fired.append(schedules.fire(due.schedule, due.fired_at, reason=due.reason, detail=due.detail))

    timers = [Timers(on_due), Timers(on_due)]
    for t in timers:
        t.start()
        t.sync(schedules.list())
    try:
        deadline = time.monotonic() + 10
        while len(fired) < 6 and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        for t in timers:
            t.stop()
    made = [r for r in fired if r is not None]
    slots = [r.detail["fired_at"] for r in RequestStore(store).list(agent=AGENT)]
    assert len(fired) >= 6 and len(made) >= 2 and len(made) < len(fired)
    assert len(slots) == len(set(slots)) == len(made)  # each slot once, though both timers fired it


def test_slots_missed_while_no_scheduler_ran_are_caught_up_once(store: Any) -> None:
    schedules = ScheduleStore(store)
    sched, _ = schedules.add(AGENT, "cron", {"cron": "* * * * *"})
    with store.session() as s:  # the last firing was ten minutes ago
        s.execute(update(Schedule).where(Schedule.id == sched.id)
                  .values(last_fired_at=utcnow() - timedelta(minutes=10, seconds=5)))  # fmt: skip
    fired: list[Due] = []
    timers = Timers(fired.append)
    timers.start()
    try:
        lines = timers.sync(schedules.list())
        deadline = time.monotonic() + 5
        while not fired and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        timers.stop()
    assert "was missed: due now" in lines[0]
    assert len(fired) == 1 and fired[0].detail["slots"] in (10, 11)  # one request for all of them
    assert "earlier missed slot(s) coalesced" in fired[0].reason


def test_a_slot_whose_firing_failed_is_caught_up_once_the_database_is_back(store: Any) -> None:
    schedules = ScheduleStore(store)
    schedules.add(AGENT, "interval", {"seconds": 2})
    calls: list[Due] = []

    def on_due(due: Due) -> None:
        calls.append(due)
        if len(calls) == 1:
            raise DatabaseUnavailableError("the database went away")
        schedules.fire(due.schedule, due.fired_at, reason=due.reason, detail=due.detail)

    timers = Timers(on_due)
    timers.start()
    try:
        timers.sync(schedules.list())
        _until(lambda: calls)
        assert timers.retry_pending
        lines = timers.sync(schedules.list())  # the service's next poll
        assert "re-added after a failed firing" in lines[0]
        _until(lambda: len(calls) >= 2)
    finally:
        timers.stop()
    (req,) = RequestStore(store).list()
    assert req.detail["fired_at"] == calls[1].fired_at.isoformat() and not timers.retry_pending
    # The failed slot is covered: fired again itself, or coalesced into a later one that counts it.
    assert calls[1].fired_at == calls[0].fired_at or calls[1].detail["slots"] >= 2


def _until(cond: Any, timeout: float = 6) -> None:
    deadline = time.monotonic() + timeout
    while not cond() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert cond()
