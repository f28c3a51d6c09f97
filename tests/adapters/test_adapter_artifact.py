"""The adapter folder format: atomic immutable writes, safe reads, clear errors, PEFT-compatible configs."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from pydantic import ValidationError

from agent_sleep.adapters import (
    CONFIG_FILE,
    MANIFEST_FILE,
    WEIGHTS_FILE,
    AdapterManifest,
    check_name,
    lora_layers,
    peft_equivalence,
    read_adapter,
    save_peft_adapter,
    write_adapter,
)
from agent_sleep.adapters import artifact as artifact_mod
from agent_sleep.errors import (
    AdapterError,
    AdapterExistsError,
    AdapterFormatError,
    InvalidInputError,
    TamperedAdapterError,
)
from agent_sleep.models.loader import BaseModelHandle
from tests.helpers_adapters import manifest_for, random_tensors, write_random


def _edit_json(path: Path, **changes: object) -> None:
    data = json.loads(path.read_text())
    data.update(changes)
    path.write_text(json.dumps(data))


def test_round_trip_keeps_tensors_config_and_provenance(tmp_path: Path, handle: BaseModelHandle) -> None:
    tensors = random_tensors(handle.model, seed=1)
    manifest = manifest_for(handle, eval_summary={"acc": 0.5}, future_key={"kept": True})
    config = {"r": 4, "lora_alpha": 8, "target_modules": {"v_proj", "q_proj"}}
    folder = write_adapter(tmp_path / "demo" / "v1", tensors, config, manifest)

    art = read_adapter(folder)
    assert art.tensors.keys() == tensors.keys()
    assert all(torch.equal(art.tensors[k], tensors[k]) for k in tensors)
    cfg = art.lora_config
    assert (cfg["peft_type"], cfg["task_type"], cfg["bias"], cfg["lora_dropout"]) == ("LORA", "CAUSAL_LM", "none", 0.0)
    assert cfg["target_modules"] == ["q_proj", "v_proj"] and cfg["base_model_name_or_path"] == "tiny"
    m = art.manifest
    assert m is not None and (m.rank, m.lora_alpha, m.target_modules) == (4, 8.0, ["q_proj", "v_proj"])
    assert m.weights_sha256 == hashlib.sha256((folder / WEIGHTS_FILE).read_bytes()).hexdigest()
    assert m.skill == "demo" and m.eval_summary == {"acc": 0.5} and m.created_at.utcoffset().total_seconds() == 0
    # Newer keys survive a round trip, so older code can re-save newer manifests.
    assert json.loads((folder / MANIFEST_FILE).read_text())["future_key"] == {"kept": True}
    assert AdapterManifest.model_validate_json((folder / MANIFEST_FILE).read_text()).model_extra == {
        "future_key": {"kept": True}
    }
    assert art.modules == sorted(k.removeprefix("base_model.model.").removesuffix(".lora_A.weight")
                                 for k in tensors if k.endswith("lora_A.weight"))


def test_failed_write_leaves_nothing_visible(tmp_path: Path, handle: BaseModelHandle) -> None:
    # The manifest is the last file written: weights and config are already in the temp folder when it fails.
    unwritable = manifest_for(handle, future_key=object())
    config = {"r": 4, "lora_alpha": 8, "target_modules": ["q_proj", "v_proj"]}
    with pytest.raises(ValueError, match="serialize"):
        write_adapter(tmp_path / "v1", random_tensors(handle.model), config, unwritable)
    assert os.listdir(tmp_path) == []  # neither the adapter nor its temp folder


def test_interrupted_write_is_named_by_the_reader(tmp_path: Path) -> None:
    (tmp_path / f".v1{artifact_mod.PART_MARK}123-abc").mkdir()
    with pytest.raises(AdapterFormatError, match="interrupted write"):
        read_adapter(tmp_path / "v1")
    with pytest.raises(AdapterFormatError, match="unfinished adapter write"):
        read_adapter(tmp_path / f".v1{artifact_mod.PART_MARK}123-abc")


def test_versions_are_immutable(tmp_path: Path, handle: BaseModelHandle) -> None:
    folder = write_random(tmp_path / "v1", handle, seed=1)
    before = (folder / WEIGHTS_FILE).read_bytes()
    with pytest.raises(AdapterExistsError, match="immutable"):
        write_random(tmp_path / "v1", handle, seed=2)
    assert (folder / WEIGHTS_FILE).read_bytes() == before


def test_changed_weights_or_config_are_tampering(tmp_path: Path, handle: BaseModelHandle) -> None:
    from safetensors.torch import save_file

    folder = write_random(tmp_path / "v1", handle)
    tensors = read_adapter(folder).tensors
    save_file({k: v * 2 for k, v in tensors.items()}, str(folder / WEIGHTS_FILE))
    with pytest.raises(TamperedAdapterError, match="sha256"):
        read_adapter(folder)
    assert read_adapter(folder, verify=False).tensors.keys() == tensors.keys()

    other = write_random(tmp_path / "v2", handle)
    _edit_json(other / CONFIG_FILE, lora_alpha=800)  # same weights, 100x the effect
    with pytest.raises(TamperedAdapterError, match="lora_alpha"):
        read_adapter(other)


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda f: (f / CONFIG_FILE).unlink(), "missing adapter_config.json"),
        (lambda f: (f / MANIFEST_FILE).unlink(), "missing manifest.json"),
        (lambda f: (f / WEIGHTS_FILE).unlink(), "missing adapter_model.safetensors"),
        (lambda f: (f / WEIGHTS_FILE).rename(f / "adapter_model.bin"), "never unpickles"),
        (lambda f: (f / CONFIG_FILE).write_text("{not json"), "not valid JSON"),
        (lambda f: (f / MANIFEST_FILE).write_text("[1, 2]"), "JSON object"),
        (lambda f: _edit_json(f / MANIFEST_FILE, format_version=99), "format_version 99"),
        (lambda f: _edit_json(f / CONFIG_FILE, use_dora=True), "use_dora"),
        (lambda f: _edit_json(f / CONFIG_FILE, modules_to_save=["lm_head"]), "modules_to_save"),
        (lambda f: _edit_json(f / CONFIG_FILE, bias="all"), "bias='all'"),
        (lambda f: _edit_json(f / CONFIG_FILE, peft_type="IA3"), "peft_type 'IA3'"),
        (lambda f: _edit_json(f / CONFIG_FILE, init_lora_weights="pissa"), "init_lora_weights"),
        (lambda f: (f / WEIGHTS_FILE).write_bytes(b"\x00" * 16), "sha256"),
    ],
)
def test_broken_folders_give_clear_errors(
    tmp_path: Path, handle: BaseModelHandle, damage: object, message: str
) -> None:
    folder = write_random(tmp_path / "v1", handle)
    damage(folder)  # type: ignore[operator]
    with pytest.raises(AdapterError, match=message) as info:
        read_adapter(folder)
    assert str(folder) in str(info.value)


def test_missing_folder_and_plain_peft_folders(tmp_path: Path, handle: BaseModelHandle) -> None:
    with pytest.raises(AdapterFormatError, match="does not exist"):
        read_adapter(tmp_path / "nope")
    folder = write_random(tmp_path / "v1", handle)
    (folder / MANIFEST_FILE).unlink()
    art = read_adapter(folder, require_manifest=False)
    assert art.manifest is None and len(lora_layers(art)) == 4


def test_corrupt_weights_without_manifest_are_a_format_error(tmp_path: Path, handle: BaseModelHandle) -> None:
    folder = write_random(tmp_path / "v1", handle)
    (folder / MANIFEST_FILE).unlink()
    (folder / WEIGHTS_FILE).write_bytes(b"\x00" * 16)
    with pytest.raises(AdapterFormatError, match="safetensors"):
        read_adapter(folder, require_manifest=False)


def test_writer_refuses_what_the_runtime_cannot_run(tmp_path: Path, handle: BaseModelHandle) -> None:
    tensors = random_tensors(handle.model)
    base = {"r": 4, "lora_alpha": 8, "target_modules": ["q_proj", "v_proj"]}
    cases = [
        ({**base, "use_dora": True}, tensors, "use_dora"),
        ({**base, "target_modules": ["q_proj"]}, tensors, "does not select"),
        ({**base, "r": 8}, tensors, "rank 4 but the config says 8"),
        ({"r": 4, "lora_alpha": 8}, tensors, "lacks target_modules"),
        (base, {**tensors, "base_model.model.lm_head.lora_magnitude_vector": torch.ones(3)}, "DoRA"),
        (base, {k: v for k, v in tensors.items() if "lora_B" not in k}, "no lora_B"),
    ]
    for config, weights, message in cases:
        with pytest.raises(AdapterFormatError, match=message):
            write_adapter(tmp_path / "v1", weights, config, manifest_for(handle))
    with pytest.raises(InvalidInputError, match="floating point"):
        write_adapter(tmp_path / "v1", {k: v.long() for k, v in tensors.items()}, base, manifest_for(handle))
    assert not (tmp_path / "v1").exists()


@pytest.mark.parametrize("bad", ["", "a/b", "../x", ".hidden", "x" * 65, "with space", "café", "a\\b", "-x"])
def test_bad_names_are_refused(bad: str) -> None:
    with pytest.raises(AdapterFormatError, match="invalid adapter/skill name") as info:
        check_name(bad)
    assert isinstance(info.value, InvalidInputError)
    with pytest.raises(ValidationError):
        AdapterManifest(skill=bad, generator={"name": "t2l"}, base_model={"id": "m", "content_hash": "h"})


@pytest.mark.parametrize("good", ["a", "billing_v2", "tool-use.json", "X" * 64])
def test_good_names_pass(good: str) -> None:
    assert check_name(good) == good


def test_scaling_honours_rslora_and_patterns(tmp_path: Path, handle: BaseModelHandle) -> None:
    plain = lora_layers(read_adapter(write_random(tmp_path / "p", handle, r=4, alpha=8)))
    assert {lw.scaling for lw in plain.values()} == {2.0}
    rs = lora_layers(read_adapter(write_random(tmp_path / "rs", handle, r=4, alpha=8, use_rslora=True)))
    assert {lw.scaling for lw in rs.values()} == {4.0}
    pat = read_adapter(write_random(
        tmp_path / "pat", handle, r=4, alpha=8, ranks={"v_proj": 2}, rank_pattern={"v_proj": 2},
        alpha_pattern={"layers.1.self_attn.q_proj": 1.0},
    ))  # fmt: skip
    scalings = {m: lw.scaling for m, lw in lora_layers(pat).items()}
    assert scalings["model.layers.0.self_attn.q_proj"] == 2.0
    assert scalings["model.layers.1.self_attn.q_proj"] == 0.25
    assert scalings["model.layers.0.self_attn.v_proj"] == 4.0 and lora_layers(pat)[
        "model.layers.0.self_attn.v_proj"].rank == 2  # fmt: skip
    assert peft_equivalence(pat.path, handle).ok  # PEFT agrees with our reading of the patterns


def test_save_peft_adapter_exports_a_live_peft_model(tmp_path: Path, handle: BaseModelHandle) -> None:
    import copy

    from peft import LoraConfig, get_peft_model

    torch.manual_seed(0)
    config = LoraConfig(r=2, lora_alpha=4, target_modules=["k_proj", "up_proj"], init_lora_weights=False)
    pm = get_peft_model(copy.deepcopy(handle.model), config, adapter_name="skill_x")
    folder = save_peft_adapter(pm, "skill_x", tmp_path / "v1", manifest_for(handle))
    art = read_adapter(folder)
    assert art.manifest is not None and art.manifest.target_modules == ["k_proj", "up_proj"]
    assert len(art.modules) == 4 and peft_equivalence(folder, handle).ok
    with pytest.raises(InvalidInputError, match="no adapter named"):
        save_peft_adapter(pm, "other", tmp_path / "v2", manifest_for(handle))


def test_importing_the_package_does_not_import_torch() -> None:
    code = "import sys, agent_sleep.adapters; assert not {'torch', 'safetensors', 'peft'} & set(sys.modules)"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).parents[2])


def test_layer_selection_is_read_like_peft(tmp_path: Path, handle: BaseModelHandle) -> None:
    tensors = random_tensors(handle.model, targets=("q_proj",))
    config = {"r": 4, "lora_alpha": 8, "target_modules": ["q_proj"], "layers_to_transform": [1]}
    with pytest.raises(AdapterFormatError, match="layers.0.self_attn.q_proj has weights but"):
        write_adapter(tmp_path / "v1", tensors, config, manifest_for(handle))
    layer1 = {k: v for k, v in tensors.items() if ".layers.1." in k}
    folder = write_adapter(tmp_path / "v1", layer1, config, manifest_for(handle))
    assert peft_equivalence(folder, handle).ok
    excluded = {**config, "layers_to_transform": None, "exclude_modules": ["layers.0.self_attn.q_proj"]}
    assert read_adapter(write_adapter(tmp_path / "v2", layer1, excluded, manifest_for(handle))).modules == [
        "model.layers.1.self_attn.q_proj"
    ]
