"""Adapter folders for tests: real PEFT-format files with small random tensors.

The default shapes match ``tests.helpers_models.make_tiny_model_dir`` (hidden 32,
2 layers, 2 KV heads of 8 dims), so the adapters load onto that model.
"""

from __future__ import annotations

from pathlib import Path

BASE_HASH = "ab" * 32
TINY_SHAPES = {
    f"model.layers.{i}.self_attn.{proj}": shape
    for i in range(2)
    for proj, shape in (("q_proj", (32, 32)), ("v_proj", (16, 32)))
}


def make_adapter_folder(dest: Path, *, seed: int = 0, rank: int = 4, base_hash: str = BASE_HASH,
                        shapes: dict[str, tuple[int, int]] | None = None, scale: float = 0.05,
                        base_id: str = "tiny") -> Path:
    """Write an adapter (PEFT folder + manifest) whose B is non-zero, so it changes outputs."""
    import torch

    from agent_sleep.adapters.artifact import AdapterManifest, write_adapter

    g = torch.Generator().manual_seed(seed)
    tensors = {}
    for mod, (out_f, in_f) in (shapes or TINY_SHAPES).items():
        tensors[f"base_model.model.{mod}.lora_A.weight"] = torch.randn(rank, in_f, generator=g) * scale
        tensors[f"base_model.model.{mod}.lora_B.weight"] = torch.randn(out_f, rank, generator=g) * scale
    targets = sorted({m.rsplit(".", 1)[-1] for m in (shapes or TINY_SHAPES)})
    manifest = AdapterManifest(
        generator={"name": "sft", "version": "test"}, base_model={"id": base_id, "content_hash": base_hash},
        rank=rank, lora_alpha=2 * rank, target_modules=targets,
        sources={"episodes": ["e1"], "documents": [], "description": "test adapter"},
    )
    config = {"r": rank, "lora_alpha": 2 * rank, "target_modules": targets, "base_model_name_or_path": base_id}
    return write_adapter(dest, tensors, config, manifest)
