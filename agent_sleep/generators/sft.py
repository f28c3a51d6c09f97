"""Supervised fine-tuning: conversations in, a LoRA out that makes the model answer as they do.

Each conversation is a list of chat messages ``{"role": "system"|"user"|"assistant"|"tool",
"content": str}``; an assistant message may carry ``"tool_calls": [{"name", "arguments"}]``, a tool
message ``"tool_call_id"`` and ``"name"``. A corrected failure arrives with the correction already in
place of the wrong answer: every non-empty assistant turn is a target.

**What the model is trained on is what it sees and writes at inference.** The prompt before each
assistant turn is the live runtime's own rendering of the history
(:func:`agent_sleep.runtime.chat_format.render_prompt`: the base model's chat template, tool calls
and results as that module puts them in a prompt for this model); the target is the reply as the
model should write it (its text, then each call as :func:`~agent_sleep.runtime.chat_format.format_tool_call`
writes it) followed by the template's end-of-turn token, so the model also learns to stop. The
loss is the mean cross-entropy over target tokens only (labels ``-100`` elsewhere). Turns whose
prompt extends the previous turn's text share one sequence; a history the runtime renders
differently (e.g. a call-only turn folded into the next user message) starts a new one. The tool
schemas offered at the time are not part of a conversation, so prompts are rendered with no tools
offered.

**Too long**: a sequence over ``max_seq_tokens`` is cut from the left (the system prompt and the
oldest turns go first; a reply that loses its start is no longer a target), so its last reply is
always kept whole; a sequence whose last reply alone does not fit is skipped. Conversations with
no assistant reply are skipped; both are counted in the result, and a request with nothing left
to train on is an InvalidInputError.

**What else changes**: the LoRA moves the model everywhere, not only in the agent's conversations.
With ``retain_weight`` set, every step adds the KL divergence from the base model's next-token
distribution to the adapted one along general chat that has nothing to do with the agent
(:data:`RETAIN_FILE`, the base model's own replies), so the adapter is pushed to change what the
conversations teach and little else (self-distillation towards the frozen base, as in continual
learning's "learning without forgetting").

Training is :func:`~agent_sleep.generators.lora_training.train_lora`'s (PEFT-initialised LoRA
through hooks, AdamW, clipping, step and time budgets); it stops early once every step of the
last epoch is below ``converged_loss``. Not here: choosing the conversations (selectors), judging
the result (the gate).
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field

from agent_sleep.errors import InvalidInputError
from agent_sleep.generators.lora_training import (
    Stopped,
    cycle_batches,
    export_lora,
    first_lora_layer,
    frozen_hidden,
    init_lora,
    lora_targets,
    train_lora,
    write_trained,
)
from agent_sleep.generators.result import GeneratedAdapter

if TYPE_CHECKING:
    from torch import Tensor

    from agent_sleep.adapters.manifest import AdapterSources
    from agent_sleep.config import Settings
    from agent_sleep.interfaces import GenerationRequest
    from agent_sleep.models.loader import BaseModelHandle

__all__ = [
    "GENERATOR_NAME", "GENERATOR_VERSION", "IGNORE", "SFTAdapter", "SFTGenerator", "SFTSettings", "TrainingSequence",
    "encode_conversation", "finetune", "write",
]  # fmt: skip

GENERATOR_NAME = "sft"
GENERATOR_VERSION = "1"
IGNORE = -100
"""The label of a token that is context, not target (PyTorch's and transformers' ``ignore_index``)."""
_ROLES = ("system", "user", "assistant", "tool")
log = logging.getLogger(__name__)


class SFTSettings(BaseModel):
    """Knobs of one fine-tuning run. Defaults: measured on SmolLM2-135M-Instruct on a 2-core CPU."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    rank: int = Field(default=8, ge=1)
    lora_alpha: float = Field(default=16.0, gt=0)
    target_modules: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
    """Layer names (``q_proj``: every layer's) or full module paths (``model.layers.3.self_attn.q_proj``)."""
    lr: float = Field(default=3e-3, gt=0)
    weight_decay: float = Field(default=0.0, ge=0)
    max_steps: int = Field(default=200, ge=1)
    time_budget_s: float = Field(default=120.0, gt=0)
    batch_size: int = Field(default=8, ge=1)
    max_seq_tokens: int = Field(default=1024, ge=2)
    converged_loss: float | None = Field(default=0.02, ge=0)
    """Stop once every step of the last epoch has a loss below this (nats per target token); None: never."""
    max_grad_norm: float = Field(default=1.0, gt=0)
    seed: int = 0
    retain_weight: float = Field(default=0.0, ge=0)
    """Weight of the retain term (0: off): the KL divergence from the base model's next-token distribution
    to the adapted model's, on the retain conversations (default: :data:`RETAIN_FILE`), added to the loss."""
    retain_batch_size: int = Field(default=4, ge=1)


RETAIN_FILE = Path(__file__).resolve().parent / "data" / "retain.jsonl"
"""General chat prompts with the base model's own replies (``pipelines/sft/build_retain.py``): along
them the retain term keeps the adapted model where the base model was, outside the agent's prompt."""


def load_retain(path: str | Path = RETAIN_FILE) -> list[list[dict[str, Any]]]:
    """The retain conversations of a JSONL file of ``{"messages": [...]}`` rows."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise InvalidInputError(f"cannot read the retain conversations {path}: {exc}") from exc
    out = []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError as exc:
            raise InvalidInputError(f"{path}:{n}: not JSON: {exc}") from exc
        if not isinstance(row, dict) or not isinstance(row.get("messages"), list):
            raise InvalidInputError(f"{path}:{n}: a row must be an object with a 'messages' list")
        out.append(row["messages"])
    return out


@dataclass(frozen=True, eq=False)
class TrainingSequence:
    """One training sequence: token ``ids`` and ``labels`` (the id on target tokens, :data:`IGNORE` elsewhere).

    ``truncated`` says it was cut from the left to fit ``max_seq_tokens``.
    """

    ids: tuple[int, ...]
    labels: tuple[int, ...]
    truncated: bool = False

    @property
    def targets(self) -> int:
        return sum(label != IGNORE for label in self.labels)


@dataclass(frozen=True, eq=False)
class SFTAdapter(GeneratedAdapter):
    """The trained LoRA (the fields of every generator's result) and how training went.

    ``conversations`` were trained on (``skipped`` had no assistant reply); they made ``sequences``
    sequences with ``target_tokens`` target tokens in all; ``truncated`` sequences were cut from the
    left and ``too_long`` ones skipped. ``stopped`` says what ended training: ``max_steps``,
    ``time_budget`` or ``converged``. Losses are the cross-entropy on the targets; with the retain
    term on, ``retain_kl`` is its mean over the last steps (nats per token) and ``retain_sequences``
    how many retain sequences it used.
    """

    steps: int
    train_seconds: float
    first_loss: float
    final_loss: float
    stopped: Stopped
    conversations: int
    skipped: int
    sequences: int
    target_tokens: int
    truncated: int
    too_long: int
    settings: SFTSettings
    retain_kl: float | None = None
    retain_sequences: int = 0

    def summary(self) -> dict[str, Any]:
        """JSON-ready training record (stored in the manifest's ``training`` field)."""
        return {
            "generator": GENERATOR_NAME, "steps": self.steps, "stopped": self.stopped,
            "seconds": round(self.seconds, 3), "train_seconds": round(self.train_seconds, 3),
            "first_loss": round(self.first_loss, 4), "final_loss": round(self.final_loss, 4),
            "conversations": self.conversations, "skipped": self.skipped, "sequences": self.sequences,
            "target_tokens": self.target_tokens, "truncated": self.truncated, "too_long": self.too_long,
            "retain_kl": None if self.retain_kl is None else round(self.retain_kl, 5),
            "retain_sequences": self.retain_sequences, "settings": self.settings.model_dump(mode="json"),
        }  # fmt: skip


# ---------------------------------------------------------------- conversations to token sequences


def _arguments(value: Any, where: str) -> dict[str, Any]:
    if isinstance(value, str):
        try:
            value = json.loads(value) if value.strip() else {}
        except ValueError as exc:
            raise InvalidInputError(f"{where}: tool-call arguments are not valid JSON ({exc})") from exc
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise InvalidInputError(f"{where}: tool-call arguments must be a JSON object, got {value!r}")
    return dict(value)


def _to_messages(conversation: Sequence[Any], where: str) -> list[Any]:
    """The conversation as LangChain messages (what the runtime renders), checked message by message."""
    from langchain_core.messages import AIMessage, HumanMessage, SystemMessage, ToolMessage

    if isinstance(conversation, (str, Mapping)) or not isinstance(conversation, Sequence):
        raise InvalidInputError(f"{where} must be a list of chat messages, got {type(conversation).__name__}")
    messages: list[Any] = []
    pending: list[tuple[str, str]] = []  # (call id, name) of calls not yet answered, for tool messages without an id
    for j, msg in enumerate(conversation):
        at = f"{where}, message {j}"
        if not isinstance(msg, Mapping):
            raise InvalidInputError(f"{at} must be a mapping with 'role' and 'content', got {msg!r}")
        role, content = msg.get("role"), msg.get("content")
        if role not in _ROLES:
            raise InvalidInputError(f"{at}: role must be one of {list(_ROLES)}, got {role!r}")
        if content is None and role == "assistant":
            content = ""
        if not isinstance(content, str):
            raise InvalidInputError(f"{at}: content must be a string, got {type(content).__name__}")
        if role == "system":
            messages.append(SystemMessage(content))
        elif role == "user":
            messages.append(HumanMessage(content))
        elif role == "assistant":
            calls = []
            raw_calls = msg.get("tool_calls") or []
            if not isinstance(raw_calls, Sequence) or isinstance(raw_calls, (str, Mapping)):
                raise InvalidInputError(f"{at}: tool_calls must be a list")
            for k, raw in enumerate(raw_calls):
                call = raw.get("function", raw) if isinstance(raw, Mapping) else None  # OpenAI's nesting too
                if not isinstance(call, Mapping) or not isinstance(call.get("name"), str) or not call["name"]:
                    raise InvalidInputError(f"{at}: tool call {k} needs a 'name', got {raw!r}")
                call_id = str(raw.get("id") or f"call_{j}_{k}")
                args = _arguments(call.get("arguments", call.get("args")), f"{at}, tool call {k}")
                calls.append({"name": call["name"], "args": args, "id": call_id, "type": "tool_call"})
            pending = [(c["id"], c["name"]) for c in calls]
            messages.append(AIMessage(content, tool_calls=calls))
        else:
            call_id, name = msg.get("tool_call_id"), msg.get("name")
            if call_id is None and pending:
                call_id, found = pending.pop(0)
                name = name or found
            else:
                pending = [p for p in pending if p[0] != call_id]
            messages.append(ToolMessage(content, tool_call_id=str(call_id or f"call_{j}"), name=name))
    return messages


def _reply(message: Any) -> str:
    """An assistant message as the model should write it: its text, then each call in the runtime's syntax."""
    from agent_sleep.runtime.chat_format import format_tool_call

    blocks = [format_tool_call(c["name"], c["args"]) for c in message.tool_calls]
    return "\n".join([message.content, *blocks]).strip()


def _render_prompt(tokenizer: Any, messages: Sequence[Any]) -> str:
    """The runtime's prompt for ``messages`` (no tools offered), ending where the assistant's answer starts."""
    from agent_sleep.runtime.chat_format import render_prompt

    return render_prompt(tokenizer, messages, [], "auto")[0]


def _turn_end(tokenizer: Any) -> str:
    """What the template writes after an assistant's text up to its end-of-turn token (``<|im_end|>``)."""
    from agent_sleep.runtime.chat_format import apply_template

    marker = "agent-sleep-reply-7f3a"
    full = apply_template(tokenizer, [{"role": "user", "content": "x"}, {"role": "assistant", "content": marker}])
    end = full[full.rfind(marker) + len(marker) :].rstrip() if marker in full else ""
    return end or (tokenizer.eos_token or "")


def encode_conversation(
    tokenizer: Any, conversation: Sequence[Mapping[str, Any]], *, max_tokens: int = 1024, where: str = "conversation"
) -> tuple[list[TrainingSequence], int]:
    """The conversation's training sequences, and how many were skipped as too long.

    No sequences (and 0) for a conversation without an assistant reply. Raises InvalidInputError
    (naming ``where`` and the message) for a malformed message.
    """
    messages = _to_messages(conversation, where)
    end = _turn_end(tokenizer)
    pieces: list[list[tuple[str, bool]]] = []  # sequences as (text, is target) pieces
    text = ""  # the current sequence's text so far
    for i, message in enumerate(messages):
        if message.type != "ai":
            continue
        reply = _reply(message)
        if not reply:
            continue  # an empty turn is history, never a target
        prompt = _render_prompt(tokenizer, messages[:i])
        if pieces and text and prompt.startswith(text):
            pieces[-1].append((prompt[len(text) :], False))
        else:
            pieces.append([(prompt, False)])
        pieces[-1].append((reply + end, True))
        text = prompt + reply + end
    sequences, too_long = [], 0
    for seq in pieces:
        ids: list[int] = []
        spans = []  # [start, end) of each target piece
        for piece, target in seq:
            piece_ids = tokenizer(piece, add_special_tokens=False)["input_ids"]
            if target:
                spans.append((len(ids), len(ids) + len(piece_ids)))
            ids += piece_ids
        labels = [IGNORE] * len(ids)
        for begin, stop in spans:
            labels[begin:stop] = ids[begin:stop]
        cut = len(ids) - max_tokens
        if cut <= 0:
            sequences.append(TrainingSequence(tuple(ids), tuple(labels)))
        elif spans[-1][0] - cut < 1:  # the last reply, and a token of context before it, do not fit
            too_long += 1
        else:
            for begin, stop in spans:
                if begin < cut:  # a reply that lost its start is no longer a target
                    labels[begin:stop] = [IGNORE] * (stop - begin)
            sequences.append(TrainingSequence(tuple(ids[cut:]), tuple(labels[cut:]), truncated=True))
    return sequences, too_long


# ---------------------------------------------------------------- training


def _adapted_logits(
    handle: BaseModelHandle, batch: Sequence[tuple[TrainingSequence, Tensor]], hooks: Any, stack: Any, start: int
) -> tuple[Tensor, Tensor]:
    """The adapted model's logits at every position that predicts a target token of the batch (in
    sequence order, then position order), and those target ids."""
    import torch

    from agent_sleep.generators.backbone import logits_at, run_blocks

    width = max(len(seq.ids) for seq, _ in batch)
    first = batch[0][1]
    hidden = first.new_zeros(len(batch), width, first.shape[-1])
    mask = torch.zeros((len(batch), width), dtype=torch.long, device=handle.device)
    rows, cols, targets = [], [], []
    for n, (seq, cached) in enumerate(batch):
        hidden[n, : len(seq.ids)] = cached
        mask[n, : len(seq.ids)] = 1
        for t, label in enumerate(seq.labels):
            if label != IGNORE:  # the logit at position t - 1 predicts token t
                rows.append(n)
                cols.append(t - 1)
                targets.append(label)
    with hooks.activate(stack):
        hidden = run_blocks(handle.model, hidden, mask, start, len(handle.model.model.layers))
    index = (torch.tensor(rows, device=handle.device), torch.tensor(cols, device=handle.device))
    return logits_at(handle.model, hidden, index).float(), torch.tensor(targets, device=handle.device)


def _batch_loss(
    handle: BaseModelHandle, batch: Sequence[tuple[TrainingSequence, Tensor]], hooks: Any, stack: Any, start: int
) -> Tensor:
    """Mean cross-entropy over every target token of the batch (logits computed on target positions only)."""
    import torch

    logits, targets = _adapted_logits(handle, batch, hooks, stack, start)
    return torch.nn.functional.cross_entropy(logits, targets)


def _base_states(handle: BaseModelHandle, seq: TrainingSequence, cached: Tensor, start: int) -> Tensor:
    """The base model's last hidden states (before the final norm) at the positions that predict
    ``seq``'s target tokens: the base distribution there, stored as ``[positions, hidden]``, not vocab-wide."""
    import torch

    from agent_sleep.generators.backbone import run_blocks

    positions = [t - 1 for t, label in enumerate(seq.labels) if label != IGNORE]
    with handle.lock, torch.no_grad():
        mask = torch.ones((1, len(seq.ids)), dtype=torch.long, device=handle.device)
        hidden = run_blocks(handle.model, cached.unsqueeze(0), mask, start, len(handle.model.model.layers))
    return hidden[0, positions].detach()


def _retain_kl(handle: BaseModelHandle, batch: Sequence[tuple[TrainingSequence, Tensor, Tensor]], hooks: Any,
               stack: Any, start: int) -> Tensor:  # fmt: skip
    """KL(base || adapted) of the next-token distributions, averaged over the retain batch's target positions."""
    import torch

    from agent_sleep.generators.backbone import logits_at

    logits, _ = _adapted_logits(handle, [(seq, cached) for seq, cached, _ in batch], hooks, stack, start)
    base_hidden = torch.cat([states for _, _, states in batch]).unsqueeze(0)
    with torch.no_grad():
        n = base_hidden.shape[1]
        index = (torch.zeros(n, dtype=torch.long, device=handle.device), torch.arange(n, device=handle.device))
        base = torch.log_softmax(logits_at(handle.model, base_hidden, index).float(), dim=-1)
    return torch.nn.functional.kl_div(torch.log_softmax(logits, dim=-1), base, log_target=True, reduction="batchmean")


def _converged(threshold: float | None, window: int) -> Callable[[Sequence[float]], bool] | None:
    if threshold is None:
        return None
    return lambda losses: len(losses) >= window and max(losses[-window:]) < threshold


def finetune(
    handle: BaseModelHandle,
    conversations: Sequence[Sequence[Mapping[str, Any]]],
    *,
    settings: SFTSettings | None = None,
    progress: bool | None = None,
    on_step: Callable[[int, float], None] | None = None,
    retain: Sequence[Sequence[Mapping[str, Any]]] | None = None,
) -> SFTAdapter:
    """Train a LoRA on ``conversations``' assistant replies (see the module docstring for the format).

    With ``settings.retain_weight > 0`` each step also takes a batch of ``retain`` conversations
    (default: :func:`load_retain`) and adds the weighted KL from the base model's next-token
    distribution to the adapted one on their replies: the adapter learns the conversations while
    changing the model as little as it can elsewhere.

    Training stops at ``settings.max_steps``, once ``settings.time_budget_s`` of training time is
    spent (at least one step always runs), or once converged. ``progress`` shows a bar (default:
    when stderr is a terminal); ``on_step(step, loss)`` is called after each step. Takes
    ``handle.lock`` around each model call, so do not call it while holding that lock. Raises
    InvalidInputError for no conversations, a malformed message, nothing left to train on, or a
    loss that is not finite (nothing has been written then).
    """
    cfg = settings or SFTSettings()
    if isinstance(conversations, (str, Mapping)) or not conversations:
        raise InvalidInputError("sft needs at least one conversation")
    started = time.perf_counter()
    limit = getattr(handle.model.config, "max_position_embeddings", None) or cfg.max_seq_tokens
    max_tokens = min(cfg.max_seq_tokens, limit)

    sequences: list[TrainingSequence] = []
    used = skipped = too_long = 0
    for n, conversation in enumerate(conversations):
        found, dropped = encode_conversation(handle.tokenizer, conversation, max_tokens=max_tokens,
                                             where=f"conversation {n}")  # fmt: skip
        too_long += dropped
        if not found and not dropped:
            skipped += 1
        used += bool(found)
        sequences += found
    if skipped or too_long:
        log.warning("sft: skipped %d conversation(s) without an assistant reply and %d sequence(s) too long "
                    "for %d tokens", skipped, too_long, max_tokens)  # fmt: skip
    if not sequences:
        raise InvalidInputError(
            f"sft has nothing to train on: of {len(conversations)} conversation(s), {skipped} have no assistant "
            f"reply and {too_long} sequence(s) do not fit {max_tokens} tokens"
        )

    modules = lora_targets(handle, cfg.target_modules)
    start_layer = first_lora_layer(list(modules))
    examples = list(zip(sequences, frozen_hidden(handle, [seq.ids for seq in sequences], start_layer), strict=True))
    params = init_lora(modules, cfg.rank, cfg.seed, handle.device)
    batch_size = min(cfg.batch_size, len(examples))  # a batch never holds the same sequence twice
    batches = cycle_batches(examples, batch_size, cfg.seed)
    kept = _retain_examples(handle, cfg, retain, max_tokens, start_layer)
    retained = cycle_batches(kept, min(cfg.retain_batch_size, len(kept)), cfg.seed + 1) if kept else None
    ce: list[float] = []  # the cross-entropy of each step (the loss without the retain term)
    kl: list[float] = []

    def step_loss(hooks: Any, stack: Any) -> Tensor:
        loss = _batch_loss(handle, next(batches), hooks, stack, start_layer)
        ce.append(float(loss.detach()))
        if retained is None:
            return loss
        divergence = _retain_kl(handle, next(retained), hooks, stack, start_layer)
        kl.append(float(divergence.detach()))
        return loss + cfg.retain_weight * divergence

    done = _converged(cfg.converged_loss, max(2, math.ceil(len(examples) / batch_size)))
    run = train_lora(
        handle, params, step_loss,
        name=GENERATOR_NAME, label="sft", rank=cfg.rank, scaling=cfg.lora_alpha / cfg.rank, lr=cfg.lr,
        weight_decay=cfg.weight_decay, max_steps=cfg.max_steps, time_budget_s=cfg.time_budget_s,
        max_grad_norm=cfg.max_grad_norm, converged=None if done is None else (lambda _total: done(ce)),
        progress=progress, on_step=on_step, clock=time.perf_counter,
    )  # fmt: skip
    tensors, config = export_lora(params, cfg.rank, cfg.lora_alpha, cfg.target_modules)
    losses = ce[: len(run.losses)]
    return SFTAdapter(
        tensors=tensors,
        lora_config=config,
        chunks=1,
        rank=cfg.rank,
        seconds=time.perf_counter() - started,
        steps=len(losses),
        train_seconds=run.seconds,
        first_loss=losses[0],
        final_loss=sum(losses[-5:]) / len(losses[-5:]),
        stopped=run.stopped,
        conversations=used,
        skipped=skipped,
        sequences=len(sequences),
        target_tokens=sum(s.targets for s in sequences),
        truncated=sum(s.truncated for s in sequences),
        too_long=too_long,
        settings=cfg,
        retain_kl=sum(kl[-5:]) / len(kl[-5:]) if kl else None,
        retain_sequences=len(kept),
    )


def _retain_examples(handle: BaseModelHandle, cfg: SFTSettings, retain: Sequence[Sequence[Mapping[str, Any]]] | None,
                     max_tokens: int, start: int) -> list[tuple[TrainingSequence, Tensor, Tensor]]:  # fmt: skip
    """The retain sequences with their frozen hidden states and the base model's states at their targets."""
    if cfg.retain_weight <= 0:
        return []
    conversations = load_retain() if retain is None else retain
    sequences = [seq for n, c in enumerate(conversations)
                 for seq in encode_conversation(handle.tokenizer, c, max_tokens=max_tokens, where=f"retain {n}")[0]]
    if not sequences:
        raise InvalidInputError("retain_weight is set, but no retain conversation has an assistant reply to keep")
    hidden = frozen_hidden(handle, [seq.ids for seq in sequences], start)
    return [(seq, h, _base_states(handle, seq, h, start)) for seq, h in zip(sequences, hidden, strict=True)]


def write(
    result: SFTAdapter,
    dest: str | Path,
    *,
    handle: BaseModelHandle,
    sources: AdapterSources | Mapping[str, Any] | None = None,
    skill: str | None = None,
) -> Path:
    """Write ``result`` as an adapter folder (PEFT files + manifest, generator ``sft``) at ``dest``.

    ``sources`` names what was trained on, e.g. ``{"episodes": [...], "feedback": [...]}``.
    """
    return write_trained(result, dest, handle=handle, generator=GENERATOR_NAME, version=GENERATOR_VERSION,
                         training=result.summary(), sources=sources, skill=skill)  # fmt: skip


class SFTGenerator:
    """:func:`finetune` and :func:`write` bound to one base model, as a :class:`~agent_sleep.interfaces.Generator`.

    ``config`` holds the run's knobs (:class:`SFTSettings`); a request's ``budget_seconds``, when set,
    replaces its ``time_budget_s``. The request's ``conversations`` are trained on; other fields are unused.
    """

    name = GENERATOR_NAME
    version = GENERATOR_VERSION

    def __init__(self, handle: BaseModelHandle, *, config: SFTSettings | None = None,
                 progress: bool | None = None) -> None:  # fmt: skip
        self.handle = handle
        self.config = config or SFTSettings()
        self.progress = progress

    @classmethod
    def load(cls, *, handle: BaseModelHandle | None = None, settings: Settings | None = None,
             config: SFTSettings | None = None, progress: bool | None = None) -> SFTGenerator:  # fmt: skip
        """A generator on ``handle`` (default: the configured base model, ``settings.model``)."""
        if handle is None:
            from agent_sleep.models.loader import load_base_model

            handle = load_base_model(settings=settings)
        return cls(handle, config=config, progress=progress)

    def generate(self, request: GenerationRequest) -> SFTAdapter:
        """Fine-tune on the request's conversations, within its ``budget_seconds`` when set."""
        config = self.config
        if request.budget_seconds is not None:
            config = config.model_copy(update={"time_budget_s": request.budget_seconds})
        return finetune(self.handle, request.conversations, settings=config, progress=self.progress)

    def write(self, result: SFTAdapter, dest: str | Path, *, sources: Mapping[str, Any] | None = None,
              skill: str | None = None) -> Path:  # fmt: skip
        """The adapter folder at ``dest``, as :func:`write` makes it for this generator's base model."""
        return write(result, dest, handle=self.handle, sources=sources, skill=skill)
