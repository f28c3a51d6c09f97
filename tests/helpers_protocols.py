"""Does an implementation fit a Protocol of ``agent_sleep.interfaces``, call for call?

``isinstance`` on a ``runtime_checkable`` Protocol only checks that the names exist. This
compares signatures too: every call the Protocol allows must be a call the implementation
accepts (same positions, keyword names, defaults where the Protocol has them), and whatever
the implementation adds must have a default.
"""

from __future__ import annotations

import inspect
from typing import Any

_POSITIONAL = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
_KEYWORD = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)


def _members(protocol: type) -> list[str]:
    names = set()
    for klass in protocol.__mro__:
        if klass in (object,) or klass.__name__ in ("Protocol", "Generic"):
            continue
        names.update(n for n in vars(klass) if not n.startswith("_"))
    return sorted(names)


def _signature_problems(name: str, want: inspect.Signature, have: inspect.Signature) -> list[str]:
    problems = []
    want_params = list(want.parameters.values())[1:]  # drop self
    have_params = list(have.parameters.values())
    if have_params and have_params[0].name in ("self", "cls") and have_params[0].kind in _POSITIONAL:
        have_params = have_params[1:]
    have_var_pos = any(p.kind is inspect.Parameter.VAR_POSITIONAL for p in have_params)
    have_var_kw = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in have_params)
    have_pos = [p for p in have_params if p.kind in _POSITIONAL]
    have_by_name = {p.name: p for p in have_params if p.kind in _KEYWORD}
    used: set[str] = set()
    for i, p in enumerate(q for q in want_params if q.kind in _POSITIONAL):
        if i >= len(have_pos):
            if not have_var_pos:
                problems.append(f"{name}: takes no positional argument #{i + 1} ({p.name})")
            continue
        h = have_pos[i]
        used.add(h.name)
        if p.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD and h.name != p.name:
            problems.append(f"{name}: argument #{i + 1} is {h.name!r}, the Protocol calls it {p.name!r}")
        if p.default is not inspect.Parameter.empty and h.default is inspect.Parameter.empty:
            problems.append(f"{name}: {h.name!r} needs a default")
    for p in want_params:
        if p.kind is inspect.Parameter.KEYWORD_ONLY:
            h = have_by_name.get(p.name)
            if h is None:
                if not have_var_kw:
                    problems.append(f"{name}: does not take keyword {p.name!r}")
                continue
            used.add(h.name)
            if p.default is not inspect.Parameter.empty and h.default is inspect.Parameter.empty:
                problems.append(f"{name}: keyword {p.name!r} needs a default")
        elif p.kind is inspect.Parameter.VAR_KEYWORD and not have_var_kw:
            problems.append(f"{name}: does not take **{p.name}")
        elif p.kind is inspect.Parameter.VAR_POSITIONAL and not have_var_pos:
            problems.append(f"{name}: does not take *{p.name}")
    for h in have_params:
        if h.name not in used and h.kind in (*_POSITIONAL, inspect.Parameter.KEYWORD_ONLY) \
                and h.default is inspect.Parameter.empty:
            problems.append(f"{name}: its own argument {h.name!r} has no default")
    return problems


def protocol_mismatches(impl: Any, protocol: type) -> list[str]:
    """What keeps ``impl`` (an object or a class) from fitting ``protocol``; empty when it fits."""
    problems = []
    for name in _members(protocol):
        declared = inspect.getattr_static(protocol, name)
        if not hasattr(impl, name):
            problems.append(f"missing {name}")
            continue
        if isinstance(declared, property):
            if callable(inspect.getattr_static(impl, name, None)) and not isinstance(
                    inspect.getattr_static(impl, name), property):  # fmt: skip
                problems.append(f"{name}: a method, the Protocol has a value")
            continue
        if callable(declared):
            have = getattr(impl, name)
            if not callable(have):
                problems.append(f"{name}: not callable")
                continue
            problems += _signature_problems(name, inspect.signature(declared), inspect.signature(have))
    return problems
