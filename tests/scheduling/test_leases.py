"""Per-agent leases on SQLite and PostgreSQL: one holder, takeover after expiry by the database's clock,
fencing by token, a skewed worker clock, and a keeper that renews (or gives up before the lease ends)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine
from sqlalchemy.orm import sessionmaker

from agent_sleep.scheduling.leases import Acquired, Held, LeaseKeeper, LeaseStore
from tests.scheduling.conftest import AGENT


def _leases(store: Any, seconds: float) -> LeaseStore:
    store.ensure_agent(AGENT)
    return LeaseStore(store, seconds=seconds)


def test_one_holder_until_expiry_then_a_takeover_with_a_higher_token(store: Any) -> None:
    leases = _leases(store, 0.6)
    first = leases.acquire(AGENT, "h:1:a")
    assert isinstance(first, Acquired) and first.token == 1 and not first.expired
    held = leases.acquire(AGENT, "h:2:b")
    assert isinstance(held, Held) and held.owner == "h:1:a" and held.token == 1
    assert leases.set_run(first, "run-1")
    time.sleep(0.8)
    second = leases.acquire(AGENT, "h:2:b")
    assert isinstance(second, Acquired) and second.token == 2
    assert second.expired and second.previous_owner == "h:1:a" and second.previous_run == "run-1"
    # Fenced: the first holder can no longer renew, name a run or release the lease it lost.
    assert leases.renew(first) is None and not leases.set_run(first, "run-x") and not leases.release(first)
    assert leases.get(AGENT).owner == "h:2:b"
    assert leases.release(second)
    third = leases.acquire(AGENT, "h:3:c")
    assert isinstance(third, Acquired) and third.token == 3 and not third.expired and third.previous_run == "run-1"


def test_concurrent_acquisitions_have_one_winner(store: Any) -> None:
    leases = _leases(store, 30)
    barrier = threading.Barrier(8)
    got: list[Acquired | Held] = []

    def grab(i: int) -> None:
        barrier.wait()
        got.append(leases.acquire(AGENT, f"h:{i}:x"))

    threads = [threading.Thread(target=grab, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    winners = [g for g in got if isinstance(g, Acquired)]
    assert len(got) == 8 and len(winners) == 1 and winners[0].token == 1
    assert {g.owner for g in got if isinstance(g, Held)} == {winners[0].owner}


def test_a_skewed_worker_clock_neither_steals_a_live_lease_nor_keeps_a_dead_one(
        store: Any, skew_clock: Callable[[float], None]) -> None:  # fmt: skip
    leases = _leases(store, 30)
    live = leases.acquire(AGENT, "h:1:a")
    assert isinstance(live, Acquired)
    skew_clock(+600)  # this worker thinks the lease ran out ten minutes ago
    assert isinstance(leases.acquire(AGENT, "h:2:b"), Held)
    skew_clock(-600)  # and now that it has ten minutes left
    leases.release(live)
    short = LeaseStore(store, seconds=0.5)
    dying = short.acquire(AGENT, "h:3:c")
    assert isinstance(dying, Acquired)
    remaining = (dying.expires_at - short.now()).total_seconds()
    assert 0 < remaining <= 0.5  # measured on the database's clock, not this worker's
    time.sleep(0.7)
    assert isinstance(short.acquire(AGENT, "h:4:d"), Acquired)


def test_the_keeper_renews_while_the_holder_works(store: Any) -> None:
    leases = _leases(store, 1.2)
    lease = leases.acquire(AGENT, "h:1:a")
    assert isinstance(lease, Acquired)
    with LeaseKeeper(leases, lease) as keeper:
        time.sleep(2.0)  # well past one lease
        assert isinstance(leases.acquire(AGENT, "h:2:b"), Held) and keeper.lost is None
    time.sleep(1.4)
    assert isinstance(leases.acquire(AGENT, "h:2:b"), Acquired)  # stopped renewing: it expires


def test_the_keeper_gives_the_lease_up_before_the_database_ends_it(store: Any, tmp_path: Path) -> None:
    leases = _leases(store, 2.0)
    lease = leases.acquire(AGENT, "h:1:a")
    assert isinstance(lease, Acquired)
    good = store._sessions
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("x")
    dead_url = ("postgresql+psycopg://postgres@127.0.0.1:1/gone" if store.dialect == "postgresql"
                else f"sqlite:///{blocker}/db.sqlite")  # fmt: skip
    with LeaseKeeper(leases, lease) as keeper:
        store._sessions = sessionmaker(create_engine(dead_url), expire_on_commit=False)  # renewals now fail
        deadline = time.monotonic() + 5
        while keeper.lost is None and time.monotonic() < deadline:
            time.sleep(0.05)
        store._sessions = good
        lost_at = leases.now()
        assert keeper.lost is not None and "could not be renewed" in keeper.lost
        assert lost_at < lease.expires_at  # the holder stops believing in it before anyone else may take it
