"""Request model names on the live runtime: agents, stacks, adapter lists, and names that resolve to nothing."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from agent_sleep.config import Settings
from agent_sleep.errors import NotFoundError
from agent_sleep.registry import AdapterRegistry
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
