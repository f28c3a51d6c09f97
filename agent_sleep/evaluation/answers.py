"""The answer-scoring rule: a generated answer is right when it *contains* a gold answer, ignoring case.

Containment, not exact match, because a small model answers "The logo is teal." as often as "teal"; the gold
answers it is used with (synthetic facts, ``evals/docs/questions.jsonl``) are distinctive strings (names, numbers,
codes), so containment rarely credits a wrong answer. Case is folded with ``str.lower``; nothing else (spaces,
punctuation) is normalised. An empty gold answer never matches (it would be contained in every answer).
This module does not generate answers or know about prompts; see :mod:`agent_sleep.generators.prompts`.
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["answer_matches", "normalize_answer"]


def normalize_answer(text: str) -> str:
    """The form in which answers and gold answers are compared: lower case."""
    return text.lower()


def answer_matches(answer: str, gold: str | Sequence[str]) -> bool:
    """Whether ``answer`` contains ``gold`` (or any of several accepted gold answers), case-insensitively."""
    golds = [gold] if isinstance(gold, str) else gold
    text = normalize_answer(answer)
    return any(g and normalize_answer(g) in text for g in golds)
