"""The packaged helpdesk demo: its automatic check, what it prints, and ``agent-sleep demo`` on the real model."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from langchain_core.messages import AIMessage

from agent_sleep.cli.main import main as cli
from agent_sleep.config import Settings
from agent_sleep.demo import helpdesk
from agent_sleep.runtime.chat_model import FALLBACK_REPLY
from agent_sleep.store import ExperienceStore
from tests.helpers_models import ScriptedChatModel, make_tiny_model_dir

# What the old demo printed: tool-call tags, some built from the random call ids it had put into the prompt.
MARKUP = re.compile(r"</?tool|call_[0-9a-f]{8}")


def test_grounding_check_never_counts_markup() -> None:
    question = helpdesk.QUESTIONS[1]  # B2002: "delayed: waiting for stock, new date 3 December"
    assert helpdesk.grounded(question, AIMessage("It is delayed until 3 December."))
    assert not helpdesk.grounded(question, AIMessage("It has not arrived."))
    # The old demo scored this "resolved": the status words are there, inside markup.
    assert not helpdesk.grounded(question, AIMessage("<tool_call_760c7600_delayed_error_message_3_December_2023>"))
    gave_up = AIMessage(FALLBACK_REPLY, response_metadata={"invalid_output": {"errors": ["x"]}})
    assert not helpdesk.grounded(question, gave_up)


def test_demo_prints_conversations_and_logs_them(tmp_path: Path) -> None:
    store = ExperienceStore(settings=Settings(data_dir=tmp_path / "data"))
    model = ScriptedChatModel(model=str(make_tiny_model_dir(tmp_path)), scripts=[
        "Your order A1001 was shipped on 25 November.",
        "<tool_call_f10cada1>delayed</tool_call_f10cada1>",  # markup: resampled...
        "Sorry, I do not know.",  # ...into an honest, ungrounded answer
        "C3003 was delivered on 20 November.",
    ])
    lines: list[str] = []
    turns = helpdesk.main(model=model, store=store, echo=lines.append)
    out = "\n".join(lines)
    assert [t.outcome for t in turns] == ["resolved", "needs_review", "resolved"]
    assert [t.answer for t in turns][1] == "Sorry, I do not know."
    assert 'tool call  lookup_order(order_id="B2002")' in out
    assert "  result   Order B2002: delayed: waiting for stock, new date 3 December." in out
    assert f"logged     episode {turns[1].episode_id}: needs_review" in out
    assert out.endswith("(2 resolved, 1 need review)")
    assert not MARKUP.search(out)
    for turn in turns:
        assert [e.kind for e in store.events(turn.episode_id)] == [
            "user_message", "tool_call", "tool_result", "assistant_message"]
        assert store.get_episode(turn.episode_id).outcome == turn.outcome


@pytest.mark.model
def test_demo_command_on_the_real_model(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from agent_sleep.demo.day import load_day

    content = load_day()
    data = tmp_path / "data"
    assert cli(["--data-dir", str(data), "demo", "--awake-only"]) == 0  # the night: tests/demo/test_night.py
    out = capsys.readouterr().out
    answers = [line.removeprefix("agent      ") for line in out.splitlines() if line.startswith("agent      ")]
    assert len(answers) == len(content.questions) and all(answers)
    assert not MARKUP.search(out), out
    orders = sum(1 for q in content.questions if q.fact.startswith("o_"))  # one look-up per order question
    assert orders == 6 and out.count("tool call  lookup_order(") == orders
    (folder,) = (data / "demo").iterdir()  # each demo run gets a fresh data dir under the configured one
    assert f"--data-dir {folder} runs list" in out
    store = ExperienceStore(settings=Settings(data_dir=folder))
    eps = store.episodes(agent=content.agent)
    assert len(eps) == len(content.questions)
    assert all(e.status == "completed" and e.n_feedback == 1 for e in eps)
    # The order lookups work; the new documents' facts are unknown to the base model and get corrected.
    assert sum(e.outcome == "resolved" for e in eps) >= 2
    assert sum(e.outcome == "corrected" for e in eps) >= 8
    assert {d.source for d in store.documents(agent=content.agent)} == {d.source for d in content.documents}
