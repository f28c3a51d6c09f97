"""Fixtures for the scheduler tests: the consolidation tests' tiny model and world, plus a skewed clock."""

from __future__ import annotations

import sys
from collections.abc import Callable
from datetime import datetime, timedelta

import pytest

from tests.consolidation.conftest import _one_thread, tiny_handle, tiny_model, world  # noqa: F401 - fixtures

AGENT = "helpdesk"


@pytest.fixture
def skew_clock(monkeypatch: pytest.MonkeyPatch) -> Callable[[float], None]:
    """``skew_clock(seconds)``: this process's idea of the time (every ``utcnow`` agent-sleep imported, and
    ``time.time``) is off by ``seconds`` from now on; the database's clock is not."""
    import time

    from agent_sleep.store import models

    real_utcnow, real_time = models.utcnow, time.time

    def skew(seconds: float) -> None:
        def utcnow() -> datetime:
            return real_utcnow() + timedelta(seconds=seconds)

        for name, module in list(sys.modules.items()):
            if name.startswith("agent_sleep") and getattr(module, "utcnow", None) is real_utcnow:
                monkeypatch.setattr(module, "utcnow", utcnow)
        monkeypatch.setattr(time, "time", lambda: real_time() + seconds)

    return skew
