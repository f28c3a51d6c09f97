"""Partial forward passes through a frozen llama/mistral/qwen-style causal LM, and per-row LoRA hooks.

Doc-to-LoRA needs three things the stock ``forward`` does not give cheaply:
the hidden states after the first k blocks only (the document encoder exits
early), a run of blocks k..n from cached hidden states (meta-training caches
the layers below the first LoRA layer), and a *different* LoRA for every row
of a batch, differentiable (one generated adapter per document).
:class:`RowLora` adds ``scale * (x @ A_i.T) @ B_i.T`` to row i of each target
``nn.Linear`` output while active in the current context and is a bit-exact
no-op otherwise, like :class:`agent_sleep.adapters.stack.LoraHooks`.

Padding is on the right everywhere here: with a causal mask no real token
ever attends to a pad, so masks only need the key-padding part.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch import Tensor

from agent_sleep.errors import UnsupportedModelError

__all__ = ["RowLora", "causal_mask", "hidden_after", "logits_at", "pad_ids", "run_blocks"]


def causal_mask(attention_mask: Tensor, dtype: torch.dtype) -> Tensor:
    """Additive mask ``[B, 1, T, T]``: causal, and keys that are padding (0 in ``attention_mask``) hidden."""
    b, t = attention_mask.shape
    causal = torch.ones(t, t, dtype=torch.bool, device=attention_mask.device).tril()
    allowed = causal[None, None] & attention_mask[:, None, None, :].bool()
    allowed |= torch.eye(t, dtype=torch.bool, device=attention_mask.device)[None, None]  # pad rows see themselves
    mask = torch.zeros(b, 1, t, t, dtype=dtype, device=attention_mask.device)
    return mask.masked_fill(~allowed, torch.finfo(dtype).min)


def _inner(model: Any) -> Any:
    inner = getattr(model, "model", None)
    if inner is None or not hasattr(inner, "layers"):
        raise UnsupportedModelError(
            f"{type(model).__name__} is not a llama/mistral/qwen-style *ForCausalLM (no .model.layers)"
        )
    return inner


def run_blocks(model: Any, hidden: Tensor, attention_mask: Tensor, start: int, stop: int) -> Tensor:
    """Run decoder blocks ``start..stop-1`` on ``hidden`` ``[B, T, H]`` (positions 0..T-1)."""
    inner = _inner(model)
    pos = torch.arange(hidden.shape[1], device=hidden.device)[None].expand(hidden.shape[0], -1)
    rope = inner.rotary_emb(hidden, position_ids=pos)
    mask = causal_mask(attention_mask, hidden.dtype)
    for layer in inner.layers[start:stop]:
        out = layer(hidden, attention_mask=mask, position_embeddings=rope, position_ids=pos)
        hidden = out[0] if isinstance(out, tuple) else out
    return hidden


def pad_ids(seqs: Sequence[Sequence[int]], device: Any) -> tuple[Tensor, Tensor]:
    """Token-id lists as right-padded ``[N, T_max]`` ids (0-padded) and their 0/1 attention mask."""
    width = max(len(s) for s in seqs)
    ids = torch.zeros(len(seqs), width, dtype=torch.long, device=device)
    mask = torch.zeros_like(ids)
    for row, s in enumerate(seqs):
        ids[row, : len(s)] = torch.tensor(list(s), device=device)
        mask[row, : len(s)] = 1
    return ids, mask


def hidden_after(model: Any, input_ids: Tensor, attention_mask: Tensor, n_layers: int) -> Tensor:
    """Hidden states entering block ``n_layers`` (0 = the embeddings) for right-padded ``input_ids``."""
    hidden = _inner(model).embed_tokens(input_ids)
    return run_blocks(model, hidden, attention_mask, 0, n_layers)


def logits_at(model: Any, hidden: Tensor, index: tuple[Tensor, Tensor]) -> Tensor:
    """Final norm + LM head on the positions ``hidden[index]`` only (saves the vocab matmul elsewhere)."""
    return model.lm_head(_inner(model).norm(hidden[index]))


class RowLora:
    """Forward hooks adding a per-row LoRA to target linears while :meth:`use` is active.

    ``weights[name] = (A [N, r, in], B [N, out, r])`` for a batch of N rows
    (N = 1 broadcasts to every row). Gradients flow to A and B.
    """

    def __init__(self, model: Any, module_names: Sequence[str]) -> None:
        self._active: contextvars.ContextVar[tuple[dict[str, tuple[Tensor, Tensor]], float] | None] = (
            contextvars.ContextVar(f"d2l_row_lora_{id(self):x}", default=None)
        )
        self.names = list(module_names)
        self._handles = [model.get_submodule(n).register_forward_hook(self._hook(n)) for n in self.names]

    def _hook(self, name: str) -> Any:
        def hook(module: Any, args: tuple[Any, ...], output: Tensor) -> Tensor | None:
            active = self._active.get()
            if active is None or name not in active[0]:
                return None
            a, b = active[0][name]
            x = args[0]
            delta = torch.matmul(torch.matmul(x.to(a.dtype), a.transpose(-1, -2)), b.transpose(-1, -2))
            return output + (active[1] * delta).to(output.dtype)

        return hook

    @contextlib.contextmanager
    def use(self, weights: dict[str, tuple[Tensor, Tensor]] | None, scale: float) -> Iterator[None]:
        token = self._active.set(None if weights is None else (weights, float(scale)))
        try:
            yield
        finally:
            self._active.reset(token)

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
