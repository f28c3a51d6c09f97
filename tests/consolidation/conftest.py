"""Fixtures for the consolidation tests: a tiny random model, a store, registry and live runtime on each backend,
and helpers that log episodes the way capture does."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from agent_sleep.config import Settings
from agent_sleep.consolidation.config import CycleConfig
from tests.helpers_models import make_tiny_model_dir

AGENT = "helpdesk"
# The tiny model's tokenizer was trained on these words, so short replies made of them stay a few tokens long.
FACTS = {"capitals": ("What is the capital of France?", "Paris."),
         "weather": ("What is the weather today?", "hello world.")}  # fmt: skip


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_model_dir(tmp_path_factory.mktemp("consolidation-model"))


@pytest.fixture(scope="session")
def tiny_handle(tiny_model: Path) -> Any:
    from agent_sleep.models.loader import load_base_model

    return load_base_model(str(tiny_model))


@dataclass
class World:
    settings: Settings
    store: Any
    registry: Any
    runtime: Any

    def log(self, question: str, answer: str, *, skill: str, score: float | None = 1.0,
            expected: str | None = None) -> str:  # fmt: skip
        """One completed episode (a question, the agent's answer) with feedback, as capture would store it."""
        meta = {"skill": skill, **({"answer": expected} if expected else {})}
        eid = self.store.start_episode(AGENT, metadata=meta)
        self.store.append_events(eid, [{"kind": "user_message", "content": question},
                                       {"kind": "assistant_message", "content": answer}])  # fmt: skip
        self.store.end_episode(eid)
        if score is not None:
            self.store.add_feedback(eid, score=score)
        return eid

    def teach(self, skill: str, n: int = 6, *, answer: str | None = None, expected: str | None = None) -> list[str]:
        """``n`` episodes of one fact (every third becomes a probe with the test planner): the agent answered
        ``answer``, the probes expect ``expected`` (both default to the fact's answer)."""
        question, right = FACTS[skill]
        return [self.log(question, answer or right, skill=skill, expected=expected or right) for _ in range(n)]


def make_world(tmp_path: Path, db_url: str, tiny_model: Path, tiny_handle: Any) -> World:
    from agent_sleep.registry import AdapterRegistry
    from agent_sleep.runtime.live import LiveRuntime
    from agent_sleep.store import ExperienceStore

    settings = Settings(data_dir=tmp_path / "data", database_url=db_url, model=str(tiny_model))
    store = ExperienceStore(settings=settings)
    registry = AdapterRegistry(store)
    # Random tiny weights: a trained LoRA is large next to them, so the delta-norm bound is loosened.
    runtime = LiveRuntime(registry, handle=tiny_handle, max_delta_norm=1000.0)
    return World(settings=settings, store=store, registry=registry, runtime=runtime)


@pytest.fixture
def world(tmp_path: Path, db_url: str, tiny_model: Path, tiny_handle: Any) -> Iterator[World]:
    w = make_world(tmp_path, db_url, tiny_model, tiny_handle)
    yield w
    w.runtime.stop()
    w.store.close()


FROZEN = "sft_frozen"
SEEDED = "sft_seed1"
SFT_SETTINGS = {"max_steps": 60, "lr": 0.02, "batch_size": 4, "converged_loss": 0.05}


def register_test_generators() -> None:
    """TEST CODE: two more real sft generators to stand as candidates beside ``sft``: ``sft_frozen`` takes one
    step at a negligible rate (it cannot learn: the weaker candidate), ``sft_seed1`` is ``sft`` with another
    seed (as good as ``sft``). The cycle's test planner names them in ``selection["candidates"]``."""
    from agent_sleep.generators.registry import register_generator
    from agent_sleep.generators.sft import SFTGenerator, SFTSettings

    register_generator(FROZEN, lambda handle, **_: SFTGenerator(handle, config=SFTSettings(max_steps=1, lr=1e-9),
                                                                 progress=False), replace=True)  # fmt: skip
    register_generator(SEEDED, lambda handle, **_: SFTGenerator(handle, config=SFTSettings(**SFT_SETTINGS, seed=1),
                                                                 progress=False), replace=True)  # fmt: skip


@pytest.fixture
def test_generators() -> Iterator[None]:
    from agent_sleep.generators.registry import _TARGETS

    register_test_generators()
    yield
    for name in (FROZEN, SEEDED):
        _TARGETS.pop(name, None)


def fast_config(**overrides: Any) -> CycleConfig:
    """A config sized for the tiny model: small guard samples, a short training run."""
    raw: dict[str, Any] = {
        "generators": {"sft": {"settings": dict(SFT_SETTINGS)}},
        "evaluation": {"guard_limit": 3, "max_new_tokens": 8, "batch_size": 8},
        "gate": {"resamples": 200},
        "budget_seconds": 600,
    }
    raw.update(overrides)
    return CycleConfig.model_validate(raw)
