"""The OpenAI-compatible HTTP API (FastAPI) over a :class:`ModelResolver`.

Routes: ``GET /health`` (never needs a key), ``GET /v1/models``,
``GET /v1/models/{name}`` and ``POST /v1/chat/completions`` (plain or SSE
stream). Every error body has OpenAI's shape
``{"error": {"message", "type", "param", "code"}}``.

The pieces are top-level so each can be used and tested alone:
:class:`ServingState` (what one app serves with), :func:`check_api_key`,
:func:`prepare_chat` (request → resolved :class:`ChatCall`),
:func:`complete_chat` / :func:`stream_chat` / :func:`sse_events`, one function
per route, the error handlers, and :func:`create_app`, which only wires them.

Threads: generation is blocking, so every request's whole model call (tool
binding, ``invoke`` or the complete ``stream`` loop) runs on one worker of a
dedicated pool, and streamed chunks are handed to the event loop through a
queue. A streamed request never needs a *second* pool slot to make progress,
which matters because local models serialise generation on a lock held across
yields: with a one-slot-per-``next()`` design, requests waiting for that lock
could occupy every slot and starve the holder (a deadlock). Resolver calls run
on Starlette's default pool, so ``/v1/models`` stays quick while generation
queues.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import Receive, Scope, Send

from agent_sleep._version import __version__
from agent_sleep.errors import AgentSleepError, APIError, InvalidInputError, NotFoundError, RequestError
from agent_sleep.serving.openai_format import (
    ChatCompletionRequest,
    ChunkWriter,
    call_kwargs,
    check_tools,
    completion_body,
    new_completion_id,
    now,
    to_langchain_messages,
)
from agent_sleep.serving.resolver import ModelResolver, ResolvedChat

logger = logging.getLogger("agent_sleep.serving")

DEFAULT_MAX_WORKERS = 64


# ---------------------------------------------------------------- errors as HTTP answers


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


# ---------------------------------------------------------------- app state and auth


@dataclass(frozen=True)
class ServingState:
    """What one app serves with: the resolver, the generation pool, the API key and its start time."""

    resolver: ModelResolver
    executor: ThreadPoolExecutor
    api_key: str | None = None
    started: int = 0

    @classmethod
    def create(
        cls, resolver: ModelResolver, *, api_key: str | None = None, max_workers: int = DEFAULT_MAX_WORKERS
    ) -> ServingState:
        if not (hasattr(resolver, "list_models") and hasattr(resolver, "resolve")):
            raise InvalidInputError(
                f"resolver must implement list_models() and resolve(name), got {type(resolver).__name__}"
            )
        if max_workers < 1:
            raise InvalidInputError(f"max_workers must be at least 1, got {max_workers}")
        executor = ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="agent-sleep-serve")
        return cls(resolver=resolver, executor=executor, api_key=api_key, started=int(time.time()))

    def model_object(self, name: str) -> dict[str, Any]:
        return {"id": name, "object": "model", "created": self.started, "owned_by": "agent-sleep"}


def get_state(request: Request) -> ServingState:
    state: ServingState = request.app.state.serving
    return state


State = Annotated[ServingState, Depends(get_state)]


def check_api_key(authorization: str, api_key: str | None) -> None:
    """Raise a 401 :class:`APIError` unless ``authorization`` is ``Bearer <api_key>`` (anything goes without a key)."""
    if api_key is None:
        return
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() == "bearer" and hmac.compare_digest(token.strip().encode(), api_key.encode()):
        return
    message = "incorrect API key provided" if authorization else "missing API key: send 'Authorization: Bearer <key>'"
    raise APIError(401, message, code="invalid_api_key", headers={"WWW-Authenticate": "Bearer"})


async def require_api_key(request: Request, state: State) -> None:
    check_api_key(request.headers.get("authorization", ""), state.api_key)


# ---------------------------------------------------------------- resolving a request


class _Once:
    """Calls ``fn`` at most once, from whichever thread gets there first."""

    def __init__(self, fn: Callable[[], None] | None) -> None:
        self._fn, self._lock = fn, threading.Lock()

    def __call__(self) -> None:
        with self._lock:
            fn, self._fn = self._fn, None
        if fn is not None:
            try:
                fn()
            except Exception:
                logger.exception("resolver release callback failed")


async def resolve_chat(resolver: ModelResolver, name: str) -> ResolvedChat:
    """``resolver.resolve(name)`` off the loop; unknown names are 404 ``model_not_found``."""
    try:
        resolved = await run_in_threadpool(resolver.resolve, name)
    except NotFoundError as exc:
        raise APIError(404, str(exc), param="model", code="model_not_found") from None
    except Exception as exc:
        raise as_api_error(exc) from exc
    if not isinstance(resolved, ResolvedChat):
        raise APIError(500, f"resolver returned {type(resolved).__name__}, not ResolvedChat", type="server_error")
    return resolved


@dataclass(frozen=True)
class ChatCall:
    """One checked chat request pinned to a model: what to run and what the reply reports.

    ``release`` must be called exactly once when the call is done with the
    model; :func:`complete_chat` and :func:`stream_chat` see to that.
    """

    resolved: ResolvedChat
    name: str
    messages: list[BaseMessage]
    stop: list[str] | None
    tools: list[dict[str, Any]]
    tool_choice: Any
    kwargs: dict[str, Any]
    meta: dict[str, Any]  # completion_id, created, model, fingerprint
    release: Callable[[], None]
    stream: bool
    include_usage: bool

    def runnable(self) -> Any:
        if not self.tools:
            return self.resolved.model
        try:
            return self.resolved.model.bind_tools(self.tools, tool_choice=self.tool_choice)
        except NotImplementedError:
            raise RequestError(f"model {self.name!r} does not support tools", "tools") from None


async def prepare_chat(resolver: ModelResolver, body: ChatCompletionRequest) -> ChatCall:
    """Check ``body`` (400 naming the field, before anything is resolved), then resolve its model."""
    try:
        body.check_supported()
        messages = to_langchain_messages(body.messages)
        tools, choice = check_tools(body.tools, body.tool_choice)
    except RequestError as exc:
        raise as_api_error(exc) from None
    resolved = await resolve_chat(resolver, body.model)
    release = _Once(resolved.release)
    name = resolved.name or body.model
    meta = {"completion_id": new_completion_id(), "created": now(), "model": name, "fingerprint": resolved.version}
    try:
        kwargs = call_kwargs(resolved.model, body)
    except Exception:
        release()
        raise
    return ChatCall(
        resolved=resolved, name=name, messages=messages, stop=body.stop_list, tools=tools, tool_choice=choice,
        kwargs=kwargs, meta=meta, release=release, stream=bool(body.stream), include_usage=body.include_usage,
    )  # fmt: skip


# ---------------------------------------------------------------- running the model off the loop


async def complete_chat(executor: ThreadPoolExecutor, call: ChatCall) -> dict[str, Any]:
    """The ``chat.completion`` body of a non-streamed call, generated on ``executor``."""

    def work() -> AIMessage:
        try:
            return call.runnable().invoke(call.messages, stop=call.stop, **call.kwargs)
        finally:
            call.release()

    future = asyncio.get_running_loop().run_in_executor(executor, work)
    future.add_done_callback(lambda f: call.release() if f.cancelled() else None)
    try:
        message = await future
    except Exception as exc:
        raise as_api_error(exc) from exc
    if not isinstance(message, AIMessage):
        raise APIError(500, f"model returned {type(message).__name__}, not AIMessage", type="server_error")
    return completion_body(message, **call.meta)


CHUNK, END, ERROR = "chunk", "end", "error"


class StreamPump:
    """Runs a blocking chunk iterator on one worker thread and queues its chunks for the event loop.

    Events are ``(CHUNK, chunk)``, then ``(END, None)`` or ``(ERROR, exc)``.
    ``cancel`` (client gone) makes the worker stop after the chunk in hand and
    close the iterator, which releases the model's lock. ``release`` is called
    once when the worker is done (or never started because the pool shut down).
    Create it inside the event loop that reads it.
    """

    def __init__(
        self, executor: ThreadPoolExecutor, work: Callable[[], Iterator[AIMessageChunk]], release: Callable[[], None]
    ) -> None:
        self._loop = asyncio.get_running_loop()
        self._queue: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
        self._stop = threading.Event()
        once = _Once(release)
        future = self._loop.run_in_executor(executor, self._run, work, once)
        future.add_done_callback(lambda f: once() if f.cancelled() else None)  # pool shut down first

    def _put(self, item: tuple[str, Any]) -> None:
        try:
            self._loop.call_soon_threadsafe(self._queue.put_nowait, item)
        except RuntimeError:  # the event loop is closed: the server is gone
            self._stop.set()

    def _run(self, work: Callable[[], Iterator[AIMessageChunk]], release: _Once) -> None:
        iterator: Iterator[AIMessageChunk] | None = None
        try:
            if self._stop.is_set():
                return
            iterator = iter(work())
            for chunk in iterator:
                self._put((CHUNK, chunk))
                if self._stop.is_set():
                    break
            self._put((END, None))
        except BaseException as exc:  # noqa: BLE001 - handed to the request task
            self._put((ERROR, exc))
        finally:
            try:
                if iterator is not None and hasattr(iterator, "close"):
                    iterator.close()  # type: ignore[attr-defined]
            except Exception:
                logger.exception("closing a model stream failed")
            release()

    async def get(self) -> tuple[str, Any]:
        return await self._queue.get()

    def cancel(self) -> None:
        self._stop.set()


class _SSEResponse(StreamingResponse):
    """A streaming response that tells the producer to stop however the response ends."""

    def __init__(self, content: AsyncIterator[str], on_close: Callable[[], None]) -> None:
        super().__init__(
            content,
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )
        self._on_close = on_close

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self._on_close()


def _sse(body: dict[str, Any]) -> str:
    return f"data: {json.dumps(body, ensure_ascii=False)}\n\n"


async def sse_events(first: tuple[str, Any], pump: StreamPump, writer: ChunkWriter) -> AsyncIterator[str]:
    """The SSE lines of one streamed reply, starting from the pump's ``first`` event; cancels the pump at the end."""
    try:
        yield _sse(writer.start())
        kind, value = first
        while True:
            if kind == CHUNK:
                for out in writer.feed(value):
                    yield _sse(out)
            elif kind == END:
                for out in writer.finish():
                    yield _sse(out)
                yield "data: [DONE]\n\n"
                return
            else:  # an error after the headers went out: OpenAI clients raise on an error event
                yield _sse(as_api_error(value).body())
                return
            kind, value = await pump.get()
    finally:
        pump.cancel()


async def stream_chat(executor: ThreadPoolExecutor, call: ChatCall) -> StreamingResponse:
    """The SSE response of a streamed call, generated on one worker of ``executor``."""

    def work() -> Iterator[AIMessageChunk]:
        return call.runnable().stream(call.messages, stop=call.stop, **call.kwargs)

    pump = StreamPump(executor, work, call.release)
    writer = ChunkWriter(**call.meta, include_usage=call.include_usage)
    # Wait for the first event before answering, so that errors raised before any
    # output (prompt too long, bad tool_choice) still get a real HTTP status.
    try:
        first = await pump.get()
    except BaseException:
        pump.cancel()
        raise
    if first[0] == ERROR:
        raise as_api_error(first[1])
    return _SSEResponse(sse_events(first, pump, writer), on_close=pump.cancel)


# ---------------------------------------------------------------- routes


async def health() -> dict[str, Any]:
    return {"status": "ok", "version": __version__}


async def list_models(state: State) -> dict[str, Any]:
    names = await run_in_threadpool(state.resolver.list_models)
    return {"object": "list", "data": [state.model_object(n) for n in names]}


async def retrieve_model(name: str, state: State) -> dict[str, Any]:
    if name not in await run_in_threadpool(state.resolver.list_models):
        resolved = await resolve_chat(state.resolver, name)  # pinned names such as skill@v3 resolve without being listed
        await run_in_threadpool(_Once(resolved.release))
    return state.model_object(name)


async def chat_completions(body: ChatCompletionRequest, state: State) -> Any:
    call = await prepare_chat(state.resolver, body)
    if call.stream:
        return await stream_chat(state.executor, call)
    return await complete_chat(state.executor, call)


# ---------------------------------------------------------------- the app


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    try:
        yield
    finally:
        app.state.serving.executor.shutdown(wait=False, cancel_futures=True)


def create_app(
    resolver: ModelResolver,
    *,
    api_key: str | None = None,
    max_workers: int = DEFAULT_MAX_WORKERS,
    title: str = "agent-sleep",
) -> FastAPI:
    """An OpenAI-compatible API serving whatever ``resolver`` resolves.

    ``api_key``: when set, every ``/v1`` route needs ``Authorization: Bearer
    <api_key>`` (401 otherwise); ``/health`` stays open for probes.
    ``max_workers``: generation threads; requests beyond it queue (most of
    them just wait for a model lock anyway).
    """
    state = ServingState.create(resolver, api_key=api_key, max_workers=max_workers)
    app = FastAPI(title=title, version=__version__, lifespan=lifespan)
    app.state.serving = state
    app.state.resolver = state.resolver
    app.state.executor = state.executor

    app.add_exception_handler(APIError, handle_api_error)  # type: ignore[arg-type]
    app.add_exception_handler(RequestValidationError, handle_validation_error)  # type: ignore[arg-type]
    app.add_exception_handler(StarletteHTTPException, handle_http_error)  # type: ignore[arg-type]
    app.add_exception_handler(Exception, handle_unexpected)

    app.add_api_route("/health", health, methods=["GET"])
    router = APIRouter(prefix="/v1", dependencies=[Depends(require_api_key)])
    router.add_api_route("/models", list_models, methods=["GET"])
    router.add_api_route("/models/{name:path}", retrieve_model, methods=["GET"])
    router.add_api_route("/chat/completions", chat_completions, methods=["POST"], response_model=None)
    app.include_router(router)
    return app


__all__ = [
    "DEFAULT_MAX_WORKERS", "APIError", "ChatCall", "ServingState", "StreamPump", "as_api_error", "check_api_key",
    "complete_chat", "create_app", "error_response", "prepare_chat", "resolve_chat", "sse_events", "stream_chat",
]  # fmt: skip
