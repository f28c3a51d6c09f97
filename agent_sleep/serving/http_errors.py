"""Errors as HTTP answers: every exception a request raises becomes an OpenAI-style error body.

``{"error": {"message", "type", "param", "code"}}``, with the status of its
kind: 400 for bad input (naming the field), 404 for unknown names, 500 for
everything unexpected (without leaking its message), plus the few statuses the
server itself answers (503 while shutting down, 499 for a client that left).
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from agent_sleep.errors import AgentSleepError, APIError, InvalidInputError, NotFoundError, RequestError

logger = logging.getLogger("agent_sleep.serving")


def as_api_error(exc: BaseException) -> APIError:
    """The HTTP error for an exception raised while handling a request."""
    if isinstance(exc, APIError):
        return exc
    if isinstance(exc, RequestError):
        return APIError(400, str(exc), param=exc.param, code=exc.code)
    if isinstance(exc, NotFoundError):
        return APIError(404, str(exc), code="not_found")
    if isinstance(exc, InvalidInputError):
        return APIError(400, str(exc))
    if isinstance(exc, AgentSleepError):
        return APIError(500, f"{type(exc).__name__}: {exc}", type="server_error")
    logger.error("unexpected error while serving a request", exc_info=exc)
    return APIError(500, f"internal server error ({type(exc).__name__})", type="server_error")


def _param(loc: tuple[Any, ...]) -> str | None:
    # Drop "body" and the union-member labels pydantic adds ("str", "list[str]", "function-after[...]").
    parts = [
        p for p in loc[1:]
        if isinstance(p, int) or (isinstance(p, str) and p.isidentifier() and p not in _TYPE_LABELS)
    ]
    text = ""
    for part in parts:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else part)
    return text or None


_TYPE_LABELS = frozenset({"str", "int", "float", "bool", "dict", "list", "none", "StreamOptions"})


def validation_error(exc: RequestValidationError) -> APIError:
    """One 400 for a body FastAPI could not validate, naming the first bad field."""
    by_param: dict[str | None, list[str]] = {}
    for err in exc.errors():
        if err.get("type") == "json_invalid":
            return APIError(400, f"request body is not valid JSON: {err.get('ctx', {}).get('error', err['msg'])}")
        msgs = by_param.setdefault(_param(tuple(err.get("loc", ()))), [])
        if err["msg"] not in msgs:
            msgs.append(err["msg"])
    param, msgs = next(iter(by_param.items()), (None, ["invalid request"]))
    return APIError(400, f"{param or 'request body'}: {' or '.join(msgs)}", param=param)


def error_response(exc: APIError) -> JSONResponse:
    return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers)


async def handle_api_error(request: Request, exc: APIError) -> JSONResponse:
    return error_response(exc)


async def handle_validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    return error_response(validation_error(exc))


async def handle_http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    kind = "not_found_error" if exc.status_code == 404 else "invalid_request_error"
    return error_response(APIError(exc.status_code, str(exc.detail), type=kind, headers=exc.headers))


async def handle_unexpected(request: Request, exc: Exception) -> JSONResponse:
    return error_response(as_api_error(exc))


def shutting_down() -> APIError:
    return APIError(503, "the server is shutting down; retry the request", type="server_error",
                    code="server_shutting_down")  # fmt: skip


def client_gone() -> APIError:
    # Nobody reads this answer; the status shows in the access log (nginx's convention).
    return APIError(499, "the client closed the request", code="client_closed_request")


__all__ = [
    "as_api_error", "client_gone", "error_response", "handle_api_error", "handle_http_error", "handle_unexpected",
    "handle_validation_error", "shutting_down", "validation_error",
]  # fmt: skip
