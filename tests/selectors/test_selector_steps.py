"""Each selector on hand-made candidates: what it keeps, what it drops, and the reason it gives."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest

from agent_sleep.interfaces import Selector
from agent_sleep.selectors.base import SelectorContext
from agent_sleep.selectors.budget import BudgetSelector
from agent_sleep.selectors.candidates import Candidate
from agent_sleep.selectors.registry import available_selectors, build_selector
from tests.helpers_selection import T0, document, episode, feedback

CTX = SelectorContext(agent="helpdesk", now=T0)


def run(name: str, items: list[Candidate], **params: Any) -> tuple[list[str], dict[str, tuple[bool, str]]]:
    sel = build_selector(name, params, CTX)
    out = sel.select(items)
    kept = list(out.kept)
    decisions = {d.item: (d.kept, d.reason) for d in out.decisions}
    flush = getattr(sel, "flush", None)
    if flush is not None:
        held = flush()
        kept += held.kept
        decisions |= {d.item: (d.kept, d.reason) for d in held.decisions}
    assert len(decisions) == len(items), "one decision per item"
    assert all(d.selector == name for d in out.decisions)
    return [k.id for k in kept], decisions


def test_every_registered_selector_fits_the_protocol() -> None:
    for name in available_selectors():
        sel = build_selector(name, {}, CTX)
        assert isinstance(sel, Selector) and sel.name == name
        assert sel.select([]).kept == ()


def test_outcome() -> None:
    ok = episode(eid="ok", outcome="resolved")
    silent = episode(eid="silent", answer=None)
    tool_only = episode(eid="tool_only", answer=None, extra=({"role": "assistant", "content": "",
                                                              "tool_calls": [{"name": "lookup", "arguments": {}}]},))
    running = episode(eid="running", status="running")
    crashed = episode(eid="crashed", status="error")
    failed = episode(eid="failed", outcome="failed")
    fixed = episode(eid="fixed", outcome="failed", fb=(feedback(correction="It ships on Friday."),))
    fixed_silent = episode(eid="fixed_silent", answer=None, fb=(feedback(correction="x"),))
    doc = document(did="doc")
    kept, why = run("outcome", [ok, silent, tool_only, running, crashed, failed, fixed, fixed_silent, doc])
    assert kept == ["ok", "tool_only", "fixed", "doc"]
    assert why["silent"] == (False, "no assistant turn") and why["fixed_silent"] == (False, "no assistant turn")
    assert why["running"][1].startswith("still running")
    assert why["crashed"] == (False, "status 'error' is not one of ['completed']")
    assert why["failed"] == (False, "outcome 'failed' is in drop_outcomes")
    assert why["fixed"] == (True, "outcome 'failed' is in drop_outcomes, but it has a correction")
    kept, why = run("outcome", [ok, crashed, failed], statuses=["completed", "error"], keep_outcomes=["resolved"],
                    drop_outcomes=[])  # fmt: skip
    assert kept == ["ok"] and why["crashed"][1] == "outcome None is not one of keep_outcomes ['resolved']"


def test_feedback() -> None:
    good = episode(eid="good", fb=(feedback(0.9), feedback(0.7)))
    bad = episode(eid="bad", fb=(feedback(0.2),))
    thumbs_down = episode(eid="thumbs_down", fb=(feedback(label="thumbs_down"),))
    thumbs_up = episode(eid="thumbs_up", fb=(feedback(label="thumbs_up"),))
    unrated = episode(eid="unrated", fb=(feedback(comment="meh", label="slow"),))
    corrected = episode(eid="corrected", fb=(feedback(0.0, "thumbs_down", correction="Friday."),))
    kept, why = run("feedback", [good, bad, thumbs_down, thumbs_up, unrated, corrected])
    assert kept == ["good", "thumbs_up", "unrated", "corrected"]
    assert why["good"] == (True, "mean score 0.80 >= 0.5")
    assert why["bad"] == (False, "mean score 0.20 < 0.5")
    assert why["thumbs_down"] == (False, "labelled 'thumbs_down'")
    assert why["corrected"] == (True, "has a correction (1 feedback)")
    assert run("feedback", [unrated], keep_unrated=False)[0] == []
    assert run("feedback", [good], min_score=0.85)[0] == []


def test_contradictory_feedback_the_newest_decides() -> None:
    praised_then_panned = episode(eid="a", fb=(feedback(1.0, minutes=1), feedback(label="thumbs_down", minutes=2)))
    panned_then_praised = episode(eid="b", fb=(feedback(label="thumbs_down", minutes=1), feedback(1.0, minutes=2)))
    labels_disagree = episode(eid="c", fb=(feedback(label="thumbs_down", minutes=1),
                                           feedback(label="thumbs_up", minutes=2)))  # fmt: skip
    kept, why = run("feedback", [praised_then_panned, panned_then_praised, labels_disagree])
    assert kept == ["b", "c"]
    assert "feedback disagrees (mean score 1.00 >= 0.5; labelled 'thumbs_down')" in why["a"][1]
    assert "the newest" in why["a"][1] and "decides" in why["b"][1]
    assert why["c"] == (True, "labelled 'thumbs_up' (labels disagree: ['thumbs_down', 'thumbs_up']; the newest "
                              "decides)")


def test_corrections_replace_the_final_answer() -> None:
    after = ({"role": "user", "content": "That is wrong."}, {"role": "assistant", "content": "Sorry."})
    wrong = episode(eid="wrong", question="When does it ship?", answer="Tomorrow.", extra=after,
                    fb=(feedback(0.0, correction="  On Friday.  "),))
    plain = episode(eid="plain")
    kept, why = run("corrections", [wrong, plain])
    assert kept == ["wrong", "plain"]
    sel = build_selector("corrections", {}, CTX)
    fixed = sel.select([wrong]).kept[0]
    assert fixed.messages == (  # the final answer is the last assistant text: the one the correction is for
        {"role": "user", "content": "When does it ship?"}, {"role": "assistant", "content": "Tomorrow."},
        {"role": "user", "content": "That is wrong."}, {"role": "assistant", "content": "On Friday."})
    assert fixed.corrected_by is not None and plain.corrected_by is None
    assert why["wrong"][1].startswith("final answer replaced by the correction of feedback")
    assert sel.select([fixed]).kept[0] is fixed  # a corrected episode is not corrected twice


def test_corrections_cut_what_followed_and_take_the_newest_of_contradicting_ones() -> None:
    tool = ({"role": "assistant", "content": "", "tool_calls": [{"name": "eta", "arguments": {}}]},
            {"role": "tool", "name": "eta", "content": "friday"})
    ep = episode(eid="e", question="When?", answer="Monday.", extra=tool, fb=(
        feedback(correction="Tuesday.", minutes=1, fid="old"), feedback(correction="Friday.", minutes=3, fid="new"),
        feedback(correction="Friday.", minutes=2, fid="same")))
    sel = build_selector("corrections", {}, CTX)
    out = sel.select([ep])
    fixed, reason = out.kept[0], out.decisions[0].reason
    assert fixed.messages == ({"role": "user", "content": "When?"}, {"role": "assistant", "content": "Friday."})
    assert fixed.corrected_by == "new"
    assert "(2 later message(s) cut)" in reason and "2 different corrections contradict each other" in reason
    assert "took the newest" in reason and "not old" in reason and "same" not in reason
    no_text = episode(eid="n", answer=None, extra=tool, fb=(feedback(correction="Friday."),))
    fixed = sel.select([no_text]).kept[0]
    assert fixed.messages[-1] == {"role": "assistant", "content": "Friday."} and len(fixed.messages) == 4


def test_recency_is_relative_to_the_injected_now() -> None:
    items = [episode(eid="new", days_ago=0.5), episode(eid="old", days_ago=10), document(did="doc", days_ago=400)]
    kept, why = run("recency", items, days=7)
    assert kept == ["new", "doc"] and why["old"] == (False, "started 10.0 days ago, outside the window of 7.0 days")
    assert run("recency", items, days=0, hours=6)[0] == ["doc"]
    late = SelectorContext(agent="helpdesk", now=T0 + timedelta(days=30))
    assert [k.id for k in build_selector("recency", {"days": 7}, late).select(items).kept] == ["doc"]


@pytest.mark.parametrize("method", ["minhash", "exact"])
def test_near_duplicates_keep_the_first_and_name_it(method: str) -> None:
    long_answer = ("Your order A1 left our warehouse in Leeds on Monday and the courier expects to deliver it "
                   "on Thursday before noon; you will get a text message with a tracking link.")
    first = episode(eid="first", answer=long_answer)
    same = episode(eid="same", answer=long_answer.upper() + "!!")  # case and punctuation differ
    near = episode(eid="near", answer=long_answer.replace("Thursday", "Friday"))
    other = episode(eid="other", question="Can I pay by card?", answer="Yes, Visa and Mastercard are accepted.")
    sel = build_selector("near_dup", {"method": method}, CTX)
    a, b = sel.select([first, other]), sel.select([same, near])  # twins across batches: state is kept
    assert [k.id for k in a.kept] == ["first", "other"]
    why = {d.item: (d.kept, d.reason) for d in b.decisions}
    assert why["same"][0] is False and "first" in why["same"][1]
    if method == "minhash":
        assert [k.id for k in b.kept] == [] and why["near"][1].startswith("near-duplicate of episode first")
    else:
        assert [k.id for k in b.kept] == ["near"]


def test_near_dup_is_deterministic_and_keeps_distinct_short_texts() -> None:
    eps = [episode(eid=f"e{i}", question=f"question number {i} about order {i * 7}", answer=f"answer {i}")
           for i in range(40)]  # fmt: skip
    eps += [episode(eid="hi1", question="hi", answer="hello"), episode(eid="hi2", question="hi", answer="hello"),
            episode(eid="yo", question="yo", answer="hey")]
    first = [k.id for k in build_selector("near_dup", {}, CTX).select(eps).kept]
    assert first == [k.id for k in build_selector("near_dup", {}, CTX).select(eps).kept]
    assert len(first) == 42 and "hi2" not in first and "yo" in first


def test_budget_keeps_the_most_valuable_whatever_the_batches() -> None:
    eps = [episode(eid=f"plain{i}", days_ago=10 - i) for i in range(6)]
    eps.insert(2, episode(eid="corrected", days_ago=20, fb=(feedback(0.0, correction="Right."),)))
    eps.insert(4, episode(eid="praised", days_ago=20, fb=(feedback(1.0),)))
    eps.insert(0, episode(eid="panned", days_ago=0, fb=(feedback(0.1),)))
    docs = [document(did="doc_old", days_ago=5), document(did="doc_new", days_ago=1)]
    results = set()
    for size in (1, 2, 4, 100):
        sel = BudgetSelector(BudgetSelector.Params(max_episodes=4, max_documents=1, max_chars=None))
        dropped = []
        for start in range(0, len(docs + eps), size):
            dropped += [d for d in sel.select((docs + eps)[start : start + size]).decisions if not d.kept]
        held = sel.flush()
        results.add(tuple(k.id for k in held.kept))
        assert {d.item for d in dropped} | {k.id for k in held.kept} == {c.id for c in docs + eps}
    # documents first; then corrected, then by score (unrated = 0.5), then newest
    assert results == {("doc_new", "corrected", "praised", "plain5", "plain4")}


def test_budget_character_cap() -> None:
    big = episode(eid="big", answer="x" * 500, fb=(feedback(1.0),))
    small = [episode(eid=f"s{i}", answer="y" * 50, days_ago=i) for i in range(5)]
    kept, why = run("budget", [*small, big], max_chars=700)
    assert kept[0] == "big" and set(kept) == {"big", "s0", "s1"}  # 500 + 2 x ~68 fits; a third would not
    assert why["s4"][0] is False and "max_chars=700" in why["s4"][1]
    assert run("budget", [big], max_episodes=0)[0] == []
