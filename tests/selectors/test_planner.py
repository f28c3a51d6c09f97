"""build_plan end to end on the SQL store and the memory store: skills, probes, decisions."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from agent_sleep.config import Settings
from agent_sleep.errors import ConfigError, InvalidInputError
from agent_sleep.selectors import ConsolidationPlan, SelectionConfig, build_plan, parse_selection_config
from agent_sleep.selectors.probes import held_out, probe_hash
from agent_sleep.store import InMemoryExperienceStore
from tests.conftest import BACKENDS, _drop_pg_database, _fresh_pg_database
from tests.helpers_selection import log_episode

WARRANTY = "The warranty lasts two years from the date of purchase and covers parts and labour."


@pytest.fixture(params=[*BACKENDS, "memory"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Any]:
    settings = Settings(data_dir=tmp_path / "data")
    if request.param == "memory":
        yield InMemoryExperienceStore(settings=settings)
        return
    from agent_sleep.store import ExperienceStore

    name = None
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'experience.sqlite'}"
    else:
        url, name = _fresh_pg_database()
    s = ExperienceStore(url, settings=settings)
    try:
        yield s
    finally:
        s.close()
        if name is not None:
            _drop_pg_database(name)


def _decisions(result: Any, item: str) -> list[tuple[str, bool, str | None, str | None]]:
    return [(d.selector, d.kept, d.skill, d.role) for d in result.decisions if d.item_id == item]


def test_nothing_to_learn_is_an_empty_plan(store: Any) -> None:
    result = build_plan(store, "helpdesk", SelectionConfig())
    assert result.plan.empty and result.plan.skills == () and result.decisions == ()
    silent = log_episode(store, "hello?", None)  # no assistant turn
    log_episode(store, "anyone?", "yes", agent="billing")  # another agent's
    result = build_plan(store, "helpdesk")
    assert result.plan.empty and result.plan.episodes == ()
    assert [(d.item_id, d.selector, d.kept, d.reason) for d in result.decisions] == [
        (silent, "outcome", False, "no assistant turn")]
    with pytest.raises(InvalidInputError, match="invalid agent name"):
        build_plan(store, "no such/agent")


def test_a_full_plan(store: Any) -> None:
    store.add_document("kb/warranty.md", WARRANTY, agent="helpdesk", title="Warranty",
                       metadata={"probes": [{"question": "How long is the warranty?", "answer": "two years"},
                                            {"question": "", "answer": "x"}]})  # fmt: skip
    store.add_document("kb/other-agent.md", "Not ours.", agent="billing")
    wrong = log_episode(store, "How long is the warranty?", "Six months.", outcome="failed")
    time.sleep(0.002)
    store.add_feedback(wrong, score=0.0, correction="The warranty lasts two years and covers parts and labour.")
    fixed = log_episode(store, "Do you ship to Norway?", "No.", events=(
        {"kind": "user_message", "content": "Are you sure?"}, {"kind": "assistant_message", "content": "Yes."}))
    store.add_feedback(fixed, correction="Yes, we ship to Norway within 5 days.")
    good = log_episode(store, "Where is order A1?", "Order A1 shipped on Monday.")
    store.add_feedback(good, score=0.9, label="thumbs_up")
    twin = log_episode(store, "Where is order A1?", "Order A1 shipped on Monday.")
    bad = log_episode(store, "Can I pay by card?", "Only cash.")
    store.add_feedback(bad, score=0.0, label="thumbs_down")
    running = log_episode(store, "Still there?", "Yes.", status="running")

    result = build_plan(store, "helpdesk", SelectionConfig(), now=datetime.now(timezone.utc))
    plan = result.plan
    assert isinstance(plan, ConsolidationPlan) and not plan.empty
    assert [(s.skill, s.generator) for s in plan.skills] == [("helpdesk-kb-warranty", "d2l"),
                                                             ("helpdesk-dialog", "sft")]
    docs = plan.skill("helpdesk-kb-warranty")
    assert [d.text for d in docs.documents] == [WARRANTY] and "Warranty (kb/warranty.md)" in docs.description
    # two corrected episodes, one held out (at least one of two): the one whose answer the warranty document
    # teaches; nothing else teaches "within 5 days", so that one trains (held out, no adapter could pass it)
    probe_id, train_id = wrong, fixed
    dialog = plan.skill("helpdesk-dialog")
    assert {c.episode_id for c in dialog.conversations} == {good, train_id}
    trained = next(c for c in dialog.conversations if c.episode_id == train_id)
    assert trained.corrected and trained.messages[-1]["role"] == "assistant"
    assert trained.messages[-1]["content"] in ("The warranty lasts two years and covers parts and labour.",
                                               "Yes, we ship to Norway within 5 days.")
    probes = [(p.origin, p.source_id, s.skill) for s in plan.skills for p in s.probes]
    assert ("document", docs.documents[0].id, "helpdesk-kb-warranty") in probes
    # a correction probe tests the d2l skill whose document holds its answer, else the dialog skill
    expected_skill = "helpdesk-kb-warranty" if probe_id == wrong else "helpdesk-dialog"
    assert ("correction", probe_id, expected_skill) in probes
    # ... and not the dialog skill: none of its conversations teaches "two years" (a document does not train sft)
    assert ("correction", probe_id, "helpdesk-dialog") not in probes
    assert set(plan.episodes) == {good, train_id, probe_id}
    assert plan.documents == (docs.documents[0].id,)

    assert _decisions(result, twin) == [("near_dup", False, None, None)]
    assert _decisions(result, bad) == [("feedback", False, None, None)]
    assert _decisions(result, running) == [("outcome", False, None, None)]
    assert _decisions(result, probe_id)[-1] == ("planner", True, expected_skill, "probe")
    assert _decisions(result, train_id) == [("corrections", True, None, None),
                                            ("planner", True, "helpdesk-dialog", "train")]
    assert _decisions(result, good) == [("planner", True, "helpdesk-dialog", "train")]
    assert plan.stats["near_dup"] == {"kept": 4, "dropped": 1}  # 3 episodes and the document pass
    assert plan.stats["planner"] == {"kept": 4, "dropped": 0}
    assert [d.reason for d in result.decisions if d.item_kind == "document"] == [
        "planned: trains d2l skill helpdesk-kb-warranty (1 probe(s) from meta['probes']; 1 entries that are not "
        "question/answer texts left out)"]

    again = build_plan(store, "helpdesk", SelectionConfig(), now=datetime.now(timezone.utc))
    assert again.plan == plan  # the same store gives the same plan (held-out episodes by hash of the id)


def test_probes_are_never_trained_on(store: Any) -> None:
    ids, region = [], {}
    for i in range(12):  # six regions, each corrected twice (other wording, same code)
        r = i % 6
        asked = f"What is the code for region {r}?" if i < 6 else f"Which code does region {r} use?"
        eid = log_episode(store, asked, f"It is {i * 3}.")
        store.add_feedback(eid, correction=f"The code for region {r} is R-{r:02d}." if i < 6 else f"Region {r} uses R-{r:02d}.")
        ids.append(eid)
        region[eid] = r
    result = build_plan(store, "helpdesk", parse_selection_config({"probes": {"fraction": 0.5}}))
    plan = result.plan
    probes = {p.source_id for s in plan.skills for p in s.probes}
    trained = {c.episode_id for s in plan.skills for c in s.conversations}
    assert probes and trained and not probes & trained and probes | trained == set(ids)
    # every probe's code is taught by the other correction of its region, which trains
    assert all(any(region[t] == region[p] for t in trained) for p in probes)
    assert len(probes) == min(6, len({i for i in ids if probe_hash(i) < 0.5}) or 1)
    with pytest.raises(InvalidInputError, match="probe"):  # the plan refuses a leak
        plan.model_copy(update={"skills": (plan.skills[0].model_copy(update={"probes": (
            plan.skills[0].probes + (next(p for s in plan.skills for p in s.probes).model_copy(
                update={"source_id": next(iter(trained))}),))}),) + plan.skills[1:]}).check()


def test_a_correction_nothing_else_teaches_trains_instead_of_probing(store: Any) -> None:
    ids = []
    for i in range(8):  # eight regions, each corrected once: no held-out probe could be learned
        eid = log_episode(store, f"What is the code for region {i}?", f"It is {i * 3}.")
        store.add_feedback(eid, correction=f"The code for region {i} is R-{i:02d}.")
        ids.append(eid)
    result = build_plan(store, "helpdesk", parse_selection_config({"probes": {"fraction": 0.5}}))
    assert not any(s.probes for s in result.plan.skills)
    assert {c.episode_id for s in result.plan.skills for c in s.conversations} == set(ids)
    reasons = [d.reason for d in result.decisions if d.selector == "planner"]
    assert any("nothing else teaches" in r or "no other kept conversation or document teaches" in r for r in reasons)
    # a document that holds the code teaches it: that correction can be held out
    store.add_document("kb/regions.md", "Region codes: region 3 uses R-03, region 5 uses R-05.", agent="helpdesk")
    taught = build_plan(store, "helpdesk", parse_selection_config({"probes": {"fraction": 0.5}})).plan
    probed = {p.source_id for s in taught.skills for p in s.probes}
    assert probed and probed <= {ids[3], ids[5]}


def test_a_fact_a_document_states_keeps_one_correction_training(store: Any) -> None:
    """Both corrections of a fact that a document also states are never both held out: sft learns from
    conversations only, so one trains, and the held-out one tests the d2l skill and the dialog skill."""
    codes = ", ".join(f"region {r} uses R-{r:02d}" for r in range(6))
    store.add_document("kb/regions.md", f"Region codes: {codes}.", agent="helpdesk")
    region = {}
    for i in range(12):  # six regions, each corrected twice
        r = i % 6
        asked = f"What is the code for region {r}?" if i < 6 else f"Which code does region {r} use?"
        eid = log_episode(store, asked, f"It is {i * 3}.")
        told = f"The code for region {r} is R-{r:02d}." if i < 6 else f"Region {r} uses R-{r:02d}."
        store.add_feedback(eid, correction=told)
        region[eid] = r
    plan = build_plan(store, "helpdesk", parse_selection_config({"probes": {"fraction": 0.9}})).plan
    dialog = plan.skill("helpdesk-dialog")
    trained = {region[c.episode_id] for c in dialog.conversations}
    held = [p.source_id for s in plan.skills for p in s.probes if p.origin == "correction"]
    assert held and trained == set(range(6))  # every region still trains
    assert {region[p.source_id] for p in dialog.probes} == {region[i] for i in held}
    assert len(set(held)) == len({region[i] for i in held})  # one held-out correction per region at most


def test_an_answer_written_from_a_tool_result_trains_but_is_never_a_probe(store: Any) -> None:
    """Asked as one question without the tool's result, it would test recall of data the agent looks up."""
    ids = []
    for i in range(6):  # the same order asked about six times, each answer corrected (it ignored the lookup)
        eid = store.start_episode("helpdesk")
        store.append_events(eid, [
            {"kind": "user_message", "content": f"Where is order B2002? ({i})"},
            {"kind": "tool_call", "name": "lookup_order",
             "payload": {"args": {"order_id": "B2002"}, "tool_call_id": "c1"}},
            {"kind": "tool_result", "name": "lookup_order", "content": "Order B2002: new date 3 December.",
             "payload": {"tool_call_id": "c1"}},
            {"kind": "assistant_message", "content": "It is late."}])  # fmt: skip
        store.end_episode(eid)
        store.add_feedback(eid, correction="Order B2002 now arrives on 3 December.")
        ids.append(eid)
    plan = build_plan(store, "helpdesk", parse_selection_config({"probes": {"fraction": 0.9}})).plan
    dialog = plan.skill("helpdesk-dialog")
    assert not dialog.probes and {c.episode_id for c in dialog.conversations} == set(ids)
    assert all(c.messages[-2]["role"] == "tool" for c in dialog.conversations)


def test_a_tool_using_answer_the_tool_did_not_give_can_be_a_probe(store: Any) -> None:
    ids = []
    for i in range(6):  # the look-up returns the order, the correction is a policy the tool never said
        eid = store.start_episode("helpdesk")
        store.append_events(eid, [
            {"kind": "user_message", "content": f"Can I return order B200{i}?"},
            {"kind": "tool_call", "name": "lookup_order",
             "payload": {"args": {"order_id": f"B200{i}"}, "tool_call_id": "c1"}},
            {"kind": "tool_result", "name": "lookup_order", "content": f"Order B200{i}: delivered.",
             "payload": {"tool_call_id": "c1"}},
            {"kind": "assistant_message", "content": "No."}])  # fmt: skip
        store.end_episode(eid)
        store.add_feedback(eid, correction="Yes: returns are accepted within 45 days of delivery.")
        ids.append(eid)
    dialog = build_plan(store, "helpdesk", parse_selection_config({"probes": {"fraction": 0.5}})).plan.skill(
        "helpdesk-dialog")
    assert dialog.probes and dialog.conversations
    assert {p.source_id for p in dialog.probes} | {c.episode_id for c in dialog.conversations} == set(ids)


def test_declared_skills_and_switches(store: Any) -> None:
    store.add_document("kb/refunds/policy.md", "Refunds within 30 days.", agent="helpdesk")
    store.add_document("kb/refunds/faq.md", "Refund FAQ.", agent="helpdesk")
    store.add_document("notes/misc.txt", "Misc notes.", agent="helpdesk")
    log_episode(store, "Where is A1?", "It shipped.")
    config = parse_selection_config({"skills": {
        "declared": [{"name": "{agent}-refunds", "generator": "d2l", "description": "Refunds",
                      "documents": ["kb/refunds/*"]},
                     {"name": "talk", "generator": "sft", "description": "How we talk"}],
        "per_document": False}})  # fmt: skip
    result = build_plan(store, "helpdesk", config)
    plan = result.plan
    assert [(s.skill, len(s.documents), len(s.conversations)) for s in plan.skills] == [
        ("helpdesk-refunds", 2, 0), ("talk", 0, 1)]
    assert plan.skill("talk").description == "How we talk"
    misc = [d for d in result.decisions if d.item_kind == "document" and not d.kept]
    assert len(misc) == 1 and "per_document is off" in misc[0].reason
    no_dialog = build_plan(store, "helpdesk", parse_selection_config({"skills": {"dialog": None}}))
    assert [s.generator for s in no_dialog.plan.skills] == ["d2l"] * 3
    assert any("conversations are not used" in d.reason for d in no_dialog.decisions)
    long_agent = "a" * 60
    with pytest.raises(ConfigError, match="invalid skill name"):
        log_episode(store, "q", "a", agent=long_agent)
        build_plan(store, long_agent)


def test_the_recency_window_uses_the_injected_now(store: Any) -> None:
    log_episode(store, "Where is A1?", "It shipped.")
    later = datetime.now(timezone.utc) + timedelta(days=31)
    result = build_plan(store, "helpdesk", now=later)
    assert result.plan.empty and [d.selector for d in result.decisions] == ["recency"]
    assert not build_plan(store, "helpdesk", now=later.replace(tzinfo=None) - timedelta(days=2)).plan.empty


def test_budget_caps_the_plan(store: Any) -> None:
    for i in range(8):
        eid = log_episode(store, f"Question {i} about invoice {i * 11}?", f"Answer {i}: invoice {i * 11} is paid.")
        store.add_feedback(eid, score=i / 10)  # 0.0 .. 0.7: the best scored win
    config = parse_selection_config({"chain": [{"name": "budget", "params": {"max_episodes": 3}}],
                                     "probes": {"fraction": 0}})
    result = build_plan(store, "helpdesk", config)
    kept = [c.messages[0]["content"] for c in result.plan.skill("helpdesk-dialog").conversations]
    assert sorted(kept) == ["Question 5 about invoice 55?", "Question 6 about invoice 66?",
                            "Question 7 about invoice 77?"]
    assert sum(1 for d in result.decisions if d.selector == "budget" and not d.kept) == 5


def test_a_correction_is_never_trained_uncorrected(store: Any) -> None:
    eid = log_episode(store, "When does it ship?", "Tomorrow.")
    store.add_feedback(eid, correction="On Friday.")
    config = parse_selection_config({"chain": ["outcome", "feedback"]})  # no 'corrections' step
    result = build_plan(store, "helpdesk", config)
    assert result.plan.empty and [(d.selector, d.kept) for d in result.decisions] == [("planner", False)]
    assert "no 'corrections' step" in result.decisions[0].reason


def test_a_lone_probe_of_an_untrained_skill_is_trained_on_instead(store: Any) -> None:
    eid = next(f"ep-{i}" for i in range(1000) if probe_hash(f"ep-{i}") < 0.2)  # one the hash holds out
    store.start_episode("helpdesk", episode_id=eid)
    store.append_events(eid, [{"kind": "user_message", "content": "When does it ship?"},
                              {"kind": "assistant_message", "content": "Tomorrow."}])
    store.end_episode(eid)
    store.add_feedback(eid, correction="On Friday.")
    result = build_plan(store, "helpdesk")
    dialog = result.plan.skill("helpdesk-dialog")
    assert [c.episode_id for c in dialog.conversations] == [eid] and dialog.probes == ()
    assert result.decisions[-1].reason == (
        "planned: trains sft skill helpdesk-dialog (corrected, not held out: no other kept conversation or document "
        "teaches its answer (key terms friday), so no adapter could pass it as a probe)")


def test_progress_bar_on_request(store: Any, capsys: pytest.CaptureFixture[str]) -> None:
    for i in range(3):
        log_episode(store, f"Question {i} about invoice {i * 11}?", f"Answer {i}: invoice {i * 11} is paid.")
    build_plan(store, "helpdesk")
    assert capsys.readouterr().err == ""
    build_plan(store, "helpdesk", progress=True)
    assert "selecting: 3 episodes" in capsys.readouterr().err
