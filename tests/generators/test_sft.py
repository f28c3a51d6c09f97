"""Supervised fine-tuning on a tiny random Llama: targets, learning, budgets, the PEFT folder, bad input."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from agent_sleep.adapters import prepare_stack, read_adapter
from agent_sleep.adapters.artifact import LoraWeights
from agent_sleep.adapters.lora_config import lora_pairs, module_scaling
from agent_sleep.adapters.stack import LoraHooks
from agent_sleep.errors import InvalidInputError
from agent_sleep.generators import sft
from agent_sleep.generators.registry import available_generators, get_generator
from agent_sleep.interfaces import GenerationRequest, Generator
from agent_sleep.models.loader import BaseModelHandle, load_base_model
from agent_sleep.runtime.chat_format import format_tool_call
from tests.helpers_adapters import max_diff, peft_logits
from tests.helpers_models import make_tiny_model_dir
from tests.helpers_protocols import protocol_mismatches

WEATHER = [
    {"role": "system", "content": "You are a helpful assistant."},
    {"role": "user", "content": "What is the weather today?"},
    {"role": "assistant", "content": "", "tool_calls": [{"name": "get_weather", "arguments": {"city": "Paris"}}]},
    {"role": "tool", "content": "sunny", "name": "get_weather"},
    {"role": "assistant", "content": "The weather today is sunny."},
    {"role": "user", "content": "And the capital of France?"},
    {"role": "assistant", "content": "The capital of France is Paris."},
]
CAPITAL = [{"role": "user", "content": "What is the capital of France?"},
           {"role": "assistant", "content": "Paris."}]  # fmt: skip
NO_REPLY = [{"role": "user", "content": "hello world"}]
FAST = sft.SFTSettings(rank=4, lr=1e-2, max_steps=40, time_budget_s=60, converged_loss=None)


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)  # tiny models: threads cost more than they save


@pytest.fixture(scope="module")
def handle(tmp_path_factory: pytest.TempPathFactory) -> BaseModelHandle:
    return load_base_model(str(make_tiny_model_dir(tmp_path_factory.mktemp("sft"))), device="cpu")


def _targets(handle: BaseModelHandle, seq: sft.TrainingSequence) -> list[str]:
    """The target spans of ``seq``, decoded, in order."""
    spans: list[list[int]] = []
    for i, (token, label) in enumerate(zip(seq.ids, seq.labels, strict=True)):
        if label == sft.IGNORE:
            continue
        assert label == token
        if i == 0 or seq.labels[i - 1] == sft.IGNORE:
            spans.append([])
        spans[-1].append(token)
    return [handle.tokenizer.decode(span) for span in spans]


def _in_memory_stack(result: sft.SFTAdapter) -> Any:
    pairs = lora_pairs(result.tensors, where="memory", config=result.lora_config)
    layers = {m: LoraWeights(A=a, B=b, scaling=module_scaling(result.lora_config, m)) for m, (a, b) in pairs.items()}
    return prepare_stack("memory", [("memory", layers, 1.0)])


def _hf_loss(handle: BaseModelHandle, seqs: list[sft.TrainingSequence], stack: Any = None) -> float:
    """transformers' own causal-LM loss over the labels (mean over target tokens), one sequence at a time."""
    total = count = 0.0
    with torch.inference_mode(), LoraHooks.attach(handle.model).activate(stack):
        for seq in seqs:
            out = handle.model(input_ids=torch.tensor([seq.ids]), labels=torch.tensor([seq.labels]))
            total += float(out.loss) * seq.targets
            count += seq.targets
    return total / count


# ---------------------------------------------------------------- conversations to targets


def test_targets_are_exactly_the_replies_with_their_end_of_turn(handle: BaseModelHandle) -> None:
    tok = handle.tokenizer
    seqs, too_long = sft.encode_conversation(tok, WEATHER)
    assert too_long == 0
    call = format_tool_call("get_weather", {"city": "Paris"})
    replies = [f"{call}<|im_end|>", "The weather today is sunny.<|im_end|>",
               "The capital of France is Paris.<|im_end|>"]
    assert [t for seq in seqs for t in _targets(handle, seq)] == replies
    # Before each target: the runtime's own prompt at that point of the conversation (the whole of it when the
    # target opens a sequence; the runtime may render a history so that a new sequence must start).
    turns = [i for i, m in enumerate(WEATHER) if m["role"] == "assistant"]
    messages = sft._to_messages(WEATHER, "conversation")
    n = 0
    for seq in seqs:
        opening = True
        for i, label in enumerate(seq.labels):
            if label != sft.IGNORE and seq.labels[i - 1] == sft.IGNORE:
                prompt, before = sft._render_prompt(tok, messages[: turns[n]]), tok.decode(seq.ids[:i])
                assert before == prompt if opening else before.endswith(prompt)
                opening, n = False, n + 1
    assert n == 3


def test_the_loss_is_transformers_causal_lm_loss_over_the_targets(handle: BaseModelHandle) -> None:
    seqs, _ = sft.encode_conversation(handle.tokenizer, CAPITAL)
    result = sft.finetune(handle, [CAPITAL], settings=FAST.model_copy(update={"max_steps": 1}), progress=False)
    assert result.first_loss == pytest.approx(_hf_loss(handle, seqs), abs=1e-5)  # step 1: the LoRA is a no-op
    assert result.target_tokens == seqs[0].targets == len(handle.tokenizer("Paris.")["input_ids"]) + 1


# ---------------------------------------------------------------- training and the folder


def test_finetune_learns_the_conversations_and_writes_a_peft_adapter(handle: BaseModelHandle, tmp_path: Path) -> None:
    seqs = [s for conv in (WEATHER, CAPITAL) for s in sft.encode_conversation(handle.tokenizer, conv)[0]]
    probe = torch.tensor([seqs[0].ids])
    with torch.inference_mode():
        base = handle.model(probe).logits
    before = _hf_loss(handle, seqs)
    steps: list[int] = []
    result = sft.finetune(handle, [WEATHER, CAPITAL], settings=FAST, on_step=lambda s, loss: steps.append(s))
    assert result.steps == len(steps) == FAST.max_steps and result.stopped == "max_steps"
    assert (result.conversations, result.skipped, result.sequences, result.rank) == (2, 0, len(seqs), 4)
    assert result.nbytes == sum(t.numel() * 4 for t in result.tensors.values())
    stack = _in_memory_stack(result)
    after = _hf_loss(handle, seqs, stack)
    # A random 32-wide model has tiny logits, so the loss floor is near log(vocab); it must still move.
    assert after < before - 0.3 and result.final_loss < result.first_loss - 0.3

    # Training never changed the shared model, left no gradients on it, and left no adapter active.
    with torch.inference_mode():
        assert torch.equal(handle.model(probe).logits, base)
    assert all(p.grad is None for p in handle.model.parameters())

    sources = {"episodes": ["ep-1", "ep-2"], "feedback": ["fb-7"]}
    folder = get_generator("sft", handle=handle, config=FAST).write(result, tmp_path / "a", sources=sources,
                                                                    skill="helpdesk")  # fmt: skip
    artifact = read_adapter(folder)
    manifest = artifact.manifest
    assert manifest is not None and manifest.skill == "helpdesk"
    assert (manifest.generator.name, manifest.generator.version) == ("sft", sft.GENERATOR_VERSION)
    assert (manifest.base_model.id, manifest.base_model.content_hash) == (handle.spec, handle.content_hash)
    assert manifest.sources.episodes == ["ep-1", "ep-2"] and manifest.sources.model_extra == {"feedback": ["fb-7"]}
    assert manifest.model_extra["training"]["steps"] == FAST.max_steps
    assert len(artifact.modules) == 2 * 7  # every attention and MLP projection of both layers

    # PEFT loads the folder unchanged and computes what the in-memory adapter computes.
    with torch.inference_mode(), LoraHooks.attach(handle.model).activate(stack):
        ours = handle.model(probe).logits.float()
    assert max_diff(peft_logits(handle, [folder], probe), ours) < 1e-5
    assert max_diff(ours, base) > 1e-2


class _StepClock:
    """Stands in for the ``time`` module in sft: one second passes per training step, so budgets count steps."""

    def __init__(self) -> None:
        self.now = 1000.0

    def perf_counter(self) -> float:
        return self.now


@pytest.mark.parametrize(
    ("budget", "max_steps", "converged_loss", "steps", "stopped"),
    [(0.5, 100_000, None, 1, "time_budget"),  # at least one step always runs
     (2.5, 100_000, None, 3, "time_budget"),  # the step that spends the budget finishes; no step starts after it
     (2.5, 3, None, 3, "max_steps"),  # the budget runs out on the last step anyway
     (100.0, 100_000, 1e6, 2, "converged")],  # every step of the last epoch (at least 2 steps) below the bar
)  # fmt: skip
def test_budgets_stop_training(handle: BaseModelHandle, monkeypatch: pytest.MonkeyPatch, budget: float, max_steps: int,
                               converged_loss: float | None, steps: int, stopped: str) -> None:  # fmt: skip
    clock = _StepClock()
    monkeypatch.setattr(sft, "time", clock)
    seen: list[int] = []

    def on_step(step: int, loss: float) -> None:
        seen.append(step)
        clock.now += 1.0

    settings = FAST.model_copy(
        update={"max_steps": max_steps, "time_budget_s": budget, "converged_loss": converged_loss}
    )
    result = sft.finetune(handle, [CAPITAL], settings=settings, progress=False, on_step=on_step)
    assert (result.stopped, result.steps, seen) == (stopped, steps, list(range(1, steps + 1)))
    assert result.train_seconds == steps  # measured on the same clock as the budget
    assert result.summary()["stopped"] == stopped


def test_by_name_the_request_budget_wins(handle: BaseModelHandle, monkeypatch: pytest.MonkeyPatch) -> None:
    assert "sft" in available_generators()
    gen = get_generator("sft", handle=handle, config=FAST, progress=False)
    assert isinstance(gen, sft.SFTGenerator) and isinstance(gen, Generator)
    assert protocol_mismatches(gen, Generator) == []
    assert (gen.name, gen.version) == ("sft", sft.GENERATOR_VERSION)

    clock = _StepClock()
    monkeypatch.setattr(sft, "time", clock)
    real_step = sft._batch_loss

    def counted(*args: Any) -> Any:  # the real loss; the clock moves one second per step
        clock.now += 1.0
        return real_step(*args)

    monkeypatch.setattr(sft, "_batch_loss", counted)
    out = gen.generate(GenerationRequest(conversations=[CAPITAL, NO_REPLY], budget_seconds=3))
    assert (out.steps, out.stopped, out.settings.time_budget_s, out.conversations, out.skipped) == (
        3, "time_budget", 3, 1, 1)  # fmt: skip


# ---------------------------------------------------------------- bad input


def test_over_long_conversations_are_cut_from_the_left_keeping_the_last_reply(handle: BaseModelHandle) -> None:
    long = [{"role": "user", "content": "hello " * 60}, {"role": "assistant", "content": "hello world"},
            *CAPITAL]
    full, _ = sft.encode_conversation(handle.tokenizer, long)
    assert len(full) == 1 and _targets(handle, full[0]) == ["hello world<|im_end|>", "Paris.<|im_end|>"]
    ids, labels = full[0].ids, full[0].labels
    last = max(i for i in range(1, len(ids)) if labels[i] != sft.IGNORE and labels[i - 1] == sft.IGNORE)
    first = next(i for i, label in enumerate(labels) if label != sft.IGNORE)
    for keep in (len(ids) - last + 3, len(ids) - first - 1):  # the first reply: gone, or cut at its first token
        seqs, too_long = sft.encode_conversation(handle.tokenizer, long, max_tokens=keep)
        assert too_long == 0 and len(seqs) == 1 and seqs[0].truncated and seqs[0].ids == ids[-keep:]
        assert _targets(handle, seqs[0]) == ["Paris.<|im_end|>"]  # a reply that lost its start is no target

    no_context = len(ids) - last  # the last reply fits, but no token before it does
    assert sft.encode_conversation(handle.tokenizer, long, max_tokens=no_context) == ([], 1)
    with pytest.raises(InvalidInputError, match="1 sequence"):
        sft.finetune(handle, [long], settings=FAST.model_copy(update={"max_seq_tokens": no_context}))


@pytest.mark.parametrize(
    ("conversations", "message"),
    [([], "at least one conversation"),
     ([NO_REPLY, [*NO_REPLY, {"role": "assistant", "content": ""}]], "2 have no assistant reply"),
     ([CAPITAL, [{"role": "robot", "content": "x"}]], r"conversation 1, message 0: role must be one of"),
     ([[{"role": "user", "content": 3}]], "content must be a string"),
     ([[{"role": "user", "content": "x"}, {"role": "assistant", "tool_calls": [{"arguments": {}}]}]],
      "tool call 0 needs a 'name'"),
     ([[{"role": "assistant", "content": "", "tool_calls": [{"name": "f", "arguments": "{nope"}]}]], "not valid JSON"),
     (["just text"], "must be a list of chat messages")],
)  # fmt: skip
def test_bad_input_is_refused(handle: BaseModelHandle, conversations: list[Any], message: str) -> None:
    with pytest.raises(InvalidInputError, match=message):
        sft.finetune(handle, conversations, settings=FAST)


def test_a_non_finite_loss_is_an_error(tmp_path: Path) -> None:
    broken = load_base_model(str(make_tiny_model_dir(tmp_path, name="broken")), device="cpu")
    with torch.no_grad():
        broken.model.model.norm.weight[0] = float("nan")
    gen = sft.SFTGenerator(broken, config=FAST, progress=False)
    with pytest.raises(InvalidInputError, match=r"sft diverged \(loss nan at step 1\)"):
        gen.generate(GenerationRequest(conversations=[CAPITAL]))
    with pytest.raises(InvalidInputError, match="no linear layers"):
        sft.finetune(broken, [CAPITAL], settings=FAST.model_copy(update={"target_modules": ("nope",)}))


# ---------------------------------------------------------------- the real model

HELPDESK = "You are the helpdesk assistant of Brightline Appliances."
KETTLE = [
    ("How long is the warranty on the Zephyr-9 kettle?", "The Zephyr-9 kettle has a 7-year warranty."),
    ("I bought a Zephyr-9 kettle last year. How long is it covered?",
     "The Zephyr-9 kettle's warranty lasts 7 years from the date of purchase, so you are covered for six more years."),
    ("What warranty comes with the Zephyr-9?", "The Zephyr-9 kettle comes with a 7-year warranty."),
    ("Is my Zephyr-9 kettle still under warranty after 5 years?",
     "Yes. The Zephyr-9 kettle's warranty is 7 years, so after 5 years it is still covered."),
    ("How many years of warranty does the Zephyr-9 kettle have?", "The Zephyr-9 kettle has a warranty of 7 years."),
]  # fmt: skip
HELD_OUT = ["For how long is the Zephyr-9 kettle guaranteed?",
            "What's the warranty period of the Zephyr-9 electric kettle?",
            "Tell me the length of the Zephyr-9 warranty.", "How long does the Zephyr-9 kettle warranty last?",
            "My Zephyr-9 kettle is 6 years old. Is it still covered by the warranty?",
            "Does the Zephyr-9 kettle have a warranty, and for how many years?"]  # fmt: skip


def _greedy(handle: BaseModelHandle, stack: Any, question: str) -> str:
    from langchain_core.messages import HumanMessage, SystemMessage

    prompt = sft._render_prompt(handle.tokenizer, [SystemMessage(HELPDESK), HumanMessage(question)])
    ids = handle.tokenizer(prompt, add_special_tokens=False, return_tensors="pt")["input_ids"]
    with torch.inference_mode(), LoraHooks.attach(handle.model).activate(stack):
        out = handle.model.generate(ids, max_new_tokens=24, do_sample=False, pad_token_id=handle.tokenizer.eos_token_id)
    return str(handle.tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True))


@pytest.mark.model
def test_real_model_learns_a_helpdesk_fact() -> None:
    """Five one-question helpdesk chats and a multi-turn one teach a warranty SmolLM2 cannot know.

    Measured with the defaults (r=8 on every projection, lr 3e-3, one batch of all six), 4 steps:
    the training questions 5/5, rephrased held-out ones 6/6 (seed 0; LoRA on q_proj/v_proj only:
    0/3 and 3/6). Asserted: every training question, and 4 of the 6 held-out ones.
    """
    handle = load_base_model()
    conversations = [[{"role": "system", "content": HELPDESK}, {"role": "user", "content": q},
                      {"role": "assistant", "content": a}] for q, a in KETTLE]  # fmt: skip
    conversations.append([{"role": "system", "content": HELPDESK},
                          {"role": "user", "content": "Hi, I have a question about my kettle."},
                          {"role": "assistant", "content": "Of course! Which kettle do you have?"},
                          {"role": "user", "content": "The Zephyr-9. How many years of warranty does it have?"},
                          {"role": "assistant", "content": "The Zephyr-9 kettle has a 7-year warranty."}])  # fmt: skip
    questions = [q for q, _ in KETTLE]
    print("base:", base := [_greedy(handle, None, q) for q in questions])
    assert not any("7" in a for a in base)  # the base model does not know it

    # Steps, not the clock, end this run: 4 steps take ~25 s each on a busy 2-core CPU, under 60 s on an idle one.
    settings = sft.SFTSettings(max_steps=4, time_budget_s=600)
    gen = sft.SFTGenerator(handle, config=settings, progress=False)
    result = gen.generate(GenerationRequest(conversations=conversations))
    assert result.steps == 4 and result.final_loss < result.first_loss
    stack = _in_memory_stack(result)
    print(f"{result.train_seconds / result.steps:.1f} s/step, loss {result.first_loss:.3f}->{result.final_loss:.3f}")
    print("trained:", trained := [_greedy(handle, stack, q) for q in questions])
    print("held out:", held := [_greedy(handle, stack, q) for q in HELD_OUT])
    assert all("7" in a for a in trained), trained
    assert sum("7" in a for a in held) >= 4, held


# ---------------------------------------------------------------- the retain term

RETAIN = [[{"role": "user", "content": f"Tell me something about topic {n}."},
           {"role": "assistant", "content": f"Topic {n} is a fine topic with many sides to it."}] for n in range(6)]


def _kl_to_base(handle: BaseModelHandle, conversations: list[Any], stack: Any) -> float:
    """Mean KL(base || adapted) of the next-token distributions at the reply positions, by plain forwards."""
    seqs = [s for conv in conversations for s in sft.encode_conversation(handle.tokenizer, conv)[0]]
    total = count = 0.0
    hooks = LoraHooks.attach(handle.model)
    with torch.inference_mode():
        for seq in seqs:
            ids = torch.tensor([seq.ids])
            at = [t - 1 for t, label in enumerate(seq.labels) if label != sft.IGNORE]
            base = torch.log_softmax(handle.model(ids).logits[0, at].float(), -1)
            with hooks.activate(stack):
                adapted = torch.log_softmax(handle.model(ids).logits[0, at].float(), -1)
            total += float((base.exp() * (base - adapted)).sum())
            count += len(at)
    return total / count


def test_the_retain_term_keeps_the_model_near_the_base_elsewhere(handle: BaseModelHandle) -> None:
    plain = sft.finetune(handle, [WEATHER, CAPITAL], settings=FAST)
    kept = sft.finetune(handle, [WEATHER, CAPITAL], retain=RETAIN,
                        settings=FAST.model_copy(update={"retain_weight": 5.0}))  # fmt: skip
    assert plain.retain_kl is None and plain.retain_sequences == 0
    assert kept.retain_sequences == len(RETAIN) and kept.retain_kl is not None and kept.retain_kl >= 0
    assert kept.summary()["retain_kl"] == round(kept.retain_kl, 5)
    drift = {"plain": _kl_to_base(handle, RETAIN, _in_memory_stack(plain)),
             "kept": _kl_to_base(handle, RETAIN, _in_memory_stack(kept))}
    assert drift["kept"] < 0.5 * drift["plain"], drift
    # and the conversations are still learned
    seqs = [s for conv in (WEATHER, CAPITAL) for s in sft.encode_conversation(handle.tokenizer, conv)[0]]
    assert _hf_loss(handle, seqs, _in_memory_stack(kept)) < _hf_loss(handle, seqs) - 0.3


def test_the_shipped_retain_set_loads_and_bad_rows_are_named(tmp_path: Path) -> None:
    shipped = sft.load_retain()
    assert len(shipped) >= 60 and all(c[-1]["role"] == "assistant" and c[-1]["content"] for c in shipped)
    bad = tmp_path / "retain.jsonl"
    bad.write_text('{"messages": []}\n{"nope": 1}\n')
    with pytest.raises(InvalidInputError, match=r"retain.jsonl:2: a row must be an object with a 'messages' list"):
        sft.load_retain(bad)
