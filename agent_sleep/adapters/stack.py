"""Run a base model with a weighted stack of LoRA adapters, chosen per context, without changing it.

:func:`prepare_stack` turns adapters into ready-to-run tensors once: per
module either one ``(A_cat, B_cat)`` pair with every adapter's
``weight * scaling`` folded into its block of B and the ranks concatenated
(``combine="cat"``: the exact sum of the weighted deltas in one matmul pair),
or one pair per adapter (``combine="sum"``).

:class:`LoraHooks` puts a forward hook on each target ``nn.Linear`` once. The
hook adds ``(x @ A.T) @ B.T`` for the stack active in the *current context*
(a :class:`contextvars.ContextVar`), and returns the output untouched, bit for
bit, when none is. So switching what is live is swapping one Python reference
(microseconds); different threads (or asyncio tasks) can run different stacks
on one shared model at the same time; and PEFT can still wrap the same model,
since no module is replaced.

Stack weights a deployment may use are checked by :func:`check_weight`: finite,
non-zero, at most :data:`MAX_WEIGHT` in size. :func:`prepare_stack` itself is
plain arithmetic and takes any finite weight (tests and merges use 0 and
negative ones).

Not here: reading folders (``artifact``), offline merging (``merge``), deciding
what should be live (the registry and runtime).
"""

from __future__ import annotations

import contextlib
import contextvars
import math
import sys
import threading
import weakref
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Literal

from agent_sleep.errors import IncompatibleAdapterError, InvalidInputError

if TYPE_CHECKING:
    from torch import Tensor, nn

    from agent_sleep.adapters.artifact import LoraWeights

__all__ = [
    "MAX_WEIGHT", "Combine", "LoraHooks", "PreparedStack", "StackItem", "check_weight", "prepare_stack",
    "resolve_linear", "stack_label", "strip_lora_hooks",
]  # fmt: skip

Combine = Literal["cat", "sum"]
StackItem = tuple[str, "Mapping[str, LoraWeights]", float]
"""(adapter name, its layers from :func:`~agent_sleep.adapters.artifact.lora_layers`, weight)."""

_MARK = "_agent_sleep_lora_hook"

# The largest |weight| of one adapter in a deployed stack. A LoRA is trained at weight 1; a few times
# that still steers, far beyond it the delta dominates the layer (the stack's combined delta-norm
# check bounds the effect too). Negative weights subtract a skill (task negation); 0 is refused
# because a skill that contributes nothing belongs out of the stack (``remove-skill``).
MAX_WEIGHT = 4.0


def stack_label(items: Sequence[tuple[str, float]]) -> str:
    """A stack of (adapter, weight) as one name: ``a@v1+b@v2*0.5``; the empty stack is ``base``."""
    return "+".join(a if w == 1.0 else f"{a}*{w:g}" for a, w in items) or "base"


def check_weight(weight: object, adapter: str = "adapter") -> float:
    """``weight`` as a float if a stack may use it (finite, non-zero, ``|w| <= MAX_WEIGHT``), else InvalidInputError."""
    try:
        value = float(weight)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise InvalidInputError(f"weight of {adapter!r} must be a number, got {weight!r}") from None
    if isinstance(weight, bool) or not math.isfinite(value) or value == 0.0 or abs(value) > MAX_WEIGHT:
        raise InvalidInputError(
            f"weight of {adapter!r} must be a finite number with 0 < |weight| <= {MAX_WEIGHT:g}, got {weight!r}"
        )
    return value


@dataclass(frozen=True, eq=False)
class PreparedStack:
    """Adapters ready to run: per module a tuple of (A [r, in], B [out, r]) blocks, scaling folded into B.

    With ``combine="cat"`` every module has exactly one block whose rank is the
    sum of the adapters' ranks there; with ``"sum"`` one block per adapter.
    Treat the tensors as read-only: several threads may be running them.
    """

    name: str
    items: tuple[tuple[str, float], ...]
    layers: Mapping[str, tuple[tuple[Tensor, Tensor], ...]]
    combine: Combine
    total_rank: int
    nbytes: int

    @property
    def modules(self) -> frozenset[str]:
        return frozenset(self.layers)


def prepare_stack(
    name: str,
    items: Sequence[StackItem],
    *,
    dtype: Any = None,
    device: Any = None,
    combine: Combine = "cat",
) -> PreparedStack:
    """Fold weights and scalings into B and (for ``"cat"``) concatenate ranks; see :class:`PreparedStack`.

    ``dtype``/``device`` should be the model's (default float32 on CPU). The
    arithmetic is done in float32 before the cast, so bf16 stacks lose no
    more than one rounding. Adapters with weight 0 contribute nothing.
    """
    import torch

    if combine not in ("cat", "sum"):
        raise InvalidInputError(f"combine must be 'cat' or 'sum', not {combine!r}")
    dtype = dtype or torch.float32
    device = torch.device(device or "cpu")
    blocks: dict[str, list[tuple[Tensor, Tensor]]] = {}
    dims: dict[str, tuple[int, int]] = {}
    for adapter, layers, weight in items:
        weight = float(weight)
        if not math.isfinite(weight):
            raise InvalidInputError(f"stack {name!r}: weight of {adapter!r} must be finite, got {weight}")
        if weight == 0.0:
            continue
        for module, lw in layers.items():
            a = lw.A.detach().to(dtype=torch.float32)
            b = lw.B.detach().to(dtype=torch.float32) * (weight * lw.scaling)
            shape = (int(b.shape[0]), int(a.shape[1]))
            if dims.setdefault(module, shape) != shape:
                raise IncompatibleAdapterError(
                    f"stack {name!r}: adapter {adapter!r} changes {module} as {shape[0]}x{shape[1]} but an "
                    f"earlier adapter as {dims[module][0]}x{dims[module][1]}; they are for different models"
                )
            blocks.setdefault(module, []).append((a, b))

    prepared: dict[str, tuple[tuple[Tensor, Tensor], ...]] = {}
    for module, pairs in blocks.items():
        if combine == "cat" and len(pairs) > 1:
            pairs = [(torch.cat([a for a, _ in pairs], dim=0), torch.cat([b for _, b in pairs], dim=1))]
        prepared[module] = tuple(
            # copy=True: the stack must not alias the caller's tensors, which it could otherwise change under us.
            (a.to(device=device, dtype=dtype, copy=True).contiguous(), b.to(device=device, dtype=dtype).contiguous())
            for a, b in pairs
        )
    total_rank = max((sum(int(a.shape[0]) for a, _ in p) for p in prepared.values()), default=0)
    nbytes = sum(t.numel() * t.element_size() for p in prepared.values() for pair in p for t in pair)
    return PreparedStack(
        name=name,
        items=tuple((adapter, float(weight)) for adapter, _, weight in items),
        layers=MappingProxyType(prepared),
        combine=combine,
        total_rank=total_rank,
        nbytes=nbytes,
    )


def _make_hook(active: contextvars.ContextVar[PreparedStack | None], name: str) -> Any:
    from torch.nn.functional import linear

    def hook(module: Any, args: tuple[Any, ...], kwargs: dict[str, Any], output: Any) -> Any:
        stack = active.get()
        if stack is None:
            return None  # None keeps the module's own output object: bit-identical to the base model
        blocks = stack.layers.get(name)
        if blocks is None:
            return None
        x = args[0] if args else kwargs["input"]
        for a, b in blocks:
            delta = linear(linear(x if x.dtype == a.dtype else x.to(a.dtype), a), b)
            output = output + (delta if delta.dtype == output.dtype else delta.to(output.dtype))
        return output

    setattr(hook, _MARK, True)
    return hook


def strip_lora_hooks(model: Any) -> int:
    """Remove our hooks from ``model`` (e.g. from a ``copy.deepcopy`` of a hooked model); returns how many."""
    removed = 0
    for module in model.modules():
        for hook_id, fn in list(module._forward_hooks.items()):
            if getattr(fn, _MARK, False):
                del module._forward_hooks[hook_id]
                module._forward_hooks_with_kwargs.pop(hook_id, None)
                removed += 1
    return removed


def _root(model: Any) -> Any:
    """The transformers model under any PEFT wrapping, which module paths are relative to."""
    if "peft" in sys.modules:
        from peft import PeftModel
        from peft.tuners.tuners_utils import BaseTuner

        if isinstance(model, PeftModel):
            return model.get_base_model()
        if isinstance(model, BaseTuner):
            return model.model
    return model


def resolve_linear(model: Any, name: str) -> nn.Linear:
    """The ``nn.Linear`` at module path ``name`` (under any PEFT wrapping); IncompatibleAdapterError if none."""
    from torch import nn

    try:
        module = _root(model).get_submodule(name)
    except AttributeError as exc:
        raise IncompatibleAdapterError(f"the model has no module {name!r}") from exc
    if hasattr(module, "base_layer") and hasattr(module, "get_base_layer"):
        module = module.get_base_layer()  # a PEFT LoraLayer wrapping the original Linear
    if not isinstance(module, nn.Linear):
        raise IncompatibleAdapterError(f"module {name!r} is a {type(module).__name__}, not a torch.nn.Linear")
    return module


_REGISTRY: weakref.WeakKeyDictionary[Any, LoraHooks] = weakref.WeakKeyDictionary()
_REGISTRY_LOCK = threading.Lock()


class LoraHooks:
    """Forward hooks on one model's target linear layers; use :meth:`attach`, not the constructor.

    Hooks are installed once per module and stay; with no stack active they
    cost one ContextVar lookup per call and change nothing. Install them
    (``attach(model, names)`` or the first ``activate``) before other threads
    serve, to keep registration out of the hot path.
    """

    def __init__(self, root: nn.Module) -> None:
        self._root = weakref.ref(root)  # the registry is keyed weakly by the model; don't keep it alive
        self._active: contextvars.ContextVar[PreparedStack | None] = contextvars.ContextVar(
            f"agent_sleep_lora_stack_{id(self):x}", default=None
        )
        self._handles: dict[str, Any] = {}
        self._dims: dict[str, tuple[int, int]] = {}  # module -> (out_features, in_features)
        self._checked: weakref.WeakSet[PreparedStack] = weakref.WeakSet()
        self._lock = threading.Lock()

    @classmethod
    def attach(cls, model: Any, module_names: Iterable[str] = ()) -> LoraHooks:
        """The hooks of ``model`` (created on first use; a PeftModel wrapping it shares them)."""
        root = _root(model)
        with _REGISTRY_LOCK:
            hooks = _REGISTRY.get(root)
            if hooks is None:
                hooks = _REGISTRY[root] = cls(root)
        hooks.ensure(module_names)
        return hooks

    @property
    def hooked(self) -> frozenset[str]:
        return frozenset(self._handles)

    @property
    def active(self) -> PreparedStack | None:
        """The stack active in the calling context, if any."""
        return self._active.get()

    def ensure(self, module_names: Iterable[str]) -> None:
        """Hook these modules if not yet hooked; IncompatibleAdapterError if one is missing or not Linear."""
        missing = [n for n in module_names if n not in self._handles]
        if not missing:
            return
        root = self._root()
        if root is None:
            raise IncompatibleAdapterError("the model these hooks belonged to no longer exists")
        with self._lock:
            for name in missing:
                if name in self._handles:
                    continue
                module = resolve_linear(root, name)
                # Registering while another thread runs this module is safe under the GIL: torch
                # snapshots the hook dict into a tuple in one C-level step before calling hooks.
                self._handles[name] = module.register_forward_hook(_make_hook(self._active, name), with_kwargs=True)
                self._dims[name] = (module.out_features, module.in_features)

    def check(self, stack: PreparedStack) -> None:
        """Hook the stack's modules and check its shapes and device against the model (once per stack)."""
        if stack in self._checked:
            return
        self.ensure(stack.layers)
        root = self._root()
        for module, blocks in stack.layers.items():
            out_f, in_f = self._dims[module]
            device = resolve_linear(root, module).weight.device
            for a, b in blocks:
                if a.shape[1] != in_f or b.shape[0] != out_f:
                    raise IncompatibleAdapterError(
                        f"stack {stack.name!r} changes {module} as {b.shape[0]}x{a.shape[1]}, "
                        f"but the model's layer is {out_f}x{in_f}"
                    )
                if a.device != device:
                    raise IncompatibleAdapterError(
                        f"stack {stack.name!r} is on {a.device} but {module} is on {device}; "
                        f"prepare it with device={str(device)!r}"
                    )
        with self._lock:
            self._checked.add(stack)

    @contextlib.contextmanager
    def activate(self, stack: PreparedStack | None) -> Iterator[PreparedStack | None]:
        """Run the block with ``stack`` live in this context only (``None``: the plain base model).

        Enter and leave it in the same thread and never across a ``yield`` that
        another thread may resume; per request or per decode step is cheap.
        """
        if stack is not None:
            self.check(stack)
        token = self._active.set(stack)
        try:
            yield stack
        finally:
            self._active.reset(token)

    def detach(self) -> None:
        """Remove every hook from the model (stacks active elsewhere stop applying)."""
        with self._lock:
            for handle in self._handles.values():
                handle.remove()
            self._handles.clear()
            self._dims.clear()
            self._checked = weakref.WeakSet()
        root = self._root()
        with _REGISTRY_LOCK:
            if root is not None and _REGISTRY.get(root) is self:
                del _REGISTRY[root]
