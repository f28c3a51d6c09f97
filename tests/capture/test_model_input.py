"""Capture records what the model saw, once per call, and the store rebuilds it exactly.

The agent's model is a fake chat model that remembers every input it received;
each test runs a real LangGraph graph or ``create_agent`` agent and compares what
``ExperienceStore.model_calls`` rebuilds with those inputs.
"""

from __future__ import annotations

import json
import operator
import statistics
import time
import uuid
from typing import Annotated, Any, TypedDict

import pytest
from langchain.agents import create_agent
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, SystemMessage, messages_from_dict
from langchain_core.outputs import ChatGeneration, ChatResult
from langchain_core.tools import tool
from langchain_core.utils.function_calling import convert_to_openai_tool
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.graph import END, START, StateGraph
from langgraph.types import Send
from pydantic import Field

from agent_sleep.capture.callback import SleepCallbackHandler
from agent_sleep.capture.deferred import DEFER, ModelInput
from agent_sleep.capture.middleware import SleepMiddleware
from agent_sleep.cli.main import main
from agent_sleep.config import Settings
from agent_sleep.store import ExperienceStore
from tests.fakes import tool_call


class RecordingChatModel(BaseChatModel):
    """Replies in order and remembers (messages, tools, tool_choice) of every call, like a spy on the wire."""

    replies: list[AIMessage]
    seen: list[tuple[list[BaseMessage], Any, Any]] = Field(default_factory=list)

    @property
    def _llm_type(self) -> str:
        return "recording"

    def bind_tools(self, tools: Any, *, tool_choice: Any = None, **kwargs: Any) -> Any:
        if tool_choice is not None:
            kwargs["tool_choice"] = tool_choice
        return self.bind(tools=[convert_to_openai_tool(t) for t in tools], **kwargs)

    def _generate(self, messages: list[BaseMessage], stop: Any = None, run_manager: Any = None,
                  **kwargs: Any) -> ChatResult:
        self.seen.append((list(messages), kwargs.get("tools"), kwargs.get("tool_choice")))
        reply = self.replies[(len(self.seen) - 1) % len(self.replies)]
        return ChatResult(generations=[ChatGeneration(message=reply.model_copy())])


@tool
def lookup(order: str) -> str:
    """Look up an order."""
    return f"order {order} shipped"


@tool
def refund(order: str, amount: float) -> str:
    """Refund part of an order."""
    return f"refunded {amount} on {order}"


def _assert_replays(store: ExperienceStore, eid: str, model: RecordingChatModel) -> None:
    calls = store.model_calls(eid)
    assert len(calls) == len(model.seen)
    for call, (messages, tools, tool_choice) in zip(calls, model.seen, strict=True):
        assert call.complete
        assert call.langchain_messages() == messages
        assert call.tools == tools
        assert call.tool_choice == tool_choice


def _stored_bodies(store: ExperienceStore, eid: str) -> int:
    return sum(len(e.payload["model_input"]["blobs"]) for e in store.events(eid) if "model_input" in e.payload)


def test_callback_records_each_model_input_once(settings: Settings, store: ExperienceStore,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    model = RecordingChatModel(replies=[tool_call("lookup", {"order": "A1"}), AIMessage("It shipped.")])
    agent = create_agent(model, [lookup, refund], system_prompt="You are the helpdesk of ACME. Be brief.",
                         checkpointer=InMemorySaver())
    cb = SleepCallbackHandler("helpdesk", settings=settings)
    cfg = {"callbacks": [cb], "configurable": {"thread_id": "c1"}}
    first, second = uuid.uuid4(), uuid.uuid4()
    agent.invoke({"messages": [("user", "where is A1?")]}, config={**cfg, "run_id": first})
    agent.invoke({"messages": [("user", "and A2?")]}, config={**cfg, "run_id": second})
    assert cb.flush(10)

    # Events are unchanged; the replies carry the input of the call that produced them.
    eid = cb.episode_id_for(first)
    assert [e.kind for e in store.events(eid)] == ["user_message", "assistant_message", "tool_call", "tool_result",
                                                   "assistant_message"]
    _assert_replays(store, eid, RecordingChatModel(replies=[], seen=model.seen[:2]))
    calls = store.model_calls(eid)
    assert isinstance(calls[0].langchain_messages()[0], SystemMessage)
    assert [t["function"]["name"] for t in calls[0].tools or []] == ["lookup", "refund"]
    # Stored once per episode: system, user and the tool set; then only the model's reply and the tool result.
    assert _stored_bodies(store, eid) == 3 + 2
    second_call = store.events(eid)[4].payload["model_input"]
    assert len(second_call["messages"]) == 4 and len(second_call["blobs"]) == 2 and second_call["tools"] is not None

    # The second invocation of the thread is its own episode, and replays its whole history.
    eid2 = cb.episode_id_for(second)
    _assert_replays(store, eid2, RecordingChatModel(replies=[], seen=model.seen[2:]))
    assert len(store.model_calls(eid2)[0].messages) == 1 + 4 + 1  # system, the first run's 4 messages, "and A2?"

    # The CLI shows the same, for the id as a dashed UUID.
    capsys.readouterr()
    cli = ["--data-dir", str(settings.data_dir), "--db", settings.resolved_database_url, "episodes", "show", str(first)]
    assert main([*cli, "--model-calls", "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)["model_calls"]
    assert [messages_from_dict(c["messages"]) for c in shown] == [m for m, _, _ in model.seen[:2]]
    assert main([*cli, "--model-calls"]) == 0
    out = capsys.readouterr().out
    assert "model call answered at seq 4: 4 messages, 2 tools" in out and "You are the helpdesk of ACME" in out


def test_middleware_records_each_model_input(settings: Settings, store: ExperienceStore) -> None:
    model = RecordingChatModel(replies=[tool_call("lookup", {"order": "B2"}, "c9"), AIMessage("B2 shipped.")])
    mw = SleepMiddleware("helpdesk", settings=settings)
    agent = create_agent(model, [lookup], system_prompt="You are the helpdesk.", middleware=[mw])
    agent.invoke({"messages": [("user", "where is B2?")]})
    assert mw.flush(10)
    eid = mw.last_episode_id
    assert eid is not None
    assert [e.kind for e in store.events(eid)] == ["user_message", "assistant_message", "tool_call", "tool_result",
                                                   "assistant_message"]
    _assert_replays(store, eid, model)
    assert _stored_bodies(store, eid) == 3 + 2


def test_middleware_in_an_async_agent(settings: Settings, store: ExperienceStore) -> None:
    import asyncio

    model = RecordingChatModel(replies=[tool_call("lookup", {"order": "C3"}), AIMessage("C3 shipped.")])
    mw = SleepMiddleware("helpdesk", settings=settings)
    agent = create_agent(model, [lookup], system_prompt="You are the helpdesk.", middleware=[mw])
    asyncio.run(agent.ainvoke({"messages": [("user", "where is C3?")]}))
    assert mw.flush(10) and mw.last_episode_id is not None
    assert [e.kind for e in store.events(mw.last_episode_id)][2:4] == ["tool_call", "tool_result"]
    _assert_replays(store, mw.last_episode_id, model)


class Review(TypedDict):
    topics: list[str]
    drafts: Annotated[list[str], operator.add]
    verdict: str


def test_fan_out_graph_logs_input_output_and_every_call(settings: Settings, store: ExperienceStore) -> None:
    model = RecordingChatModel(replies=[AIMessage("draft")])

    def plan(state: Review) -> list[Send]:
        return [Send("write", {"topics": [t], "drafts": [], "verdict": ""}) for t in state["topics"]]

    def write(state: Review) -> dict[str, Any]:
        reply = model.invoke([SystemMessage("Write one line."), HumanMessage(state["topics"][0])])
        return {"drafts": [f"{state['topics'][0]}: {reply.content}"]}

    def judge(state: Review) -> dict[str, Any]:
        return {"verdict": f"{len(state['drafts'])} drafts"}

    g = StateGraph(Review)
    g.add_node("write", write)
    g.add_node("judge", judge)
    g.add_conditional_edges(START, plan, ["write"])
    g.add_edge("write", "judge")
    g.add_edge("judge", END)
    graph = g.compile()
    cb = SleepCallbackHandler("writer", settings=settings)
    run_id = uuid.uuid4()
    out = graph.invoke({"topics": ["refunds", "shipping", "returns"], "drafts": [], "verdict": ""},
                       config={"callbacks": [cb], "run_id": run_id})
    assert cb.flush(10)

    eid = cb.episode_id_for(run_id)
    events = store.events(eid)
    assert events[0].kind == "run_input" and events[-1].kind == "run_output"
    assert json.loads(events[0].content) == {"topics": ["refunds", "shipping", "returns"], "drafts": [], "verdict": ""}
    assert json.loads(events[-1].content) == out and out["verdict"] == "3 drafts"
    assert sorted(e.kind for e in events[1:-1]) == ["assistant_message"] * 3
    # The three parallel calls share the system prompt: stored once, each call rebuilt exactly.
    calls = store.model_calls(eid)
    assert sorted(c.langchain_messages()[1].content for c in calls) == ["refunds", "returns", "shipping"]
    assert sorted(str(c.langchain_messages()) for c in calls) == sorted(str(m) for m, _, _ in model.seen)
    assert _stored_bodies(store, eid) == 1 + 3
    assert store.get_episode(eid).status == "completed"


def test_model_input_costs_the_agent_thread_no_serialisation(settings: Settings) -> None:
    """The agent's thread queues references; hashing and JSON happen on the writer thread."""
    history: list[BaseMessage] = [SystemMessage("You are the helpdesk. " * 50)]
    for i in range(100):
        history += [HumanMessage(f"question {i} " * 20), AIMessage(f"answer {i} " * 20)]
    cb = SleepCallbackHandler("bench", settings=settings)
    writer = cb.recorder.writer
    reply = type("R", (), {"generations": [[ChatGeneration(message=AIMessage("ok"))]]})()
    root = uuid.uuid4()
    cb.on_chain_start(None, {"messages": []}, run_id=root)
    writer.flush(10)
    queued: list[dict[str, Any]] = []
    real_submit = writer.submit
    writer.submit = queued.append  # type: ignore[method-assign]
    try:
        samples = []
        for _ in range(200):
            run = uuid.uuid4()
            t0 = time.perf_counter()
            cb.on_chat_model_start(None, [history], run_id=run, parent_run_id=root,
                                   invocation_params={"tools": [convert_to_openai_tool(lookup)]})
            cb.on_llm_end(reply, run_id=run, parent_run_id=root)
            samples.append(time.perf_counter() - t0)
    finally:
        writer.submit = real_submit  # type: ignore[method-assign]
    op = queued[0]
    assert isinstance(op[DEFER]["model_input"], ModelInput) and op[DEFER]["model_input"].messages == history
    assert "model_input" not in op["payload"]
    # A 201-message input costs about what any other event costs (≈15–30 µs), not its size in JSON.
    assert statistics.median(samples) < 150e-6, statistics.median(samples)


class FailingChatModel(RecordingChatModel):
    def _generate(self, messages: list[BaseMessage], stop: Any = None, run_manager: Any = None,
                  **kwargs: Any) -> ChatResult:
        self.seen.append((list(messages), kwargs.get("tools"), kwargs.get("tool_choice")))
        raise TimeoutError("model endpoint timed out")


def test_failed_model_call_keeps_its_input(settings: Settings, store: ExperienceStore) -> None:
    for capture in ("callback", "middleware"):
        model = FailingChatModel(replies=[])
        mw = SleepMiddleware(capture, settings=settings)
        cb = SleepCallbackHandler(capture, settings=settings)
        agent = create_agent(model, [lookup], system_prompt="Be brief.",
                             middleware=[mw] if capture == "middleware" else [])
        with pytest.raises(TimeoutError):
            agent.invoke({"messages": [("user", "hello?")]},
                         config={"callbacks": [cb]} if capture == "callback" else {})
        assert cb.flush(10) and mw.flush(10)
        (ep,) = store.episodes(agent=capture)
        (call,) = store.model_calls(ep.id)
        assert call.kind == "error" and "model endpoint timed out" in call.reply
        assert call.langchain_messages() == model.seen[0][0] and call.tools == model.seen[0][1]


def test_model_input_over_the_cap_is_cut_and_marked(settings: Settings) -> None:
    import warnings

    from agent_sleep.capture.writer import CaptureWarning

    small = settings.model_copy(update={"max_payload_bytes": 4000})
    model = RecordingChatModel(replies=[AIMessage("ok")])
    cb = SleepCallbackHandler("capped", settings=small)
    agent = create_agent(model, [lookup])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        agent.invoke({"messages": [("user", "x" * 20_000)]}, config={"callbacks": [cb]})
        assert cb.flush(10)
    assert any(issubclass(w.category, CaptureWarning) and "cut to fit" in str(w.message) for w in caught)
    store = ExperienceStore(settings=small)
    (ep,) = store.episodes(agent="capped")
    (call,) = store.model_calls(ep.id)
    assert not call.complete and len(call.messages) == 1
    assert 0 < len(call.messages[0]["data"]["content"]) < 4000 and call.messages[0]["truncated_from_bytes"] > 20_000
    assert all(len(e.content.encode()) + len(json.dumps(e.payload)) <= 4000 for e in store.events(ep.id))
    store.close()
