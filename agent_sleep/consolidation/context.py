"""What every stage of one run reads: the run's id, config, folder, handles and clock."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from agent_sleep.consolidation.config import CycleConfig
from agent_sleep.consolidation.runs import RunStore
from agent_sleep.registry import AdapterRegistry
from agent_sleep.store.store import ExperienceStore

if TYPE_CHECKING:
    from agent_sleep.runtime.live import LiveRuntime

__all__ = ["RunContext"]


@dataclass
class RunContext:
    """One run's handles. The runtime (the base model) is made on first use, so a run with nothing
    to learn never loads a model. ``deadline`` is a :func:`time.monotonic` time. ``owner`` is who claimed
    the run (:mod:`.owners`): every write to the run's records passes it, so a holder that lost the run
    to another owner writes nothing (:class:`~agent_sleep.errors.RunTakenOverError`)."""

    run_id: str
    owner: str
    agent: str
    config: CycleConfig
    registry: AdapterRegistry
    runs: RunStore
    folder: Path
    deadline: float
    say: Callable[[str], None]
    make_runtime: Callable[[], LiveRuntime]
    _runtime: LiveRuntime | None = field(default=None, repr=False)

    @property
    def store(self) -> ExperienceStore:
        return self.registry.store

    @property
    def runtime(self) -> LiveRuntime:
        if self._runtime is None:
            self._runtime = self.make_runtime()
        return self._runtime

    def remaining(self) -> float:
        """Seconds left of the run's time budget (negative once it is spent)."""
        return self.deadline - time.monotonic()
