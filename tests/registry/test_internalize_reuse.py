"""Internalising an unchanged document returns the version it made before instead of a copy with identical weights."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from agent_sleep.cli import main as cli_main
from agent_sleep.config import get_settings
from agent_sleep.registry import AdapterRegistry
from agent_sleep.store import ExperienceStore
from tests.helpers_models import make_tiny_model_dir

DOC = "The logo of Velmora Works is teal. Velmora Works was founded by Ansel Trell in Quorvik.\n"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(model folder, a D2L checkpoint for it whose adapters change the model)."""
    import torch

    from agent_sleep.generators.checkpoint import save_checkpoint
    from agent_sleep.generators.hypernet import HyperConfig, HyperNet
    from agent_sleep.models.loader import load_base_model

    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("reuse")
    folder = make_tiny_model_dir(root)
    handle = load_base_model(str(folder), device="cpu")
    torch.manual_seed(0)
    config = HyperConfig.for_model(handle.model, base_model_id=str(folder), base_content_hash=handle.content_hash,
                                   layers=[0, 1], rank=4, encoder_layers=1, latent_dim=32, n_latents=4, n_heads=2,
                                   n_blocks=1)  # fmt: skip
    net = HyperNet(config)
    with torch.no_grad():
        net.scale_B.normal_(0, 0.5)
    return folder, save_checkpoint(net, root / "ckpt", version="test")


def _internalize(doc: Path, ckpt: Path, capsys: pytest.CaptureFixture[str], *extra: str) -> dict:
    argv = ["internalize", str(doc), "--name", "velmora", "--checkpoint", str(ckpt), "--json", *extra]
    assert cli_main.main(argv) == 0
    return json.loads(capsys.readouterr().out)


def _versions() -> list[str]:
    store = ExperienceStore(settings=get_settings())
    try:
        return [a.name for a in AdapterRegistry(store).adapters()]
    finally:
        store.close()


def test_cli_reuses_the_version_of_an_unchanged_document(tiny: tuple[Path, Path], tmp_path: Path,
                                                         capsys: pytest.CaptureFixture[str],
                                                         monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    model, ckpt = tiny
    monkeypatch.setenv("AGENT_SLEEP_MODEL", str(model))
    doc = tmp_path / "policy.md"
    doc.write_text(DOC)
    first = _internalize(doc, ckpt, capsys, "--chunk-tokens", "8", "--agent", "helpdesk")
    assert (first["adapter"], first["reused"]) == ("velmora@v1", False)

    again = _internalize(doc, ckpt, capsys, "--chunk-tokens", "8")
    assert again["reused"] is True and _versions() == ["velmora@v1"]
    same = ("adapter", "path", "chunks", "chunks_dropped", "rank", "tokens", "adapter_bytes", "document_sha256",
            "document_id", "base_model_hash", "generator")  # fmt: skip
    assert {k: again[k] for k in same} == {k: first[k] for k in same}

    assert cli_main.main(["internalize", str(doc), "--name", "velmora", "--checkpoint", str(ckpt),
                          "--chunk-tokens", "8"]) == 0  # fmt: skip
    assert "unchanged: policy.md was internalized into velmora@v1" in capsys.readouterr().out

    # Anything that changes the weights makes a new version: options, the document's bytes.
    assert _internalize(doc, ckpt, capsys, "--chunk-tokens", "16")["adapter"] == "velmora@v2"
    assert _internalize(doc, ckpt, capsys, "--chunk-tokens", "8", "--min-gate", "0.5")["adapter"] == "velmora@v3"
    capped = _internalize(doc, ckpt, capsys, "--chunk-tokens", "8", "--max-kept", "1")
    assert (capped["adapter"], capped["chunks"], capped["chunks_dropped"]) == ("velmora@v4", 1,
                                                                              first["chunks"] + first["chunks_dropped"] - 1)
    doc.write_text(DOC + "It makes bicycles.\n")
    changed = _internalize(doc, ckpt, capsys, "--chunk-tokens", "8")
    assert (changed["adapter"], changed["reused"]) == ("velmora@v5", False)
    assert changed["document_sha256"] != first["document_sha256"]
    doc.write_text(DOC)
    assert _internalize(doc, ckpt, capsys, "--chunk-tokens", "8")["adapter"] == "velmora@v1"  # still there

    # A version whose folder is gone on this host is not "reused": a fresh one is made.
    shutil.rmtree(first["path"])
    fresh = _internalize(doc, ckpt, capsys, "--chunk-tokens", "8")
    assert (fresh["adapter"], fresh["reused"]) == ("velmora@v6", False)


def test_api_reuse_returns_the_stored_adapter(tiny: tuple[Path, Path], store: ExperienceStore) -> None:
    """Over SQLite and PostgreSQL: the same record, and the adapter read back equals the generated one."""
    import torch

    from agent_sleep.generators.d2l import D2LGenerator, internalize_to_registry
    from agent_sleep.models.loader import load_base_model

    model, ckpt = tiny
    gen = D2LGenerator.load(ckpt, handle=load_base_model(str(model), device="cpu"))
    registry = AdapterRegistry(store)
    record, made = internalize_to_registry(registry, DOC, "velmora", generator=gen, chunk_tokens=8)
    again, reused = internalize_to_registry(registry, DOC.encode(), "velmora", generator=gen, chunk_tokens=8)
    assert (made.reused, reused.reused) == (False, True)
    assert again.id == record.id and [a.name for a in registry.adapters()] == ["velmora@v1"]
    assert (reused.chunks, reused.rank, reused.tokens, reused.dropped, reused.document_sha256, reused.scale) == \
        (made.chunks, made.rank, made.tokens, made.dropped, made.document_sha256, made.scale)  # fmt: skip
    assert reused.tensors.keys() == made.tensors.keys()
    assert all(torch.equal(reused.tensors[k], made.tensors[k]) for k in made.tensors)
    assert all(torch.equal(a, b) for m in made.layers for a, b in zip(reused.layers[m], made.layers[m], strict=True))

    # Other hypernetwork weights under the same version string: a new version, not the old adapter.
    with torch.no_grad():
        gen.net.scale_B.mul_(2.0)
    other, _ = internalize_to_registry(registry, DOC, "velmora", generator=gen, chunk_tokens=8)
    assert other.name == "velmora@v2"
