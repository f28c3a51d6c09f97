"""TEST CODE: a fast stand-in for ``run_cycle`` that really promotes an adapter, for the two-process tests.

Same run records as ``run_cycle`` (claimed through :class:`~agent_sleep.consolidation.runs.RunStore`: new,
resumed or ``skipped_overlap``; one row per stage), and what a promoted run leaves behind is real: in
``generate`` a random adapter for the base model (``tests.helpers_adapters.write_random``) is registered as
the next version of ``skill`` (tagged with the run), in ``deploy`` the live runtime validates it against the
model and deploys it (actor ``consolidation``, the run id on the deployment), and the run finishes
``promoted`` with the deployed stack. ``evaluate`` only waits for ``gate`` (a file) to exist, so a test
chooses the moment the deploy lands; the guard is asked before every stage, as ``run_cycle`` does.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from agent_sleep.consolidation import owners
from agent_sleep.consolidation.config import CycleConfig
from agent_sleep.consolidation.result import CycleResult
from agent_sleep.consolidation.runs import RunStore
from agent_sleep.errors import AgentSleepError
from agent_sleep.store.models import utcnow
from tests.helpers_adapters import write_random


def deploying_cycle(agent: str, *, config: CycleConfig, store: Any, runtime: Any, skill: str = "refunds",
                    seed: int = 2, gate: Path | None = None, gate_timeout: float = 120.0, resume: str | None = None,
                    guard: Any = None, progress: Any = None) -> CycleResult:  # fmt: skip
    runs = RunStore(store)
    owner = owners.new_owner()
    root = store.settings.data_dir.expanduser().resolve() / "runs"
    say = progress or (lambda line: None)
    try:
        now = utcnow()
        claim = runs.claim(agent, owner=owner, config=config.model_dump(mode="json"),
                           folder=lambda rid: str(root / rid), resume=resume,
                           alive=lambda r: owners.is_alive(r.owner, r.heartbeat_at, now=now,
                                                           stale_after=config.stale_after_seconds))  # fmt: skip
        if claim.kind == "finished":
            return CycleResult(run_id=claim.run.id, agent=agent, outcome=claim.run.outcome or "failed")
        if claim.kind == "skipped":
            runs.finish(claim.run.id, "skipped_overlap", owner=owner, summary={}, error=claim.run.error)
            return CycleResult(run_id=claim.run.id, agent=agent, outcome="skipped_overlap", error=claim.run.error)
        run_id = claim.run.id
        if guard is not None:
            guard.claimed(run_id)
        result: dict[str, Any] = {}
        for stage in ("select", "generate", "evaluate", "deploy"):
            why = guard.holds() if guard is not None else None
            if why is not None:
                return CycleResult(run_id=run_id, agent=agent, outcome="failed", status="running",
                                   resumed=claim.kind == "resumed", error=f"stopped before {stage}: {why}")
            runs.begin_stage(run_id, stage, owner=owner)
            started = time.monotonic()
            if stage == "generate":
                # A resumed run registered its adapter already (the registry tags it with the run).
                mine = [a for a in runtime.registry.adapters() if (a.sources or {}).get("run") == run_id]
                name = mine[0].name if mine else runtime.registry.register(
                    write_random(root / run_id / "adapter", runtime.handle, seed=seed), skill, agent=agent,
                    run_id=run_id).name
                result = {"adapter": name}
                say(f"generate: registered {name}")
            elif stage == "evaluate" and gate is not None:
                say(f"evaluate: waiting for {gate}")
                deadline = time.monotonic() + gate_timeout
                while not gate.exists():
                    if time.monotonic() > deadline:
                        raise AgentSleepError(f"the test never opened the gate {gate}")
                    time.sleep(0.01)
            elif stage == "deploy":
                out = runtime.deploy(agent, [result["adapter"]], actor="consolidation", run_id=run_id,
                                     reason=f"consolidation run {run_id}")  # fmt: skip
                if out.deployment is None:
                    raise AgentSleepError(f"the deploy was rejected: {out.reason}")
                result = {**result, "stack": out.deployment.stack.name, "seq": out.deployment.seq}
                say(f"deploy: {out.deployment.stack.name} is live (deployment #{out.deployment.seq})")
            runs.complete_stage(run_id, stage, result, time.monotonic() - started, owner=owner)
        summary = CycleResult(run_id=run_id, agent=agent, outcome="promoted", resumed=claim.kind == "resumed",
                              deployed_stack=result["stack"])  # fmt: skip
        runs.finish(run_id, "promoted", owner=owner, summary=summary.model_dump(mode="json"),
                    deployed_stack=result["stack"])  # fmt: skip
        return summary
    finally:
        owners.release(owner)
