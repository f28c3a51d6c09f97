"""Adapter folders for registry tests: real PEFT-format files, random small tensors."""

from __future__ import annotations

from pathlib import Path

BASE_HASH = "ab" * 32
MODULES = ("model.layers.0.self_attn.q_proj", "model.layers.0.self_attn.v_proj")


def make_adapter_folder(dest: Path, *, seed: int = 0, rank: int = 4, dim: int = 32, base_hash: str = BASE_HASH) -> Path:
    import torch

    from agent_sleep.adapters.artifact import AdapterManifest, write_adapter

    g = torch.Generator().manual_seed(seed)
    tensors = {}
    for mod in MODULES:
        tensors[f"base_model.model.{mod}.lora_A.weight"] = torch.randn(rank, dim, generator=g) * 0.02
        tensors[f"base_model.model.{mod}.lora_B.weight"] = torch.randn(dim, rank, generator=g) * 0.02
    manifest = AdapterManifest(
        generator={"name": "sft", "version": "test"}, base_model={"id": "tiny", "content_hash": base_hash},
        rank=rank, lora_alpha=2 * rank, target_modules=["q_proj", "v_proj"],
        sources={"episodes": ["e1"], "documents": [], "description": "test adapter"},
    )
    config = {"r": rank, "lora_alpha": 2 * rank, "target_modules": ["q_proj", "v_proj"], "base_model_name_or_path": "tiny"}
    return write_adapter(dest, tensors, config, manifest)
