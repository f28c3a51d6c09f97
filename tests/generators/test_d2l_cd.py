"""Amortised context distillation for D2L meta-training, on a tiny random Llama: the top-k KL, the teacher cache,
the loss through generated adapters, and a recipe that mixes it with the span and gate losses."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from agent_sleep.models.loader import load_base_model
from pipelines.d2l import synth
from pipelines.d2l.objective import answer_logits, cd_loss, qa_loss, topk_kl
from pipelines.d2l.teacher import build_teacher_cache, teacher_sequence, teacher_topk
from pipelines.d2l.trainer import TrainConfig, train
from tests.generators.test_d2l_training import _tiny_recipe
from tests.helpers_models import make_tiny_model_dir


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


@pytest.fixture
def handle(tmp_path: Path):  # type: ignore[no-untyped-def]
    return load_base_model(str(make_tiny_model_dir(tmp_path, init_std=0.2)), device="cpu")


def _top(logits: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    top = logits.float().log_softmax(-1).topk(k, dim=-1)
    return top.values, top.indices


def test_topk_kl_is_zero_for_the_teacher_itself_and_positive_otherwise() -> None:
    g = torch.Generator().manual_seed(0)
    teacher = torch.randn(6, 50, generator=g) * 3
    values, idx = _top(teacher, 8)
    assert topk_kl(teacher, values, idx).abs().max() < 1e-5
    other = teacher + torch.randn(6, 50, generator=g)
    kl = topk_kl(other, values, idx)
    assert (kl > 1e-3).all()
    # a student that only shifts mass between tokens outside the teacher's top-k is not penalised
    outside = teacher.clone()
    rest = torch.ones(6, 50, dtype=torch.bool).scatter(1, idx, False)
    mass = outside.log_softmax(-1).exp()
    moved = mass.clone()
    for r in range(6):
        cols = rest[r].nonzero().flatten()
        moved[r, cols] = mass[r, cols].sum() * torch.softmax(torch.randn(len(cols), generator=g), 0)
    assert topk_kl(moved.log(), values, idx).abs().max() < 1e-5
    # never negative, whatever the student
    for _ in range(20):
        assert (topk_kl(torch.randn(6, 50, generator=g) * 4, values, idx) > -1e-6).all()


def test_teacher_prefix_sharing_matches_full_passes_and_the_cache_round_trips(handle, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    model, tok = handle.model, handle.tokenizer
    docs = synth.make_fact_docs(3, seed=4, n_facts=(2, 3))
    doc = docs[0]
    seqs = [teacher_sequence(tok, doc["text"], qa["question"], qa["answer"]) for qa in doc["qa"] + doc["probe_qa"]]
    shared = teacher_topk(model, seqs, 5, "cpu", batch=2, pad_id=tok.pad_token_id)
    for (ids, n_prompt), got in zip(seqs, shared, strict=True):
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([ids])).logits[0, n_prompt - 1 : len(ids) - 1]
        values, idx = _top(logits, 5)
        assert got["logp"].shape == (len(ids) - n_prompt, 5) and got["logp"].dtype == torch.float16
        torch.testing.assert_close(got["logp"].float(), values, atol=2e-3, rtol=2e-3)
        assert (got["idx"].long() == idx).float().mean() > 0.95  # near-ties may swap order

    folder = tmp_path / "teacher"
    first = build_teacher_cache(model, tok, docs, model_hash=handle.content_hash, folder=folder, top_k=5,
                                qa_keys=("qa", "probe_qa"))  # fmt: skip
    files = sorted(folder.glob("*.pt"))
    assert len(files) == 3 and [len(e) for e in first] == [2 * len(d["qa"]) for d in docs]
    stamps = {f: f.stat().st_mtime_ns for f in files}
    files[1].unlink()  # an interrupted build: only the missing document is computed again
    again = build_teacher_cache(model, tok, docs, model_hash=handle.content_hash, folder=folder, top_k=5,
                                qa_keys=("qa", "probe_qa"))  # fmt: skip
    assert {f: f.stat().st_mtime_ns for f in (files[0], files[2])} == {f: stamps[f] for f in (files[0], files[2])}
    for a, b in zip(first, again, strict=True):
        for x, y in zip(a, b, strict=True):
            assert torch.equal(x["logp"], y["logp"]) and torch.equal(x["idx"], y["idx"])
    changed = [dict(docs[0], qa=[dict(docs[0]["qa"][0], answer="Zed")])]
    build_teacher_cache(model, tok, changed, model_hash=handle.content_hash, folder=folder, top_k=5)
    assert len(list(folder.glob("*.pt"))) == 4  # other answers, another key


def test_cd_loss_through_generated_adapters(handle, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from agent_sleep.generators.backbone import RowLora
    from agent_sleep.generators.hypernet import HyperConfig, HyperNet
    from pipelines.d2l.data import build_cache
    from pipelines.d2l.objective import doc_loras

    model, tok = handle.model, handle.tokenizer
    model.requires_grad_(False)
    hc = HyperConfig.for_model(model, base_model_id="tiny", base_content_hash=handle.content_hash, layers=[1],
                               encoder_layers=1, rank=4, latent_dim=32, n_latents=4, n_heads=2, n_blocks=1,
                               scale=40.0, use_bias=True, scale_B_init=0.5)  # fmt: skip
    docs = synth.make_fact_docs(3, seed=1, n_facts=(2, 2))
    cached = build_cache(model, tok, docs, encoder_layers=1, first_lora_layer=1, max_doc_tokens=48, device="cpu",
                         path=tmp_path / "c.pt")  # fmt: skip
    lora = RowLora(model, hc.module_names())
    rows = [(i, qa) for i, d in enumerate(cached) for qa in d["qa"]]
    # teacher = the base model itself (no document, no adapter): the student without adapter matches it
    with torch.no_grad():
        logits, _, owner = answer_logits(model, lora, hc, None, rows, "cpu")
    values, idx = _top(logits, 8)
    for r, (_, qa) in enumerate(rows):
        at = (owner == r).nonzero().flatten()
        qa["teacher"] = {"logp": values[at].to(torch.float16), "idx": idx[at].to(torch.int32)}
    kl0, ce0 = cd_loss(model, lora, hc, None, rows, "cpu")
    assert kl0.abs().max() < 2e-3
    torch.testing.assert_close(ce0, qa_loss(model, lora, hc, None, rows, "cpu"))

    net = HyperNet(hc)
    net.set_feature_stats(torch.cat([d["feats"] for d in cached]).float())
    ab = doc_loras(net, cached, "cpu")
    kl, _ = cd_loss(model, lora, hc, ab, rows, "cpu")
    assert (kl > 1e-3).all()  # a non-zero adapter moves the student away from this teacher
    kl.mean().backward()
    grads = [p.grad.abs().sum().item() for p in net.parameters() if p.grad is not None]
    assert grads and sum(g > 0 for g in grads) >= len(grads) // 2
    bad = [(0, dict(rows[0][1], teacher={"logp": values[:1].half(), "idx": idx[:1].int()}))]
    with pytest.raises(ValueError, match="answer tokens"):
        cd_loss(model, lora, hc, None, bad, "cpu")
    lora.remove()


def test_a_recipe_mixes_cd_with_span_and_gate_losses_on_pages(handle, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    # distillation alone: the student moves towards the teacher
    only = _tiny_recipe(data={"n_train": 6, "n_eval": 3, "pages_share": 0.5}, steps=12, eval_every=100, lr=0.01,
                        cd_loss=1.0, cd_top_k=4, ce_weight=0.0)  # fmt: skip
    train(TrainConfig.model_validate(only), tmp_path / "only", device="cpu", handle=handle, threads=1)
    recs = [json.loads(line) for line in (tmp_path / "only" / "metrics.jsonl").read_text().splitlines()]
    kl = [r["cd_kl"] for r in recs if r["kind"] == "train"]
    assert sum(kl[-3:]) / 3 < 0.85 * kl[0]

    # mixed with gold-answer CE, pointer and gate losses, grouped adapters with filler chunks
    raw = _tiny_recipe(data={"n_train": 6, "n_eval": 3, "pages_share": 0.5, "n_hay": 2, "p_hay": 0.5,
                             "chunk_probs": [0.5, 0.5], "use_probe_qa": True},
                       hyper={"b_head": "copy", "chunk_gate": True, "scale_B_init": 0.1},
                       steps=4, ckpt_every=2, eval_every=4, cd_loss=1.0, cd_top_k=4, ce_weight=0.5,
                       pointer_loss=0.1, gate_loss=0.1)  # fmt: skip
    cfg = TrainConfig.model_validate(raw)
    dumped = cfg.model_dump(mode="json")
    assert dumped["cd_loss"] == 1.0 and dumped["data"]["pages_share"] == 0.5
    run = tmp_path / "run"
    assert train(cfg, run, device="cpu", handle=handle, threads=1)["step"] == 4
    files = sorted((run / "teacher").glob("*.pt"))
    assert len(files) == 6  # one per training document
    recs = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    tr = [r for r in recs if r["kind"] == "train"]
    assert all(math.isfinite(r["cd_kl"]) and r["cd_kl"] >= 0 and math.isfinite(r["pointer_loss"]) for r in tr)
    stamps = [f.stat().st_mtime_ns for f in files]
    train(TrainConfig.model_validate({**raw, "steps": 6}), run, device="cpu", handle=handle, threads=1)
    assert [f.stat().st_mtime_ns for f in files] == stamps  # resumed: the teacher is read back, not recomputed
    # without cd_loss the recipe dumps and runs as before: no teacher, no cd_kl
    plain = tmp_path / "plain"
    train(TrainConfig.model_validate(_tiny_recipe(steps=2, eval_every=2)), plain, device="cpu", handle=handle,
          threads=1)  # fmt: skip
    assert not (plain / "teacher").exists()
    assert all("cd_kl" not in json.loads(line) for line in (plain / "metrics.jsonl").read_text().splitlines())
    assert "cd_loss" not in json.loads((plain / "config.json").read_text())["train"]
