"""The cycle config: the shipped one loads, every problem of a bad one is listed at once with file and field."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent_sleep.consolidation.config import CycleConfig, load_cycle_config
from agent_sleep.errors import ConfigError

SHIPPED = Path(__file__).resolve().parents[2] / "pipelines" / "sleep" / "cycle.yaml"


def test_the_shipped_config_loads_and_starts_with_its_command() -> None:
    config = load_cycle_config(SHIPPED)
    assert config.generator("sft").budget_seconds == 120 and config.generator("sft").settings == {}
    assert config.evaluation.guard_limit == 16 and config.gate.max_guard_loss == 0.02
    assert config.routing is not None and config.routing.threshold == 0.55 and "sft" in config.routing.generators
    default = CycleConfig().routing  # without a routing block: only the d2l adapters are routed (#14)
    assert default is not None and default.generators == ("d2l",) and default.threshold_for("d2l") == 0.45
    assert CycleConfig.model_validate({"routing": None}).routing is None  # null: nothing routed
    assert SHIPPED.read_text().startswith("# .venv/bin/python pipelines/sleep/run_cycle.py")
    assert load_cycle_config(None) == CycleConfig()  # no file: every default


def test_every_problem_is_listed_at_once(tmp_path: Path) -> None:
    path = tmp_path / "cycle.yaml"
    path.write_text("agent: 'two words'\n"
                    "generators:\n  sfft: {}\n  sft: {settings: {rank: 0, nope: 1}}\n"
                    "evaluation: {guard_limit: 0}\n"
                    "gate: {min_target_gain: 2}\n"
                    "budget: 10\n")  # fmt: skip
    with pytest.raises(ConfigError) as info:
        load_cycle_config(path)
    text = str(info.value)
    assert text.startswith(f"{path} is not a valid cycle config:")
    for expected in ("agent: invalid agent name 'two words'", "unknown generator 'sfft'; did you mean 'sft'?",
                     "sft.settings.rank: Input should be greater than or equal to 1",
                     "sft.settings.nope: Extra inputs are not permitted",
                     "evaluation.guard_limit: Input should be greater than or equal to 1",
                     "gate.min_target_gain: Input should be less than or equal to 1",
                     "budget: Extra inputs are not permitted"):  # fmt: skip
        assert expected in text, expected


@pytest.mark.parametrize(("text", "message"), [
    ("gate: [unclosed\n", "is not valid YAML at line"),
    ("- a list\n", "must be a mapping of settings, got list"),
])  # fmt: skip
def test_unreadable_configs_name_the_file(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "cycle.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message):
        load_cycle_config(path)
    with pytest.raises(ConfigError, match="cannot read cycle config"):
        load_cycle_config(tmp_path / "missing.yaml")


def test_overrides_and_defaults(tmp_path: Path) -> None:
    path = tmp_path / "cycle.yaml"
    path.write_text("budget_seconds: 60\n")
    config = load_cycle_config(path, agent="helpdesk", budget_seconds=None)
    assert (config.agent, config.budget_seconds) == ("helpdesk", 60)
    assert config.generator("d2l").budget_seconds is None  # an unnamed generator runs on its defaults
    path.write_text("evaluation: {guards: my_guards}\n")
    assert load_cycle_config(path).evaluation.guards == tmp_path / "my_guards"  # relative to the config file


def test_routing_thresholds_per_generator() -> None:
    routing = CycleConfig.model_validate({"routing": {"threshold": 0.6, "thresholds": {"d2l": 0.4}}}).routing
    assert routing is not None and routing.threshold_for("d2l") == 0.4 and routing.threshold_for("sft") == 0.6
    with pytest.raises(ValueError, match=r"routing thresholds name \['sfft'\], which are not routed"):
        CycleConfig.model_validate({"routing": {"generators": ["sft"], "thresholds": {"sfft": 0.5}}})
    with pytest.raises(ValueError, match="routing threshold for 'd2l' must be a cosine in"):
        CycleConfig.model_validate({"routing": {"thresholds": {"d2l": 1.5}}})
    assert routing.name_bonus_for("d2l") == 0.1 and routing.name_bonus_for("sft") == 0.0
    with pytest.raises(ValueError, match=r"routing name_bonus name \['t2l'\], which are not routed"):
        CycleConfig.model_validate({"routing": {"generators": ["sft"], "name_bonus": {"t2l": 0.1}}})
    with pytest.raises(ValueError, match="name_bonus for 'd2l' must be in"):
        CycleConfig.model_validate({"routing": {"name_bonus": {"d2l": -0.1}}})
    # a config routing only sft is valid whatever the default thresholds name
    assert CycleConfig.model_validate({"routing": {"generators": ["sft"]}}).routing.threshold_for("sft") == 0.55
