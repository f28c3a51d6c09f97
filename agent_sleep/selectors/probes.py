"""Held-out probes: questions with reference answers that evaluate a skill and are never trained on.

Where they come from: a corrected episode (question: the user turn before the corrected answer;
answer: the correction; asked under the episode's system prompt, if it starts with one), an episode whose answer feedback confirmed (mean score at or above
``confirm_min_score``; answer: the agent's own final answer), and a document's ``meta["probes"]``
(``[{"question", "answer"}]``). Which episodes are held out is decided by a hash of the episode id
(:func:`held_out`), so a rerun holds out the same ones, and a pool of two or more gives at least one
probe and, unless the fraction is 1, keeps at least one for training.

An answer read from a tool's result is never a probe (:func:`episode_probe`).

A probe tests the ``d2l`` skill whose documents hold most of its answer's words
(:func:`best_document_skill`), else the conversations' ``sft`` skill.

Only a *taught* answer is held out (:func:`held_out_taught`): its key terms (the numbers, codes and names
the gate scores a sentence answer by, :func:`~agent_sleep.evaluation.answers.key_terms`) must be in the
material that still trains - another kept conversation's final answer or a document. A correction that
nothing else teaches ("your order A1001 arrives on 29 November", said once) could not show that a skill
learned anything: held out it is a probe no adapter can pass, so it trains instead, and the next taught
episode by hash is held out in its place.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from typing import Any, Literal

from agent_sleep.key_terms import key_terms, keywords_needed, term_set
from agent_sleep.selectors.candidates import DocumentCandidate, EpisodeCandidate
from agent_sleep.selectors.plan import PlannedProbe
from agent_sleep.selectors.skills import words

__all__ = [
    "best_document_skill", "document_probes", "episode_probe", "grounded_in_tools", "held_out", "held_out_taught",
    "probe_hash", "taught_by",
]  # fmt: skip


def probe_hash(item_id: str) -> float:
    """A number in [0, 1) fixed by the id: the episode is held out when it is below the fraction."""
    return int.from_bytes(hashlib.sha256(f"probe:{item_id}".encode()).digest()[:8], "big") / 2.0**64


def held_out(ids: list[str], fraction: float, *, at_least_one: bool) -> set[str]:
    """The ids to hold out: those whose hash is below ``fraction``; with ``at_least_one`` and two or more
    ids, never none (the lowest hash) and, below a fraction of 1, never all (the highest hash trains)."""
    chosen = {i for i in ids if probe_hash(i) < fraction}
    if at_least_one and fraction > 0 and len(ids) >= 2:
        if not chosen:
            chosen = {min(ids, key=probe_hash)}
        elif fraction < 1 and len(chosen) == len(ids):
            chosen.discard(max(ids, key=probe_hash))
    return chosen


def held_out_taught(pool: Mapping[str, PlannedProbe], fraction: float, *, at_least_one: bool,
                    teachers: Mapping[str, str], taught_elsewhere: set[str] = frozenset()  # type: ignore[assignment]
                    ) -> tuple[set[str], dict[str, str]]:  # fmt: skip
    """The ids of ``pool`` to hold out, and why each one that :func:`held_out` would pick was not.

    As many as :func:`held_out` picks, taken in hash order among the *taught* ones: a probe is taught when
    at least half its key terms are in ``taught_elsewhere`` (document terms) or in the final answer
    (``teachers``: episode id -> text) of an episode that is not held out; every probe already held must
    stay taught when the next one is held (two corrections of one fact: one is held, the other trains). A probe
    that some kept conversation teaches must stay taught by the conversations (``taught_elsewhere`` counts only
    for one that no conversation teaches), so both corrections of a fact are never held out because a document
    also states it.
    """
    picked_by_hash = held_out(list(pool), fraction, at_least_one=at_least_one)
    wanted = len(picked_by_hash)
    terms = {i: _answer_terms(p.answer, p.question) for i, p in pool.items()}
    teach = {i: term_set(text) for i, text in teachers.items()}
    counts: dict[str, int] = {}
    for words_of in teach.values():
        for t in words_of:
            counts[t] = counts.get(t, 0) + 1

    def by_conversations(i: str, removed: set[str]) -> bool:
        found = sum(1 for t in terms[i] if counts.get(t, 0) - sum(1 for r in removed if t in teach.get(r, ())) > 0)
        return found >= keywords_needed(len(terms[i]))

    def by_elsewhere(i: str) -> bool:
        return _enough(terms[i], taught_elsewhere)

    # A fact the conversations teach must stay taught by them: a document alone does not teach the dialog
    # skill (sft trains on conversations), so holding out both corrections of a fact that a document also
    # holds would leave sft a probe it cannot learn and take the fact out of its training.
    conversational = {i for i in pool if by_conversations(i, {i})}  # another conversation teaches it

    def taught(i: str, removed: set[str]) -> bool:
        if i in conversational:
            return by_conversations(i, removed)
        return by_elsewhere(i) or by_conversations(i, removed)

    held: set[str] = set()
    skipped: dict[str, str] = {}
    for i in sorted(pool, key=probe_hash):
        if len(held) >= wanted:
            break
        trial = held | {i}
        if all(taught(j, trial) for j in trial):
            held = trial
        elif i in picked_by_hash:
            skipped[i] = (f"not held out: no other kept conversation or document teaches its answer (key terms "
                          f"{', '.join(sorted(terms[i]))}), so no adapter could pass it as a probe")  # fmt: skip
    return held, skipped


def grounded_in_tools(messages: Sequence[Mapping[str, Any]], answer: str, question: str = "") -> bool:
    """Whether the tool results in ``messages`` (the turns before ``answer``) hold enough of its key terms to
    give it: then the answer was read from a look-up, not known."""
    results = " ".join(str(m.get("content") or "") for m in messages if m.get("role") == "tool")
    if not results.strip():
        return False
    return _enough(_answer_terms(answer, question), term_set(results))


def episode_probe(episode: EpisodeCandidate, origin: Literal["correction", "feedback"]) -> PlannedProbe | None:
    """The probe an episode gives: its final answer (corrected, or confirmed) and the question before it.

    None when the answer has no question before it, or when the tool results before it hold its key terms
    (:func:`grounded_in_tools`): a probe is asked as one question, without the tool's result, so it would
    test (and reward) recall of data the agent looks up at run time, such as an order's status. Such an
    episode still trains (how to use a tool's result)."""
    index = episode.final_answer()
    if index is None:
        return None
    question = episode.question_before(index)
    answer = str(episode.messages[index].get("content") or "").strip()
    if not question or not answer or grounded_in_tools(episode.messages[:index], answer, question):
        return None
    first = episode.messages[0] if episode.messages else {}
    system = str(first.get("content") or "").strip() if first.get("role") == "system" else ""
    return PlannedProbe(question=question.strip(), answer=answer, system=system or None, origin=origin,
                        source_kind="episode", source_id=episode.id)  # fmt: skip


def document_probes(doc: DocumentCandidate) -> tuple[list[PlannedProbe], int]:
    """The probes in ``doc.meta["probes"]``, and how many entries were not ``{"question", "answer"}`` texts."""
    raw = doc.meta.get("probes")
    if not isinstance(raw, list):
        return [], 0 if raw is None else 1
    out, bad = [], 0
    for entry in raw:
        q, a = (entry.get("question"), entry.get("answer")) if isinstance(entry, Mapping) else (None, None)
        if isinstance(q, str) and isinstance(a, str) and q.strip() and a.strip():
            out.append(PlannedProbe(question=q.strip(), answer=a.strip(), origin="document", source_kind="document",
                                    source_id=doc.id))  # fmt: skip
        else:
            bad += 1
    return out, bad


def best_document_skill(answer: str, skill_words: Mapping[str, set[str]], min_share: float) -> tuple[str | None, float]:
    """The skill whose document words hold the largest share of ``answer``'s words (ties: first name),
    if that share is at least ``min_share``; else (None, best share)."""
    wanted = words(answer)
    if not wanted or not skill_words:
        return None, 0.0
    best: tuple[float, str] | None = None
    for name in sorted(skill_words):
        share = len(wanted & skill_words[name]) / len(wanted)
        if best is None or share > best[0]:
            best = (share, name)
    assert best is not None
    return (best[1] if best[0] >= min_share else None), best[0]

def taught_by(probe: PlannedProbe, texts: list[str]) -> bool:
    """Whether ``texts`` (the final answers a skill trains on) hold enough of ``probe``'s key terms to teach it."""
    return _enough(_answer_terms(probe.answer, probe.question), set().union(*(term_set(t) for t in texts)))


def _answer_terms(answer: str, question: str) -> set[str]:
    """The case-folded key terms a reply to ``question`` must hold (:func:`~agent_sleep.key_terms.key_terms`)."""
    return {t.casefold() for t in key_terms(answer, question)}


def _enough(terms: set[str], known: set[str]) -> bool:
    """Whether ``known`` holds the share of ``terms`` the gate's keyword match needs (half, rounded up)."""
    return sum(1 for t in terms if t in known) >= keywords_needed(len(terms))
