"""Training one LoRA by gradient descent on a shared base model: the pieces ``gradient_cd`` and ``sft`` share.

A generator that trains supplies the loss of one step; this module owns the rest:
the LoRA parameters (PEFT's initialisation and scaling, so the exported folder loads
unchanged in ``peft.PeftModel.from_pretrained``), AdamW with a cosine decay to 10 %,
gradient clipping, the step and wall-clock budgets, a progress bar, and writing the
result as an adapter folder with its manifest.

The LoRA runs through :class:`~agent_sleep.adapters.stack.LoraHooks` in the calling
context only: the shared base model is never wrapped (no ``get_peft_model``) or
changed, gets no gradient buffers, and other threads serving from it never see the
adapter in training. Not here: what a step's loss is (each generator's own module).
"""

from __future__ import annotations

import math
import random
import re
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Literal, TypeVar

from agent_sleep.adapters.lora_config import peft_key, peft_lora_config
from agent_sleep.adapters.manifest import AdapterManifest, AdapterSources, BaseModelRef, GeneratorInfo
from agent_sleep.errors import InvalidInputError

if TYPE_CHECKING:
    from torch import Tensor

    from agent_sleep.generators.result import GeneratedAdapter
    from agent_sleep.models.loader import BaseModelHandle

__all__ = [
    "LoraParams", "Stopped", "TrainLog", "cycle_batches", "export_lora", "first_lora_layer", "frozen_hidden",
    "init_lora", "lora_targets", "train_lora", "write_trained",
]  # fmt: skip

Stopped = Literal["max_steps", "time_budget", "converged"]
LoraParams = dict[str, tuple[Any, Any]]
"""Module path -> the trainable (A ``[r, in]``, B ``[out, r]``) pair, unscaled."""
T = TypeVar("T")
_LAYER = re.compile(r"(?:^|\.)layers\.(\d+)\.")


def lora_targets(handle: BaseModelHandle, names: Sequence[str]) -> dict[str, Any]:
    """The linear layers ``names`` picks: layer names (``q_proj``: every layer's) or full module paths."""
    from torch import nn

    found = {
        path: module
        for path, module in handle.model.named_modules()
        if isinstance(module, nn.Linear) and any(path == n or path.endswith("." + n) for n in names)
    }
    if not found:
        raise InvalidInputError(f"the model has no linear layers named {list(names)} to put a LoRA on")
    return found


def init_lora(modules: Mapping[str, Any], rank: int, seed: int, device: Any) -> LoraParams:
    """PEFT's default LoRA init: A ~ Kaiming-uniform(a=sqrt 5), B = 0 (a no-op at step 0), in fp32."""
    import torch

    g = torch.Generator().manual_seed(seed)
    params = {}
    for path, linear in sorted(modules.items()):
        a = torch.empty(rank, linear.in_features)
        torch.nn.init.kaiming_uniform_(a, a=math.sqrt(5), generator=g)
        b = torch.zeros(linear.out_features, rank)
        params[path] = (torch.nn.Parameter(a.to(device)), torch.nn.Parameter(b.to(device)))
    return params


def first_lora_layer(paths: Sequence[str]) -> int:
    """Index of the lowest decoder block with a LoRA: blocks below it are frozen, so their output can be cached."""
    found = [_LAYER.search(p) for p in paths]
    return min(int(m.group(1)) for m in found) if all(found) else 0


def frozen_hidden(handle: BaseModelHandle, sequences: Sequence[Sequence[int]], start: int) -> list[Tensor]:
    """Each token sequence's hidden states entering block ``start`` (the blocks below hold no LoRA, so they
    are frozen): computed once, reused by every training step."""
    import torch

    from agent_sleep.generators.backbone import hidden_after

    out = []
    # no_grad, not inference_mode: these tensors go into the autograd graph of every step.
    with handle.lock, torch.no_grad():
        for ids in sequences:
            batch = torch.tensor([list(ids)], device=handle.device)
            out.append(hidden_after(handle.model, batch, torch.ones_like(batch), start)[0])
    return out


def cycle_batches(items: Sequence[T], batch_size: int, seed: int) -> Iterator[list[T]]:
    """Endless batches: epochs of the items shuffled by ``seed``, batches cut across epoch boundaries."""
    order = random.Random(seed)
    queue: list[T] = []
    while True:
        if len(queue) < batch_size:
            epoch = list(items)
            order.shuffle(epoch)
            queue += epoch * max(1, math.ceil(batch_size / len(epoch)))
        batch, queue = queue[:batch_size], queue[batch_size:]
        yield batch


def _stack(params: LoraParams, scaling: float, rank: int, name: str) -> Any:
    """A PreparedStack over the live parameters (built per step so the graph reaches them)."""
    from agent_sleep.adapters.stack import PreparedStack

    layers = {path: ((a, b * scaling),) for path, (a, b) in params.items()}
    return PreparedStack(name=f"{name}:training", items=(("training", 1.0),), layers=MappingProxyType(layers),
                         combine="cat", total_rank=rank, nbytes=0)  # fmt: skip


def _progress_bar(enabled: bool | None, total: int, desc: str) -> Any:
    from tqdm.auto import tqdm

    show = sys.stderr.isatty() if enabled is None else enabled
    return tqdm(total=total, desc=desc, unit="step", disable=not show, leave=False)


@dataclass(frozen=True)
class TrainLog:
    """How a :func:`train_lora` run went: the loss of every step, what ended it, its wall-clock seconds."""

    losses: tuple[float, ...]
    stopped: Stopped
    seconds: float


def train_lora(
    handle: BaseModelHandle,
    params: LoraParams,
    step_loss: Callable[[Any, Any], Tensor],
    *,
    name: str,
    label: str,
    rank: int,
    scaling: float,
    lr: float,
    weight_decay: float,
    max_steps: int,
    time_budget_s: float,
    max_grad_norm: float = 1.0,
    converged: Callable[[Sequence[float]], bool] | None = None,
    progress: bool | None = None,
    on_step: Callable[[int, float], None] | None = None,
    clock: Callable[[], float] = time.perf_counter,
) -> TrainLog:
    """Train ``params`` by AdamW until ``max_steps``, ``time_budget_s`` of ``clock`` time, or ``converged``.

    ``step_loss(hooks, stack)`` returns one step's loss with the LoRA active through
    ``hooks.activate(stack)``; it runs under ``handle.lock`` (with the backward pass), so the
    caller must not hold that lock. At least one step always runs; the step that spends the
    budget finishes and no step starts after it. ``converged(losses)``, asked after each step,
    ends the run early. ``on_step(step, loss)`` is called after each step. A non-finite loss
    raises InvalidInputError naming the step. ``name`` names the stack in training (``name:training``),
    ``label`` the run in the progress bar and in errors.
    """
    import torch

    from agent_sleep.adapters.stack import LoraHooks

    leaves = [p for pair in params.values() for p in pair]
    optimizer = torch.optim.AdamW(leaves, lr=lr, weight_decay=weight_decay)
    hooks = LoraHooks.attach(handle.model, list(params))
    losses: list[float] = []
    stopped: Stopped = "max_steps"
    start = clock()
    bar = _progress_bar(progress, max_steps, label)
    try:
        for step in range(1, max_steps + 1):
            # A cosine decay to 10% over max_steps; with a short time budget most runs stay near lr.
            for group in optimizer.param_groups:
                group["lr"] = lr * (0.55 + 0.45 * math.cos(math.pi * (step - 1) / max_steps))
            with handle.lock:
                loss = step_loss(hooks, _stack(params, scaling, rank, name))
                # autograd.grad, not backward: no gradient buffers appear on the shared base weights.
                grads = torch.autograd.grad(loss, leaves)
            value = float(loss.detach())
            if not math.isfinite(value):
                raise InvalidInputError(f"{label} diverged (loss {value} at step {step})")
            for p, g in zip(leaves, grads, strict=True):
                p.grad = g
            torch.nn.utils.clip_grad_norm_(leaves, max_grad_norm)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            losses.append(value)
            bar.update(1)
            bar.set_postfix(loss=f"{value:.3f}")
            if on_step is not None:
                on_step(step, value)
            if step == max_steps:
                break
            if converged is not None and converged(losses):
                stopped = "converged"
                break
            if clock() - start >= time_budget_s:
                stopped = "time_budget"
                break
    finally:
        bar.close()
    return TrainLog(losses=tuple(losses), stopped=stopped, seconds=clock() - start)


def export_lora(params: LoraParams, rank: int, lora_alpha: float,
                target_modules: Sequence[str]) -> tuple[dict[str, Tensor], dict[str, Any]]:  # fmt: skip
    """PEFT-keyed fp32 CPU tensors of ``params``, and the adapter config to save them with."""
    import torch

    tensors: dict[str, Tensor] = {}
    for path, (a, b) in params.items():
        tensors[peft_key(path, "A")] = a.detach().to("cpu", torch.float32).contiguous()
        tensors[peft_key(path, "B")] = b.detach().to("cpu", torch.float32).contiguous()
    return tensors, peft_lora_config(rank, lora_alpha, sorted(set(target_modules)))


def write_trained(
    result: GeneratedAdapter,
    dest: str | Path,
    *,
    handle: BaseModelHandle,
    generator: str,
    version: str,
    training: Mapping[str, Any],
    sources: AdapterSources | Mapping[str, Any] | None = None,
    skill: str | None = None,
) -> Path:
    """Write ``result`` as an adapter folder at ``dest``: PEFT files plus a manifest naming ``generator``
    and its ``version``, the base model and its content hash, ``sources`` and the ``training`` record."""
    from agent_sleep.adapters.artifact import write_adapter

    if sources is not None and not isinstance(sources, AdapterSources):
        sources = AdapterSources.model_validate(dict(sources))
    manifest = AdapterManifest(
        skill=skill,
        generator=GeneratorInfo(name=generator, version=version),
        base_model=BaseModelRef(id=handle.spec, content_hash=handle.content_hash),
        sources=sources or AdapterSources(),
        training=dict(training),
    )
    config = {**result.lora_config, "base_model_name_or_path": handle.spec}
    return write_adapter(dest, result.tensors, config, manifest)
