"""Validation outcomes are data: a good adapter passes, each failure mode names its check."""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path

import pytest
import torch

from agent_sleep.adapters import (
    AdapterArtifact,
    LoraHooks,
    ValidationReport,
    peft_key,
    read_adapter,
    validate_adapter,
    write_adapter,
)
from agent_sleep.models.loader import BaseModelHandle
from tests.helpers_adapters import logits, manifest_for, probe, random_tensors, write_random

ALL_CHECKS = ["base_model", "targets", "finite", "delta_norm", "reload"]
Q0 = "model.layers.0.self_attn.q_proj"


def _write(tmp_path: Path, handle: BaseModelHandle, tensors: dict, *, targets: list[str] | None = None,
           **manifest: object) -> AdapterArtifact:
    config = {"r": 4, "lora_alpha": 8, "target_modules": targets or ["q_proj", "v_proj"]}
    return read_adapter(write_adapter(tmp_path / "v1", tensors, config, manifest_for(handle, **manifest)))


def _assert_fails(report: ValidationReport, check: str, message: str) -> None:
    assert not report.ok and report.failed == [check]
    assert report.reason is not None and report.reason.startswith(check) and message in report.reason


def test_a_good_adapter_passes_every_check(tmp_path: Path, handle: BaseModelHandle) -> None:
    report = validate_adapter(read_adapter(write_random(tmp_path / "v1", handle)), handle)
    assert report.ok and report.reason is None, report
    assert [c.name for c in report.checks] == ALL_CHECKS
    assert json.loads(json.dumps(report.to_dict()))["checks"][4]["name"] == "reload"
    norm = next(c for c in report.checks if c.name == "delta_norm")
    assert norm.value is not None and 0 < norm.value < 1


def test_adapter_for_another_base_is_rejected(tmp_path: Path, handle: BaseModelHandle) -> None:
    art = _write(tmp_path, handle, random_tensors(handle.model), base_model={"id": "other", "content_hash": "cd" * 32})
    _assert_fails(validate_adapter(art, handle), "base_model", "made for base 'other'")


def test_wrong_shapes_and_unknown_modules_are_rejected(tmp_path: Path, handle: BaseModelHandle) -> None:
    tensors = random_tensors(handle.model)
    tensors[peft_key(Q0, "A")] = torch.randn(4, 64) * 0.05
    _assert_fails(validate_adapter(_write(tmp_path, handle, tensors), handle), "targets", "is 32x32")

    ghost = "model.layers.5.self_attn.q_proj"
    tensors = {**random_tensors(handle.model), peft_key(ghost, "A"): torch.zeros(4, 32),
               peft_key(ghost, "B"): torch.zeros(32, 4)}  # fmt: skip
    shutil.rmtree(tmp_path / "v1")
    _assert_fails(validate_adapter(_write(tmp_path, handle, tensors), handle), "targets", "no module")


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_weights_are_rejected(tmp_path: Path, handle: BaseModelHandle, bad: float) -> None:
    tensors = random_tensors(handle.model)
    tensors[peft_key(Q0, "B")][3, 1] = bad
    _assert_fails(validate_adapter(_write(tmp_path, handle, tensors), handle), "finite", "NaN or Inf")


def test_huge_deltas_are_rejected(tmp_path: Path, handle: BaseModelHandle) -> None:
    tensors = random_tensors(handle.model)
    tensors[peft_key(Q0, "B")] *= 1000
    report = validate_adapter(_write(tmp_path, handle, tensors), handle)
    _assert_fails(report, "delta_norm", Q0)
    assert report.checks[-1].value is not None and report.checks[-1].value > 100
    assert validate_adapter(read_adapter(tmp_path / "v1"), handle, max_delta_norm=1e6).ok


def test_reload_catches_a_folder_that_differs_from_memory(tmp_path: Path, handle: BaseModelHandle) -> None:
    written = read_adapter(write_random(tmp_path / "v1", handle))
    other = {k: v * 0.5 for k, v in written.tensors.items()}  # what a buggy writer might have produced
    in_memory = AdapterArtifact(path=written.path, lora_config=written.lora_config, manifest=written.manifest,
                                tensors=other)  # fmt: skip
    report = validate_adapter(in_memory, handle)
    _assert_fails(report, "reload", "memory vs disk")
    assert report.checks[-1].value is not None and report.checks[-1].value > 1e-5
    assert validate_adapter(in_memory, handle, reload=False).ok

    shutil.rmtree(written.path)
    _assert_fails(validate_adapter(written, handle), "reload", "does not exist")


def test_validation_never_changes_the_shared_model(tmp_path: Path, handle: BaseModelHandle) -> None:
    from agent_sleep.adapters.stack import strip_lora_hooks

    ids = probe(handle)
    pristine = copy.deepcopy(handle.model)
    strip_lora_hooks(pristine)
    structure = [(name, type(m)) for name, m in handle.model.named_modules()]
    art = read_adapter(write_random(tmp_path / "v1", handle, targets=("k_proj", "down_proj")))
    assert validate_adapter(art, handle).ok
    assert [(name, type(m)) for name, m in handle.model.named_modules()] == structure
    assert torch.equal(logits(handle.model, ids), logits(pristine, ids))
    assert LoraHooks.attach(handle.model).active is None


def test_plain_peft_folder_without_manifest_skips_the_base_check(tmp_path: Path, handle: BaseModelHandle) -> None:
    folder = write_random(tmp_path / "v1", handle)
    (folder / "manifest.json").unlink()
    report = validate_adapter(read_adapter(folder, require_manifest=False), handle)
    assert report.ok and "skipped" in report.checks[0].detail


def test_a_stack_is_checked_as_it_runs(tmp_path: Path, handle: BaseModelHandle) -> None:
    from agent_sleep.adapters import lora_layers
    from agent_sleep.adapters.validation import validate_stack

    a = lora_layers(read_adapter(write_random(tmp_path / "a", handle, seed=1)))
    b = lora_layers(read_adapter(write_random(tmp_path / "b", handle, seed=2)))
    alone = next(c.value for c in validate_adapter(read_adapter(tmp_path / "a"), handle).checks
                 if c.name == "delta_norm")
    assert alone is not None and 0.3 < alone < 0.7  # passes the default bound of 1.0 on its own

    same = validate_stack([("a", a, 1.0)], handle)
    assert same.ok and same.checks[-1].value == pytest.approx(alone)  # one adapter at weight 1: its own number
    twice = validate_stack([("a", a, 2.0)], handle)
    assert twice.failed == ["stack_delta_norm"] and twice.checks[-1].value == pytest.approx(2 * alone)
    assert validate_stack([("a", a, 1.0), ("a-again", a, 1.0)], handle).failed == ["stack_delta_norm"]
    assert validate_stack([("a", a, 1.0), ("a-negated", a, -1.0)], handle).checks[-1].value == pytest.approx(0.0)
    assert validate_stack([("a", a, 1.0), ("b", b, 1.0)], handle).ok  # independent deltas add up less
    for bad in (float("nan"), float("inf"), 0.0, 4.5, -1e6):
        report = validate_stack([("a", a, 1.0), ("b", b, bad)], handle)
        assert report.failed == ["weights"] and "weight of 'b'" in (report.reason or "")
    assert validate_stack([], handle).ok
