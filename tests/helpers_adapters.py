"""Adapters for tests: real PEFT-format folders with small random tensors, and PEFT as the reference.

One generator of random LoRA tensors serves every test. Given a model, it puts a
LoRA on each ``nn.Linear`` whose last name is in ``targets``; without one it uses
``TINY_SHAPES``, the linear layers of ``tests.helpers_models.make_tiny_model_dir``
(hidden 32, MLP 64, 2 layers, 4 heads and 2 KV heads of 8 dims), so adapters
written without loading a model still load onto that model.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from agent_sleep.adapters import AdapterManifest, peft_key, write_adapter
from agent_sleep.adapters.stack import strip_lora_hooks
from agent_sleep.models.loader import BaseModelHandle

BASE_HASH = "ab" * 32  # base-model hash of adapters written without a model
PROBE = "The capital of France is Paris. hello world"

_TINY_LAYER = (
    ("self_attn.q_proj", (32, 32)), ("self_attn.k_proj", (16, 32)), ("self_attn.v_proj", (16, 32)),
    ("self_attn.o_proj", (32, 32)), ("mlp.gate_proj", (64, 32)), ("mlp.up_proj", (64, 32)),
    ("mlp.down_proj", (32, 64)),
)  # fmt: skip
# (out_features, in_features) of every LoRA-able Linear of the tiny model, in named_modules order.
TINY_SHAPES = {f"model.layers.{i}.{name}": shape for i in range(2) for name, shape in _TINY_LAYER}


def lora_shapes(model: Any) -> dict[str, tuple[int, int]]:
    """(out_features, in_features) of every ``nn.Linear`` of ``model`` but the LM head, in module order."""
    import torch

    return {
        name: (module.out_features, module.in_features)
        for name, module in model.named_modules()
        if isinstance(module, torch.nn.Linear) and name != "lm_head"
    }


def random_tensors(
    model: Any = None,
    *,
    targets: Sequence[str] = ("q_proj", "v_proj"),
    r: int = 4,
    seed: int = 0,
    std: float = 0.05,
    ranks: dict[str, int] | None = None,
) -> dict[str, Any]:
    """PEFT-keyed A/B for every Linear whose last name is in ``targets`` (``ranks`` overrides r per name).

    B is non-zero, so the adapter changes outputs. ``model`` None: the tiny test model's shapes.
    """
    import torch

    g = torch.Generator().manual_seed(seed)
    tensors = {}
    for name, (out_features, in_features) in (TINY_SHAPES if model is None else lora_shapes(model)).items():
        short = name.rsplit(".", 1)[-1]
        if short in targets:
            rank = (ranks or {}).get(short, r)
            tensors[peft_key(name, "A")] = torch.randn(rank, in_features, generator=g) * std
            tensors[peft_key(name, "B")] = torch.randn(out_features, rank, generator=g) * std
    return tensors


def manifest_for(
    handle: BaseModelHandle | None = None, *, base_hash: str | None = None, **extra: Any
) -> AdapterManifest:
    """A manifest for an adapter on ``handle`` (or on a model of hash ``base_hash``, default ``BASE_HASH``)."""
    content_hash = base_hash or (handle.content_hash if handle is not None else BASE_HASH)
    fields = {
        "skill": "demo",
        "version": 1,
        "generator": {"name": "sft", "version": "test"},
        "base_model": {"id": "tiny", "content_hash": content_hash},
        "sources": {"episodes": ["ep-1"], "description": "a test adapter"},
    }
    fields.update(extra)
    return AdapterManifest(**fields)


def write_random(
    dest: Path,
    handle: BaseModelHandle | None = None,
    *,
    targets: Sequence[str] = ("q_proj", "v_proj"),
    r: int = 4,
    alpha: float | None = None,
    seed: int = 0,
    std: float = 0.05,
    ranks: dict[str, int] | None = None,
    base_hash: str | None = None,
    **config: Any,
) -> Path:
    """Write a random adapter folder (PEFT files + manifest) for ``handle``'s model (None: the tiny model).

    ``alpha`` defaults to ``2 * r``; ``base_hash`` overrides the base model the manifest names
    (an adapter for other weights); ``config`` adds PEFT config keys (``use_rslora``, ``rank_pattern``...).
    """
    tensors = random_tensors(None if handle is None else handle.model, targets=targets, r=r, seed=seed, std=std,
                             ranks=ranks)  # fmt: skip
    lora_config = {"r": r, "lora_alpha": 2.0 * r if alpha is None else alpha, "target_modules": list(targets), **config}
    return write_adapter(dest, tensors, lora_config, manifest_for(handle, base_hash=base_hash))


# ---------------------------------------------------------------- PEFT as the reference


def probe(handle: BaseModelHandle) -> Any:
    import torch

    ids = handle.tokenizer(PROBE, add_special_tokens=False)["input_ids"]
    return torch.tensor([ids])


def logits(model: Any, ids: Any) -> Any:
    import torch

    with torch.inference_mode():
        return model(input_ids=ids, use_cache=False).logits.float()


def peft_logits(handle: BaseModelHandle, folders: Sequence[Path], ids: Any) -> Any:
    """Logits of PEFT with every folder active (weight 1), on a private copy of the model."""
    from peft import PeftModel

    twin = copy.deepcopy(handle.model)
    strip_lora_hooks(twin)
    names = [f"t{i}" for i in range(len(folders))]
    pm = PeftModel.from_pretrained(twin, str(folders[0]), adapter_name=names[0])
    for name, folder in zip(names[1:], folders[1:], strict=True):
        pm.load_adapter(str(folder), adapter_name=name)
    pm.base_model.set_adapter(names, inference_mode=True)
    pm.eval()
    return logits(pm, ids)


def max_diff(a: Any, b: Any) -> float:
    return float((a - b).abs().max())
