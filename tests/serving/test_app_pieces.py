"""The pieces of the HTTP app used alone: auth, error mapping, request resolution, the stream pump and SSE builder."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from langchain_core.language_models.fake_chat_models import GenericFakeChatModel
from langchain_core.messages import AIMessage, AIMessageChunk

from agent_sleep.errors import (
    AgentSleepError,
    APIError,
    InvalidInputError,
    ModelError,
    NotFoundError,
    RequestError,
    ServingError,
)
from agent_sleep.models.loader import BaseModelHandle
from agent_sleep.serving import ResolvedChat
from agent_sleep.serving.auth import ALL
from agent_sleep.serving.app import ServingState, list_models, prepare_chat
from agent_sleep.serving.auth import check_api_key
from agent_sleep.serving.generation import CANCELLED, CLIENT_GONE, StreamPump, complete_chat, sse_events
from agent_sleep.serving.http_errors import as_api_error
from agent_sleep.serving.openai_format import ChatCompletionRequest, ChunkWriter
from tests.serving.conftest import WEATHER_TOOL, RecordingResolver, scripted

USER = [{"role": "user", "content": "hello there"}]


def request(**fields: Any) -> ChatCompletionRequest:
    return ChatCompletionRequest.model_validate({"model": "tiny", "messages": USER, **fields})


def api_error(fn: Callable[[], Any]) -> APIError:
    with pytest.raises(APIError) as info:
        fn()
    return info.value


# ---------------------------------------------------------------- errors and auth


def test_serving_errors_belong_to_the_tree() -> None:
    assert issubclass(ServingError, AgentSleepError)
    assert issubclass(APIError, ServingError) and issubclass(RequestError, ServingError)
    assert issubclass(RequestError, InvalidInputError)  # still a ValueError-like bad input
    from agent_sleep.serving import APIError as exported
    from agent_sleep.serving.openai_format import RequestError as from_format

    assert exported is APIError and from_format is RequestError  # old import paths keep working


def test_as_api_error_maps_each_kind_of_error() -> None:
    bad = as_api_error(RequestError("n must be 1", "n", code="bad_n"))
    assert (bad.status, bad.param, bad.code, bad.type) == (400, "n", "bad_n", "invalid_request_error")
    missing = as_api_error(NotFoundError("model 'x' does not exist"))
    assert (missing.status, missing.code) == (404, "not_found")
    assert as_api_error(InvalidInputError("prompt does not fit")).status == 400
    ours = as_api_error(ModelError("weights missing"))
    assert (ours.status, ours.type, ours.message) == (500, "server_error", "ModelError: weights missing")
    other = as_api_error(RuntimeError("secret detail"))
    assert (other.status, other.message) == (500, "internal server error (RuntimeError)")  # no detail leaks
    same = APIError(418, "teapot")
    assert as_api_error(same) is same
    assert same.body() == {"error": {"message": "teapot", "type": "invalid_request_error", "param": None,
                                     "code": None}}


def test_check_api_key() -> None:
    check_api_key("", None)  # no key configured: everything passes
    check_api_key("Bearer anything", None)
    check_api_key("Bearer s3cret", "s3cret")
    check_api_key("bearer  s3cret ", "s3cret")  # scheme is case-insensitive, spaces around the token ignored
    for header in ("Bearer wrong", "Basic s3cret", "s3cret", "Bearer"):
        error = api_error(lambda h=header: check_api_key(h, "s3cret"))  # type: ignore[misc]
        assert error.status == 401 and error.message == "incorrect API key provided", header
        assert error.code == "invalid_api_key" and error.headers == {"WWW-Authenticate": "Bearer"}
    assert "missing API key" in api_error(lambda: check_api_key("", "s3cret")).message


# ---------------------------------------------------------------- state and routes


def test_serving_state_checks_its_arguments_and_serves_a_route(models: RecordingResolver) -> None:
    with pytest.raises(InvalidInputError, match="list_models"):
        ServingState.create(object())  # type: ignore[arg-type]
    with pytest.raises(InvalidInputError, match="max_workers"):
        ServingState.create(models, max_workers=0)
    state = ServingState.create(models, api_key="k", max_workers=1)
    try:
        assert state.keys is not None and state.keys.authorize("Bearer k") is ALL and state.started > 0
        body = asyncio.run(list_models(state, ALL))  # a route is a plain coroutine function
        assert body == {"object": "list", "data": [
            {"id": "tiny", "object": "model", "created": state.started, "owned_by": "agent-sleep"}]}
    finally:
        state.executor.shutdown()


# ---------------------------------------------------------------- request → ChatCall


def test_prepare_chat_checks_the_body_before_resolving(models: RecordingResolver) -> None:
    for change, param in [({"n": 2}, "n"), ({"messages": [{"role": "wizard", "content": "x"}]}, "messages[0].role"),
                          ({"tool_choice": "required"}, "tool_choice")]:
        error = api_error(lambda c=change: asyncio.run(prepare_chat(models, request(**c))))  # type: ignore[misc]
        assert error.status == 400 and error.param == param
    assert models.resolved == []  # nothing was pinned, so nothing needs releasing


def test_prepare_chat_pins_the_model_and_releases_once(models: RecordingResolver) -> None:
    body = request(max_tokens=3, temperature=0.5, stop=["x", ""], stream=True, stream_options={"include_usage": True},
                   tools=[WEATHER_TOOL])
    call = asyncio.run(prepare_chat(models, body))
    assert call.name == "tiny" and call.meta["model"] == "tiny" and call.meta["fingerprint"] == "tiny-v1"
    assert call.meta["completion_id"].startswith("chatcmpl-")
    assert call.kwargs == {"max_new_tokens": 3, "temperature": 0.5}
    assert call.stop == ["x"] and call.stream and call.include_usage
    assert [t["function"]["name"] for t in call.tools] == ["get_weather"] and call.tool_choice == "auto"
    assert models.resolved == [("tiny", "tiny-v1")] and models.released == []
    call.release()
    call.release()
    assert models.released == [("tiny", "tiny-v1")]


class _Resolver:
    """A resolver whose ``resolve`` does whatever the test says."""

    def __init__(self, resolve: Callable[[str], Any]) -> None:
        self.resolve = resolve

    def list_models(self) -> list[str]:
        return []


def _raise(exc: Exception) -> Callable[[str], Any]:
    def resolve(name: str) -> Any:
        raise exc

    return resolve


def test_resolution_failures_become_http_errors() -> None:
    def prepare(resolve: Callable[[str], Any]) -> APIError:
        return api_error(lambda: asyncio.run(prepare_chat(_Resolver(resolve), request())))

    unknown = prepare(_raise(NotFoundError("model 'tiny' does not exist")))
    assert (unknown.status, unknown.param, unknown.code) == (404, "model", "model_not_found")
    assert unknown.message == "model 'tiny' does not exist"
    assert prepare(_raise(InvalidInputError("bad pin"))).status == 400
    broken = prepare(_raise(RuntimeError("db down")))
    assert (broken.status, broken.type) == (500, "server_error")
    wrong = prepare(lambda name: "not a ResolvedChat")
    assert wrong.status == 500 and "resolver returned str" in wrong.message


def test_resolved_name_overrides_the_requested_one(models: RecordingResolver) -> None:
    chat = models.models["tiny"]
    resolver = _Resolver(lambda name: ResolvedChat(model=chat, version="v9", name="tiny-renamed"))
    call = asyncio.run(prepare_chat(resolver, request()))
    assert call.name == call.meta["model"] == "tiny-renamed"


# ---------------------------------------------------------------- completing


def _complete(resolver: Any, body: ChatCompletionRequest) -> dict[str, Any]:
    """prepare_chat, start on a one-worker state, complete_chat: the non-streamed route without HTTP."""
    state = ServingState.create(resolver, max_workers=1)

    async def run() -> dict[str, Any]:
        call = await prepare_chat(resolver, body)
        return await complete_chat(state.start(call), call)

    try:
        return asyncio.run(run())
    finally:
        state.executor.shutdown()
        assert not state.active  # every finished generation left the state's running set


def test_complete_chat_answers_and_releases_once(models: RecordingResolver, handle: BaseModelHandle) -> None:
    models.models["s"] = scripted(handle, "Hello.")
    body = _complete(models, request(model="s"))
    assert body["object"] == "chat.completion" and body["model"] == "s" and body["system_fingerprint"] == "v0"
    assert body["choices"][0]["message"]["content"] == "Hello." and body["choices"][0]["finish_reason"] == "stop"
    assert models.released == [("s", "v0")]


def test_a_model_without_tools_is_400_naming_tools(models: RecordingResolver) -> None:
    models.models["plain"] = GenericFakeChatModel(messages=iter([AIMessage("hi")]))
    error = api_error(lambda: _complete(models, request(model="plain", tools=[WEATHER_TOOL])))
    assert (error.status, error.param) == (400, "tools") and "'plain' does not support tools" in error.message
    assert models.released == [("plain", "v0")]


# ---------------------------------------------------------------- streaming


def _writer(include_usage: bool = True) -> ChunkWriter:
    return ChunkWriter(completion_id="chatcmpl-1", created=7, model="m", fingerprint="v1", include_usage=include_usage)


class _Chunks:
    """A model stream of fixed chunks that can fail after them or go on forever; records that it was closed."""

    def __init__(self, chunks: list[AIMessageChunk], *, fail: bool = False, forever: bool = False) -> None:
        self.chunks, self.fail, self.forever = chunks, fail, forever
        self.closed = threading.Event()
        self.produced = 0

    def __call__(self) -> Iterator[AIMessageChunk]:
        try:
            while True:
                for chunk in self.chunks:
                    self.produced += 1
                    yield chunk
                if self.fail:
                    raise RuntimeError("the model broke")
                if not self.forever:
                    return
        finally:
            self.closed.set()


def _stream_lines(work: _Chunks, writer: ChunkWriter) -> tuple[list[str], list[int]]:
    released: list[int] = []

    async def run() -> list[str]:
        with ThreadPoolExecutor(1) as pool:
            pump = StreamPump(pool, work, lambda: released.append(1))
            first = await pump.get()
            return [line async for line in sse_events(first, pump, writer)]

    return asyncio.run(run()), released


def _bodies(lines: list[str]) -> list[Any]:
    assert all(line.startswith("data: ") and line.endswith("\n\n") for line in lines)
    return [line[6:-2] if line == "data: [DONE]\n\n" else json.loads(line[6:-2]) for line in lines]


def test_sse_events_follow_the_chunk_protocol() -> None:
    work = _Chunks([
        AIMessageChunk(content="Hel", usage_metadata={"input_tokens": 4, "output_tokens": 1, "total_tokens": 5}),
        AIMessageChunk(content="lo", response_metadata={"finish_reason": "stop"},
                       usage_metadata={"input_tokens": 0, "output_tokens": 1, "total_tokens": 1}),
    ])
    lines, released = _stream_lines(work, _writer())
    bodies = _bodies(lines)
    assert bodies[-1] == "[DONE]"
    role, hel, lo, finish, usage = bodies[:-1]
    assert role["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert [hel["choices"][0]["delta"], lo["choices"][0]["delta"]] == [{"content": "Hel"}, {"content": "lo"}]
    assert finish["choices"][0]["finish_reason"] == "stop" and finish["choices"][0]["delta"] == {}
    assert usage["choices"] == [] and usage["usage"] == {"prompt_tokens": 4, "completion_tokens": 2,
                                                         "total_tokens": 6}
    assert {b["id"] for b in bodies[:-1]} == {"chatcmpl-1"} and all(b["usage"] is None for b in bodies[:-2])
    assert released == [1] and work.closed.is_set()


def test_sse_events_end_with_an_error_event_after_partial_text() -> None:
    work = _Chunks([AIMessageChunk(content="partial")], fail=True)
    lines, released = _stream_lines(work, _writer(include_usage=False))
    bodies = _bodies(lines)
    assert [b["choices"][0]["delta"] for b in bodies[:2]] == [{"role": "assistant", "content": ""},
                                                              {"content": "partial"}]
    assert bodies[2] == {"error": {"message": "internal server error (RuntimeError)", "type": "server_error",
                                   "param": None, "code": None}}
    assert len(bodies) == 3  # no [DONE] after an error
    assert released == [1]


def test_stream_pump_cancel_stops_the_model_and_closes_its_stream() -> None:
    work = _Chunks([AIMessageChunk(content="x")], forever=True)  # a client that leaves never sees the end
    released: list[int] = []

    async def run() -> list[str]:
        with ThreadPoolExecutor(1) as pool:
            pump = StreamPump(pool, work, lambda: released.append(1))
            events = [await pump.get()]
            pump.cancel()
            while events[-1][0] != CANCELLED:
                events.append(await pump.get())
            return events

    events = asyncio.run(run())
    kinds = [kind for kind, _ in events]
    assert events[-1] == (CANCELLED, CLIENT_GONE) and all(k == "chunk" for k in kinds[:-1])
    assert work.closed.is_set() and released == [1]
    assert work.produced == len(kinds) - 1  # nothing generated after the last queued chunk


def test_the_cancel_protocol_matches_the_local_model() -> None:
    from agent_sleep.runtime.chat_model import CANCEL_KWARG, ChatLocalModel
    from agent_sleep.serving import generation

    assert generation.CANCEL_KWARG == CANCEL_KWARG and ChatLocalModel.supports_cancel_event
    assert not getattr(GenericFakeChatModel, "supports_cancel_event", False)  # other models are not sent the event


def test_a_cancelled_local_model_stops_at_the_next_token(handle: BaseModelHandle) -> None:
    model = scripted(handle, "hello world " * 50, max_new_tokens=200)
    cancel = threading.Event()
    chunks = []
    for chunk in model.stream("hi", cancel_event=cancel):
        chunks.append(chunk)
        cancel.set()
    assert model.produced == 2  # the token in hand when the event was seen, then nothing
    assert chunks[-1].response_metadata["finish_reason"] == "cancelled"
