"""The online guard as the scheduler runs it: one check of one agent, under that agent's lease.

:func:`guard_agent` is what :class:`~.service.SchedulerService` does every ``guard_every_seconds`` for each
agent whose scheduler config has an ``online_guard:`` section; it always ends in one :class:`Guarded`
value whose ``line`` says what was decided and why (the service logs it):

1. **Lease** (:mod:`.leases`). The guard takes the same per-agent lease a cycle takes, and holds it
   while it checks and (maybe) rolls back. A lease held elsewhere means a cycle is running for the agent
   (in this or another worker process): nothing is checked (``held``), and the service tries again at its
   next poll. So a guard rollback never lands between a cycle's evaluation (which compared candidates
   with the live stack) and its deploy. A cycle started by hand (``agent-sleep sleep``, no lease) is
   waited for the same way (``busy``). A manual ``agent-sleep deploy`` takes no lease: that race is the
   registry's, which rolls back only while the checked deployment is still live (``expected_seq``), and
   the guard reports ``conflict``.
2. **The check** (:func:`agent_sleep.guard.enforce`): journaled always, rolled back only when the agent's
   ``online_guard`` says ``enabled: true`` and the verdict is ``rollback``; the rollback is a deployment of
   kind ``rollback`` by actor ``online-guard``, its reason and ``detail`` carrying the numbers.
3. **The end.** The lease is released (its ``run_id``, a run a dead worker left unfinished, stays for the
   next worker to resume).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from agent_sleep.errors import AgentSleepError, DeployConflictError
from agent_sleep.guard import GUARD_ACTOR, GuardOutcome, OnlineGuardConfig, enforce
from agent_sleep.scheduling.leases import Held, LeaseKeeper

if TYPE_CHECKING:
    from agent_sleep.scheduling.worker import Worker

__all__ = ["Guarded", "guard_agent"]

log = logging.getLogger("agent_sleep.scheduling")

GuardAction = Literal["keep", "rolled_back", "disabled", "insufficient_data", "conflict", "held", "busy", "error"]


@dataclass(frozen=True)
class Guarded:
    """What one scheduled guard check did, and the line that says why.

    ``checked``: the check ran (any action but ``held``, ``busy`` and ``error``); the service then waits
    ``guard_every_seconds`` before the next one, else it tries again at its next poll.
    """

    agent: str
    action: GuardAction
    line: str
    outcome: GuardOutcome | None = None

    @property
    def checked(self) -> bool:
        return self.action not in ("held", "busy", "error")


def _line(outcome: GuardOutcome) -> tuple[GuardAction, str]:
    check = outcome.check
    agent = check.agent
    what = f"deployment #{check.deployment_seq} ({check.stack})" if check.deployment_seq is not None else "nothing"
    if outcome.action == "rolled_back" and outcome.rollback is not None:
        rb = outcome.rollback
        to = rb.stack.name if rb.stack.items else "the base model"
        return "rolled_back", (f"guard {agent}: rolled back {what} to {to} as deployment #{rb.seq} (by "
                               f"{GUARD_ACTOR}): {check.reason}")  # fmt: skip
    if outcome.action == "disabled":
        return "disabled", (f"guard {agent}: would roll back {what}, but online_guard.enabled is false "
                            f"(journaled only): {check.reason}")  # fmt: skip
    if check.decision == "insufficient_data":
        return "insufficient_data", f"guard {agent}: insufficient data on {what}: {check.reason}"
    return "keep", f"guard {agent}: keep {what}: {check.reason}"


def guard_agent(worker: Worker, agent: str, config: OnlineGuardConfig) -> Guarded:
    """Check ``agent``'s live deployment under its lease, rolling back if ``config`` allows (module docstring)."""
    from agent_sleep.scheduling.worker import new_worker_owner

    owner = new_worker_owner()
    try:
        got = worker.leases.acquire(agent, owner)
    except AgentSleepError as exc:
        return Guarded(agent, "error", f"guard {agent}: not checked: could not take the lease: {exc}")
    if isinstance(got, Held):
        return Guarded(agent, "held", f"guard {agent}: not checked while its cycle runs: lease held by {got.owner} "
                                      f"(token {got.token}); trying again at the next poll")  # fmt: skip
    try:
        busy = worker.busy_elsewhere(agent)
        if busy is not None:
            return Guarded(agent, "busy", f"guard {agent}: not checked: {busy}; trying again at the next poll")
        with LeaseKeeper(worker.leases, got):  # a check is a few queries; the keeper covers a slow database
            outcome = enforce(worker.store, agent, config)
    except DeployConflictError as exc:  # journaled by enforce; nothing was rolled back
        return Guarded(agent, "conflict", f"guard {agent}: conflict: {exc}")
    except AgentSleepError as exc:
        return Guarded(agent, "error", f"guard {agent}: check failed: {exc}")
    finally:
        try:
            worker.leases.release(got)
        except AgentSleepError as exc:  # the database is gone: the lease expires by itself
            log.warning("guard %s: releasing the lease failed (it expires by itself): %s", agent, exc)
    action, line = _line(outcome)
    return Guarded(agent, action, line, outcome)
