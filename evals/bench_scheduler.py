"""Scheduler overhead: lease operations and what the scheduler adds around each run, on SQLite and PostgreSQL.

To run:  nice -n 10 .venv/bin/python evals/bench_scheduler.py [--n 200] [--pg postgresql+psycopg://…/postgres]

Per backend, ``n`` times each (medians and 95th percentiles, milliseconds):

* ``lease_acquire``: taking a free lease (the INSERT … ON CONFLICT, the locked read, the conditional
  UPDATE: one transaction), then ``lease_release``; ``lease_acquire_held``: the same call when another
  owner holds it (the answer is "held"); ``lease_renew``: one heartbeat;
* ``enqueue``: writing one pending request (``sleep --enqueue``'s database work);
* ``trigger_check``: one poll of a ``new_episodes`` trigger over 1,000 unconsolidated episodes;
* ``serve_overhead``: :meth:`Worker.serve` for one request minus the time inside the cycle (here a cycle
  that only claims and finishes its run): lease, request bookkeeping, keeper thread, run id on the lease.

PostgreSQL runs on a fresh database made for the run (``--pg`` is a server URL whose user may create
databases; default ``$AGENT_SLEEP_TEST_PG_URL``) and dropped after. Writes evals/results/scheduler.json.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from agent_sleep.config import Settings  # noqa: E402
from agent_sleep.consolidation import owners  # noqa: E402
from agent_sleep.consolidation.result import CycleResult  # noqa: E402
from agent_sleep.consolidation.runs import RunStore  # noqa: E402
from agent_sleep.scheduling.leases import Acquired, LeaseStore  # noqa: E402
from agent_sleep.scheduling.requests import RequestStore  # noqa: E402
from agent_sleep.scheduling.schedules import ScheduleStore  # noqa: E402
from agent_sleep.scheduling.triggers import check_trigger  # noqa: E402
from agent_sleep.scheduling.worker import Worker  # noqa: E402
from agent_sleep.store import ExperienceStore  # noqa: E402

AGENT = "bench"


def _stats(ms: list[float]) -> dict[str, float]:
    ordered = sorted(ms)
    return {"median_ms": round(statistics.median(ordered), 3),
            "p95_ms": round(ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))], 3), "n": len(ordered)}  # fmt: skip


def _timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    t0 = time.perf_counter()
    out = fn()
    return (time.perf_counter() - t0) * 1000, out


def bench(store: ExperienceStore, n: int) -> dict[str, Any]:
    store.ensure_agent(AGENT)
    leases = LeaseStore(store, seconds=60)
    acquire, release, held, renew = [], [], [], []
    for i in range(n):
        ms, lease = _timed(lambda: leases.acquire(AGENT, f"bench:1:{i}"))
        assert isinstance(lease, Acquired)
        acquire.append(ms)
        held.append(_timed(lambda: leases.acquire(AGENT, "bench:2:other"))[0])
        renew.append(_timed(lambda: leases.renew(lease))[0])
        release.append(_timed(lambda: leases.release(lease))[0])

    reqs = RequestStore(store)
    enqueue = [_timed(lambda: reqs.enqueue(AGENT, reason="bench"))[0] for _ in range(n)]
    reqs.finish([r.id for r in reqs.take(AGENT, worker="bench:0:x")], None, "no_signal")

    for _ in range(1000):
        eid = store.start_episode(AGENT)
        store.end_episode(eid)
    sched, _ = ScheduleStore(store).add(AGENT, "new_episodes", {"min_episodes": 5000})
    trigger = [_timed(lambda: check_trigger(store, sched))[0] for _ in range(n)]

    inside: list[float] = []
    root = store.settings.data_dir.resolve() / "runs"

    def cycle(agent: str, *, config: Any, store: Any, resume: Any = None, guard: Any = None, **_: Any) -> CycleResult:
        t0 = time.perf_counter()
        runs, owner = RunStore(store), owners.new_owner()
        claim = runs.claim(agent, owner=owner, config={}, folder=lambda rid: str(root / rid), resume=resume,
                           alive=lambda r: False)  # fmt: skip
        guard.claimed(claim.run.id)
        runs.finish(claim.run.id, "no_signal", owner=owner, summary={})
        owners.release(owner)
        inside.append((time.perf_counter() - t0) * 1000)
        return CycleResult(run_id=claim.run.id, agent=agent, outcome="no_signal")

    worker = Worker(store, lease_seconds=60, cycle=cycle)
    serve = []
    for _ in range(n):
        reqs.enqueue(AGENT, reason="bench")
        ms, served = _timed(lambda: worker.serve(AGENT))
        assert served.action == "ran", served.line
        serve.append(ms - inside[-1])
    return {"lease_acquire": _stats(acquire), "lease_acquire_held": _stats(held), "lease_renew": _stats(renew),
            "lease_release": _stats(release), "enqueue": _stats(enqueue), "trigger_check_1000_episodes": _stats(trigger),
            "serve_overhead": _stats(serve), "cycle_claim_and_finish": _stats(inside)}  # fmt: skip


def main() -> int:
    from evals.record import scratch_database, write_results

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=200)
    p.add_argument("--pg", default=os.environ.get("AGENT_SLEEP_TEST_PG_URL"))
    args = p.parse_args()
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        url = f"sqlite:///{tmp}/bench.sqlite"
        with ExperienceStore(settings=Settings(data_dir=Path(tmp), database_url=url)) as store:
            results["sqlite"] = bench(store, args.n)
        if args.pg:
            with scratch_database(args.pg, "agent_sleep_bench_sched_") as pg:
                with ExperienceStore(settings=Settings(data_dir=Path(tmp), database_url=pg)) as store:
                    results["postgresql"] = bench(store, args.n)
    out = {"measured_at": datetime.now(UTC).isoformat(timespec="seconds"), "n": args.n,
           "machine": f"{os.cpu_count()} CPUs, shared, niced", "results": results}  # fmt: skip
    path = ROOT / "evals" / "results" / "scheduler.json"
    write_results(path, out)
    for backend, numbers in results.items():
        for what, s in numbers.items():
            print(f"{backend:10} {what:28} median {s['median_ms']:8.2f} ms   p95 {s['p95_ms']:8.2f} ms")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
