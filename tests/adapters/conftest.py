"""One tiny random Llama for all adapter tests (built offline in well under a second)."""

from __future__ import annotations

from pathlib import Path

import pytest
from tests.helpers_models import make_tiny_model_dir

from agent_sleep.models.loader import BaseModelHandle, load_base_model


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_model_dir(tmp_path_factory.mktemp("adapter-model"))


@pytest.fixture(scope="session")
def handle(tiny_dir: Path) -> BaseModelHandle:
    """Shared like in production: tests only ever add hooks to it, never replace modules."""
    return load_base_model(str(tiny_dir), device="cpu", dtype="float32")
