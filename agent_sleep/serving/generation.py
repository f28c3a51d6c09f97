"""Running one chat call on the generation pool, and turning what the model says into an HTTP answer.

:class:`ChatCall` is a checked request pinned to a model; :func:`model_chunks`
is its whole model call (run on a worker thread); :class:`StreamPump` runs it
and queues the chunks for the event loop; :func:`complete_chat` and
:func:`stream_chat` / :func:`sse_events` turn the queue into a
``chat.completion`` body or an SSE stream.

Every generation can be stopped: :meth:`StreamPump.cancel` (client gone,
server shutting down) sets the event the model was given, so a local model
stops at the next token, and the worker stops at the next chunk and closes
the model's stream, which releases the model's lock. :func:`until_gone` cancels
when the client disconnects before the answer is ready.

Threads: generation is blocking, so every request's whole model call (tool
binding, the complete ``stream`` loop, retries of shaped replies) runs on one
worker of a dedicated pool, and chunks are handed to the event loop through a
queue. A request never needs a *second* pool slot to make progress, which
matters because local models serialise generation on a lock held across
yields: with a one-slot-per-``next()`` design, requests waiting for that lock
could occupy every slot and starve the holder (a deadlock).
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

from fastapi import Request
from fastapi.responses import StreamingResponse
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage
from starlette.types import Receive, Scope, Send

from agent_sleep.errors import APIError, RequestError
from agent_sleep.serving.http_errors import as_api_error, client_gone, shutting_down
from agent_sleep.serving.openai_format import ChunkWriter, completion_body, merge_chunks, message_chunk
from agent_sleep.serving.resolver import ResolvedChat
from agent_sleep.serving.structured import ReplyCheck, generate_checked

logger = logging.getLogger("agent_sleep.serving")

CANCEL_KWARG = "cancel_event"
"""Passed to models whose class sets ``supports_cancel_event`` (``ChatLocalModel`` does): a
``threading.Event`` set when the request is abandoned, so generation stops at the next token even
while no chunk is due (inside a tool-call block)."""

T = TypeVar("T")


class CallOnce:
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


@dataclass(frozen=True)
class ChatCall:
    """One checked chat request pinned to a model: what to run and what the reply reports.

    ``release`` must be called exactly once when the call is done with the
    model; :class:`StreamPump` sees to that. ``check`` (None: any reply goes)
    is the shape a reply must have, tried up to ``attempts`` times.
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
    check: ReplyCheck | None = None
    attempts: int = 1
    budget_param: str = "max_tokens"

    def runnable(self) -> Any:
        if not self.tools:
            return self.resolved.model
        try:
            return self.resolved.model.bind_tools(self.tools, tool_choice=self.tool_choice)
        except NotImplementedError:
            raise RequestError(f"model {self.name!r} does not support tools", "tools") from None


def model_chunks(call: ChatCall, cancel: threading.Event) -> Iterator[AIMessageChunk]:
    """Everything the model says for ``call``, as chunks; runs on a worker thread.

    A plain call streams the model's own chunks. A call with a ``check`` yields
    one chunk, the accepted reply (or nothing if ``cancel`` was set first).
    """
    model = call.resolved.model
    extra = {CANCEL_KWARG: cancel} if getattr(type(model), "supports_cancel_event", False) else {}
    runnable = call.runnable()

    def stream(messages: list[BaseMessage]) -> Iterator[AIMessageChunk]:
        return iter(runnable.stream(messages, stop=call.stop, **call.kwargs, **extra))

    if call.check is None:
        yield from stream(call.messages)
        return

    def attempt(messages: list[BaseMessage]) -> AIMessage | None:
        if cancel.is_set():  # no further attempt for a client that has gone
            return None
        chunks: list[AIMessageChunk] = []
        iterator = stream(messages)
        try:
            for chunk in iterator:
                chunks.append(chunk)
                if cancel.is_set():
                    return None
        finally:
            close = getattr(iterator, "close", None)
            if close is not None:
                close()
        return merge_chunks(chunks)

    reply = generate_checked(
        attempt, call.messages, call.check, attempts=call.attempts, budget_param=call.budget_param
    )
    if reply is not None:
        yield message_chunk(reply)


CHUNK, END, ERROR, CANCELLED = "chunk", "end", "error", "cancelled"
CLIENT_GONE, SHUTDOWN = "client_gone", "shutdown"


class StreamPump:
    """Runs a blocking chunk iterator on one worker thread and queues its chunks for the event loop.

    Events are ``(CHUNK, chunk)``, then ``(END, None)``, ``(ERROR, exc)`` or
    ``(CANCELLED, reason)``. ``cancel(reason)`` (client gone, shutdown) sets
    ``cancel`` — the event the work may pass on to the model — and makes the
    worker stop after the chunk in hand and close the iterator, which releases
    the model's lock. ``release`` and then ``on_done`` (both thread-safe) are
    called once when the worker is done, before the last event is queued, or
    when the pool shut down before the work started. Create it inside the
    event loop that reads it.
    """

    def __init__(
        self,
        executor: ThreadPoolExecutor,
        work: Callable[[], Iterator[AIMessageChunk]],
        release: Callable[[], None],
        *,
        cancel: threading.Event | None = None,
        on_done: Callable[[], None] | None = None,
    ) -> None:
        self._loop = asyncio.get_running_loop()
        self._queue: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
        self._stop = cancel if cancel is not None else threading.Event()
        self._reason: str | None = None
        self._on_done = on_done
        once = CallOnce(release)

        def done(future: asyncio.Future[None] | None) -> None:
            if future is None or future.cancelled():  # the pool shut down before the work started
                once()
                if on_done is not None:
                    on_done()
                self._queue.put_nowait((CANCELLED, self.reason or SHUTDOWN))

        try:
            future = self._loop.run_in_executor(executor, self._run, work, once)
        except RuntimeError:  # "cannot schedule new futures after shutdown"
            done(None)
            return
        future.add_done_callback(done)

    @property
    def reason(self) -> str | None:
        """Why the pump was cancelled (None: it was not)."""
        return self._reason

    def _put(self, item: tuple[str, Any]) -> None:
        try:
            self._loop.call_soon_threadsafe(self._queue.put_nowait, item)
        except RuntimeError:  # the event loop is closed: the server is gone
            self._stop.set()

    def _run(self, work: Callable[[], Iterator[AIMessageChunk]], release: CallOnce) -> None:
        opened: list[Iterator[AIMessageChunk]] = []
        try:
            final = self._pump(work, opened)
        finally:
            try:
                if opened and hasattr(opened[0], "close"):
                    opened[0].close()  # type: ignore[attr-defined]
            except Exception:
                logger.exception("closing a model stream failed")
            release()
            if self._on_done is not None:
                self._on_done()
        # Last, so that whoever reads the end of the stream finds the model released.
        self._put(final)

    def _pump(self, work: Callable[[], Iterator[AIMessageChunk]], opened: list[Iterator[AIMessageChunk]]) -> tuple[str, Any]:
        try:
            if not self._stop.is_set():
                opened.append(iter(work()))
                for chunk in opened[0]:
                    self._put((CHUNK, chunk))
                    if self._stop.is_set():
                        break
        except BaseException as exc:  # noqa: BLE001 - handed to the request task
            if not self._stop.is_set():
                return (ERROR, exc)
        return (CANCELLED, self.reason or CLIENT_GONE) if self._stop.is_set() else (END, None)

    async def get(self) -> tuple[str, Any]:
        return await self._queue.get()

    def cancel(self, reason: str = CLIENT_GONE) -> None:
        if self._reason is None:
            self._reason = reason
        self._stop.set()


async def wait_for_disconnect(request: Request) -> None:
    """Return once the client has disconnected (reads the ASGI channel: call it only after the body was read)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def until_gone(pump: StreamPump, work: Awaitable[T], gone: asyncio.Future[None] | None) -> T:
    """``work``'s result, unless ``gone`` (the client disconnected) finishes first: then cancel the pump, 499.

    If the request task itself is cancelled, the pump is cancelled too, so the
    model never runs on for nobody.
    """
    task = asyncio.ensure_future(work)
    try:
        if gone is None:
            return await task
        done, _ = await asyncio.wait({task, gone}, return_when=asyncio.FIRST_COMPLETED)
    except asyncio.CancelledError:
        task.cancel()
        pump.cancel(SHUTDOWN)
        raise
    if task in done:
        return task.result()
    task.cancel()
    pump.cancel(CLIENT_GONE)
    raise client_gone()


def _cancelled_error(reason: Any) -> APIError:
    return shutting_down() if reason == SHUTDOWN else client_gone()


async def _collect(pump: StreamPump) -> AIMessage:
    chunks: list[AIMessageChunk] = []
    while True:
        kind, value = await pump.get()
        if kind == CHUNK:
            if not isinstance(value, AIMessageChunk):
                raise APIError(500, f"model streamed {type(value).__name__}, not AIMessageChunk", type="server_error")
            chunks.append(value)
        elif kind == END:
            return merge_chunks(chunks)
        elif kind == ERROR:
            raise as_api_error(value)
        else:
            raise _cancelled_error(value)


async def complete_chat(
    pump: StreamPump, call: ChatCall, *, gone: asyncio.Future[None] | None = None
) -> dict[str, Any]:
    """The ``chat.completion`` body of a non-streamed call whose generation ``pump`` runs.

    Stops the generation (and answers 499) if ``gone`` finishes first.
    """
    message = await until_gone(pump, _collect(pump), gone)
    return completion_body(message, **call.meta)


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
            elif kind == ERROR:  # an error after the headers went out: OpenAI clients raise on an error event
                yield _sse(as_api_error(value).body())
                return
            else:  # cancelled: tell a client that is still there why the reply stops here
                if value == SHUTDOWN:
                    yield _sse(shutting_down().body())
                return
            kind, value = await pump.get()
    finally:
        pump.cancel()


async def stream_chat(
    pump: StreamPump, call: ChatCall, *, gone: asyncio.Future[None] | None = None
) -> StreamingResponse:
    """The SSE response of a streamed call whose generation ``pump`` runs.

    Waits for the first event before answering, so that errors raised before
    any output (prompt too long, bad tool_choice, a shaped reply that failed)
    still get a real HTTP status; a client that leaves meanwhile stops the
    generation.
    """
    first = await until_gone(pump, pump.get(), gone)
    if first[0] == ERROR:
        raise as_api_error(first[1])
    if first[0] == CANCELLED:
        raise _cancelled_error(first[1])
    writer = ChunkWriter(**call.meta, include_usage=call.include_usage)
    return _SSEResponse(sse_events(first, pump, writer), on_close=pump.cancel)


__all__ = [
    "CANCELLED", "CANCEL_KWARG", "CHUNK", "CLIENT_GONE", "END", "ERROR", "SHUTDOWN", "ChatCall", "StreamPump",
    "complete_chat", "model_chunks", "sse_events", "stream_chat", "until_gone", "wait_for_disconnect",
]  # fmt: skip
