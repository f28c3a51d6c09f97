"""No request holds the server hostage: abandoned generations stop, and body, token and prompt sizes are capped."""

from __future__ import annotations

import json
from collections.abc import Iterator

import httpx
import openai
import pytest

from agent_sleep.models.loader import BaseModelHandle
from agent_sleep.serving import ServerThread, ServingLimits
from tests.serving.conftest import WEATHER_TOOL, RecordingResolver, scripted, wait_for

USER = [{"role": "user", "content": "hello there"}]
FORCED = {"type": "function", "function": {"name": "get_weather"}}


def _abandon(server: ServerThread, body: dict[str, object]) -> None:
    """Send ``body`` and hang up after half a second, as a client with a short timeout does."""
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(f"{server.base_url}/chat/completions", json=body, timeout=httpx.Timeout(30, read=0.5))


# ---------------------------------------------------------------- client disconnects


def test_abandoned_non_streamed_request_stops_generating(server: ServerThread, client: openai.OpenAI,
                                                         models: RecordingResolver, handle: BaseModelHandle) -> None:
    # 400 tokens at 20 ms hold the model lock for 8 s if the server keeps generating for nobody.
    model = scripted(handle, "hello world " * 250, delay=0.02, max_new_tokens=400)
    models.models["slow"] = model
    _abandon(server, {"model": "slow", "messages": USER})
    assert wait_for(lambda: ("slow", "v0") in models.released)
    assert 0 < model.produced < 400  # it stopped because the client left, not because it ran out
    assert client.chat.completions.create(model="tiny", messages=USER).choices  # same handle: the lock is free


def test_abandoned_forced_tool_call_stops_mid_call(server: ServerThread, models: RecordingResolver,
                                                   handle: BaseModelHandle) -> None:
    # A forced call sends no chunk until it is complete, so only the model's own cancel check can stop it.
    arguments = '{"city": "' + "Paris " * 200 + '"}}]</tool_call>'
    model = scripted(handle, arguments, delay=0.02, max_new_tokens=1000)
    models.models["slow"] = model
    total = len(handle.tokenizer(arguments, add_special_tokens=False)["input_ids"])
    _abandon(server, {"model": "slow", "messages": USER, "tools": [WEATHER_TOOL], "tool_choice": FORCED})
    assert wait_for(lambda: ("slow", "v0") in models.released)
    assert 0 < model.produced < total


def test_abandoned_json_reply_stops_between_and_within_attempts(server: ServerThread, models: RecordingResolver,
                                                                handle: BaseModelHandle) -> None:
    model = scripted(handle, "no json " * 100, delay=0.02, max_new_tokens=300)
    models.models["slow"] = model
    _abandon(server, {"model": "slow", "messages": USER, "response_format": {"type": "json_object"}})
    assert wait_for(lambda: ("slow", "v0") in models.released)
    assert len(model.prompts) == 1 and model.produced < 300  # no retry after the client left


# ---------------------------------------------------------------- token cap


def test_max_tokens_cap_limits_a_models_default_length(models: RecordingResolver, handle: BaseModelHandle) -> None:
    models.models["long"] = scripted(handle, "hello world " * 100, max_new_tokens=1000)
    with ServerThread(models, limits=ServingLimits(max_tokens=16)) as capped:
        http = openai.OpenAI(base_url=capped.base_url, api_key="x", max_retries=0)
        reply = http.chat.completions.create(model="long", messages=USER)
        assert reply.usage.completion_tokens == 16 and reply.choices[0].finish_reason == "length"
        with pytest.raises(openai.BadRequestError, match="above this server's limit of 16"):
            http.chat.completions.create(model="long", messages=USER, max_tokens=17)
        assert http.chat.completions.create(model="long", messages=USER, max_tokens=16).usage.completion_tokens == 16


# ---------------------------------------------------------------- body cap


def test_request_body_over_the_cap_is_413_before_parsing(models: RecordingResolver) -> None:
    limit = 64 * 1024
    big = {"model": "tiny", "messages": [{"role": "user", "content": "x" * (2 * limit)}]}
    with ServerThread(models, limits=ServingLimits(max_body_bytes=limit)) as capped:
        url = f"{capped.base_url}/chat/completions"
        declared = httpx.post(url, json=big, timeout=30)
        assert declared.status_code == 413
        assert declared.json()["error"]["code"] == "request_too_large" and str(limit) in declared.text

        def chunked() -> Iterator[bytes]:  # no Content-Length: the server must count as it reads
            data = json.dumps(big).encode()
            for start in range(0, len(data), 8192):
                yield data[start:start + 8192]

        streamed = httpx.post(url, content=chunked(), headers={"content-type": "application/json"}, timeout=30)
        assert streamed.status_code == 413 and "request_too_large" in streamed.text

        def small_chunked() -> Iterator[bytes]:
            yield json.dumps({"model": "tiny", "messages": USER}).encode()

        ok = httpx.post(url, content=small_chunked(), headers={"content-type": "application/json"}, timeout=30)
        assert ok.status_code == 200 and ok.json()["choices"]
    assert models.resolved == [("tiny", "tiny-v1")]  # the big bodies never reached the resolver


# ---------------------------------------------------------------- prompt too long


def test_oversized_prompt_is_rejected_without_the_model_lock(client: openai.OpenAI, models: RecordingResolver,
                                                             handle: BaseModelHandle) -> None:
    long = [{"role": "user", "content": "hello world " * 800}]  # beyond the tiny model's 1024 positions
    # Hold the model's lock, as a long generation would: the rejection must not wait for it.
    assert handle.lock.acquire(timeout=10)
    try:
        for stream in (False, True):
            with pytest.raises(openai.BadRequestError, match="does not fit the model's context of 1024"):
                client.with_options(timeout=10).chat.completions.create(model="tiny", messages=long, stream=stream)
    finally:
        handle.lock.release()
    assert models.released == [("tiny", "tiny-v1")] * 2
