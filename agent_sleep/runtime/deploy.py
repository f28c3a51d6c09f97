"""Validate-then-deploy: nothing goes live unless every adapter, and the stack as it will run, passes.

Used by the CLI (``agent-sleep deploy`` and ``rollback``, in their own process:
they write the registry and running agents pick the change up) and by
:class:`~agent_sleep.runtime.live.LiveRuntime`. :func:`check_stack` validates
each version (``validate_adapter``), then the weighted stack as one
(``validate_stack``: weights, and the summed delta per layer under the same
bound). A rejection is an expected outcome, returned as data; nothing is
written for it but the rejected version's status, and no stack row is created
before validation passed.

A version's rejection records the check and the policy that failed it
(:class:`~agent_sleep.registry.records.Rejection`): a deploy under a looser
``max_delta_norm`` (or on another base model, for a compatibility failure)
validates it again instead of refusing outright; a broken artifact (tampered,
unreadable, NaN) stays rejected. A version that is live stays live when a
deploy with a stricter policy fails it (the other agent runs it under its
policy); only an integrity failure demotes it. A stack that fails only as a
whole (weights, summed delta) rejects the deploy but no version.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict

from agent_sleep.errors import InvalidInputError
from agent_sleep.registry.records import AdapterVersionRecord, DeploymentRecord, Rejection, StackItem, StackRecord
from agent_sleep.registry.refs import AdapterRef, StackRef, is_stack_ref

if TYPE_CHECKING:
    from agent_sleep.adapters.artifact import LoraWeights
    from agent_sleep.models.loader import BaseModelHandle
    from agent_sleep.registry import AdapterRegistry

__all__ = ["AdapterVerdict", "DeployOutcome", "StackVerdict", "check_stack", "deploy_validated", "rollback_validated"]

POLICY_CHECKS = frozenset({"delta_norm"})  # decided by a limit of the deploy
COMPATIBILITY_CHECKS = frozenset({"base_model", "targets"})  # decided by the base model
# every other failure (format, finite, reload, an unreadable or tampered folder) is the artifact's own

LayersOf = Callable[[str], "Mapping[str, LoraWeights]"]


class AdapterVerdict(BaseModel):
    model_config = ConfigDict(frozen=True)

    adapter: str
    ok: bool
    reason: str | None = None
    checks: list[dict[str, Any]] = []
    check: str | None = None  # the failing check (``integrity`` when the folder could not be read)


class StackVerdict(BaseModel):
    """Every version's verdict, then the checks of the stack as a whole (run only when every version passed)."""

    model_config = ConfigDict(frozen=True)

    verdicts: list[AdapterVerdict] = []
    stack_checks: list[dict[str, Any]] = []

    @property
    def ok(self) -> bool:
        return all(v.ok for v in self.verdicts) and all(c["ok"] for c in self.stack_checks)

    @property
    def reason(self) -> str | None:
        bad = [f"{v.adapter}: {v.reason}" for v in self.verdicts if not v.ok]
        bad += [f"stack: {c['name']}: {c['detail']}" for c in self.stack_checks if not c["ok"]]
        return "; ".join(bad) or None


class DeployOutcome(BaseModel):
    """What a deploy or rollback request ended as: ``deployed`` or ``rejected`` (with reasons)."""

    model_config = ConfigDict(frozen=True)

    status: Literal["deployed", "rejected"]
    deployment: DeploymentRecord | None = None
    reason: str | None = None
    verdicts: list[AdapterVerdict] = []
    stack_checks: list[dict[str, Any]] = []



VerdictCache = dict[str, "AdapterVerdict | StackVerdict"]
"""Passing verdicts of one long-lived runtime: per version (version, weights hash, base hash, bound) and per
whole stack (every version's key and weight), so returning to a stack validated before costs no recomputation."""

def _bound(max_delta_norm: float | None) -> float:
    from agent_sleep.adapters.validation import DEFAULT_MAX_DELTA_NORM

    return DEFAULT_MAX_DELTA_NORM if max_delta_norm is None else float(max_delta_norm)


def _validate_one(rec: AdapterVersionRecord, handle: BaseModelHandle, bound: float,
                  layers: dict[str, Mapping[str, LoraWeights]]) -> AdapterVerdict:
    from agent_sleep.adapters.artifact import lora_layers, read_adapter
    from agent_sleep.adapters.validation import validate_adapter
    from agent_sleep.errors import AdapterError

    try:
        artifact = read_adapter(rec.path)
        report = validate_adapter(artifact, handle, max_delta_norm=bound)
    except AdapterError as exc:  # unreadable / tampered on disk: a rejection, not a crash
        return AdapterVerdict(adapter=rec.name, ok=False, reason=str(exc), check="integrity")
    if report.ok:
        layers[rec.name] = lora_layers(artifact)
    checks = [dict(vars(c)) for c in report.checks]
    failed = report.failed[0] if report.failed else None
    return AdapterVerdict(adapter=rec.name, ok=report.ok, reason=report.reason, checks=checks, check=failed)


def _rejection(verdict: AdapterVerdict, handle: BaseModelHandle, bound: float) -> Rejection:
    check = verdict.check or "integrity"
    value = next((c.get("value") for c in verdict.checks if c.get("name") == check), None)
    if check in POLICY_CHECKS:
        return Rejection(check=check, kind="policy", base_model_hash=handle.content_hash,
                         policy={"max_delta_norm": bound}, value=value)
    kind = "compatibility" if check in COMPATIBILITY_CHECKS else "integrity"
    return Rejection(check=check, kind=kind, base_model_hash=handle.content_hash, value=value)


def _record(registry: AdapterRegistry, rec: AdapterVersionRecord, verdict: AdapterVerdict, handle: BaseModelHandle,
            bound: float, actor: str) -> None:
    if verdict.ok:
        if rec.status in ("candidate", "rejected"):
            registry.set_status(rec.name, "approved", f"passed validation (max_delta_norm {bound:g})", actor=actor)
        return
    rejection = _rejection(verdict, handle, bound)
    if rec.status == "live" and rejection.kind != "integrity":
        return  # live under another deploy's policy or model; this deploy is refused, the version stays
    registry.reject(rec.name, verdict.reason or rejection.check, rejection, actor=actor)


def check_stack(registry: AdapterRegistry, stack: StackRecord | Sequence[StackItem], handle: BaseModelHandle,
                cache: VerdictCache | None = None, max_delta_norm: float | None = None, *,
                record: bool = True,
                actor: str = "validation", layers_of: LayersOf | None = None) -> StackVerdict:
    """Validate each version of ``stack`` against ``handle``, then the weighted stack as a whole.

    ``record``: write the versions' outcomes to the registry (rejected with the check and
    policy; a pass moves a candidate, or a version whose rejection does not apply here, to
    approved). A follower that only decides whether to switch passes False.
    ``cache`` keeps passing verdicts (keyed by version, weights hash, base hash and bound) so a
    long-lived runtime validates each version once; ``layers_of`` supplies already-loaded layers.
    """
    from agent_sleep.adapters.artifact import lora_layers, read_adapter, read_manifest
    from agent_sleep.adapters.validation import validate_stack
    from agent_sleep.errors import AdapterError

    bound = _bound(max_delta_norm)
    items = stack.items if isinstance(stack, StackRecord) else tuple(stack)
    loaded: dict[str, Mapping[str, LoraWeights]] = {}
    verdicts = []
    item_keys: list[str] = []
    for item in items:
        rec = registry.get(item.adapter)
        rejection = rec.rejection
        if rejection is not None and rejection.applies(base_model_hash=handle.content_hash, max_delta_norm=bound):
            verdicts.append(AdapterVerdict(adapter=rec.name, ok=False, check=rejection.check,
                                           reason=f"rejected earlier: {rec.status_reason}"))
            continue
        key = f"{rec.name}:{rec.weights_sha256}:{handle.content_hash}:{bound!r}"
        item_keys.append(f"{key}*{item.weight!r}")
        verdict = cache.get(key) if cache is not None else None
        if verdict is None:
            verdict = _validate_one(rec, handle, bound, loaded)
            if cache is not None and verdict.ok:
                cache[key] = verdict
        if record:
            _record(registry, rec, verdict, handle, bound, actor)
        verdicts.append(verdict)
    if not all(v.ok for v in verdicts) or not items:
        return StackVerdict(verdicts=verdicts)
    stack_key = "stack|" + "|".join(item_keys)
    cached = cache.get(stack_key) if cache is not None else None
    if isinstance(cached, StackVerdict):
        return StackVerdict(verdicts=verdicts, stack_checks=cached.stack_checks)

    def layers(name: str) -> Mapping[str, LoraWeights]:
        if name not in loaded:
            loaded[name] = layers_of(name) if layers_of else lora_layers(read_adapter(registry.get(name).path))
        return loaded[name]

    try:
        manifests = {i.adapter: read_manifest(registry.get(i.adapter).path) for i in items}
        routing = {a: m.routing if m is not None else None for a, m in manifests.items()}  # sections: one per request
        report = validate_stack([(i.adapter, layers(i.adapter), i.weight) for i in items], handle,
                                max_delta_norm=bound, routing=routing)
    except AdapterError as exc:  # a folder that changed since its own check
        return StackVerdict(verdicts=verdicts, stack_checks=[{"name": "read", "ok": False, "detail": str(exc),
                                                              "value": None}])
    verdict = StackVerdict(verdicts=verdicts, stack_checks=[dict(vars(c)) for c in report.checks])
    if cache is not None and verdict.ok:
        cache[stack_key] = verdict
    return verdict


def _refused_without_validation(registry: AdapterRegistry, items: Sequence[StackItem]) -> StackVerdict:
    verdicts = []
    for item in items:
        rec = registry.get(item.adapter)
        if rec.status == "rejected":
            verdicts.append(AdapterVerdict(adapter=rec.name, ok=False, check="rejected",
                                           reason=f"rejected earlier: {rec.status_reason} (skipping validation "
                                                  f"does not lift a rejection)"))
    return StackVerdict(verdicts=verdicts)


def _validated(registry: AdapterRegistry, items: Sequence[StackItem], write: Callable[[], DeploymentRecord], *,
               validate: bool, handle: BaseModelHandle | None, max_delta_norm: float | None,
               cache: VerdictCache | None, actor: str, layers_of: LayersOf | None) -> DeployOutcome:
    if not validate:
        verdict = _refused_without_validation(registry, items)
    elif items:
        if handle is None:
            from agent_sleep.models.loader import load_base_model

            handle = load_base_model(registry.store.settings.model, settings=registry.store.settings)
        verdict = check_stack(registry, items, handle, cache, max_delta_norm, actor=actor, layers_of=layers_of)
    else:
        verdict = StackVerdict()
    if not verdict.ok:
        return DeployOutcome(status="rejected", verdicts=verdict.verdicts, stack_checks=verdict.stack_checks,
                             reason=verdict.reason)
    return DeployOutcome(status="deployed", deployment=write(), verdicts=verdict.verdicts,
                         stack_checks=verdict.stack_checks)


def deploy_validated(registry: AdapterRegistry, agent: str, target: str | StackRef | AdapterRef | Sequence[Any], *,
                     actor: str = "user", reason: str = "", run_id: str | None = None, validate: bool = True,
                     handle: BaseModelHandle | None = None, max_delta_norm: float | None = None,
                     cache: VerdictCache | None = None, layers_of: LayersOf | None = None,
                     detail: Mapping[str, Any] | None = None, expected_seq: int | None = None) -> DeployOutcome:
    """Validate the stack against the base model, then record it and deploy it atomically.

    ``target``: a stack, an adapter reference, or a list of adapters / ``(adapter, weight)``.
    References are resolved to versions first; the stack row is written with the deployment.
    ``validate=False`` skips the checks but still refuses a rejected version. ``detail`` is kept
    with the deployment (:meth:`~agent_sleep.registry.AdapterRegistry.deploy`). ``expected_seq``: deploy only
    while deployment #``expected_seq`` is live (else DeployConflictError; default: whatever is live now).
    """
    if expected_seq is None:
        live = registry.live(agent)
        seen = live.seq if live else 0
    else:
        seen = expected_seq
    deploy_target: Any
    if isinstance(target, StackRef) or is_stack_ref(target):
        stack = registry.get_stack(target)
        if stack.agent != agent:
            raise InvalidInputError(f"stack {stack.name} belongs to agent {stack.agent!r}, not {agent!r}")
        items, deploy_target = stack.items, stack.name
    else:
        items = registry.stack_items([target] if isinstance(target, str | AdapterRef) else target)
        deploy_target = list(items)

    def write() -> DeploymentRecord:
        # expected_seq: a deploy that raced us while we validated wins; we get a conflict error.
        return registry.deploy(agent, deploy_target, actor=actor, reason=reason, run_id=run_id, expected_seq=seen,
                               detail=detail)

    return _validated(registry, items, write, validate=validate, handle=handle, max_delta_norm=max_delta_norm,
                      cache=cache, actor=actor, layers_of=layers_of)


def rollback_validated(registry: AdapterRegistry, agent: str, *, to: str | None = None, actor: str = "user",
                       reason: str = "rollback", validate: bool = True, handle: BaseModelHandle | None = None,
                       max_delta_norm: float | None = None, cache: VerdictCache | None = None,
                       layers_of: LayersOf | None = None, expected_seq: int | None = None,
                       detail: Mapping[str, Any] | None = None) -> DeployOutcome:
    """:meth:`AdapterRegistry.rollback`, validated like a deploy: a stack that fails is not made live again.

    ``expected_seq``: roll back only while deployment #``expected_seq`` is live (else DeployConflictError);
    ``detail`` is kept with the rollback's deployment.
    """
    plan = registry.rollback_plan(agent, to=to)

    def write() -> DeploymentRecord:
        return registry.deploy(agent, plan.target, actor=actor, reason=reason, kind="rollback",
                               expected_seq=plan.expected_seq if expected_seq is None else expected_seq,
                               previous_id=plan.previous_id, detail=detail)

    return _validated(registry, plan.items, write, validate=validate, handle=handle,
                      max_delta_norm=max_delta_norm, cache=cache, actor=actor, layers_of=layers_of)
