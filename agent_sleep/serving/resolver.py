"""Model resolvers: how the HTTP API turns a request's ``model`` name into a chat model.

The server knows nothing about adapters or agents. It asks a
:class:`ModelResolver` for the names it may list and, per request, for a
:class:`ResolvedChat`: a LangChain chat model to run plus the ``version`` string
the request is pinned to. The version is fixed when ``resolve`` returns, so a
request that waits behind others still reports (as ``system_fingerprint``) the
exact stack it was resolved to, even if a newer one goes live meanwhile.

This module imports neither FastAPI nor torch, so a runtime can implement the
protocol without pulling in the web stack.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from langchain_core.language_models import BaseChatModel

from agent_sleep.errors import InvalidInputError, NotFoundError


@dataclass(frozen=True)
class ResolvedChat:
    """What one request runs on.

    ``model`` is any LangChain chat model (tools need ``bind_tools``).
    ``version`` is reported as the response's ``system_fingerprint``; make it
    identify exactly what ran (for example the adapter stack version).
    ``release``, when given, is called exactly once when the request is done with
    the model (success, error or client disconnect), from a worker thread; a
    runtime can use it to drop a lease that keeps a pinned stack loaded.
    ``name`` overrides the ``model`` field echoed in responses (default: the
    requested name).
    """

    model: BaseChatModel
    version: str
    release: Callable[[], None] | None = None
    name: str | None = None


@runtime_checkable
class ModelResolver(Protocol):
    """Maps request model names to chat models.

    Both methods may block: the server calls them on worker threads, several at
    once, so they must be thread-safe. ``resolve`` runs once per request, before
    the request waits for the model; the returned model is then used from one
    worker thread at a time for that request.
    """

    def list_models(self) -> list[str]:
        """Names for ``GET /v1/models``. ``resolve`` may accept more (e.g. pinned ``skill@v3``)."""
        ...

    def resolve(self, name: str) -> ResolvedChat:
        """The model for ``name``, pinned now; raise :class:`NotFoundError` for an unknown name."""
        ...


class StaticResolver:
    """A fixed name → chat model mapping (tests, simple deployments).

    ``versions`` gives each name's ``system_fingerprint``; names without one
    report ``default_version``.
    """

    def __init__(
        self,
        mapping: Mapping[str, BaseChatModel],
        *,
        versions: Mapping[str, str] | None = None,
        default_version: str = "static",
    ) -> None:
        for name, model in mapping.items():
            if not isinstance(name, str) or not name:
                raise InvalidInputError(f"model names must be non-empty strings, got {name!r}")
            if not isinstance(model, BaseChatModel):
                raise InvalidInputError(f"model {name!r} is a {type(model).__name__}, not a LangChain BaseChatModel")
        self._mapping = dict(mapping)
        self._versions = dict(versions or {})
        self._default_version = default_version

    def list_models(self) -> list[str]:
        return list(self._mapping)

    def resolve(self, name: str) -> ResolvedChat:
        try:
            model = self._mapping[name]
        except KeyError:
            raise NotFoundError(f"model {name!r} does not exist; available: {sorted(self._mapping)}") from None
        return ResolvedChat(model=model, version=self._versions.get(name, self._default_version))


__all__ = ["ModelResolver", "ResolvedChat", "StaticResolver"]
