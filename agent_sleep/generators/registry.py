"""Generators by name: config says ``d2l``, never an import path.

Each name maps to a lazy ``"module:attr"`` target (as lm-eval's ``lm_eval/api/registry.py``
does) that builds a :class:`~agent_sleep.interfaces.Generator`; the module is imported only
when that generator is asked for, so listing names never loads torch. An unknown name is a
ConfigError with a "did you mean".

Built in: ``d2l`` (:meth:`D2LGenerator.load <agent_sleep.generators.d2l.D2LGenerator.load>`:
``checkpoint``, ``handle``, ``settings``, ``chunk_tokens``, ``min_gate``, ``max_kept``), ``t2l``
(:meth:`T2LGenerator.load <agent_sleep.generators.t2l.T2LGenerator.load>`: ``checkpoint``, ``handle``,
``settings``), ``gradient_cd``
(:meth:`GradientCDGenerator.load <agent_sleep.generators.gradient_cd.GradientCDGenerator.load>`:
``handle``, ``settings``, ``config``, ``targets``, ``progress``) and ``sft``
(:meth:`SFTGenerator.load <agent_sleep.generators.sft.SFTGenerator.load>`: ``handle``, ``settings``,
``config``, ``progress``).
"""

from __future__ import annotations

import difflib
import importlib
import re
import threading
from collections.abc import Callable
from typing import Any

from agent_sleep.errors import ConfigError
from agent_sleep.interfaces import Generator

__all__ = ["available_generators", "generator_factory", "get_generator", "register_generator"]

_TARGETS: dict[str, str | Callable[..., Any]] = {
    "d2l": "agent_sleep.generators.d2l:D2LGenerator.load",
    "gradient_cd": "agent_sleep.generators.gradient_cd:GradientCDGenerator.load",
    "sft": "agent_sleep.generators.sft:SFTGenerator.load",
    "t2l": "agent_sleep.generators.t2l:T2LGenerator.load",
}
_LOCK = threading.Lock()
_NAME = re.compile(r"^[a-z][a-z0-9_]*$")
_TARGET = re.compile(r"^[\w.]+:[\w.]+$")


def available_generators() -> list[str]:
    """The registered names, sorted."""
    return sorted(_TARGETS)


def register_generator(name: str, target: str | Callable[..., Any], *, replace: bool = False) -> None:
    """Add a generator: ``target`` is a ``"module:attr"`` path or a callable that builds one from keyword args."""
    if not isinstance(name, str) or not _NAME.match(name):
        raise ConfigError(f"generator names are lowercase letters, digits and '_', got {name!r}")
    if isinstance(target, str) and not _TARGET.match(target):
        raise ConfigError(f"generator target must look like 'package.module:attr', got {target!r}")
    with _LOCK:
        if name in _TARGETS and not replace:
            raise ConfigError(f"generator {name!r} is already registered (pass replace=True to replace it)")
        _TARGETS[name] = target


def generator_factory(name: str) -> Callable[..., Any]:
    """What builds generator ``name`` (its module imported now); ConfigError for an unknown name."""
    target = _TARGETS.get(name)
    if target is None:
        known = available_generators()
        close = difflib.get_close_matches(str(name).lower(), known, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise ConfigError(f"unknown generator {name!r}{hint} (available: {', '.join(known)})")
    if callable(target):
        return target
    module_name, _, attr = target.partition(":")
    try:
        value: Any = importlib.import_module(module_name)
        for part in attr.split("."):
            value = getattr(value, part)
    except (ImportError, AttributeError) as exc:
        raise ConfigError(f"generator {name!r} points to {target!r}, which cannot be loaded: {exc}") from exc
    return value  # type: ignore[no-any-return]


def get_generator(name: str, **kwargs: Any) -> Generator[Any]:
    """Build generator ``name`` with ``kwargs`` (its loader's keyword arguments).

    ConfigError for an unknown name, or for a target that builds something that is not a Generator.
    """
    generator = generator_factory(name)(**kwargs)
    if not isinstance(generator, Generator):
        raise ConfigError(f"generator {name!r} built a {type(generator).__name__}, which lacks the Generator "
                          "methods (name, version, generate, write)")  # fmt: skip
    return generator
