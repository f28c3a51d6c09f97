"""Validate-then-deploy: nothing goes live unless every adapter in the stack passes.

Used by the CLI (``agent-sleep deploy``, in its own process: it writes the
registry and running agents pick the change up) and by :class:`LiveRuntime`.
A rejection is an expected outcome, returned as data and recorded on the
adapter version (status ``rejected`` with the reason); the live stack is
untouched.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict

from agent_sleep.registry.records import DeploymentRecord, StackRecord
from agent_sleep.registry.refs import AdapterRef, StackRef, is_stack_ref

if TYPE_CHECKING:
    from agent_sleep.models.loader import BaseModelHandle
    from agent_sleep.registry import AdapterRegistry


class AdapterVerdict(BaseModel):
    model_config = ConfigDict(frozen=True)

    adapter: str
    ok: bool
    reason: str | None = None
    checks: list[dict[str, Any]] = []


class DeployOutcome(BaseModel):
    """What a deploy request ended as: ``deployed`` or ``rejected`` (with reasons)."""

    model_config = ConfigDict(frozen=True)

    status: Literal["deployed", "rejected"]
    deployment: DeploymentRecord | None = None
    reason: str | None = None
    verdicts: list[AdapterVerdict] = []


def check_stack(registry: AdapterRegistry, stack: StackRecord, handle: BaseModelHandle,
                cache: dict[str, AdapterVerdict] | None = None,
                max_delta_norm: float | None = None) -> list[AdapterVerdict]:
    """Validate each adapter of ``stack`` against ``handle``; failures are marked rejected."""
    from agent_sleep.adapters.artifact import read_adapter
    from agent_sleep.adapters.validation import DEFAULT_MAX_DELTA_NORM, validate_adapter
    from agent_sleep.errors import AdapterError

    bound = DEFAULT_MAX_DELTA_NORM if max_delta_norm is None else max_delta_norm

    verdicts = []
    for item in stack.items:
        rec = registry.get(item.adapter)
        key = f"{rec.name}:{rec.weights_sha256}:{handle.content_hash}"
        if cache is not None and key in cache:
            verdicts.append(cache[key])
            continue
        if rec.status == "rejected":
            verdict = AdapterVerdict(adapter=rec.name, ok=False, reason=f"rejected earlier: {rec.status_reason}")
        else:
            try:
                report = validate_adapter(read_adapter(rec.path), handle, max_delta_norm=bound)
                verdict = AdapterVerdict(adapter=rec.name, ok=report.ok, reason=report.reason,
                                         checks=[c.model_dump() if hasattr(c, "model_dump") else dict(vars(c))
                                                 for c in report.checks])
            except AdapterError as exc:  # unreadable / tampered on disk: a rejection, not a crash
                verdict = AdapterVerdict(adapter=rec.name, ok=False, reason=str(exc))
            if verdict.ok:
                if rec.status == "candidate":
                    registry.set_status(rec.name, "approved")
            else:
                registry.set_status(rec.name, "rejected", verdict.reason)
        if cache is not None and verdict.ok:
            cache[key] = verdict
        verdicts.append(verdict)
    return verdicts


def deploy_validated(registry: AdapterRegistry, agent: str, target: str | StackRef | AdapterRef | Sequence[Any], *,
                     actor: str = "user", reason: str = "", run_id: str | None = None, validate: bool = True,
                     handle: BaseModelHandle | None = None, max_delta_norm: float | None = None,
                     cache: dict[str, AdapterVerdict] | None = None) -> DeployOutcome:
    """Create the stack, validate it against the base model, then deploy it atomically.

    ``cache`` keeps passing verdicts (keyed by version, weights hash and base hash) so a
    long-lived runtime validates each version once.
    """
    live = registry.live(agent)
    seen = live.seq if live else 0
    if isinstance(target, StackRef) or is_stack_ref(target):
        stack = registry.get_stack(target)
    else:
        stack = registry.create_stack(agent, [target] if isinstance(target, str | AdapterRef) else target)
    verdicts: list[AdapterVerdict] = []
    if validate and stack.items:
        if handle is None:
            from agent_sleep.models.loader import load_base_model

            handle = load_base_model(registry.store.settings.model, settings=registry.store.settings)
        verdicts = check_stack(registry, stack, handle, cache, max_delta_norm)
        bad = [v for v in verdicts if not v.ok]
        if bad:
            return DeployOutcome(status="rejected", verdicts=verdicts,
                                 reason="; ".join(f"{v.adapter}: {v.reason}" for v in bad))
    # expected_seq: a deploy that raced us while we validated wins; we get a conflict error.
    dep = registry.deploy(agent, stack.name, actor=actor, reason=reason, run_id=run_id, expected_seq=seen)
    return DeployOutcome(status="deployed", deployment=dep, verdicts=verdicts)
