"""Limits that keep one request from holding the server hostage, and the ASGI middleware for the body cap.

:class:`ServingLimits` is the config (``agent-sleep serve`` flags map onto it).
The body cap is checked before anything parses the body: a declared
``Content-Length`` over the cap is answered 413 at once, a chunked body is
read up to the cap and then replayed to the app. The token cap is enforced by
the app (:func:`agent_sleep.serving.openai_format.ChatCompletionRequest.check_supported`
and :func:`~agent_sleep.serving.openai_format.call_kwargs`).
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from agent_sleep.errors import APIError

MiB = 1024 * 1024


class ServingLimits(BaseModel):
    """What a single request may ask of the server."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    max_tokens: int = Field(
        default=2048,
        gt=0,
        description="Largest max_tokens a request may ask for (400 above it); also caps a model's default length.",
    )
    max_body_bytes: int = Field(default=4 * MiB, gt=0, description="Largest request body (413 above it).")
    reply_attempts: int = Field(
        default=3, ge=1, le=10, description="Tries for a reply that must be JSON or a forced tool call."
    )


def _content_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", []):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


class BodyLimit:
    """ASGI middleware: 413 for a request body over ``max_bytes``, before the app reads any of it."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = _content_length(scope)
        if length is not None:
            if length > self.max_bytes:
                await self._reject(scope, receive, send)
            else:  # the server reads exactly Content-Length bytes, so nothing more can arrive
                await self.app(scope, receive, send)
            return
        # No length given (chunked upload): read up to the cap, then replay.
        chunks: list[bytes] = []
        size = 0
        pending: list[Message] = []
        while True:
            message = await receive()
            if message["type"] != "http.request":
                pending.append(message)  # the client left mid-upload: let the app see it
                break
            body = message.get("body", b"")
            size += len(body)
            if size > self.max_bytes:
                await self._reject(scope, receive, send)
                return
            chunks.append(body)
            if not message.get("more_body", False):
                break
        pending.insert(0, {"type": "http.request", "body": b"".join(chunks), "more_body": False})

        async def replay() -> Message:
            return pending.pop(0) if pending else await receive()

        await self.app(scope, replay, send)

    async def _reject(self, scope: Scope, receive: Receive, send: Send) -> None:
        error = APIError(
            413,
            f"request body is larger than this server's limit of {self.max_bytes} bytes",
            code="request_too_large",
        )
        await JSONResponse(error.body(), status_code=413)(scope, receive, send)


def limits_from(**values: Any) -> ServingLimits:
    """:class:`ServingLimits` from the values that are set (None keeps the default)."""
    return ServingLimits(**{k: v for k, v in values.items() if v is not None})


__all__ = ["BodyLimit", "ServingLimits", "limits_from"]
