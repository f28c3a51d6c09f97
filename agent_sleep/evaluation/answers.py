"""The answer-scoring rules, in one place.

:func:`answer_matches` (D2L and gradient-CD benchmarks, meta-training evals, checkpoint evaluation): a generated
answer is right when it *contains* a gold answer, ignoring case.

Containment, not exact match, because a small model answers "The logo is teal." as often as "teal"; the gold
answers it is used with (synthetic facts, ``evals/docs/questions.jsonl``) are distinctive strings (names, numbers,
codes), so containment rarely credits a wrong answer. Case is folded with ``str.lower``; nothing else (spaces,
punctuation) is normalised. An empty gold answer never matches (it would be contained in every answer).

:func:`score_answer` (the lm-eval suites of the promotion gate) is stricter, per item: ``contains`` also folds
Unicode forms and whitespace and never matches inside a longer word or number ("4" is not in "14"); ``exact``
and ``regex`` serve instruction-following items; ``keywords`` scores a free-text reference answer (a support
lead's correction, "Your order A1001 shipped on 25 November and arrives on 29 November.") by its
:func:`key_terms`: the reply is right when it holds at least half of them. Asking a reply to contain a whole
correction sentence word for word measures wording, not whether the model knows the fact. The D2L numbers in the README were measured with
:func:`answer_matches`; switching them to ``score_answer`` would change them, so both rules stay, side by side.

This module does not generate answers or know about prompts; see :mod:`agent_sleep.generators.prompts`.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Sequence
from functools import lru_cache
from typing import Literal

from agent_sleep.errors import InvalidInputError
from agent_sleep.key_terms import key_terms, keywords_needed, term_set

__all__ = ["Match", "answer_matches", "key_terms", "keywords_needed", "term_set", "normalize_answer", "score_answer"]

Match = Literal["contains", "exact", "regex", "keywords"]
_EDGE_PUNCT = " \t\r\n.,!?;:'\"`*()[]{}<>"


def normalize_answer(text: str) -> str:
    """The form in which answers and gold answers are compared: lower case."""
    return text.lower()


def answer_matches(answer: str, gold: str | Sequence[str]) -> bool:
    """Whether ``answer`` contains ``gold`` (or any of several accepted gold answers), case-insensitively."""
    golds = [gold] if isinstance(gold, str) else gold
    text = normalize_answer(answer)
    return any(g and normalize_answer(g) in text for g in golds)


def _normalize(text: str) -> str:
    return " ".join(unicodedata.normalize("NFKC", text).casefold().split())


@lru_cache(maxsize=4096)
def _contains_pattern(reference: str) -> re.Pattern[str]:
    ref = _normalize(reference)
    # Word edges only where the reference itself starts/ends with a word character.
    head = r"(?<!\w)" if re.match(r"\w", ref) else ""
    tail = r"(?!\w)" if re.search(r"\w$", ref) else ""
    return re.compile(head + re.escape(ref) + tail)


def score_answer(reply: str, references: Sequence[str], match: Match = "contains") -> float:
    """1.0 when ``reply`` satisfies any reference under the ``match`` rule (see the module doc), else 0.0."""
    refs = [r for r in references if r and r.strip()]
    if not refs:
        raise InvalidInputError("an item needs at least one non-empty reference answer")
    if match == "contains":
        text = _normalize(reply)
        return float(any(_contains_pattern(r).search(text) for r in refs))
    if match == "exact":
        text = _normalize(reply).strip(_EDGE_PUNCT)
        return float(any(text == _normalize(r).strip(_EDGE_PUNCT) for r in refs))
    if match == "regex":
        text = reply.strip()
        return float(any(re.search(r, text) for r in refs))
    if match == "keywords":
        text = _normalize(reply)
        found = sum(1 for r in refs if _contains_pattern(r).search(text))
        return float(found >= keywords_needed(len(refs)))
    raise InvalidInputError(f"unknown match rule {match!r}; use contains, exact, regex or keywords")

