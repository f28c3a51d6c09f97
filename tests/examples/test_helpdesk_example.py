"""The helpdesk example runs end to end and its episodes show up in the CLI (the demo command: tests/demo)."""

from __future__ import annotations

import runpy
from pathlib import Path

import pytest

from agent_sleep.cli.main import main as cli
from agent_sleep.config import Settings
from agent_sleep.store import ExperienceStore

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "01_helpdesk_agent.py"


def _check_logged(store: ExperienceStore, episodes: list[str]) -> None:
    eps = store.episodes(agent="helpdesk")
    assert [e.id for e in eps] == episodes
    for ep in eps:
        kinds = [e.kind for e in store.events(ep.id)]
        # the tool call comes from the rule-based router node, not from a model reply
        assert kinds == ["user_message", "tool_call", "tool_result", "assistant_message"]
        assert ep.status == "completed" and ep.n_feedback == 1 and ep.outcome in ("resolved", "needs_review")
        assert store.feedback(ep.id)[0].source == "automatic"
    result = store.events(eps[0].id)[2]
    assert "shipped on 25 November" in result.content


def test_example_with_a_tiny_model(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from agent_sleep.runtime.chat_model import ChatLocalModel
    from tests.helpers_models import make_tiny_model_dir

    settings = Settings(data_dir=tmp_path / "data")
    store = ExperienceStore(settings=settings)
    example = runpy.run_path(str(EXAMPLE), run_name="example")
    episodes = example["main"](model=ChatLocalModel(model=str(make_tiny_model_dir(tmp_path)), max_new_tokens=8),
                               store=store)
    _check_logged(store, episodes)
    capsys.readouterr()
    assert cli(["--data-dir", str(settings.data_dir), "episodes", "list"]) == 0
    out = capsys.readouterr().out
    assert all(e in out for e in episodes)
