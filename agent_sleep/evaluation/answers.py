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


def keywords_needed(n: int) -> int:
    """How many of ``n`` key terms a reply must hold under ``keywords``: half, rounded up (one of one, two of three)."""
    return (n + 1) // 2


_TOKEN = re.compile(r"[^\W_](?:[\w%$€£.,:/'-]*[\w%])?")
_STOP = frozenset("""a about after all also am an and any are as at be been before but by can could did do does
for from had has have he her here him his how i if in into is it its just may me more most my no not now of on
once only or our out over please same she should so some such than that the their them then there these they
this those to too under until up very was we were what when where which while who why will with would yes you
your yours we're you're it's i'm thanks thank hello hi dear sorry""".split())


def _terms(text: str) -> list[tuple[str, bool]]:
    """The words of ``text`` (numbers with their decimal point, codes, hyphenated words) and, for each,
    whether it is *salient*: it holds a digit, is written in capitals, or is capitalised mid-sentence."""
    out: list[tuple[str, bool]] = []
    sentence_start = True
    for m in _TOKEN.finditer(text):
        token = m.group(0).rstrip(".,:/'-")
        if not token:
            continue
        if "-" in token and any(ch.isdigit() for ch in token) and any(ch.isalpha() for ch in token):
            parts = [p for p in token.split("-") if p]  # "4-year" -> "4" ("4 years" says it too); "HT-238" -> "238"
            digits = [p for p in parts if any(ch.isdigit() for ch in p)]
            token = max(digits, key=len) if digits else token
        before = text[: m.start()].rstrip()
        if before and before[-1] in ".!?":
            sentence_start = True
        salient = any(ch.isdigit() for ch in token) or (len(token) > 1 and token.isupper()) or (
            token[0].isupper() and not sentence_start)
        out.append((token, salient))
        sentence_start = False
    return out


def term_set(text: str) -> set[str]:
    """The case-folded terms of ``text`` as :func:`key_terms` cuts them: whether a text holds a key term."""
    return {token.casefold() for token, _ in _terms(text)}


def key_terms(answer: str, question: str = "", *, limit: int = 6) -> tuple[str, ...]:
    """The terms of ``answer`` that carry its content and that ``question`` does not already give away.

    The first non-empty tier, in order of appearance, no repeats, at most ``limit``: numbers and codes
    ("64.95", "A1001"; "4-year" gives "4"), else names (capitalised mid-sentence or written in capitals:
    "Brekkvale"), else content words (four letters or more, not a stop word). A fact's number is what a
    reply must get right; a brand name beside it would let a reply with the wrong price pass. Terms the
    question holds (case-folded) are left out, so restating the question earns nothing. An answer with
    nothing left gives its whole text back (the one term the reply must hold).
    """
    asked = {t.casefold() for t, _ in _terms(question)}
    seen: set[str] = set()
    tiers: tuple[list[str], list[str], list[str]] = ([], [], [])
    for token, is_salient in _terms(answer):
        key = token.casefold()
        if key in asked or key in seen or key in _STOP:
            continue
        seen.add(key)
        if any(ch.isdigit() for ch in token):
            tiers[0].append(token)
        elif is_salient:
            tiers[1].append(token)
        elif len(token) >= 4:
            tiers[2].append(token)
    chosen = next((t for t in tiers if t), [])
    return tuple(chosen[:limit]) if chosen else (answer.strip(),)
