"""Act on a check: roll the live deployment back when the guard is enabled and the verdict says so.

The rollback goes through the registry with ``expected_seq`` set to the deployment that was
checked, so it happens only if that deployment is *still* the live one: a manual deploy (or
another guard) that got there first wins, and the guard gets
:class:`~agent_sleep.errors.DeployConflictError` naming both deployments, with nothing rolled
back. Of two racing writers exactly one wins; the registry's check of the sequence number and
its unique ``(agent, seq)`` constraint decide it in one transaction.

The rollback is recorded as a deployment of kind ``rollback`` by actor ``online-guard``: its
reason states the numbers, its ``detail`` holds the whole :class:`GuardCheck` under
``"online_guard"``. With no deployment before the checked one, the guard rolls back to the base
model (an empty stack), which is what served before. It does not load a model to validate the
stack it returns to: that stack was live before, the registry still refuses a rejected version,
and every running :class:`~agent_sleep.runtime.live.LiveRuntime` validates a deployment before it
switches to it.

Every check :func:`enforce` makes is appended to the agent's journal (:mod:`.journal`), rollbacks
and conflicts included, except a check that repeats the last one recorded (same deployment, action
and numbers); ``dry_run`` writes nothing at all.
"""

from __future__ import annotations

import hashlib
import json
from datetime import datetime
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict

from agent_sleep.errors import DeployConflictError, DeploymentError, InvalidInputError
from agent_sleep.guard.check import GuardCheck, check_agent, registry_of
from agent_sleep.guard.config import OnlineGuardConfig
from agent_sleep.guard.journal import append_journal, journal_path
from agent_sleep.registry import DeploymentRecord
from agent_sleep.store.models import utcnow

if TYPE_CHECKING:
    from agent_sleep.registry import AdapterRegistry
    from agent_sleep.store import ExperienceStore

__all__ = ["GUARD_ACTOR", "DETAIL_KEY", "GuardOutcome", "enforce", "roll_back"]

GUARD_ACTOR = "online-guard"
DETAIL_KEY = "online_guard"  # a guard rollback's deployment detail: {"online_guard": <GuardCheck as JSON>}

Action = Literal["none", "rolled_back", "disabled", "dry_run", "conflict", "failed"]


class GuardOutcome(BaseModel):
    """What :func:`enforce` did with a check.

    ``action``: ``none`` (the verdict was keep or insufficient_data), ``rolled_back`` (``rollback``
    is the new deployment), ``disabled`` (the verdict was rollback but the guard is not enabled),
    ``dry_run`` (the verdict was rollback, and the caller asked for no changes). ``conflict`` and
    ``failed`` are only journaled: :func:`enforce` raises then.
    """

    model_config = ConfigDict(frozen=True)

    check: GuardCheck
    action: Action
    rollback: DeploymentRecord | None = None
    journal: str | None = None  # the journal file the check was appended to (None: dry run)


def roll_back(registry: AdapterRegistry, check: GuardCheck) -> DeploymentRecord:
    """Roll ``check``'s deployment back, only if it is still live; the rollback carries the check.

    Raises DeployConflictError (nothing changed) when another deployment is live by now.
    """
    if check.decision != "rollback" or check.deployment_seq is None:
        raise InvalidInputError(f"check of {check.agent!r} decided {check.decision!r}; only a rollback verdict "
                                "rolls back")
    agent, seq = check.agent, check.deployment_seq
    live = registry.live(agent)
    if live is None or live.id != check.deployment_id:
        now = f"#{live.seq} ({live.kind} by {live.actor})" if live is not None else "none"
        raise DeployConflictError(f"online guard: deployment #{seq} of agent {agent!r} is no longer live (now: "
                                  f"{now}); its check is void and nothing was rolled back")
    reason = f"online guard: {check.reason}"
    detail = {DETAIL_KEY: check.model_dump(mode="json")}
    try:  # from the agent's first deployment, back to the base model (the registry's rule)
        return registry.rollback(agent, actor=GUARD_ACTOR, reason=reason, expected_seq=seq, detail=detail)
    except DeployConflictError as exc:
        raise DeployConflictError(f"online guard: deployment #{seq} of agent {agent!r} was replaced while rolling "
                                  f"back; nothing was rolled back ({exc})") from None


def enforce(source: ExperienceStore | AdapterRegistry, agent: str, config: OnlineGuardConfig | None = None, *,
            now: datetime | None = None, dry_run: bool = False) -> GuardOutcome:
    """Check ``agent``'s live deployment (:func:`check_agent`) and, if enabled and it dropped, roll it back.

    For a scheduler to call periodically. Disabled (the default), a check is still made and
    journaled, so what the guard would have done can be watched before it is switched on.
    Raises DeployConflictError when a deploy replaced the checked deployment first (see :func:`roll_back`).
    """
    config = config or OnlineGuardConfig()
    registry = registry_of(source)
    check = check_agent(registry, agent, config, now=now)
    if check.decision != "rollback":
        action: Action = "none"
    elif dry_run:
        action = "dry_run"
    elif not config.enabled:
        action = "disabled"
    else:
        action = "rolled_back"
    if dry_run:
        return GuardOutcome(check=check, action=action)
    path = journal_path(registry.store.settings.data_dir, agent)
    rollback = None
    if action == "rolled_back":
        try:
            rollback = roll_back(registry, check)
        except DeploymentError as exc:
            failed: Action = "conflict" if isinstance(exc, DeployConflictError) else "failed"
            append_journal(path, _entry(GuardOutcome(check=check, action=failed), error=str(exc)))
            raise
    outcome = GuardOutcome(check=check, action=action, rollback=rollback, journal=str(path))
    entry = _entry(outcome)
    append_journal(path, entry, key=None if rollback else _key(entry))
    return outcome


def _entry(outcome: GuardOutcome, *, error: str | None = None) -> dict[str, Any]:
    return {"at": utcnow().isoformat(), "action": outcome.action,
            "rollback_id": outcome.rollback.id if outcome.rollback else None, "error": error,
            "check": outcome.check.model_dump(mode="json")}


def _key(entry: dict[str, Any]) -> str:
    """What makes a check news: the deployment, the decision, the action and the numbers (not the time)."""
    check = entry["check"]
    what = [check["deployment_id"], check["decision"], entry["action"], check["config"], check["signals"]]
    return hashlib.sha256(json.dumps(what, sort_keys=True, default=str).encode()).hexdigest()[:32]
