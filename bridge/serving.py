"""Process-level serving concerns: the event loop, the connection layer, ``WORKERS=N`` processes on one port.

- :func:`new_event_loop`: uvloop when installed (``EVENT_LOOP=auto``, the default) or forced
  (``EVENT_LOOP=uvloop``), else the standard asyncio loop.
- :func:`run_app`: serves the app like ``aiohttp.web.run_app`` (signals, graceful shutdown), through our own
  connection handler (:class:`BridgeRequestHandler`), which aiohttp's does not offer as settings:

  - ``HEADER_READ_TIMEOUT``: a request's head (request line and headers) must be complete this long after its
    first byte (for the first request of a connection: after the connection opened). Else 408 and close. With
    native TLS the handshake gets the same time (asyncio's default is 60 s).
    An idle keep-alive connection between requests is aiohttp's keep-alive timeout's business.
  - ``BODY_READ_TIMEOUT``: the whole body must have arrived this long after the head (a deadline, not an
    idle timer: trickling one byte at a time does not extend it). Else the handler's read fails with 408
    ``request_timeout`` and the connection is closed after that answer.
  - ``MAX_CONNECTIONS`` (per process): at the cap, a new connection first reclaims an idle one (no request in
    flight, no byte of a new request received: a keep-alive or never-used connection); when none is idle it
    gets an immediate 503 ``too_many_connections`` and is closed. At start the open-files limit is raised to
    fit (up to the hard limit); if it cannot fit, the cap is lowered to what does (logged).
  - a malformed request (bad request line, a header with a control character, a header over 8190 bytes) is
    answered with our JSON error, never with aiohttp's text that quotes the offending bytes, and is logged
    without them.
- :func:`run_workers`: ``WORKERS=N`` (N > 1) starts N copies of ``vault-mcp-bridge serve`` that all bind the same
  port with ``SO_REUSEPORT`` (the kernel spreads connections across them); the parent only supervises:
  it forwards SIGTERM/SIGINT (and SIGHUP, which reloads ``API_KEYS_FILE``) and exits when the workers have
  exited. Without ``MCP_SESSION_SECRET`` the parent generates one session key and hands it to every worker through
  a pipe (never the environment or argv), so that a session started on one worker is valid on all. State that
  must be shared between workers (the rate limit) needs ``RATE_LIMIT_BACKEND=redis``, exactly as for replicas on
  several machines.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import os
import resource
import secrets
import signal
import ssl
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from types import FrameType
from typing import Any, cast

import structlog
from aiohttp import web
from aiohttp.web_protocol import RequestHandler
from aiohttp.web_request import BaseRequest
from pydantic import SecretStr

from bridge.config import Settings
from bridge.errors import BridgeError, InvalidRequestError, RequestTimeoutError

log = structlog.get_logger("bridge.serving")

WORKER_ENV = "BRIDGE_WORKER"
SESSION_SECRET_FD_ENV = "BRIDGE_SESSION_SECRET_FD"
FD_RESERVE = 64
"""Open files kept for everything but client connections and the Vault pool (logs, audit, Redis, JWKS...)."""


def new_event_loop(kind: str = "auto") -> asyncio.AbstractEventLoop:
    if kind in ("auto", "uvloop"):
        try:
            import uvloop
        except ImportError:
            if kind == "uvloop":
                raise RuntimeError("EVENT_LOOP=uvloop but uvloop is not installed "
                                   "(pip install 'vault-mcp-bridge[fast]')") from None
        else:
            return uvloop.new_event_loop()
    return asyncio.new_event_loop()


GC_THRESHOLDS = (50_000, 20, 20)
"""The garbage collector's generation thresholds while serving (Python's default: 700, 10, 10)."""


def tune_gc() -> None:
    """Once the app has started: everything made so far (modules, the app, its state) lives as long as the process,
    so it is collected once and moved out of the collector's sight (``gc.freeze``), and the young generation is
    collected every 50,000 allocations instead of 700. With many requests in flight, each collection of 700 found
    the live objects of the others, promoted them, and the full collections that followed walked the whole heap
    again and again: the collector was the largest cost that grew with concurrency. Reference counting still frees
    a request's objects when it ends; only cycles wait for a collection, and at most 50,000 young objects do."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


def is_worker() -> bool:
    return os.environ.get(WORKER_ENV) == "1"


def _spawn_worker(env: dict[str, str], secret: str | None) -> subprocess.Popen[bytes]:
    """One worker; ``secret`` goes through a pipe the worker inherits (never its environment or argv)."""
    if secret is None:
        return subprocess.Popen([sys.executable, "-m", "bridge", "serve"], env=env)
    read_end, write_end = os.pipe()
    try:
        os.write(write_end, secret.encode())
    finally:
        os.close(write_end)
    try:
        return subprocess.Popen([sys.executable, "-m", "bridge", "serve"], pass_fds=(read_end,),
                                env=dict(env, **{SESSION_SECRET_FD_ENV: str(read_end)}))
    finally:
        os.close(read_end)


def run_workers(settings: Settings) -> int:
    """Supervise ``settings.workers`` worker processes on one SO_REUSEPORT port; returns the exit code."""
    if settings.port == 0:
        print("vault-mcp-bridge: WORKERS > 1 needs a fixed PORT", file=sys.stderr)
        return 2
    env = dict(os.environ, **{WORKER_ENV: "1"})
    # One session key for all workers, made here before any of them starts: each worker would otherwise make
    # its own and refuse the others' session ids.
    shared_secret = None if settings.mcp_session_secret is not None else secrets.token_urlsafe(32)
    children = [_spawn_worker(env, shared_secret) for _ in range(settings.workers)]
    log.info("bridge.workers.started", workers=len(children), pids=[c.pid for c in children],
             session_key="shared, generated" if shared_secret else "MCP_SESSION_SECRET")
    stopping = False

    def forward(signum: int, _frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True
        for child in children:
            if child.poll() is None:
                child.send_signal(signum)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    if settings.api_keys_file:  # SIGHUP reloads API_KEYS_FILE in every worker; the supervisor keeps running
        def reload(signum: int, _frame: FrameType | None) -> None:
            for child in children:
                if child.poll() is None:
                    child.send_signal(signum)

        signal.signal(signal.SIGHUP, reload)
    # A worker that dies on its own takes the others down too: a supervisor (systemd, k8s) restarts us.
    while not stopping and all(c.poll() is None for c in children):
        time.sleep(0.2)
    if not stopping:
        forward(signal.SIGTERM, None)
    deadline = time.monotonic() + settings.shutdown_grace_seconds + 5
    for child in children:
        try:
            child.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()
    codes = [c.returncode for c in children]
    log.info("bridge.workers.stopped", codes=codes)
    return 0 if stopping and all(code in (0, -signal.SIGTERM, -signal.SIGINT) for code in codes) else 1


def inherit_session_secret(settings: Settings) -> Settings:
    """In a worker: the session key the parent generated (read once from the inherited pipe), if any."""
    fd = os.environ.pop(SESSION_SECRET_FD_ENV, None)
    if fd is None or settings.mcp_session_secret is not None:
        return settings
    with os.fdopen(int(fd), "rb") as pipe:
        secret = pipe.read().decode()
    return settings.model_copy(update={"mcp_session_secret": SecretStr(secret)})


# -- the connection layer ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ConnectionLimits:
    header_read_timeout: float
    body_read_timeout: float
    max_connections: int

    @classmethod
    def from_settings(cls, settings: Settings, max_connections: int | None = None) -> ConnectionLimits:
        return cls(settings.header_read_timeout, settings.body_read_timeout,
                   max_connections if max_connections is not None else settings.max_connections)


def fit_connections(max_connections: int, vault_pool_size: int) -> int:
    """Raise the open-files limit to fit ``MAX_CONNECTIONS`` (up to the hard limit); the cap that fits."""
    need = max_connections + vault_pool_size + FD_RESERVE
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < need:
        target = need if hard == resource.RLIM_INFINITY else min(need, hard)
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            log.info("server.fd_limit.raised", old=soft, new=target)
            soft = target
    if soft == resource.RLIM_INFINITY or soft >= need:
        return max_connections
    fitted = max(1, soft - vault_pool_size - FD_RESERVE)
    log.warning("server.connections.capped", max_connections=fitted, configured=max_connections, fd_limit=soft,
                hint="raise the open-files limit (ulimit -n) or lower MAX_CONNECTIONS / VAULT_POOL_SIZE")
    return fitted


def _raw_response(status: int, reason: str, err: BridgeError, extra: str = "") -> bytes:
    body = json.dumps(err.to_dict(), separators=(",", ":")).encode()
    head = (f"HTTP/1.1 {status} {reason}\r\nContent-Type: application/json; charset=utf-8\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n{extra}\r\n")
    return head.encode() + body


TOO_MANY_CONNECTIONS = _raw_response(503, "Service Unavailable", BridgeError(
    "The bridge has reached MAX_CONNECTIONS; retry shortly.", code="too_many_connections"), "Retry-After: 1\r\n")
HEADER_TIMEOUT = _raw_response(408, "Request Timeout", RequestTimeoutError(
    "The request's headers did not arrive within HEADER_READ_TIMEOUT."))


class _Throttled:
    """Counts an event and logs it at most once per ``every`` seconds, with the count since the last line."""

    def __init__(self, event: str, every: float = 10.0) -> None:
        self._event = event
        self._every = every
        self._count = 0
        self._last = 0.0

    def hit(self, **fields: Any) -> None:
        self._count += 1
        now = time.monotonic()
        if now - self._last >= self._every:
            log.warning(self._event, count=self._count, **fields)
            self._count = 0
            self._last = now


class BridgeServer(web.Server):
    """aiohttp's low-level server, making :class:`BridgeRequestHandler` connections under ``limits``."""

    def __init__(self, handler: Callable[[BaseRequest], Awaitable[web.StreamResponse]], *,
                 limits: ConnectionLimits, **kwargs: Any) -> None:
        super().__init__(handler, **kwargs)
        self.limits = limits
        self.refused = _Throttled("server.connections.refused")
        self.timeouts = _Throttled("server.read_timeouts")
        factory = self.request_factory

        def tracking_factory(message: Any, payload: Any, protocol: RequestHandler, writer: Any,
                             task: asyncio.Task[None]) -> BaseRequest:
            if isinstance(protocol, BridgeRequestHandler):
                protocol.request_started()
            return factory(message, payload, protocol, writer, task)

        self.request_factory = tracking_factory

    def __call__(self) -> BridgeRequestHandler:
        return BridgeRequestHandler(self, loop=self._loop, limits=self.limits, **self._kwargs)

    def connection_count(self) -> int:
        return len(self._connections)

    def reclaim_idle(self) -> bool:
        """Close the oldest idle connection (see :meth:`BridgeRequestHandler.idle`); whether there was one."""
        for conn in self._connections:
            if isinstance(conn, BridgeRequestHandler) and conn.idle:
                conn.force_close()
                return True
        return False


_AIOHTTP_INTERNALS = {"_messages", "_lingering_time", "_close", "_loop"}
"""What :class:`BridgeRequestHandler` uses of aiohttp's ``RequestHandler`` beyond its public methods (aiohttp
3.14); checked at import so that an aiohttp that changed them fails loudly, not quietly without deadlines."""
_missing = _AIOHTTP_INTERNALS - {name for cls in RequestHandler.__mro__ for name in getattr(cls, "__slots__", ())}
if _missing:  # pragma: no cover - only with an incompatible aiohttp
    raise ImportError(f"bridge.serving needs aiohttp's RequestHandler attributes {sorted(_missing)}")


class BridgeRequestHandler(RequestHandler):
    """One client connection: aiohttp's, plus the read deadlines, the connection cap and quiet error pages."""

    __slots__ = ("_body_timer", "_bridge_server", "_head_timer", "_in_request", "_limits", "_partial", "_refused")

    def __init__(self, manager: BridgeServer, *, limits: ConnectionLimits, **kwargs: Any) -> None:
        super().__init__(manager, **kwargs)
        self._limits = limits
        self._bridge_server = manager
        self._head_timer: asyncio.TimerHandle | None = None
        self._body_timer: asyncio.TimerHandle | None = None
        self._refused = False
        self._in_request = False  # a request is being handled
        self._partial = False  # bytes of a request head received, the head not complete

    @property
    def idle(self) -> bool:
        """No request in flight and no byte of a new one received: closing it loses nothing."""
        return self.transport is not None and not (self._in_request or self._partial or self._body_timer)

    # -- connection ------------------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        server = self._bridge_server
        if server.connection_count() >= self._limits.max_connections and not server.reclaim_idle():
            self._refused = True
            server.refused.hit(max_connections=self._limits.max_connections)
            with contextlib.suppress(Exception):
                cast(asyncio.Transport, transport).write(TOO_MANY_CONNECTIONS)
            transport.close()
            return
        super().connection_made(transport)
        self._arm_head()

    def connection_lost(self, exc: BaseException | None) -> None:
        self._cancel_head()
        self._cancel_body()
        if self._refused:
            return
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return
        in_body = self._body_timer is not None
        queued = len(self._messages)
        super().data_received(data)
        if len(self._messages) > queued:  # a request head is complete
            self._cancel_head()
            self._partial = False
            payload = self._messages[-1][1]
            if not payload.is_eof():
                self._arm_body(payload)
        elif data and not in_body:
            self._partial = True
            if self._head_timer is None:  # (the first request's deadline runs from the connection's start)
                self._arm_head()

    # -- requests --------------------------------------------------------------------------------------

    def request_started(self) -> None:
        self._in_request = True

    async def finish_response(self, request: BaseRequest, resp: web.StreamResponse,
                              start_time: float | None) -> tuple[web.StreamResponse, bool]:
        try:
            return await super().finish_response(request, resp, start_time)
        finally:
            self._in_request = False

    def handle_error(self, request: BaseRequest, status: int = 500, exc: BaseException | None = None,
                     message: str | None = None) -> web.StreamResponse:
        """aiohttp's answer to a malformed request (400) or an exception that escaped the app (500): our JSON
        error, never its text (which quotes the offending request bytes), logged without it."""
        request_id = os.urandom(16).hex()
        error = type(exc).__name__ if exc is not None else None
        if status >= 500:
            log.error("http.unhandled_error", status=status, error=error, request_id=request_id, exc_info=exc)
            err: BridgeError = BridgeError("Internal error; the request id identifies it in the logs.",
                                           status=status)
        else:
            log.info("http.malformed_request", status=status, error=error, peer=request.remote,
                     request_id=request_id)
            err = InvalidRequestError(
                "Malformed HTTP request: the request line or a header is invalid or too long (header values may "
                "not contain control characters such as CR or NUL; strip the line ending from a key read from a "
                "file).", status=status)
        if request.writer.output_size > 0:
            raise ConnectionError("Response is sent already, cannot send another response with the error message")
        resp = web.json_response(err.to_dict(), status=status, headers={"X-Request-Id": request_id})
        resp.force_close()
        return resp

    # -- deadlines -------------------------------------------------------------------------------------

    def _arm_head(self) -> None:
        self._cancel_head()
        self._head_timer = self._loop.call_later(self._limits.header_read_timeout, self._head_timeout)

    def _cancel_head(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timeout(self) -> None:
        self._head_timer = None
        transport = self.transport
        if transport is None:
            return
        self._bridge_server.timeouts.hit(phase="headers", timeout=self._limits.header_read_timeout)
        if self._partial and not self._in_request:
            with contextlib.suppress(Exception):
                transport.write(HEADER_TIMEOUT)
        self.force_close()

    def _arm_body(self, payload: Any) -> None:
        self._cancel_body()
        self._body_timer = self._loop.call_later(self._limits.body_read_timeout, self._body_timeout, payload)
        payload.on_eof(self._cancel_body)

    def _cancel_body(self) -> None:
        if self._body_timer is not None:
            self._body_timer.cancel()
            self._body_timer = None

    def _body_timeout(self, payload: Any) -> None:
        self._body_timer = None
        if self.transport is None or payload.is_eof():
            return
        self._bridge_server.timeouts.hit(phase="body", timeout=self._limits.body_read_timeout)
        self._lingering_time = 0.0  # do not wait for the rest of the body after the answer
        self._close = True  # no further request on this connection
        payload.set_exception(RequestTimeoutError(
            f"The request body did not arrive within BODY_READ_TIMEOUT ({self._limits.body_read_timeout:g}s)."))


class BridgeRunner(web.AppRunner):
    """``AppRunner`` whose server makes :class:`BridgeRequestHandler` connections."""

    def __init__(self, app: web.Application, *, limits: ConnectionLimits, **kwargs: Any) -> None:
        super().__init__(app, **kwargs)
        self._limits = limits

    async def _make_server(self) -> web.Server:
        server = await super()._make_server()  # runs the app's startup (cleanup_ctx) and freezes it
        return BridgeServer(server.request_handler, request_factory=server.request_factory,
                            handler_cancellation=server.handler_cancellation, loop=asyncio.get_running_loop(),
                            limits=self._limits, **server._kwargs)


class BridgeTCPSite(web.TCPSite):
    """``TCPSite`` whose TLS handshake must also finish within ``HEADER_READ_TIMEOUT`` (asyncio's default: 60 s;
    a connection still in its handshake is not yet one of :class:`BridgeServer`'s connections)."""

    def __init__(self, runner: web.BaseRunner, host: str, port: int, *, handshake_timeout: float,
                 **kwargs: Any) -> None:
        super().__init__(runner, host, port, **kwargs)
        self._handshake_timeout = handshake_timeout

    async def start(self) -> None:
        if self._ssl_context is None:
            await super().start()
            return
        self._runner._reg_site(self)  # what BaseSite.start does; then TCPSite.start plus the handshake timeout
        server = self._runner.server
        assert server is not None
        self._server = await asyncio.get_running_loop().create_server(
            server, self._host, self._port, ssl=self._ssl_context, backlog=self._backlog,
            reuse_address=self._reuse_address, reuse_port=self._reuse_port,
            ssl_handshake_timeout=self._handshake_timeout)
        sockets = self._server.sockets
        self._bound_port = sockets[0].getsockname()[1] if sockets else self._port


def run_app(app: web.Application, settings: Settings, *, ssl_context: ssl.SSLContext | None,
            loop: asyncio.AbstractEventLoop) -> None:
    """Serve until SIGTERM/SIGINT, then shut down gracefully (what ``web.run_app`` does, with our runner)."""
    limits = ConnectionLimits.from_settings(settings, fit_connections(settings.max_connections,
                                                                      settings.vault_pool_size))

    async def serve() -> None:
        runner = BridgeRunner(app, limits=limits, handle_signals=True, access_log=None,
                              shutdown_timeout=settings.shutdown_grace_seconds)
        await runner.setup()
        try:
            site = BridgeTCPSite(runner, settings.host, settings.port, ssl_context=ssl_context,
                                 backlog=max(128, min(limits.max_connections, 1024)),
                                 reuse_port=settings.workers > 1 or None,
                                 handshake_timeout=limits.header_read_timeout)
            await site.start()
            tune_gc()
            log.info("server.listening", host=settings.host, port=settings.port, tls=ssl_context is not None,
                     max_connections=limits.max_connections)
            await asyncio.Event().wait()  # until a signal (GracefulExit) or cancellation
        finally:
            await runner.cleanup()

    asyncio.set_event_loop(loop)
    main = loop.create_task(serve())
    try:
        loop.run_until_complete(main)
    except (web.GracefulExit, KeyboardInterrupt):
        pass
    finally:
        try:
            if not main.done():
                main.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    loop.run_until_complete(main)
        finally:
            rest = asyncio.all_tasks(loop)
            for task in rest:
                task.cancel()
            if rest:
                loop.run_until_complete(asyncio.gather(*rest, return_exceptions=True))
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()
