"""Running the API with uvicorn: in the foreground (:func:`serve`) or on a background thread (:class:`ServerThread`).

Both use :func:`make_server`, a uvicorn server that, as soon as shutdown starts
(Ctrl+C, SIGTERM, ``ServerThread.stop``), stops the app's running generations:
in-flight requests end at once with a 503 or an error event instead of being
cancelled mid-await when the graceful timeout runs out (which logs
``CancelledError`` tracebacks and can leave worker threads generating).
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import signal
import socket
import threading
import time
from collections.abc import Iterator
from types import TracebackType
from typing import Any

from agent_sleep.errors import AgentSleepError, InvalidInputError
from agent_sleep.serving.resolver import ModelResolver

logger = logging.getLogger("agent_sleep.serving")


def _app_for(target: Any, **options: Any) -> Any:
    """``target`` itself if it is an ASGI app, else ``create_app(target, **options)`` for a resolver."""
    options = {k: v for k, v in options.items() if v is not None}
    if hasattr(target, "list_models") and hasattr(target, "resolve"):
        from agent_sleep.serving.app import create_app

        return create_app(target, **options)
    if callable(target):
        if options:
            raise InvalidInputError(
                f"{sorted(options)} apply to a resolver; pass them to create_app for an app"
            )
        return target
    raise InvalidInputError(f"expected a ModelResolver or an ASGI app, got {type(target).__name__}")


def make_server(config: Any, app: Any) -> Any:
    """A ``uvicorn.Server`` for ``config`` that stops ``app``'s generations as soon as shutdown starts."""
    import uvicorn

    from agent_sleep.serving.app import begin_shutdown

    class _Server(uvicorn.Server):
        async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
            begin_shutdown(app)
            await super().shutdown(sockets)

    return _Server(config)


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def serve(
    resolver: ModelResolver,
    host: str = "127.0.0.1",
    port: int = 8000,
    *,
    api_key: str | None = None,
    api_keys: Any = None,
    limits: Any = None,
    max_workers: int | None = None,
    log_level: str = "info",
) -> None:
    """Serve ``resolver`` until interrupted (Ctrl+C / SIGTERM stop running generations and exit cleanly).

    ``api_keys`` (an :class:`~agent_sleep.serving.auth.APIKeys` or a ``{key:
    "*" | [names]}`` mapping) and ``limits`` (:class:`~agent_sleep.serving.limits.ServingLimits`)
    go to :func:`~agent_sleep.serving.app.create_app`.
    """
    import uvicorn

    if api_key is None and api_keys is None and not _is_loopback(host):
        logger.warning("serving on %s without an API key: anyone who can reach the port can use the models", host)
    app = _app_for(resolver, api_key=api_key, api_keys=api_keys, limits=limits, max_workers=max_workers)
    config = uvicorn.Config(app, host=host, port=port, log_level=log_level, timeout_graceful_shutdown=5)
    try:
        with _sigterm_returns():
            make_server(config, app).run()
    except KeyboardInterrupt:  # uvicorn re-raises a captured Ctrl+C once it has shut down
        pass


@contextlib.contextmanager
def _sigterm_returns() -> Iterator[None]:
    """Make a SIGTERM end :func:`serve` normally (exit status 0) after uvicorn's graceful shutdown.

    uvicorn re-raises a captured signal with the handler that was installed
    before it started; by default that kills the process with status 143
    before the caller can clean up. A no-op handler lets ``serve`` return.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: None)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # proto must be IPPROTO_TCP, not 0: asyncio only sets TCP_NODELAY on accepted sockets whose
    # proto says TCP, and with Nagle on every keep-alive request waits ~40 ms for a delayed ACK.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    sock.set_inheritable(True)
    return sock


class ServerThread:
    """uvicorn on a background thread, for tests and benchmarks.

    ``port=0`` (default) takes a free port; the socket is bound before the
    thread starts, so ``port`` is known and cannot be taken by a race. Use as a
    context manager, or call :meth:`start` / :meth:`stop`::

        with ServerThread(StaticResolver({"m": chat})) as server:
            client = openai.OpenAI(base_url=server.base_url, api_key="x")

    ``target`` is a :class:`ModelResolver` (then ``api_key``, ``api_keys``,
    ``limits`` and ``max_workers`` go to :func:`create_app`) or a ready ASGI app.
    """

    def __init__(
        self,
        target: Any,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        api_key: str | None = None,
        api_keys: Any = None,
        limits: Any = None,
        max_workers: int | None = None,
        log_level: str = "warning",
        startup_timeout: float = 20.0,
        graceful_timeout: float = 3.0,
    ) -> None:
        self.app = _app_for(target, api_key=api_key, api_keys=api_keys, limits=limits, max_workers=max_workers)
        self.host = host
        self._requested_port = port
        self._log_level = log_level
        self._startup_timeout = startup_timeout
        self._graceful_timeout = graceful_timeout
        self._server: Any = None
        self._thread: threading.Thread | None = None
        self._socket: socket.socket | None = None
        self._error: BaseException | None = None
        self._started_once = False
        self.port: int | None = None

    @property
    def url(self) -> str:
        if self.port is None:
            raise AgentSleepError("the server is not running")
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    @property
    def base_url(self) -> str:
        """The OpenAI ``base_url`` (ends in ``/v1``)."""
        return f"{self.url}/v1"

    def start(self) -> ServerThread:
        import uvicorn

        if self._started_once:
            raise AgentSleepError("a ServerThread runs once; create a new one (the app's worker pool is shut down)")
        self._started_once = True
        self._socket = _bind(self.host, self._requested_port)
        self.port = self._socket.getsockname()[1]
        config = uvicorn.Config(
            self.app,
            log_level=self._log_level,
            timeout_graceful_shutdown=max(1, round(self._graceful_timeout)),
            lifespan="on",
        )
        self._server = make_server(config, self.app)
        self._thread = threading.Thread(target=self._run, name=f"agent-sleep-server-{self.port}", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + self._startup_timeout
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                why = repr(self._error) if self._error else "timed out" if self._thread.is_alive() else "thread exited"
                self.stop()
                raise AgentSleepError(f"uvicorn did not start on {self.host}:{self.port}: {why}")
            time.sleep(0.01)
        return self

    def _run(self) -> None:
        try:
            self._server.run(sockets=[self._socket])
        except BaseException as exc:  # noqa: BLE001 - reported by start()
            self._error = exc

    def stop(self, timeout: float | None = None) -> None:
        """Ask uvicorn to exit, wait for the thread (graceful timeout + a margin), close the socket."""
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout if timeout is not None else self._graceful_timeout + 5)
            if self._thread.is_alive():
                self._server.force_exit = True
                self._thread.join(2)
            if self._thread.is_alive():
                logger.warning("server thread on port %s did not stop", self.port)
        if self._socket is not None:
            with contextlib.suppress(OSError):
                self._socket.close()
        self._thread = None
        self._server = None
        self._socket = None

    def __enter__(self) -> ServerThread:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


__all__ = ["ServerThread", "make_server", "serve"]
