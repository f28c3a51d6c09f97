"""Feedback instructions ("always ask for the order number first") in selection: they describe the dialog
skill (deduplicated, oldest first, redacted), each use is a decision row, an instruction on a bad episode
survives without its conversation, and the planner's candidate generators follow the material."""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from agent_sleep.errors import ConfigError, InvalidInputError
from agent_sleep.selectors import build_plan, parse_selection_config
from agent_sleep.selectors.probes import probe_hash
from agent_sleep.selectors.redact import RedactSelector
from tests.helpers_selection import episode, feedback, log_episode
from tests.selectors.test_planner import store  # noqa: F401  (the SQL and memory store fixture)

SECRETS = ("ops.lead@example.com", "sk-live-4f9aQ2Zx7LmN0pR8sT1uV3wY5")


def _instruct(store: Any, eid: str, text: str, **kw: Any) -> str:
    time.sleep(0.002)  # feedback times order the instructions
    return str(store.add_feedback(eid, instruction=text, **kw))


def _rows(result: Any, item: str) -> list[tuple[str, bool, str | None, str | None]]:
    return [(d.selector, d.kept, d.skill, d.role) for d in result.decisions if d.item_id == item]


def test_instructions_of_kept_feedback_describe_the_dialog_skill(store: Any) -> None:
    ask = log_episode(store, "Where is my parcel?", "It is on its way.")
    f_ask = _instruct(store, ask, "Always ask for the order number first.")
    again = log_episode(store, "Has my refund arrived?", "Refunds take five days.")
    f_again = _instruct(store, again, "  always ask for the ORDER number first ", score=1.0)
    bad = log_episode(store, "When will it arrive?", "Tomorrow, promised!")
    f_bad = _instruct(store, bad, "Never promise a delivery date.", score=0.0, label="thumbs_down")
    secret = log_episode(store, "Who handles complaints?", "Nobody.")
    f_secret = _instruct(store, secret, f"Send complaints to {SECRETS[0]}; the API key is {SECRETS[1]}.")
    plain = log_episode(store, "Do you ship to Norway?", "Yes, within five days.")

    result = build_plan(store, "helpdesk")
    dialog = result.plan.skill("helpdesk-dialog")
    lines = dialog.description.splitlines()
    assert lines[:2] == ["Always ask for the order number first.", "Never promise a delivery date."]
    assert len(lines) == 3 and "[EMAIL]" in lines[2] and "[SECRET]" in lines[2]
    assert not any(s in repr(result) for s in SECRETS)  # redacted like every other text
    assert [i.feedback_id for i in dialog.instructions] == [f_ask, f_bad, f_secret]  # the duplicate used once
    assert (dialog.generator, dialog.candidates) == ("sft", ("sft", "t2l"))  # conversations and a description

    # The bad episode's conversation is not trained on, its instruction is used; nothing with an instruction
    # is a probe (t2l trains on the description).
    assert {c.episode_id for c in dialog.conversations} == {ask, again, secret, plain}
    assert dialog.probes == () and set(result.plan.episodes) == {ask, again, bad, secret, plain}
    assert set(dialog.instruction_episodes) == {ask, bad, secret}
    assert _rows(result, bad)[0] == ("feedback", True, None, None)
    assert _rows(result, bad)[-1] == ("planner", False, None, None)
    why = {d.item_id: d.reason for d in result.decisions if d.item_kind == "feedback"}
    assert "kept for its feedback's instruction only" in next(d.reason for d in result.decisions
                                                               if d.item_id == bad and d.selector == "feedback")
    # Every use is a decision row, for `runs explain`.
    for fid in (f_ask, f_again, f_bad, f_secret):
        assert _rows(result, fid) == [("planner", True, "helpdesk-dialog", "instruction")]
    assert "line 1 of the description of skill helpdesk-dialog" in why[f_ask]
    assert f"the same as feedback {f_ask}'s, used once" in why[f_again]
    assert build_plan(store, "helpdesk").plan == result.plan  # a stable order


def test_a_declared_t2l_skill_learns_its_description_and_shares_the_dialog_probes(store: Any) -> None:
    ids = []
    for i in range(6):  # three regions, each corrected twice: a held-out one is taught by its twin
        asked = f"What is the code for region {i % 3}?" if i < 3 else f"Which code does region {i % 3} use?"
        eid = log_episode(store, asked, f"It is {i * 3}.")
        store.add_feedback(eid, correction=f"The code for region {i % 3} is R-{i % 3:02d}.")
        ids.append(eid)
    config = parse_selection_config({"skills": {"declared": [
        {"name": "{agent}-greeting", "generator": "t2l", "description": "Greet the customer by name."}]},
        "probes": {"fraction": 0.5}})  # fmt: skip
    result = build_plan(store, "helpdesk", config)
    plan = result.plan
    dialog, greeting = plan.skill("helpdesk-dialog"), plan.skill("helpdesk-greeting")
    assert (greeting.generator, greeting.generators, greeting.description) == ("t2l", ("t2l",),
                                                                               "Greet the customer by name.")
    assert greeting.conversations == () and greeting.probes == dialog.probes and dialog.probes
    assert dialog.candidates == ()  # no description: sft alone
    shared = [d for d in result.decisions if d.skill == "helpdesk-greeting"]
    assert {d.item_id for d in shared} == {p.source_id for p in dialog.probes}
    assert all(d.role == "probe" and "tested on helpdesk-dialog's probes" in d.reason for d in shared)
    assert not {p.source_id for p in greeting.probes} & {c.episode_id for c in dialog.conversations}


def test_a_description_alone_makes_a_t2l_skill_whose_probes_stay_held_out(store: Any) -> None:
    eid = next(f"ep-{i}" for i in range(1000) if probe_hash(f"ep-{i}") < 0.2)  # one the hash holds out
    store.start_episode("helpdesk", episode_id=eid)
    store.append_events(eid, [{"kind": "user_message", "content": "Can I pay next month?"},
                              {"kind": "assistant_message", "content": "Yes, any time."}])
    store.end_episode(eid)
    store.add_feedback(eid, correction="No: payment is due on delivery.")
    bad = log_episode(store, "Can I pay later?", "Sure, whenever.")
    _instruct(store, bad, "Say that payment is due on delivery.", score=0.0)
    dialog = build_plan(store, "helpdesk").plan.skill("helpdesk-dialog")
    # Without the description the lone probe would be trained on (test_planner); with it, t2l makes the skill,
    # and the description teaches the probe's answer (payment, delivery), so it stays held out.
    assert (dialog.generator, dialog.generators, dialog.conversations) == ("t2l", ("t2l",), ())
    assert [p.source_id for p in dialog.probes] == [eid]
    assert dialog.description == "Say that payment is due on delivery."


def test_declared_candidates_and_no_dialog(store: Any) -> None:
    eid = log_episode(store, "Where is my parcel?", "On its way.")
    _instruct(store, eid, "Ask for the order number.")
    only_sft = parse_selection_config({"skills": {"declared": [
        {"name": "talk", "generator": "sft", "candidates": ["sft"]}]}})  # fmt: skip
    talk = build_plan(store, "helpdesk", only_sft).plan.skill("talk")
    assert (talk.generators, talk.description) == (("sft",), "Ask for the order number.")
    both = parse_selection_config({"skills": {"declared": [
        {"name": "talk", "generator": "sft", "description": "Be brief.", "candidates": ["t2l", "sft"]}]}})  # fmt: skip
    talk = build_plan(store, "helpdesk", both).plan.skill("talk")
    assert talk.generators == ("sft", "t2l") and talk.description == "Be brief.\nAsk for the order number."
    none = build_plan(store, "helpdesk", parse_selection_config({"skills": {"dialog": None}}))
    (row,) = [d for d in none.decisions if d.item_kind == "feedback"]
    assert not row.kept and "no skill takes instructions" in row.reason


def test_the_redact_step_covers_instructions() -> None:
    fb = feedback(score=1.0)
    item = episode(fb=(fb.__class__(**{**fb.__dict__, "instruction": f"Mail {SECRETS[0]} the key {SECRETS[1]}"}),))
    counts: Counter[str] = Counter()
    out = RedactSelector().redact_candidate(item, counts)
    assert out.feedback[0].instruction == "Mail [EMAIL] the key [SECRET]" and counts == {"email": 1, "secret": 1}


def test_the_plan_refuses_a_probe_whose_instruction_it_trains_on(store: Any) -> None:
    ids = [log_episode(store, f"Question {i} about invoice {i * 11}?", f"Answer {i}.") for i in range(4)]
    for eid in ids:
        store.add_feedback(eid, correction="Invoices are paid monthly.")
    _instruct(store, ids[0], "Quote the invoice number.")
    plan = build_plan(store, "helpdesk", parse_selection_config({"probes": {"fraction": 1.0}})).plan
    dialog = plan.skill("helpdesk-dialog")
    assert ids[0] not in {p.source_id for p in dialog.probes} and ids[0] in dialog.instruction_episodes
    leaked = dialog.probes[0].model_copy(update={"source_id": ids[0]})
    untrained = tuple(c for c in dialog.conversations if c.episode_id != ids[0])  # only its instruction is used
    with pytest.raises(InvalidInputError, match="instruction is in a description"):
        plan.model_copy(update={"skills": (dialog.model_copy(update={"probes": (leaked,),
                                                                     "conversations": untrained}),)}).check()


def test_skill_config_problems_are_listed_at_once() -> None:
    with pytest.raises(ConfigError) as info:
        parse_selection_config({"skills": {"declared": [
            {"name": "a", "generator": "t2l", "documents": ["kb/*"]},
            {"name": "b", "generator": "sft", "candidates": ["sft", "d2l", "sft"]},
            {"name": "c", "generator": "d2l", "documents": ["kb/*"], "candidates": ["t2l"]}]}})  # fmt: skip
    text = str(info.value)
    for line in ("skills.declared[0]: a t2l skill learns its description, not documents: drop 'documents'; a t2l "
                 "skill learns its description: give 'description'",
                 "skills.declared[1]: candidates: each generator once; twice: ['sft']; candidates: d2l learns from "
                 "documents; a sft skill has conversations",
                 "skills.declared[2]: candidates: must include the skill's generator 'd2l'; candidates: t2l learns "
                 "from description; a d2l skill has documents"):
        assert line in text, line
    with pytest.raises(ConfigError, match="skills declared twice: \\['d'\\]; at most one sft skill"):
        parse_selection_config({"skills": {"declared": [{"name": "d", "generator": "sft"},
                                                        {"name": "d", "generator": "sft"}]}})


def test_the_documented_skill_examples_validate() -> None:
    import yaml

    root = Path(__file__).resolve().parents[2]
    examples = []
    for name in ("pipelines/consolidation/selection.yaml", "pipelines/sleep/cycle.yaml"):
        lines = (root / name).read_text(encoding="utf-8").splitlines()
        # "#   - {name: ..., generator: ...}   # a comment": the mapping after the dash
        examples += [yaml.safe_load(line.split("- ", 1)[1].split("  #", 1)[0])
                     for line in lines if line.lstrip("# ").startswith("- {name:")]
    assert len(examples) >= 4
    for spec in examples:
        skills = parse_selection_config({"skills": {"declared": [spec]}}).skills.declared
        assert skills[0].name == spec["name"]
