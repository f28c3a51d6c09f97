"""Replies with a required shape over HTTP: ``response_format`` JSON / JSON schema, and forced ``tool_choice``.

A shaped reply is checked and retried with the reason it was wrong; the client
gets the right shape or a clear error, never markup or half-JSON in ``content``.
"""

from __future__ import annotations

import json
from typing import Any

import httpx
import openai
import pytest

from agent_sleep.models.loader import BaseModelHandle
from agent_sleep.serving import ServerThread
from tests.serving.conftest import WEATHER_TOOL, RecordingResolver, scripted

USER = [{"role": "user", "content": "Weather in Paris as JSON?"}]
WEATHER_SCHEMA = {
    "type": "object",
    "properties": {"city": {"type": "string"}, "temperature": {"type": "integer"}},
    "required": ["city", "temperature"],
}
JSON_SCHEMA = {"type": "json_schema", "json_schema": {"name": "weather", "schema": WEATHER_SCHEMA, "strict": True}}
FORCED = {"type": "function", "function": {"name": "get_weather"}}
GOOD = '{"city": "Paris", "temperature": 21}'


def stream_text(stream: Any) -> tuple[str, list[Any]]:
    chunks = list(stream)
    return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices), chunks


# ---------------------------------------------------------------- response_format


def test_json_schema_reply_is_checked_and_asked_for(client: openai.OpenAI, models: RecordingResolver,
                                                    handle: BaseModelHandle) -> None:
    model = scripted(handle, GOOD)
    models.models["s"] = model
    reply = client.chat.completions.create(model="s", messages=USER, response_format=JSON_SCHEMA)
    assert json.loads(reply.choices[0].message.content) == {"city": "Paris", "temperature": 21}
    assert reply.choices[0].finish_reason == "stop"
    assert '"temperature":{"type":"integer"}' in model.prompts[-1]  # the schema reached the prompt
    assert len(model.prompts) == 1


def test_a_wrong_reply_is_retried_with_the_reason(client: openai.OpenAI, models: RecordingResolver,
                                                  handle: BaseModelHandle) -> None:
    model = scripted(handle, "Sure, it is sunny.", '{"city": "Paris", "temperature": "warm"}', GOOD)
    models.models["s"] = model
    reply = client.chat.completions.create(model="s", messages=USER, response_format=JSON_SCHEMA)
    assert json.loads(reply.choices[0].message.content) == {"city": "Paris", "temperature": 21}
    assert len(model.prompts) == 3
    assert "not valid JSON" in model.prompts[1] and "Sure, it is sunny." in model.prompts[1]
    assert "$.temperature: expected integer, got string" in model.prompts[2]
    one_attempt = len(handle.tokenizer(GOOD, add_special_tokens=False)["input_ids"]) + 1  # + EOS
    assert reply.usage.completion_tokens > one_attempt  # usage counts every attempt


def test_still_wrong_after_the_last_attempt_is_422(client: openai.OpenAI, models: RecordingResolver,
                                                   handle: BaseModelHandle) -> None:
    model = scripted(handle, '{"city": "Paris"}')
    models.models["s"] = model
    for stream in (False, True):
        with pytest.raises(openai.UnprocessableEntityError) as info:
            client.chat.completions.create(model="s", messages=USER, response_format=JSON_SCHEMA, stream=stream)
        error = info.value.body
        assert error["param"] == "response_format" and error["code"] == "invalid_model_output"
        assert "3 attempt(s)" in error["message"] and "missing required property 'temperature'" in error["message"]
    assert len(model.prompts) == 6  # three attempts per request, no more
    assert models.released.count(("s", "v0")) == 2


def test_json_object_accepts_fenced_json_and_rejects_non_objects(client: openai.OpenAI, models: RecordingResolver,
                                                                 handle: BaseModelHandle) -> None:
    models.models["s"] = scripted(handle, 'Here: ```json\n{"a": [1, 2]}\n```')
    reply = client.chat.completions.create(model="s", messages=USER, response_format={"type": "json_object"})
    assert reply.choices[0].message.content == '{"a": [1, 2]}'  # only the JSON, ready for json.loads
    models.models["s"] = scripted(handle, "[1, 2]")
    with pytest.raises(openai.UnprocessableEntityError, match="not an object"):
        client.chat.completions.create(model="s", messages=USER, response_format={"type": "json_object"})


def test_streamed_json_reply_arrives_checked(client: openai.OpenAI, models: RecordingResolver,
                                             handle: BaseModelHandle) -> None:
    models.models["s"] = scripted(handle, "no JSON here", GOOD)
    text, chunks = stream_text(client.chat.completions.create(
        model="s", messages=USER, response_format=JSON_SCHEMA, stream=True, stream_options={"include_usage": True}))
    assert json.loads(text) == {"city": "Paris", "temperature": 21}
    assert "no JSON" not in text  # the rejected first attempt never reached the client
    assert next(c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason) == "stop"
    assert chunks[-1].usage.completion_tokens > 0


def test_json_cut_off_by_max_tokens_is_400_naming_it(client: openai.OpenAI, models: RecordingResolver,
                                                     handle: BaseModelHandle) -> None:
    model = scripted(handle, GOOD)
    models.models["s"] = model
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model="s", messages=USER, response_format=JSON_SCHEMA, max_tokens=4)
    assert info.value.body["param"] == "max_tokens" and info.value.body["code"] == "max_tokens_too_small"
    assert "raise max_tokens" in info.value.body["message"]
    assert len(model.prompts) == 1  # the same budget would cut a retry too: not retried


# ---------------------------------------------------------------- forced tool_choice


@pytest.mark.parametrize("stream", [False, True])
def test_forced_tool_call_cut_off_is_an_error_not_markup(server: ServerThread, models: RecordingResolver,
                                                         handle: BaseModelHandle, stream: bool) -> None:
    models.models["s"] = scripted(handle, '{"city": "Rome"}}]</tool_call>')
    body = {"model": "s", "messages": USER, "tools": [WEATHER_TOOL], "tool_choice": FORCED, "max_tokens": 3,
            "stream": stream}
    response = httpx.post(f"{server.base_url}/chat/completions", json=body, timeout=30)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] == "max_tokens" and "cut off" in error["message"]
    assert "<tool_call>" not in response.text


def test_forced_tool_call_is_parsed_streamed_or_not(client: openai.OpenAI, models: RecordingResolver,
                                                    handle: BaseModelHandle) -> None:
    models.models["s"] = scripted(handle, '{"city": "Rome"}}]</tool_call>')
    forced = client.chat.completions.create(model="s", messages=USER, tools=[WEATHER_TOOL], tool_choice=FORCED)
    assert json.loads(forced.choices[0].message.tool_calls[0].function.arguments) == {"city": "Rome"}
    _, chunks = stream_text(client.chat.completions.create(
        model="s", messages=USER, tools=[WEATHER_TOOL], tool_choice=FORCED, stream=True))
    deltas = [tc for c in chunks if c.choices for tc in (c.choices[0].delta.tool_calls or [])]
    assert deltas[0].function.name == "get_weather"
    assert json.loads("".join(d.function.arguments or "" for d in deltas)) == {"city": "Rome"}


def test_required_tool_choice_retries_then_fails_without_markup(client: openai.OpenAI, models: RecordingResolver,
                                                                handle: BaseModelHandle) -> None:
    # 'required' prefills '<tool_call>{"name": "': a reply that is no call name leaves broken markup.
    model = scripted(handle, "hello there", 'get_weather", "arguments": {"city": "Oslo"}}]</tool_call>')
    models.models["s"] = model
    reply = client.chat.completions.create(model="s", messages=USER, tools=[WEATHER_TOOL], tool_choice="required")
    assert json.loads(reply.choices[0].message.tool_calls[0].function.arguments) == {"city": "Oslo"}
    # The chat model resamples the broken reply itself (ChatLocalModel.retries) before the server has to ask again.
    assert reply.choices[0].message.content is None and len(model.prompts) == 2

    models.models["s"] = scripted(handle, "hello there")
    with pytest.raises(openai.UnprocessableEntityError) as info:
        client.chat.completions.create(model="s", messages=USER, tools=[WEATHER_TOOL], tool_choice="required")
    assert info.value.body["param"] == "tool_choice" and "<tool_call>" not in info.value.body["message"]
