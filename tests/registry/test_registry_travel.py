"""Adapters travel: rows hold paths relative to the artifact root, and registered folders load with plain PEFT.

Two hosts share one database (SQLite here, PostgreSQL when configured) but keep the
folders under different roots; a registered copy names a base model that
``AutoPeftModelForCausalLM`` can load offline, with the weights the manifest's hash pins.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from sqlalchemy import select, update

from agent_sleep.adapters import LoraHooks, lora_layers, prepare_stack, read_adapter
from agent_sleep.cli.main import main
from agent_sleep.config import Settings
from agent_sleep.models.loader import BaseModelHandle, load_base_model
from agent_sleep.registry import AdapterRegistry
from agent_sleep.store import ExperienceStore
from agent_sleep.store.models import AdapterVersion
from tests.helpers_adapters import logits, probe, write_random
from tests.helpers_models import make_tiny_model_dir


def _open(tmp_path: Path, db_url: str, root: Path | None, **extra: object) -> tuple[ExperienceStore, AdapterRegistry]:
    if root is not None:
        extra["artifact_root"] = root
    settings = Settings(data_dir=tmp_path / "data", database_url=db_url, **extra)  # type: ignore[arg-type]
    store = ExperienceStore(settings=settings)
    return store, AdapterRegistry(store)


def _stored_paths(store: ExperienceStore) -> dict[str, str]:
    with store.session() as s:
        return {row.name: row.path for row in s.execute(select(AdapterVersion)).scalars()}


def test_a_registry_moves_with_its_artifact_root(tmp_path: Path, db_url: str, monkeypatch: pytest.MonkeyPatch,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    model_dir = make_tiny_model_dir(tmp_path)
    handle = load_base_model(str(model_dir), device="cpu", dtype="float32")
    root_a, root_b = tmp_path / "host-a" / "adapters", tmp_path / "host-b" / "mnt" / "adapters"
    store, registry = _open(tmp_path, db_url, root_a)
    assert registry.root == root_a.resolve()
    for seed in (0, 1):
        registry.register(write_random(tmp_path / f"src-{seed}", handle, seed=seed, std=0.01), "refunds")
    assert _stored_paths(store) == {"refunds@v1": "refunds/v1", "refunds@v2": "refunds/v2"}
    assert Path(registry.get("refunds@v2").path) == root_a.resolve() / "refunds" / "v2"
    store.close()

    # Host B: the same database, the tree copied to another root; host A's folders are gone.
    shutil.copytree(root_a, root_b)
    shutil.rmtree(root_a)
    monkeypatch.setenv("AGENT_SLEEP_ARTIFACT_ROOT", str(root_b))
    store, registry = _open(tmp_path, db_url, None)
    assert registry.root == root_b.resolve()
    rec = registry.get("refunds@v2")
    assert Path(rec.path) == root_b.resolve() / "refunds" / "v2"
    assert read_adapter(rec.path).manifest.version == 2  # type: ignore[union-attr]
    store.close()

    # ... and the runtime loads it there: deploy validates the weights read from root B.
    monkeypatch.setenv("AGENT_SLEEP_MODEL", str(model_dir))
    assert main(["--data-dir", str(tmp_path / "data"), "--db", db_url, "deploy", "refunds@v2", "--agent", "a",
                 "--json"]) == 0  # fmt: skip
    assert json.loads(capsys.readouterr().out)["status"] == "deployed"
    # A new version registered on host B lands under root B, relative in the row like the others.
    store, registry = _open(tmp_path, db_url, None)
    assert Path(registry.register(write_random(tmp_path / "src-2", handle, seed=2), "refunds").path).parent == \
        root_b.resolve() / "refunds"  # fmt: skip
    assert _stored_paths(store)["refunds@v3"] == "refunds/v3"
    store.close()


def test_rows_with_absolute_paths_keep_working(tmp_path: Path, db_url: str) -> None:
    """Rows written before paths were relative: read as they are, or under this root once the folder moved."""
    root_a, root_b = tmp_path / "a", tmp_path / "b"
    store, registry = _open(tmp_path, db_url, root_a)
    registry.register(write_random(tmp_path / "src"), "tone")
    old = str(root_a.resolve() / "tone" / "v1")
    with store.session() as s:  # what the registry used to store
        s.execute(update(AdapterVersion).values(path=old))
    assert registry.get("tone@v1").path == old
    store.close()

    store, registry = _open(tmp_path, db_url, root_b)
    assert registry.get("tone@v1").path == old  # still there: the old path wins, whatever this root is
    shutil.move(str(root_a), str(root_b))
    assert registry.get("tone").path == str(root_b.resolve() / "tone" / "v1")
    assert read_adapter(registry.get("tone").path).manifest.skill == "tone"  # type: ignore[union-attr]
    store.close()


@pytest.fixture
def alias_model(tmp_path: Path) -> tuple[Path, BaseModelHandle]:
    """A tiny model standing in for the default alias: converted into <cache_dir>/models/smollm2-135m-instruct."""
    cache = tmp_path / "cache"
    folder = make_tiny_model_dir(cache / "models", name="smollm2-135m-instruct")
    return cache, load_base_model(str(folder), device="cpu", dtype="float32")


def test_a_registered_folder_loads_with_auto_peft(tmp_path: Path, db_url: str,
                                                  alias_model: tuple[Path, BaseModelHandle]) -> None:
    from peft import AutoPeftModelForCausalLM

    cache, handle = alias_model
    src = write_random(tmp_path / "src", handle, base_hash=handle.content_hash, std=0.02)
    manifest = json.loads((src / "manifest.json").read_text())
    manifest["base_model"]["id"] = "smollm2-135m-instruct"  # what generators write for the default model
    (src / "manifest.json").write_text(json.dumps(manifest))
    store, registry = _open(tmp_path, db_url, None, cache_dir=cache)
    rec = registry.register(src, "facts")
    config = json.loads((Path(rec.path) / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == str(handle.path)  # loadable offline, these very weights
    assert (rec.base_model_id, rec.base_model_hash) == ("smollm2-135m-instruct", handle.content_hash)
    assert json.loads((Path(rec.path) / "manifest.json").read_text())["base_model"]["id"] == "smollm2-135m-instruct"

    ids = probe(handle)
    peft_model = AutoPeftModelForCausalLM.from_pretrained(rec.path).eval()
    stack = prepare_stack("facts", [("facts", lora_layers(read_adapter(rec.path)), 1.0)])
    with LoraHooks.attach(handle.model).activate(stack):
        runtime = logits(handle.model, ids)
    assert float((logits(peft_model, ids) - runtime).abs().max()) < 1e-4
    assert float((runtime - logits(handle.model, ids)).abs().max()) > 1e-3

    # Made for other weights than the alias holds here: the name is left alone, never pointed at wrong weights.
    other = write_random(tmp_path / "other", handle, base_hash="cd" * 32)
    manifest = json.loads((other / "manifest.json").read_text())
    manifest["base_model"]["id"] = "smollm2-135m-instruct"
    (other / "manifest.json").write_text(json.dumps(manifest))
    rec = registry.register(other, "facts")
    assert json.loads((Path(rec.path) / "adapter_config.json").read_text())["base_model_name_or_path"] == "tiny"
    store.close()
