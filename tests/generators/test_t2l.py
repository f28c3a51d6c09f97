"""Text-to-LoRA generator on a tiny random Llama: zero-effect start, PEFT export, checkpoints, determinism, input."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch

from agent_sleep.errors import AdapterFormatError, IncompatibleAdapterError, InvalidInputError
from agent_sleep.generators.checkpoint import load_checkpoint, save_checkpoint
from agent_sleep.generators.t2l import (
    MAX_DESCRIPTION_CHARS,
    T2LGenerator,
    create_skill,
    embed_descriptions,
    normalize_description,
)
from agent_sleep.generators.t2l_net import T2L_FORMAT, T2LConfig, T2LNet
from agent_sleep.interfaces import GenerationRequest
from agent_sleep.models.loader import BaseModelHandle, load_base_model
from tests.helpers_models import make_tiny_model_dir

SKILL = "Start every answer with the word 'Verdict:'"
OTHER = "Answer in capital letters only"


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)  # tiny models: threads cost more than they save


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_model_dir(tmp_path_factory.mktemp("models"))


@pytest.fixture
def handle(tiny_dir: Path) -> BaseModelHandle:
    return load_base_model(str(tiny_dir), device="cpu")


def tiny_net(handle: BaseModelHandle, *, live: bool = False, seed: int = 0) -> T2LNet:
    """A T2L net for the tiny model (base-mean encoder); ``live``: random head weights, as if trained."""
    torch.manual_seed(seed)
    config = T2LConfig.for_model(handle.model, base_model_id=handle.spec, base_content_hash=handle.content_hash,
                                 layers=[0, 1], rank=4, encoder="base-mean",
                                 emb_dim=int(handle.model.config.hidden_size), task_dim=16, pos_dim=8, head_in=32,
                                 n_blocks=1)  # fmt: skip
    net = T2LNet(config).eval()
    if live:
        with torch.no_grad():
            for head in net.heads:
                head.weight.normal_(0, 0.5)
    return net


def _gen(handle: BaseModelHandle, net: T2LNet) -> T2LGenerator:
    return T2LGenerator(net, handle, checkpoint=Path("in-memory"), version="test")


def _logits(model: Any, handle: BaseModelHandle, text: str = "What is the capital of France?") -> torch.Tensor:
    ids = handle.tokenizer(text, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        return model(ids).logits


def test_fresh_hypernet_is_an_exact_no_op_for_every_description(handle: BaseModelHandle) -> None:
    gen = _gen(handle, tiny_net(handle))
    base = _logits(handle.model, handle)
    for text in (SKILL, OTHER):
        adapter = gen.create(text)
        assert all(torch.count_nonzero(b) == 0 for _, b in adapter.layers.values())
        assert all(torch.count_nonzero(a) > 0 for a, _ in adapter.layers.values())  # A is a fresh PEFT-style init
        with gen.applied(adapter):
            assert torch.equal(_logits(handle.model, handle), base)


def test_peft_folder_reproduces_the_in_memory_adapter(handle: BaseModelHandle, tiny_dir: Path,
                                                      tmp_path: Path) -> None:  # fmt: skip
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    gen = _gen(handle, tiny_net(handle, live=True))
    adapter = gen.create(SKILL)
    assert adapter.rank == 4 and adapter.description == SKILL + "."
    assert set(adapter.layers) == {f"model.layers.{i}.self_attn.{m}_proj" for i in (0, 1) for m in "qv"}
    a, b = adapter.layers["model.layers.1.self_attn.v_proj"]
    assert a.shape == (4, 32) and b.shape == (16, 4)

    base = _logits(handle.model, handle)
    with gen.applied(adapter):
        ours = _logits(handle.model, handle)
    assert not torch.allclose(base, ours, atol=1e-4)  # the adapter does something
    folder = gen.write(adapter, tmp_path / "adapter", skill="verdict")
    peft_model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_dir), folder).eval()
    torch.testing.assert_close(_logits(peft_model, handle), ours, atol=1e-5, rtol=1e-5)

    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["generator"]["name"] == "t2l" and manifest["generator"]["version"] == "test"
    assert manifest["generator"]["encoder"] == "base-mean"
    assert manifest["generator"]["description_sha256"] == adapter.description_sha256
    assert manifest["sources"]["description"] == SKILL + "."
    assert manifest["base_model"]["content_hash"] == handle.content_hash and manifest["skill"] == "verdict"


def test_generate_is_deterministic_and_reads_the_description(handle: BaseModelHandle) -> None:
    gen = _gen(handle, tiny_net(handle, live=True))
    one = gen.generate(GenerationRequest(description=SKILL))
    two = gen.generate(GenerationRequest(description=f"  {SKILL}\n"))  # same text after normalising
    for key, value in one.tensors.items():
        assert torch.equal(two.tensors[key], value)
    other = gen.generate(GenerationRequest(description=OTHER))
    assert any(not torch.equal(other.tensors[k], v) for k, v in one.tensors.items())
    with pytest.raises(InvalidInputError, match="description"):
        gen.generate(GenerationRequest(documents=["a document"]))


@pytest.mark.parametrize(("text", "problem"), [
    ("", "empty"), (" \n\t ", "empty"), ("x" * (MAX_DESCRIPTION_CHARS + 1), "characters"),
    ("a\x00b", "control"), (b"bytes", "string"),
])  # fmt: skip
def test_bad_descriptions_are_refused(handle: BaseModelHandle, text: Any, problem: str) -> None:
    with pytest.raises(InvalidInputError, match=problem):
        _gen(handle, tiny_net(handle)).create(text)


def test_normalize_description() -> None:
    assert normalize_description("  Reply   in\nJSON ") == "Reply in JSON."
    assert normalize_description("Shout!") == "Shout!"
    assert normalize_description("Why?") == "Why?"


def test_embeddings_are_unit_rows_and_unknown_encoder_is_refused(handle: BaseModelHandle) -> None:
    emb = embed_descriptions("base-mean", [SKILL, OTHER], handle)
    assert emb.shape == (2, 32)
    torch.testing.assert_close(emb.norm(dim=1), torch.ones(2))
    with pytest.raises(InvalidInputError, match="unknown description encoder"):
        embed_descriptions("bert", [SKILL], handle)
    with pytest.raises(InvalidInputError, match="needs the base model"):
        embed_descriptions("base-mean", [SKILL], None)


def test_checkpoint_round_trip_and_refusal_for_other_base(handle: BaseModelHandle, tmp_path: Path) -> None:
    net = tiny_net(handle, live=True)
    ckpt = save_checkpoint(net, tmp_path / "ckpt", version="v3", dtype=torch.float16, fmt=T2L_FORMAT)
    config = json.loads((ckpt / "t2l_config.json").read_text())
    assert config["hyper"]["base_content_hash"] == handle.content_hash and config["version"] == "v3"
    gen = T2LGenerator.load(ckpt, handle=handle)
    assert gen.version == "v3"
    ref = net.half().float()
    ours, theirs = gen.create(SKILL), _gen(handle, ref).create(SKILL)
    for key, value in theirs.tensors.items():
        torch.testing.assert_close(ours.tensors[key], value)

    other = load_base_model(str(make_tiny_model_dir(tmp_path, seed=1, name="other")), device="cpu")
    assert other.content_hash != handle.content_hash
    with pytest.raises(IncompatibleAdapterError, match="T2L checkpoint .* trained for base model"):
        T2LGenerator.load(ckpt, handle=other)
    with pytest.raises(AdapterFormatError, match="not a T2L checkpoint: t2l_config.json is missing"):
        load_checkpoint(tmp_path, content_hash=None, fmt=T2L_FORMAT)
    with pytest.raises(AdapterFormatError, match="not a D2L checkpoint"):  # a T2L folder is not a D2L one
        load_checkpoint(ckpt, content_hash=None)


def test_create_skill_registers_a_candidate(handle: BaseModelHandle, tmp_path: Path) -> None:
    from agent_sleep.config import Settings
    from agent_sleep.registry import AdapterRegistry
    from agent_sleep.store import ExperienceStore

    settings = Settings(data_dir=tmp_path / "data")
    store = ExperienceStore(settings=settings)
    try:
        registry = AdapterRegistry(store)
        gen = _gen(handle, tiny_net(handle, live=True))
        record, adapter = create_skill(registry, SKILL, "verdict", generator=gen)
        assert (record.skill, record.version, record.status, record.rank) == ("verdict", 1, "candidate", 4)
        assert record.generator == "t2l" and record.sources.get("description") == SKILL + "."
        record2, _ = create_skill(registry, OTHER, "verdict", generator=gen)
        assert record2.version == 2
        with pytest.raises(InvalidInputError, match="empty"):
            create_skill(registry, " ", "verdict", generator=gen)
        assert [r.version for r in registry.adapters(skill="verdict")] == [1, 2]

        # the same description again (any spacing): that version, read back, not a copy of it
        again, back = create_skill(registry, f"  {SKILL}  ", "verdict", generator=gen)
        assert (again.version, back.reused, adapter.reused) == (1, True, False)
        assert back.description == adapter.description and set(back.tensors) == set(adapter.tensors)
        assert all(torch.equal(back.tensors[k], adapter.tensors[k]) for k in adapter.tensors)
        # another hypernetwork (other weights, the same version string) makes a new version
        other_net = _gen(handle, tiny_net(handle, live=True, seed=5))
        assert create_skill(registry, SKILL, "verdict", generator=other_net)[0].version == 3
        # a version whose folder is gone is not reused
        shutil.rmtree(record.path)
        assert create_skill(registry, OTHER, "verdict", generator=gen)[0].version == 2  # still intact
        assert create_skill(registry, SKILL, "verdict", generator=gen)[0].version == 4
    finally:
        store.close()


def test_t2l_by_name_is_a_generator(handle: BaseModelHandle, tmp_path: Path) -> None:
    from agent_sleep.generators.registry import get_generator
    from agent_sleep.interfaces import Generator
    from tests.helpers_protocols import protocol_mismatches

    ckpt = save_checkpoint(tiny_net(handle, live=True), tmp_path / "ckpt", version="t9", fmt=T2L_FORMAT)
    gen = get_generator("t2l", checkpoint=ckpt, handle=handle)
    assert isinstance(gen, T2LGenerator) and isinstance(gen, Generator)
    assert protocol_mismatches(gen, Generator) == []
    assert (gen.name, gen.version) == ("t2l", "t9")
    ref = T2LGenerator.load(ckpt, handle=handle).create(SKILL)
    for key, value in gen.generate(GenerationRequest(description=SKILL)).tensors.items():
        assert torch.equal(ref.tensors[key], value)
