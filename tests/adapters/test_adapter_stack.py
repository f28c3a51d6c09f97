"""Hook runtime: equals PEFT, weighted stacks, bit-identical base, per-thread stacks, PEFT wrapping."""

from __future__ import annotations

import copy
import threading
from pathlib import Path

import pytest
import torch

from agent_sleep.adapters import LoraHooks, lora_layers, peft_equivalence, prepare_stack, read_adapter
from agent_sleep.adapters.artifact import LoraWeights
from agent_sleep.errors import IncompatibleAdapterError, InvalidInputError
from agent_sleep.models.loader import BaseModelHandle
from tests.helpers_adapters import logits, max_diff, peft_logits, probe, write_random


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory, handle: BaseModelHandle) -> list[Path]:
    """Three adapters with different targets, ranks and scaling rules."""
    root = tmp_path_factory.mktemp("stack-adapters")
    return [
        write_random(root / "a", handle, seed=1),
        write_random(root / "b", handle, seed=2, targets=("o_proj", "gate_proj", "q_proj"), r=2, alpha=3,
                     use_rslora=True),
        write_random(root / "c", handle, seed=3, targets=("q_proj", "down_proj"), ranks={"down_proj": 2},
                     rank_pattern={"down_proj": 2}, alpha_pattern={"q_proj": 1.5}),
    ]  # fmt: skip


def _layers(folder: Path) -> dict[str, LoraWeights]:
    return lora_layers(read_adapter(folder))


def _merged_reference(handle: BaseModelHandle, items: list[tuple[dict[str, LoraWeights], float]]) -> torch.nn.Module:
    """A private copy of the model with sum(w * s * B @ A) added into the weights."""
    from agent_sleep.adapters.stack import strip_lora_hooks

    twin = copy.deepcopy(handle.model)
    strip_lora_hooks(twin)
    with torch.no_grad():
        for layers, weight in items:
            for module, lw in layers.items():
                twin.get_submodule(module).weight += weight * lw.scaling * (lw.B @ lw.A)
    return twin


def test_one_adapter_equals_peft(folders: list[Path], handle: BaseModelHandle) -> None:
    ids = probe(handle)
    base = logits(handle.model, ids)
    stack = prepare_stack("a", [("a", _layers(folders[0]), 1.0)])
    with LoraHooks.attach(handle.model).activate(stack):
        ours = logits(handle.model, ids)
    assert max_diff(ours, base) > 1e-3  # the adapter really changes the output
    assert max_diff(ours, peft_logits(handle, folders[:1], ids)) <= 1e-5


def test_three_adapters_equal_peft_multi_adapter(folders: list[Path], handle: BaseModelHandle) -> None:
    ids = probe(handle)
    for combine in ("cat", "sum"):
        stack = prepare_stack("abc", [(f.name, _layers(f), 1.0) for f in folders], combine=combine)
        with LoraHooks.attach(handle.model).activate(stack):
            ours = logits(handle.model, ids)
        assert max_diff(ours, peft_logits(handle, folders, ids)) <= 1e-5
    check = peft_equivalence(folders, handle)
    assert check.ok and check.value is not None and check.value <= 1e-5


def test_weighted_stack_equals_weights_merged_into_the_model(folders: list[Path], handle: BaseModelHandle) -> None:
    ids = probe(handle)
    weights = [0.5, -1.0, 2.0]
    layers = [_layers(f) for f in folders]
    reference = logits(_merged_reference(handle, list(zip(layers, weights, strict=True))), ids)
    hooks = LoraHooks.attach(handle.model)
    outputs = {}
    for combine in ("cat", "sum"):
        stack = prepare_stack("w", [(f.name, lay, w) for f, lay, w in zip(folders, layers, weights, strict=True)],
                              combine=combine)  # fmt: skip
        with hooks.activate(stack):
            outputs[combine] = logits(handle.model, ids)
        assert max_diff(outputs[combine], reference) <= 1e-5
    assert max_diff(outputs["cat"], outputs["sum"]) <= 1e-5


def test_no_active_stack_is_bit_identical_to_the_base(folders: list[Path], handle: BaseModelHandle) -> None:
    from agent_sleep.adapters.stack import strip_lora_hooks

    ids = probe(handle)
    pristine = copy.deepcopy(handle.model)
    strip_lora_hooks(pristine)
    before = logits(pristine, ids)
    hooks = LoraHooks.attach(handle.model)
    stack = prepare_stack("abc", [(f.name, _layers(f), 1.0) for f in folders])
    hooks.check(stack)  # every target hooked
    assert torch.equal(logits(handle.model, ids), before)
    with hooks.activate(stack):
        assert not torch.equal(logits(handle.model, ids), before)
        with hooks.activate(None):
            assert torch.equal(logits(handle.model, ids), before)
    assert torch.equal(logits(handle.model, ids), before) and hooks.active is None


def test_threads_run_their_own_stacks_concurrently(folders: list[Path], handle: BaseModelHandle) -> None:
    ids = probe(handle)
    hooks = LoraHooks.attach(handle.model)
    stacks = {
        "a": prepare_stack("a", [("a", _layers(folders[0]), 1.0)]),
        "bc": prepare_stack("bc", [("b", _layers(folders[1]), 1.0), ("c", _layers(folders[2]), -0.5)]),
        "base": None,
    }
    expected = {}
    for name, stack in stacks.items():
        with hooks.activate(stack):
            expected[name] = logits(handle.model, ids)
    assert max_diff(expected["a"], expected["bc"]) > 1e-3

    barrier = threading.Barrier(len(stacks))
    results: dict[str, list[torch.Tensor]] = {name: [] for name in stacks}
    errors: list[BaseException] = []

    def worker(name: str) -> None:
        try:
            assert hooks.active is None  # a new thread does not inherit another's stack
            with hooks.activate(stacks[name]):
                barrier.wait()
                for _ in range(6):
                    results[name].append(logits(handle.model, ids))
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(name,)) for name in stacks]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    for name, outs in results.items():
        assert len(outs) == 6 and all(torch.equal(out, expected[name]) for out in outs), name


def test_peft_can_wrap_a_hooked_model(folders: list[Path], handle: BaseModelHandle) -> None:
    from peft import LoraConfig, get_peft_model

    from agent_sleep.adapters.stack import strip_lora_hooks

    ids = probe(handle)
    stack = prepare_stack("a", [("a", _layers(folders[0]), 1.0)])
    with LoraHooks.attach(handle.model).activate(stack):
        expected = logits(handle.model, ids)
    twin = copy.deepcopy(handle.model)
    strip_lora_hooks(twin)
    hooks = LoraHooks.attach(twin, list(stack.layers))
    # A fresh PEFT adapter has B = 0, so it changes nothing; our hooks must keep working under it.
    pm = get_peft_model(twin, LoraConfig(r=2, target_modules=["q_proj"]))
    assert LoraHooks.attach(pm) is hooks
    with hooks.activate(stack):
        assert max_diff(logits(pm, ids), expected) <= 1e-6
    hooks.detach()
    assert max_diff(logits(pm, ids), logits(handle.model, ids)) == 0.0


def test_prepare_stack_summary_and_errors(folders: list[Path], handle: BaseModelHandle) -> None:
    a, b = _layers(folders[0]), _layers(folders[1])
    stack = prepare_stack("ab", [("a", a, 1.0), ("b", b, 0.0), ("a2", a, 2.0)])
    assert stack.items == (("a", 1.0), ("b", 0.0), ("a2", 2.0))
    assert stack.total_rank == 8 and stack.modules == frozenset(a)  # b (weight 0) contributes nothing
    assert stack.nbytes == sum(t.numel() * 4 for blocks in stack.layers.values() for pair in blocks for t in pair)
    summed = prepare_stack("ab", [("a", a, 1.0), ("a2", a, 2.0)], combine="sum")
    assert all(len(blocks) == 2 for blocks in summed.layers.values())
    with pytest.raises(InvalidInputError, match="combine"):
        prepare_stack("x", [], combine="stack")  # type: ignore[arg-type]
    with pytest.raises(InvalidInputError, match="finite"):
        prepare_stack("x", [("a", a, float("nan"))])
    module = "model.layers.0.self_attn.q_proj"
    wide = {module: LoraWeights(A=torch.zeros(2, 64), B=torch.zeros(32, 2), scaling=1.0)}
    with pytest.raises(IncompatibleAdapterError, match="different models"):
        prepare_stack("x", [("a", a, 1.0), ("wide", wide, 1.0)])


def test_stacks_that_do_not_fit_the_model_are_refused(handle: BaseModelHandle) -> None:
    hooks = LoraHooks.attach(handle.model)
    module = "model.layers.0.self_attn.q_proj"
    wide = prepare_stack("wide", [("w", {module: LoraWeights(torch.zeros(2, 64), torch.zeros(32, 2), 1.0)}, 1.0)])
    with pytest.raises(IncompatibleAdapterError, match="32x32"), hooks.activate(wide):
        pass
    ghost = prepare_stack("ghost", [("g", {"model.layers.7.mlp.up_proj": LoraWeights(
        torch.zeros(2, 32), torch.zeros(64, 2), 1.0)}, 1.0)])  # fmt: skip
    with pytest.raises(IncompatibleAdapterError, match="no module"), hooks.activate(ghost):
        pass
    norm = prepare_stack("norm", [("n", {"model.norm": LoraWeights(torch.zeros(2, 32), torch.zeros(32, 2), 1.0)}, 1.0)])
    with pytest.raises(IncompatibleAdapterError, match="not a torch.nn.Linear"), hooks.activate(norm):
        pass
    assert hooks.active is None
