"""The demo's night on a tiny random model: a real cycle over the day's experience (sft on the corrections,
judged on held-out correction probes), the after table on the same questions, the
harmful night judged by the same gate, and a rollback and roll-forward when something went live."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from agent_sleep.demo import day, night
from tests.consolidation.conftest import make_world  # noqa: F401  (the consolidation tests' tiny world)
from tests.consolidation.conftest import fast_config


@pytest.fixture(autouse=True)
def _one_thread() -> Any:
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_the_night_after_the_day(tmp_path: Path) -> None:
    from agent_sleep.models.loader import load_base_model
    from tests.helpers_models import make_tiny_model_dir

    model_dir = make_tiny_model_dir(tmp_path / "model")
    world = make_world(tmp_path, f"sqlite:///{tmp_path / 'db.sqlite'}", model_dir, load_base_model(str(model_dir)))
    try:
        content = day.load_day()
        chat = world.runtime.chat_model(content.agent, max_new_tokens=6)
        lines: list[str] = []
        log = day.run_day(chat, world.store, content)
        assert log.failed  # a random model answers nothing right: every question is corrected
        before = day.ask(chat, day.held_out(content, log.failed_facts)[:4], content)
        # Random episode ids: 0.4 of 16 corrections held out leaves >= 2 probes and >= 5 to train on except
        # with odds below 1e-3. No d2l here: its checkpoint belongs to SmolLM2 and refuses the tiny model (tests/generators cover it).
        config = fast_config(selection={"probes": {"fraction": 0.4}, "skills": {"per_document": False}})
        morning = night.sleep_and_wake(world.runtime, content, log, before, config=config, echo=lines.append)
    finally:
        world.runtime.stop()
        world.store.close()

    result = morning.result
    assert result.status == "finished" and result.outcome in ("promoted", "rejected_by_gate"), (result.outcome, result.error, [s.reasons for s in result.skills])
    by_generator = {s.generator: s for s in result.skills}
    # The corrections teach the dialog skill, and held-out corrections test it.
    assert set(by_generator) == {"sft"} and by_generator["sft"].probes >= 2 and by_generator["sft"].train_items >= 5
    assert [a.question for a in morning.after] == [a.question for a in before]
    text = "\n".join(lines)
    assert "right before sleep:" in text and "report.md" in text
    # The harmful night ran through the same gate on the same material (sft only) and was recorded.
    assert morning.harmful is not None and [s.generator for s in morning.harmful.skills] == ["sft"]
    assert morning.harmful.outcome in ("promoted", "rejected_by_gate", "failed")
    if result.deployed_stack:
        assert "Rollback: agent-sleep rollback helpdesk" in text and "and forward again: deployed" in text


def test_a_rollback_from_the_first_deployment_returns_to_the_base_model(tmp_path: Path) -> None:
    from agent_sleep.models.loader import load_base_model
    from tests.helpers_adapters import write_random
    from tests.helpers_models import make_tiny_model_dir

    model_dir = make_tiny_model_dir(tmp_path / "model")
    world = make_world(tmp_path, f"sqlite:///{tmp_path / 'db.sqlite'}", model_dir, load_base_model(str(model_dir)))
    try:
        world.registry.register(write_random(tmp_path / "src", world.runtime.handle, seed=1), "helpdesk-dialog")
        first = world.runtime.deploy("helpdesk", "helpdesk-dialog@v1", actor="test")
        lines: list[str] = []
        seen: list[Any] = []

        def ask() -> list[Any]:
            seen.append(tuple(world.registry.live("helpdesk").stack.items))
            return []

        night.show_rollback(world.runtime, "helpdesk", first.deployment.stack.name, ask, lines.append)
        text = "\n".join(lines)
        assert "live now the base model" in text and seen == [()]  # asked on the base model
        assert world.registry.live("helpdesk").stack.name == first.deployment.stack.name  # and forward again
    finally:
        world.runtime.stop()
        world.store.close()
