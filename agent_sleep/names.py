"""Names of agents and skills: the one rule, and "did you mean" for names that do not exist.

An agent or skill name is 1-64 characters from ``A-Z a-z 0-9 _ . -``, starting
with a letter or digit. That makes every name a safe folder name on every
platform (no separators, no ``..``, no hidden names) and keeps names apart from
the reference syntax of :mod:`agent_sleep.registry.refs` (``@`` versions,
``:stack@`` stacks, ``+`` lists), so ``refunds@v2`` can never be an agent.

Capture, the stores, the registry, the CLI and adapter manifests all check
names here. Whether a valid name is *free* (an agent may not share a skill's
name) is the registry's question, not this module's.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable

from agent_sleep.errors import InvalidInputError

__all__ = ["MAX_NAME_LENGTH", "NAME_RULE", "check_agent_name", "check_name", "check_skill_name", "did_you_mean"]

MAX_NAME_LENGTH = 64
NAME_RULE = (
    f"use 1-{MAX_NAME_LENGTH} characters from A-Z a-z 0-9 _ . -, starting with a letter or digit "
    "(no spaces, path separators, @ : or +)"
)
_NAME = re.compile(rf"[A-Za-z0-9][A-Za-z0-9_.-]{{0,{MAX_NAME_LENGTH - 1}}}")


def check_name(name: object, what: str = "name", *, error: type[InvalidInputError] = InvalidInputError) -> str:
    """Return ``name`` if it follows the rule; else raise ``error`` saying ``invalid <what> ...``."""
    if isinstance(name, str) and _NAME.fullmatch(name):
        return name
    shown = _shorten(name) if isinstance(name, str) else type(name).__name__
    raise error(f"invalid {what} {shown!r}: {NAME_RULE}")


def check_agent_name(name: object, *, error: type[InvalidInputError] = InvalidInputError) -> str:
    return check_name(name, "agent name", error=error)


def check_skill_name(name: object, *, error: type[InvalidInputError] = InvalidInputError) -> str:
    return check_name(name, "skill name", error=error)


def did_you_mean(name: str, known: Iterable[str]) -> str:
    """``"; did you mean 'x'?"`` naming the closest of ``known`` (up to three), or ``""`` if none is close."""
    close = difflib.get_close_matches(name, sorted(set(known)), n=3, cutoff=0.6)
    if not close:
        return ""
    return "; did you mean " + " or ".join(repr(c) for c in close) + "?"


def _shorten(text: str, limit: int = 80) -> str:
    # A 10 kB "name" must not turn the error message into 10 kB.
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"
