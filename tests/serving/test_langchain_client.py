"""An agent that only knows the OpenAI API (``langchain_openai.ChatOpenAI``) runs a LangGraph tool loop over HTTP."""

from __future__ import annotations

from typing import Any

import pytest
from langchain_core.messages import AIMessage, ToolMessage
from langchain_core.tools import tool
from pydantic import BaseModel

from agent_sleep.models.loader import BaseModelHandle
from agent_sleep.serving import ServerThread
from tests.fakes import tool_loop_graph
from tests.serving.conftest import CALL, RecordingResolver, counter_versions, scripted

langchain_openai = pytest.importorskip("langchain_openai")


@tool
def get_weather(city: str) -> str:
    """Current weather for a city."""
    return f"sunny in {city}"


def _graph(llm: Any) -> Any:
    return tool_loop_graph(llm, [get_weather])


def _llm(server: ServerThread, **kw: Any) -> Any:
    return langchain_openai.ChatOpenAI(model="agent", base_url=server.base_url, api_key="unused", max_retries=0,
                                       timeout=30, **kw)


def test_chat_openai_tool_loop_in_a_stategraph(server: ServerThread, models: RecordingResolver,
                                               handle: BaseModelHandle) -> None:
    model = scripted(handle, CALL, "It is sunny in Paris.")
    models.models["agent"] = model
    models.versions["agent"] = counter_versions("helpdesk#")
    result = _graph(_llm(server)).invoke({"messages": [("user", "weather in Paris?")]})
    kinds = [type(m).__name__ for m in result["messages"]]
    assert kinds == ["HumanMessage", "AIMessage", "ToolMessage", "AIMessage"]
    call = result["messages"][1]
    assert [(c["name"], c["args"]) for c in call.tool_calls] == [("get_weather", {"city": "Paris"})]
    assert isinstance(result["messages"][2], ToolMessage) and result["messages"][2].content == "sunny in Paris"
    final = result["messages"][-1]
    assert isinstance(final, AIMessage) and final.content == "It is sunny in Paris."
    assert [m.response_metadata["system_fingerprint"] for m in (call, final)] == ["helpdesk#1", "helpdesk#2"]
    assert final.usage_metadata["output_tokens"] > 0
    assert "sunny in Paris" in model.prompts[-1]  # the tool result travelled back over HTTP


def test_chat_openai_streaming(server: ServerThread, models: RecordingResolver, handle: BaseModelHandle) -> None:
    models.models["agent"] = scripted(handle, "Streaming works fine.")
    chunks = list(_llm(server, stream_usage=True).stream("say something"))
    total = chunks[0]
    for chunk in chunks[1:]:
        total = total + chunk
    assert total.content == "Streaming works fine."
    assert len(chunks) > 2 and total.usage_metadata["output_tokens"] > 0


class Weather(BaseModel):
    """Weather in a city."""

    city: str
    temperature: int


@pytest.mark.parametrize("method", ["json_schema", "json_mode", "function_calling"])
def test_with_structured_output(server: ServerThread, models: RecordingResolver, handle: BaseModelHandle,
                                method: str) -> None:
    # json_schema (the default) sends response_format with the schema, json_mode a json_object,
    # function_calling a forced tool call: each comes back as a validated Weather.
    reply = '{"city": "Paris", "temperature": 21}'
    script = reply + "}]</tool_call>" if method == "function_calling" else reply
    model = scripted(handle, "It is sunny." if method != "function_calling" else "oops", script)
    models.models["agent"] = model
    structured = _llm(server).with_structured_output(Weather, method=method)
    assert structured.invoke("weather in Paris as JSON") == Weather(city="Paris", temperature=21)
    assert len(model.prompts) == 2  # the first, wrong reply was retried
