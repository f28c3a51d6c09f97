"""Capture from LangGraph graphs and create_agent agents, on both databases."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from langchain.agents import create_agent
from langchain_core.messages import AIMessage
from langchain_core.tools import tool
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.graph import END, START, MessagesState, StateGraph

from agent_sleep.capture.callback import SleepCallbackHandler
from agent_sleep.capture.middleware import SleepMiddleware
from agent_sleep.config import Settings
from agent_sleep.store import ExperienceStore
from tests.fakes import scripted, tool_call


@tool
def lookup(order: str) -> str:
    """Look up an order."""
    return f"order {order} shipped"


@tool
def broken(order: str) -> str:
    """A tool that fails."""
    raise RuntimeError("inventory service down")


def _kinds(store: ExperienceStore, eid: str) -> list[tuple[str, str | None]]:
    return [(e.kind, e.name) for e in store.events(eid)]


def test_callback_logs_a_create_agent_run(settings: Settings, store: ExperienceStore) -> None:
    agent = create_agent(scripted(tool_call("lookup", {"order": "A1"}), "It shipped."), [lookup])
    cb = SleepCallbackHandler("helpdesk", settings=settings)
    run_id = uuid.uuid4()
    agent.invoke({"messages": [("user", "where is A1?")]},
                 config={"callbacks": [cb], "run_id": run_id, "configurable": {"thread_id": "cust-1"}})
    assert cb.flush(10)
    eid = cb.episode_id_for(run_id)
    assert cb.last_episode_id == eid
    ep = store.get_episode(eid)
    assert (ep.agent, ep.thread_id, ep.status) == ("helpdesk", "cust-1", "completed")
    assert _kinds(store, eid) == [("user_message", None), ("assistant_message", None), ("tool_call", "lookup"),
                                  ("tool_result", "lookup"), ("assistant_message", None)]
    events = store.events(eid)
    assert events[0].content == "where is A1?"
    assert events[1].payload["tool_calls"][0]["args"] == {"order": "A1"}
    assert events[3].content == "order A1 shipped" and events[3].payload["tool_call_id"] == "call_1"
    assert events[4].content == "It shipped."


def test_callback_on_a_custom_graph_with_history(settings: Settings, store: ExperienceStore) -> None:
    def node(state: MessagesState) -> dict[str, Any]:
        return {"messages": [AIMessage(f"echo {len(state['messages'])}")]}

    g = StateGraph(MessagesState)
    g.add_node("echo", node)
    g.add_edge(START, "echo")
    g.add_edge("echo", END)
    graph = g.compile(checkpointer=InMemorySaver())
    cb = SleepCallbackHandler("echo", settings=settings)
    cfg = {"callbacks": [cb], "configurable": {"thread_id": "th"}}
    graph.invoke({"messages": [("user", "one")]}, config=cfg)
    graph.invoke({"messages": [("user", "two")]}, config=cfg)
    cb.flush(10)
    eps = store.episodes(agent="echo")
    assert len(eps) == 2 and all(e.thread_id == "th" for e in eps)
    # The second run logs only its own input, not the checkpointed history.
    assert [e.content for e in store.events(eps[1].id)] == ["two"]


def test_failing_tool_and_failing_graph(settings: Settings, store: ExperienceStore) -> None:
    agent = create_agent(scripted(tool_call("broken", {"order": "A1"}), "Sorry."), [broken])
    cb = SleepCallbackHandler("helpdesk", settings=settings)
    with pytest.raises(RuntimeError, match="inventory service down"):
        agent.invoke({"messages": [("user", "where?")]}, config={"callbacks": [cb]})

    def explode(state: MessagesState) -> dict[str, Any]:
        raise ValueError("node exploded")

    g = StateGraph(MessagesState)
    g.add_node("x", explode)
    g.add_edge(START, "x")
    graph = g.compile()
    with pytest.raises(ValueError, match="node exploded"):
        graph.invoke({"messages": [("user", "hi")]}, config={"callbacks": [cb]})
    cb.flush(10)
    tool_failed, node_failed = store.episodes(agent="helpdesk")
    results = [e for e in store.events(tool_failed.id) if e.kind == "tool_result"]
    assert results and "inventory service down" in results[0].content and results[0].payload["status"] == "error"
    assert tool_failed.status == "error" and "inventory service down" in (tool_failed.error or "")
    assert node_failed.status == "error" and "node exploded" in (node_failed.error or "")
    assert store.events(node_failed.id)[-1].kind == "error"


def test_middleware_logs_create_agent(settings: Settings, store: ExperienceStore) -> None:
    mw = SleepMiddleware("helpdesk", settings=settings)
    agent = create_agent(scripted(tool_call("lookup", {"order": "B2"}, "c9"), "B2 shipped.",
                                  "Anything else?"), [lookup], middleware=[mw], checkpointer=InMemorySaver())
    cfg = {"configurable": {"thread_id": "t-mw"}}
    agent.invoke({"messages": [("user", "where is B2?")]}, config=cfg)
    first = mw.last_episode_id
    agent.invoke({"messages": [("user", "thanks")]}, config=cfg)
    mw.flush(10)
    ep = store.get_episode(first)  # type: ignore[arg-type]
    assert (ep.thread_id, ep.status) == ("t-mw", "completed")
    assert _kinds(store, ep.id) == [("user_message", None), ("assistant_message", None), ("tool_call", "lookup"),
                                    ("tool_result", "lookup"), ("assistant_message", None)]
    assert store.events(ep.id)[3].payload == {"tool_call_id": "c9", "status": "success"}
    second = store.get_episode(mw.last_episode_id)  # type: ignore[arg-type]
    assert [e.content for e in store.events(second.id)] == ["thanks", "Anything else?"]


def test_capture_truncates_oversized_content(settings: Settings, store: ExperienceStore) -> None:
    from agent_sleep.capture.recorder import ExperienceRecorder
    from agent_sleep.capture.writer import CaptureWarning

    rec = ExperienceRecorder("a", settings=settings.model_copy(update={"max_payload_bytes": 1000}))
    eid = rec.start_episode()
    with pytest.warns(CaptureWarning, match="truncated"):
        rec.log(eid, "tool_result", "x" * 5000)
    rec.log(eid, "user_message", "bad \udcff and \x00 nul")
    rec.end_episode(eid)
    rec.flush(10)
    big, odd = store.events(eid)
    assert len(big.content) <= 1000 and big.payload["truncated_from_bytes"] == 5000
    assert odd.content == "bad \ufffd and \ufffd nul"
