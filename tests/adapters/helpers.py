"""Random LoRA adapters for the tiny test model, and PEFT as the reference implementation."""

from __future__ import annotations

import copy
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from agent_sleep.adapters import AdapterManifest, peft_key, write_adapter
from agent_sleep.adapters.stack import strip_lora_hooks
from agent_sleep.models.loader import BaseModelHandle

PROBE = "The capital of France is Paris. hello world"


def random_tensors(
    model: Any,
    *,
    targets: Sequence[str] = ("q_proj", "v_proj"),
    r: int = 4,
    seed: int = 0,
    std: float = 0.05,
    ranks: dict[str, int] | None = None,
) -> dict[str, Any]:
    """PEFT-keyed A/B for every Linear whose last name is in ``targets`` (``ranks`` overrides r per name)."""
    import torch

    g = torch.Generator().manual_seed(seed)
    tensors = {}
    for name, module in model.named_modules():
        short = name.rsplit(".", 1)[-1]
        if isinstance(module, torch.nn.Linear) and short in targets and name != "lm_head":
            rank = (ranks or {}).get(short, r)
            tensors[peft_key(name, "A")] = torch.randn(rank, module.in_features, generator=g) * std
            tensors[peft_key(name, "B")] = torch.randn(module.out_features, rank, generator=g) * std
    return tensors


def manifest_for(handle: BaseModelHandle, **extra: Any) -> AdapterManifest:
    fields = {
        "skill": "demo",
        "version": 1,
        "generator": {"name": "sft", "version": "test"},
        "base_model": {"id": "tiny", "content_hash": handle.content_hash},
        "sources": {"episodes": ["ep-1"], "description": "a test adapter"},
    }
    fields.update(extra)
    return AdapterManifest(**fields)


def write_random(
    dest: Path,
    handle: BaseModelHandle,
    *,
    targets: Sequence[str] = ("q_proj", "v_proj"),
    r: int = 4,
    alpha: float = 8.0,
    seed: int = 0,
    std: float = 0.05,
    ranks: dict[str, int] | None = None,
    **config: Any,
) -> Path:
    tensors = random_tensors(handle.model, targets=targets, r=r, seed=seed, std=std, ranks=ranks)
    lora_config = {"r": r, "lora_alpha": alpha, "target_modules": list(targets), **config}
    return write_adapter(dest, tensors, lora_config, manifest_for(handle))


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
