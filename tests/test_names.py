"""One name rule for agents and skills, one namespace for both, and "did you mean" where a name finds nothing.

Every check goes through a door a user opens: capture constructors, the stores, the registry, the CLI.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from agent_sleep.capture.callback import SleepCallbackHandler
from agent_sleep.capture.middleware import SleepMiddleware
from agent_sleep.capture.recorder import ExperienceRecorder
from agent_sleep.cli.main import main
from agent_sleep.config import Settings
from agent_sleep.errors import InvalidEventError, InvalidInputError, NotFoundError
from agent_sleep.registry import AdapterRegistry
from agent_sleep.store import ExperienceStore, InMemoryExperienceStore
from tests.helpers_adapters import write_random
from tests.helpers_models import make_tiny_model_dir

BAD_NAMES = ["", " ", "../../etc", "two words", "x" * 65, "x" * 300, "g3@v1", "a:stack@v1", "a+b", "a/b", ".hidden",
             "-x", "café"]  # fmt: skip
GOOD_NAMES = ["helpdesk", "billing_v2", "tool-use.json", "A1", "x" * 64]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Any]:
    from agent_sleep.models.loader import load_base_model

    folder = make_tiny_model_dir(tmp_path_factory.mktemp("tiny"))
    return folder, load_base_model(str(folder))


@pytest.fixture
def registry(tiny: tuple[Path, Any], settings: Settings, tmp_path: Path) -> AdapterRegistry:
    folder, handle = tiny
    reg = AdapterRegistry(ExperienceStore(settings=settings.model_copy(update={"model": str(folder)})))
    for skill, seed in (("refunds", 1), ("tone", 2)):
        reg.register(write_random(tmp_path / f"src-{skill}", handle, seed=seed), skill)
    return reg


# ---------------------------------------------------------------- the rule, at every door


@pytest.mark.parametrize("bad", BAD_NAMES)
def test_capture_refuses_a_bad_agent_name_at_construction(bad: str, settings: Settings) -> None:
    for make in (ExperienceRecorder, SleepCallbackHandler, SleepMiddleware):
        with pytest.raises(InvalidInputError, match="invalid agent name"):
            make(bad, settings=settings)  # type: ignore[operator]


@pytest.mark.parametrize("good", GOOD_NAMES)
def test_capture_accepts_good_names(good: str, settings: Settings) -> None:
    assert ExperienceRecorder(good, settings=settings).agent == good
    assert SleepCallbackHandler(good, settings=settings).recorder.agent == good


@pytest.mark.parametrize("make", ["sql", "memory"])
def test_stores_refuse_bad_agent_and_skill_names(make: str, settings: Settings) -> None:
    store: Any = ExperienceStore(settings=settings) if make == "sql" else InMemoryExperienceStore()
    for bad in BAD_NAMES:
        with pytest.raises(InvalidEventError, match="invalid agent name"):
            store.start_episode(bad)
        with pytest.raises(InvalidEventError, match="invalid agent name"):
            store.ensure_agent(bad)
        with pytest.raises(InvalidEventError, match="invalid agent name"):
            store.add_document("kb/a", "some text", agent=bad)  # 300 characters: no raw driver error on PostgreSQL
        if make == "sql":
            with pytest.raises(InvalidEventError, match="invalid skill name"):
                store.upsert_skill(bad)
    eid = store.start_episode("x" * 64)
    assert store.get_episode(eid).agent == "x" * 64
    assert store.documents() == []


@pytest.mark.parametrize("bad", ["../../etc", "x" * 300, "g3@v1", "two words", ""])
def test_registry_refuses_bad_agent_names(registry: AdapterRegistry, tmp_path: Path, tiny: Any, bad: str) -> None:
    with pytest.raises(InvalidInputError, match="invalid agent name"):
        registry.deploy(bad, "refunds@v1")
    with pytest.raises(InvalidInputError, match="invalid agent name"):
        registry.create_stack(bad, ["tone@v1"])
    with pytest.raises(InvalidInputError, match="invalid agent name"):
        registry.register(write_random(tmp_path / "src", tiny[1]), "fresh", agent=bad)
    assert registry.stacks() == [] and registry.store.agents() == []
    assert [a.name for a in registry.adapters()] == ["refunds@v1", "tone@v1"]


# ---------------------------------------------------------------- one namespace


def test_agents_and_skills_cannot_share_a_name(registry: AdapterRegistry, tmp_path: Path, tiny: Any) -> None:
    handle = tiny[1]
    with pytest.raises(InvalidInputError, match="'refunds' already names a skill"):
        registry.deploy("refunds", "tone@v1")
    registry.deploy("helpdesk", "tone@v1")
    with pytest.raises(InvalidInputError, match="'helpdesk' already names an agent"):
        registry.register(write_random(tmp_path / "a", handle), "helpdesk")
    # An agent that capture created (no stack yet) owns its name too.
    registry.store.start_episode("sales")
    with pytest.raises(InvalidInputError, match="'sales' already names an agent"):
        registry.register(write_random(tmp_path / "b", handle), "sales")
    with pytest.raises(InvalidInputError, match="'tone' already names a skill"):
        registry.register(write_random(tmp_path / "c", handle), "fresh", agent="tone")
    # The base model's name (the settings' model) is neither's.
    default = AdapterRegistry(ExperienceStore(settings=registry.store.settings.model_copy(
        update={"model": "smollm2-135m-instruct"})))
    with pytest.raises(InvalidInputError, match="base model's name"):
        default.deploy("smollm2-135m-instruct", "tone@v1")
    with pytest.raises(InvalidInputError, match="base model's name"):
        default.register(write_random(tmp_path / "d", handle), "SmolLM2-135M-Instruct")
    # What already works keeps working: new versions of a skill, new stacks of an agent.
    assert registry.register(write_random(tmp_path / "e", handle, seed=5), "refunds").name == "refunds@v2"
    assert registry.deploy("helpdesk", ["tone@v1", "refunds@v2"]).seq == 2
    assert registry.store.agents() == ["helpdesk", "sales"]


def test_a_stack_holds_each_skill_once_whatever_the_spelling(registry: AdapterRegistry) -> None:
    with pytest.raises(InvalidInputError, match="each skill once; 'refunds' appears more than once"):
        registry.deploy("helpdesk", ["refunds@v1", "refunds@candidate", "tone"])


# ---------------------------------------------------------------- "did you mean"


def test_registry_lookups_suggest_close_names(registry: AdapterRegistry) -> None:
    with pytest.raises(NotFoundError, match=r"no adapter 'refnds@v1' in the registry; did you mean 'refunds'\?"):
        registry.get("refnds@v1")
    with pytest.raises(NotFoundError, match="no adapter 'refunds@v7' in the registry; refunds has v1$"):
        registry.get("refunds@v7")
    with pytest.raises(NotFoundError, match=r"no adapter 'zzz' in the registry$"):
        registry.get("zzz")
    registry.deploy("helpdesk", "tone@v1")
    with pytest.raises(NotFoundError, match=r"did you mean 'helpdesk:stack@v1'\?"):
        registry.get_stack("helpdsk:stack@v1")
    with pytest.raises(NotFoundError, match="helpdesk has v1$"):
        registry.get_stack("helpdesk:stack@v4")
    with pytest.raises(NotFoundError, match=r"not in the live stack of agent 'helpdesk'; did you mean 'tone'\?"):
        registry.remove_skill("helpdesk", "tones")


# ---------------------------------------------------------------- the CLI


@pytest.fixture
def cli_env(tiny: tuple[Path, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[list[str], Path]:
    """The CLI's default database (in the test's data dir) with refunds@v1 and tone@v1; the tiny model as base."""
    folder, handle = tiny
    monkeypatch.setenv("AGENT_SLEEP_MODEL", str(folder))
    reg = AdapterRegistry(ExperienceStore(settings=Settings()))
    for skill, seed in (("refunds", 1), ("tone", 2)):
        reg.register(write_random(tmp_path / f"src-{skill}", handle, seed=seed), skill)
    reg.store.close()
    return ["--db", f"sqlite:///{tmp_path / 'data' / 'experience.sqlite'}"], folder


@pytest.mark.parametrize("bad", ["../../etc", "x" * 300, "g3@v1", "two words"])
def test_cli_deploy_refuses_bad_agent_names(cli_env: Any, bad: str, capsys: pytest.CaptureFixture[str]) -> None:
    db, _ = cli_env
    assert main([*db, "deploy", "refunds@v1", "--agent", bad, "--no-validate"]) == 1
    err = capsys.readouterr().err
    assert "invalid agent name" in err and "Traceback" not in err
    assert main([*db, "stacks", "list"]) == 0 and capsys.readouterr().out == "no stacks yet\n"


def test_cli_names_errors_suggest(cli_env: Any, tmp_path: Path, tiny: Any, capsys: pytest.CaptureFixture[str]) -> None:
    db, _ = cli_env
    assert main([*db, "adapters", "show", "refnds"]) == 1
    assert "did you mean 'refunds'?" in capsys.readouterr().err
    assert main([*db, "adapters", "add", str(write_random(tmp_path / "n", tiny[1])), "--skill", "two words"]) == 1
    assert "invalid adapter/skill name 'two words'" in capsys.readouterr().err
    assert main([*db, "deploy", "refunds@v1", "--agent", "helpdesk", "--no-validate"]) == 0
    capsys.readouterr()
    assert main([*db, "deploy", "tone@v1", "--agent", "refunds", "--no-validate"]) == 1
    assert "'refunds' already names a skill" in capsys.readouterr().err
    assert main([*db, "stacks", "show", "helpdsk:stack@v1"]) == 1
    assert "did you mean 'helpdesk:stack@v1'?" in capsys.readouterr().err


def test_ask_unknown_agent_is_an_error_with_a_suggestion(cli_env: Any, capsys: pytest.CaptureFixture[str]) -> None:
    db, _ = cli_env
    assert main([*db, "ask", "hi", "--agent", "no-such-agent"]) == 1
    assert "no agent named 'no-such-agent'; there are no agents yet" in capsys.readouterr().err
    assert main([*db, "deploy", "refunds@v1", "--agent", "helpdesk", "--no-validate"]) == 0
    capsys.readouterr()
    assert main([*db, "ask", "hi", "--agent", "helpdsk"]) == 1
    assert capsys.readouterr().err.strip() == "error: no agent named 'helpdsk'; did you mean 'helpdesk'?"


def test_ask_known_agent_without_deployment_says_it_uses_the_base_model(
        cli_env: Any, capsys: pytest.CaptureFixture[str]) -> None:
    db, _ = cli_env
    ExperienceStore(db[1]).start_episode("sales")  # capture knows the agent; nothing is deployed for it
    assert main([*db, "ask", "hi", "--agent", "sales", "--max-new-tokens", "3", "--json"]) == 0
    captured = capsys.readouterr()
    out = json.loads(captured.out)
    assert (out["agent"], out["deployment"], out["stack"]) == ("sales", None, None)
    assert "agent 'sales' has no deployment yet; answering with the base model" in captured.err
    assert main([*db, "deploy", "refunds@v1", "--agent", "sales", "--max-delta-norm", "1000"]) == 0
    capsys.readouterr()
    assert main([*db, "ask", "hi", "--agent", "sales", "--max-new-tokens", "3", "--json"]) == 0
    captured = capsys.readouterr()
    out = json.loads(captured.out)
    assert (out["agent"], out["deployment"], out["stack"]) == ("sales", "sales:stack@v1#1", "sales:stack@v1")
    assert "base model" not in captured.err


def test_ask_refuses_a_skill_twice_before_loading_the_model(cli_env: Any, capsys: pytest.CaptureFixture[str]) -> None:
    db, _ = cli_env
    assert main([*db, "ask", "hi", "--adapter", "refunds", "--adapter", "refunds@v1", "--model", "/nonexistent"]) == 1
    assert "each skill once; 'refunds' appears more than once" in capsys.readouterr().err
    assert main([*db, "ask", "hi", "--adapter", "tones", "--model", "/nonexistent"]) == 1
    assert "did you mean 'tone'?" in capsys.readouterr().err


def test_rollback_of_a_misspelt_agent_suggests_the_agent(registry: AdapterRegistry) -> None:
    from agent_sleep.errors import NothingToRollBackError

    registry.deploy("helpdesk", "tone@v1")
    with pytest.raises(NothingToRollBackError, match=r"agent 'helpdsk' has no deployments; did you mean 'helpdesk'\?"):
        registry.rollback("helpdsk")


def test_runtime_adapter_lists_hold_each_skill_once(registry: AdapterRegistry, tiny: Any) -> None:
    from agent_sleep.runtime.live import LiveRuntime

    runtime = LiveRuntime(registry, handle=tiny[1])
    with pytest.raises(InvalidInputError, match="each skill once"):
        runtime.chat_model(adapters=["refunds@v1", "refunds"])
    assert runtime.chat_model(adapters=["refunds@v1", "tone"]).pinned.name == "refunds@v1+tone@v1"  # type: ignore[union-attr]
