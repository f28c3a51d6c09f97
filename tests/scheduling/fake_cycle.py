"""TEST CODE: a fast stand-in for ``run_cycle`` with the same signature and the same run records.

It claims the run through :class:`~agent_sleep.consolidation.runs.RunStore` exactly as ``run_cycle`` does
(new, resumed, or ``skipped_overlap``), tells the guard, then goes through ``stages`` short sleeps, asking
the guard before each (a "no" leaves the run ``running``, as ``run_cycle`` does), and finishes
``no_signal``. The scheduler under test cannot tell it from the real cycle except by speed; the real one
runs in tests/scheduling/test_real_cycle.py.
"""

from __future__ import annotations

import random
import time
from typing import Any

from agent_sleep.consolidation import owners
from agent_sleep.consolidation.config import CycleConfig
from agent_sleep.consolidation.result import CycleResult
from agent_sleep.consolidation.runs import RunStore
from agent_sleep.store.models import utcnow


def fake_cycle(agent: str, *, config: CycleConfig, store: Any, resume: str | None = None, guard: Any = None,
               progress: Any = None, stage_seconds: tuple[float, float] = (0.005, 0.02),
               stages: int = 3) -> CycleResult:  # fmt: skip
    runs = RunStore(store)
    owner = owners.new_owner()
    root = store.settings.data_dir.expanduser().resolve() / "runs"
    try:
        now = utcnow()
        claim = runs.claim(agent, owner=owner, config=config.model_dump(mode="json"),
                           folder=lambda rid: str(root / rid), resume=resume,
                           alive=lambda r: owners.is_alive(r.owner, r.heartbeat_at, now=now,
                                                           stale_after=config.stale_after_seconds))
        if claim.kind == "finished":
            return CycleResult(run_id=claim.run.id, agent=agent, outcome=claim.run.outcome or "failed")
        if claim.kind == "skipped":
            runs.finish(claim.run.id, "skipped_overlap", owner=owner, summary={}, error=claim.run.error)
            return CycleResult(run_id=claim.run.id, agent=agent, outcome="skipped_overlap", error=claim.run.error)
        if guard is not None:
            guard.claimed(claim.run.id)
        for stage in ("select", "generate", "evaluate")[:stages]:
            why = guard.holds() if guard is not None else None
            if why is not None:
                return CycleResult(run_id=claim.run.id, agent=agent, outcome="failed", status="running",
                                   resumed=claim.kind == "resumed", error=f"stopped before {stage}: {why}")
            runs.begin_stage(claim.run.id, stage, owner=owner)
            time.sleep(random.uniform(*stage_seconds))
            runs.complete_stage(claim.run.id, stage, {}, 0.0, owner=owner)
        runs.finish(claim.run.id, "no_signal", owner=owner, summary={})
        return CycleResult(run_id=claim.run.id, agent=agent, outcome="no_signal", resumed=claim.kind == "resumed")
    finally:
        owners.release(owner)
