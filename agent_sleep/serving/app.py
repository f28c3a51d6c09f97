"""The OpenAI-compatible HTTP API (FastAPI) over a :class:`ModelResolver`.

Routes: ``GET /health`` (never needs a key), ``GET /v1/models``,
``GET /v1/models/{name}`` and ``POST /v1/chat/completions`` (plain or SSE
stream, tools, ``response_format`` JSON / JSON schema). Every error body has
OpenAI's shape ``{"error": {"message", "type", "param", "code"}}``
(:mod:`.http_errors`).

The pieces are top-level so each can be used and tested alone:
:class:`ServingState` (what one app serves with, and its running
generations), :func:`prepare_chat` (request → resolved
:class:`~.generation.ChatCall`), :func:`check_prompt`, one function per route,
and :func:`create_app`, which only wires them. Running a call is
:mod:`.generation`, keys :mod:`.auth`, limits :mod:`.limits`, shaped replies
:mod:`.structured`.

No request holds the server hostage: bodies over the cap are 413 before they
are parsed, ``max_tokens`` over the cap is 400, a prompt that cannot fit the
model's context is 400 before it queues for the model (models with
``check_prompt``), and every generation, streamed or not, stops when its client
disconnects or the server shuts down (in-flight requests then get 503 or an
error event, so shutdown is quick and quiet). Resolver calls and prompt checks
run on Starlette's default pool, so ``/v1/models`` stays quick and an
oversized prompt is rejected while generation queues.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Annotated, Any

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from agent_sleep._version import __version__
from agent_sleep.errors import APIError, InvalidInputError, NotFoundError, RequestError
from agent_sleep.serving.auth import ALL, APIKeys, Grant, check_api_key, unavailable
from agent_sleep.serving.generation import (
    SHUTDOWN,
    ChatCall,
    StreamPump,
    CallOnce,
    complete_chat,
    model_chunks,
    sse_events,
    stream_chat,
    wait_for_disconnect,
)
from agent_sleep.serving.http_errors import (
    as_api_error,
    error_response,
    handle_api_error,
    handle_http_error,
    handle_unexpected,
    handle_validation_error,
    shutting_down,
)
from agent_sleep.serving.limits import BodyLimit, ServingLimits
from agent_sleep.serving.openai_format import (
    ChatCompletionRequest,
    call_kwargs,
    check_tools,
    new_completion_id,
    now,
    to_langchain_messages,
)
from agent_sleep.serving.resolver import ModelResolver, ResolvedChat
from agent_sleep.serving.structured import reply_check, with_instruction

DEFAULT_MAX_WORKERS = 64
DEFAULT_LIMITS = ServingLimits()


# ---------------------------------------------------------------- app state and auth


@dataclass(frozen=True)
class ServingState:
    """What one app serves with: resolver, generation pool, keys, limits, start time, running generations."""

    resolver: ModelResolver
    executor: ThreadPoolExecutor
    keys: APIKeys | None = None
    limits: ServingLimits = DEFAULT_LIMITS
    started: int = 0
    active: set[StreamPump] = field(default_factory=set)
    closing: threading.Event = field(default_factory=threading.Event)
    _active_lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @classmethod
    def create(
        cls,
        resolver: ModelResolver,
        *,
        api_key: str | None = None,
        api_keys: APIKeys | Mapping[str, Any] | None = None,
        limits: ServingLimits | None = None,
        max_workers: int = DEFAULT_MAX_WORKERS,
    ) -> ServingState:
        if not (hasattr(resolver, "list_models") and hasattr(resolver, "resolve")):
            raise InvalidInputError(
                f"resolver must implement list_models() and resolve(name), got {type(resolver).__name__}"
            )
        if max_workers < 1:
            raise InvalidInputError(f"max_workers must be at least 1, got {max_workers}")
        keys = APIKeys.single(api_key) if api_key else None
        if api_keys is not None:
            extra = api_keys if isinstance(api_keys, APIKeys) else APIKeys.from_mapping(api_keys)
            keys = extra if keys is None else keys.merged(extra)
        executor = ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="agent-sleep-serve")
        return cls(
            resolver=resolver, executor=executor, keys=keys, limits=limits or DEFAULT_LIMITS, started=int(time.time())
        )

    def model_object(self, name: str) -> dict[str, Any]:
        return {"id": name, "object": "model", "created": self.started, "owned_by": "agent-sleep"}

    def start(self, call: ChatCall) -> StreamPump:
        """Run ``call`` on the pool; a 503 once shutdown has begun (the caller releases the call then)."""
        if self.closing.is_set():
            raise shutting_down()
        cancel = threading.Event()
        holder: list[StreamPump] = []
        done = threading.Event()

        def finished() -> None:  # on the worker thread, possibly before holder is filled
            done.set()
            with self._active_lock:
                self.active.difference_update(holder)

        pump = StreamPump(self.executor, lambda: model_chunks(call, cancel), call.release, cancel=cancel,
                          on_done=finished)  # fmt: skip
        with self._active_lock:
            holder.append(pump)
            if not done.is_set():
                self.active.add(pump)
        return pump

    def begin_shutdown(self) -> None:
        """Refuse new generations and stop the running ones (their clients get a 503 or an error event)."""
        self.closing.set()
        with self._active_lock:
            running = list(self.active)
        for pump in running:
            pump.cancel(SHUTDOWN)


def get_state(request: Request) -> ServingState:
    state: ServingState = request.app.state.serving
    return state


State = Annotated[ServingState, Depends(get_state)]


async def authorize(request: Request, state: State) -> Grant:
    """The caller's :class:`Grant` (every model when no keys are configured); 401 for a missing or wrong key."""
    if state.keys is None:
        return ALL
    return state.keys.authorize(request.headers.get("authorization", ""))


Auth = Annotated[Grant, Depends(authorize)]


# ---------------------------------------------------------------- resolving a request


async def resolve_chat(resolver: ModelResolver, name: str, *, masked: bool = False) -> ResolvedChat:
    """``resolver.resolve(name)`` off the loop; unknown names are 404 ``model_not_found``.

    ``masked``: answer an unknown name with the same message as a forbidden one
    (for restricted keys; the resolver's message may list other names).
    """
    try:
        resolved = await run_in_threadpool(resolver.resolve, name)
    except NotFoundError as exc:
        if masked:
            raise unavailable(name) from None
        raise APIError(404, str(exc), param="model", code="model_not_found") from None
    except Exception as exc:
        raise as_api_error(exc) from exc
    if not isinstance(resolved, ResolvedChat):
        raise APIError(500, f"resolver returned {type(resolved).__name__}, not ResolvedChat", type="server_error")
    return resolved


async def prepare_chat(
    resolver: ModelResolver,
    body: ChatCompletionRequest,
    *,
    grant: Grant = ALL,
    limits: ServingLimits = DEFAULT_LIMITS,
) -> ChatCall:
    """Check ``body`` (400 naming the field, before anything is resolved), then resolve its model.

    A model ``grant`` does not allow is a 404 exactly like an unknown one.
    """
    try:
        body.check_supported(max_tokens_limit=limits.max_tokens)
        messages = to_langchain_messages(body.messages)
        tools, choice = check_tools(body.tools, body.tool_choice)
        check = reply_check(body.response_format, choice if tools and choice not in ("auto", "none") else None)
    except RequestError as exc:
        raise as_api_error(exc) from None
    if check is not None:
        messages = with_instruction(messages, check.instruction())
    if not grant.allows(body.model):
        raise unavailable(body.model)
    resolved = await resolve_chat(resolver, body.model, masked=grant.restricted)
    release = CallOnce(resolved.release)
    name = resolved.name or body.model
    meta = {"completion_id": new_completion_id(), "created": now(), "model": name, "fingerprint": resolved.version}
    try:
        kwargs = call_kwargs(resolved.model, body, max_tokens_limit=limits.max_tokens)
    except Exception:
        release()
        raise
    return ChatCall(
        resolved=resolved, name=name, messages=messages, stop=body.stop_list, tools=tools, tool_choice=choice,
        kwargs=kwargs, meta=meta, release=release, stream=bool(body.stream), include_usage=body.include_usage,
        check=check, attempts=limits.reply_attempts if check is not None else 1, budget_param=body.budget_param,
    )  # fmt: skip


async def check_prompt(call: ChatCall) -> None:
    """400 for a prompt that cannot fit the model's context, before it queues for the model.

    Only models with a ``check_prompt(messages, tools=, tool_choice=)`` method
    (``ChatLocalModel``) can tell; for others the model call itself fails.
    """
    check = getattr(call.resolved.model, "check_prompt", None)
    if not callable(check):
        return
    try:
        await run_in_threadpool(check, call.messages, tools=call.tools, tool_choice=call.tool_choice)
    except Exception as exc:
        raise as_api_error(exc) from exc


# ---------------------------------------------------------------- routes


async def health() -> dict[str, Any]:
    return {"status": "ok", "version": __version__}


async def list_models(state: State, grant: Auth) -> dict[str, Any]:
    names = grant.visible(await run_in_threadpool(state.resolver.list_models))
    return {"object": "list", "data": [state.model_object(n) for n in names]}


async def retrieve_model(name: str, state: State, grant: Auth) -> dict[str, Any]:
    if not grant.allows(name):
        raise unavailable(name)
    if name not in await run_in_threadpool(state.resolver.list_models):
        # pinned names such as skill@v3 resolve without being listed
        resolved = await resolve_chat(state.resolver, name, masked=grant.restricted)
        await run_in_threadpool(CallOnce(resolved.release))
    return state.model_object(name)


async def chat_completions(body: ChatCompletionRequest, request: Request, state: State, grant: Auth) -> Any:
    call = await prepare_chat(state.resolver, body, grant=grant, limits=state.limits)
    try:
        await check_prompt(call)
        pump = state.start(call)
    except BaseException:
        call.release()
        raise
    gone = asyncio.ensure_future(wait_for_disconnect(request))
    try:
        if call.stream:
            return await stream_chat(pump, call, gone=gone)
        return await complete_chat(pump, call, gone=gone)
    finally:
        gone.cancel()  # a streamed response watches for the disconnect itself


# ---------------------------------------------------------------- the app


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    state: ServingState = app.state.serving
    try:
        yield
    finally:
        state.begin_shutdown()
        state.executor.shutdown(wait=False, cancel_futures=True)


def create_app(
    resolver: ModelResolver,
    *,
    api_key: str | None = None,
    api_keys: APIKeys | Mapping[str, Any] | None = None,
    limits: ServingLimits | None = None,
    max_workers: int = DEFAULT_MAX_WORKERS,
    title: str = "agent-sleep",
) -> FastAPI:
    """An OpenAI-compatible API serving whatever ``resolver`` resolves.

    ``api_key``: when set, every ``/v1`` route needs ``Authorization: Bearer
    <api_key>`` (401 otherwise); ``/health`` stays open for probes.
    ``api_keys``: more keys, each limited to some models (see
    :mod:`agent_sleep.serving.auth`). With any key set, ``/docs``,
    ``/redoc`` and ``/openapi.json`` are switched off (a browser cannot send the
    key, and the schema is nobody else's business).
    ``limits``: body, token and retry caps (:class:`ServingLimits`).
    ``max_workers``: generation threads; requests beyond it queue (most of
    them just wait for a model lock anyway).
    """
    state = ServingState.create(resolver, api_key=api_key, api_keys=api_keys, limits=limits, max_workers=max_workers)
    docs = state.keys is None
    app = FastAPI(
        title=title, version=__version__, lifespan=lifespan, docs_url="/docs" if docs else None,
        redoc_url="/redoc" if docs else None, openapi_url="/openapi.json" if docs else None,
    )  # fmt: skip
    app.state.serving = state
    app.state.resolver = state.resolver
    app.state.executor = state.executor
    app.add_middleware(BodyLimit, max_bytes=state.limits.max_body_bytes)

    app.add_exception_handler(APIError, handle_api_error)  # type: ignore[arg-type]
    app.add_exception_handler(RequestValidationError, handle_validation_error)  # type: ignore[arg-type]
    app.add_exception_handler(StarletteHTTPException, handle_http_error)  # type: ignore[arg-type]
    app.add_exception_handler(Exception, handle_unexpected)

    app.add_api_route("/health", health, methods=["GET"])
    router = APIRouter(prefix="/v1", dependencies=[Depends(authorize)])
    router.add_api_route("/models", list_models, methods=["GET"])
    router.add_api_route("/models/{name:path}", retrieve_model, methods=["GET"])
    router.add_api_route("/chat/completions", chat_completions, methods=["POST"], response_model=None)
    app.include_router(router)
    return app


def begin_shutdown(app: Any) -> None:
    """Stop ``app``'s running generations now, if it is one of ours (servers call this as shutdown starts)."""
    state = getattr(getattr(app, "state", None), "serving", None)
    if isinstance(state, ServingState):
        state.begin_shutdown()


# complete_chat, sse_events, stream_chat, StreamPump, as_api_error, error_response and check_api_key
# lived here before the split and are still importable from this module.
__all__ = [
    "DEFAULT_LIMITS", "DEFAULT_MAX_WORKERS", "APIError", "ChatCall", "ServingState", "StreamPump", "as_api_error",
    "authorize", "begin_shutdown", "check_api_key", "check_prompt", "complete_chat", "create_app", "error_response",
    "prepare_chat", "resolve_chat", "sse_events", "stream_chat",
]  # fmt: skip
