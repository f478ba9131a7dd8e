"""``vault-mcp-bridge stdio``: MCP over stdin/stdout for one identity, for a local client that starts the bridge as
its child (desktop assistants, IDEs).

The process is the whole bridge without its HTTP listener: ``create_app(settings)`` builds the same state (Vault
client and token, child tokens, executor, audit, rate limiter, change hub) and its startup and cleanup run as for
``serve``; only the transport differs. One JSON-RPC message per line (``basic/transports/stdio.mdx``), both eras:

- the identity is the one of ``--api-key-file`` (a key of ``API_KEYS_JSON``/``API_KEYS_FILE``) or ``--jwt-file``
  (a JWT the bridge's JWT settings verify), checked at start (a bad one: one line on stderr, exit 2) and again
  for every request (the file is read again when it changes: a renewed JWT, a rotated key);
- every request is charged one token of the agent's rate limit and holds an ``AGENT_MAX_INFLIGHT`` slot, as a
  POST does; operations are carried out by the executor (scopes, cost, audit, metrics); refusals are JSON-RPC
  errors with the HTTP transport's codes (-31403 ``insufficient_scope``, -31429 ``rate_limited`` ...);
- ``_meta`` with a protocol version (``server/discover`` first, usually) is 2026-07-28: ``subscriptions/listen``
  acknowledges, then interleaves its ``notifications/resources/updated`` (tagged with its id) on stdout until
  ``notifications/cancelled`` names it; ``initialize`` opens the handshake era for the rest of the process, with
  ``resources/subscribe`` announced as plain notifications;
- stdout carries protocol messages only: the original file descriptor 1 is kept for them and fd 1 is pointed at
  stderr, so a stray print cannot corrupt the stream; logs go to stderr;
- end of stdin (or SIGTERM/SIGINT) ends the process within two seconds: requests in flight are cancelled, the
  cleanup (cached child tokens and the bridge's own AppRole token revoked) gets at most :data:`CLEANUP_SECONDS`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import structlog
from aiohttp import web

from bridge.auth.api_key import ApiKeyAuthenticator
from bridge.auth.identity import Identity
from bridge.auth.jwt import JwtAuthenticator
from bridge.billing import bucket, rate_limited
from bridge.config import Settings
from bridge.errors import BridgeError, UnauthenticatedError
from bridge.mcp.changes import ChangeHub, Listener, ListenListener, SessionListener, session_key
from bridge.mcp.context import McpContext
from bridge.mcp.methods import (
    META_SUBSCRIPTION_ID,
    McpMethods,
    discover_result,
    finish,
    initialize_result,
    method_not_found,
)
from bridge.mcp.protocol import (
    INTERNAL_ERROR,
    INVALID_PARAMS,
    INVALID_REQUEST,
    META_CLIENT_CAPABILITIES,
    META_PROTOCOL_VERSION,
    MODERN_VERSIONS,
    SUPPORTED_VERSIONS,
    UNSUPPORTED_PROTOCOL_VERSION,
    Message,
    RpcError,
    parse_message,
    rpc_error_for,
)

log = structlog.get_logger("bridge.mcp.stdio")

CLEANUP_SECONDS = 1.5
"""The most the shutdown's cleanup may take (a client kills its server 2 s after closing its stdin)."""
MAX_CREDENTIAL_BYTES = 64 * 1024


@dataclass(slots=True)
class Credential:
    """The identity's credential file: an API key or a JWT, read again when the file changes."""

    kind: Literal["api_key", "jwt"]
    path: Path
    _stamp: tuple[float, int] | None = None
    _value: str = ""

    def value(self) -> str:
        """The file's content without its line break (``OSError`` when unreadable, ``ValueError`` when empty)."""
        stat = self.path.stat()
        stamp = (stat.st_mtime, stat.st_size)
        if stamp != self._stamp:
            with self.path.open("rb") as handle:
                raw = handle.read(MAX_CREDENTIAL_BYTES + 1)
            if len(raw) > MAX_CREDENTIAL_BYTES:
                raise ValueError(f"{self.path} is larger than {MAX_CREDENTIAL_BYTES} bytes")
            value = raw.decode("utf-8", errors="strict").strip()
            if not value:
                raise ValueError(f"{self.path} is empty")
            self._value, self._stamp = value, stamp
        return self._value


class Identifier:
    """The identity of the credential, verified by the bridge's own authenticators."""

    def __init__(self, app: web.Application, credential: Credential) -> None:
        from bridge.keys import AUTH

        self.credential = credential
        chain = app[AUTH]
        wanted = ApiKeyAuthenticator if credential.kind == "api_key" else JwtAuthenticator
        found = [a for a in chain.authenticators if isinstance(a, wanted)]
        if not found:
            what = "API key" if credential.kind == "api_key" else "JWT"
            raise UnauthenticatedError(f"{what} authentication is disabled in this bridge's settings.")
        self._auth = found[0]

    async def identity(self) -> Identity:
        try:
            value = self.credential.value()
        except (OSError, ValueError, UnicodeDecodeError) as exc:
            raise UnauthenticatedError(f"The credential file cannot be read ({type(exc).__name__}).") from None
        auth = self._auth
        if isinstance(auth, JwtAuthenticator):
            await auth.prepare_token(value)
            return auth.identity_of(value)
        assert isinstance(auth, ApiKeyAuthenticator)
        return auth.identity_of(value)


class Writer:
    """One JSON-RPC message per line on the protocol's file descriptor, never interleaved."""

    def __init__(self, stream: asyncio.StreamWriter | None, fd: int) -> None:
        self._stream = stream
        self._fd = fd
        self._lock = asyncio.Lock()
        self.broken = False

    async def send(self, message: dict[str, Any]) -> None:
        line = json.dumps(message, separators=(",", ":"), ensure_ascii=False).encode() + b"\n"
        async with self._lock:
            if self.broken:
                return
            try:
                if self._stream is not None:
                    self._stream.write(line)
                    await self._stream.drain()
                else:  # not a pipe (a file): write from a thread, never blocking the loop
                    await asyncio.get_running_loop().run_in_executor(None, _write_all, self._fd, line)
            except (ConnectionError, OSError):
                self.broken = True  # the client closed its end: nothing more can be said

    async def close(self) -> None:
        if self._stream is not None:
            with contextlib.suppress(Exception):
                self._stream.close()


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _error(msg_id: str | int | None, err: RpcError) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": msg_id, "error": err.to_dict()}


class StdioSession:
    """The messages of one client on one pair of pipes."""

    def __init__(self, app: web.Application, identifier: Identifier, writer: Writer) -> None:
        from bridge.keys import AUDIT, CHANGES, INFLIGHT, LIMITER, MCP_METHODS, SETTINGS

        settings: Settings = app[SETTINGS]
        self._methods: McpMethods = app[MCP_METHODS]
        self._hub: ChangeHub = app[CHANGES]
        self._limiter = app[LIMITER] if settings.rate_limit_enabled else None
        self._inflight = app[INFLIGHT]
        self._audit = app[AUDIT]
        self._identifier = identifier
        self._writer = writer
        self._max_depth = settings.max_json_depth
        self._session: str | None = None
        """Handshake era: the process's own session id (its subscriptions), once ``initialize`` came."""
        self._tasks: dict[str | int | None, asyncio.Task[None]] = {}
        self._listens: dict[str | int, tuple[Listener, asyncio.Task[None]]] = {}
        self._pumps: set[asyncio.Task[None]] = set()

    # -- the loop ---------------------------------------------------------------------------------------------

    async def run(self, reader: asyncio.StreamReader) -> None:
        """Read messages until end of input; each request runs as its own task."""
        while True:
            try:
                line = await reader.readline()
            except ValueError:  # a line longer than MAX_BODY_BYTES (dropped by the reader)
                await self._writer.send(_error(None, RpcError(INVALID_REQUEST, "Invalid Request: the message is "
                                                                               "larger than MAX_BODY_BYTES.")))
                continue
            if not line:
                return
            if not line.strip():
                continue
            task = asyncio.create_task(self._handle(line))
            self._pumps.add(task)
            task.add_done_callback(self._pumps.discard)

    async def stop(self) -> None:
        """Cancel everything in flight and end every stream."""
        for listener, pump in list(self._listens.values()):
            self._hub.detach(listener)
            pump.cancel()
        tasks = [*self._pumps, *(pump for _, pump in self._listens.values())]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._listens.clear()

    # -- one message ------------------------------------------------------------------------------------------

    async def _handle(self, line: bytes) -> None:
        msg_id: str | int | None = None
        try:
            msg = parse_message(line, max_depth=self._max_depth)
            msg_id = msg.id
            if msg.method is None:
                return  # a client's response: nothing is ever asked of it
            if not msg.is_request:
                self._notification(msg)
                return
            await self._request(msg)
        except RpcError as err:
            await self._writer.send(_error(msg_id if msg_id is not None else err.request_id, err))
        except BridgeError as err:
            await self._writer.send(_error(msg_id, rpc_error_for(err)))
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("mcp.stdio.unhandled_error")
            await self._writer.send(_error(msg_id, RpcError(INTERNAL_ERROR, "Internal error; see the bridge's "
                                                                            "log (stderr).")))

    def _notification(self, msg: Message) -> None:
        if msg.method == "notifications/cancelled":
            request_id = msg.params.get("requestId")
            if isinstance(request_id, str | int) and not isinstance(request_id, bool):
                listen = self._listens.pop(request_id, None)
                if listen is not None:  # a subscription ends: nothing more is sent for it
                    self._hub.detach(listen[0])
                    listen[1].cancel()
                task = self._tasks.get(request_id)
                if task is not None:
                    task.cancel()

    async def _request(self, msg: Message) -> None:
        assert msg.method is not None
        assert msg.id is not None
        identity = await self._identifier.identity()
        meta = msg.params.get("_meta")
        modern = (isinstance(meta, dict) and META_PROTOCOL_VERSION in meta) or msg.method == "server/discover"
        if modern:
            _check_meta(meta)
        elif msg.method != "initialize" and self._session is None:
            raise RpcError(INVALID_REQUEST, "Invalid Request: send 'initialize' first (or use protocol 2026-07-28 "
                                            "with per-request _meta).")
        ctx = McpContext(identity, modern, session=self._session)
        await self._charge(ctx, msg)
        if modern and msg.method == "subscriptions/listen":
            await self._listen(identity, msg.id, msg.params)
            return
        task = asyncio.current_task()
        assert task is not None
        self._tasks[msg.id] = task
        try:
            async with self._inflight.slot(identity.subject):
                result = await self._dispatch(ctx, msg)
        except asyncio.CancelledError:
            if self._tasks.get(msg.id) is task and not self._writer.broken:
                return  # cancelled by the client: no answer (and the process goes on)
            raise
        finally:
            if self._tasks.get(msg.id) is task:
                del self._tasks[msg.id]
        await self._writer.send({"jsonrpc": "2.0", "id": msg.id, "result": result})

    async def _charge(self, ctx: McpContext, msg: Message) -> None:
        """One token of the agent's bucket per request, as the HTTP middleware charges each POST."""
        if self._limiter is None:
            return
        key, quota = bucket(ctx.identity, self._limiter.default)
        decision = await self._limiter.hit(key, quota)
        if not decision.allowed:
            err = rate_limited(ctx.identity, quota, decision, 1)
            tool = msg.params.get("name") if msg.method == "tools/call" else None
            await self._audit.refusal(ctx.identity, tool if isinstance(tool, str) else None, err, route="stdio")
            raise err
        ctx.prepaid, ctx.decision = 1, decision

    async def _dispatch(self, ctx: McpContext, msg: Message) -> dict[str, Any]:
        assert msg.method is not None
        if ctx.modern:
            if msg.method == "server/discover":
                return finish(msg.method, discover_result())
            if not self._methods.serves(msg.method, modern=True):
                raise method_not_found(msg.method, modern=True)
            return finish(msg.method, await self._methods.call(ctx, msg.method, msg.params))
        if msg.method == "initialize":
            version, result = initialize_result(msg.params)
            if self._session is None:
                self._session = f"stdio-{os.urandom(12).hex()}"
                listener = SessionListener(ctx.identity, session_key(self._session), self._hub.store, "stdio")
                self._start_pump(listener, None)
            log.info("mcp.session.started", agent=ctx.identity.subject, protocol_version=version, transport="stdio")
            return result
        return await self._methods.call(ctx, msg.method, msg.params)

    # -- notifications ----------------------------------------------------------------------------------------

    async def _listen(self, identity: Identity, listen_id: str | int, params: dict[str, Any]) -> None:
        uris, honored = self._methods.listen_filter(params)
        if listen_id in self._listens:
            raise RpcError(INVALID_REQUEST, "Invalid Request: a subscription with this id is open already.")
        listener = ListenListener(identity, await self._hub.states(identity, uris))
        await self._writer.send({"jsonrpc": "2.0", "method": "notifications/subscriptions/acknowledged",
                                 "params": {"_meta": {META_SUBSCRIPTION_ID: listen_id}, "notifications": honored}})
        self._start_pump(listener, listen_id)

    def _start_pump(self, listener: Listener, listen_id: str | int | None) -> None:
        self._hub.attach(listener)
        pump = asyncio.create_task(self._pump(listener, listen_id))
        if listen_id is not None:
            self._listens[listen_id] = (listener, pump)
        else:
            self._pumps.add(pump)
            pump.add_done_callback(self._pumps.discard)

    async def _pump(self, listener: Listener, listen_id: str | int | None) -> None:
        meta = {META_SUBSCRIPTION_ID: listen_id} if listen_id is not None else None
        try:
            while (uri := await listener.queue.get()) is not None:
                params: dict[str, Any] = {"_meta": meta, "uri": uri} if meta is not None else {"uri": uri}
                await self._writer.send({"jsonrpc": "2.0", "method": "notifications/resources/updated",
                                         "params": params})
            if meta is not None and self._hub.closing:  # the server ends it: the graceful close
                await self._writer.send({"jsonrpc": "2.0", "id": listen_id,
                                         "result": {"resultType": "complete", "_meta": meta}})
        finally:
            self._hub.detach(listener)
            if listen_id is not None:
                self._listens.pop(listen_id, None)


def _check_meta(meta: Any) -> None:
    """The 2026-07-28 ``_meta`` of a request (stdio has no headers: the body alone says it)."""
    version = meta.get(META_PROTOCOL_VERSION) if isinstance(meta, dict) else None
    if not isinstance(meta, dict) or not isinstance(version, str):
        raise RpcError(INVALID_PARAMS, f"Invalid params: params._meta must carry '{META_PROTOCOL_VERSION}' and "
                                       f"'{META_CLIENT_CAPABILITIES}'.")
    if version not in MODERN_VERSIONS:
        raise RpcError(UNSUPPORTED_PROTOCOL_VERSION, "Unsupported protocol version",
                       data={"supported": list(SUPPORTED_VERSIONS), "requested": version})
    if not isinstance(meta.get(META_CLIENT_CAPABILITIES), dict):
        raise RpcError(INVALID_PARAMS, f"Invalid params: params._meta must carry '{META_CLIENT_CAPABILITIES}' "
                                       "(an object).")


# -- the process ------------------------------------------------------------------------------------------------

async def _pipes(in_fd: int, out_fd: int, limit: int) -> tuple[asyncio.StreamReader, Writer]:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=limit)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), os.fdopen(in_fd, "rb", 0))
    stream: asyncio.StreamWriter | None = None
    try:
        transport, protocol = await loop.connect_write_pipe(
            lambda: asyncio.StreamReaderProtocol(asyncio.StreamReader()), os.fdopen(out_fd, "wb", 0))
        stream = asyncio.StreamWriter(transport, protocol, None, loop)
    except ValueError:  # a regular file: written from a thread instead
        stream = None
    return reader, Writer(stream, out_fd)


async def serve_stdio(settings: Settings, credential: Credential, *, in_fd: int = 0, out_fd: int = 1) -> int:
    """Serve until end of input; the exit code (2: the credential or the settings are unusable)."""
    from bridge.app import create_app

    app = create_app(settings)
    runner = web.AppRunner(app, handle_signals=False, access_log=None)
    try:
        await runner.setup()  # the cleanup contexts: audit log, Vault token, JWK Set, the change hub ...
    except Exception:
        log.exception("mcp.stdio.startup_failed")
        return 2
    try:
        identifier = Identifier(app, credential)
        await identifier.identity()
    except BridgeError as exc:
        print(f"vault-mcp-bridge stdio: {exc.message}", file=sys.stderr)
        await _cleanup(runner)
        return 2
    session: StdioSession | None = None
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(signum, stopping.set)
    writer: Writer | None = None
    try:
        reader, writer = await _pipes(in_fd, out_fd, settings.max_body_bytes)
        session = StdioSession(app, identifier, writer)
        log.info("mcp.stdio.started", agent=(await identifier.identity()).subject, kind=credential.kind)
        serving = asyncio.create_task(session.run(reader))
        stopped = asyncio.create_task(stopping.wait())
        await asyncio.wait({serving, stopped}, return_when=asyncio.FIRST_COMPLETED)
        for task in (serving, stopped):
            task.cancel()
        await asyncio.gather(serving, stopped, return_exceptions=True)
    finally:
        if session is not None:
            await session.stop()
        await _cleanup(runner)
        if writer is not None:
            await writer.close()
        log.info("mcp.stdio.stopped")
    return 0


async def _cleanup(runner: web.AppRunner) -> None:
    """The app's shutdown and cleanup (child tokens and the AppRole token revoked), within
    :data:`CLEANUP_SECONDS`."""
    try:
        await asyncio.wait_for(runner.cleanup(), CLEANUP_SECONDS)
    except TimeoutError:
        log.warning("mcp.stdio.cleanup_timeout", seconds=CLEANUP_SECONDS)


def stdio_main(settings: Settings, credential: Credential) -> int:
    """``vault-mcp-bridge stdio``: keep fd 1 for the protocol, point fd 1 (and ``sys.stdout``) at stderr, log
    to stderr, and serve."""
    from bridge.logging import configure_logging
    from bridge.serving import new_event_loop

    problem = settings.unusable_reason()
    if problem is not None:
        print(f"vault-mcp-bridge stdio: invalid configuration: {problem}", file=sys.stderr)
        return 2
    protocol_out = os.dup(1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    configure_logging(settings.log_level, settings.log_format, stream=sys.stderr)
    loop = new_event_loop(settings.event_loop)
    asyncio.set_event_loop(loop)
    try:
        return loop.run_until_complete(serve_stdio(settings, credential, out_fd=protocol_out))
    finally:
        with contextlib.suppress(Exception):
            loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()
