"""Fixtures for the report tests: the consolidation tests' tiny model and worlds, and one seeded history.

``history`` is a module-scoped SQLite world after a real run of :data:`HISTORY` (five cycles, a skill
removal and a rollback), shared by the tests that only read it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.consolidation.conftest import _one_thread, make_world, tiny_handle, tiny_model, world  # noqa: F401
from tests.reports.history import seed_history

HISTORY = ("teach:capitals", "quiet", "teach:weather", "remove:capitals", "teach:weather", "wrong:weather", "rollback")


@pytest.fixture(scope="module")
def history(tmp_path_factory: pytest.TempPathFactory, tiny_model: Path, tiny_handle: Any) -> Iterator[Any]:
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("report-history")
    w = make_world(root, f"sqlite:///{root / 'experience.sqlite'}", tiny_model, tiny_handle)
    try:
        seed_history(w, HISTORY)
        yield w
    finally:
        torch.set_num_threads(before)
        w.runtime.stop()
        w.store.close()
