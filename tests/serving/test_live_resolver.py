"""Request model names on the live runtime: agents, stacks, adapter lists, and names that resolve to nothing."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest

from agent_sleep.config import Settings
from agent_sleep.errors import InvalidInputError, NotFoundError
from agent_sleep.registry import AdapterRegistry
from agent_sleep.serving import ServerThread
from agent_sleep.serving.live_resolver import LiveResolver
from agent_sleep.store import ExperienceStore
from tests.helpers_adapters import write_random
from tests.helpers_models import make_tiny_model_dir


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Any]:
    from agent_sleep.models.loader import load_base_model

    folder = make_tiny_model_dir(tmp_path_factory.mktemp("tiny"))
    return folder, load_base_model(str(folder))


@pytest.fixture
def resolver(tiny: tuple[Path, Any], tmp_path: Path, settings: Settings) -> Any:
    from agent_sleep.runtime.live import LiveRuntime

    folder, handle = tiny
    registry = AdapterRegistry(ExperienceStore(settings=settings.model_copy(update={"model": str(folder)})))
    for skill, seed in (("refunds", 1), ("tone", 2)):
        registry.register(write_random(tmp_path / f"src-{skill}", handle, seed=seed), skill)
    return LiveResolver(LiveRuntime(registry, handle=handle, max_delta_norm=1000.0), max_new_tokens=4)


def test_model_names(resolver: LiveResolver) -> None:
    resolver.runtime.deploy("helpdesk", "refunds@v1")
    assert resolver.resolve("helpdesk").version == "helpdesk:stack@v1#1"
    assert resolver.resolve("helpdesk:stack@v1").version == "helpdesk:stack@v1"
    first = resolver.resolve("refunds@v1+tone")
    assert first.version == "refunds@v1+tone@v1"
    assert resolver.resolve("refunds@v1+tone").model.pinned is first.model.pinned  # type: ignore[attr-defined]
    assert resolver.resolve("tone").version == "tone@v1"


@pytest.mark.parametrize("name", [
    "ghost", "ghost@v1", "refunds@v7", "refunds@newest", "refunds++tone", "two words", "helpdesk:stack@v9",
    "helpdesk:stack@latest",
])  # fmt: skip
def test_names_that_resolve_to_nothing(resolver: LiveResolver, name: str) -> None:
    with pytest.raises(NotFoundError, match="no agent, stack or adapter named|no stack"):
        resolver.resolve(name)


# ---------------------------------------------------------------- over HTTP, as clients see it


@pytest.fixture
def runtime(tiny: tuple[Path, Any], settings: Settings) -> Any:
    """A live runtime over an empty registry (no agents, no adapters)."""
    from agent_sleep.runtime.live import LiveRuntime

    folder, handle = tiny
    registry = AdapterRegistry(ExperienceStore(settings=settings.model_copy(update={"model": str(folder)})))
    rt = LiveRuntime(registry, handle=handle, max_delta_norm=1000.0)
    yield rt
    rt.stop()


def _chat(server: Any, model: str) -> httpx.Response:
    return httpx.post(f"{server.base_url}/chat/completions", timeout=60,
                      json={"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2})


def _models(server: Any) -> list[str]:
    return [m["id"] for m in httpx.get(f"{server.base_url}/models", timeout=10).json()["data"]]


def test_a_fresh_server_serves_the_base_model_by_name(runtime: Any, tiny: tuple[Path, Any]) -> None:
    folder, handle = tiny
    base = str(folder)  # the name the server was started with (the settings' model: smollm2-135m-instruct by default)
    with ServerThread(LiveResolver(runtime, max_new_tokens=2)) as server:
        assert _models(server) == [base]
        reply = _chat(server, base)
        assert reply.status_code == 200, reply.text
        assert reply.json()["system_fingerprint"] == f"{base}#{handle.content_hash[:12]}"
        assert reply.json()["model"] == base
        missing = _chat(server, "helpdesk")
        assert missing.status_code == 404
        assert "no agent, stack or adapter named 'helpdesk'" in missing.json()["error"]["message"]


def test_a_known_agent_without_a_deployment_answers_with_the_base_model(runtime: Any, tiny: Any, tmp_path: Path) -> None:
    folder, handle = tiny
    runtime.registry.store.start_episode("helpdesk")  # capture knows the agent
    runtime.registry.register(write_random(tmp_path / "src", handle, seed=1), "refunds")
    with ServerThread(LiveResolver(runtime, max_new_tokens=2)) as server:
        assert _models(server) == [str(folder), "helpdesk", "refunds@v1"]
        reply = _chat(server, "helpdesk")
        assert reply.status_code == 200, reply.text
        assert reply.json()["system_fingerprint"] == f"{folder}#{handle.content_hash[:12]}"
        runtime.deploy("helpdesk", "refunds@v1")
        assert _models(server) == [str(folder), "helpdesk", "refunds@v1"]  # each name once
        assert _chat(server, "helpdesk").json()["system_fingerprint"] == "helpdesk:stack@v1#1"
        wrong = _chat(server, "helpdsk")
        assert wrong.status_code == 404 and "did you mean 'helpdesk'?" in wrong.json()["error"]["message"]


def test_aliases_follow_deploys(runtime: Any, tiny: Any, tmp_path: Path) -> None:
    handle = tiny[1]
    registry = runtime.registry
    registry.register(write_random(tmp_path / "v1", handle, seed=1), "refunds")
    runtime.deploy("helpdesk", "refunds@v1")
    with ServerThread(LiveResolver(runtime, max_new_tokens=2)) as server:
        for name in ("refunds@live", "refunds"):
            assert _chat(server, name).json()["system_fingerprint"] == "refunds@v1"
        registry.register(write_random(tmp_path / "v2", handle, seed=2), "refunds")
        runtime.deploy("helpdesk", "refunds@v2")
        for name in ("refunds@live", "refunds", "refunds@v2"):
            assert _chat(server, name).json()["system_fingerprint"] == "refunds@v2", name
        assert _chat(server, "refunds@previous").json()["system_fingerprint"] == "refunds@v1"
        assert _chat(server, "refunds@v1").json()["system_fingerprint"] == "refunds@v1"


@pytest.mark.parametrize("name", ["refunds@v1+refunds@v1", "refunds@v1+tone+refunds@candidate"])
def test_a_skill_twice_is_refused_like_in_stacks(resolver: LiveResolver, name: str) -> None:
    with ServerThread(resolver) as server:
        reply = _chat(server, name)
    assert reply.status_code == 400
    error = reply.json()["error"]
    assert error["param"] == "model"
    assert "a stack holds each skill once; 'refunds' appears more than once" in error["message"]
    with pytest.raises(InvalidInputError, match="each skill once"):
        resolver.runtime.registry.deploy("helpdesk", name.split("+"))  # the same rule, from the same place


@pytest.mark.model
def test_the_default_base_model_is_served_under_its_settings_name(settings: Settings) -> None:
    from agent_sleep.config import DEFAULT_MODEL
    from agent_sleep.models.loader import load_base_model
    from agent_sleep.runtime.live import LiveRuntime

    handle = load_base_model(DEFAULT_MODEL)
    resolver = LiveResolver(LiveRuntime(AdapterRegistry(ExperienceStore(settings=settings)), handle=handle),
                            max_new_tokens=2)
    assert resolver.list_models() == [DEFAULT_MODEL]
    resolved = resolver.resolve(DEFAULT_MODEL)
    assert resolved.version == f"{DEFAULT_MODEL}#{handle.content_hash[:12]}"
    assert resolved.model.invoke("Say hi").text  # type: ignore[attr-defined]


def test_a_version_rejected_after_it_was_served_is_refused(resolver: LiveResolver) -> None:
    # The resolver caches prepared stacks by concrete version; a rejection must still stop them at once.
    from agent_sleep.registry.records import Rejection

    assert resolver.resolve("refunds@v1").version == "refunds@v1"
    stack = resolver.runtime.registry.create_stack("helpdesk", ["tone@v1"])
    assert resolver.resolve(stack.name).version == stack.name
    registry = resolver.runtime.registry
    registry.reject("refunds@v1", "found harmful", Rejection(check="manual", kind="manual"))
    registry.reject("tone@v1", "found harmful", Rejection(check="manual", kind="manual"))
    with pytest.raises(InvalidInputError, match="refunds@v1 is rejected"):
        resolver.resolve("refunds@v1")
    with pytest.raises(InvalidInputError, match="tone@v1 is rejected"):
        resolver.resolve(stack.name)
