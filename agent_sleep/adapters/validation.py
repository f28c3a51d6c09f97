"""Checks an adapter must pass before it may go live; the outcome is data, not an exception.

:func:`validate_adapter` runs, in order: ``base_model`` (the manifest's content
hash is the loaded model's), ``targets`` (every module exists, is a Linear, and
A/B fit its in/out features), ``finite`` (no NaN/Inf), ``delta_norm`` (no
layer's change is out of proportion to the layer; for an adapter with routed sections, each section as
it is served: its rows plus the unclaimed ones) and ``reload`` (the folder on
disk reproduces the in-memory adapter's logits). A check that needs an earlier
one is not run once that one fails. Everything runs through
:class:`~agent_sleep.adapters.stack.LoraHooks` in the caller's context only, so
validating on a model that other threads are serving is safe: no module is
replaced, nothing is merged, and the other threads' stacks are untouched.

:func:`validate_stack` checks a weighted stack as it will run: every weight is
one a stack may use (:func:`~agent_sleep.adapters.stack.check_weight`) and, per
layer, the weighted *sum* of the adapters' deltas stays within the same bound
(``stack_delta_norm``). Adapters that each pass at weight 1 can fail it together,
or at weight 3; a merge of the stack is exactly that sum. An adapter with routed sections (``routing``) counts,
at each layer, as its section with the largest delta there: a request gets one section, never all of them.

:func:`peft_equivalence` proves, on a private copy of the model, that our
runtime gives PEFT's logits for a folder (or several, all active at weight 1).

Not here: task quality (lm-eval and the gate decide that).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agent_sleep.adapters.artifact import AdapterArtifact, LoraWeights, lora_layers, read_adapter
from agent_sleep.adapters.stack import (
    MAX_WEIGHT,
    LoraHooks,
    StackItem,
    check_weight,
    prepare_stack,
    resolve_linear,
    strip_lora_hooks,
)
from agent_sleep.errors import AdapterError, InvalidInputError

if TYPE_CHECKING:
    from torch import Tensor

    from agent_sleep.adapters.manifest import RoutingSpec
    from agent_sleep.models.loader import BaseModelHandle

__all__ = [
    "DEFAULT_MAX_DELTA_NORM", "Check", "ValidationReport", "peft_equivalence", "validate_adapter", "validate_stack",
]  # fmt: skip

# ||scaling * B @ A||_F / ||W||_F per layer. At 1.0 a layer's change is as large as the pretrained
# weight itself: the adapter no longer adjusts the layer, it replaces it. Fine-tuned LoRAs sit well
# below that, so this loose bound only catches blow-ups (a bad generator, a scaling bug, lora_alpha
# x100), not subtle harm; quality is the gate's job.
DEFAULT_MAX_DELTA_NORM = 1.0
_PROBE = "The capital of France is Paris. 2 + 2 = 4. Tools: get_weather(city)."


@dataclass(frozen=True)
class Check:
    """One named check: whether it passed, why, and the number it was decided on (if any)."""

    name: str
    ok: bool
    detail: str
    value: float | None = None


@dataclass(frozen=True)
class ValidationReport:
    """All checks that ran; ``reason`` is the first failing check's detail (None when ok)."""

    checks: list[Check] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.checks)

    @property
    def reason(self) -> str | None:
        return next((f"{c.name}: {c.detail}" for c in self.checks if not c.ok), None)

    @property
    def failed(self) -> list[str]:
        return [c.name for c in self.checks if not c.ok]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (for ``--json`` output and run records)."""
        return {"ok": self.ok, "reason": self.reason, "checks": [dataclasses.asdict(c) for c in self.checks]}


def probe_ids(handle: BaseModelHandle, text: str = _PROBE) -> Tensor:
    """A short fixed input (1 x n token ids on the model's device) for output comparisons."""
    import torch

    vocab = int(handle.model.config.vocab_size)
    ids = handle.tokenizer(text, add_special_tokens=False)["input_ids"] if handle.tokenizer is not None else []
    ids = [i for i in ids if 0 <= i < vocab] or list(range(1, min(vocab, 17)))
    return torch.tensor([ids], dtype=torch.long, device=handle.device)


def _logits(handle: BaseModelHandle, hooks: LoraHooks, stack: Any, ids: Tensor) -> Tensor:
    import torch

    with torch.inference_mode(), hooks.activate(stack):
        return handle.model(input_ids=ids, use_cache=False).logits.float()


def _check_base(artifact: AdapterArtifact, handle: BaseModelHandle) -> Check:
    if artifact.manifest is None:
        return Check("base_model", True, "skipped: no manifest to say which base model the adapter is for")
    wanted = artifact.manifest.base_model.content_hash
    if wanted != handle.content_hash:
        return Check(
            "base_model", False,
            f"made for base {artifact.manifest.base_model.id!r} ({wanted[:12]}), but the loaded model "
            f"{handle.spec!r} is {handle.content_hash[:12]}",
        )  # fmt: skip
    return Check("base_model", True, f"content hash {wanted[:12]} matches")


def _check_targets(layers: Mapping[str, LoraWeights], handle: BaseModelHandle) -> Check:
    problems = []
    for module, lw in layers.items():
        try:
            linear = resolve_linear(handle.model, module)
        except AdapterError as exc:
            problems.append(str(exc))
            continue
        if lw.A.shape[1] != linear.in_features or lw.B.shape[0] != linear.out_features:
            problems.append(
                f"{module} has lora_A {tuple(lw.A.shape)} and lora_B {tuple(lw.B.shape)}, but the layer is "
                f"{linear.out_features}x{linear.in_features} (out x in)"
            )
    if problems:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        return Check("targets", False, problems[0] + more, float(len(problems)))
    return Check("targets", True, f"{len(layers)} modules exist with matching shapes")


def _check_finite(artifact: AdapterArtifact) -> Check:
    import torch

    bad = sorted(key for key, t in artifact.tensors.items() if not bool(torch.isfinite(t).all()))
    if bad:
        return Check("finite", False, f"{len(bad)} tensors hold NaN or Inf, first {bad[0]}", float(len(bad)))
    return Check("finite", True, f"all {len(artifact.tensors)} tensors are finite")


def _delta_sq(a: Tensor, b: Tensor) -> float:
    """``||B @ A||_F^2`` as trace((B^T B)(A A^T)): two r x r products instead of the out x in matrix."""
    a, b = a.double(), b.double()
    return float(((b.T @ b) * (a @ a.T)).sum().clamp_min(0))


def _worst_ratio(
    deltas: Iterable[tuple[str, Tensor, Tensor, float]], handle: BaseModelHandle
) -> tuple[float, str]:
    """The largest ``|factor| * ||B @ A||_F / ||W||_F`` over ``(module, A, B, factor)``, and its module."""
    worst, worst_module = 0.0, ""
    for module, a, b, factor in deltas:
        delta = abs(factor) * math.sqrt(_delta_sq(a, b))
        base = float(resolve_linear(handle.model, module).weight.detach().double().norm())
        ratio = delta / base if base > 0 else float("inf")
        if not math.isfinite(ratio):
            ratio = float("inf")  # NaN compares false with everything: count it as the worst
        if ratio > worst or not worst_module:
            worst, worst_module = ratio, module
    return worst, worst_module


def _check_norm(layers: Mapping[str, LoraWeights], handle: BaseModelHandle, limit: float,
                routing: RoutingSpec | None = None) -> Check:  # fmt: skip
    if routing is not None and routing.sections:  # served one section at a time: bound each as served
        from agent_sleep.adapters.sections import section_layers

        worst, worst_module, which = 0.0, "", 0
        for k in range(len(routing.sections)):
            cut = section_layers(layers, routing, k)
            ratio, module = _worst_ratio(((m, lw.A, lw.B, lw.scaling) for m, lw in cut.items()), handle)
            if ratio > worst or not worst_module:
                worst, worst_module, which = ratio, module, k
        detail = (f"largest ||delta W|| / ||W|| of its {len(routing.sections)} routed sections, each as served, is "
                  f"{worst:.3g} (section {which}) at {worst_module} (limit {limit:g})")
        return Check("delta_norm", bool(worst <= limit), detail, worst)
    worst, worst_module = _worst_ratio(((m, lw.A, lw.B, lw.scaling) for m, lw in layers.items()), handle)
    detail = f"largest ||delta W|| / ||W|| is {worst:.3g} at {worst_module} (limit {limit:g})"
    return Check("delta_norm", bool(worst <= limit), detail, worst)


def _served_bound(layers: Mapping[str, LoraWeights], routing: RoutingSpec | None) -> Mapping[str, LoraWeights]:
    """What a stack check counts for an adapter: ``layers``, or with routed sections, per layer the section whose
    delta there is largest (plus the unclaimed rows)."""
    if routing is None or not routing.sections:
        return layers
    from agent_sleep.adapters.sections import section_layers

    cuts = [section_layers(layers, routing, k) for k in range(len(routing.sections))]
    return {m: max((cut[m] for cut in cuts), key=lambda lw: _delta_sq(lw.A, lw.B)) for m in layers}


def _check_reload(
    artifact: AdapterArtifact, layers: Mapping[str, LoraWeights], handle: BaseModelHandle, tolerance: float
) -> Check:
    import torch

    try:
        fresh = read_adapter(artifact.path, verify=True, require_manifest=artifact.manifest is not None)
        fresh_layers = lora_layers(fresh)
    except AdapterError as exc:
        return Check("reload", False, f"re-reading {artifact.path} failed: {exc}")
    if set(fresh_layers) != set(layers):
        return Check("reload", False, f"{artifact.path} holds other modules than the adapter in memory")
    kwargs = {"dtype": handle.dtype, "device": handle.device}
    memory = prepare_stack("validate:memory", [("memory", layers, 1.0)], **kwargs)
    disk = prepare_stack("validate:disk", [("disk", fresh_layers, 1.0)], **kwargs)
    hooks = LoraHooks.attach(handle.model)
    ids = probe_ids(handle)
    expected, found = _logits(handle, hooks, memory, ids), _logits(handle, hooks, disk, ids)
    if not bool(torch.isfinite(expected).all()):
        return Check("reload", False, "the adapter makes the model produce NaN/Inf logits")
    diff = float((expected - found).abs().max())
    return Check("reload", diff <= tolerance, f"max |logit diff| memory vs disk {diff:.3g} (tol {tolerance:g})", diff)


def validate_adapter(
    artifact: AdapterArtifact,
    handle: BaseModelHandle,
    *,
    max_delta_norm: float = DEFAULT_MAX_DELTA_NORM,
    reload: bool = True,
    tolerance: float = 1e-5,
) -> ValidationReport:
    """Run the checks described in the module docstring and report them all.

    Does not take ``handle.lock``: nothing here changes the model, and a
    caller that already holds the lock (it is not reentrant) would deadlock.
    """
    checks = [_check_base(artifact, handle)]
    try:
        layers = lora_layers(artifact)
    except AdapterError as exc:
        return ValidationReport([*checks, Check("format", False, str(exc))])
    checks.append(_check_targets(layers, handle))
    checks.append(_check_finite(artifact))
    if not checks[-1].ok or not checks[-2].ok:
        return ValidationReport(checks)
    checks.append(_check_norm(layers, handle, max_delta_norm,
                              artifact.manifest.routing if artifact.manifest is not None else None))
    if reload and checks[-1].ok:
        checks.append(_check_reload(artifact, layers, handle, tolerance))
    return ValidationReport(checks)


def validate_stack(
    items: Sequence[StackItem], handle: BaseModelHandle, *, max_delta_norm: float = DEFAULT_MAX_DELTA_NORM,
    routing: Mapping[str, RoutingSpec | None] | None = None,
) -> ValidationReport:
    """Check a weighted stack as it will run: ``weights``, then ``stack_delta_norm`` (see the module docstring).
    ``routing``: each adapter's routing spec, where it has one (sections change what a request gets).

    Meant after :func:`validate_adapter` passed for every adapter (it does not
    repeat the per-adapter checks). Reads only the model's weight norms.
    """
    import torch

    problems = []
    for adapter, _, weight in items:
        try:
            check_weight(weight, adapter)
        except InvalidInputError as exc:
            problems.append(str(exc))
    if problems:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        return ValidationReport([Check("weights", False, problems[0] + more, float(len(problems)))])
    checks = [Check("weights", True, f"{len(items)} weights are finite, non-zero and at most {MAX_WEIGHT:g} in size")]
    if not items:
        return ValidationReport([*checks, Check("stack_delta_norm", True, "no adapters: the base model", 0.0)])
    blocks: dict[str, list[tuple[Tensor, Tensor]]] = {}
    for adapter, layers, weight in items:
        for module, lw in _served_bound(layers, (routing or {}).get(adapter)).items():
            blocks.setdefault(module, []).append((lw.A.double(), lw.B.double() * (float(weight) * lw.scaling)))
    try:
        # The stack's delta at a layer is sum_i w_i s_i B_i A_i = [B_1 w_1 s_1 | B_2 ...] @ [A_1; A_2; ...].
        deltas = ((m, torch.cat([a for a, _ in p], dim=0), torch.cat([b for _, b in p], dim=1), 1.0)
                  for m, p in blocks.items())
        worst, module = _worst_ratio(deltas, handle)
    except (AdapterError, RuntimeError) as exc:  # shapes that do not fit each other or the model
        return ValidationReport([*checks, Check("stack_delta_norm", False, f"cannot combine the adapters: {exc}")])
    detail = (f"largest ||weighted sum of delta W|| / ||W|| of the {len(items)}-adapter stack is {worst:.3g} "
              f"at {module} (limit {max_delta_norm:g})")
    checks.append(Check("stack_delta_norm", bool(worst <= max_delta_norm), detail, worst))
    return ValidationReport(checks)


def peft_equivalence(
    folders: str | Path | Sequence[str | Path], handle: BaseModelHandle, *, tolerance: float = 1e-5
) -> Check:
    """Compare our hook runtime with PEFT on the probe input; all folders active at weight 1.

    PEFT runs on a deep copy of ``handle.model`` (our hooks stripped from the
    copy), so the shared model is never wrapped. Costs one model copy of memory.
    """
    import copy

    import torch
    from peft import PeftModel

    paths = [Path(folders)] if isinstance(folders, (str, Path)) else [Path(f) for f in folders]
    artifacts = [read_adapter(p, require_manifest=False) for p in paths]
    items = [(f"a{i}", lora_layers(a), 1.0) for i, a in enumerate(artifacts)]
    stack = prepare_stack("peft-equivalence", items, dtype=handle.dtype, device=handle.device)
    hooks = LoraHooks.attach(handle.model)
    ids = probe_ids(handle)
    ours = _logits(handle, hooks, stack, ids)

    twin = copy.deepcopy(handle.model)
    strip_lora_hooks(twin)
    names = [f"eq_{i}" for i in range(len(paths))]  # short names like "a" clash with PEFT's "lora_" prefix
    peft_model = PeftModel.from_pretrained(twin, str(paths[0]), adapter_name=names[0])
    for name, path in zip(names[1:], paths[1:], strict=True):
        peft_model.load_adapter(str(path), adapter_name=name)
    peft_model.base_model.set_adapter(names, inference_mode=True)
    peft_model.eval()
    with torch.inference_mode():
        theirs = peft_model(input_ids=ids, use_cache=False).logits.float()
    diff = float((ours - theirs).abs().max())
    detail = f"max |logit diff| hooks vs PEFT {diff:.3g} over {len(paths)} adapter(s) (tol {tolerance:g})"
    return Check("peft_equivalence", diff <= tolerance, detail, diff)
