"""The deploy stage: make the accepted stack live, once, only if nothing else changed what is live.

Nothing to do when the gate admitted nothing (accepted is still the incumbent). Otherwise, in order:
a deployment this run already made (``run_id`` on the deployment row: the process died after the
registry's one-transaction deploy) is the result; a deployment made by anyone else since evaluation
began means the candidates were compared with a stack that is no longer live, so nothing is deployed
and the run fails; else the live runtime validates the whole stack and deploys it (``runtime.deploy``:
the stack row, the deployment and the versions' statuses in one transaction, then the local switch),
on condition that the deployment this run checked is still the live one: a deploy that lands between the
check and the write (another process, or a second holder of this run whose lease had expired) makes the
write a conflict, and if that deploy was this run's own, it is the result.
"""

from __future__ import annotations

from typing import Any

from agent_sleep.consolidation import faults
from agent_sleep.consolidation.context import RunContext
from agent_sleep.consolidation.gating import stack_label
from agent_sleep.errors import DeployConflictError
from agent_sleep.registry.records import DeploymentRecord

__all__ = ["deploy"]


def deploy(ctx: RunContext, evaluated: dict[str, Any]) -> dict[str, Any]:
    """The stage result: ``{"deployed": bool, "stack", "seq", "deployment_id"}`` or why nothing was deployed."""
    live_then = evaluated["incumbent"]
    accepted = [(str(a), float(w)) for a, w in evaluated["accepted"]]
    before = [(str(s["adapter"]), float(s["weight"])) for s in live_then["skills"]]
    if accepted == before:
        return {"deployed": False, "reason": "the gate admitted nothing"}
    made = _own_deployment(ctx)
    if made is not None:
        return made
    live = ctx.registry.live(ctx.agent)
    seq = live.seq if live is not None else 0
    if seq != live_then["seq"]:
        return {"deployed": False, "conflict": f"agent {ctx.agent!r} got deployment #{seq} while this run compared "
                f"its candidates with #{live_then['seq']}; nothing deployed (the next cycle compares with the new "
                "stack)"}  # fmt: skip
    ctx.say(f"deploy: {stack_label(accepted)} for {ctx.agent}")
    try:
        outcome = ctx.runtime.deploy(ctx.agent, accepted, actor="consolidation", run_id=ctx.run_id,
                                     reason=f"consolidation run {ctx.run_id}", expected_seq=seq)  # fmt: skip
    except DeployConflictError as exc:
        return _own_deployment(ctx) or {"deployed": False, "conflict": str(exc)}
    faults.fault_point("deploy:after_deploy")
    if outcome.deployment is None:
        return {"deployed": False, "rejected": outcome.reason or "the stack failed validation"}
    dep = outcome.deployment
    ctx.say(f"deploy: {dep.stack.name} is live for {ctx.agent} (deployment #{dep.seq})")
    return _deployed(dep)


def _own_deployment(ctx: RunContext) -> dict[str, Any] | None:
    """The stage result for the deployment this run made (``run_id`` on its row), None while it made none."""
    ours = [d for d in ctx.registry.deployments(ctx.agent) if d.run_id == ctx.run_id]
    return _deployed(ours[-1]) if ours else None


def _deployed(dep: DeploymentRecord) -> dict[str, Any]:
    return {"deployed": True, "stack": dep.stack.name, "seq": dep.seq, "deployment_id": dep.id}
