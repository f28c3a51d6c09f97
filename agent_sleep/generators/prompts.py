"""How D2L phrases questions to the base model, shared by meta-training, the generator and benchmarks.

ChatML tokenizers (SmolLM2, Qwen) get a bare user/assistant exchange with
no system prompt: SmolLM2's template would otherwise add its default system
message, which costs a fifth of every training sequence. Other tokenizers use
their own chat template. The hypernetwork is trained on exactly this format.
"""

from __future__ import annotations

import weakref
from typing import Any

__all__ = ["answer_ids", "question_prompt"]

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


def answer_ids(tokenizer: Any, answer: str) -> list[int]:
    """Token ids of ``answer`` followed by the end-of-turn token (the model should also stop)."""
    ids = tokenizer(answer, add_special_tokens=False)["input_ids"]
    end = _IM_END if _is_chatml(tokenizer) else tokenizer.eos_token
    end_id = tokenizer.convert_tokens_to_ids(end) if end else None
    return ids + ([end_id] if isinstance(end_id, int) else [])
