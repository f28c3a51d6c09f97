"""Key terms: the words of a free-text answer that carry its content (numbers, codes, names), and the text
helpers that find them. Pure string functions with no dependencies, so that selection (which decides which
corrections can be held out as probes) and evaluation (which scores replies by them) share one definition;
:mod:`agent_sleep.evaluation.answers` re-exports them next to the other scoring rules.
"""

from __future__ import annotations

import re
from collections.abc import Container

__all__ = ["key_terms", "keywords_needed", "rare_names", "sentences", "term_set"]


_SENTENCE = re.compile(r"(?<=[.!?])\s+|\n+")


def sentences(text: str, *, min_words: int = 3) -> list[str]:
    """The sentences (and lines) of ``text`` with at least ``min_words`` words, stripped, in order: what a routed
    adapter is keyed by when it learned from documents."""
    return [t.strip() for t in _SENTENCE.split(text) if len(t.split()) >= min_words]


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
    prev_end = 0
    for m in _TOKEN.finditer(text):
        raw = m.group(0).rstrip(".,:/'-")
        if not raw:
            continue
        # a sentence starts at the text's start or after . ! ? between the previous word and this one
        sentence_start = prev_end == 0 or any(ch in ".!?" for ch in text[prev_end : m.start()])
        prev_end = m.start() + len(raw)
        token = raw
        if "-" in token and any(ch.isdigit() for ch in token) and any(ch.isalpha() for ch in token):
            parts = [p for p in token.split("-") if p]  # "4-year" -> "4" ("4 years" says it too); "HT-238" -> "238"
            digits = [p for p in parts if any(ch.isdigit() for ch in p)]
            token = max(digits, key=len) if digits else token
        salient = any(ch.isdigit() for ch in token) or (len(token) > 1 and token.isupper()) or (
            token[0].isupper() and not sentence_start)
        out.append((token, salient))
    return out


def term_set(text: str) -> set[str]:
    """The case-folded terms of ``text`` as :func:`key_terms` cuts them: whether a text holds a key term."""
    return {token.casefold() for token, _ in _terms(text)}


def rare_names(text: str, known: Container[str]) -> set[str]:
    """The case-folded names in ``text`` that ``known`` (a vocabulary of common whole words, case-folded) lacks:
    words capitalised mid-sentence or written in capitals, letters only (a possessive "'s" dropped), three letters
    or more. "Ravdell" in "the keypad of Ravdell Mills" is one; "France", "November" and "What" are known words;
    "ID" is too short. What a question about one organisation, product or place shares with the document that
    names it even where the rest of its wording differs."""
    out: set[str] = set()
    for token, salient in _terms(text):
        word = token.removesuffix("'s")
        if salient and len(word) >= 3 and word.isalpha() and word.casefold() not in known:
            out.add(word.casefold())
    return out


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
