"""References to adapter versions and stacks, parsed in one place.

::

    refunds             AdapterRef("refunds")               the live version, else the newest usable one
    refunds@v2          AdapterRef("refunds", version=2)
    refunds@live        AdapterRef("refunds", alias="live")  also @previous and @candidate
    helpdesk:stack@v3   StackRef("helpdesk", 3)
    refunds@v2+tone     (AdapterRef("refunds", version=2), AdapterRef("tone"))   a request's model name

Parsing checks the form only and raises :class:`InvalidInputError` naming the
reference and the accepted forms; skill and agent names follow :mod:`agent_sleep.names`.
Whether the version exists is the registry's question (:class:`NotFoundError`).
``str()`` of a reference is its canonical text. :func:`check_one_per_skill` is the
rule every stack follows, named or ad hoc: each skill at most once.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TypeGuard

from agent_sleep.errors import InvalidInputError
from agent_sleep.names import check_name

__all__ = [
    "ALIASES", "AdapterRef", "StackRef", "check_one_per_skill", "is_stack_ref", "parse_adapter_list",
    "parse_adapter_ref", "parse_ref", "parse_stack_ref",
]  # fmt: skip

ALIASES: tuple[str, ...] = ("live", "previous", "candidate")
STACK_MARKER = ":stack@"
ADAPTER_FORMS = "use skill, skill@vN or skill@live"
STACK_FORM = "use agent:stack@vN"

_ADAPTER = re.compile(r"(?P<skill>[^@]+)(?:@(?:v(?P<version>\d+)|(?P<alias>[a-z_]+)))?")
_STACK = re.compile(r"(?P<agent>[^:]+):stack@v(?P<version>\d+)")


@dataclass(frozen=True)
class AdapterRef:
    """One skill's adapter: a version number, an alias, or neither (live, else newest usable)."""

    skill: str
    version: int | None = None
    alias: str | None = None

    def __str__(self) -> str:
        if self.version is not None:
            return f"{self.skill}@v{self.version}"
        return f"{self.skill}@{self.alias}" if self.alias is not None else self.skill


@dataclass(frozen=True)
class StackRef:
    """One version of an agent's adapter stack."""

    agent: str
    version: int

    def __str__(self) -> str:
        return f"{self.agent}{STACK_MARKER}v{self.version}"


def is_stack_ref(text: object) -> TypeGuard[str]:
    """Whether ``text`` is meant as a stack reference (it may still be malformed)."""
    return isinstance(text, str) and STACK_MARKER in text


def parse_stack_ref(text: object) -> StackRef:
    """``agent:stack@vN`` as a :class:`StackRef`."""
    m = _STACK.fullmatch(text.strip()) if isinstance(text, str) else None
    if m is None:
        raise InvalidInputError(f"not a stack reference: {text!r} ({STACK_FORM})")
    try:
        check_name(m["agent"], "agent name")
    except InvalidInputError as exc:
        raise InvalidInputError(f"not a stack reference: {text!r} ({STACK_FORM}): {exc}") from None
    return StackRef(agent=m["agent"], version=int(m["version"]))


def parse_adapter_ref(text: object) -> AdapterRef:
    """``skill``, ``skill@vN`` or ``skill@<alias>`` as an :class:`AdapterRef`."""
    if is_stack_ref(text):
        raise InvalidInputError(f"{text!r} names a stack, not an adapter ({ADAPTER_FORMS})")
    m = _ADAPTER.fullmatch(text.strip()) if isinstance(text, str) else None
    if m is None:
        raise InvalidInputError(f"not an adapter reference: {text!r} ({ADAPTER_FORMS})")
    try:
        check_name(m["skill"], "adapter/skill name")
    except InvalidInputError as exc:
        raise InvalidInputError(f"not an adapter reference: {text!r}: {exc}") from None
    alias = m["alias"]
    if alias is not None and alias not in ALIASES:
        raise InvalidInputError(f"unknown alias {alias!r} in {text!r}; aliases: {', '.join(ALIASES)}")
    return AdapterRef(skill=m["skill"], version=int(m["version"]) if m["version"] else None, alias=alias)


def parse_adapter_list(text: str) -> tuple[AdapterRef, ...]:
    """Adapters joined by ``+`` (``refunds@v2+tone``), in order."""
    return tuple(parse_adapter_ref(part) for part in text.split("+"))


def check_one_per_skill(refs: Iterable[AdapterRef | str]) -> None:
    """Refuse a stack that names a skill twice (``refunds@v1+refunds@v2`` would add both deltas)."""
    parsed = [r if isinstance(r, AdapterRef) else parse_adapter_ref(r) for r in refs]
    skills = [r.skill for r in parsed]
    twice = sorted({s for s in skills if skills.count(s) > 1})
    if twice:
        raise InvalidInputError(f"a stack holds each skill once; {', '.join(map(repr, twice))} appears more than once "
                                f"in {'+'.join(map(str, parsed))}")


def parse_ref(text: str) -> AdapterRef | StackRef:
    """A stack reference if ``text`` has ``:stack@``, else an adapter reference."""
    return parse_stack_ref(text) if is_stack_ref(text) else parse_adapter_ref(text)
