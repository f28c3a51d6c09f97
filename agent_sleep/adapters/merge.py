"""Merge several adapters into one new adapter, offline.

Each function takes the same ``(name, layers, weight)`` items as
:func:`~agent_sleep.adapters.stack.prepare_stack` and returns
``(tensors, lora_config)`` ready for
:func:`~agent_sleep.adapters.artifact.write_adapter`. Every result is exported
with ``lora_alpha == r`` (scaling 1), since weights and scalings are already
folded into the tensors.

* :func:`materialize_cat` is exact: ranks are concatenated, so the result is
  the weighted sum of the deltas. Modules that only some adapters target get
  zero blocks, so the rank is uniform (vLLM needs one rank per adapter).
* :func:`merge_linear` and :func:`merge_ties` are lossy: they form each
  module's full delta, combine (weighted sum; or TIES: trim, elect sign,
  disjoint mean), then truncate back to ``rank`` with an SVD, splitting the
  singular values as a square root between A and B.

Not here: deciding whether a merge is good (``validation`` and the gate).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from agent_sleep.adapters.lora_config import peft_key, peft_lora_config
from agent_sleep.errors import IncompatibleAdapterError, InvalidInputError

if TYPE_CHECKING:
    from torch import Tensor

    from agent_sleep.adapters.stack import StackItem

__all__ = ["materialize_cat", "merge_linear", "merge_ties"]

Merged = tuple[dict[str, "Tensor"], dict[str, Any]]


def _weights(items: Sequence[StackItem]) -> list[float]:
    """The items' weights as floats; a NaN or infinite one would poison every merged tensor."""
    weights = [float(w) for _, _, w in items]
    for (adapter, _, _), weight in zip(items, weights, strict=True):
        if not math.isfinite(weight):
            raise InvalidInputError(f"weight of {adapter!r} must be finite, got {weight}")
    return weights


def _blocks(items: Sequence[StackItem]) -> dict[str, list[tuple[Tensor, Tensor]]]:
    """Module -> [(A, weight*scaling*B)] in float32, in item order; checks that shapes agree."""
    import torch

    if not items:
        raise InvalidInputError("nothing to merge: no adapters given")
    out: dict[str, list[tuple[Tensor, Tensor]]] = {}
    dims: dict[str, tuple[int, int]] = {}
    for (adapter, layers, _), weight in zip(items, _weights(items), strict=True):
        for module, lw in layers.items():
            a = lw.A.detach().to(device="cpu", dtype=torch.float32)
            b = lw.B.detach().to(device="cpu", dtype=torch.float32) * (weight * lw.scaling)
            shape = (int(b.shape[0]), int(a.shape[1]))
            if dims.setdefault(module, shape) != shape:
                raise IncompatibleAdapterError(f"adapter {adapter!r} gives {module} another shape than earlier ones")
            out.setdefault(module, []).append((a, b))
    return out


def _export(layers: Mapping[str, tuple[Tensor, Tensor]], rank: int) -> Merged:
    tensors: dict[str, Tensor] = {}
    for module, (a, b) in sorted(layers.items()):
        tensors[peft_key(module, "A")] = a.contiguous()
        tensors[peft_key(module, "B")] = b.contiguous()
    targets = sorted({module.rsplit(".", 1)[-1] for module in layers})
    return tensors, peft_lora_config(r=rank, lora_alpha=rank, target_modules=targets)


def materialize_cat(items: Sequence[StackItem]) -> Merged:
    """One adapter equal to the weighted sum of ``items`` (rank = largest per-module rank sum)."""
    import torch

    blocks = _blocks(items)
    rank = max(sum(int(a.shape[0]) for a, _ in pairs) for pairs in blocks.values())
    layers: dict[str, tuple[Tensor, Tensor]] = {}
    for module, pairs in blocks.items():
        a = torch.cat([a for a, _ in pairs], dim=0)
        b = torch.cat([b for _, b in pairs], dim=1)
        pad = rank - a.shape[0]
        if pad:  # zero rows of A / columns of B add nothing to B @ A
            a = torch.cat([a, a.new_zeros(pad, a.shape[1])], dim=0)
            b = torch.cat([b, b.new_zeros(b.shape[0], pad)], dim=1)
        layers[module] = (a, b)
    return _export(layers, rank)


def _factor(u: Tensor, s: Tensor, vh: Tensor, rank: int) -> tuple[Tensor, Tensor]:
    """Best rank-``rank`` (A, B) from an SVD, sqrt(S) on each side; zero-padded if fewer values exist."""
    import torch

    k = min(rank, int(s.shape[0]))
    root = s[:k].clamp_min(0).sqrt()
    a = root[:, None] * vh[:k]
    b = u[:, :k] * root[None, :]
    if k < rank:
        a = torch.cat([a, a.new_zeros(rank - k, a.shape[1])], dim=0)
        b = torch.cat([b, b.new_zeros(b.shape[0], rank - k)], dim=1)
    return a.contiguous(), b.contiguous()


def _check_rank(rank: int) -> None:
    if not isinstance(rank, int) or isinstance(rank, bool) or rank < 1:
        raise InvalidInputError(f"rank must be a positive integer, got {rank!r}")


def merge_linear(items: Sequence[StackItem], rank: int) -> Merged:
    """Weighted sum of the deltas, truncated to ``rank`` (the best approximation in Frobenius norm).

    Never forms the full ``out x in`` matrix: with ``B_cat = Qb Rb`` and
    ``A_cat^T = Qa Ra`` the sum is ``Qb (Rb Ra^T) Qa^T``, so an SVD of the
    small ``R x R`` core suffices. Exact when ``rank`` >= the ranks' sum.
    """
    import torch

    _check_rank(rank)
    layers: dict[str, tuple[Tensor, Tensor]] = {}
    for module, pairs in _blocks(items).items():
        a_cat = torch.cat([a for a, _ in pairs], dim=0)
        b_cat = torch.cat([b for _, b in pairs], dim=1)
        qb, rb = torch.linalg.qr(b_cat)
        qa, ra = torch.linalg.qr(a_cat.T)
        u, s, vh = torch.linalg.svd(rb @ ra.T, full_matrices=False)
        layers[module] = _factor(qb @ u, s, vh @ qa.T, rank)
    return _export(layers, rank)


def merge_ties(items: Sequence[StackItem], rank: int, density: float = 0.2) -> Merged:
    """TIES merge of the deltas (Yadav et al. 2023, as in PEFT), truncated to ``rank``.

    Per module and adapter, keep the ``density`` fraction of largest-magnitude
    entries of ``scaling * B @ A``; elect each entry's sign from the sum; average
    the weighted entries that agree with it (disjoint mean); then SVD. Adapters
    that do not target a module count as all-zero there.
    """
    import torch

    _check_rank(rank)
    if not 0.0 < density <= 1.0:
        raise InvalidInputError(f"density must be in (0, 1], got {density!r}")
    weights = _weights(items)
    unweighted = [(name, layers, 1.0) for name, layers, _ in items]
    blocks = _blocks(unweighted)
    owners = {module: [i for i, (_, layers, _) in enumerate(items) if module in layers] for module in blocks}
    layers_out: dict[str, tuple[Tensor, Tensor]] = {}
    for module, pairs in blocks.items():
        deltas = []
        for a, b in pairs:
            delta = b @ a
            k = int(density * delta.numel())
            if k < delta.numel():
                keep = torch.zeros(delta.numel(), dtype=torch.bool)
                if k > 0:
                    keep[delta.abs().reshape(-1).topk(k).indices] = True
                delta = delta * keep.reshape(delta.shape)
            deltas.append(delta)
        stacked = torch.stack(deltas)
        elected = torch.where(stacked.sum(dim=0) >= 0, 1.0, -1.0)
        agree = stacked.sign() == elected  # zeros (trimmed) never agree
        w = torch.tensor([weights[i] for i in owners[module]], dtype=torch.float32)[:, None, None]
        merged = (stacked * w * agree).sum(dim=0) / agree.sum(dim=0).clamp_min(1)
        u, s, vh = torch.linalg.svd(merged, full_matrices=False)
        layers_out[module] = _factor(u, s, vh, rank)
    return _export(layers_out, rank)
