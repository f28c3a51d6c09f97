"""Graphs that are not a message list, interrupts and resumes, on both databases.

A run stopped by ``interrupt()`` ends its episode ``interrupted`` with the
interrupt's payload; ``Command(resume=...)`` continues the same episode (found by
the store from the thread, so any process may resume) and the episode then ends
``completed``.
"""

from __future__ import annotations

import json
import uuid
from typing import Any, TypedDict

from langchain.agents import create_agent
from langchain_core.messages import AIMessage
from langchain_core.tools import tool
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.graph import END, START, StateGraph
from langgraph.types import Command, interrupt

from agent_sleep.capture.callback import SleepCallbackHandler
from agent_sleep.capture.middleware import SleepMiddleware
from agent_sleep.capture.recorder import ExperienceRecorder
from agent_sleep.config import Settings
from agent_sleep.store import ExperienceStore
from tests.fakes import scripted, tool_call


class Ticket(TypedDict):
    question: str
    answer: str


def _approval_graph() -> Any:
    def draft(state: Ticket) -> dict[str, Any]:
        return {"answer": f"draft for {state['question']}"}

    def approve(state: Ticket) -> dict[str, Any]:
        verdict = interrupt({"approve": state["answer"]})
        if verdict != "yes":
            verdict = interrupt({"approve again": state["answer"], "got": verdict})
        return {"answer": f"{state['answer']} ({verdict})"}

    g = StateGraph(Ticket)
    g.add_node("draft", draft)
    g.add_node("approve", approve)
    g.add_edge(START, "draft")
    g.add_edge("draft", "approve")
    g.add_edge("approve", END)
    return g.compile(checkpointer=InMemorySaver())


def _events(store: ExperienceStore, eid: str) -> list[tuple[int, str, Any]]:
    return [(e.seq, e.kind, json.loads(e.content) if e.content else None) for e in store.events(eid)]


def test_interrupt_and_resume_continue_one_episode(settings: Settings, store: ExperienceStore) -> None:
    graph = _approval_graph()
    cb = SleepCallbackHandler("approver", settings=settings)
    cfg = {"callbacks": [cb], "configurable": {"thread_id": "ticket-7"}}
    first, second, third = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()

    out = graph.invoke({"question": "refund?", "answer": ""}, {**cfg, "run_id": first})
    assert "__interrupt__" in out
    assert cb.flush(10)
    eid = cb.episode_id_for(first)
    assert store.get_episode(eid).status == "interrupted"
    assert _events(store, eid) == [(0, "run_input", {"question": "refund?", "answer": ""}),
                                   (1, "interrupt", {"approve": "draft for refund?"})]

    graph.invoke(Command(resume="maybe"), {**cfg, "run_id": second})  # asks again: interrupted again
    assert cb.flush(10)
    assert store.get_episode(eid).status == "interrupted"
    out = graph.invoke(Command(resume="yes"), {**cfg, "run_id": third})
    assert out["answer"] == "draft for refund? (yes)"
    assert cb.flush(10)

    ep = store.get_episode(eid)
    assert ep.status == "completed" and ep.ended_at is not None and len(store.episodes()) == 1
    assert _events(store, eid) == [
        (0, "run_input", {"question": "refund?", "answer": ""}),
        (1, "interrupt", {"approve": "draft for refund?"}),
        (2, "resume", "maybe"),
        (3, "interrupt", {"approve again": "draft for refund?", "got": "maybe"}),
        (4, "resume", "yes"),
        (5, "run_output", {"question": "refund?", "answer": "draft for refund? (yes)"}),
    ]
    # Each resumed run's id names the episode it continued, in any spelling.
    assert store.get_episode(str(third).upper()).id == eid == store.get_episode(second.hex).id
    assert [e.id for e in store.events(eid) if e.kind == "resume"] == [second.hex, third.hex]


def test_resume_from_another_process(settings: Settings, store: ExperienceStore) -> None:
    """The resuming process never saw the interrupted run: the store finds the episode by thread."""
    graph = _approval_graph()
    cfg: dict[str, Any] = {"configurable": {"thread_id": "t-9"}}
    cb1 = SleepCallbackHandler("approver", settings=settings)
    first = uuid.uuid4()
    graph.invoke({"question": "q", "answer": ""}, {**cfg, "callbacks": [cb1], "run_id": first})
    assert cb1.flush(10)
    cb1.recorder.writer.close()  # that process is gone

    other = ExperienceRecorder("approver", settings=settings)  # a fresh writer, as in a new process
    assert other.writer is not cb1.recorder.writer
    cb2 = SleepCallbackHandler("approver", recorder=other)
    graph.invoke(Command(resume="yes"), {**cfg, "callbacks": [cb2], "run_id": uuid.uuid4()})
    assert cb2.flush(10)
    ep = store.get_episode(first.hex)
    assert ep.status == "completed"
    assert [k for _, k, _ in _events(store, ep.id)] == ["run_input", "interrupt", "resume", "run_output"]


def test_resume_without_an_interrupted_episode_is_its_own(settings: Settings, store: ExperienceStore) -> None:
    graph = _approval_graph()
    cfg: dict[str, Any] = {"configurable": {"thread_id": "t-1"}}
    graph.invoke({"question": "q", "answer": ""}, cfg)  # interrupted while nobody captured it
    cb = SleepCallbackHandler("approver", settings=settings)
    run_id = uuid.uuid4()
    graph.invoke(Command(resume="yes"), {**cfg, "callbacks": [cb], "run_id": run_id})
    assert cb.flush(10)
    ep = store.get_episode(str(run_id))
    assert (ep.id, ep.status, ep.thread_id) == (run_id.hex, "completed", "t-1")
    assert [k for _, k, _ in _events(store, ep.id)] == ["resume", "run_output"]


@tool
def issue_refund(order: str) -> str:
    """Refund an order, after a human approved it."""
    answer = interrupt({"refund": order})
    return f"refund of {order}: {answer}"


def test_tool_interrupt_in_create_agent_with_the_callback(settings: Settings, store: ExperienceStore) -> None:
    agent = create_agent(scripted(tool_call("issue_refund", {"order": "A1"}), "Refunded."), [issue_refund],
                         checkpointer=InMemorySaver())
    cb = SleepCallbackHandler("helpdesk", settings=settings)
    cfg = {"callbacks": [cb], "configurable": {"thread_id": "c-1"}}
    first = uuid.uuid4()
    agent.invoke({"messages": [("user", "refund A1")]}, {**cfg, "run_id": first})
    assert cb.flush(10)
    eid = cb.episode_id_for(first)
    assert store.get_episode(eid).status == "interrupted"
    agent.invoke(Command(resume="approved"), cfg)
    assert cb.flush(10)
    assert store.get_episode(eid).status == "completed"
    events = store.events(eid)
    assert [(e.kind, e.name) for e in events] == [
        ("user_message", None), ("assistant_message", None), ("tool_call", "issue_refund"),
        ("interrupt", None), ("resume", None), ("tool_call", "issue_refund"), ("tool_result", "issue_refund"),
        ("assistant_message", None)]
    assert events[6].content == "refund of A1: approved" and events[6].payload["status"] == "success"
    assert not any("GraphInterrupt" in e.content for e in events)


def test_tool_interrupt_with_the_middleware(settings: Settings, store: ExperienceStore) -> None:
    mw = SleepMiddleware("helpdesk", settings=settings)
    agent = create_agent(scripted(tool_call("issue_refund", {"order": "B2"}, "c7"), AIMessage("Done.")),
                         [issue_refund], middleware=[mw], checkpointer=InMemorySaver())
    cfg = {"configurable": {"thread_id": "c-2"}}
    agent.invoke({"messages": [("user", "refund B2")]}, cfg)
    assert mw.flush(10)
    eid = mw.last_episode_id
    assert eid is not None and store.get_episode(eid).status == "interrupted"
    assert json.loads(store.events(eid)[-1].content) == {"refund": "B2"}
    agent.invoke(Command(resume="ok"), cfg)
    assert mw.flush(10)
    assert store.get_episode(eid).status == "completed" and len(store.episodes()) == 1
    assert [e.kind for e in store.events(eid)] == [
        "user_message", "assistant_message", "tool_call", "interrupt", "resume", "tool_call", "tool_result",
        "assistant_message"]
    assert [e.seq for e in store.events(eid)] == list(range(8))


def test_continuation_ops_replay_exactly_once(store: ExperienceStore) -> None:
    """What a spill file replays twice (a crash mid-replay) lands once, in the same place."""
    eid = store.start_episode("a", thread_id="t")
    store.append_events(eid, [{"kind": "user_message", "content": "hi"}])
    store.end_episode(eid, status="interrupted")
    cont = {"run": uuid.uuid4().hex, "agent": "a", "thread_id": "t", "value": '"go"'}
    ops = [{"op": "event", "id": uuid.uuid4().hex, "episode_id": cont["run"], "seq": i, "kind": "custom",
            "content": str(i), "cont": cont, "ts": 1.0} for i in range(3)]
    ops.append({"op": "episode_end", "id": cont["run"], "status": "completed", "cont": cont, "ts": 2.0})
    store.write_ops(ops[:2])
    store.write_ops(ops)
    store.write_ops(ops)
    assert [(e.seq, e.kind, e.content) for e in store.events(eid)] == [
        (0, "user_message", "hi"), (1, "resume", '"go"'), (2, "custom", "0"), (3, "custom", "1"), (4, "custom", "2")]
    assert store.get_episode(cont["run"]).status == "completed"
    assert "cont" not in ops[0] or ops[0]["seq"] == 0  # the queued ops themselves are left as they were


def test_another_process_logging_to_an_episode_appends(settings: Settings, store: ExperienceStore) -> None:
    """Before, a second process's events reused seqs 0, 1 … and were silently dropped as duplicates."""
    first = ExperienceRecorder("a", settings=settings)
    eid = first.start_episode(episode_id=str(uuid.uuid4()))
    first.log(eid, "user_message", "one")
    first.log(eid, "assistant_message", "two")
    assert first.flush(10)
    first.writer.close()

    second = ExperienceRecorder("a", settings=settings)
    dashed = str(uuid.UUID(hex=eid)).upper()
    second.log(dashed, "tool_result", "three")
    second.log(dashed, "assistant_message", "four")
    second.end_episode(dashed, outcome="resolved")
    assert second.flush(10)
    assert [(e.seq, e.kind, e.content) for e in store.events(eid)] == [
        (0, "user_message", "one"), (1, "assistant_message", "two"), (2, "resume", ""),
        (3, "tool_result", "three"), (4, "assistant_message", "four")]
    ep = store.get_episode(eid)
    assert (ep.status, ep.outcome) == ("completed", "resolved")
