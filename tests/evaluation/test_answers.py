"""The one answer-scoring rule (agent_sleep.evaluation.answers)."""

from __future__ import annotations

from agent_sleep.evaluation import answer_matches, normalize_answer


def test_an_answer_matches_when_it_contains_the_gold_answer_in_any_case() -> None:
    assert answer_matches("The logo of Velmora Works is Teal.", "teal")
    assert answer_matches("teal", "Teal") and normalize_answer("Quorvik") == "quorvik"
    assert answer_matches("It opens at 9:30 every day", "9:30")
    assert not answer_matches("It opens at 9:3", "9:30")
    assert not answer_matches("blue", "teal")


def test_any_of_several_gold_answers_counts_and_an_empty_gold_never_does() -> None:
    assert answer_matches("about 12 percent", ["12%", "12 percent"])
    assert not answer_matches("about 13 percent", ["12%", "12 percent"])
    assert not answer_matches("anything", "") and not answer_matches("anything", [])
    assert not answer_matches("anything", ["", ""])
