"""An OpenAI-compatible HTTP API over model resolvers.

:class:`ModelResolver` decides which LangChain chat model (and which pinned
version of it) answers a request's ``model`` name; :func:`create_app` builds the
FastAPI app (``/v1/models``, ``/v1/chat/completions`` with streaming, tools and
JSON ``response_format``, ``/health``); :class:`APIKeys` limits keys to some
agents' models and :class:`ServingLimits` caps what one request may ask;
:func:`serve` and :class:`ServerThread` run it with uvicorn.

Importing this package is light: the resolver types load eagerly, the web
stack (FastAPI, uvicorn) only when one of its names is first used.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

from agent_sleep.serving.resolver import ModelResolver, ResolvedChat, StaticResolver

_LAZY = {
    "APIError": "agent_sleep.serving.app",
    "APIKeys": "agent_sleep.serving.auth",
    "ServingLimits": "agent_sleep.serving.limits",
    "create_app": "agent_sleep.serving.app",
    "ServerThread": "agent_sleep.serving.server",
    "serve": "agent_sleep.serving.server",
    "add_serve_arguments": "agent_sleep.serving.cli",
    "run_serve": "agent_sleep.serving.cli",
}

if TYPE_CHECKING:  # pragma: no cover
    from agent_sleep.serving.app import APIError, create_app
    from agent_sleep.serving.auth import APIKeys
    from agent_sleep.serving.limits import ServingLimits
    from agent_sleep.serving.cli import add_serve_arguments, run_serve
    from agent_sleep.serving.server import ServerThread, serve


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "APIError", "APIKeys", "ModelResolver", "ResolvedChat", "ServerThread", "ServingLimits", "StaticResolver",
    "add_serve_arguments",
    "create_app", "run_serve", "serve",
]  # fmt: skip
