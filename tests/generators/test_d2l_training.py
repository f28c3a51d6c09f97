"""D2L meta-training recipe on a tiny random Llama (loss goes down, resume continues) and the synthetic data."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import yaml

from agent_sleep.generators.hypernet import HyperConfig
from agent_sleep.models.loader import load_base_model
from pipelines.d2l import synth
from pipelines.d2l.trainer import TrainConfig, train
from tests.helpers_models import make_tiny_model_dir

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    # Tiny models: thread start-up and oversubscription cost more than the arithmetic saves.
    import torch

    torch.set_num_threads(1)


def test_synth_is_deterministic_and_split() -> None:
    a = synth.make_fact_docs(20, seed=3)
    assert a == synth.make_fact_docs(20, seed=3)
    assert a != synth.make_fact_docs(20, seed=4)
    held = synth.make_fact_docs(40, seed=3, split="heldout")
    assert {d["entity"] for d in a}.isdisjoint({d["entity"] for d in held})
    for doc in a + held:
        assert doc["qa"] and len(doc["qa"]) == len(doc["probe_qa"])
        for qa, probe in zip(doc["qa"], doc["probe_qa"], strict=True):
            assert qa["answer"] == probe["answer"] and qa["answer"] in doc["text"]
            assert qa["question"] != probe["question"] and qa["answer"] not in qa["question"]
    easy = synth.make_fact_docs(50, seed=0, vocab_size=4, attributes=["colour"], n_facts=(1, 1))
    assert {d["qa"][0]["answer"] for d in easy} <= set(synth.VOCAB["colour"][:4])


def test_open_valued_attributes_are_fresh_per_document() -> None:
    docs = synth.make_fact_docs(30, seed=1, attributes=list(synth.OPEN_VALUES), n_facts=(2, 4), vocab_size=4)
    values = [qa["answer"] for d in docs for qa in d["qa"]]
    assert len(set(values)) > 0.9 * len(values)  # not a small vocabulary (vocab_size does not apply)
    for doc in docs:
        for qa in doc["qa"]:
            assert qa["answer"] in doc["text"] and any(ch.isdigit() for ch in qa["answer"])
    with pytest.raises(ValueError, match="unknown attributes"):
        synth.make_fact_docs(1, seed=0, attributes=["colour", "shoe size"])


def test_hay_documents_have_no_questions() -> None:
    hay = synth.make_hay_docs(5, seed=2)
    assert hay == synth.make_hay_docs(5, seed=2) and all(d["qa"] == [] and d["text"] for d in hay)


def test_needles_and_jsonl(tmp_path: Path) -> None:
    docs = synth.make_needle_docs(3, seed=1, target_tokens=300)
    assert docs == synth.make_needle_docs(3, seed=1, target_tokens=300)
    for doc in docs:
        answer = doc["qa"][0]["answer"]
        assert len(answer) == 4 and f"is {answer}." in doc["text"] and 150 < len(doc["text"].split()) < 300
    path = synth.write_jsonl(tmp_path / "d.jsonl", docs)
    assert synth.read_jsonl(path) == docs


def test_shipped_configs_validate() -> None:
    paths = sorted((ROOT / "pipelines" / "d2l").glob("*.yaml"))
    assert paths
    for path in paths:
        assert path.read_text().startswith(f"# .venv/bin/python pipelines/d2l/meta_train.py --config {path.relative_to(ROOT)}")
        config = TrainConfig.load(path)
        # every hyper setting of the recipe reaches the network's config (here with SmolLM2-135M's sizes)
        hyper = dict(yaml.safe_load(path.read_text())["hyper"])
        first = hyper.pop("first_lora_layer")
        hc = HyperConfig(base_model_id="m", base_content_hash="0" * 64, hidden_size=576, d_in=1536, d_out=576,
                         layers=list(range(first, 30)), **config.hyper.model_dump(exclude={"first_lora_layer"}))  # fmt: skip
        assert {k: getattr(hc, k) for k in hyper} == hyper and hc.layers[0] == config.hyper.first_lora_layer == first


def test_hyper_settings_are_the_hypernetworks_own_fields() -> None:
    from pydantic import ValidationError

    from pipelines.d2l.trainer import HyperSettings

    from_model = {"base_model_id", "base_content_hash", "hidden_size", "d_in", "d_out", "layers", "min_gate"}
    assert set(HyperSettings.model_fields) == set(HyperConfig.model_fields) - from_model | {"first_lora_layer"}
    defaults = HyperSettings()
    assert all(getattr(defaults, k) == f.default for k, f in HyperConfig.model_fields.items() if k not in from_model)
    with pytest.raises(ValidationError, match="b_head"):
        HyperSettings(b_head="pointer")  # HyperConfig's choices, checked when the recipe loads
    with pytest.raises(ValidationError, match="rnak"):
        HyperSettings(rnak=4)


def _tiny_recipe(data: dict | None = None, hyper: dict | None = None, **top: object) -> dict:
    """A meta-training config for the tiny random Llama (two blocks), with overrides."""
    return {
        "model": "unused",
        "data": {"n_train": 6, "n_eval": 3, "n_facts": [1, 2], "n_filler": [0, 0], "max_doc_tokens": 48,
                 **(data or {})},
        "hyper": {"rank": 4, "first_lora_layer": 1, "encoder_layers": 1, "latent_dim": 32, "n_latents": 4,
                  "n_heads": 2, "n_blocks": 1, "scale": 40.0, "use_bias": True, "standardize": True, **(hyper or {})},
        "docs_per_step": 6, "qas_per_doc": 2, "lr": 0.01, "warmup": 1, "l1": 0.0, "log_every": 1,
        "eval_max_new_tokens": 2, **top,
    }  # fmt: skip


def test_few_steps_reduce_the_loss_and_resume_continues(tmp_path: Path) -> None:
    handle = load_base_model(str(make_tiny_model_dir(tmp_path)), device="cpu")
    raw = _tiny_recipe(steps=4, ckpt_every=2, eval_every=100)
    run = tmp_path / "run"
    first = train(TrainConfig.model_validate(raw), run, device="cpu", handle=handle, threads=1)
    assert first["step"] == 4
    second = train(TrainConfig.model_validate({**raw, "steps": 12}), run, device="cpu", handle=handle, threads=1)
    assert second["step"] == 12
    recs = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    steps = [r["step"] for r in recs if r["kind"] == "train"]
    assert steps == list(range(1, 13))  # resumed at 5, no step repeated
    ce = [r["ce"] for r in recs if r["kind"] == "train"]
    assert min(ce[-3:]) < ce[0] - 0.1
    assert (run / "metrics.png").stat().st_size > 0 and (run / "ckpt" / "best" / "d2l_config.json").exists()


@pytest.mark.model
def test_committed_checkpoint_internalizes_and_registers(store: object) -> None:
    from agent_sleep.generators.d2l import (
        DEFAULT_CHECKPOINT,
        D2LGenerator,
        internalize_to_registry,
    )
    from agent_sleep.registry import AdapterRegistry

    if not (DEFAULT_CHECKPOINT / "d2l_config.json").exists():
        pytest.skip("no committed D2L checkpoint")
    gen = D2LGenerator.load()
    doc = synth.make_fact_docs(1, seed=5, split="heldout")[0]["text"]
    record, result = internalize_to_registry(AdapterRegistry(store), doc, "d2l-smoke", generator=gen)  # type: ignore[arg-type]
    assert result.chunks == 1 and record.generator == "d2l"
    assert math.isfinite(result.seconds) and result.seconds > 0  # how fast: evals/bench_d2l.py
    assert result.nbytes < 4_000_000


def test_group_loras_concatenate_along_rank_and_pad_with_no_ops() -> None:
    import torch

    from agent_sleep.generators.hypernet import HyperConfig, HyperNet
    from pipelines.d2l.trainer import group_loras

    net = HyperNet(HyperConfig(base_model_id="m", base_content_hash="0" * 64, hidden_size=8, d_in=6, d_out=5,
                               layers=[0, 1], rank=2, latent_dim=8, n_latents=2, n_heads=2, n_blocks=1,
                               use_bias=True))  # fmt: skip
    with torch.no_grad():
        net.bias_B.normal_()
    a, b = torch.randn(4, 2, 2, 6), torch.randn(4, 2, 5, 2)
    ga, gb = group_loras(net, a, b, [[2, 0, 3], [1]])
    assert ga.shape == (2, 2, 3 * 2 + 2, 6) and gb.shape == (2, 2, 5, 3 * 2 + 2)
    x = torch.randn(6)
    for gi, members in enumerate([[2, 0, 3], [1]]):
        for layer in range(2):
            want = sum(b[m, layer] @ (a[m, layer] @ x) for m in members) + net.bias_B[layer] @ (net.bias_A[layer] @ x)
            torch.testing.assert_close(gb[gi, layer] @ (ga[gi, layer] @ x), want)
    # meta-training may leave the bias block out of some adapters (bias_drop): only the chunks' deltas remain
    ga, gb = group_loras(net, a, b, [[2, 0, 3], [1]], without_bias=[0])
    assert ga.shape == (2, 2, 3 * 2, 6)  # three chunks without it are wider than one chunk with it
    for gi, members in enumerate([[2, 0, 3], [1]]):
        for layer in range(2):
            want = sum(b[m, layer] @ (a[m, layer] @ x) for m in members)
            if gi == 1:
                want = want + net.bias_B[layer] @ (net.bias_A[layer] @ x)
            torch.testing.assert_close(gb[gi, layer] @ (ga[gi, layer] @ x), want)


def test_multi_chunk_training_with_filler_chunks_and_copy_head(tmp_path: Path) -> None:
    handle = load_base_model(str(make_tiny_model_dir(tmp_path)), device="cpu")
    raw = _tiny_recipe(data={"n_eval": 4, "chunk_probs": [0.3, 0.4, 0.3], "n_hay": 3, "p_hay": 1.0, "max_hay": 2},
                       hyper={"b_head": "copy", "chunk_gate": True, "scale_B_init": 0.1},
                       steps=6, ckpt_every=3, eval_every=3)  # fmt: skip
    run = tmp_path / "run"
    summary = train(TrainConfig.model_validate(raw), run, device="cpu", handle=handle, threads=1)
    assert summary["step"] == 6
    recs = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in recs if r["kind"] == "eval"]
    assert [r["step"] for r in evals] == [3, 6]
    assert all(0 <= r["acc_shuffled"] <= 1 and 0 <= r["acc_k3"] <= 1 for r in evals)
    ce = [r["ce"] for r in recs if r["kind"] == "train"]
    assert all(math.isfinite(c) and c < 20 for c in ce)  # finite through grouped, padded, gated adapters
    from agent_sleep.generators.checkpoint import load_checkpoint

    net = load_checkpoint(run / "ckpt" / "best", content_hash=handle.content_hash)
    assert net.config.b_head == "copy" and net.config.chunk_gate


def test_value_spans_and_token_positions_point_at_the_values(tmp_path: Path) -> None:
    from pipelines.d2l.data import value_positions

    handle = load_base_model(str(make_tiny_model_dir(tmp_path)), device="cpu")
    tok = handle.tokenizer
    docs = synth.make_fact_docs(30, seed=2, attributes=["town", "price", "code"], n_facts=(1, 3), n_hay=(1, 4))
    docs += synth.make_needle_docs(2, seed=0, target_tokens=200)
    for doc in docs:
        spans = list(doc["spans"].values())
        assert [doc["text"][s:e] for s, e in spans] == [doc["facts"][a] if "facts" in doc else doc["qa"][0]["answer"]
                                                        for a in doc["spans"]]  # fmt: skip
        pos = value_positions(tok, doc["text"], spans, 10_000)
        ids = tok(doc["text"], add_special_tokens=False)["input_ids"]
        picked = tok.decode([ids[i] for i in pos]).replace(" ", "")
        for s, e in spans:
            assert doc["text"][s:e].replace(" ", "") in picked
        assert value_positions(tok, doc["text"], spans, 3) == [i for i in pos if i < 3]
    # haystack sentences are optional and leave the default documents unchanged
    assert synth.make_fact_docs(5, seed=1) == synth.make_fact_docs(5, seed=1, n_hay=(0, 0))


def test_aux_losses_supervise_pointer_and_gate(tmp_path: Path) -> None:
    from pipelines.d2l.trainer import aux_losses

    handle = load_base_model(str(make_tiny_model_dir(tmp_path)), device="cpu")
    raw = _tiny_recipe(data={"n_eval": 4, "chunk_probs": [0.5, 0.5], "n_hay": 3, "p_hay": 1.0, "fact_hay": [0, 2]},
                       hyper={"b_head": "copy", "a_head": "induction", "chunk_gate": True, "scale_B_init": 0.1},
                       steps=8, ckpt_every=4, eval_every=4, pointer_loss=1.0, gate_loss=1.0,
                       pointer_sharp=0.5, key_distinct=0.5)  # fmt: skip
    run = tmp_path / "run"
    train(TrainConfig.model_validate(raw), run, device="cpu", handle=handle, threads=1)
    recs = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    tr = [r for r in recs if r["kind"] == "train"]
    assert all(math.isfinite(r["pointer_loss"]) and math.isfinite(r["gate_loss"]) for r in tr)
    assert all(r["pointer_entropy"] >= 0 and 0 <= r["key_overlap"] <= 1 for r in tr)
    assert tr[-1]["pointer_loss"] < tr[0]["pointer_loss"] and tr[-1]["gate_loss"] < tr[0]["gate_loss"]
    ev = [r for r in recs if r["kind"] == "eval"][-1]
    assert 0 <= ev["gate_filler"] <= 1 and 0 <= ev["gate_fact"] <= 1

    # the losses themselves: a pointer resting on the value tokens and a gate that is right cost ~nothing
    from agent_sleep.generators.hypernet import HyperOutput

    a, b = torch.zeros(2, 1, 2, 3), torch.zeros(2, 1, 3, 2)
    good = torch.zeros(2, 2, 5)
    good[0, 0, 1] = good[0, 1, 2] = 1.0
    good[1] = 0.2
    docs = [{"value_pos": [1, 2]}, {"value_pos": []}]
    ptr, gate = aux_losses(HyperOutput(a, b, good, torch.tensor([1.0, 0.0])), docs, 1)
    assert ptr.item() == pytest.approx(2 * math.log(2) * 0.5, abs=1e-3) and gate.item() < 1e-4
    uniform = torch.full((2, 2, 5), 0.2)
    worse, bad_gate = aux_losses(HyperOutput(a, b, uniform, torch.tensor([0.1, 0.9])), docs, 1)
    assert worse > ptr and bad_gate > 1.0

    # coverage cannot tell slots that each rest on one value token from slots spread evenly over the value; the
    # pointer entropy can (and ignores chunks without values)
    from pipelines.d2l.objective import pointer_entropy

    spread = torch.zeros(2, 2, 5)
    spread[0, :, 1] = spread[0, :, 2] = 0.5
    spread[1] = 0.2
    same, _ = aux_losses(HyperOutput(a, b, spread, torch.tensor([1.0, 0.0])), docs, 1)
    assert same.item() == pytest.approx(ptr.item(), abs=1e-3)
    sharp = pointer_entropy(HyperOutput(a, b, good, None), docs, 2)
    assert sharp.item() == pytest.approx(0.0, abs=1e-6)
    assert pointer_entropy(HyperOutput(a, b, spread, None), docs, 2).item() == pytest.approx(math.log(2), abs=1e-4)


def test_prose_documents_are_deterministic_split_and_spanned() -> None:
    from pipelines.d2l import prose
    from pipelines.d2l.trainer import DataConfig, make_docs

    docs = prose.make_prose_docs(60, seed=4)
    assert docs == prose.make_prose_docs(60, seed=4) and docs != prose.make_prose_docs(60, seed=5)
    assert {d["domain"] for d in docs} == set(prose.DOMAINS)
    for doc in docs:
        assert 3 <= len(doc["qa"]) == len(doc["probe_qa"]) == len(doc["facts"]) <= 6
        assert {k: doc["text"][s:e] for k, (s, e) in doc["spans"].items()} == doc["facts"]
        assert all(qa["answer"] not in qa["question"] for qa in doc["qa"] + doc["probe_qa"])
    held = prose.make_prose_docs(60, seed=4, split="heldout")
    assert not {d["entity"] for d in held} & {d["entity"] for d in docs}
    with pytest.raises(ValueError, match="unknown domains"):
        prose.make_prose_docs(1, seed=0, domains=["recipes"])
    train_docs, eval_docs = make_docs(DataConfig(n_train=10, n_eval=4, prose_share=0.5), seed=0)
    assert [d["kind"] for d in train_docs].count("prose") == 5 and [d["kind"] for d in eval_docs].count("prose") == 2


def test_warm_start_copies_a_checkpoint_and_refuses_another_shape(tmp_path: Path) -> None:
    from agent_sleep.errors import ConfigError
    from agent_sleep.generators.checkpoint import load_checkpoint

    handle = load_base_model(str(make_tiny_model_dir(tmp_path)), device="cpu")
    first = tmp_path / "first"
    train(TrainConfig.model_validate(_tiny_recipe(steps=2, eval_every=2)), first, device="cpu", handle=handle,
          threads=1)  # fmt: skip
    src = load_checkpoint(first / "ckpt" / "best", content_hash=handle.content_hash)
    warm = tmp_path / "warm"
    raw = _tiny_recipe(steps=0, eval_every=100, init_from=str(first / "ckpt" / "best"))
    train(TrainConfig.model_validate(raw), warm, device="cpu", handle=handle, threads=1)
    state = torch.load(warm / "ckpt" / "last.pt", weights_only=False)["net"]
    for key, value in src.state_dict().items():
        torch.testing.assert_close(state[key], value.float(), rtol=1e-3, atol=1e-3)  # fp16 checkpoint
    with pytest.raises(ConfigError, match="rank"):
        other = _tiny_recipe(steps=0, init_from=str(first / "ckpt" / "best"))
        other["hyper"]["rank"] = 2
        train(TrainConfig.model_validate(other), tmp_path / "other", device="cpu", handle=handle, threads=1)


def test_warm_start_may_raise_the_induction_order_or_rank_and_nothing_else(tmp_path: Path) -> None:
    from agent_sleep.errors import ConfigError
    from agent_sleep.generators.checkpoint import load_checkpoint

    handle = load_base_model(str(make_tiny_model_dir(tmp_path)), device="cpu")
    hyper = {"b_head": "copy", "a_head": "induction"}
    first = tmp_path / "first"
    train(TrainConfig.model_validate(_tiny_recipe(hyper=hyper, steps=2, eval_every=2)), first, device="cpu",
          handle=handle, threads=1)  # fmt: skip
    best = str(first / "ckpt" / "best")
    src = load_checkpoint(best, content_hash=handle.content_hash)
    raw = _tiny_recipe(hyper={**hyper, "induction_order": 2}, steps=0, eval_every=100, init_from=best)
    train(TrainConfig.model_validate(raw), tmp_path / "warm", device="cpu", handle=handle, threads=1)
    state = torch.load(tmp_path / "warm" / "ckpt" / "last.pt", weights_only=False)["net"]
    for key, value in src.state_dict().items():
        torch.testing.assert_close(state[key], value.float(), rtol=1e-3, atol=1e-3)
    assert not state["ptr_a_more.0.weight"].any()  # the new map starts at zero: the checkpoint's function
    warm2 = tmp_path / "warm2"  # an order-2 checkpoint
    train(TrainConfig.model_validate(raw | {"steps": 1, "ckpt_every": 1, "eval_every": 1}), warm2, device="cpu",
          handle=handle, threads=1)  # fmt: skip
    lower = _tiny_recipe(hyper=hyper, steps=0, init_from=str(warm2 / "ckpt" / "best"))
    with pytest.raises(ConfigError, match="induction_order"):  # lowering it would drop trained weights
        train(TrainConfig.model_validate(lower), tmp_path / "lower", device="cpu", handle=handle, threads=1)

    # a higher rank: the checkpoint's slots are kept, the new ones start with a zero B scale -> the same adapter
    from agent_sleep.generators.hypernet import HyperNet

    wide = _tiny_recipe(hyper={**hyper, "rank": 6}, steps=0, eval_every=100, init_from=best)
    train(TrainConfig.model_validate(wide), tmp_path / "wide", device="cpu", handle=handle, threads=1)
    grown_state = torch.load(tmp_path / "wide" / "ckpt" / "last.pt", weights_only=False)["net"]
    grown = HyperNet(src.config.model_copy(update={"rank": 6}))
    grown.load_state_dict(grown_state)
    feats = torch.randn(2, 7, src.config.hidden_size)
    with torch.no_grad():
        (a0, b0), (a1, b1) = src.float()(feats), grown(feats)
    assert a1.shape[2] == 6 and not grown_state["scale_B"][:, 4:].any()
    torch.testing.assert_close(b1 @ a1, b0 @ a0, rtol=1e-4, atol=1e-5)  # per chunk and layer: B A
    narrow = _tiny_recipe(hyper={**hyper, "rank": 2}, steps=0, init_from=best)
    with pytest.raises(ConfigError, match="rank"):
        train(TrainConfig.model_validate(narrow), tmp_path / "narrow", device="cpu", handle=handle, threads=1)


def test_warm_start_may_read_the_features_deeper_with_their_own_statistics(tmp_path: Path) -> None:
    from agent_sleep.generators.checkpoint import load_checkpoint

    handle = load_base_model(str(make_tiny_model_dir(tmp_path)), device="cpu")
    first = tmp_path / "first"
    train(TrainConfig.model_validate(_tiny_recipe(steps=2, eval_every=2)), first, device="cpu", handle=handle,
          threads=1)  # fmt: skip
    best = str(first / "ckpt" / "best")
    src = load_checkpoint(best, content_hash=handle.content_hash)
    deep = _tiny_recipe(hyper={"encoder_layers": 2}, steps=0, eval_every=100, init_from=best)
    train(TrainConfig.model_validate(deep), tmp_path / "deep", device="cpu", handle=handle, threads=1)
    state = torch.load(tmp_path / "deep" / "ckpt" / "last.pt", weights_only=False)["net"]
    for key, value in src.state_dict().items():
        if key not in ("feat_mean", "feat_std"):
            torch.testing.assert_close(state[key], value.float(), rtol=1e-3, atol=1e-3)
    # the statistics are those of this run's (deeper) features, not the checkpoint's
    assert not torch.allclose(state["feat_std"], src.state_dict()["feat_std"].float(), rtol=1e-2)
    fresh = _tiny_recipe(hyper={"encoder_layers": 2}, steps=0, eval_every=100)
    train(TrainConfig.model_validate(fresh), tmp_path / "fresh", device="cpu", handle=handle, threads=1)
    own = torch.load(tmp_path / "fresh" / "ckpt" / "last.pt", weights_only=False)["net"]
    torch.testing.assert_close(state["feat_std"], own["feat_std"])
    torch.testing.assert_close(state["feat_mean"], own["feat_mean"])


def test_export_refuses_to_compare_runs_trained_on_other_data(tmp_path: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:  # fmt: skip
    from agent_sleep.generators.checkpoint import read_checkpoint_config
    from pipelines.d2l import export

    handle = load_base_model(str(make_tiny_model_dir(tmp_path)), device="cpu")
    runs = {}
    for name, data in (("a", {}), ("b", {"n_facts": [1, 1]})):
        runs[name] = tmp_path / name
        train(TrainConfig.model_validate(_tiny_recipe(data=data, steps=2, eval_every=2)), runs[name], device="cpu",
              handle=handle, threads=1)  # fmt: skip
    dest = tmp_path / "ckpt"
    assert export.main([str(runs["a"]), "--dest", str(dest)]) == 0
    first = read_checkpoint_config(dest)["version"]
    assert export.main([str(runs["b"]), "--dest", str(dest)]) == 1
    assert "trained on other data" in capsys.readouterr().out
    assert read_checkpoint_config(dest)["version"] == first  # untouched
    assert export.main([str(runs["b"]), "--dest", str(dest), "--force", "--min-gate", "0.3"]) == 0
    config = read_checkpoint_config(dest)
    assert config["training"]["config"]["data"]["n_facts"] == [1, 1] and config["hyper"]["min_gate"] == 0.3


def test_stop_signals_only_ask_the_loop_to_stop_and_restore_the_handlers() -> None:
    import os
    import signal

    from pipelines.d2l.trainer import StopSignals

    before = signal.getsignal(signal.SIGTERM)
    with StopSignals() as stop:
        assert not stop.requested
        os.kill(os.getpid(), signal.SIGTERM)  # handled synchronously in the main thread: no exit
        assert stop.requested
    assert signal.getsignal(signal.SIGTERM) is before


def test_prompt_styles_ask_each_question_in_a_runtime_prompt(tmp_path: Path) -> None:
    from agent_sleep.generators.prompts import AGENT_SYSTEM_PROMPTS, question_prompt, styled_prompt
    from pipelines.d2l.data import build_cache

    handle = load_base_model(str(make_tiny_model_dir(tmp_path)), device="cpu")
    tok = handle.tokenizer
    docs = synth.make_fact_docs(6, seed=3, n_facts=(2, 3))
    common = {"encoder_layers": 1, "first_lora_layer": 1, "max_doc_tokens": 64, "device": "cpu"}
    bare = build_cache(handle.model, tok, docs, path=tmp_path / "bare.pt", **common)
    mixed = build_cache(handle.model, tok, docs, path=tmp_path / "mixed.pt", prompt_styles=("bare", "chat", "agent"),
                        **common)  # fmt: skip
    texts_bare = [tok.decode(q["ids"][: q["n_prompt"]]) for d in bare for q in d["qa"]]
    texts_mixed = [tok.decode(q["ids"][: q["n_prompt"]]) for d in mixed for q in d["qa"]]
    questions = [q["question"] for d in bare for q in d["qa"]]
    # the default is the bare prompt the generator was always trained on
    assert texts_bare == [tok.decode(tok(question_prompt(tok, q), add_special_tokens=False)["input_ids"])
                          for q in questions]  # fmt: skip
    # mixed: every style occurs, answers and question order are unchanged, and agent prompts carry a system message
    assert sum(t.startswith(b) for t, b in zip(texts_mixed, texts_bare, strict=True)) < len(questions)
    assert any(any(p in t for p in AGENT_SYSTEM_PROMPTS) for t in texts_mixed)
    assert all(q in t for q, t in zip(questions, texts_mixed, strict=True))
    assert [q["answer"] for d in mixed for q in d["qa"]] == [q["answer"] for d in bare for q in d["qa"]]
    with pytest.raises(ValueError, match="unknown prompt style"):
        styled_prompt(tok, "Who?", "shouting")
    with pytest.raises(ValueError, match="at least one style"):
        TrainConfig.model_validate({"data": {"prompt_styles": []}})
    assert "prompt_styles" not in TrainConfig().data.model_dump()  # older recipes dump (and cache) as before


def test_induction_more_lr_gives_the_higher_order_maps_their_own_rate_and_resumes(tmp_path: Path) -> None:
    handle = load_base_model(str(make_tiny_model_dir(tmp_path)), device="cpu")
    hyper = {"b_head": "copy", "a_head": "induction", "induction_order": 2}
    raw = _tiny_recipe(hyper=hyper, steps=2, eval_every=2, ckpt_every=1, induction_more_lr=10.0, warmup=1)
    run = tmp_path / "run"
    train(TrainConfig.model_validate(raw), run, device="cpu", handle=handle, threads=1)
    saved = torch.load(run / "ckpt" / "last.pt", weights_only=False)
    groups = saved["opt"]["param_groups"]
    assert len(groups) == 2 and len(groups[1]["params"]) == 1  # ptr_a_more.0.weight alone
    assert groups[1]["initial_lr"] == pytest.approx(10 * groups[0]["initial_lr"])
    assert saved["net"]["ptr_a_more.0.weight"].abs().max() > 0  # it trained
    train(TrainConfig.model_validate(raw | {"steps": 3}), run, device="cpu", handle=handle, threads=1)  # resumes
    assert torch.load(run / "ckpt" / "last.pt", weights_only=False)["step"] == 3
    plain = _tiny_recipe(hyper=hyper, steps=1, eval_every=1, ckpt_every=1)
    train(TrainConfig.model_validate(plain), tmp_path / "plain", device="cpu", handle=handle, threads=1)
    assert len(torch.load(tmp_path / "plain" / "ckpt" / "last.pt", weights_only=False)["opt"]["param_groups"]) == 1


def test_the_shared_loop_logs_windows_evaluates_checkpoints_and_stops_on_its_own_clock(tmp_path: Path) -> None:
    from dataclasses import dataclass

    from pipelines.training import StepLog, StopSignals, run_loop

    @dataclass
    class State:
        step: int = 0
        trained_s: float = 0.0

    def loop(state: State, steps: int, max_minutes: float | None) -> tuple[list[int], list[int]]:
        evals: list[int] = []
        ckpts: list[int] = []
        with StopSignals() as stop:
            run_loop(state, steps=steps, log_every=2, eval_every=3, ckpt_every=4, metrics=tmp_path / "m.jsonl",
                     stop=stop, max_minutes=max_minutes,
                     one_step=lambda: StepLog(float(state.step), {"kl": 2.0 * state.step}, {"lr": state.step}),
                     evaluate=lambda bar: evals.append(state.step), checkpoint=lambda: ckpts.append(state.step),
                     desc="test")  # fmt: skip
        return evals, ckpts

    state = State()
    assert loop(state, 5, None) == ([3, 5], [4])  # evaluated on schedule and at the last step
    recs = [json.loads(line) for line in (tmp_path / "m.jsonl").read_text().splitlines()]
    assert [(r["step"], r["ce"], r["kl"], r["lr"]) for r in recs] == [(2, 0.5, 1.0, 1), (4, 2.5, 5.0, 3)]
    assert state.trained_s > 0
    state = State()
    assert loop(state, 5, 0.0) == ([], []) and state.step == 0  # the time limit counts from the loop's start
    state = State(step=5)
    assert loop(state, 5, None) == ([], [])  # a finished run does nothing


def test_address_loss_prefers_the_slots_that_copy_the_answer_and_trains(tmp_path: Path) -> None:
    from agent_sleep.generators.hypernet import HyperOutput
    from pipelines.d2l.data import attach_answer_positions, value_positions
    from pipelines.d2l.objective import address_loss

    # one layer, two ranks, two chunks; slot 0 of chunk 0 points at token 3 (the answer's first token)
    pointer = torch.zeros(2, 2, 5)
    pointer[0, 0, 3] = 1.0
    pointer[0, 1, 1] = 1.0
    pointer[1, :, 0] = 1.0
    x = torch.tensor([1.0, 0.0, 0.0])
    captured = [torch.stack([x, x])[:, None, :].expand(2, 2, 3)]  # [rows, T, d_in]: n_prompt - 1 = 1
    qa = {"answer_pos": 3, "n_prompt": 2}

    def loss(a: torch.Tensor, members: list[int]) -> float:
        out = HyperOutput(a, torch.zeros(2, 1, 3, 2), pointer, None)
        return address_loss(out, captured, [(0, qa)], [members]).item()

    right = torch.zeros(2, 1, 2, 3)
    right[0, 0, 0] = x  # the copying slot's A row matches the question
    right[0, 0, 1] = right[1, 0, 0] = right[1, 0, 1] = torch.tensor([0.0, 1.0, 0.0])
    wrong = right.clone()
    wrong[0, 0, 0], wrong[0, 0, 1] = right[0, 0, 1], right[0, 0, 0]  # another slot of the page fires instead
    assert loss(right, [0]) < 0.01 < loss(wrong, [0])
    other = right.clone()
    other[0, 0, 0], other[1, 0, 0] = right[1, 0, 0], x  # a slot of another chunk in the same adapter fires
    assert loss(other, [0, 1]) > 5.0  # the other chunk's slot wins: counted against it
    assert loss(other, [0]) == pytest.approx(math.log(2), abs=1e-3)  # alone, the page's two slots tie
    assert loss(right, [0, 1]) < 0.01
    # nothing to say where the answer is not in the chunk, or no slot rests on it
    assert address_loss(HyperOutput(right, torch.zeros(2, 1, 3, 2), pointer, None), captured,
                        [(0, {"answer_pos": None, "n_prompt": 2})], [[0]]).item() == 0.0  # fmt: skip
    assert address_loss(HyperOutput(right, torch.zeros(2, 1, 3, 2), pointer, None), captured,
                        [(1, {"answer_pos": 3, "n_prompt": 2})], [[1]]).item() == 0.0  # fmt: skip

    # the positions: the document token where the first accepted answer begins (any case as a fallback)
    handle = load_base_model(str(make_tiny_model_dir(tmp_path)), device="cpu")
    tok = handle.tokenizer
    text = "Opening hours. The desk closes at 18:30 on Fridays; ask Mira Holt."
    doc = {"id": "d", "text": text, "qa": [{"question": "When?", "answer": "18:30"},
                                           {"question": "Who?", "answer": ["nobody", "mira holt"]},
                                           {"question": "Where?", "answer": "Lyon"}]}  # fmt: skip
    cached = [{"qa": [{} for _ in doc["qa"]]}]
    assert attach_answer_positions(cached, [doc], tok, qa_keys=("qa",), max_doc_tokens=100) == 2
    at = [row["answer_pos"] for row in cached[0]["qa"]]
    assert at[0] == value_positions(tok, text, [(text.find("18:30"), text.find("18:30") + 1)], 100)[0]
    assert at[1] == value_positions(tok, text, [(text.find("Mira"), text.find("Mira") + 1)], 100)[0]
    assert at[2] is None
    assert attach_answer_positions(cached, [doc], tok, qa_keys=("qa",), max_doc_tokens=2) == 0  # past the cut
    with pytest.raises(ValueError, match="questions"):
        attach_answer_positions([{"qa": [{}]}], [doc], tok, qa_keys=("qa",), max_doc_tokens=100)

    # the trainer weighs and logs it: a cross-entropy over the adapter's slots (4 per chunk, up to 2 chunks here)
    raw = _tiny_recipe(hyper={"b_head": "copy", "a_head": "induction", "scale_B_init": 0.1}, steps=4, ckpt_every=4,
                       eval_every=100, pointer_loss=1.0, address_loss=1.0)  # fmt: skip
    run = tmp_path / "run"
    train(TrainConfig.model_validate(raw), run, device="cpu", handle=handle, threads=1)
    tr = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    addr = [r["address"] for r in tr if r["kind"] == "train"]
    assert len(addr) == 4 and all(0 < v <= math.log(8) + 1e-3 for v in addr)



def test_bias_drop_trains_some_adapters_without_the_bias_block(tmp_path: Path) -> None:
    handle = load_base_model(str(make_tiny_model_dir(tmp_path)), device="cpu")
    runs = {}
    for drop in (0.0, 0.9):
        raw = _tiny_recipe(steps=2, ckpt_every=2, eval_every=100, bias_drop=drop, l1=0.0)
        run = tmp_path / f"run{drop}"
        train(TrainConfig.model_validate(raw), run, device="cpu", handle=handle, threads=1)
        runs[drop] = [json.loads(line)["ce"] for line in (run / "metrics.jsonl").read_text().splitlines()
                      if json.loads(line)["kind"] == "train"]  # fmt: skip
    # the fresh network's bias B starts at zero, so step 1 is the same; then the dropped adapters train less of it
    assert runs[0.0][0] == pytest.approx(runs[0.9][0]) and runs[0.0][1] != pytest.approx(runs[0.9][1])
    assert "bias_drop" not in TrainConfig().model_dump()  # older recipes dump (and cache) as before
    with pytest.raises(ValueError):
        TrainConfig.model_validate({"bias_drop": 1.0})
