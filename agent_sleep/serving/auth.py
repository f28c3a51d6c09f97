"""API keys, and which models each key may use.

A key may use every model (``--api-key``, or ``"*"`` in a keys file) or only
some agents' models. A keys file (JSON, or YAML by its ``.yaml``/``.yml``
suffix) maps each key to ``"*"`` or a list of names::

    {"sk-helpdesk": ["helpdesk"], "sk-ops": ["ops", "refunds"], "sk-admin": "*"}

A name grants that model and what belongs to it: ``helpdesk`` allows the agent
``helpdesk``, its stacks ``helpdesk:stack@v3`` and pinned versions
``helpdesk@v2``; a name joined by ``+`` (``refunds@v2+tone``) is allowed only
when every part is. A model the key may not use is answered exactly like one
that does not exist (404 ``model_not_found``, same message) and is left out of
``/v1/models``, so a key cannot probe for other agents' names.

Keys come from the command line or environment; never commit a keys file.
"""

from __future__ import annotations

import hmac
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent_sleep.errors import APIError, ConfigError

EVERYTHING = "*"


@dataclass(frozen=True)
class Grant:
    """The models one key may use; ``names`` None means every model."""

    names: frozenset[str] | None = None

    @property
    def restricted(self) -> bool:
        return self.names is not None

    def allows(self, model: str) -> bool:
        if self.names is None:
            return True
        return all(self._allows_part(part) for part in model.split("+"))

    def _allows_part(self, part: str) -> bool:
        assert self.names is not None
        if part in self.names:
            return True
        for sep in (":", "@"):
            owner, found, _ = part.partition(sep)
            if found and owner in self.names:
                return True
        return False

    def visible(self, names: Iterable[str]) -> list[str]:
        """The subset of ``names`` this key may use, in order."""
        return [name for name in names if self.allows(name)]


ALL = Grant()


def _grant(value: Any, where: str, problems: list[str]) -> Grant:
    if value == EVERYTHING:
        return ALL
    if isinstance(value, list) and all(isinstance(v, str) and v.strip() for v in value):
        names = frozenset(v.strip() for v in value)
        return ALL if EVERYTHING in names else Grant(names)
    problems.append(f"{where}: expected \"*\" or a list of model/agent names, got {value!r}")
    return Grant(frozenset())


class APIKeys:
    """Bearer keys and the :class:`Grant` of each."""

    def __init__(self, grants: Mapping[str, Grant]) -> None:
        self._grants = [(key.encode(), grant) for key, grant in grants.items()]

    @classmethod
    def single(cls, key: str) -> APIKeys:
        """One key that may use every model."""
        return cls({key: ALL})

    @classmethod
    def from_mapping(cls, raw: Any, *, source: str = "API keys") -> APIKeys:
        """Keys from ``{key: "*" | [names]}``; a :class:`ConfigError` lists every problem at once."""
        if not isinstance(raw, Mapping):
            raise ConfigError(f"{source}: expected a mapping of key -> \"*\" or a list of names")
        problems: list[str] = []
        grants: dict[str, Grant] = {}
        for i, (key, value) in enumerate(raw.items()):
            if not isinstance(key, str) or not key.strip() or key != key.strip():
                problems.append(f"{source}: key #{i + 1} must be a non-empty string without surrounding spaces")
                continue
            grants[key] = _grant(value, f"{source}: key #{i + 1}", problems)  # never echo the key itself
        if problems:
            raise ConfigError("\n".join(problems))
        if not grants:
            raise ConfigError(f"{source}: no keys")
        return cls(grants)

    @classmethod
    def from_file(cls, path: str | Path) -> APIKeys:
        """Keys from a JSON or YAML file (see the module docstring)."""
        path = Path(path)
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError(f"cannot read API keys file {path}: {exc.strerror or exc}") from None
        is_yaml = path.suffix.lower() in (".yaml", ".yml")
        try:
            if is_yaml:
                import yaml

                raw = yaml.safe_load(text)
            else:
                raw = json.loads(text)
        except Exception as exc:  # noqa: BLE001 - any parse error is a config problem
            # Only the position: YAML messages quote the offending line, which may hold a key.
            mark = getattr(exc, "problem_mark", None)
            if mark is not None:
                where = f"line {mark.line + 1}, column {mark.column + 1}"
            else:
                where = type(exc).__name__ if is_yaml else str(exc)
            raise ConfigError(f"API keys file {path} is not valid {'YAML' if is_yaml else 'JSON'}: {where}") from None
        return cls.from_mapping(raw, source=str(path))

    def merged(self, other: APIKeys | None) -> APIKeys:
        """These keys and ``other``'s (``other`` wins for a key in both)."""
        if other is None:
            return self
        combined = {key.decode(): grant for key, grant in self._grants}
        combined.update({key.decode(): grant for key, grant in other._grants})
        return APIKeys(combined)

    def __len__(self) -> int:
        return len(self._grants)

    def authorize(self, authorization: str) -> Grant:
        """The grant of the key in an ``Authorization: Bearer <key>`` header; a 401 :class:`APIError` otherwise."""
        scheme, _, token = authorization.partition(" ")
        found: Grant | None = None
        if scheme.lower() == "bearer":
            presented = token.strip().encode()
            for key, grant in self._grants:  # compare with every key: the time taken does not say which matched
                if hmac.compare_digest(presented, key) and found is None:
                    found = grant
        if found is not None:
            return found
        message = "incorrect API key provided" if authorization else "missing API key: send 'Authorization: Bearer <key>'"
        raise APIError(401, message, code="invalid_api_key", headers={"WWW-Authenticate": "Bearer"})


def check_api_key(authorization: str, api_key: str | None) -> None:
    """Raise a 401 :class:`APIError` unless ``authorization`` is ``Bearer <api_key>`` (anything goes without a key)."""
    if api_key is not None:
        APIKeys.single(api_key).authorize(authorization)


def unavailable(model: str) -> APIError:
    """The 404 for a model that does not exist or that the key may not use (one message for both)."""
    return APIError(
        404,
        f"model {model!r} does not exist or this API key may not use it",
        param="model",
        code="model_not_found",
    )


__all__ = ["ALL", "EVERYTHING", "APIKeys", "Grant", "check_api_key", "unavailable"]
