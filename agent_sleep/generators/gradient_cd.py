"""Gradient context distillation: the classical baseline that Doc-to-LoRA is measured against.

One document in, one LoRA out, by ordinary gradient descent (Snell et al.'s
context distillation; the CD baseline of Sakana's D2L paper: LoRA on
``down_proj``, AdamW, a few hundred steps on generated questions):

1. **Targets.** For each training question the *teacher* - the base model with
   the document before the question - answers greedily, and its top-``k``
   next-token probabilities at every answer token are kept (soft targets, which
   carry more than the argmax). With ``targets="gold"`` the caller's answers
   are used instead, as one-hot targets.
2. **Student.** The same base model *without* the document (the question
   alone) plus a trainable LoRA, trained on those targets by AdamW until
   ``max_steps`` or the wall-clock ``time_budget_s`` runs out.

Prompts are D2L's (:mod:`agent_sleep.generators.prompts`), so teacher, student
and the D2L hypernetwork all see the same question format.

The LoRA is applied through :class:`~agent_sleep.adapters.stack.LoraHooks` in
the calling context only: the shared base model is never wrapped or changed,
and other threads serving from it never see the adapter in training. Its
initialisation and scaling are PEFT's (A Kaiming-uniform, B zero,
``lora_alpha / r``), so the folder :func:`write` produces loads unchanged in
``peft.PeftModel.from_pretrained``.

The training questions must never be the questions an evaluation scores
(``evals/bench_d2l.py`` trains on each document's probe questions and scores
separate ones). :class:`GradientCDGenerator` is the same run as a
:class:`~agent_sleep.interfaces.Generator` (registry name ``gradient_cd``): a
request's one document and its probes in, the adapter out. Not here: deciding
whether the result is good (the gate), or registering it
(:class:`~agent_sleep.registry.AdapterRegistry`).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from agent_sleep.errors import InvalidInputError
from agent_sleep.generators.lora_training import (
    cycle_batches,
    export_lora,
    first_lora_layer,
    frozen_hidden,
    init_lora,
    lora_targets,
    train_lora,
    write_trained,
)
from agent_sleep.generators.prompts import answer_ids, question_prompt
from agent_sleep.generators.result import GeneratedAdapter

if TYPE_CHECKING:
    from torch import Tensor

    from agent_sleep.adapters.manifest import AdapterSources
    from agent_sleep.config import Settings
    from agent_sleep.interfaces import GenerationRequest
    from agent_sleep.models.loader import BaseModelHandle

__all__ = [
    "GENERATOR_NAME", "GENERATOR_VERSION", "CDSettings", "DistilledAdapter", "GradientCDGenerator", "distill",
    "write",
]  # fmt: skip

GENERATOR_NAME = "gradient_cd"
GENERATOR_VERSION = "1"
Targets = Literal["teacher", "gold"]


class CDSettings(BaseModel):
    """Knobs of one distillation run. Defaults: D2L's target and rank, a budget a CPU can afford."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    rank: int = Field(default=8, ge=1)
    lora_alpha: float = Field(default=16.0, gt=0)
    target_modules: tuple[str, ...] = ("down_proj",)
    """Layer names (``down_proj``: every layer's) or full module paths (``model.layers.16.mlp.down_proj``)."""
    lr: float = Field(default=1e-3, gt=0)
    weight_decay: float = Field(default=0.0, ge=0)
    max_steps: int = Field(default=300, ge=1)
    time_budget_s: float = Field(default=120.0, gt=0)
    batch_size: int = Field(default=8, ge=1)
    max_answer_tokens: int = Field(default=32, ge=1)
    top_k: int = Field(default=16, ge=1)
    seed: int = 0


@dataclass(frozen=True, eq=False)
class DistilledAdapter(GeneratedAdapter):
    """The trained LoRA (the fields of every generator's result, plus how training went).

    ``tensors`` are PEFT-keyed CPU tensors; ``seconds`` is the whole run
    (teacher answers plus training), split into ``teacher_seconds`` and
    ``train_seconds``. ``stopped`` says what ended training.
    """

    steps: int
    teacher_seconds: float
    train_seconds: float
    first_loss: float
    final_loss: float
    targets: Targets
    stopped: Literal["max_steps", "time_budget"]
    answers: tuple[str, ...]
    settings: CDSettings

    def summary(self) -> dict[str, Any]:
        """JSON-ready training record (stored in the manifest's ``training`` field)."""
        return {
            "generator": GENERATOR_NAME, "targets": self.targets, "steps": self.steps, "stopped": self.stopped,
            "seconds": round(self.seconds, 3), "teacher_seconds": round(self.teacher_seconds, 3),
            "train_seconds": round(self.train_seconds, 3), "first_loss": round(self.first_loss, 4),
            "final_loss": round(self.final_loss, 4), "questions": len(self.answers),
            "settings": self.settings.model_dump(mode="json"),
        }  # fmt: skip


@dataclass(frozen=True, eq=False)
class _Example:
    prompt: list[int]
    answer: list[int]
    target_ids: Tensor  # [len(answer), k] token ids
    target_probs: Tensor  # [len(answer), k], rows sum to 1
    hidden: Tensor | None = None  # [len(prompt + answer), H] entering the first LoRA layer (frozen, cached)


# ---------------------------------------------------------------- targets


def _prompt_ids(handle: BaseModelHandle, question: str, document: str | None = None) -> list[int]:
    text = question_prompt(handle.tokenizer, question.strip(), None if document is None else document.strip())
    return list(handle.tokenizer(text, add_special_tokens=False)["input_ids"])


def _eos_ids(handle: BaseModelHandle) -> set[int]:
    ids = {handle.tokenizer.eos_token_id}
    configured = getattr(handle.model.generation_config, "eos_token_id", None)
    ids.update(configured if isinstance(configured, list) else [configured])
    ids.update(answer_ids(handle.tokenizer, "")[-1:])  # the end-of-turn token the prompts use
    return {i for i in ids if i is not None}


def _cache_kwarg(model: Any) -> str:
    """transformers 5 calls the KV cache ``cache``; 4.x called it ``past_key_values``."""
    import inspect

    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


def _teacher_example(handle: BaseModelHandle, document: str, question: str, cfg: CDSettings) -> _Example:
    """Greedy answer of the base model with the document in context, with its top-k probabilities."""
    import torch

    from agent_sleep.adapters.stack import LoraHooks

    ids = _prompt_ids(handle, question, document)
    limit = getattr(handle.model.config, "max_position_embeddings", None)
    if limit is not None and len(ids) + cfg.max_answer_tokens > limit:
        raise InvalidInputError(
            f"document and question take {len(ids)} tokens; the teacher needs them in its context of {limit} "
            "tokens, so gradient context distillation cannot use this document (D2L can: it chunks)"
        )
    eos = _eos_ids(handle)
    hooks = LoraHooks.attach(handle.model)
    cache_kwarg = _cache_kwarg(handle.model)
    answer: list[int] = []
    top_ids, top_probs = [], []
    step, past = torch.tensor([ids], device=handle.device), None
    with handle.lock, torch.inference_mode(), hooks.activate(None):  # the plain base model is the teacher
        for _ in range(cfg.max_answer_tokens):
            out = handle.model(input_ids=step, use_cache=True, **{cache_kwarg: past})
            past = getattr(out, cache_kwarg)
            probs = torch.softmax(out.logits[0, -1].float(), dim=-1)
            p, i = probs.topk(cfg.top_k)
            top_ids.append(i.cpu())
            top_probs.append((p / p.sum()).cpu())
            token = int(i[0])  # greedy
            answer.append(token)
            if token in eos:
                break
            step = torch.tensor([[token]], device=handle.device)
    return _Example(ids, answer, torch.stack(top_ids), torch.stack(top_probs))


def _gold_example(handle: BaseModelHandle, question: str, answer_text: str, cfg: CDSettings) -> _Example:
    import torch

    answer = answer_ids(handle.tokenizer, answer_text.strip())[: cfg.max_answer_tokens]  # ends with end-of-turn
    if not answer:
        raise InvalidInputError(f"gold answer to {question!r} is empty")
    ids = torch.tensor(answer).unsqueeze(1)
    return _Example([], answer, ids, torch.ones(len(answer), 1))


def _normalise(questions: Sequence[str | Mapping[str, Any]], targets: Targets) -> list[tuple[str, str | None]]:
    out: list[tuple[str, str | None]] = []
    for item in questions:
        if isinstance(item, str):
            q, a = item, None
        elif isinstance(item, Mapping) and isinstance(item.get("question"), str):
            q, a = item["question"], item.get("answer")
            if isinstance(a, (list, tuple)):
                a = a[0] if a else None
        else:
            raise InvalidInputError(f'training questions must be strings or {{"question": ..., "answer": ...}}, got {item!r}')
        if not q.strip():
            raise InvalidInputError("training questions must not be empty")
        if targets == "gold" and not (isinstance(a, str) and a.strip()):
            raise InvalidInputError(f"targets='gold' needs an answer for every question; {q!r} has none")
        out.append((q, a if isinstance(a, str) else None))
    if not out:
        raise InvalidInputError("gradient context distillation needs at least one training question")
    return out


# ---------------------------------------------------------------- the LoRA in training


def _batch_loss(handle: BaseModelHandle, batch: Sequence[_Example], hooks: Any, stack: Any, start: int) -> Tensor:
    """Mean over examples of the per-token cross-entropy against the soft targets (logits only on answers)."""
    import torch

    from agent_sleep.generators.backbone import logits_at, run_blocks

    width = max(len(ex.prompt) + len(ex.answer) for ex in batch)
    first = batch[0].hidden
    assert first is not None
    hidden = first.new_zeros(len(batch), width, first.shape[-1])
    mask = torch.zeros((len(batch), width), dtype=torch.long, device=handle.device)
    rows, cols = [], []
    for n, ex in enumerate(batch):
        assert ex.hidden is not None
        hidden[n, : ex.hidden.shape[0]] = ex.hidden
        mask[n, : ex.hidden.shape[0]] = 1
        begin = len(ex.prompt) - 1  # the logit at position t predicts token t + 1
        rows += [n] * len(ex.answer)
        cols += list(range(begin, begin + len(ex.answer)))
    n_layers = len(handle.model.model.layers)
    with hooks.activate(stack):
        hidden = run_blocks(handle.model, hidden, mask, start, n_layers)
    # The LM head (vocab x hidden) is the costliest matmul per token: run it on answer positions only.
    index = (torch.tensor(rows, device=handle.device), torch.tensor(cols, device=handle.device))
    logp = torch.log_softmax(logits_at(handle.model, hidden, index).float(), dim=-1)
    target_ids = torch.cat([ex.target_ids for ex in batch]).to(handle.device)
    target_probs = torch.cat([ex.target_probs for ex in batch]).to(handle.device)
    per_token = -(target_probs * logp.gather(1, target_ids)).sum(dim=1)
    # Average per example first, so long answers do not outweigh short ones.
    per_example = torch.zeros(len(batch), device=handle.device).index_add_(0, index[0], per_token)
    counts = torch.tensor([len(ex.answer) for ex in batch], device=handle.device, dtype=per_example.dtype)
    return (per_example / counts).mean()


# ---------------------------------------------------------------- the run


def distill(
    handle: BaseModelHandle,
    document: str,
    questions: Sequence[str | Mapping[str, Any]],
    *,
    targets: Targets = "teacher",
    settings: CDSettings | None = None,
    progress: bool | None = None,
    on_step: Callable[[int, float], None] | None = None,
) -> DistilledAdapter:
    """Train a LoRA that makes the model answer ``questions`` as it does with ``document`` in context.

    ``questions`` are strings or ``{"question", "answer"}`` mappings (answers
    are needed only for ``targets="gold"``). Training stops at
    ``settings.max_steps`` or once ``settings.time_budget_s`` of training time
    is spent (at least one step always runs). ``progress`` shows a bar (default:
    when stderr is a terminal); ``on_step(step, loss)`` is called after each
    step. Takes ``handle.lock`` around each model call, so do not call it while
    holding that lock. Raises InvalidInputError for an empty document or
    question list, or a document that does not fit the teacher's context.
    """
    cfg = settings or CDSettings()
    if targets not in ("teacher", "gold"):
        raise InvalidInputError(f"targets must be 'teacher' or 'gold', not {targets!r}")
    if not isinstance(document, str) or not document.strip():
        raise InvalidInputError("the document is empty")
    pairs = _normalise(questions, targets)
    started = time.perf_counter()

    examples = []
    for question, answer in pairs:
        prompt = _prompt_ids(handle, question)
        if targets == "gold":
            ex = _gold_example(handle, question, answer or "", cfg)
        else:
            ex = _teacher_example(handle, document, question, cfg)
        examples.append(_Example(prompt, ex.answer, ex.target_ids, ex.target_probs))
    teacher_seconds = time.perf_counter() - started
    decoded = tuple(handle.tokenizer.decode(ex.answer, skip_special_tokens=True).strip() for ex in examples)

    modules = lora_targets(handle, cfg.target_modules)
    start_layer = first_lora_layer(list(modules))
    hidden = frozen_hidden(handle, [ex.prompt + ex.answer for ex in examples], start_layer)
    examples = [dataclasses.replace(ex, hidden=h) for ex, h in zip(examples, hidden, strict=True)]
    params = init_lora(modules, cfg.rank, cfg.seed, handle.device)
    batches = cycle_batches(examples, cfg.batch_size, cfg.seed)
    log = train_lora(
        handle, params, lambda hooks, stack: _batch_loss(handle, next(batches), hooks, stack, start_layer),
        name=GENERATOR_NAME, label="gradient context distillation", rank=cfg.rank,
        scaling=cfg.lora_alpha / cfg.rank, lr=cfg.lr, weight_decay=cfg.weight_decay, max_steps=cfg.max_steps,
        time_budget_s=cfg.time_budget_s, progress=progress, on_step=on_step, clock=time.perf_counter,
    )  # fmt: skip
    losses = log.losses
    tensors, config = export_lora(params, cfg.rank, cfg.lora_alpha, cfg.target_modules)
    return DistilledAdapter(
        tensors=tensors,
        lora_config=config,
        chunks=1,
        rank=cfg.rank,
        seconds=time.perf_counter() - started,
        steps=len(losses),
        teacher_seconds=teacher_seconds,
        train_seconds=log.seconds,
        first_loss=losses[0],
        final_loss=sum(losses[-5:]) / len(losses[-5:]),
        targets=targets,
        stopped=log.stopped,  # type: ignore[arg-type]  # gradient_cd never asks for convergence
        answers=decoded,
        settings=cfg,
    )


def write(
    result: DistilledAdapter,
    dest: str | Path,
    *,
    handle: BaseModelHandle,
    sources: AdapterSources | Mapping[str, Any] | None = None,
    skill: str | None = None,
) -> Path:
    """Write ``result`` as an adapter folder (PEFT files + manifest, generator ``gradient_cd``) at ``dest``."""
    return write_trained(result, dest, handle=handle, generator=GENERATOR_NAME, version=GENERATOR_VERSION,
                         training=result.summary(), sources=sources, skill=skill)  # fmt: skip


class GradientCDGenerator:
    """:func:`distill` and :func:`write` bound to one base model, as a :class:`~agent_sleep.interfaces.Generator`.

    ``config`` holds the run's knobs (:class:`CDSettings`); a request's ``budget_seconds``, when set,
    replaces its ``time_budget_s``. ``targets`` and ``progress`` are :func:`distill`'s.
    """

    name = GENERATOR_NAME
    version = GENERATOR_VERSION

    def __init__(self, handle: BaseModelHandle, *, config: CDSettings | None = None, targets: Targets = "teacher",
                 progress: bool | None = None) -> None:  # fmt: skip
        if targets not in ("teacher", "gold"):
            raise InvalidInputError(f"targets must be 'teacher' or 'gold', not {targets!r}")
        self.handle = handle
        self.config = config or CDSettings()
        self.targets: Targets = targets
        self.progress = progress

    @classmethod
    def load(cls, *, handle: BaseModelHandle | None = None, settings: Settings | None = None,
             config: CDSettings | None = None, targets: Targets = "teacher",
             progress: bool | None = None) -> GradientCDGenerator:  # fmt: skip
        """A generator on ``handle`` (default: the configured base model, ``settings.model``)."""
        if handle is None:
            from agent_sleep.models.loader import load_base_model

            handle = load_base_model(settings=settings)
        return cls(handle, config=config, targets=targets, progress=progress)

    def generate(self, request: GenerationRequest) -> DistilledAdapter:
        """Distil the request's one document, training on its probes (their answers too, for ``targets="gold"``)."""
        document = request.single_document(self.name)
        config = self.config
        if request.budget_seconds is not None:
            config = config.model_copy(update={"time_budget_s": request.budget_seconds})
        questions = [{"question": p.question, "answer": p.answer} for p in request.probes]
        return distill(self.handle, document, questions, targets=self.targets, settings=config,
                       progress=self.progress)  # fmt: skip

    def write(self, result: DistilledAdapter, dest: str | Path, *, sources: Mapping[str, Any] | None = None,
              skill: str | None = None) -> Path:  # fmt: skip
        """The adapter folder at ``dest``, as :func:`write` makes it for this generator's base model."""
        return write(result, dest, handle=self.handle, sources=sources, skill=skill)
