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
from agent_sleep.runtime.chat_format import check_args, has_markup, render_prompt
from agent_sleep.runtime.chat_model import (
    FALLBACK_REPLY,
    TOOL_CALL_OPEN,
    ChatLocalModel,
    parse_reply,
    supports_tools,
    to_chat_dicts,
)
from tests.fakes import tool_loop_graph
from tests.helpers_models import (
    ScriptedChatModel,
    make_tiny_model_dir,
    make_tiny_tokenizer,
)

CALL = '<tool_call>{"name": "get_weather", "arguments": {"city": "Paris"}}</tool_call>'
LIST_CALL = '<tool_call>[{"name": "get_weather", "arguments": {"city": "Paris"}}]</tool_call>'
# A template that renders tools itself (Qwen/Hermes style), for the native path.
NATIVE = (
    "{% if tools %}<|im_start|>system\n<tools>{% for t in tools %}{{ t | tojson }}{% endfor %}</tools><|im_end|>\n"
    "{% endif %}{% for m in messages %}<|im_start|>{{ m['role'] }}\n{% if m.get('tool_calls') %}"
    "{% for c in m['tool_calls'] %}<tool_call>{{ c['function'] | tojson }}</tool_call>{% endfor %}"
    "{% else %}{{ m['content'] }}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Current weather for a city.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}


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
    with pytest.raises(InvalidInputError, match="context of 1024"):
        chat.invoke("word " * 1200)


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


def _conversation() -> list[Any]:
    ai = AIMessage("", tool_calls=[{"name": "get_weather", "args": {"city": "Paris"}, "id": "call_9f8e7d6c"}])
    return [SystemMessage("sys"), HumanMessage("weather?"), ai, ToolMessage("sunny", tool_call_id="call_9f8e7d6c")]


def test_history_without_native_tools_folds_calls_into_results() -> None:
    chat = to_chat_dicts(_conversation())
    # The call-only assistant turn is gone: its call is told with its result, in words.
    assert [m["role"] for m in chat] == ["system", "user", "user"]
    assert chat[2]["content"] == 'Tool get_weather was called with {"city": "Paris"} and returned:\nsunny'
    rendered = json.dumps(chat)
    assert "call_9f8e7d6c" not in rendered and not has_markup(rendered)
    assert to_chat_dicts([ToolMessage("r", tool_call_id="x", name="t")])[0]["content"] == "Tool t returned:\nr"
    spoken = AIMessage("Let me look.", tool_calls=[{"name": "get_weather", "args": {}, "id": "c2"}])
    assert to_chat_dicts([spoken]) == [{"role": "assistant", "content": "Let me look."}]


def test_history_with_native_tools_keeps_structure_but_no_ids() -> None:
    chat = to_chat_dicts(_conversation(), native_tools=True)
    assert [m["role"] for m in chat] == ["system", "user", "assistant", "tool"]
    assert chat[2]["tool_calls"] == [{"type": "function", "function": {"name": "get_weather",
                                                                      "arguments": {"city": "Paris"}}}]
    assert chat[3] == {"role": "tool", "name": "get_weather", "content": "sunny"}
    assert "call_9f8e7d6c" not in json.dumps(chat)


def test_native_tool_detection() -> None:
    assert not supports_tools(make_tiny_tokenizer())  # ChatML, like SmolLM2's: ignores tools=
    assert supports_tools(make_tiny_tokenizer(chat_template=NATIVE))
    strict = "{% if tools %}{{ raise_exception('no tools') }}{% endif %}{{ messages[0]['content'] }}"
    assert not supports_tools(make_tiny_tokenizer(chat_template=strict))


def test_prompts_carry_no_ids_on_either_path() -> None:
    for template, tool_turn in [(None, 'Tool get_weather was called with {"city": "Paris"}'),
                                (NATIVE, "<|im_start|>tool\nsunny")]:
        tok = make_tiny_tokenizer(chat_template=template) if template else make_tiny_tokenizer()
        prompt, prefill = render_prompt(tok, _conversation(), [WEATHER], "auto")
        assert '"name": "get_weather"' in prompt and tool_turn in prompt
        assert "call_9f8e7d6c" not in prompt and prefill == ""
    native, prefill = render_prompt(make_tiny_tokenizer(chat_template=NATIVE), [HumanMessage("hi")], [WEATHER],
                                    "get_weather")
    assert native.startswith("<|im_start|>system\n<tools>") and "You have access" not in native
    assert prefill == '<tool_call>{"name": "get_weather", "arguments": '


# ---------------------------------------------------------------- tool calls


def test_parse_reply_accepts_calls_in_both_shapes() -> None:
    tools = [WEATHER, {"type": "function", "function": {"name": "b", "parameters": {
        "type": "object", "properties": {"y": {"type": "integer"}}}}}]
    for block in (CALL, LIST_CALL):
        reply = parse_reply(f"Let me check. {block}", tools)
        assert reply.errors == [] and reply.text == "Let me check. "
        assert [(c["name"], c["args"]) for c in reply.calls] == [("get_weather", {"city": "Paris"})]
        assert reply.calls[0]["id"].startswith("call_")
    two = ('<tool_call>[{"name": "get_weather", "parameters": {"city": "Oslo"}}, '
           '{"name": "b", "arguments": "{\\"y\\": 2}"}]</tool_call>')
    reply = parse_reply(two, tools)
    assert [(c["name"], c["args"]) for c in reply.calls] == [("get_weather", {"city": "Oslo"}), ("b", {"y": 2})]
    assert reply.calls[0]["id"] != reply.calls[1]["id"]
    assert parse_reply("<tool_call>[]</tool_call>Sunny.", tools) == parse_reply("Sunny.", tools)  # [] = no call
    assert parse_reply("no calls here", tools).errors == []


@pytest.mark.parametrize(("reply", "error"), [
    ('<tool_call>{"name": "get_weather", "arguments": {</tool_call>', "not valid JSON"),
    ('<tool_call>{"name": "get_weather", "arguments": {}} junk</tool_call>', "not valid JSON"),
    ('<tool_call>{"name": "get_weather", "arguments": {"city": "Paris"}}', "unterminated tool call"),
    ('<tool_call>{"name": "get_wether", "arguments": {"city": "Paris"}}</tool_call>', "unknown tool 'get_wether'"),
    ('<tool_call>{"name": "get_weather", "arguments": {}}</tool_call>', "misses required 'city'"),
    ('<tool_call>{"name": "get_weather", "arguments": {"city": 7}}</tool_call>', "arguments.city should be string"),
    ('<tool_call>{"arguments": {"city": "Paris"}}</tool_call>', "has no name"),
    ('<tool_call>[1, 2]</tool_call>', "has no name"),
    ('<tool_call_f10cada1>{"name": "get_weather"}</tool_call_f10cada1>', "stray tool markup '<tool_call_f10cada1>'"),
    ("The order was shipped.</tool_call>", "stray tool markup"),
])
def test_parse_reply_rejects_malformed_calls(reply: str, error: str) -> None:
    parsed = parse_reply(reply, [WEATHER])
    assert any(error in e for e in parsed.errors), parsed.errors


def test_any_call_is_an_error_without_tools() -> None:
    assert parse_reply(CALL).errors == ["unknown tool 'get_weather' (no tools are bound)"]


def test_check_args_follows_the_schema() -> None:
    schema = {"type": "object", "additionalProperties": False, "required": ["n"], "properties": {
        "n": {"type": "integer"}, "tags": {"type": "array", "items": {"type": "string"}},
        "mode": {"enum": ["fast", "slow"]}, "maybe": {"anyOf": [{"type": "string"}, {"type": "null"}]}}}
    assert check_args({"n": 1, "tags": ["a"], "mode": "fast", "maybe": None}, schema) == []
    assert check_args({"n": True}, schema) == ["arguments.n should be integer, got true"]
    assert check_args({"n": 1, "tags": ["a", 2]}, schema) == ["arguments.tags[1] should be string, got 2"]
    assert check_args({"n": 1, "mode": "medium"}, schema)[0].startswith("arguments.mode should be one of")
    assert check_args({"n": 1, "maybe": 3}, schema) == ["arguments.maybe matches none of the allowed schemas"]
    assert check_args({"n": 1, "extra": 0}, schema) == ["arguments has unknown 'extra'"]
    assert check_args({"x": 1}, {"type": "object", "properties": {}}) == []  # extra keys allowed unless forbidden


def test_bound_tools_reach_the_prompt(handle: BaseModelHandle) -> None:
    model = scripted(handle, "ok")
    model.bind_tools([get_weather]).invoke("weather in Paris?")
    prompt = model.prompts[-1]
    # SmolLM2's function-calling format: schemas in <tools>, calls as a JSON list in <tool_call>.
    assert '<tools>[{"type": "function", "function": {"name": "get_weather"' in prompt and '"city"' in prompt
    assert '<tool_call>[{"name": "get_weather", "arguments": {"city": "..."}}]</tool_call>' in prompt  # example
    assert "answer directly" in prompt

    model.bind_tools([get_weather], tool_choice="any").invoke("weather?")
    assert model.prompts[-1].endswith('<tool_call>[{"name": "')  # prefilled, so the model must write a call
    model.bind_tools([get_weather], tool_choice="get_weather").invoke("weather?")
    assert model.prompts[-1].endswith('<tool_call>[{"name": "get_weather", "arguments": ')
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
    assert reply.response_metadata["attempts"] == 1

    chunks, total = collect(model.stream("weather in Paris?"))
    assert total.content == reply.content
    assert [(c["name"], c["args"]) for c in total.tool_calls] == [("get_weather", {"city": "Paris"})]
    assert not any(TOOL_CALL_OPEN[:2] in c.content for c in chunks)  # the raw block is never streamed


def test_required_call_completes_the_prefill(handle: BaseModelHandle) -> None:
    model = scripted(handle, 'get_weather", "arguments": {"city": "Oslo"}}]</tool_call>')
    reply = model.bind_tools([get_weather], tool_choice="required").invoke("weather?")
    assert [(c["name"], c["args"]) for c in reply.tool_calls] == [("get_weather", {"city": "Oslo"})]


def test_forced_call_completes_the_prefill(handle: BaseModelHandle) -> None:
    # With tool_choice=<name> the model only writes the arguments and the closing tag; the call is the answer.
    model = scripted(handle, '{"city": "Rome"}}]</tool_call> and some rambling')
    model = model.bind_tools([get_weather], tool_choice="get_weather")
    reply = model.invoke("weather?")
    assert [(c["name"], c["args"]) for c in reply.tool_calls] == [("get_weather", {"city": "Rome"})]
    assert reply.content == ""


# ---------------------------------------------------------------- malformed replies


def test_malformed_call_is_resampled(handle: BaseModelHandle) -> None:
    bad = '<tool_call>{"name": "get_weather", "arguments": {"town": "Paris"}}</tool_call>'
    model = scripted(handle, bad, CALL)
    reply = model.bind_tools([get_weather]).invoke("weather in Paris?")
    assert [(c["name"], c["args"]) for c in reply.tool_calls] == [("get_weather", {"city": "Paris"})]
    assert reply.response_metadata["attempts"] == 2 and "invalid_output" not in reply.response_metadata
    assert model.prompts[0] == model.prompts[1]  # same prompt, resampled; nothing of the bad reply leaks in
    assert reply.usage_metadata["input_tokens"] == 2 * len(handle.tokenizer(model.prompts[0])["input_ids"])


def test_markup_without_tools_is_resampled(handle: BaseModelHandle) -> None:
    # What SmolLM2 did in the old demo: echo a tool-call tag made from an id it saw in the prompt.
    model = scripted(handle, "<tool_call_f10cada1>delayed</tool_call_f10cada1>", "It is sunny in Paris.")
    reply = model.invoke("weather?")
    assert reply.content == "It is sunny in Paris." and reply.response_metadata["attempts"] == 2


def test_retries_continue_after_streamed_text(handle: BaseModelHandle) -> None:
    scripts = ("Checking now. <tool_call>{oops}</tool_call>", "sunny.")
    model = scripted(handle, *scripts)
    chunks, total = collect(model.stream("weather?"))
    assert total.content == "Checking now. sunny."
    assert model.prompts[1].endswith("<|im_start|>assistant\nChecking now. ")  # resumed, not restarted
    assert scripted(handle, *scripts).invoke("weather?").content == total.content  # invoke = sum of the stream


def test_giving_up_says_so_without_markup(handle: BaseModelHandle) -> None:
    bad = '<tool_call>{"name": "get_weather", "arguments": {"city": "Paris"}'  # never closed
    model = scripted(handle, bad)
    reply = model.bind_tools([get_weather]).invoke("weather?")
    assert reply.content == FALLBACK_REPLY and reply.tool_calls == []
    meta = reply.response_metadata
    assert meta["finish_reason"] == "invalid_output" and meta["attempts"] == 3  # 1 + retries=2
    assert len(meta["invalid_output"]["errors"]) == 3 and "unterminated" in meta["invalid_output"]["errors"][0]
    assert meta["invalid_output"]["last_output"] == bad
    chunks, total = collect(scripted(handle, "Let me see. " + bad, bad).bind_tools([get_weather]).stream("weather?"))
    assert total.content == f"Let me see. {FALLBACK_REPLY}" and not any(has_markup(c.content) for c in chunks)
    assert scripted(handle, bad, retries=0).bind_tools([get_weather]).invoke("w").response_metadata["attempts"] == 1


def test_retries_sample_with_their_own_seeds(chat: ChatLocalModel) -> None:
    params = chat._split_kwargs({})[0]
    first, second = chat._retry_params(params, 1), chat._retry_params(params, 2)
    assert first.temperature > 0 and (first.seed, second.seed) == (1, 2)  # greedy would repeat the bad reply
    sampled = chat._split_kwargs({"temperature": 0.9})[0]
    assert chat._retry_params(sampled, 1) == sampled  # unseeded sampling stays unseeded


def _agent_graph(model: Any) -> Any:
    return tool_loop_graph(model, [get_weather])


def test_tool_loop_in_a_langgraph_stategraph(handle: BaseModelHandle) -> None:
    model = scripted(handle, CALL, "It is sunny in Paris.")
    result = _agent_graph(model).invoke({"messages": [("user", "weather in Paris?")]})
    kinds = [type(m).__name__ for m in result["messages"]]
    assert kinds == ["HumanMessage", "AIMessage", "ToolMessage", "AIMessage"]
    assert result["messages"][2].content == "sunny in Paris"
    assert result["messages"][-1].content == "It is sunny in Paris."
    # The tool result went back to the model (as user text: the tiny template has no tool role), without its id.
    assert 'Tool get_weather was called with {"city": "Paris"} and returned:\nsunny in Paris' in model.prompts[-1]
    assert result["messages"][1].tool_calls[0]["id"] not in model.prompts[-1]


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


@pytest.mark.model
def test_real_model_tool_replies_are_checked() -> None:
    model = ChatLocalModel(max_new_tokens=48)
    for choice in ("auto", "required", "get_weather"):
        reply = model.bind_tools([get_weather], tool_choice=choice).invoke("What is the weather in Paris?")
        assert not has_markup(reply.content), reply.content
        # Whatever the 135M model writes, only well-formed calls of a bound tool get through.
        assert all(c["name"] == "get_weather" and isinstance(c["args"].get("city"), str) for c in reply.tool_calls)
        if reply.response_metadata["finish_reason"] == "invalid_output":
            assert reply.content == FALLBACK_REPLY and not reply.tool_calls
