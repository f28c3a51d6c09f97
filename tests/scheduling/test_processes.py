"""Real processes on one database: two timer schedulers and three worker processes under ~200 triggers
(exactly one run per served batch, no overlapping runs per agent, no lost trigger), and SIGTERM."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from collections import defaultdict
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from agent_sleep.config import Settings
from agent_sleep.consolidation.runs import RunStore
from agent_sleep.scheduling.leases import LeaseStore
from agent_sleep.scheduling.requests import RequestStore
from agent_sleep.scheduling.schedules import ScheduleStore
from agent_sleep.scheduling.triggers import check_trigger
from agent_sleep.scheduling.worker import Worker
from agent_sleep.store import ExperienceStore
from agent_sleep.store.records import as_utc
from tests.conftest import PG_URL, _drop_pg_database, _fresh_pg_database
from tests.scheduling.conftest import AGENT
from tests.scheduling.fake_cycle import fake_cycle

ROOT = Path(__file__).resolve().parents[2]


def _spawn(url: str, data: Path, *args: str) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    argv = [sys.executable, "-m", "tests.scheduling.child_service", url, str(data), *args]
    return subprocess.Popen(argv, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _stop(procs: list[subprocess.Popen[str]]) -> list[tuple[int, str]]:
    for p in procs:
        p.send_signal(signal.SIGTERM)
    out = []
    for p in procs:
        text, _ = p.communicate(timeout=30)
        out.append((p.returncode, text))
    return out


def _wait(cond: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


@pytest.mark.postgres
@pytest.mark.skipif(not PG_URL, reason="set AGENT_SLEEP_TEST_PG_URL to test PostgreSQL")
def test_two_schedulers_and_three_workers_under_200_triggers(tmp_path: Path) -> None:
    url, name = _fresh_pg_database()
    store = ExperienceStore(settings=Settings(data_dir=tmp_path / "data", database_url=url))
    procs: list[subprocess.Popen[str]] = []
    try:
        agents = [f"agent{i}" for i in range(4)]
        schedules = ScheduleStore(store)
        timed = [schedules.add(a, "interval", {"seconds": 1})[0] for a in agents[:2]]
        episodes = schedules.add(agents[2], "new_episodes", {"min_episodes": 3})[0]
        docs = schedules.add(agents[3], "documents", {})[0]
        common = ["--poll", "0.05", "--lease", "5", "--stage-seconds", "0.005,0.03"]
        procs += [_spawn(url, tmp_path / "data", "--role", "timers", *common) for _ in range(2)]
        procs += [_spawn(url, tmp_path / "data", "--role", "worker", "--workers", "2", *common) for _ in range(3)]
        reqs = RequestStore(store)
        manual: list[str] = []
        rng = random.Random(7)
        for i in range(180):  # ~10 s of manual requests, episodes and documents, spread over the agents
            manual.append(reqs.enqueue(rng.choice(agents), reason=f"soak {i}").id)
            if i % 5 == 0:
                eid = store.start_episode(agents[2])
                store.end_episode(eid)
            if i % 15 == 0:
                store.add_document(f"kb/{i}.md", f"document {i}", agent=agents[3])
            time.sleep(rng.uniform(0.02, 0.09))
        timer_exits = _stop(procs[:2])
        _wait(lambda: not reqs.agents_waiting(), 30, "every request to be served")
        worker_exits = _stop(procs[2:])
        procs.clear()
        logs = "\n".join(text for _, text in timer_exits + worker_exits)
        assert [code for code, _ in timer_exits + worker_exits] == [0] * 5, logs[-5000:]

        every = reqs.list()
        runs = {r.id: r for r in RunStore(store).runs()}
        triggers = len(every)
        assert triggers >= 200, (triggers, logs[-3000:])  # 180 manual + timer slots + episode/document triggers
        # No lost trigger: every request was served by a finished run, and nothing is left due.
        assert set(manual) <= {r.id for r in every}
        assert {r.status for r in every} <= {"done", "coalesced"} and all(r.run_id in runs for r in every)
        assert all(check_trigger(store, s)[0] is None for s in (schedules.get(episodes.id), schedules.get(docs.id)))
        for sched in timed:  # every 1 s slot after the first firing fired once (late ones coalesced, and counted)
            fired = sorted((r for r in every if r.source == f"schedule:{sched.id}"), key=lambda r: r.detail["fired_at"])
            slots = [r.detail["fired_at"] for r in fired]
            assert len(slots) == len(set(slots)) >= 5
            span = (as_utc(slots[-1]) - as_utc(slots[0])) // timedelta(seconds=1)  # type: ignore[operator]
            assert sum(r.detail["slots"] for r in fired[1:]) == span
        # Exactly one run per served batch: every run served requests, none was skipped or left running.
        served_by: dict[str, int] = defaultdict(int)
        for r in every:
            served_by[r.run_id] += 1  # type: ignore[index]
        assert set(served_by) == set(runs) and {r.outcome for r in runs.values()} == {"no_signal"}
        assert len(runs) < triggers  # requests that waited were coalesced
        # Zero overlapping runs per agent, from the recorded start and end times.
        for agent in agents:
            mine = sorted((r for r in runs.values() if r.agent == agent), key=lambda r: r.started_at)
            assert mine, agent
            for before, after in zip(mine, mine[1:], strict=False):
                assert before.ended_at <= after.started_at, (agent, before.id, after.id)
        pids = {r.owner.split(":")[1] for r in runs.values()}
        assert len(pids) >= 2  # the work really was shared between worker processes
        assert all(lease.owner is None for lease in LeaseStore(store).all())  # all released on SIGTERM
    finally:
        for p in procs:
            p.kill()
            p.wait()
        store.close()
        _drop_pg_database(name)


def test_sigterm_stops_at_a_stage_boundary_releases_the_lease_and_exits_0(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'experience.sqlite'}"
    store = ExperienceStore(settings=Settings(data_dir=tmp_path / "data", database_url=url))
    try:
        req = RequestStore(store).enqueue(AGENT)
        proc = _spawn(url, tmp_path / "data", "--stage-seconds", "1.5,1.5", "--lease", "30")
        runs = RunStore(store)
        _wait(lambda: any(r.stage == "select" for r in runs.runs()), 30, "the run to start")
        started = time.monotonic()
        ((code, text),) = _stop([proc])
        assert code == 0 and time.monotonic() - started < 10, text
        assert "stopping" in text and "the scheduler is shutting down" in text and text.rstrip().endswith("stopped")
        (run,) = runs.runs()
        stages = runs.stages(run.id)
        assert run.status == "running" and stages["select"].status == "done" and "generate" not in stages
        lease = LeaseStore(store).get(AGENT)
        assert lease.owner is None and lease.run_id == run.id
        assert RequestStore(store).get(req.id).status == "pending"
        resumed = Worker(store, lease_seconds=5, cycle=fake_cycle).serve(AGENT)
        assert resumed.action == "resumed" and resumed.run_id == run.id
        assert RequestStore(store).get(req.id).run_id == run.id
    finally:
        store.close()
