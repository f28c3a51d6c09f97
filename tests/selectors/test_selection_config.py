"""The selection config a user edits: defaults, every problem at once with its path, the shipped YAML."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent_sleep.errors import ConfigError
from agent_sleep.selectors.base import SelectorContext
from agent_sleep.selectors.config import (
    DEFAULT_CHAIN,
    SelectionConfig,
    default_chain,
    load_selection_config,
    parse_selection_config,
)
from agent_sleep.selectors.registry import available_selectors, build_selector, register_selector, selector_class
from tests.helpers_selection import T0

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = ROOT / "pipelines" / "consolidation" / "selection.yaml"


def test_defaults() -> None:
    config = SelectionConfig()
    assert [s.name for s in config.chain] == [n for n in DEFAULT_CHAIN if n in available_selectors()]
    assert [s.name for s in config.chain][-1] == "novelty" and config.skills.dialog == "{agent}-dialog"
    assert config.probes.fraction == 0.2 and config.batch_size == 500
    chain = config.build_chain(SelectorContext("helpdesk", T0))
    assert [s.name for s in chain] == [s.name for s in config.chain]
    assert SelectionConfig.model_validate(config.model_dump(mode="json")) == config  # a run can store and reread it


def test_short_forms_and_params() -> None:
    config = parse_selection_config({"chain": ["outcome", {"name": "feedback", "params": {"min_score": 0.7}}]})
    assert [(s.name, s.params) for s in config.chain] == [("outcome", {}), ("feedback", {"min_score": 0.7})]
    assert config.chain[1].build(SelectorContext("a", T0)).params.min_score == 0.7  # type: ignore[attr-defined]
    assert parse_selection_config({"chain": []}).chain == ()


def test_every_problem_is_listed_at_once_with_its_path() -> None:
    bad = {
        "chain": ["outcome", {"name": "neardup"}, {"name": "feedback", "params": {"min_scor": 1, "good_labels": 3}},
                  "outcome", {"name": "recency", "params": {"days": 0}}],
        "skils": {},
        "probes": {"fraction": 2},
        "skills": {"declared": [{"name": "a b", "generator": "t3l"}, {"name": "{agnt}-x", "generator": "d2l"},
                                {"name": "faq", "generator": "d2l"}, {"name": "talk", "generator": "sft",
                                                                       "documents": ["*.md"]}]},
    }  # fmt: skip
    with pytest.raises(ConfigError) as info:
        parse_selection_config(bad, where="sel.yaml")
    text = str(info.value)
    assert text.startswith("sel.yaml: 12 problems:\n")
    for line in (
        "chain: each selector may appear once in the chain; twice: ['outcome']",
        "chain[1].name: unknown selector 'neardup'; did you mean 'near_dup'?",
        "chain[2].params.good_labels: Input should be a valid tuple",
        "chain[2].params.min_scor: unknown param; did you mean 'min_score'?",
        "chain[4].params: the window is empty: give days and/or hours above 0",
        "skils: unknown key; did you mean 'skills'?",
        "probes.fraction: Input should be less than or equal to 1",
        "skills.declared[0].name: invalid skill name 'a b'",
        "skills.declared[0].generator: Input should be 'd2l', 'gradient_cd', 'sft' or 't2l'",
        "skills.declared[1].name: bad placeholder 'agnt' (the only placeholder is {agent})",
        "skills.declared[2]: a d2l skill learns documents: give 'documents' (source globs)",
        "skills.declared[3]: an sft skill trains on the kept conversations, not on documents",
    ):
        assert "\n  " + line in text, line


def test_yaml_files(tmp_path: Path) -> None:
    path = tmp_path / "selection.yaml"
    path.write_text("", encoding="utf-8")
    assert load_selection_config(path) == SelectionConfig()
    path.write_text("chain:\n  - outcome\n  - name: budget\n    params: {max_episodes: -1}\nbatch_size: 0\n")
    with pytest.raises(ConfigError, match=r"(?s)selection.yaml: 2 problems:.*chain\[1\]\.params\.max_episodes: .*"
                                          r"greater than or equal to 0.*batch_size: "):  # fmt: skip
        load_selection_config(path)
    path.write_text("chain: [outcome\n")
    with pytest.raises(ConfigError, match="selection.yaml: not valid YAML"):
        load_selection_config(path)
    path.write_text("- outcome\n")
    with pytest.raises(ConfigError, match="expected a mapping of settings at the top, got list"):
        load_selection_config(path)
    with pytest.raises(ConfigError, match="does not exist"):
        load_selection_config(tmp_path / "missing.yaml")


def test_the_shipped_config_is_the_default() -> None:
    """The YAML users copy shows every default; when a selector is registered (redact, novelty), it must be
    added there too, or this fails."""
    shipped, default = load_selection_config(SHIPPED), SelectionConfig()
    assert [s.name for s in shipped.chain] == [s.name for s in default_chain()]
    assert shipped.model_dump(exclude={"chain"}) == default.model_dump(exclude={"chain"})
    defaults = {s.name: selector_class(s.name).Params() for s in SelectionConfig().chain}
    assert {s.name: selector_class(s.name).Params.model_validate(s.params) for s in shipped.chain} == defaults
    assert all(s.params for s in shipped.chain if selector_class(s.name).Params.model_fields)  # params spelled out


def test_registry_names_and_errors() -> None:
    with pytest.raises(ConfigError, match=r"unknown selector 'recenc'; did you mean 'recency'\? \(available: "):
        build_selector("recenc", {}, SelectorContext("a", T0))
    with pytest.raises(ConfigError, match="already registered"):
        register_selector("budget", "agent_sleep.selectors.budget:BudgetSelector")
    with pytest.raises(ConfigError, match="must look like"):
        register_selector("mine", "not a target")
    register_selector("broken_for_test", "agent_sleep.selectors.nothing_here:Nope")
    try:
        with pytest.raises(ConfigError, match="cannot be loaded"):
            parse_selection_config({"chain": ["broken_for_test"]})
    finally:
        from agent_sleep.selectors import registry

        registry._TARGETS.pop("broken_for_test")
