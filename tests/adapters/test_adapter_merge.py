"""Offline merges: cat is exact and loads in PEFT; linear/TIES hit the requested rank and are lossy."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from agent_sleep.adapters import (
    LoraHooks,
    lora_layers,
    materialize_cat,
    merge_linear,
    merge_ties,
    prepare_stack,
    read_adapter,
    write_adapter,
)
from agent_sleep.adapters.artifact import LoraWeights
from agent_sleep.adapters.lora_config import peft_key
from agent_sleep.errors import InvalidInputError
from agent_sleep.models.loader import BaseModelHandle
from tests.helpers_adapters import logits, manifest_for, max_diff, peft_logits, probe, write_random

Layers = dict[str, LoraWeights]


@pytest.fixture(scope="module")
def sources(tmp_path_factory: pytest.TempPathFactory, handle: BaseModelHandle) -> list[Path]:
    root = tmp_path_factory.mktemp("merge-sources")
    return [
        write_random(root / "a", handle, seed=11),
        write_random(root / "b", handle, seed=12, targets=("q_proj", "o_proj"), r=2, alpha=2, use_rslora=True),
        write_random(root / "c", handle, seed=13, targets=("v_proj", "up_proj"), r=3, alpha=6),
    ]


def _deltas(layers: Layers, weight: float = 1.0) -> dict[str, torch.Tensor]:
    return {m: weight * lw.scaling * (lw.B @ lw.A) for m, lw in layers.items()}


def _summed(items: list[tuple[str, Layers, float]]) -> dict[str, torch.Tensor]:
    total: dict[str, torch.Tensor] = {}
    for _, layers, weight in items:
        for m, d in _deltas(layers, weight).items():
            total[m] = total.get(m, 0) + d
    return total


def _as_layers(tensors: dict[str, torch.Tensor], config: dict) -> Layers:
    assert config["lora_alpha"] == config["r"]  # exported with scaling 1
    modules = {k.removeprefix("base_model.model.").rsplit(".lora_", 1)[0] for k in tensors}
    return {m: LoraWeights(tensors[peft_key(m, "A")], tensors[peft_key(m, "B")], 1.0) for m in modules}


def test_cat_written_and_loaded_by_peft_equals_the_multi_adapter_stack(
    sources: list[Path], handle: BaseModelHandle, tmp_path: Path
) -> None:
    ids = probe(handle)
    items = [(f.name, lora_layers(read_adapter(f)), 1.0) for f in sources]
    tensors, config = materialize_cat(items)
    ranks = {t.shape[0] for k, t in tensors.items() if k.endswith("lora_A.weight")}
    assert ranks == {config["r"]} == {4 + 3}  # uniform: v_proj has 4+3, the rest zero-padded
    merged = write_adapter(tmp_path / "cat", tensors, config, manifest_for(handle, generator={"name": "merged"}))
    assert max_diff(peft_logits(handle, [merged], ids), peft_logits(handle, sources, ids)) <= 1e-5


def test_weighted_cat_equals_the_weighted_stack(sources: list[Path], handle: BaseModelHandle) -> None:
    ids = probe(handle)
    items = [(f.name, lora_layers(read_adapter(f)), w) for f, w in zip(sources, [0.5, -2.0, 1.5], strict=True)]
    hooks = LoraHooks.attach(handle.model)
    with hooks.activate(prepare_stack("w", items)):
        expected = logits(handle.model, ids)
    tensors, config = materialize_cat(items)
    with hooks.activate(prepare_stack("m", [("m", _as_layers(tensors, config), 1.0)])):
        assert max_diff(logits(handle.model, ids), expected) <= 1e-5


def test_linear_merge_is_the_best_rank_r_approximation(sources: list[Path]) -> None:
    items = [(f.name, lora_layers(read_adapter(f)), w) for f, w in zip(sources, [1.0, 0.5, 2.0], strict=True)]
    target = _summed(items)
    tensors, config = merge_linear(items, rank=2)
    assert config["r"] == 2 and {t.shape[0] for k, t in tensors.items() if "lora_A" in k} == {2}
    merged = _deltas(_as_layers(tensors, config))
    q = "model.layers.0.self_attn.q_proj"  # rank 4 + 2 summed, so rank 2 must lose something
    s = torch.linalg.svdvals(target[q])
    optimal = float(s[2:].square().sum().sqrt())
    error = float((merged[q] - target[q]).norm())
    assert error > 1e-3 and error == pytest.approx(optimal, rel=1e-4)  # Eckart-Young: nothing better exists
    exact, cfg = merge_linear(items, rank=7)  # the largest per-module rank sum (v_proj: 4 + 3)
    assert all(torch.allclose(d, target[m], atol=1e-6) for m, d in _deltas(_as_layers(exact, cfg)).items())


def test_ties_merge_matches_peft_ties_then_truncates(sources: list[Path]) -> None:
    from peft.utils.merge_utils import ties

    items = [(f.name, lora_layers(read_adapter(f)), w) for f, w in zip(sources, [1.0, 0.7, 1.3], strict=True)]
    q = "model.layers.1.self_attn.q_proj"  # targeted by a and b, not c
    per_adapter = [_deltas(layers)[q] for _, layers, _ in items if q in layers]
    reference = ties(per_adapter, torch.tensor([1.0, 0.7]), density=0.3)

    full, cfg = merge_ties(items, rank=32, density=0.3)  # 32 = min(out, in): no truncation
    assert torch.allclose(_deltas(_as_layers(full, cfg))[q], reference, atol=1e-6)

    low, cfg = merge_ties(items, rank=4, density=0.3)
    assert cfg["r"] == 4 and {t.shape[0] for k, t in low.items() if "lora_A" in k} == {4}
    approx = _deltas(_as_layers(low, cfg))[q]
    error = float((approx - reference).norm())
    assert 1e-3 < error < float(reference.norm())  # lossy, but far closer than nothing
    assert error != pytest.approx(float((approx - _summed(items)[q]).norm()), rel=1e-3)  # TIES, not a plain sum


def test_merge_arguments_are_checked(sources: list[Path]) -> None:
    items = [("a", lora_layers(read_adapter(sources[0])), 1.0)]
    with pytest.raises(InvalidInputError, match="rank"):
        merge_linear(items, rank=0)
    with pytest.raises(InvalidInputError, match="density"):
        merge_ties(items, rank=2, density=0.0)
    with pytest.raises(InvalidInputError, match="nothing to merge"):
        materialize_cat([])
    for bad in (float("nan"), float("inf")):  # would poison every merged tensor
        for merge in (materialize_cat, lambda i: merge_linear(i, rank=2), lambda i: merge_ties(i, rank=2)):
            with pytest.raises(InvalidInputError, match="weight of 'a' must be finite"):
                merge([("a", items[0][1], bad)])
