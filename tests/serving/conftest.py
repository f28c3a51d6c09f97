"""Fixtures for the HTTP API tests: one tiny model, one uvicorn server per module, the official OpenAI client."""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import openai
import pytest
from pydantic import PrivateAttr

from agent_sleep.errors import NotFoundError
from agent_sleep.models.loader import BaseModelHandle, load_base_model
from agent_sleep.runtime.chat_model import ChatLocalModel, GenerationParams
from agent_sleep.serving import ResolvedChat, ServerThread
from tests.helpers_models import ScriptedChatModel, make_tiny_model_dir

WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather for a city.",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}
GATE_TIMEOUT = 30.0
CALL = '<tool_call>{"name": "get_weather", "arguments": {"city": "Paris"}}</tool_call>'


class SlowScripted(ScriptedChatModel):
    """A scripted model that takes ``delay`` seconds per token (and can fail after ``fail_after`` tokens).

    ``gate`` (a ``threading.Event``), when given, holds every token until it is set; ``produced``
    counts the tokens generated so far, over all calls.
    """

    delay: float = 0.0
    fail_after: int | None = None
    gate: Any = None
    _produced: int = PrivateAttr(default=0)

    @property
    def produced(self) -> int:
        return self._produced

    def _generate_ids(self, handle: BaseModelHandle, input_ids: list[int], params: GenerationParams) -> Iterator[int]:
        for n, token in enumerate(super()._generate_ids(handle, input_ids, params)):
            if self.fail_after is not None and n >= self.fail_after:
                raise RuntimeError("the model broke mid-generation")
            if self.gate is not None and not self.gate.wait(GATE_TIMEOUT):
                raise RuntimeError("the test never opened the gate")
            time.sleep(self.delay)
            self._produced += 1
            yield token


class RecordingResolver:
    """A mutable resolver that logs every resolve and release, with per-name versions (a string or a callable)."""

    def __init__(self) -> None:
        self.models: dict[str, Any] = {}
        self.versions: dict[str, str | Callable[[], str]] = {}
        self.resolved: list[tuple[str, str]] = []
        self.released: list[tuple[str, str]] = []
        self._lock = threading.Lock()

    def list_models(self) -> list[str]:
        return [name for name in self.models if "@" not in name]  # pinned names resolve but are not listed

    def resolve(self, name: str) -> ResolvedChat:
        if name not in self.models:
            raise NotFoundError(f"model {name!r} does not exist")
        version = self.versions.get(name, "v0")
        version = version() if callable(version) else version
        with self._lock:
            self.resolved.append((name, version))

        def release() -> None:
            with self._lock:
                self.released.append((name, version))

        return ResolvedChat(model=self.models[name], version=version, release=release)


def counter_versions(prefix: str) -> Callable[[], str]:
    counter = itertools.count(1)
    return lambda: f"{prefix}{next(counter)}"


@pytest.fixture(scope="module")
def handle(tmp_path_factory: pytest.TempPathFactory) -> BaseModelHandle:
    return load_base_model(str(make_tiny_model_dir(tmp_path_factory.mktemp("serving"))), device="cpu")


@pytest.fixture(scope="module")
def resolver(handle: BaseModelHandle) -> RecordingResolver:
    return RecordingResolver()


@pytest.fixture
def models(resolver: RecordingResolver, handle: BaseModelHandle) -> Iterator[RecordingResolver]:
    """The module's resolver, reset to one tiny random model ``tiny`` (version ``tiny-v1``)."""
    resolver.models.clear()
    resolver.versions.clear()
    resolver.resolved.clear()
    resolver.released.clear()
    resolver.models["tiny"] = ChatLocalModel(model=str(handle.path), handle=handle, max_new_tokens=8)
    resolver.versions["tiny"] = "tiny-v1"
    yield resolver


@pytest.fixture(scope="module")
def server(resolver: RecordingResolver) -> Iterator[ServerThread]:
    with ServerThread(resolver) as running:
        yield running


@pytest.fixture
def client(server: ServerThread, models: RecordingResolver) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.base_url, api_key="unused", max_retries=0, timeout=30)


def scripted(handle: BaseModelHandle, *scripts: str, **kw: Any) -> SlowScripted:
    return SlowScripted(model="scripted", handle=handle, scripts=list(scripts), **kw)


def wait_for(condition: Callable[[], bool], timeout: float = 15.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.01)
    return condition()
