"""One agent served by a worker (with the fast stand-in cycle): requests marked with the run, a lease held
elsewhere, a run an expired holder left is resumed (not doubled), a run started by hand is waited for, a
stop leaves the run resumable, and the service's one-poll mode end to end."""

from __future__ import annotations

import functools
import threading
import time
from pathlib import Path
from typing import Any

from agent_sleep.consolidation import owners
from agent_sleep.consolidation.runs import RunStore
from agent_sleep.scheduling.config import SchedulerConfig
from agent_sleep.scheduling.leases import Acquired, LeaseStore
from agent_sleep.scheduling.requests import RequestStore
from agent_sleep.scheduling.schedules import ScheduleStore
from agent_sleep.scheduling.service import SchedulerService
from agent_sleep.scheduling.worker import Worker
from tests.scheduling.conftest import AGENT
from tests.scheduling.fake_cycle import fake_cycle


def test_a_served_agent_runs_once_for_all_its_requests(store: Any) -> None:
    reqs = RequestStore(store)
    ids = [reqs.enqueue(AGENT, reason=str(i)).id for i in range(3)]
    served = Worker(store, lease_seconds=5, cycle=fake_cycle).serve(AGENT)
    assert served.action == "ran" and served.outcome == "no_signal" and served.requests == tuple(ids)
    assert "ran run" in served.line and "manual x3" in served.line and "default config" in served.line
    assert {r.run_id for r in reqs.list()} == {served.run_id} and {r.status for r in reqs.list()} == {"done",
                                                                                                       "coalesced"}
    lease = LeaseStore(store).get(AGENT)
    assert lease.owner is None and lease.run_id is None  # released, and the run is over
    again = Worker(store, lease_seconds=5, cycle=fake_cycle).serve(AGENT)
    assert again.action == "idle" and len(RunStore(store).runs()) == 1


def test_a_lease_held_elsewhere_leaves_everything_as_it_is(store: Any) -> None:
    req = RequestStore(store).enqueue(AGENT)
    other = LeaseStore(store, seconds=30).acquire(AGENT, "elsewhere:1:x")
    assert isinstance(other, Acquired)
    served = Worker(store, lease_seconds=5, cycle=fake_cycle).serve(AGENT)
    assert served.action == "held" and "lease held by elsewhere:1:x" in served.line
    assert RequestStore(store).get(req.id).status == "pending" and RunStore(store).runs() == []


def test_a_run_whose_holder_lost_the_lease_is_resumed_not_doubled(store: Any, tmp_path: Path) -> None:
    """Another host's worker started a run, then its lease expired (it stopped renewing). Its run still has a
    fresh heartbeat, so on heartbeats alone it looks alive: the lease is what says it is gone."""
    reqs = RequestStore(store)
    req = reqs.enqueue(AGENT)
    leases = LeaseStore(store, seconds=0.5)
    gone = leases.acquire(AGENT, "otherhost:4242:dead")
    assert isinstance(gone, Acquired)
    reqs.take(AGENT, worker=gone.owner)
    runs = RunStore(store)
    left = runs.claim(AGENT, owner="otherhost:4242:run", config={}, folder=lambda rid: str(tmp_path / rid),
                      alive=lambda r: False).run  # fmt: skip
    leases.set_run(gone, left.id)
    runs.begin_stage(left.id, "select", owner="otherhost:4242:run")
    time.sleep(0.7)
    served = Worker(store, lease_seconds=5, cycle=fake_cycle).serve(AGENT)
    assert served.action == "resumed" and served.run_id == left.id, served.line
    assert "whose lease expired" in served.line and "otherhost:4242:dead" in served.line
    assert [(r.id, r.outcome) for r in runs.runs()] == [(left.id, "no_signal")]  # no skipped_overlap, no 2nd run
    assert reqs.get(req.id).run_id == left.id and reqs.get(req.id).status == "done"


def test_a_run_started_by_hand_is_waited_for(store: Any, tmp_path: Path) -> None:
    req = RequestStore(store).enqueue(AGENT)
    owner = owners.new_owner()  # alive: this process, an active token, a fresh heartbeat
    try:
        manual = RunStore(store).claim(AGENT, owner=owner, config={}, folder=lambda rid: str(tmp_path / rid),
                                       alive=lambda r: True).run  # fmt: skip
        served = Worker(store, lease_seconds=5, cycle=fake_cycle).serve(AGENT)
        assert served.action == "busy" and manual.id in served.line
        assert RequestStore(store).get(req.id).status == "pending" and len(RunStore(store).runs()) == 1
    finally:
        owners.release(owner)


def test_a_stop_leaves_the_run_resumable_and_the_next_worker_finishes_it(store: Any) -> None:
    reqs = RequestStore(store)
    req = reqs.enqueue(AGENT)
    stopping = threading.Event()
    slow = functools.partial(fake_cycle, stage_seconds=(0.3, 0.3))
    worker = Worker(store, lease_seconds=5, cycle=slow, stopping=stopping)
    threading.Timer(0.15, stopping.set).start()  # SIGTERM's effect, during the first stage
    served = worker.serve(AGENT)
    assert served.action == "left" and "the scheduler is shutting down" in served.line
    run = RunStore(store).get(served.run_id)
    assert run.status == "running" and RunStore(store).stages(run.id)["select"].status == "done"
    lease = LeaseStore(store).get(AGENT)
    assert lease.owner is None and lease.run_id == run.id  # released, naming the run to resume
    assert reqs.get(req.id).status == "pending"
    resumed = Worker(store, lease_seconds=5, cycle=fake_cycle).serve(AGENT)
    assert resumed.action == "resumed" and resumed.run_id == run.id and reqs.get(req.id).status == "done"
    assert RunStore(store).stages(run.id)["select"].attempt == 1  # the done stage was not run again


def test_a_broken_cycle_config_fails_the_requests_with_the_reason(store: Any, tmp_path: Path) -> None:
    bad = tmp_path / "cycle.yaml"
    bad.write_text("budget_seconds: -1\nnope: 1\n")
    req = RequestStore(store).enqueue(AGENT, detail={"config": str(bad)})
    served = Worker(store, lease_seconds=5, cycle=fake_cycle).serve(AGENT)
    assert served.action == "error" and "budget_seconds" in served.line and "nope" in served.line
    got = RequestStore(store).get(req.id)
    assert got.status == "failed" and "budget_seconds" in got.detail["error"] and RunStore(store).runs() == []


def test_one_poll_of_the_service_fires_triggers_and_serves_them(store: Any) -> None:
    ScheduleStore(store).add(AGENT, "new_episodes", {"min_episodes": 2})
    for _ in range(2):
        eid = store.start_episode(AGENT)
        store.end_episode(eid)
    lines: list[str] = []
    config = SchedulerConfig(poll_seconds=0.1, lease_seconds=5, workers=2)
    code = SchedulerService(store, config, cycle=fake_cycle, say=lines.append).run(once=True)
    assert code == 0
    text = "\n".join(lines)
    assert "2 new unconsolidated episode(s) >= 2: due" in text and "request" in text and "enqueued" in text
    assert f"{AGENT}: ran run" in text and "trigger:new_episodes" in text and text.endswith("stopped")
    (req,) = RequestStore(store).list()
    assert req.status == "done" and req.run_id == RunStore(store).runs()[0].id
