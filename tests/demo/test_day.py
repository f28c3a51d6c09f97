"""The day's content and the day itself: what is logged, the corrections, the held-out rephrasings, the table."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from langchain_core.messages import AIMessage

from agent_sleep.config import Settings
from agent_sleep.demo import day as day_mod
from agent_sleep.demo.day import DAY_DIR, Answer, compare, corrected_conversations, format_table, held_out, load_day
from agent_sleep.demo.helpdesk import SYSTEM_PROMPT, shown
from agent_sleep.errors import ConfigError, InvalidInputError
from agent_sleep.runtime.chat_model import FALLBACK_REPLY
from agent_sleep.store import ExperienceStore
from tests.helpers_models import ScriptedChatModel, make_tiny_model_dir


def test_shipped_content_is_consistent() -> None:
    content = load_day()
    assert {d.id for d in content.documents} == {"product", "policy"}
    assert all(d.text.strip() for d in content.documents)
    # every fact has rephrasings, none of them is a day question, none gives its answer away (checked on load)
    assert set(content.rephrasings) == set(content.facts)
    # each document fact is stated in its document, so d2l has it to read
    for fact, spec in content.facts.items():
        if spec.topic in {"product", "policy"}:
            text = next(d.text for d in content.documents if d.id == spec.topic)
            assert any(a in text for a in spec.answers), fact


def _copy_content(tmp_path: Path) -> Path:
    folder = tmp_path / "day"
    shutil.copytree(DAY_DIR, folder)
    return folder


def test_content_that_leaks_a_rephrasing_into_the_day_is_refused(tmp_path: Path) -> None:
    folder = _copy_content(tmp_path)
    day = json.loads((folder / "day.json").read_text())
    reph = json.loads((folder / "rephrasings.json").read_text())
    fact = day["questions"][1]["fact"]
    day["questions"][1]["question"] = reph["rephrasings"][fact][0].upper()
    (folder / "day.json").write_text(json.dumps(day))
    with pytest.raises(ConfigError, match="is one of the day's questions"):
        load_day(folder)


def test_a_rephrasing_that_gives_its_answer_away_is_refused(tmp_path: Path) -> None:
    folder = _copy_content(tmp_path)
    reph = json.loads((folder / "rephrasings.json").read_text())
    reph["rephrasings"]["r_window"] = ["Is it true that I have 45 days to return things?"]
    (folder / "rephrasings.json").write_text(json.dumps(reph))
    with pytest.raises(ConfigError, match="gives its answer away"):
        load_day(folder)


def test_shown_never_passes_tool_markup() -> None:
    assert shown(AIMessage("It arrives on 29 November.")).content == "It arrives on 29 November."
    bad = shown(AIMessage('<tool_call>[{"name": "lookup_order"}]</tool_call>'))
    assert bad.content == FALLBACK_REPLY and "invalid_output" in bad.response_metadata
    assert shown(AIMessage("")).content == FALLBACK_REPLY
    gave_up = AIMessage("partial", response_metadata={"invalid_output": {"errors": ["x"]}})
    assert shown(gave_up).content == FALLBACK_REPLY


def test_the_day_logs_episodes_feedback_corrections_and_documents(tmp_path: Path) -> None:
    content = load_day()
    n = len(content.questions)
    # Right for the first two questions (an order and the price), wrong for every other one.
    scripts = ["Your order A1001 arrives on 29 November.", "It costs $64.95."] + ["I am not sure."] * (n - 2)
    model = ScriptedChatModel(model=str(make_tiny_model_dir(tmp_path)), scripts=scripts, max_new_tokens=32)
    store = ExperienceStore(settings=Settings(data_dir=tmp_path / "data"))
    seen: list[Answer] = []
    log = day_mod.run_day(model, store, content, on_answer=seen.append)

    assert [a.correct for a in log.answers] == [True, True] + [False] * (n - 2)
    assert seen == list(log.answers)
    assert log.answers[0].tool_calls == ('lookup_order({"order_id": "A1001"})',)
    docs = store.documents(agent=content.agent)
    assert {d.source for d in docs} == {d.source for d in content.documents}
    episodes = {e.id: e for e in store.episodes(agent=content.agent)}
    assert set(episodes) == {a.episode_id for a in log.answers}
    for answer in log.answers:
        assert answer.episode_id is not None
        fb = store.feedback(answer.episode_id)
        assert len(fb) == 1
        if answer.correct:
            assert (fb[0].label, fb[0].score, fb[0].comment) == ("correct", 1.0, None)
            assert episodes[answer.episode_id].outcome == "resolved"
        else:
            assert (fb[0].label, fb[0].score) == ("wrong", 0.0)
            assert fb[0].comment == content.correction(answer.key)
            assert episodes[answer.episode_id].outcome == "corrected"

    # the night's sft material: each failed conversation as the model saw it, the correction as the reply
    conversations = corrected_conversations(store, log, content)
    assert len(conversations) == n - 2
    first_failed = log.failed[0]
    assert conversations[0] == [
        {"role": "system", "content": SYSTEM_PROMPT},
        {"role": "user", "content": first_failed.question},
        {"role": "assistant", "content": content.correction(first_failed.key)},
    ]
    order_failure = next(c for c, a in zip(conversations, log.failed, strict=True) if a.fact.startswith("o_"))
    assert [m["role"] for m in order_failure] == ["system", "user", "assistant", "tool", "assistant"]
    assert order_failure[2]["tool_calls"][0]["name"] == "lookup_order"

    # held-out rephrasings: only of the facts that failed (p_price and o_a1001 were also asked, and missed, in q11
    # and q20), never logged
    probes = held_out(content, log.failed_facts)
    assert {f for f, _ in probes} == set(log.failed_facts) and {"p_price", "o_a1001"} <= {f for f, _ in probes}
    before = day_mod.ask(model, probes, content)
    assert all(a.episode_id is None for a in before)
    assert len(store.episodes(agent=content.agent)) == n


def test_table_counts_right_answers_before_and_after() -> None:
    before = [Answer("p_price", "p_price", "How much?", "No idea", False),
              Answer("r_fee", "r_fee", "Fee?", "12% fee", True)]
    after = [Answer("p_price", "p_price", "How much?", "It costs $64.95.", True),
             Answer("r_fee", "r_fee", "Fee?", "No fee", False)]
    table = format_table(compare(before, after))
    assert "right before sleep: 1/2 (50%)   right after: 1/2 (50%)" in table
    assert "It costs $64.95." in table
    with pytest.raises(InvalidInputError):
        compare(before, after[:1])


def test_replay_requests_are_not_guard_items() -> None:
    from agent_sleep.evaluation.suites import guard_suites

    def norm(text: str) -> str:
        return " ".join(text.lower().split())

    guards = {norm(item.question) for suite in guard_suites() for item in suite.items}
    replay = load_day().replay
    assert len(replay) >= 12
    assert not [r.question for r in replay if norm(r.question) in guards]
    # nor the guard's own templates
    assert not [r.question for r in replay if "answer in one short sentence" in norm(r.question)
                or "help centre note" in norm(r.question) or "repeat this sentence exactly" in norm(r.question)]


def test_replay_keeps_only_what_the_model_gets_right(tmp_path: Path) -> None:
    content = load_day()
    replies = ["The standard delivery price is $4.99." if "Standard delivery" in r.question else "I am not sure."
               for r in content.replay]
    model = ScriptedChatModel(model=str(make_tiny_model_dir(tmp_path)), scripts=replies, max_new_tokens=32)
    kept = day_mod.replay_conversations(model, content)
    assert kept == [[{"role": "user", "content": next(r.question for r in content.replay if "Standard" in r.question)},
                     {"role": "assistant", "content": "The standard delivery price is $4.99."}]]
