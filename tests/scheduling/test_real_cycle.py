"""The scheduler with the real run_cycle on the tiny model: the database going away mid-run leaves the run
resumable through the lease; a worker killed with kill -9 while holding the lease is resumed by another
after expiry, with one adapter and one deployment."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine
from sqlalchemy.orm import sessionmaker

from agent_sleep.consolidation import faults
from agent_sleep.consolidation.cycle import run_cycle
from agent_sleep.consolidation.runs import RunStore
from agent_sleep.scheduling.leases import LeaseStore
from agent_sleep.scheduling.requests import RequestStore
from agent_sleep.scheduling.worker import Worker
from tests.consolidation.conftest import World, fast_config
from tests.consolidation.planner import simple_planner
from tests.conftest import PG_URL
from tests.scheduling.conftest import AGENT

ROOT = Path(__file__).resolve().parents[2]


def _worker(world: World, lease_seconds: float = 5) -> Worker:
    def cycle(agent: str, *, config: Any, store: Any, **kwargs: Any) -> Any:
        return run_cycle(agent, config=fast_config(), runtime=world.runtime, planner=simple_planner, **kwargs)

    return Worker(world.store, lease_seconds=lease_seconds, cycle=cycle)


def test_the_database_going_away_mid_run_leaves_it_to_the_next_lease_holder(world: World, tmp_path: Path,
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    good = world.store._sessions
    dead_url = ("postgresql+psycopg://postgres@127.0.0.1:1/gone" if world.store.dialect == "postgresql"
                else f"sqlite:///{tmp_path / 'missing-dir' / 'x' / 'db.sqlite'}")  # fmt: skip
    (tmp_path / "missing-dir").write_text("a file where a folder should be")
    dead = sessionmaker(create_engine(dead_url), expire_on_commit=False)

    def outage(point: str) -> None:
        if point == "generate:after_write":
            world.store._sessions = dead

    monkeypatch.setattr(faults, "fault_point", outage)
    world.teach("capitals", 6)
    req = RequestStore(world.store).enqueue(AGENT)
    broken = _worker(world).serve(AGENT)
    world.store._sessions = good  # the database is back
    assert broken.action == "left" and "unreachable during generate" in broken.line, broken.line
    run = RunStore(world.store).get(broken.run_id)
    assert (run.status, run.stage) == ("running", "generate")
    lease = LeaseStore(world.store).get(AGENT)
    assert lease.run_id == run.id  # named on the lease; the release failed, so it simply expires
    assert RequestStore(world.store).get(req.id).status in ("pending", "running")

    monkeypatch.setattr(faults, "fault_point", lambda point: None)
    deadline = time.monotonic() + 30
    while (served := _worker(world).serve(AGENT)).action == "held" and time.monotonic() < deadline:
        time.sleep(0.2)
    assert served.action == "resumed" and served.run_id == run.id and served.outcome == "promoted", served.line
    assert [a.name for a in world.registry.adapters()] == ["capitals@v1"]
    assert RequestStore(world.store).get(req.id).run_id == run.id and len(RunStore(world.store).runs()) == 1


def test_a_worker_killed_holding_the_lease_is_resumed_by_another_after_expiry(world: World, tiny_model: Path,
                                                                              tmp_path: Path) -> None:  # fmt: skip
    if world.store.dialect == "sqlite" and PG_URL:
        pytest.skip("one backend is enough for this 15 s test: PostgreSQL, the multi-host case, when configured")
    world.teach("capitals", 6)
    req = RequestStore(world.store).enqueue(AGENT)
    env = {**os.environ, faults.ENV: "generate:after_register", "PYTHONPATH": str(ROOT)}
    argv = [sys.executable, "-m", "tests.scheduling.child_service", world.store.url, str(world.settings.data_dir),
            "--cycle", "real", "--model", str(tiny_model), "--lease", "4", "--poll", "0.1"]  # fmt: skip
    child = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert child.returncode == -signal.SIGKILL, child.stdout[-3000:] + child.stderr[-3000:]
    (killed,) = RunStore(world.store).runs()
    lease = LeaseStore(world.store).get(AGENT)
    assert killed.status == "running" and lease.run_id == killed.id and lease.owner is not None  # died holding it

    worker = _worker(world)
    held = 0
    deadline = time.monotonic() + 30
    while (served := worker.serve(AGENT)).action == "held" and time.monotonic() < deadline:
        held += 1
        time.sleep(0.2)
    assert served.action == "resumed" and served.run_id == killed.id, served.line
    assert served.outcome == "promoted" and "whose lease expired" in served.line
    assert [a.name for a in world.registry.adapters()] == ["capitals@v1"]  # no duplicate adapter
    assert [d.run_id for d in world.registry.deployments(AGENT)] == [killed.id]  # deployed once, whole
    assert world.registry.live(AGENT).stack.name == RunStore(world.store).get(killed.id).deployed_stack
    assert RequestStore(world.store).get(req.id).run_id == killed.id and len(RunStore(world.store).runs()) == 1
    assert LeaseStore(world.store).get(AGENT).token == 2
