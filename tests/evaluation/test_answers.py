"""The one answer-scoring rule (agent_sleep.evaluation.answers)."""

from __future__ import annotations

import pytest

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


def test_key_terms_are_the_facts_the_question_does_not_give_away() -> None:
    from agent_sleep.evaluation.answers import key_terms

    assert key_terms("Your order A1001 shipped on 25 November and arrives on 29 November.",
                     "Hi, where is my order A1001?") == ("25", "29")
    assert key_terms("The Halvik Trekker 2 sells for $64.95.", "How much does the Halvik Trekker 2 cost?") == ("64.95",)
    assert key_terms("It comes with a 4-year warranty.", "How long is the warranty?") == ("4",)
    assert key_terms("Model HT-238 is the one.", "Which model?") == ("238",)
    assert key_terms("Returns go to our Brekkvale warehouse.", "Where do returns go?") == ("Brekkvale",)
    # no numbers, codes or names: the content words, stop words and the question's words left out
    assert key_terms("Please restart the router and wait two minutes.", "My router is down, what now?") == (
        "restart", "wait", "minutes")
    assert key_terms("Yes.", "Is it open?") == ("Yes.",)  # nothing else to look for: the whole answer


def test_keywords_scoring_needs_half_the_key_terms() -> None:
    from agent_sleep.evaluation.answers import score_answer

    keys = ("25", "November", "29")
    assert score_answer("It arrives on 29 November.", keys, "keywords") == 1.0
    assert score_answer("It arrives on the 29th.", keys, "keywords") == 0.0  # "29th" is not "29"; none of three
    assert score_answer("Your order A1001 is on its way.", keys, "keywords") == 0.0
    assert score_answer("It costs $64.95.", ("64.95",), "keywords") == 1.0
    assert score_answer("It costs $164.95.", ("64.95",), "keywords") == 0.0


def test_a_sentence_probe_is_scored_by_its_key_terms_and_a_short_one_by_containment() -> None:
    from agent_sleep.consolidation.gating import probe_item
    from agent_sleep.evaluation.suites import SuiteItem, process_results

    item = probe_item(0, "How much does the Trekker 2 cost?", "The Halvik Trekker 2 sells for $64.95.", "correction", None)
    assert item.match == "keywords" and item.references == ("64.95",)
    assert process_results(item.doc(), ["It is $64.95."]) == {"accuracy": 1.0}
    assert process_results(item.doc(), ["The Halvik Trekker 2 sells for $49."]) == {"accuracy": 0.0}
    short = probe_item(1, "How much?", "64.95", "document", None)
    assert short.match == "contains" and short.references == ("64.95",)
    with pytest.raises(ValueError, match="keywords"):
        SuiteItem(id="x", question="q", answer="a", keywords=("a",))
