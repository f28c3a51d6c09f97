"""Gradient context distillation on a tiny random Llama: it learns, respects its budget, exports a PEFT adapter."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from agent_sleep.adapters import (
    lora_layers,
    peft_equivalence,
    prepare_stack,
    read_adapter,
    validate_adapter,
)
from agent_sleep.adapters.stack import LoraHooks
from agent_sleep.errors import InvalidInputError
from agent_sleep.generators import gradient_cd as cd
from agent_sleep.generators.prompts import answer_ids, question_prompt
from agent_sleep.models.loader import BaseModelHandle, load_base_model
from tests.helpers_models import make_tiny_model_dir

DOC = "The capital of France is Paris. The weather today is sunny."
QA = [{"question": "What is the capital of France?", "answer": "Paris"},
      {"question": "What is the weather today?", "answer": "sunny"}]  # fmt: skip
FAST = cd.CDSettings(rank=4, lr=1e-2, max_steps=60, time_budget_s=30, max_answer_tokens=6)


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)  # tiny models: threads cost more than they save


@pytest.fixture(scope="module")
def handle(tmp_path_factory: pytest.TempPathFactory) -> BaseModelHandle:
    return load_base_model(str(make_tiny_model_dir(tmp_path_factory.mktemp("cd"))), device="cpu")


def _logits(handle: BaseModelHandle, stack: object = None, text: str = "What is the capital of France?") -> torch.Tensor:
    ids = handle.tokenizer(question_prompt(handle.tokenizer, text), return_tensors="pt", add_special_tokens=False)
    with torch.inference_mode(), LoraHooks.attach(handle.model).activate(stack):  # type: ignore[arg-type]
        return handle.model(ids["input_ids"]).logits


def test_distill_lowers_the_loss_and_writes_a_peft_adapter(handle: BaseModelHandle, tmp_path: Path) -> None:
    base = _logits(handle)
    steps: list[tuple[int, float]] = []
    result = cd.distill(handle, DOC, QA, targets="gold", settings=FAST, on_step=lambda s, l: steps.append((s, l)))
    assert result.steps == len(steps) == FAST.max_steps and result.stopped == "max_steps"
    # A random 32-wide model has tiny logits, so the loss floor is near log(vocab); it must still move.
    assert result.final_loss < result.first_loss - 0.1
    assert result.answers == ("Paris", "sunny") and result.chunks == 1 and result.rank == 4
    assert result.nbytes == sum(t.numel() * 4 for t in result.tensors.values())

    # Training never changed the shared model, left no gradients on it, and left no adapter active.
    assert torch.equal(_logits(handle), base)
    assert all(p.grad is None for p in handle.model.parameters())

    folder = cd.write(result, tmp_path / "cd", handle=handle, sources={"documents": ["doc-1"]})
    artifact = read_adapter(folder)
    assert artifact.manifest is not None
    assert artifact.manifest.generator.name == "gradient_cd"
    assert artifact.manifest.base_model.content_hash == handle.content_hash
    assert artifact.manifest.sources.documents == ["doc-1"]
    assert artifact.manifest.model_extra["training"]["steps"] == FAST.max_steps
    assert artifact.modules == [f"model.layers.{i}.mlp.down_proj" for i in (0, 1)]
    report = validate_adapter(artifact, handle, max_delta_norm=1e6)
    assert report.ok, report.reason
    assert peft_equivalence(folder, handle).ok
    stack = prepare_stack("cd", [("cd", lora_layers(artifact), 1.0)])
    assert not torch.allclose(_logits(handle, stack), base)


class _StepClock:
    """Stands in for the ``time`` module in gradient_cd: one second passes per training step.

    The budget is then counted in steps, so the test says exactly where training must stop on any
    machine, however loaded. (Real speed is a benchmark's business: evals/bench_d2l.py.)
    """

    def __init__(self) -> None:
        self.now = 1000.0

    def perf_counter(self) -> float:
        return self.now


@pytest.mark.parametrize(
    ("budget", "max_steps", "steps", "stopped"),
    [(0.5, 100_000, 1, "time_budget"),  # at least one step always runs
     (2.5, 100_000, 3, "time_budget"),  # the step that spends the budget finishes; no step starts after it
     (2.5, 3, 3, "max_steps")],  # the budget runs out on the last step anyway
)  # fmt: skip
def test_time_budget_stops_training(
    handle: BaseModelHandle, monkeypatch: pytest.MonkeyPatch, budget: float, max_steps: int, steps: int, stopped: str
) -> None:
    clock = _StepClock()
    monkeypatch.setattr(cd, "time", clock)
    seen: list[int] = []

    def on_step(step: int, loss: float) -> None:
        seen.append(step)
        clock.now += 1.0

    settings = FAST.model_copy(update={"max_steps": max_steps, "time_budget_s": budget})
    result = cd.distill(handle, DOC, QA, targets="gold", settings=settings, progress=False, on_step=on_step)
    assert result.stopped == stopped
    assert seen == list(range(1, steps + 1)) and result.steps == steps
    assert result.train_seconds == steps  # measured on the same clock as the budget
    assert result.summary()["stopped"] == stopped and result.summary()["steps"] == steps


def test_teacher_targets_are_the_base_model_reading_the_document(handle: BaseModelHandle) -> None:
    tok, question = handle.tokenizer, QA[0]["question"]
    end = {tok.eos_token_id, *answer_ids(tok, "")[-1:]}

    def answer_logits(context: str | None, answer: list[int]) -> torch.Tensor:
        """Row t: the base model's logits for answer token t (the last row: the token after ``answer``),
        reading ``context`` (or not) before the question."""
        ids = tok(question_prompt(tok, question, context), add_special_tokens=False)["input_ids"]
        with torch.inference_mode():
            return handle.model(torch.tensor([ids + answer])).logits[0, len(ids) - 1 :].float()

    answer: list[int] = []  # the base model's greedy answer with the document in context
    while len(answer) < FAST.max_answer_tokens and (not answer or answer[-1] not in end):
        answer.append(int(answer_logits(DOC, answer)[-1].argmax()))

    def first_loss(teacher_context: str | None) -> float:
        """Step 1's loss (the LoRA starts as a no-op): the student without the document, against the
        teacher's top-k next-token probabilities, renormalised, on every token of the teacher's answer."""
        p, i = torch.softmax(answer_logits(teacher_context, answer)[:-1], dim=-1).topk(FAST.top_k)
        student = torch.log_softmax(answer_logits(None, answer)[:-1], dim=-1)
        return float(-((p / p.sum(dim=-1, keepdim=True)) * student.gather(1, i)).sum(dim=1).mean())

    result = cd.distill(handle, DOC, [question], settings=FAST.model_copy(update={"max_steps": 1}), progress=False)
    assert result.targets == "teacher"
    assert result.answers == (tok.decode(answer, skip_special_tokens=True).strip(),)
    assert abs(first_loss(DOC) - first_loss(None)) > 1e-4, "test needs the document to change the teacher"
    assert result.first_loss == pytest.approx(first_loss(DOC), abs=2e-5)

    settings = FAST.model_copy(update={"max_steps": 2, "target_modules": ("model.layers.1.mlp.down_proj",)})
    result = cd.distill(handle, DOC, [q["question"] for q in QA], settings=settings)
    assert result.targets == "teacher" and result.steps == 2
    assert sorted(result.tensors) == [
        "base_model.model.model.layers.1.mlp.down_proj.lora_A.weight",
        "base_model.model.model.layers.1.mlp.down_proj.lora_B.weight",
    ]


def test_bad_input_is_refused(handle: BaseModelHandle) -> None:
    with pytest.raises(InvalidInputError, match="empty"):
        cd.distill(handle, "  ", QA, settings=FAST)
    with pytest.raises(InvalidInputError, match="at least one"):
        cd.distill(handle, DOC, [], settings=FAST)
    with pytest.raises(InvalidInputError, match="needs an answer"):
        cd.distill(handle, DOC, ["What is the capital of France?"], targets="gold", settings=FAST)
    with pytest.raises(InvalidInputError, match="targets must be"):
        cd.distill(handle, DOC, QA, targets="silver", settings=FAST)  # type: ignore[arg-type]
    with pytest.raises(InvalidInputError, match="context"):  # the teacher needs the document in its window
        cd.distill(handle, "word " * 600, QA, settings=FAST)
    with pytest.raises(InvalidInputError, match="no linear layers"):
        cd.distill(handle, DOC, QA, targets="gold", settings=FAST.model_copy(update={"target_modules": ("nope",)}))


@pytest.mark.model
def test_real_model_distillation_learns_a_fact() -> None:
    handle = load_base_model()
    doc = "The Kestrel K7 leaf blower is made by Torvane Tools and weighs 2.3 kg."
    qa = [{"question": "Which company makes the Kestrel K7 leaf blower?", "answer": "Torvane Tools"}]
    settings = cd.CDSettings(lr=3e-3, max_steps=6, time_budget_s=120, max_answer_tokens=8)
    result = cd.distill(handle, doc, qa, targets="gold", settings=settings)
    assert result.final_loss < result.first_loss
