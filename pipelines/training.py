"""Plumbing the hypernetwork meta-training recipes share (``pipelines/d2l``, ``pipelines/t2l``).

The learning-rate schedule (linear warmup, cosine decay to a floor), stop signals that let a step finish and the
run checkpoint, JSON-lines metrics, and the interpreter name recorded with a run's command. What a recipe trains,
its data and its evaluation stay in the recipe.
"""

from __future__ import annotations

import json
import math
import os
import signal
import sys
from pathlib import Path
from typing import Any

__all__ = ["StopSignals", "append_jsonl", "interpreter", "lr_factor"]


def lr_factor(step: int, *, warmup: int, steps: int, lr: float, min_lr: float) -> float:
    """Multiplier of the peak ``lr`` at ``step``: linear warmup over ``warmup`` steps, then cosine to ``min_lr``."""
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, steps - warmup))
    floor = min_lr / lr
    return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))


def append_jsonl(path: Path, record: dict[str, Any]) -> None:
    with path.open("a", encoding="utf-8") as fh:
        fh.write(json.dumps(record) + "\n")


def interpreter() -> str:
    """The Python that runs this, relative to the working directory when inside it (e.g. ``.venv/bin/python``)."""
    exe = os.path.abspath(sys.executable)
    rel = os.path.relpath(exe)
    return exe if rel.startswith("..") else rel


class StopSignals:
    """While active, SIGTERM and SIGINT only set ``requested``: the loop finishes its step and checkpoints."""

    def __init__(self) -> None:
        self.requested = False
        self._old: dict[int, Any] = {}

    def _on_signal(self, signum: int, frame: Any) -> None:
        self.requested = True

    def __enter__(self) -> StopSignals:
        self._old = {sig: signal.signal(sig, self._on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._old.items():
            signal.signal(sig, handler)
