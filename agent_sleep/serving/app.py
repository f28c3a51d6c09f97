"""The OpenAI-compatible HTTP API (FastAPI) over a :class:`ModelResolver`.

Routes: ``GET /health`` (never needs a key), ``GET /v1/models``,
``GET /v1/models/{name}`` and ``POST /v1/chat/completions`` (plain or SSE
stream). Every error body has OpenAI's shape
``{"error": {"message", "type", "param", "code"}}``.

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
from typing import Any

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import Receive, Scope, Send

from agent_sleep._version import __version__
from agent_sleep.errors import AgentSleepError, InvalidInputError, NotFoundError
from agent_sleep.serving.openai_format import (
    ChatCompletionRequest,
    ChunkWriter,
    RequestError,
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


# ---------------------------------------------------------------- errors


class APIError(Exception):
    """An error answered with an OpenAI-style body."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code
        self.headers = headers

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}

    def response(self) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status, headers=self.headers)


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


def _validation_error(exc: RequestValidationError) -> APIError:
    by_param: dict[str | None, list[str]] = {}
    for err in exc.errors():
        if err.get("type") == "json_invalid":
            return APIError(400, f"request body is not valid JSON: {err.get('ctx', {}).get('error', err['msg'])}")
        msgs = by_param.setdefault(_param(tuple(err.get("loc", ()))), [])
        if err["msg"] not in msgs:
            msgs.append(err["msg"])
    param, msgs = next(iter(by_param.items()), (None, ["invalid request"]))
    return APIError(400, f"{param or 'request body'}: {' or '.join(msgs)}", param=param)


def _auth(api_key: str | None) -> Callable[[Request], Any]:
    expected = api_key.encode() if api_key else None

    async def check(request: Request) -> None:
        if expected is None:
            return
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() == "bearer" and hmac.compare_digest(token.strip().encode(), expected):
            return
        message = "incorrect API key provided" if header else "missing API key: send 'Authorization: Bearer <key>'"
        raise APIError(401, message, code="invalid_api_key", headers={"WWW-Authenticate": "Bearer"})

    return check


# ---------------------------------------------------------------- running the model off the loop


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


def _runnable(resolved: ResolvedChat, name: str, tools: list[dict[str, Any]], choice: Any) -> Any:
    if not tools:
        return resolved.model
    try:
        return resolved.model.bind_tools(tools, tool_choice=choice)
    except NotImplementedError:
        raise RequestError(f"model {name!r} does not support tools", "tools") from None


_CHUNK, _END, _ERROR = "chunk", "end", "error"


class _StreamPump:
    """Runs a blocking chunk iterator on one worker thread and queues its chunks for the event loop.

    ``cancel`` (client gone) makes the worker stop after the chunk in hand and
    close the iterator, which releases the model's lock.
    """

    def __init__(
        self, executor: ThreadPoolExecutor, work: Callable[[], Iterator[AIMessageChunk]], release: _Once
    ) -> None:
        self._loop = asyncio.get_running_loop()
        self._queue: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
        self._stop = threading.Event()
        future = self._loop.run_in_executor(executor, self._run, work, release)
        future.add_done_callback(lambda f: release() if f.cancelled() else None)  # pool shut down first

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
                self._put((_CHUNK, chunk))
                if self._stop.is_set():
                    break
            self._put((_END, None))
        except BaseException as exc:  # noqa: BLE001 - handed to the request task
            self._put((_ERROR, exc))
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


# ---------------------------------------------------------------- the app


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
    if not (hasattr(resolver, "list_models") and hasattr(resolver, "resolve")):
        raise InvalidInputError(
            f"resolver must implement list_models() and resolve(name), got {type(resolver).__name__}"
        )
    if max_workers < 1:
        raise InvalidInputError(f"max_workers must be at least 1, got {max_workers}")
    executor = ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="agent-sleep-serve")
    started = int(time.time())

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        try:
            yield
        finally:
            executor.shutdown(wait=False, cancel_futures=True)

    app = FastAPI(title=title, version=__version__, lifespan=lifespan)
    app.state.resolver = resolver
    app.state.executor = executor

    @app.exception_handler(APIError)
    async def _api_error(request: Request, exc: APIError) -> JSONResponse:
        return exc.response()

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        return _validation_error(exc).response()

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        kind = "not_found_error" if exc.status_code == 404 else "invalid_request_error"
        return APIError(exc.status_code, str(exc.detail), type=kind, headers=exc.headers).response()

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        return as_api_error(exc).response()

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "version": __version__}

    router = APIRouter(prefix="/v1", dependencies=[Depends(_auth(api_key))])

    def model_object(name: str) -> dict[str, Any]:
        return {"id": name, "object": "model", "created": started, "owned_by": "agent-sleep"}

    @router.get("/models")
    async def list_models() -> dict[str, Any]:
        names = await run_in_threadpool(resolver.list_models)
        return {"object": "list", "data": [model_object(n) for n in names]}

    @router.get("/models/{name:path}")
    async def retrieve_model(name: str) -> dict[str, Any]:
        if name not in await run_in_threadpool(resolver.list_models):
            resolved = await _resolve(name)  # pinned names such as skill@v3 resolve without being listed
            await run_in_threadpool(_Once(resolved.release))
        return model_object(name)

    async def _resolve(name: str) -> ResolvedChat:
        try:
            resolved = await run_in_threadpool(resolver.resolve, name)
        except NotFoundError as exc:
            raise APIError(404, str(exc), param="model", code="model_not_found") from None
        except Exception as exc:
            raise as_api_error(exc) from exc
        if not isinstance(resolved, ResolvedChat):
            raise APIError(500, f"resolver returned {type(resolved).__name__}, not ResolvedChat", type="server_error")
        return resolved

    @router.post("/chat/completions", response_model=None)
    async def chat_completions(body: ChatCompletionRequest) -> Any:
        try:
            body.check_supported()
            messages = to_langchain_messages(body.messages)
            tools, choice = check_tools(body.tools, body.tool_choice)
        except RequestError as exc:
            raise as_api_error(exc) from None
        resolved = await _resolve(body.model)
        release = _Once(resolved.release)
        name = resolved.name or body.model
        meta = {"completion_id": new_completion_id(), "created": now(), "model": name, "fingerprint": resolved.version}
        try:
            kwargs = call_kwargs(resolved.model, body)
        except Exception:
            release()
            raise
        if body.stream:
            return await _stream(resolved, name, messages, body, tools, choice, kwargs, meta, release)
        return await _complete(resolved, name, messages, body, tools, choice, kwargs, meta, release)

    async def _complete(
        resolved: ResolvedChat, name: str, messages: list[BaseMessage], body: ChatCompletionRequest,
        tools: list[dict[str, Any]], choice: Any, kwargs: dict[str, Any], meta: dict[str, Any], release: _Once,
    ) -> dict[str, Any]:  # fmt: skip
        def work() -> AIMessage:
            try:
                return _runnable(resolved, name, tools, choice).invoke(messages, stop=body.stop_list, **kwargs)
            finally:
                release()

        future = asyncio.get_running_loop().run_in_executor(executor, work)
        future.add_done_callback(lambda f: release() if f.cancelled() else None)
        try:
            message = await future
        except Exception as exc:
            raise as_api_error(exc) from exc
        if not isinstance(message, AIMessage):
            raise APIError(500, f"model returned {type(message).__name__}, not AIMessage", type="server_error")
        return completion_body(message, **meta)

    async def _stream(
        resolved: ResolvedChat, name: str, messages: list[BaseMessage], body: ChatCompletionRequest,
        tools: list[dict[str, Any]], choice: Any, kwargs: dict[str, Any], meta: dict[str, Any], release: _Once,
    ) -> _SSEResponse:  # fmt: skip
        def work() -> Iterator[AIMessageChunk]:
            return _runnable(resolved, name, tools, choice).stream(messages, stop=body.stop_list, **kwargs)

        pump = _StreamPump(executor, work, release)
        writer = ChunkWriter(**meta, include_usage=body.include_usage)
        # Wait for the first event before answering, so that errors raised before any
        # output (prompt too long, bad tool_choice) still get a real HTTP status.
        try:
            first = await pump.get()
        except BaseException:
            pump.cancel()
            raise
        if first[0] == _ERROR:
            raise as_api_error(first[1])

        async def events() -> AsyncIterator[str]:
            try:
                yield _sse(writer.start())
                kind, value = first
                while True:
                    if kind == _CHUNK:
                        for out in writer.feed(value):
                            yield _sse(out)
                    elif kind == _END:
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

        return _SSEResponse(events(), on_close=pump.cancel)

    app.include_router(router)
    return app


__all__ = ["DEFAULT_MAX_WORKERS", "APIError", "as_api_error", "create_app"]
