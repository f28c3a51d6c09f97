"""ChatLocalModel: invoke/stream, stop sequences, tool calls, metadata, threads, LangGraph."""

from __future__ import annotations

import asyncio
import json
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from langchain_core.messages import (
    AIMessage,
    AIMessageChunk,
    HumanMessage,
    SystemMessage,
    ToolMessage,
)
from langchain_core.tools import tool

from agent_sleep.errors import InvalidInputError
from agent_sleep.models.loader import BaseModelHandle, load_base_model
from agent_sleep.runtime.chat_model import (
    TOOL_CALL_OPEN,
    ChatLocalModel,
    parse_tool_calls,
    supports_tool_role,
    to_chat_dicts,
)
from tests.fakes import tool_loop_graph
from tests.helpers_models import (
    ScriptedChatModel,
    make_tiny_model_dir,
    make_tiny_tokenizer,
)

CALL = '<tool_call>{"name": "get_weather", "arguments": {"city": "Paris"}}</tool_call>'


@tool
def get_weather(city: str) -> str:
    """Current weather for a city."""
    return f"sunny in {city}"


@pytest.fixture(scope="module")
def handle(tmp_path_factory: pytest.TempPathFactory) -> BaseModelHandle:
    return load_base_model(str(make_tiny_model_dir(tmp_path_factory.mktemp("chat"))), device="cpu")


@pytest.fixture
def chat(handle: BaseModelHandle) -> ChatLocalModel:
    return ChatLocalModel(model=str(handle.path), handle=handle, max_new_tokens=24)


def scripted(handle: BaseModelHandle, *scripts: str, **kw: Any) -> ScriptedChatModel:
    return ScriptedChatModel(model="scripted", handle=handle, scripts=list(scripts), **kw)


def collect(chunks: Any) -> tuple[list[AIMessageChunk], AIMessageChunk]:
    chunks = list(chunks)
    total = chunks[0]
    for c in chunks[1:]:
        total = total + c
    return chunks, total


# ---------------------------------------------------------------- plain generation


def test_invoke_equals_stream_greedy(chat: ChatLocalModel) -> None:
    reply = chat.invoke("hello there")
    chunks, total = collect(chat.stream("hello there"))
    assert isinstance(reply, AIMessage)
    assert total.content == reply.content
    assert len(chunks) >= 2  # text arrives in pieces, metadata in the last chunk


def test_usage_and_response_metadata(chat: ChatLocalModel, handle: BaseModelHandle) -> None:
    reply = chat.invoke([SystemMessage("be brief"), HumanMessage("hello")])
    usage = reply.usage_metadata
    prompt = handle.tokenizer.apply_chat_template(
        [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hello"}],
        tokenize=False, add_generation_prompt=True,
    )
    assert usage["input_tokens"] == len(handle.tokenizer(prompt, add_special_tokens=False)["input_ids"])
    assert 1 <= usage["output_tokens"] <= 24
    assert usage["total_tokens"] == usage["input_tokens"] + usage["output_tokens"]
    meta = reply.response_metadata
    assert meta["content_hash"] == handle.content_hash
    assert meta["model"] == str(handle.path)
    assert meta["finish_reason"] in {"stop", "length"}
    assert meta["seconds"] >= 0


def test_length_and_eos_finish_reasons(handle: BaseModelHandle) -> None:
    long = scripted(handle, "one two three four five six", max_new_tokens=3)
    assert long.invoke("x").response_metadata["finish_reason"] == "length"
    short = scripted(handle, "done")
    reply = short.invoke("x")
    assert reply.content == "done" and reply.response_metadata["finish_reason"] == "stop"
    assert reply.usage_metadata["output_tokens"] == len(handle.tokenizer("done")["input_ids"]) + 1  # + EOS


def test_stop_sequences_cut_invoke_and_stream(handle: BaseModelHandle) -> None:
    model = scripted(handle, "The answer is 42. STOP and then more text")
    reply = model.invoke("q", stop=["STOP"])
    assert reply.content == "The answer is 42. "
    assert reply.response_metadata["finish_reason"] == "stop"
    chunks, total = collect(model.stream("q", stop=["STOP"]))
    assert total.content == reply.content
    assert not any("S" in c.content for c in chunks)  # a partial stop marker is never shown


def test_sampling_is_seeded(handle: BaseModelHandle) -> None:
    def sample(seed: int) -> str:
        return ChatLocalModel(handle=handle, temperature=1.0, top_p=0.9, seed=seed, max_new_tokens=16).invoke("hi").content

    assert sample(1) == sample(1)
    assert sample(1) != sample(2)


def test_per_call_overrides_and_unknown_kwargs(chat: ChatLocalModel) -> None:
    assert chat.invoke("hi", max_new_tokens=2).usage_metadata["output_tokens"] <= 2
    with pytest.warns(UserWarning, match="bogus"):
        chat.invoke("hi", max_new_tokens=1, bogus=1)


def test_prompt_too_long_is_rejected(chat: ChatLocalModel) -> None:
    with pytest.raises(InvalidInputError, match="context of 512"):
        chat.invoke("word " * 600)


def test_threads_and_async_share_one_model(chat: ChatLocalModel) -> None:
    expected = chat.invoke("same question").content
    with ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(lambda _: chat.invoke("same question").content, range(4)))
    assert answers == [expected] * 4

    async def both() -> tuple[str, str]:
        reply = await chat.ainvoke("same question")
        text = "".join([c.content async for c in chat.astream("same question")])
        return reply.content, text

    assert asyncio.run(both()) == (expected, expected)


def test_abandoned_stream_releases_the_model(chat: ChatLocalModel, handle: BaseModelHandle) -> None:
    for _ in chat.stream("hello there"):
        break
    assert not handle.lock.locked()
    assert chat.invoke("hello there", max_new_tokens=2).usage_metadata["output_tokens"] >= 1


def test_serialization_and_identity(chat: ChatLocalModel) -> None:
    from langchain_core.callbacks import BaseCallbackHandler

    class Invocations(BaseCallbackHandler):
        """What tracers (LangSmith, the capture callback) are told about the model on each call."""

        def __init__(self) -> None:
            self.params: list[dict[str, Any]] = []

        def on_chat_model_start(self, serialized: Any, messages: Any, **kwargs: Any) -> None:
            self.params.append(kwargs["invocation_params"])

    assert "handle" not in chat.model_dump()
    seen = Invocations()
    chat.invoke("hello there", max_new_tokens=2, config={"callbacks": [seen]})
    assert [(p["_type"], p["model"]) for p in seen.params] == [("agent-sleep-local", chat.model)]
    with pytest.raises(ValueError, match="BaseModelHandle"):
        ChatLocalModel(handle=object())


# ---------------------------------------------------------------- messages and templates


def test_message_conversion_with_and_without_tool_role() -> None:
    ai = AIMessage("", tool_calls=[{"name": "get_weather", "args": {"city": "Paris"}, "id": "c1"}])
    messages = [SystemMessage("sys"), HumanMessage("weather?"), ai, ToolMessage("sunny", tool_call_id="c1")]
    with_role = to_chat_dicts(messages, tool_role=True)
    assert [m["role"] for m in with_role] == ["system", "user", "assistant", "tool"]
    assert with_role[2]["content"] == CALL
    assert with_role[3]["name"] == "get_weather" and with_role[3]["tool_call_id"] == "c1"
    as_user = to_chat_dicts(messages, tool_role=False)
    assert as_user[3]["role"] == "user"
    assert "get_weather" in as_user[3]["content"] and "sunny" in as_user[3]["content"]


def test_tool_role_detection() -> None:
    assert not supports_tool_role(make_tiny_tokenizer())  # generic ChatML: never trained on tool turns
    aware = (
        "{% for m in messages %}{% if m['role'] == 'tool' %}<tool_response>{{ m['content'] }}</tool_response>"
        "{% else %}{{ m['role'] }}: {{ m['content'] }}{% endif %}{% endfor %}"
    )
    assert supports_tool_role(make_tiny_tokenizer(chat_template=aware))
    strict = "{% for m in messages %}{% if m['role'] == 'tool' %}{{ raise_exception('no tools') }}{% endif %}{% endfor %}"
    assert not supports_tool_role(make_tiny_tokenizer(chat_template=strict))


# ---------------------------------------------------------------- tool calls


def test_parse_tool_calls_variants() -> None:
    text, calls = parse_tool_calls(f"Let me check. {CALL}")
    assert text == "Let me check. "
    assert [(c["name"], c["args"]) for c in calls] == [("get_weather", {"city": "Paris"})]
    assert calls[0]["id"].startswith("call_")

    two = '<tool_call>{"name": "a", "parameters": {"x": 1}}</tool_call>\n<tool_call>{"name": "b", "arguments": "{\\"y\\": 2}"}</tool_call>'
    _, calls = parse_tool_calls(two)
    assert [(c["name"], c["args"]) for c in calls] == [("a", {"x": 1}), ("b", {"y": 2})]
    assert calls[0]["id"] != calls[1]["id"]

    _, calls = parse_tool_calls('<tool_call> {"name": "a", "arguments": {}} trailing junk </tool_call>')
    assert [c["name"] for c in calls] == ["a"]
    _, calls = parse_tool_calls('<tool_call>{"name": "cut", "arguments": {"q": 1}}')  # unclosed, JSON complete
    assert [c["name"] for c in calls] == ["cut"]

    broken = '<tool_call>{"name": "a", "arguments": {</tool_call>'
    assert parse_tool_calls(broken) == (broken, [])  # kept as text, not silently dropped
    assert parse_tool_calls("<tool_call>[1, 2]</tool_call>")[1] == []
    assert parse_tool_calls("no calls here") == ("no calls here", [])


def test_bound_tools_reach_the_prompt(handle: BaseModelHandle) -> None:
    model = scripted(handle, "ok")
    model.bind_tools([get_weather]).invoke("weather in Paris?")
    prompt = model.prompts[-1]
    assert '"name": "get_weather"' in prompt and '"city"' in prompt
    assert '<tool_call>{"name": "get_weather", "arguments": {"city": "..."}}</tool_call>' in prompt  # example
    assert "answer directly" in prompt

    model.bind_tools([get_weather], tool_choice="any").invoke("weather?")
    assert model.prompts[-1].endswith('<tool_call>{"name": "')  # prefilled, so the model must write a call
    model.bind_tools([get_weather], tool_choice="get_weather").invoke("weather?")
    assert model.prompts[-1].endswith('<tool_call>{"name": "get_weather", "arguments": ')
    model.bind_tools([get_weather], tool_choice="none").invoke("weather?")
    assert "get_weather" not in model.prompts[-1]
    with pytest.raises(InvalidInputError, match="tool_choice"):
        model.bind_tools([get_weather], tool_choice="nope")


def test_tool_calls_from_invoke_and_stream(handle: BaseModelHandle) -> None:
    model = scripted(handle, f"Checking. {CALL}").bind_tools([get_weather])
    reply = model.invoke("weather in Paris?")
    assert reply.content == "Checking. "
    assert [(c["name"], c["args"]) for c in reply.tool_calls] == [("get_weather", {"city": "Paris"})]
    assert reply.response_metadata["finish_reason"] == "tool_calls"

    chunks, total = collect(model.stream("weather in Paris?"))
    assert total.content == reply.content
    assert [(c["name"], c["args"]) for c in total.tool_calls] == [("get_weather", {"city": "Paris"})]
    assert not any(TOOL_CALL_OPEN[:2] in c.content for c in chunks)  # the raw block is never streamed


def test_required_call_completes_the_prefill(handle: BaseModelHandle) -> None:
    model = scripted(handle, 'get_weather", "arguments": {"city": "Oslo"}}</tool_call>')
    reply = model.bind_tools([get_weather], tool_choice="required").invoke("weather?")
    assert [(c["name"], c["args"]) for c in reply.tool_calls] == [("get_weather", {"city": "Oslo"})]


def test_forced_call_completes_the_prefill(handle: BaseModelHandle) -> None:
    # With tool_choice=<name> the model only writes the arguments and the closing tag.
    model = scripted(handle, '{"city": "Rome"}}</tool_call>').bind_tools([get_weather], tool_choice="get_weather")
    reply = model.invoke("weather?")
    assert [(c["name"], c["args"]) for c in reply.tool_calls] == [("get_weather", {"city": "Rome"})]
    assert reply.content == ""


def _agent_graph(model: Any) -> Any:
    return tool_loop_graph(model, [get_weather])


def test_tool_loop_in_a_langgraph_stategraph(handle: BaseModelHandle) -> None:
    model = scripted(handle, CALL, "It is sunny in Paris.")
    result = _agent_graph(model).invoke({"messages": [("user", "weather in Paris?")]})
    kinds = [type(m).__name__ for m in result["messages"]]
    assert kinds == ["HumanMessage", "AIMessage", "ToolMessage", "AIMessage"]
    assert result["messages"][2].content == "sunny in Paris"
    assert result["messages"][-1].content == "It is sunny in Paris."
    # The tool result went back to the model (as user text: the tiny template has no tool role).
    assert "sunny in Paris" in model.prompts[-1]


def test_streaming_messages_mode_in_langgraph(handle: BaseModelHandle) -> None:
    model = scripted(handle, CALL, "It is sunny.")
    pieces = [chunk for chunk, _meta in _agent_graph(model).stream(
        {"messages": [("user", "weather?")]}, stream_mode="messages"
    ) if isinstance(chunk, AIMessageChunk)]
    assert "".join(str(p.content) for p in pieces).endswith("It is sunny.")
    assert any(p.tool_call_chunks for p in pieces)


def test_create_agent(handle: BaseModelHandle) -> None:
    from langchain.agents import create_agent

    model = scripted(handle, CALL, "Sunny.")
    agent = create_agent(model, tools=[get_weather], system_prompt="You are a weather bot.")
    result = agent.invoke({"messages": [{"role": "user", "content": "weather in Paris?"}]})
    assert result["messages"][-1].content == "Sunny."
    assert any(isinstance(m, ToolMessage) and m.content == "sunny in Paris" for m in result["messages"])
    assert "You are a weather bot." in model.prompts[0] and "get_weather" in model.prompts[0]


# ---------------------------------------------------------------- the real default model


@pytest.mark.model
def test_real_model_knows_paris() -> None:
    reply = ChatLocalModel(max_new_tokens=32).invoke("What is the capital of France?")
    assert "Paris" in reply.content
    assert reply.usage_metadata["output_tokens"] <= 32
    assert len(reply.response_metadata["content_hash"]) == 64
    assert json.dumps(reply.response_metadata)  # plain JSON, ready for the experience log
