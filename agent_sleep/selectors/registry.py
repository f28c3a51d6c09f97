"""Selectors by name: a chain in config says ``near_dup``, never an import path.

Each name maps to a lazy ``"module:Class"`` target (as lm-eval's ``lm_eval/api/registry.py`` does).
The class has ``Params`` (a frozen pydantic model that refuses unknown keys: what a user writes under
``params:``) and ``from_params(params, context) -> Selector`` (see :mod:`agent_sleep.selectors.base`).
An unknown name is a ConfigError with a "did you mean" and the list of known names.

Built in: ``redact``, ``outcome``, ``feedback``, ``corrections``, ``recency``, ``near_dup``, ``novelty``,
``budget``, ``prompts``.
To add one: give the class ``Params`` and ``from_params``, and a line in ``_TARGETS`` below (or call
:func:`register_selector`).
"""

from __future__ import annotations

import importlib
import re
import threading
from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel

from agent_sleep.errors import ConfigError
from agent_sleep.interfaces import Selector
from agent_sleep.names import did_you_mean
from agent_sleep.selectors.base import SelectorContext

__all__ = ["available_selectors", "build_selector", "params_model", "register_selector", "selector_class"]

_TARGETS: dict[str, str | type] = {
    "redact": "agent_sleep.selectors.redact:RedactSelector",
    "novelty": "agent_sleep.selectors.novelty:NoveltySelector",
    "outcome": "agent_sleep.selectors.outcome:OutcomeSelector",
    "feedback": "agent_sleep.selectors.feedback:FeedbackSelector",
    "corrections": "agent_sleep.selectors.corrections:CorrectionsSelector",
    "recency": "agent_sleep.selectors.recency:RecencySelector",
    "near_dup": "agent_sleep.selectors.near_dup:NearDupSelector",
    "budget": "agent_sleep.selectors.budget:BudgetSelector",
    "prompts": "agent_sleep.selectors.prompts:PromptsSelector",
}
_LOCK = threading.Lock()
_NAME = re.compile(r"^[a-z][a-z0-9_]*$")
_TARGET = re.compile(r"^[\w.]+:[\w.]+$")


def available_selectors() -> list[str]:
    """The registered names, sorted."""
    return sorted(_TARGETS)


def register_selector(name: str, target: str | type, *, replace: bool = False) -> None:
    """Add a selector: ``target`` is a ``"module:Class"`` path or the class (with ``Params`` and ``from_params``)."""
    if not isinstance(name, str) or not _NAME.match(name):
        raise ConfigError(f"selector names are lowercase letters, digits and '_', got {name!r}")
    if isinstance(target, str) and not _TARGET.match(target):
        raise ConfigError(f"selector target must look like 'package.module:Class', got {target!r}")
    with _LOCK:
        if name in _TARGETS and not replace:
            raise ConfigError(f"selector {name!r} is already registered (pass replace=True to replace it)")
        _TARGETS[name] = target


def unknown_selector(name: object) -> str:
    """The sentence for a name nobody registered: did you mean, and which names there are."""
    known = available_selectors()
    return f"unknown selector {name!r}{did_you_mean(str(name), known)} (available: {', '.join(known)})"


def selector_class(name: str) -> Any:
    """The class behind selector ``name`` (its module imported now); ConfigError for an unknown name."""
    target = _TARGETS.get(name)
    if target is None:
        raise ConfigError(unknown_selector(name))
    if not isinstance(target, str):
        return target
    module_name, _, attr = target.partition(":")
    try:
        value: Any = importlib.import_module(module_name)
        for part in attr.split("."):
            value = getattr(value, part)
    except (ImportError, AttributeError) as exc:
        raise ConfigError(f"selector {name!r} points to {target!r}, which cannot be loaded: {exc}") from exc
    if not (isinstance(getattr(value, "Params", None), type) and issubclass(value.Params, BaseModel)
            and callable(getattr(value, "from_params", None))):  # fmt: skip
        raise ConfigError(f"selector {name!r} ({target}) needs a pydantic 'Params' model and 'from_params'")
    return value


def params_model(name: str) -> type[BaseModel]:
    """The pydantic model of selector ``name``'s params."""
    return selector_class(name).Params  # type: ignore[no-any-return]


def build_selector(name: str, params: Mapping[str, Any] | BaseModel | None, context: SelectorContext) -> Selector[Any]:
    """A fresh selector ``name`` for one run; ``params`` are validated here if given as a mapping."""
    cls = selector_class(name)
    if not isinstance(params, cls.Params):
        params = cls.Params.model_validate(dict(params or {}))
    selector = cls.from_params(params, context)
    if not isinstance(selector, Selector):
        raise ConfigError(f"selector {name!r} built a {type(selector).__name__}, which lacks name and select")
    return selector  # type: ignore[no-any-return]
