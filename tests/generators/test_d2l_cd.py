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


def _hyper_and_docs(handle, tmp_path: Path):  # type: ignore[no-untyped-def]
    """A tiny hypernetwork config for ``handle`` (layer 1, rank 4) and three cached two-fact documents."""
    from agent_sleep.generators.hypernet import HyperConfig
    from pipelines.d2l.data import build_cache

    model, tok = handle.model, handle.tokenizer
    model.requires_grad_(False)
    hc = HyperConfig.for_model(model, base_model_id="tiny", base_content_hash=handle.content_hash, layers=[1],
                               encoder_layers=1, rank=4, latent_dim=32, n_latents=4, n_heads=2, n_blocks=1,
                               scale=40.0, use_bias=True, scale_B_init=0.5)  # fmt: skip
    docs = synth.make_fact_docs(3, seed=1, n_facts=(2, 2))
    cached = build_cache(model, tok, docs, encoder_layers=1, first_lora_layer=1, max_doc_tokens=48, device="cpu",
                         path=tmp_path / "c.pt")  # fmt: skip
    return hc, cached


def _hypernet(hc, cached):  # type: ignore[no-untyped-def]
    """A fresh hypernetwork with its feature statistics taken from ``cached``."""
    from agent_sleep.generators.hypernet import HyperNet

    net = HyperNet(hc)
    net.set_feature_stats(torch.cat([d["feats"] for d in cached]).float())
    return net


def test_cd_loss_through_generated_adapters(handle, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from agent_sleep.generators.backbone import RowLora
    from pipelines.d2l.objective import doc_loras

    model = handle.model
    hc, cached = _hyper_and_docs(handle, tmp_path)
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

    net = _hypernet(hc, cached)
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


# ---------------------------------------------------------------- distilling the teacher's own answers


def _greedy(model, ids: list[int], n: int, stop: set[int]) -> list[int]:  # type: ignore[no-untyped-def]
    ids, out = list(ids), []
    for _ in range(n):
        with torch.no_grad():
            token = int(model(input_ids=torch.tensor([ids])).logits[0, -1].argmax())
        out.append(token)
        ids.append(token)
        if token in stop:
            break
    return out


def test_teacher_generate_matches_unbatched_greedy_and_its_cache_round_trips(handle, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from agent_sleep.generators.prompts import question_prompt
    from pipelines.d2l.teacher import stop_ids, teacher_generate, teacher_key

    model, tok = handle.model, handle.tokenizer
    docs = synth.make_fact_docs(3, seed=4, n_facts=(2, 3))
    doc = docs[0]
    questions = [qa["question"] for qa in doc["qa"] + doc["probe_qa"]]
    prompts = [tok(question_prompt(tok, q, doc["text"]), add_special_tokens=False)["input_ids"] for q in questions]
    assert len({len(p) for p in prompts}) > 1  # the batch really pads
    stop = stop_ids(tok)
    got = teacher_generate(model, prompts, top_k=5, max_new_tokens=8, stop=stop, device="cpu", batch=3,
                           pad_id=tok.pad_token_id)  # fmt: skip
    for prompt, g in zip(prompts, got, strict=True):
        assert g["ids"].tolist() == _greedy(model, prompt, 8, stop)
        n = len(g["ids"])
        assert g["logp"].shape == (n, 5) and g["idx"].shape == (n, 5) and g["logp"].dtype == torch.float16
        assert (g["idx"][:, 0] == g["ids"]).all()  # the answer is the teacher's top-1 at each step
        # the same numbers as the gold-mode teacher scoring the generated answer
        full = teacher_topk(model, [(list(prompt) + g["ids"].tolist(), len(prompt))], 5, "cpu")[0]
        torch.testing.assert_close(full["logp"].float(), g["logp"].float(), atol=2e-3, rtol=2e-3)

    folder = tmp_path / "teacher"
    kw = {"model_hash": handle.content_hash, "folder": folder, "top_k": 5, "qa_keys": ("qa", "probe_qa"),
          "mode": "generated", "max_new_tokens": 6}  # fmt: skip
    first = build_teacher_cache(model, tok, docs, **kw)
    files = sorted(folder.glob("*.pt"))
    assert len(files) == 3 and [len(e) for e in first] == [2 * len(d["qa"]) for d in docs]
    assert all(isinstance(e["text"], str) and 1 <= len(e["ids"]) <= 6 for entries in first for e in entries)
    assert first[0][0]["ids"].tolist() == got[0]["ids"].tolist()[:6]  # same greedy answer, a shorter budget
    stamps = {f: f.stat().st_mtime_ns for f in files}
    files[0].unlink()
    again = build_teacher_cache(model, tok, docs, **kw)
    assert {f: f.stat().st_mtime_ns for f in files[1:]} == {f: stamps[f] for f in files[1:]}
    for a, b in zip(first, again, strict=True):
        for x, y in zip(a, b, strict=True):
            assert torch.equal(x["ids"], y["ids"]) and torch.equal(x["logp"], y["logp"]) and x["text"] == y["text"]
    # the generated key ignores gold answers but not the budget, and never collides with the gold-mode key
    qas = [("q?", "a")]
    gen_key = teacher_key(model_hash="m", doc="d", qas=qas, top_k=5, max_new_tokens=6)
    assert gen_key == teacher_key(model_hash="m", doc="d", qas=[("q?", "other")], top_k=5, max_new_tokens=6)
    assert gen_key != teacher_key(model_hash="m", doc="d", qas=qas, top_k=5, max_new_tokens=7)
    assert gen_key != teacher_key(model_hash="m", doc="d", qas=qas, top_k=5)
    with pytest.raises(ValueError, match="mode"):
        build_teacher_cache(model, tok, docs, **{**kw, "mode": "sampled"})


def test_cd_loss_on_the_teachers_own_answers(handle, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """Student == teacher (the teacher reads no document) gives KL 0; a generated adapter gives KL > 0 whose
    gradient reaches the hypernetwork; rows without a teacher count only in CE."""
    from agent_sleep.generators.backbone import RowLora
    from agent_sleep.generators.prompts import question_prompt
    from pipelines.d2l.data import _hidden
    from pipelines.d2l.objective import doc_loras
    from pipelines.d2l.teacher import stop_ids, teacher_generate

    model, tok = handle.model, handle.tokenizer
    hc, cached = _hyper_and_docs(handle, tmp_path)
    rows = []
    for i, d in enumerate(cached):
        prompts = [tok(question_prompt(tok, qa["question"]), add_special_tokens=False)["input_ids"] for qa in d["qa"]]
        gens = teacher_generate(model, prompts, top_k=8, max_new_tokens=5, stop=stop_ids(tok), device="cpu",
                                pad_id=tok.pad_token_id)  # fmt: skip
        seqs = [torch.tensor(list(p) + g["ids"].tolist()) for p, g in zip(prompts, gens, strict=True)]
        hidden = _hidden(model, seqs, 1, "cpu", 8)
        rows += [(i, {"ids": s, "n_prompt": len(p), "hidden": h, "teacher": {"logp": g["logp"], "idx": g["idx"]}})
                 for p, g, s, h in zip(prompts, gens, seqs, hidden, strict=True)]  # fmt: skip
    lora = RowLora(model, hc.module_names())
    kl0, ce0 = cd_loss(model, lora, hc, None, rows, "cpu")
    assert kl0.abs().max() < 2e-3
    net = _hypernet(hc, cached)
    ab = doc_loras(net, cached, "cpu")
    kl, ce = cd_loss(model, lora, hc, ab, rows, "cpu")
    assert (kl > 1e-3).all()
    (kl.mean() + ce.mean()).backward()
    grads = [p.grad.abs().sum().item() for p in net.parameters() if p.grad is not None]
    assert grads and sum(g > 0 for g in grads) >= len(grads) // 2
    # a row without a teacher (the teacher got it wrong): KL 0 there, the others unchanged, CE everywhere
    with torch.no_grad():
        ab = doc_loras(net, cached, "cpu")
        full_kl, full_ce = cd_loss(model, lora, hc, ab, rows, "cpu")
        mixed = [(i, dict(qa, teacher=None)) if r == 1 else (i, qa) for r, (i, qa) in enumerate(rows)]
        kl_m, ce_m = cd_loss(model, lora, hc, ab, mixed, "cpu")
        none_kl, _ = cd_loss(model, lora, hc, ab, [(i, dict(qa, teacher=None)) for i, qa in rows], "cpu")
    assert kl_m[1] == 0 and none_kl.abs().max() == 0
    torch.testing.assert_close(kl_m[[0, *range(2, len(rows))]], full_kl[[0, *range(2, len(rows))]])
    torch.testing.assert_close(ce_m, full_ce)
    lora.remove()


def test_a_recipe_distils_the_teachers_own_answers(handle, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    raw = _tiny_recipe(data={"n_train": 6, "n_eval": 3, "pages_share": 0.5, "use_probe_qa": True},
                       steps=10, ckpt_every=5, eval_every=5, lr=0.01, cd_loss=1.0, cd_top_k=4, ce_weight=0.0,
                       cd_target="generated", cd_max_new_tokens=4)  # fmt: skip
    cfg = TrainConfig.model_validate(raw)
    assert cfg.model_dump(mode="json")["cd_target"] == "generated"
    run = tmp_path / "gen"
    assert train(cfg, run, device="cpu", handle=handle, threads=1)["step"] == 10
    files = sorted((run / "teacher").glob("*.pt"))
    assert len(files) == 6 + 3  # training and held-out documents
    stats = json.loads((run / "teacher_stats.json").read_text())
    assert stats["train"]["distilled"] == stats["train"]["questions"] > 0 and stats["eval"]["distilled"] > 0
    recs = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    kl = [r["cd_kl"] for r in recs if r["kind"] == "train"]
    assert sum(kl[-3:]) / 3 < 0.85 * kl[0]  # the student moves towards the teacher's answers
    ev = [r for r in recs if r["kind"] == "eval"]
    assert len(ev) == 2 and all(math.isfinite(r["eval_kl"]) and r["eval_kl"] >= 0 for r in ev)
    assert "eval_kl_base" in json.loads((run / "baseline.json").read_text())
    stamps = [f.stat().st_mtime_ns for f in files]
    train(TrainConfig.model_validate({**raw, "steps": 12}), run, device="cpu", handle=handle, threads=1)
    assert [f.stat().st_mtime_ns for f in files] == stamps  # resumed: read back, not generated again

    # only where the teacher is right: the random tiny teacher never is, so no KL, gold CE only
    only = TrainConfig.model_validate({**raw, "steps": 3, "eval_every": 100, "ce_weight": 1.0,
                                       "cd_only_correct": True, "cd_cache": str(run / "teacher")})  # fmt: skip
    train(only, tmp_path / "only", device="cpu", handle=handle, threads=1)
    assert json.loads((tmp_path / "only" / "teacher_stats.json").read_text())["train"]["distilled"] == 0
    tr = [json.loads(line) for line in (tmp_path / "only" / "metrics.jsonl").read_text().splitlines()]
    assert all(r["cd_kl"] == 0 for r in tr if r["kind"] == "train")
    assert [f.stat().st_mtime_ns for f in sorted((run / "teacher").glob("*.pt"))] == stamps  # shared cache reused


def _ids(tok, text: str) -> list[int]:  # type: ignore[no-untyped-def]
    return tok(text, add_special_tokens=False)["input_ids"]


def test_sentence_cut_ends_teacher_answers_after_their_first_sentence(handle) -> None:  # type: ignore[no-untyped-def]
    from pipelines.d2l.teacher import end_of_turn_id, sentence_cut, stop_ids

    tok = handle.tokenizer
    stop = stop_ids(tok)
    eot = end_of_turn_id(tok)
    assert eot in stop
    cases = {
        "The fee is 66.46 crowns. It is due on Monday.": "The fee is 66.46 crowns.",
        "Ask Dr. Ashby at 9 a.m. on Monday. Then leave.": "Ask Dr. Ashby at 9 a.m. on Monday.",
        "Is it open? Yes, until 6 pm.": "Is it open?",
        "It is 5 km.\nThe next stop is Holwick.": "It is 5 km.",
        'He said "go." Then he left.': 'He said "go."',
        "Version v2.1 ships on 3 May": None,
        "It runs from J. Ashby's desk": None,
    }
    for text, first in cases.items():
        ids = _ids(tok, text)
        k = sentence_cut(tok, ids, stop)
        assert (None if k is None else tok.decode(ids[:k])) == first, text
    # an answer that stops right after its sentence needs no cut; one cut at the budget is left alone
    assert sentence_cut(tok, _ids(tok, "It is 5 km.") + [eot], stop) is None
    assert sentence_cut(tok, _ids(tok, "It is 5 km."), stop) is None


def test_cut_answer_keeps_the_teacher_rows_and_ends_on_end_of_turn(handle) -> None:  # type: ignore[no-untyped-def]
    from pipelines.d2l.teacher import cut_answer, end_of_turn_id, sentence_cut, stop_ids

    model, tok = handle.model, handle.tokenizer
    eot = end_of_turn_id(tok)
    prompt = _ids(tok, "<|im_start|>user\nWhat is the fee?<|im_end|>\n<|im_start|>assistant\n")
    answer = _ids(tok, "The fee is 66.46 crowns. It is due on Monday.")
    full = teacher_topk(model, [(prompt + answer, len(prompt))], 6, "cpu")[0]
    entry = {"ids": torch.tensor(answer, dtype=torch.int32), "logp": full["logp"][: len(answer)],
             "idx": full["idx"][: len(answer)], "text": "unused"}  # fmt: skip
    k = sentence_cut(tok, answer, stop_ids(tok))
    assert k is not None
    cut = cut_answer(entry, k, eot)
    assert cut["ids"].tolist() == answer[:k] + [eot] and cut["ids"].dtype == torch.int32
    assert cut["logp"].shape == cut["idx"].shape == (k + 1, 6)
    assert cut["logp"].dtype == torch.float16 and cut["idx"].dtype == full["idx"].dtype
    assert torch.equal(cut["logp"][:k], entry["logp"][:k]) and torch.equal(cut["idx"][:k], entry["idx"][:k])
    last_idx, last_logp = cut["idx"][k].tolist(), cut["logp"][k].float()
    assert last_idx[0] == eot and eot not in last_idx[1:] and len(set(last_idx)) == 6
    assert last_logp[0] == 0 and (last_logp[1:] == -30).all()
    assert set(last_idx[1:]) <= set(entry["idx"][k].tolist())  # the teacher's own next candidates there
    # a student sure of the end-of-turn there has (almost) no KL on that row; one sure of the next word has a lot
    sure = torch.full((1, model.config.vocab_size), -20.0)
    sure[0, eot] = 20.0
    assert topk_kl(sure, cut["logp"][k:].float(), cut["idx"][k:]).item() < 1e-6
    wrong = torch.full_like(sure, -20.0)
    wrong[0, last_idx[1]] = 20.0
    assert topk_kl(wrong, cut["logp"][k:].float(), cut["idx"][k:]).item() > 10


def test_cut_teacher_cache_is_keyed_apart_from_the_uncut_one(handle, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from pipelines.d2l.teacher import end_of_turn_id, sentence_cut, stop_ids, teacher_key

    model, tok = handle.model, handle.tokenizer
    docs = synth.make_fact_docs(3, seed=5, n_facts=(2, 3))
    folder = tmp_path / "teacher"
    kw = {"model_hash": handle.content_hash, "folder": folder, "top_k": 5, "mode": "generated",
          "max_new_tokens": 12}  # fmt: skip
    uncut = build_teacher_cache(model, tok, docs, **kw)
    stamps = {f: f.stat().st_mtime_ns for f in folder.glob("*.pt")}
    cut = build_teacher_cache(model, tok, docs, **kw, cut="sentence")
    files = set(folder.glob("*.pt"))
    assert len(files) == 6 and {f: f.stat().st_mtime_ns for f in stamps} == stamps  # new files, old ones untouched
    stop, eot = stop_ids(tok), end_of_turn_id(tok)
    for a, b in zip(uncut, cut, strict=True):
        for u, c in zip(a, b, strict=True):
            n = len(c["ids"])
            assert c["logp"].shape[0] == c["idx"].shape[0] == n
            k = sentence_cut(tok, u["ids"].tolist(), stop)
            if k is None:  # nothing to cut: the same answer
                assert torch.equal(u["ids"], c["ids"]) and torch.equal(u["logp"], c["logp"])
            else:  # the same greedy tokens up to the sentence end, then the end-of-turn
                assert c["ids"].tolist() == u["ids"].tolist()[:k] + [eot]
                assert torch.equal(c["logp"][:k], u["logp"][:k])
            assert c["text"] == tok.decode(c["ids"].tolist(), skip_special_tokens=True).strip()
    # resumable: a second build reads every file back
    again = build_teacher_cache(model, tok, docs, **kw, cut="sentence")
    assert all(torch.equal(x["ids"], y["ids"]) for a, b in zip(cut, again, strict=True) for x, y in zip(a, b, strict=True))
    assert set(folder.glob("*.pt")) == files
    base = {"model_hash": "m", "doc": "d", "qas": [("q?", "a")], "top_k": 5, "max_new_tokens": 6}
    assert teacher_key(**base) == teacher_key(**base, cut=None) != teacher_key(**base, cut="sentence")
    with pytest.raises(ValueError, match="cut"):
        build_teacher_cache(model, tok, docs, **{**kw, "mode": "gold"}, cut="sentence")
    with pytest.raises(ValueError, match="cut"):
        build_teacher_cache(model, tok, docs, **kw, cut="paragraph")
    # the recipe option is left out of older recipes' dumps while it holds its default
    assert "cd_cut" not in TrainConfig().model_dump() and TrainConfig(cd_cut="sentence").model_dump()["cd_cut"]
