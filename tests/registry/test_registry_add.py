"""``agent-sleep adapters add``: what a folder must be to be copied in, and what a crash mid-add leaves behind.

Plain PEFT folders are adopted after a check against the base model; symlinks, special files
and weights that are not a well-formed LoRA safetensors file are refused at add; a process
killed between publishing ``vN`` and committing its row does not block later adds.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import shutil
import signal
import struct
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from agent_sleep.adapters import read_adapter
from agent_sleep.cli.main import main
from agent_sleep.models.loader import BaseModelHandle, load_base_model
from agent_sleep.registry import AdapterRegistry
from agent_sleep.store import ExperienceStore
from tests.helpers_adapters import logits, probe, write_random
from tests.helpers_models import make_tiny_model_dir

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, BaseModelHandle]:
    import torch

    torch.set_num_threads(1)
    folder = make_tiny_model_dir(tmp_path_factory.mktemp("add-model"))
    return folder, load_base_model(str(folder), device="cpu", dtype="float32")


def _cli(tmp_path: Path, db_url: str, *args: str) -> int:
    return main(["--data-dir", str(tmp_path / "data"), "--db", db_url, *args])


def _registry(tmp_path: Path, db_url: str) -> tuple[ExperienceStore, AdapterRegistry]:
    from agent_sleep.config import Settings

    store = ExperienceStore(settings=Settings(data_dir=tmp_path / "data", database_url=db_url))
    return store, AdapterRegistry(store)


def _peft_folder(handle: BaseModelHandle, dest: Path, *, targets: tuple[str, ...] = ("q_proj", "v_proj")) -> Any:
    """A real ``get_peft_model(...).save_pretrained(dest)`` folder with non-zero B; returns the PeftModel."""
    import torch
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(1)
    model = get_peft_model(copy.deepcopy(handle.model), LoraConfig(r=4, lora_alpha=8, target_modules=list(targets)))
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.01)  # PEFT starts B at zero: a no-op adapter would prove nothing
    model.eval()
    model.save_pretrained(str(dest))
    assert not (dest / "manifest.json").exists() and (dest / "adapter_model.safetensors").is_file()
    return model


# ---------------------------------------------------------------- plain PEFT folders are adopted


def test_add_adopts_a_plain_peft_folder(tiny: tuple[Path, BaseModelHandle], tmp_path: Path, db_url: str,
                                        capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    from agent_sleep.adapters import LoraHooks, lora_layers, prepare_stack

    model_dir, handle = tiny
    peft_model = _peft_folder(handle, tmp_path / "peft-out")
    assert _cli(tmp_path, db_url, "adapters", "add", str(tmp_path / "peft-out"), "--skill", "imported-skill",
                "--model", str(model_dir), "--json") == 0
    out = json.loads(capsys.readouterr().out)
    assert (out["name"], out["imported"], out["generator"]) == ("imported-skill@v1", True, "imported")
    assert out["base_model_hash"] == handle.content_hash and out["rank"] == 4

    manifest = json.loads((Path(out["path"]) / "manifest.json").read_text())
    assert manifest["generator"]["name"] == "imported" and manifest["generator"]["version"] == "peft"
    assert manifest["base_model"] == {"id": str(model_dir), "content_hash": handle.content_hash}
    assert manifest["sources"]["folder"] == str((tmp_path / "peft-out").resolve())
    assert not (tmp_path / "peft-out" / "manifest.json").exists()  # the source folder is left as it was

    # The registered copy runs in our runtime exactly like the PeftModel that saved it.
    ids = probe(handle)
    stack = prepare_stack("imp", [("imp", lora_layers(read_adapter(out["path"])), 1.0)])
    with LoraHooks.attach(handle.model).activate(stack):
        ours = logits(handle.model, ids)
    assert float((ours - logits(peft_model, ids)).abs().max()) < 1e-4
    assert float((ours - logits(handle.model, ids)).abs().max()) > 1e-3  # and it does change the model

    # And it passes deploy's validation (base-model hash, targets, norms, reload) like any other version.
    monkeypatch.setenv("AGENT_SLEEP_MODEL", str(model_dir))
    assert _cli(tmp_path, db_url, "deploy", "imported-skill@v1", "--agent", "helpdesk", "--json") == 0
    assert json.loads(capsys.readouterr().out)["status"] == "deployed"


def _other_shapes_model(root: Path) -> Path:
    """A Llama like the tiny one but 48 wide: the same module names, other shapes."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from tests.helpers_models import make_tiny_tokenizer

    tokenizer = make_tiny_tokenizer()
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=48, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True)  # fmt: skip
    folder = root / "wide-llama"
    LlamaForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def test_add_refuses_a_peft_folder_that_does_not_fit_the_model(
    tiny: tuple[Path, BaseModelHandle], tmp_path: Path, db_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    _, handle = tiny
    _peft_folder(handle, tmp_path / "peft-out")
    wide = _other_shapes_model(tmp_path)
    assert _cli(tmp_path, db_url, "adapters", "add", str(tmp_path / "peft-out"), "--skill", "s",
                "--model", str(wide)) == 1
    err = capsys.readouterr().err
    assert "does not fit base model" in err and "self_attn.q_proj has lora_A (4, 32)" in err
    store, registry = _registry(tmp_path, db_url)
    assert registry.adapters() == [] and not (registry.root / "s").exists()
    store.close()


# ---------------------------------------------------------------- what add copies


def _rehash(folder: Path) -> None:
    """Make manifest.json pin whatever adapter_model.safetensors now holds (as an attacker would)."""
    manifest = json.loads((folder / "manifest.json").read_text())
    data = (folder / "adapter_model.safetensors").read_bytes()
    manifest["weights_sha256"] = hashlib.sha256(data).hexdigest()
    (folder / "manifest.json").write_text(json.dumps(manifest))


def test_add_refuses_symlinks_and_special_files(tmp_path: Path, db_url: str,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    # A weights file that is a symlink to a real, hash-matching adapter elsewhere: still refused.
    linked = write_random(tmp_path / "linked")
    (linked / "adapter_model.safetensors").rename(tmp_path / "elsewhere.safetensors")
    (linked / "adapter_model.safetensors").symlink_to(tmp_path / "elsewhere.safetensors")
    # ... and one pointing at /etc/passwd with the manifest pinning its hash.
    passwd = write_random(tmp_path / "passwd")
    (passwd / "adapter_model.safetensors").unlink()
    (passwd / "adapter_model.safetensors").symlink_to("/etc/passwd")
    _rehash(passwd)
    # A symlink or a FIFO anywhere in the folder, not only the files that are copied.
    nested = write_random(tmp_path / "nested")
    (nested / "extra").mkdir()
    (nested / "extra" / "notes.md").symlink_to("/etc/hostname")
    fifo = write_random(tmp_path / "fifo")
    os.mkfifo(fifo / "README.md")

    for folder, message in [(linked, "is a symbolic link"), (passwd, "is a symbolic link"),
                            (nested, "notes.md is a symbolic link"), (fifo, "README.md is not a regular file")]:
        assert _cli(tmp_path, db_url, "adapters", "add", str(folder), "--skill", "s") == 1, folder
        assert message in capsys.readouterr().err
    store, registry = _registry(tmp_path, db_url)
    assert registry.adapters() == []
    store.close()


def _safetensors(header: dict[str, Any], data: bytes) -> bytes:
    raw = json.dumps(header).encode()
    return struct.pack("<Q", len(raw)) + raw + data


A = "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"
B = "base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight"
GOOD = {A: {"dtype": "F32", "shape": [4, 32], "data_offsets": [0, 512]},
        B: {"dtype": "F32", "shape": [32, 4], "data_offsets": [512, 1024]}}


@pytest.mark.parametrize(("weights", "message"), [
    (os.urandom(4096), "not a safetensors file"),
    (b"\x00" * 4, "not a safetensors file"),
    (_safetensors(GOOD, b"\x00" * 1024)[:-8], "malformed shape or byte range"),  # truncated data
    (_safetensors({**GOOD, B: {**GOOD[B], "shape": [32, 3]}}, b"\x00" * 1024), "512 bytes for shape [32, 3]"),
    (_safetensors(GOOD, b"\x00" * 1032), "8 bytes after the last tensor"),
    (_safetensors({**GOOD, B: {**GOOD[B], "data_offsets": [256, 768]}}, b"\x00" * 1024), "overlap or leave a gap"),
    (_safetensors({**GOOD, A: {**GOOD[A], "dtype": "I32"}}, b"\x00" * 1024), "has dtype 'I32'"),
    (_safetensors({A: GOOD[A], "model.embed_tokens.weight": {**GOOD[B]}}, b"\x00" * 1024), "unexpected key"),
    (_safetensors({A: GOOD[A], B: {**GOOD[B], "shape": [32, 2], "data_offsets": [512, 768]}}, b"\x00" * 768),
     "expected [r, in] and [out, r]"),
    (_safetensors({A: {**GOOD[A], "shape": [2, 32], "data_offsets": [0, 256]},
                   B: {**GOOD[B], "shape": [32, 2], "data_offsets": [256, 512]}}, b"\x00" * 512),
     "has rank 2 but the config says 4"),
])  # fmt: skip
def test_add_parses_the_weights_header(tmp_path: Path, db_url: str, weights: bytes, message: str) -> None:
    from agent_sleep.errors import AdapterFormatError

    folder = write_random(tmp_path / "garbage", targets=("q_proj",))
    (folder / "adapter_model.safetensors").write_bytes(weights)
    _rehash(folder)  # the manifest matches: only the header can tell
    store, registry = _registry(tmp_path, db_url)
    with pytest.raises(AdapterFormatError, match=message.replace("[", r"\[").replace("]", r"\]")):
        registry.register(folder, "s")
    good = write_random(tmp_path / "good", targets=("q_proj",))
    (good / "adapter_model.safetensors").write_bytes(_safetensors(GOOD, b"\x00" * 1024))
    _rehash(good)
    assert registry.register(good, "s").name == "s@v1"  # a well-formed header of the same layout is fine
    store.close()


# ---------------------------------------------------------------- a crash between publish and commit

_CRASH = textwrap.dedent("""
    import os, signal, sys
    from pathlib import Path
    from agent_sleep.registry import registry as module
    from agent_sleep.cli.main import main

    real, skill_dir = module.fsync_dir, Path(sys.argv[1]).resolve()
    def fsync_dir(path):
        real(path)
        if Path(path).resolve() == skill_dir:  # only after vN was renamed into place, before the row commits
            os.kill(os.getpid(), signal.SIGKILL)
    module.fsync_dir = fsync_dir
    sys.exit(main(sys.argv[2:]))
""")


def _add_killed_mid_commit(tmp_path: Path, db_url: str, folder: Path, skill: str) -> None:
    root = tmp_path / "data" / "adapters"
    env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    proc = subprocess.run(
        [sys.executable, "-c", _CRASH, str(root / skill), "--data-dir", str(tmp_path / "data"), "--db", db_url,
         "adapters", "add", str(folder), "--skill", skill],
        env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == -signal.SIGKILL, proc.stderr


@pytest.mark.parametrize("same", [True, False], ids=["same-adapter", "other-adapter"])
def test_add_recovers_from_a_crash_between_publish_and_commit(tmp_path: Path, db_url: str, same: bool,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    first, crashed = write_random(tmp_path / "first", seed=0), write_random(tmp_path / "crashed", seed=1)
    retry = crashed if same else write_random(tmp_path / "other", seed=2)
    assert _cli(tmp_path, db_url, "adapters", "add", str(first), "--skill", "refunds") == 0
    _add_killed_mid_commit(tmp_path, db_url, crashed, "refunds")

    store, registry = _registry(tmp_path, db_url)
    skill_dir = registry.root / "refunds"
    assert [a.name for a in registry.adapters()] == ["refunds@v1"] and (skill_dir / "v2").is_dir()  # the orphan
    store.close()
    capsys.readouterr()

    assert _cli(tmp_path, db_url, "adapters", "add", str(retry), "--skill", "refunds", "--json") == 0
    v2 = json.loads(capsys.readouterr().out)
    assert v2["name"] == "refunds@v2" and Path(v2["path"]) == skill_dir / "v2"
    wanted = json.loads((retry / "manifest.json").read_text())["weights_sha256"]
    assert v2["weights_sha256"] == wanted
    assert hashlib.sha256((skill_dir / "v2" / "adapter_model.safetensors").read_bytes()).hexdigest() == wanted
    aside = sorted(p.name for p in skill_dir.iterdir() if ".orphan-" in p.name)
    if same:
        assert aside == []  # identical: the orphan became the row's folder
    else:
        assert len(aside) == 1 and aside[0].startswith(".v2.orphan-")  # kept for a human, out of the way
        moved = json.loads((skill_dir / aside[0] / "manifest.json").read_text())["weights_sha256"]
        assert moved == json.loads((crashed / "manifest.json").read_text())["weights_sha256"]
    assert not [p for p in skill_dir.iterdir() if ".tmp-" in p.name]  # no staging debris

    assert _cli(tmp_path, db_url, "adapters", "add", str(first), "--skill", "refunds") == 0
    assert capsys.readouterr().out.strip() == "refunds@v3"
    store, registry = _registry(tmp_path, db_url)
    for rec in registry.adapters():
        assert read_adapter(rec.path).manifest.version == rec.version  # type: ignore[union-attr]
    store.close()


def test_an_orphan_folder_no_longer_blocks_the_skill(tmp_path: Path, db_url: str) -> None:
    """The state a crash leaves, made by hand: ``v2`` on disk without a row (once "v2 already exists" forever)."""
    store, registry = _registry(tmp_path, db_url)
    registry.register(write_random(tmp_path / "a", seed=0), "tone")
    orphan = registry.root / "tone" / "v2"
    shutil.copytree(registry.root / "tone" / "v1", orphan)  # a complete adapter, but not the one added next
    (registry.root / "tone" / "v3").mkdir()  # and debris where the version after that goes
    second, third = write_random(tmp_path / "b", seed=1), write_random(tmp_path / "c", seed=2)
    assert [registry.register(f, "tone").name for f in (second, third)] == ["tone@v2", "tone@v3"]
    for version, src in ((2, second), (3, third)):
        rec = registry.get(f"tone@v{version}")
        assert rec.weights_sha256 == json.loads((src / "manifest.json").read_text())["weights_sha256"]
        assert read_adapter(rec.path).manifest.version == version  # type: ignore[union-attr]
    aside = sorted(p.name.split(".orphan-")[0] for p in (registry.root / "tone").glob(".*.orphan-*"))
    assert aside == [".v2", ".v3"]
    store.close()


def test_concurrent_adds_get_distinct_versions(tmp_path: Path, db_url: str) -> None:
    """The row claims the number before the folder is published: racing adds never share or lose a version."""
    import threading

    store, registry = _registry(tmp_path, db_url)
    folders = [write_random(tmp_path / f"src-{i}", seed=i) for i in range(4)]
    barrier, names, errors = threading.Barrier(len(folders)), [], []

    def add(folder: Path) -> None:
        barrier.wait()
        try:
            names.append(registry.register(folder, "racy").name)
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=add, args=(f,)) for f in folders]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == [] and sorted(names) == [f"racy@v{i}" for i in range(1, 5)]
    for rec in registry.adapters(skill="racy"):
        assert read_adapter(rec.path).manifest.weights_sha256 == rec.weights_sha256  # type: ignore[union-attr]
    assert sorted(p.name for p in (registry.root / "racy").iterdir()) == ["v1", "v2", "v3", "v4"]
    store.close()
