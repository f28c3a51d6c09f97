"""The shipped guards on the real SmolLM2: the base model passes them; a harmful adapter fails them and is gated out."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agent_sleep.config import Settings
from agent_sleep.evaluation.gate import PairedGate
from agent_sleep.evaluation.lm_eval import LmEvalEvaluator
from agent_sleep.evaluation.suites import guard_suites
from agent_sleep.interfaces import EvalResult
from tests.helpers_adapters import write_random

PER_SUITE = 8  # 24 items: about 20 s for the base model and 26 s for the harmful adapter on one CPU thread


def _pooled(results: dict[str, EvalResult]) -> float:
    scores = [s for r in results.values() for s in r.scores.values()]
    return sum(scores) / len(scores)


@pytest.fixture
def runtime(tmp_path: Path, one_thread: None) -> Iterator[Any]:
    from agent_sleep.models.loader import load_base_model
    from agent_sleep.registry import AdapterRegistry
    from agent_sleep.runtime.live import LiveRuntime
    from agent_sleep.store import ExperienceStore

    handle = load_base_model()
    settings = Settings(data_dir=tmp_path / "data", database_url=f"sqlite:///{tmp_path / 'registry.sqlite'}")
    registry = AdapterRegistry(ExperienceStore(settings=settings))
    # A large random delta on every attention projection: the model still runs, but badly.
    harmful = write_random(tmp_path / "harmful", handle, targets=("q_proj", "k_proj", "v_proj", "o_proj"), r=8,
                           std=0.2, seed=3)  # fmt: skip
    registry.register(harmful, "harmful")
    rt = LiveRuntime(registry, handle=handle)
    yield rt
    rt.stop()
    registry.store.close()


@pytest.mark.model
def test_base_model_passes_the_guards_and_the_gate_rejects_a_harmful_adapter(runtime: Any, tmp_path: Path) -> None:
    suites = guard_suites(limit=PER_SUITE, seed=0)
    evaluator = LmEvalEvaluator(runtime, suites, tmp_path / "eval", batch_size=8)
    base = evaluator.evaluate_suites(())
    assert _pooled(base) >= 0.95, {n: r.metrics for n, r in base.items()}  # they were kept for being right

    harmful = evaluator.evaluate_suites(["harmful@v1"])
    assert _pooled(harmful) <= _pooled(base) - 0.3, {n: r.metrics for n, r in harmful.items()}

    roles = {"guards_helpdesk": "target", "guards_general": "guard", "guards_instructions": "guard"}
    decision = PairedGate(roles).decide(harmful, base)  # type: ignore[arg-type]
    assert decision.status == "rejected"
    guards = [c for c in decision.comparisons if c.role == "guard"]
    assert len(guards) == 2 and not any(c.passed for c in guards)
    assert sum(1 for r in decision.reasons if r.startswith("guard ") and "loses more than the allowed" in r) == 2
    # The same stack against itself changes nothing: an honest zero on every suite.
    same = PairedGate(roles).decide(base, base)  # type: ignore[arg-type]
    assert all(c.delta == 0.0 for c in same.comparisons) and [c.passed for c in same.comparisons] == [False, True, True]
