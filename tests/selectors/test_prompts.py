"""``prompts``: conversations and probes carry the system prompt the agent's model was given.

A real LangGraph graph adds its system prompt when it calls the model (it is not in the graph's
state, so no event holds it); capture records the model's input; the plan must train on and probe
with that prompt, redacted like every other text.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from langchain_core.messages import AIMessage, SystemMessage
from langgraph.graph import END, START, MessagesState, StateGraph

from agent_sleep.capture.callback import SleepCallbackHandler
from agent_sleep.config import Settings
from agent_sleep.selectors import build_plan, parse_selection_config
from agent_sleep.store import ExperienceStore, InMemoryExperienceStore
from tests.capture.test_model_input import RecordingChatModel
from tests.helpers_selection import log_episode

PROMPT = "You are the helpdesk of Halvik. Write to support@halvik.example if you are stuck."
QUESTIONS = ["When does the winter sale end?", "How long is the warranty?", "Do you ship to Iceland?",
             "Can I return a used tent?", "Is the shop open on Sunday?", "What does express shipping cost?"]  # fmt: skip
CHAIN = {"chain": ["outcome", "feedback", "budget", "prompts", "redact", "corrections"]}


@pytest.fixture
def store(tmp_path: Path) -> Iterator[ExperienceStore]:
    s = ExperienceStore(f"sqlite:///{tmp_path / 'e.sqlite'}", settings=Settings(data_dir=tmp_path / "data"))
    yield s
    s.close()


def _agent(model: Any) -> Any:
    def answer(state: MessagesState) -> dict[str, Any]:
        return {"messages": [model.invoke([SystemMessage(PROMPT), *state["messages"]])]}

    graph = StateGraph(MessagesState)
    graph.add_node("answer", answer)
    graph.add_edge(START, "answer")
    graph.add_edge("answer", END)
    return graph.compile()


def _day(store: ExperienceStore) -> list[str]:
    """The agent answers every question wrongly; each answer gets a correction (each taught twice)."""
    model = RecordingChatModel(replies=[AIMessage("I do not know.")])
    agent = _agent(model)
    capture = SleepCallbackHandler("helpdesk", url=store.url, settings=store.settings)
    ids = []
    for i, question in enumerate(QUESTIONS):
        run_id = uuid.uuid4()
        agent.invoke({"messages": [("user", question)]}, config={"run_id": run_id, "callbacks": [capture]})
        capture.flush()
        ids.append(capture.episode_id_for(run_id))
        store.add_feedback(ids[-1], score=0.0, label="wrong", correction=f"Answer number {i // 2}.", source="human")
        store.record_outcome(ids[-1], "corrected")
    assert model.seen and isinstance(model.seen[0][0][0], SystemMessage)
    return ids


def test_conversations_and_probes_carry_the_agents_system_prompt_redacted(store: ExperienceStore) -> None:
    ids = _day(store)
    assert all(e.kind != "system_message" for e in store.events(ids[0]))  # only the model input holds it
    result = build_plan(store, "helpdesk", parse_selection_config(CHAIN))
    [skill] = result.plan.skills
    assert skill.conversations and skill.probes
    redacted = PROMPT.replace("support@halvik.example", "[EMAIL]")
    for conv in skill.conversations:
        assert conv.messages[0] == {"role": "system", "content": redacted}
        assert [m["role"] for m in conv.messages[1:]] == ["user", "assistant"] and conv.corrected
    assert all(p.system == redacted and p.origin == "correction" for p in skill.probes)
    reasons = {d.reason for d in result.decisions if d.selector == "prompts"}
    assert reasons == {f"the system prompt of its final answer put first ({len(PROMPT)} chars)"}


def test_without_a_recorded_prompt_the_conversation_is_used_as_logged(tmp_path: Path) -> None:
    for store in (ExperienceStore(f"sqlite:///{tmp_path / 'x.sqlite'}", settings=Settings(data_dir=tmp_path)),
                  InMemoryExperienceStore(settings=Settings(data_dir=tmp_path))):
        for i in range(4):
            eid = log_episode(store, f"question {i}?", "no idea", outcome="corrected")
            store.add_feedback(eid, score=0.0, label="wrong", correction=f"answer {i}", source="human")
        result = build_plan(store, "helpdesk", parse_selection_config(CHAIN))
        [skill] = result.plan.skills
        assert all(c.messages[0]["role"] == "user" for c in skill.conversations)
        assert all(p.system is None for p in skill.probes)
        assert not [d for d in result.decisions if d.selector == "prompts"]  # kept unchanged: no decision row


def _call(kind: str, reply: str, first: dict[str, Any] | None, *, complete: bool = True) -> Any:
    from agent_sleep.store.conversation import ModelCall

    messages = [first] if first else []
    messages.append({"type": "human", "data": {"content": "hi"}})
    return ModelCall(seq=0, event_id="e", kind=kind, messages=messages, tools=None, tool_choice=None, prompt=None,
                     reply=reply, complete=complete)  # fmt: skip


def test_the_final_answers_call_decides() -> None:
    from agent_sleep.selectors.prompts import system_prompt_of

    def sys(text: str) -> dict[str, Any]:
        return {"type": "system", "data": {"content": text}}

    router, answer = _call("assistant_message", "", sys("route")), _call("assistant_message", "Fine.", sys("answer"))
    assert system_prompt_of([]) is None
    assert system_prompt_of([answer, router]) == "answer"  # the last call that replied with text
    assert system_prompt_of([router]) == "route"  # none replied with text: the last call
    assert system_prompt_of([_call("assistant_message", "x", None)]) is None  # no system message first
    assert system_prompt_of([_call("assistant_message", "x", sys("cut"), complete=False)]) is None
    assert system_prompt_of([_call("assistant_message", "x", sys("   "))]) is None
