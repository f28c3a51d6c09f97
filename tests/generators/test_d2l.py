"""Doc-to-LoRA generator on a tiny random Llama: zero-effect start, chunking, PEFT export, checkpoints, bad input."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from agent_sleep.errors import (
    AdapterError,
    EncodingError,
    IncompatibleAdapterError,
    InvalidInputError,
    PayloadTooLargeError,
)
from agent_sleep.generators.checkpoint import save_checkpoint
from agent_sleep.generators.d2l import (
    D2LGenerator,
    check_document,
    internalize_to_registry,
)
from agent_sleep.generators.hypernet import HyperConfig, HyperNet
from agent_sleep.models.loader import BaseModelHandle, load_base_model
from tests.helpers_models import make_tiny_model_dir

DOC = "The logo of Velmora Works is teal. Velmora Works was founded by Ansel Trell in Quorvik in 1962."


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    # Tiny models: thread start-up and oversubscription cost more than the arithmetic saves.
    import torch

    torch.set_num_threads(1)


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_model_dir(tmp_path_factory.mktemp("models"))


@pytest.fixture
def handle(tiny_dir: Path) -> BaseModelHandle:
    return load_base_model(str(tiny_dir), device="cpu")


def _net(handle: BaseModelHandle, *, live: bool = False) -> HyperNet:
    torch.manual_seed(0)
    config = HyperConfig.for_model(handle.model, base_model_id=handle.spec, base_content_hash=handle.content_hash,
                                   layers=[0, 1], rank=4, encoder_layers=1, latent_dim=32, n_latents=4, n_heads=2,
                                   n_blocks=1)  # fmt: skip
    net = HyperNet(config).eval()
    if live:  # a "trained" net: B no longer zero
        with torch.no_grad():
            net.scale_B.normal_(0, 3.0)
    return net


def _gen(handle: BaseModelHandle, net: HyperNet) -> D2LGenerator:
    return D2LGenerator(net, handle, checkpoint=Path("in-memory"), version="test")


def _logits(model: Any, handle: BaseModelHandle, text: str = "Who founded Velmora Works?") -> torch.Tensor:
    ids = handle.tokenizer(text, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        return model(ids).logits


def test_fresh_hypernet_is_a_no_op(handle: BaseModelHandle) -> None:
    gen = _gen(handle, _net(handle))
    result = gen.internalize(DOC)
    base = _logits(handle.model, handle)
    with gen.applied(result):
        adapted = _logits(handle.model, handle)
    assert torch.equal(base, adapted)
    assert all(torch.count_nonzero(b) == 0 for _, b in result.layers.values())


def test_chunks_concatenate_along_rank_and_peft_reproduces_them(handle: BaseModelHandle, tiny_dir: Path,
                                                                tmp_path: Path) -> None:  # fmt: skip
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    gen = _gen(handle, _net(handle, live=True))
    n_tokens = len(handle.tokenizer(DOC, add_special_tokens=False)["input_ids"])
    one = gen.internalize(DOC, chunk_tokens=10_000)
    many = gen.internalize(DOC, chunk_tokens=8, max_kept=0)  # every chunk
    k = -(-n_tokens // 8)
    assert (one.chunks, one.rank) == (1, 4)
    assert (many.chunks, many.rank) == (k, 4 * k) and k > 2
    a, b = many.layers["model.layers.1.mlp.down_proj"]
    assert a.shape == (4 * k, 64) and b.shape == (32, 4 * k)

    base = _logits(handle.model, handle)
    with gen.applied(many):
        ours = _logits(handle.model, handle)
    assert not torch.allclose(base, ours, atol=1e-4)  # the adapter does something
    folder = gen.write(many, tmp_path / "adapter", sources={"description": "test"})
    peft_model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_dir), folder).eval()
    theirs = _logits(peft_model, handle)
    torch.testing.assert_close(theirs, ours, atol=1e-5, rtol=1e-5)

    import json

    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["generator"]["name"] == "d2l" and manifest["generator"]["version"] == "test"
    assert manifest["base_model"]["content_hash"] == handle.content_hash
    assert manifest["sources"]["documents"] == [many.document_sha256] and manifest["rank"] == 4 * k


def test_checkpoint_round_trip_and_refusal_for_other_base(handle: BaseModelHandle, tmp_path: Path) -> None:
    net = _net(handle, live=True)
    ckpt = save_checkpoint(net, tmp_path / "ckpt", version="v7", dtype=torch.float16)
    gen = D2LGenerator.load(ckpt, handle=handle)
    assert gen.version == "v7"
    ours = gen.internalize(DOC, chunk_tokens=16)
    ref = _gen(handle, net.half().float()).internalize(DOC, chunk_tokens=16)
    for key, value in ref.tensors.items():
        torch.testing.assert_close(ours.tensors[key], value)

    other = load_base_model(str(make_tiny_model_dir(tmp_path, seed=1, name="other")), device="cpu")
    assert other.content_hash != handle.content_hash
    with pytest.raises(IncompatibleAdapterError, match="trained for base model"):
        D2LGenerator.load(ckpt, handle=other)


@pytest.mark.parametrize(
    ("doc", "error", "match"),
    [
        ("", InvalidInputError, "empty"),
        (" \n\t ", InvalidInputError, "whitespace"),
        (b"\xff\xfe\xfa text", EncodingError, "UTF-8"),
        (b"\x00\x01\x02\x03 PNG", InvalidInputError, "binary"),
        ("abc\ud800", EncodingError, "UTF-8"),
        ("".join(chr(i % 8 + 1) for i in range(400)), InvalidInputError, "binary"),
    ],
)
def test_bad_documents_are_refused(doc: Any, error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        check_document(doc)


def test_nothing_registered_on_bad_input_or_non_finite_output(handle: BaseModelHandle, store: Any) -> None:
    from agent_sleep.registry import AdapterRegistry

    registry = AdapterRegistry(store)
    gen = _gen(handle, _net(handle, live=True))
    with pytest.raises(InvalidInputError):
        internalize_to_registry(registry, "   ", "facts", generator=gen)
    with torch.no_grad():
        gen.net.scale_B.fill_(float("nan"))
    with pytest.raises(AdapterError, match="non-finite"):
        internalize_to_registry(registry, DOC, "facts", generator=gen)
    assert registry.adapters() == []

    gen = _gen(handle, _net(handle, live=True))
    record, result = internalize_to_registry(registry, DOC.encode(), "facts", generator=gen, chunk_tokens=16)
    assert (record.skill, record.version, record.generator, record.rank) == ("facts", 1, "d2l", result.rank)
    assert record.base_model_hash == handle.content_hash


@pytest.mark.parametrize("arch", ["Llama", "Mistral", "Qwen2", "Qwen3"])
def test_partial_forward_matches_the_model_for_each_architecture(arch: str) -> None:
    import transformers

    from agent_sleep.generators.backbone import hidden_after, logits_at, run_blocks

    torch.manual_seed(0)
    config = getattr(transformers, f"{arch}Config")(
        vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=3, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=64, head_dim=8,
    )  # fmt: skip
    model = getattr(transformers, f"{arch}ForCausalLM")(config).eval()
    ids = torch.randint(0, 64, (2, 7))
    mask = torch.tensor([[1] * 7, [1] * 4 + [0] * 3])  # right padding
    with torch.no_grad():
        ref = model(ids).logits
        ref_short = model(ids[1:, :4]).logits
        mid = hidden_after(model, ids, mask, 1)
        out = run_blocks(model, mid, mask, 1, 3)
        ours = logits_at(model, out, (torch.arange(2)[:, None].expand(2, 7), torch.arange(7)[None].expand(2, 7)))
    torch.testing.assert_close(ours[0], ref[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ours[1, :4], ref_short[0], atol=1e-5, rtol=1e-5)  # padding does not leak
    net = HyperNet(HyperConfig.for_model(model, base_model_id=arch, base_content_hash="0" * 64, latent_dim=16,
                                         n_latents=2, n_heads=2, n_blocks=1))  # fmt: skip
    a, b = net(mid, mask.bool())
    assert a.shape == (2, len(net.config.layers), 8, 48) and b.shape == (2, len(net.config.layers), 32, 8)


@pytest.mark.parametrize("options", [{}, {"b_head": "copy", "chunk_gate": True},
                                     {"b_head": "copy", "a_head": "induction"}],
                         ids=["mlp-head", "copy-head-gated", "induction-head"])  # fmt: skip
def test_bias_block_and_standardized_features_round_trip(handle: BaseModelHandle, tiny_dir: Path, tmp_path: Path,
                                                         options: dict[str, Any]) -> None:  # fmt: skip
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    config = HyperConfig.for_model(handle.model, base_model_id=handle.spec, base_content_hash=handle.content_hash,
                                   layers=[0, 1], rank=4, encoder_layers=1, latent_dim=32, n_latents=4, n_heads=2,
                                   n_blocks=1, use_bias=True, standardize=True, **options)  # fmt: skip
    net = HyperNet(config).eval()
    fresh = _gen(handle, net).internalize(DOC, chunk_tokens=8)
    base = _logits(handle.model, handle)
    with _gen(handle, net).applied(fresh):
        assert torch.equal(_logits(handle.model, handle), base)  # zero-effect start holds with the bias block
    with torch.no_grad():
        net.scale_B.normal_(0, 3.0)
        net.bias_B.normal_(0, 0.5)
        net.set_feature_stats(torch.randn(50, 32) * 3 + 1)
    ckpt = save_checkpoint(net, tmp_path / "ckpt", version="b")
    gen = D2LGenerator.load(ckpt, handle=handle)
    result = gen.internalize(DOC, chunk_tokens=8)
    assert result.rank == 4 * (result.chunks + 1)
    with gen.applied(result):
        ours = _logits(handle.model, handle)
    folder = gen.write(result, tmp_path / "adapter")
    peft_model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_dir), folder).eval()
    torch.testing.assert_close(_logits(peft_model, handle), ours, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(ours, base, atol=1e-4)


def _copy_net(**options: Any) -> HyperNet:
    torch.manual_seed(0)
    config = HyperConfig(base_model_id="m", base_content_hash="0" * 64, hidden_size=16, d_in=24, d_out=16,
                         layers=[3, 4], rank=2, latent_dim=16, n_latents=2, n_heads=2, n_blocks=1, b_head="copy",
                         scale_B_init=1.0, **options)  # fmt: skip
    return HyperNet(config).eval()


def test_copy_head_writes_document_directions_into_b() -> None:
    net = _copy_net()
    feats = torch.randn(2, 5, 16)
    mask = torch.ones(2, 5, dtype=torch.bool)
    mask[1, 1:] = False  # document 1 is a single token
    with torch.no_grad():
        a, b = net(feats, mask)
        normed = net.in_norm(feats)
    assert a.shape == (2, 2, 2, 24) and b.shape == (2, 2, 16, 2)
    # ptr_out starts as the identity: a one-token document's B columns are that token's (normalised) features
    want = torch.nn.functional.normalize(normed[1, 0], dim=0)
    torch.testing.assert_close(b[1].permute(0, 2, 1).reshape(-1, 16), want.expand(4, 16))
    # and every column of a longer document lies in the span of its tokens
    basis = normed[0].T  # [16, 5]
    cols = b[0].permute(0, 2, 1).reshape(-1, 16).T
    coef = torch.linalg.lstsq(basis, cols).solution
    torch.testing.assert_close(basis @ coef, cols, atol=1e-4, rtol=1e-4)


def test_chunk_gate_can_switch_a_chunk_off() -> None:
    net = _copy_net(chunk_gate=True)
    feats = torch.randn(1, 5, 16)
    with torch.no_grad():
        _, open_b = net(feats)
        opened = net.chunk_gates(feats)
        net.gate.bias.fill_(-60.0)
        a, shut_b = net(feats)
    assert open_b.abs().max() > 0.1 and shut_b.abs().max() < 1e-20 and a.abs().max() > 0
    torch.testing.assert_close(opened, torch.sigmoid(torch.tensor([2.0])))  # the gate starts mostly open
    assert net.chunk_gates(feats).item() < 1e-20 and _copy_net().chunk_gates(feats).item() == 1.0


def test_induction_a_rows_match_the_token_before_the_pointer() -> None:
    net = _copy_net(a_head="induction")
    with torch.no_grad():
        net.head.weight.zero_()  # only the induction part of A remains
        feats = torch.randn(1, 4, 16)
        mask = torch.tensor([[True, True, False, False]])  # a two-token document
        net.ptr_k.weight.zero_()  # uniform attention over the two real tokens
        a, _ = net(feats, mask)
        normed = net.in_norm(feats)
    # token 0 has nothing before it (zeros), so the pooled "previous" feature is half of token 0's
    want = torch.nn.functional.normalize(net.ptr_a(0.5 * normed[0, 0]), dim=0)
    torch.testing.assert_close(a[0].reshape(-1, 24), want.expand(4, 24))
    with pytest.raises(ValueError, match="b_head='copy'"):
        HyperNet(HyperConfig(base_model_id="m", base_content_hash="0" * 64, hidden_size=16, d_in=24, d_out=16,
                             layers=[0], a_head="induction"))  # fmt: skip


def test_a_higher_induction_order_starts_as_the_first_order_and_keys_on_earlier_tokens() -> None:
    torch.manual_seed(0)
    one, two = _copy_net(a_head="induction"), _copy_net(a_head="induction", induction_order=2)
    missing, unexpected = two.load_state_dict(one.state_dict(), strict=False)
    assert missing == ["ptr_a_more.0.weight"] and not unexpected
    feats = torch.randn(2, 6, 16)
    with torch.no_grad():
        a1, b1 = one(feats)
        a2, b2 = two(feats)  # the new map starts at zero: the same adapter
        torch.testing.assert_close(a2, a1)
        torch.testing.assert_close(b2, b1)
        two.head.weight.zero_()
        two.ptr_a.weight.zero_()  # only the token two before the pointed one remains
        two.ptr_a_more[0].weight.normal_()
        two.ptr_k.weight.zero_()
        mask = torch.tensor([[True, True, True, False, False, False]] * 2)
        a, _ = two(feats, mask)
        normed = two.in_norm(feats)
    # uniform attention over 3 tokens: positions 0 and 1 have nothing two before them, position 2 has token 0
    want = torch.nn.functional.normalize(two.ptr_a_more[0](normed[0, 0] / 3), dim=0)
    torch.testing.assert_close(a[0].reshape(-1, 24), want.expand(4, 24))
    with torch.no_grad():
        short, _ = two(feats[:, :1])  # a one-token chunk has no token two before: zeros, no error
    assert torch.isfinite(short).all()
    with pytest.raises(ValueError, match="induction_order > 1"):
        _copy_net(induction_order=2)


def test_position_keys_are_the_key_a_slot_pointing_at_that_token_gets() -> None:
    from pipelines.d2l.objective import key_overlap

    torch.manual_seed(0)
    net = _copy_net(a_head="induction", induction_order=2)
    with torch.no_grad():
        net.ptr_a_more[0].weight.normal_()
        feats = torch.randn(1, 6, 16)
        out = net.explain(feats, position_keys=True)
        assert net.explain(feats).position_keys is None  # only on request
        normed = net.in_norm(feats)
        # position 3's key: the maps of tokens 2 and 1 (what a slot whose pointer rests on token 3 gets)
        torch.testing.assert_close(out.position_keys[0, 3], net.ptr_a(normed[0, 2]) + net.ptr_a_more[0](normed[0, 1]))
        torch.testing.assert_close(out.position_keys[0, 0], torch.zeros(net.config.d_in))  # nothing before token 0
    keys = torch.zeros(1, 4, 3)
    keys[0, 1, 0] = keys[0, 2, 0] = 1.0  # tokens 1 and 2 share a key
    keys[0, 3, 1] = 1.0
    same = out._replace(position_keys=keys)
    assert key_overlap(same, [{"value_pos": [1, 2]}], 1).item() == pytest.approx(1.0)
    assert key_overlap(same, [{"value_pos": [1, 3]}], 1).item() == pytest.approx(0.0)
    assert key_overlap(same, [{"value_pos": [1]}], 1).item() == 0.0  # one value token: nothing to tell apart
    # three tokens, two of them confusable: the mean over pairs dilutes it (2 of 6), the nearest-key form does not
    assert key_overlap(same, [{"value_pos": [1, 2, 3]}], 1).item() == pytest.approx(2 / 6)
    assert key_overlap(same, [{"value_pos": [1, 2, 3]}], 1, nearest=True).item() == pytest.approx(2 / 3)


def test_chunks_below_min_gate_are_left_out(handle: BaseModelHandle) -> None:
    gen, net = _gated_gen(handle)  # a gate that depends on the chunk: some chunks open, some shut
    every = gen.internalize(DOC, chunk_tokens=4, min_gate=0.0, max_kept=0)  # no cap: every chunk
    pruned = gen.internalize(DOC, chunk_tokens=4, max_kept=0)  # the checkpoint's min_gate, 0.5, no cap
    ids = handle.tokenizer(DOC, add_special_tokens=False)["input_ids"]
    gates = []
    for i in range(0, len(ids), 4):
        chunk = torch.tensor([ids[i : i + 4]])
        from agent_sleep.generators.backbone import hidden_after

        gates.append(net.chunk_gates(hidden_after(handle.model, chunk, torch.ones_like(chunk), 1).float()).item())
    n_open = sum(g >= 0.5 for g in gates)
    assert 0 < n_open < len(gates)  # the test means something
    assert (every.chunks, every.dropped) == (len(gates), 0)
    assert (pruned.chunks, pruned.dropped, pruned.rank) == (n_open, len(gates) - n_open, 4 * n_open)
    # the kept chunks are exactly the open ones, in order
    a_every, _ = every.layers["model.layers.1.mlp.down_proj"]
    a_pruned, _ = pruned.layers["model.layers.1.mlp.down_proj"]
    keep = [i for i, g in enumerate(gates) if g >= 0.5]
    torch.testing.assert_close(a_pruned, torch.cat([a_every[4 * i : 4 * i + 4] for i in keep]))
    # everything shut: the best chunk is still kept
    with torch.no_grad():
        net.gate.bias.fill_(-1000.0)
    shut = gen.internalize(DOC, chunk_tokens=4)
    assert shut.chunks == 1 and shut.dropped == len(gates) - 1
    with pytest.raises(InvalidInputError, match="min_gate"):
        gen.internalize(DOC, min_gate=1.5)


DOC2 = "Harlow Vane sells copper kettles. The kettles cost 41 crowns each in Brindlemoor."


def _biased_net(handle: BaseModelHandle, **options: Any) -> HyperNet:
    torch.manual_seed(0)
    config = HyperConfig.for_model(handle.model, base_model_id=handle.spec, base_content_hash=handle.content_hash,
                                   layers=[0, 1], rank=4, encoder_layers=1, latent_dim=32, n_latents=4, n_heads=2,
                                   n_blocks=1, use_bias=True, **options)  # fmt: skip
    net = HyperNet(config).eval()
    with torch.no_grad():
        net.scale_B.normal_(0, 3.0)
        net.bias_B.normal_(0, 0.5)
    return net


def _reference(gen: D2LGenerator, text: str, chunk_tokens: int) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """One document's adapter computed step by step: each chunk through the hypernetwork, then concat_chunks."""
    from agent_sleep.generators.backbone import hidden_after

    ids = gen.handle.tokenizer(text, add_special_tokens=False)["input_ids"]
    a_parts, b_parts = [], []
    with torch.inference_mode():
        for i in range(0, len(ids), chunk_tokens):
            chunk = torch.tensor([ids[i : i + chunk_tokens]])
            mask = torch.ones_like(chunk)
            out = gen.net.explain(hidden_after(gen.handle.model, chunk, mask, 1).float(), mask.bool())
            a, b = out.a, out.b
            a_parts.append(a.float())
            b_parts.append(b.float())
        a_cat, b_cat = gen.net.concat_chunks(torch.cat(a_parts), torch.cat(b_parts))
    return {m: (a_cat[i], b_cat[i]) for i, m in enumerate(gen.config.module_names())}


def test_one_document_is_unchanged_and_several_share_one_bias_block(handle: BaseModelHandle, tiny_dir: Path,
                                                                    tmp_path: Path) -> None:  # fmt: skip
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from agent_sleep.interfaces import GenerationRequest

    gen = _gen(handle, _biased_net(handle))
    step = gen.internalize(DOC, chunk_tokens=8, chunk_batch=1, max_kept=0)  # every chunk, as the reference
    for module, (a, b) in _reference(gen, DOC, 8).items():  # the single-document path is the same computation
        assert torch.equal(step.layers[module][0], a) and torch.equal(step.layers[module][1], b)
    one = gen.internalize(DOC, chunk_tokens=8, max_kept=0)
    same = gen.internalize_documents([DOC], chunk_tokens=8, max_kept=0)
    assert same.tensors.keys() == one.tensors.keys()
    assert all(torch.equal(same.tensors[k], v) for k, v in one.tensors.items())
    assert same.document_sha256 == one.document_sha256 and same.lora_config == one.lora_config

    two = gen.internalize(DOC2, chunk_tokens=8, max_kept=0)
    both = gen.internalize_documents([DOC, DOC2], chunk_tokens=8, max_kept=0)
    r = gen.config.rank
    # each document chunked on its own (no chunk straddles the two), their chunks in order, the bias block once
    assert (both.chunks, both.rank, both.tokens) == (one.chunks + two.chunks, r * (one.chunks + two.chunks + 1),
                                                     one.tokens + two.tokens)  # fmt: skip
    for module, (a, b) in both.layers.items():
        a1, b1 = one.layers[module]
        a2, b2 = two.layers[module]
        torch.testing.assert_close(a, torch.cat([a1[:-r], a2[:-r], a1[-r:]]))
        torch.testing.assert_close(b, torch.cat([b1[:, :-r], b2[:, :-r], b1[:, -r:]], dim=1))
    assert both.document_sha256s == (one.document_sha256, two.document_sha256)
    assert both.document_sha256 not in both.document_sha256s  # names the pair, not either document

    # generate(): one document as before, several as one adapter (it refused them before)
    assert torch.equal(gen.generate(GenerationRequest(documents=[DOC])).tensors[next(iter(one.tensors))],
                       gen.internalize(DOC).tensors[next(iter(one.tensors))])  # fmt: skip
    made = gen.generate(GenerationRequest(documents=[DOC, DOC2]))
    assert made.document_sha256s == both.document_sha256s and made.chunks == 2
    with pytest.raises(InvalidInputError, match="has none"):
        gen.generate(GenerationRequest(description="no documents"))
    with pytest.raises(InvalidInputError, match="sequence of documents"):
        gen.internalize_documents(DOC)  # type: ignore[arg-type]
    with pytest.raises(InvalidInputError, match="empty"):
        gen.internalize_documents([DOC, "  "])

    # the PEFT folder reproduces the in-memory adapter and names both documents
    with gen.applied(both):
        ours = _logits(handle.model, handle)
    folder = gen.write(both, tmp_path / "adapter")
    peft_model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_dir), folder).eval()
    torch.testing.assert_close(_logits(peft_model, handle), ours, atol=1e-5, rtol=1e-5)
    import json

    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["sources"]["documents"] == list(both.document_sha256s)
    assert manifest["generator"]["document_sha256s"] == list(both.document_sha256s)


def test_each_document_keeps_its_best_chunk(handle: BaseModelHandle) -> None:
    net = _biased_net(handle, b_head="copy", chunk_gate=True, scale_B_init=1.0, min_gate=0.5)
    with torch.no_grad():  # every gate shut: each document still keeps its one best chunk
        net.gate.weight.zero_()
        net.gate.bias.fill_(-1000.0)
    gen = _gen(handle, net)
    one, two = gen.internalize(DOC, chunk_tokens=4), gen.internalize(DOC2, chunk_tokens=4)
    both = gen.internalize_documents([DOC, DOC2], chunk_tokens=4)
    assert (one.chunks, two.chunks, both.chunks) == (1, 1, 2)
    assert both.dropped == one.dropped + two.dropped > 0
    with pytest.raises(PayloadTooLargeError, match="the 2 documents have"):
        gen.internalize_documents([DOC, DOC2], chunk_tokens=4, max_chunks=3)


def _gated_gen(handle: BaseModelHandle, **kwargs: Any) -> tuple[D2LGenerator, HyperNet]:
    torch.manual_seed(0)
    config = HyperConfig.for_model(handle.model, base_model_id=handle.spec, base_content_hash=handle.content_hash,
                                   layers=[0, 1], rank=4, encoder_layers=1, latent_dim=32, n_latents=4, n_heads=2,
                                   n_blocks=1, b_head="copy", chunk_gate=True, scale_B_init=1.0,
                                   min_gate=0.5)  # fmt: skip
    net = HyperNet(config).eval()
    with torch.no_grad():  # gates that differ from chunk to chunk
        net.gate.weight.normal_(0, 30.0)
        net.gate.bias.zero_()
    return D2LGenerator(net, handle, checkpoint=Path("in-memory"), version="test", **kwargs), net


def test_keep_chunks_caps_by_gate_and_keeps_the_best() -> None:
    from agent_sleep.generators.d2l import keep_chunks

    gates = torch.tensor([0.9, 0.2, 0.95, 0.6, 0.9, 0.1])
    assert keep_chunks(gates, min_gate=0.5).tolist() == [True, False, True, True, True, False]
    # at most 2: the two highest gates (ties: the earlier chunk), still in document order
    assert keep_chunks(gates, min_gate=0.5, max_kept=2).tolist() == [True, False, True, False, False, False]
    assert keep_chunks(gates, min_gate=0.0, max_kept=3).tolist() == [True, False, True, False, True, False]
    assert keep_chunks(gates, min_gate=0.5, max_kept=10).tolist() == keep_chunks(gates, min_gate=0.5).tolist()
    # the cap never adds a chunk below min_gate, and the best chunk stays when all are shut
    assert keep_chunks(gates, min_gate=0.99, max_kept=3).tolist() == [False, False, True, False, False, False]


def test_max_kept_caps_a_long_documents_adapter(handle: BaseModelHandle) -> None:
    from agent_sleep.generators.d2l import DEFAULT_MAX_KEPT, reuse_key

    gen, _ = _gated_gen(handle)
    doc = " ".join([DOC] * 6)
    chunks = gen.encode_chunks(doc, chunk_tokens=4)
    assert len(chunks.gates) > DEFAULT_MAX_KEPT  # the test means something
    every = gen.internalize(doc, chunk_tokens=4, min_gate=0.0, max_kept=0)
    assert (every.chunks, every.dropped) == (len(chunks.gates), 0)
    default = gen.internalize(doc, chunk_tokens=4, min_gate=0.0)  # the generator's cap: DEFAULT_MAX_KEPT
    assert (default.chunks, default.dropped) == (DEFAULT_MAX_KEPT, len(chunks.gates) - DEFAULT_MAX_KEPT)
    three = gen.internalize(doc, chunk_tokens=4, min_gate=0.0, max_kept=3)
    assert DEFAULT_MAX_KEPT != 3
    top = sorted(torch.argsort(chunks.gates, descending=True, stable=True)[:3].tolist())
    a_every, _ = every.layers["model.layers.1.mlp.down_proj"]
    a_three, _ = three.layers["model.layers.1.mlp.down_proj"]
    assert (three.chunks, three.rank) == (3, 12)
    torch.testing.assert_close(a_three, torch.cat([a_every[4 * i : 4 * i + 4] for i in top]))
    # a generator's own default, and the reuse key tells the settings apart
    capped, _ = _gated_gen(handle, max_kept=3)
    assert capped.internalize(doc, chunk_tokens=4, min_gate=0.0).chunks == 3
    keys = {reuse_key(gen, doc, max_kept=k) for k in (0, 2, DEFAULT_MAX_KEPT)}
    assert len(keys) == 3 and reuse_key(gen, doc) == reuse_key(gen, doc, max_kept=DEFAULT_MAX_KEPT)
    for bad in (-1, 1.5, True):
        with pytest.raises(InvalidInputError, match="max_kept"):
            gen.internalize(DOC, max_kept=bad)  # type: ignore[arg-type]


def test_sections_keep_a_long_documents_every_chunk_as_a_routed_section(handle: BaseModelHandle,
                                                                        tmp_path: Path) -> None:  # fmt: skip
    from agent_sleep.adapters.artifact import inspect_adapter
    from agent_sleep.generators.d2l import reuse_key
    from agent_sleep.key_terms import sentences

    gen, _ = _gated_gen(handle)
    doc = " ".join([DOC, DOC2] * 3)
    chunks = gen.encode_chunks(doc, chunk_tokens=8)
    n = len(chunks.gates)
    assert n > 2
    capped = gen.internalize(doc, chunk_tokens=8, min_gate=0.0, max_kept=2)
    assert (capped.chunks, capped.sections) == (2, ())  # sections off: the cap as before
    # chunks were left out: the adapter is to be routed by what it kept, not by the document's first sentences
    kept = [i for i in torch.argsort(chunks.gates, descending=True, stable=True)[:2].sort().values.tolist()]
    ids = handle.tokenizer(doc, add_special_tokens=False)["input_ids"]
    texts = [handle.tokenizer.decode(ids[8 * i : 8 * i + 8], skip_special_tokens=True) for i in kept]
    assert capped.keys == tuple(dict.fromkeys(k for t in texts for k in (sentences(t) or [t.strip()])))
    every = gen.internalize(doc, chunk_tokens=8, min_gate=0.0, max_kept=0)
    assert every.keys == ()  # nothing left out: routed by the document's own sentences
    routed = gen.internalize(doc, chunk_tokens=8, min_gate=0.0, max_kept=2, sections=True)
    assert (routed.chunks, routed.dropped, len(routed.sections)) == (n, 0, n)  # nothing lost to the cap
    for module, (a, b) in every.layers.items():  # the same tensors as keeping every chunk
        torch.testing.assert_close(routed.layers[module][0], a)
        torch.testing.assert_close(routed.layers[module][1], b)
    assert [(s.start, s.stop) for s in routed.sections] == [(4 * i, 4 * i + 4) for i in range(n)]
    first = handle.tokenizer.decode(ids[:8], skip_special_tokens=True)
    assert routed.sections[0].keys == [first.strip()]  # one short chunk: its text is its one key
    assert all(k.strip() for s in routed.sections for k in s.keys)
    # a document the cap does not touch is not sectioned: short documents are unchanged
    short = gen.internalize(DOC, chunk_tokens=8, min_gate=0.0, max_kept=100, sections=True)
    assert short.sections == () and short.chunks == len(gen.encode_chunks(DOC, chunk_tokens=8).gates)
    # the folder's manifest routes by the sections; the generator default and the reuse key follow the setting
    _, manifest = inspect_adapter(gen.write(routed, tmp_path / "long", skill="long"))
    assert manifest.routing is not None and manifest.routing.sections == list(routed.sections)
    _, plain = inspect_adapter(gen.write(capped, tmp_path / "capped", skill="capped"))
    assert plain.routing is None and plain.generator.model_extra["routing_keys"] == list(capped.keys)
    on, _ = _gated_gen(handle, max_kept=2, sections=True)
    assert len(on.internalize(doc, chunk_tokens=8, min_gate=0.0).sections) == n
    assert reuse_key(on, doc) != reuse_key(gen, doc)
