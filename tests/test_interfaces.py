"""The stage Protocols: light to import, exact about calls, and the live runtime is a DeployTarget."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from agent_sleep.errors import InvalidInputError
from agent_sleep.interfaces import (
    DeployResult,
    DeployTarget,
    ExperienceReader,
    GenerationRequest,
    Generator,
    LiveView,
    Probe,
)
from tests.helpers_protocols import protocol_mismatches

HEAVY = ("torch", "transformers", "peft", "sqlalchemy", "lm_eval", "langgraph")


def test_importing_the_interfaces_loads_nothing_heavy() -> None:
    code = ("import sys, agent_sleep.interfaces\n"
            f"print(sorted(m for m in {HEAVY!r} if m in sys.modules))")  # fmt: skip
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_a_mismatched_implementation_is_reported() -> None:
    class Almost:  # a reader whose calls differ from the Protocol in four ways
        def episodes(self, query: Any) -> list[Any]:  # no **filters, and a required argument of its own
            return []

        def events(self, episode: str) -> list[Any]:  # positional-only in the Protocol: any name is fine
            return []

        def feedback(self) -> list[Any]:
            return []

        def documents(self, *, agent: str | None = None) -> list[Any]:
            return []

    problems = protocol_mismatches(Almost(), ExperienceReader)
    assert problems == [
        "documents: does not take keyword 'source'",
        "documents: does not take keyword 'latest_only'",
        "documents: does not take keyword 'unconsolidated'",
        "documents: does not take keyword 'since'",
        "episodes: does not take **filters",
        "episodes: its own argument 'query' has no default",
        "feedback: takes no positional argument #1 (episode_id)",
        "missing mark_consolidated",
        "missing mark_documents_consolidated",
    ]
    assert not isinstance(Almost(), ExperienceReader)


def test_generation_request_is_validated() -> None:
    request = GenerationRequest(documents=["text"], probes=["Who?", {"question": "When?", "answer": "1962"}],
                                budget_seconds=2.5)  # fmt: skip
    assert request.probes == (Probe(question="Who?"), Probe(question="When?", answer="1962"))
    assert request.single_document("d2l") == "text"
    chats = GenerationRequest(conversations=[[{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]])
    assert chats.conversations == (({"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}),)
    for bad in ({"budget_seconds": 0}, {"documnets": ["x"]}, {"probes": [""]}, {"probes": "Who?"}):
        with pytest.raises(ValidationError):
            GenerationRequest(**bad)  # type: ignore[arg-type]
    with pytest.raises(InvalidInputError, match=r"'d2l' turns one document into one adapter; the request has 2"):
        GenerationRequest(documents=["a", "b"]).single_document("d2l")
    with pytest.raises(InvalidInputError, match="has 0"):
        GenerationRequest(description="a skill").single_document("gradient_cd")


@pytest.fixture
def runtime(tmp_path: Path, settings: Any) -> Iterator[Any]:
    from agent_sleep.models.loader import load_base_model
    from agent_sleep.registry import AdapterRegistry
    from agent_sleep.runtime.live import LiveRuntime
    from agent_sleep.store import ExperienceStore
    from tests.helpers_adapters import write_random
    from tests.helpers_models import make_tiny_model_dir

    folder = make_tiny_model_dir(tmp_path)
    handle = load_base_model(str(folder))
    registry = AdapterRegistry(ExperienceStore(settings=settings.model_copy(update={"model": str(folder)})))
    registry.register(write_random(tmp_path / "a", handle, seed=1), "refunds")
    registry.register(write_random(tmp_path / "b", handle, seed=2, base_hash="cd" * 32), "foreign")
    rt = LiveRuntime(registry, handle=handle, max_delta_norm=1000.0)
    yield rt
    rt.stop()
    registry.store.close()


def test_the_live_runtime_is_a_deploy_target(runtime: Any) -> None:
    assert isinstance(runtime, DeployTarget)
    assert protocol_mismatches(runtime, DeployTarget) == []
    target: DeployTarget = runtime  # what a consolidation run holds
    assert target.live("helpdesk") is None

    deployed = target.deploy("helpdesk", ["refunds@v1"], reason="first", run_id="run-1")
    assert isinstance(deployed, DeployResult) and deployed.status == "deployed"
    live = target.live("helpdesk")
    assert isinstance(live, LiveView)
    assert (live.deployment.seq, [i.adapter for i in live.deployment.stack.items]) == (1, ["refunds@v1"])

    refused = target.deploy("helpdesk", ["refunds@v1", "foreign@v1"], reason="second")
    assert isinstance(refused, DeployResult) and refused.status == "rejected" and "foreign@v1" in (refused.reason or "")
    assert target.live("helpdesk").deployment.seq == 1  # type: ignore[union-attr]

    target.deploy("helpdesk", [], reason="base only")
    back = target.rollback("helpdesk", reason="undo")
    assert back.status == "deployed" and target.live("helpdesk").deployment.stack.items[0].adapter == "refunds@v1"  # type: ignore[union-attr]


def test_the_generator_protocol_is_generic_over_its_result() -> None:
    from agent_sleep.generators.d2l import D2LGenerator
    from agent_sleep.generators.gradient_cd import GradientCDGenerator

    for cls in (D2LGenerator, GradientCDGenerator):  # methods only: name and version are checked on instances
        problems = [p for p in protocol_mismatches(cls, Generator) if not p.startswith("missing version")]
        assert problems == [], cls.__name__


def test_which_generators_keep_routed_sections() -> None:
    """d2l declares ``sections`` (the sleep cycle turns it on where it routes d2l); the gradient generators do not."""
    from agent_sleep.generators.d2l import D2LGenerator
    from agent_sleep.generators.sft import SFTGenerator
    from agent_sleep.interfaces import SectionedGenerator

    d2l = D2LGenerator.__new__(D2LGenerator)
    d2l.sections = False  # set by __init__, which needs a checkpoint
    assert isinstance(d2l, SectionedGenerator)
    assert not isinstance(SFTGenerator.__new__(SFTGenerator), SectionedGenerator)
