"""Plumbing the hypernetwork meta-training recipes share (``pipelines/d2l``, ``pipelines/t2l``).

The learning-rate schedule (linear warmup, cosine decay to a floor), stop signals that let a step finish and the
run checkpoint, the training loop (:func:`run_loop`: steps, progress bar, JSON-lines metrics, eval and checkpoint
schedules, time limit) and the interpreter name recorded with a run's command. What a recipe trains (one step),
its data and its evaluation stay in the recipe.
"""

from __future__ import annotations

import json
import math
import os
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

__all__ = ["LoopState", "StepLog", "StopSignals", "append_jsonl", "interpreter", "lr_factor", "run_loop"]


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


@dataclass
class StepLog:
    """What one optimiser step reports to the loop: ``ce`` (the progress bar's number, averaged over each log
    window), values the window averages (``mean``, by name) and values of the step itself (``last``: the window's
    last step is logged, e.g. grad norm and learning rate)."""

    ce: float
    mean: dict[str, float] = field(default_factory=dict)
    last: dict[str, float] = field(default_factory=dict)


class LoopState(Protocol):
    """The part of a recipe's training state the loop advances: steps done and seconds spent in them."""

    step: int
    trained_s: float


def run_loop(state: LoopState, *, steps: int, log_every: int, eval_every: int, ckpt_every: int, metrics: Path,
             stop: StopSignals, max_minutes: float | None, one_step: Callable[[], StepLog],
             evaluate: Callable[[Any], None], checkpoint: Callable[[], None], desc: str) -> None:  # fmt: skip
    """Train until ``steps``, a stop signal or ``max_minutes`` of training in this call (caching and baselines done
    before it do not count): ``one_step`` per step, a ``train`` record in ``metrics`` every ``log_every`` steps,
    ``evaluate(bar)`` every ``eval_every`` steps and at the last one (it writes its own record; ``bar.write``
    prints above the bar), ``checkpoint()`` every ``ckpt_every`` steps. The caller checkpoints once more at the end."""
    from tqdm import tqdm

    deadline = None if max_minutes is None else time.monotonic() + max_minutes * 60
    bar = tqdm(total=steps, initial=state.step, desc=desc, dynamic_ncols=True)
    ces: list[float] = []
    means: dict[str, list[float]] = {}
    try:
        while state.step < steps and not stop.requested:
            if deadline is not None and time.monotonic() > deadline:
                break
            ts = time.monotonic()
            log = one_step()
            state.step += 1
            state.trained_s += time.monotonic() - ts
            ces.append(log.ce)
            for name, value in log.mean.items():
                means.setdefault(name, []).append(value)
            bar.update()
            bar.set_postfix(ce=f"{log.ce:.3f}")
            if state.step % log_every == 0:
                append_jsonl(metrics, {"kind": "train", "step": state.step, "ce": sum(ces) / len(ces), **log.last,
                                       **{name: sum(v) / len(v) for name, v in means.items()},
                                       "sec_per_step": time.monotonic() - ts, "minutes": state.trained_s / 60})
                ces.clear()
                means.clear()
            if state.step % eval_every == 0 or state.step == steps:
                evaluate(bar)
            if state.step % ckpt_every == 0:
                checkpoint()
    finally:
        bar.close()
