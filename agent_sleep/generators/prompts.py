"""How D2L phrases questions to the base model, shared by meta-training, the generator and benchmarks.

ChatML tokenizers (SmolLM2, Qwen) get a bare user/assistant exchange with
no system prompt: SmolLM2's template would otherwise add its default system
message, which costs a fifth of every training sequence. Other tokenizers use
their own chat template. The hypernetwork is trained on this format, and (``DataConfig.prompt_styles``) on the
prompts the runtime sends: ``chat`` = the tokenizer's own template with its default system message (what
``agent-sleep ask``, the chat model and the served API send when the agent has no system prompt), ``agent`` = the
template with an agent's own system prompt (one of :data:`AGENT_SYSTEM_PROMPTS`, picked per question).
"""

from __future__ import annotations

import weakref
from typing import Any

__all__ = ["AGENT_SYSTEM_PROMPTS", "PROMPT_STYLES", "answer_ids", "question_prompt", "styled_prompt"]

_IM_START = "<|im_start|>"
_IM_END = "<|im_end|>"


_CHATML: weakref.WeakKeyDictionary[Any, bool] = weakref.WeakKeyDictionary()


def _is_chatml(tokenizer: Any) -> bool:
    try:
        return _CHATML[tokenizer]
    except (KeyError, TypeError):
        pass
    vocab = tokenizer.get_vocab()  # builds a 49k-entry dict: remembered per tokenizer (caching calls this per row)
    found = _IM_START in vocab and _IM_END in vocab
    try:
        _CHATML[tokenizer] = found
    except TypeError:
        pass
    return found


def question_prompt(tokenizer: Any, question: str, context: str | None = None) -> str:
    """The prompt text up to the assistant's answer; ``context`` (the document) goes before the question."""
    content = question if context is None else f"{context}\n\n{question}"
    if _is_chatml(tokenizer) or not getattr(tokenizer, "chat_template", None):
        return f"{_IM_START}user\n{content}{_IM_END}\n{_IM_START}assistant\n"
    return tokenizer.apply_chat_template([{"role": "user", "content": content}], tokenize=False,
                                         add_generation_prompt=True)  # fmt: skip


PROMPT_STYLES = ("bare", "chat", "agent")

# System prompts of the kind agents run with (fictional organisations), for the ``agent`` prompt style in training.
AGENT_SYSTEM_PROMPTS = (
    "You are a helpful assistant for the staff of Orrin Valley Library. Answer briefly.",
    "You are the customer support agent of Tessaly Outdoor. Be friendly and precise.",
    "You answer questions from employees about internal policies and procedures.",
    "You are an operations assistant. Use what you know about the team's runbooks.",
    "You are a concise assistant. Reply with the answer only.",
    "You help travellers with timetables, fares and bookings.",
)


def styled_prompt(tokenizer: Any, question: str, style: str, pick: int = 0) -> str:
    """The question-only prompt in one of :data:`PROMPT_STYLES` (``pick`` chooses the ``agent`` system prompt)."""
    if style == "bare":
        return question_prompt(tokenizer, question)
    if style not in PROMPT_STYLES:
        raise ValueError(f"unknown prompt style {style!r}; expected one of {PROMPT_STYLES}")
    chat = [{"role": "user", "content": question}]
    if style == "agent":
        chat.insert(0, {"role": "system", "content": AGENT_SYSTEM_PROMPTS[pick % len(AGENT_SYSTEM_PROMPTS)]})
    if not getattr(tokenizer, "chat_template", None):  # no template: ChatML, as the runtime renders it
        text = "".join(f"{_IM_START}{m['role']}\n{m['content']}{_IM_END}\n" for m in chat)
        return f"{text}{_IM_START}assistant\n"
    return tokenizer.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)


def answer_ids(tokenizer: Any, answer: str) -> list[int]:
    """Token ids of ``answer`` followed by the end-of-turn token (the model should also stop)."""
    ids = tokenizer(answer, add_special_tokens=False)["input_ids"]
    end = _IM_END if _is_chatml(tokenizer) else tokenizer.eos_token
    end_id = tokenizer.convert_tokens_to_ids(end) if end else None
    return ids + ([end_id] if isinstance(end_id, int) else [])
