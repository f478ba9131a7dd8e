"""``/mcp``: our own JSON-RPC 2.0 handler for MCP over Streamable HTTP, both eras on one endpoint.

Before this handler runs, the middlewares have answered a bad ``Origin`` (403), a missing or bad credential
(401) and an exhausted rate limit (429): each keeps its HTTP status and headers and carries a JSON-RPC error
body (``bridge.middlewares.render_error``), as does every non-2xx answer of this handler (``data.code`` is the
bridge's error code). Then, in order:

1. transport: ``Accept`` must list ``application/json`` and ``text/event-stream`` (406), the body must be JSON
   (415 / -32700), one message, not a batch (-32600);
2. era: per-request ``_meta`` with a protocol version (or ``server/discover``, or an ``MCP-Protocol-Version``
   of the stateless era) selects 2026-07-28 (header/body checks -32020, version -32022, ``resultType``,
   ``ttlMs``/``cacheScope``; methods that era removed, ``initialize`` included, are HTTP 404 with -32601);
   an ``initialize`` without it selects the handshake era (2025-11-25, 2025-06-18, 2025-03-26: signed
   ``Mcp-Session-Id``, ``MCP-Protocol-Version`` header);
3. method: :class:`bridge.mcp.methods.McpMethods` (tools, resources, prompts, completion; a tool outside the
   caller's scopes is HTTP 403 ``insufficient_scope``, rendered and audited as every refusal; a failing tool is
   an ``isError`` result carrying the REST error code), or a notification stream.

Notification streams (:mod:`bridge.mcp.changes`): ``subscriptions/listen`` (2026-07-28) answers its POST with an
SSE stream (the acknowledgment first, then ``notifications/resources/updated`` tagged with the subscription id,
a graceful result at shutdown); ``GET /mcp`` with a handshake-era session id opens the session's stream of
``notifications/resources/updated`` for its ``resources/subscribe`` URIs. Both send a keep-alive comment every
``SUBSCRIPTION_KEEPALIVE``, give back their ``AGENT_MAX_INFLIGHT`` slot once open, and end when the client goes
away or the server shuts down. ``DELETE /mcp`` answers 405: sessions are stateless and end by expiry.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import json
import os
import time
from collections.abc import Awaitable, Callable
from typing import Any

import structlog
from aiohttp import web

from bridge.config import Settings
from bridge.errors import BridgeError, RateLimitedError
from bridge.mcp.changes import ChangeHub, Listener, ListenListener, SessionListener, session_key
from bridge.mcp.context import McpContext
from bridge.mcp.elicitation import URL_FLAG, Elicitations, session_flags, url_mode
from bridge.mcp.metadata import MCP_PATH, Challenges
from bridge.mcp.methods import (
    META_SUBSCRIPTION_ID,
    McpMethods,
    decode_cursor,
    discover_result,
    encode_cursor,
    finish,
    initialize_result,
    method_not_found,
)
from bridge.mcp.protocol import (
    DEFAULT_HEADERLESS_VERSION,
    HANDSHAKE_VERSIONS,
    HEADER_METHOD,
    HEADER_MISMATCH,
    HEADER_NAME,
    HEADER_PROTOCOL_VERSION,
    HEADER_SESSION_ID,
    HTTP_ERROR_BASE,
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
    RpcPeek,
    parse_message,
    peek_message,
    rpc_error,
    rpc_response,
    rpc_result,
)
from bridge.mcp.session import McpSession, SessionCodec
from bridge.routing import ERROR_CODE, IDENTITY, INFLIGHT_SLOT, MCP_MESSAGE, RATE_DECISION, REQUEST_ID

log = structlog.get_logger("bridge.mcp")

__all__ = ["McpEndpoint", "accepts_both", "decode_cursor", "decode_header_value", "encode_cursor", "read_message",
           "session_codec", "setup_mcp_routes"]

MAX_ECHO = 80
MAX_STREAMS_PER_AGENT = 32
"""Notification streams one agent may hold open on one process (beyond: 429)."""
NAMED_METHODS = {"tools/call": "name", "prompts/get": "name", "resources/read": "uri"}
"""2026-07-28: the methods whose ``Mcp-Name`` header must equal this parameter."""
SSE_HEADERS = {"Content-Type": "text/event-stream", "Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


def _bad_request(message: str, code: int = INVALID_REQUEST, bridge_code: str | None = None) -> RpcError:
    return RpcError(code, message, http_status=400, bridge_code=bridge_code)


def _short(value: str) -> str:
    return value if len(value) <= MAX_ECHO else value[:MAX_ECHO] + "…"


# -- transport --------------------------------------------------------------------------------------------

def _media_ranges(header: str) -> dict[str, float]:
    ranges: dict[str, float] = {}
    for part in header.split(","):
        media, *params = (p.strip() for p in part.split(";"))
        if not media:
            continue
        quality = 1.0
        for param in params:
            name, _, value = param.partition("=")
            if name.strip().lower() == "q":
                try:
                    quality = float(value)
                except ValueError:
                    quality = 0.0
        ranges[media.lower()] = quality
    return ranges


def accepts_both(header: str | None) -> bool:
    """Whether ``Accept`` lists both ``application/json`` and ``text/event-stream`` (wildcards count)."""
    if not header:
        return False
    ranges = _media_ranges(header)

    def ok(media: str) -> bool:
        kind = media.split("/")[0]
        for candidate in (media, f"{kind}/*", "*/*"):
            if candidate in ranges:
                return ranges[candidate] > 0
        return False

    return ok("application/json") and ok("text/event-stream")


async def read_message(request: web.Request, *, max_depth: int) -> Message:
    if not accepts_both(request.headers.get("Accept")):
        raise RpcError(INVALID_REQUEST, "Not Acceptable: the Accept header must list both application/json and "
                                        "text/event-stream.", http_status=406)
    if request.content_type != "application/json":
        raise RpcError(INVALID_REQUEST, "Send the JSON-RPC message with 'Content-Type: application/json'.",
                       http_status=415)  # data.code: unsupported_media_type
    return parse_message(await request.read(), max_depth=max_depth)


def _is_modern(request: web.Request, msg: Message) -> bool:
    """Per-request ``_meta`` with a protocol version is the stateless era whatever the method (``versioning.mdx``:
    "a request carrying modern per-request ``_meta`` is served statelessly"); else ``initialize`` is the
    handshake."""
    meta = msg.params.get("_meta")
    if isinstance(meta, dict) and META_PROTOCOL_VERSION in meta:
        return True
    if msg.method == "initialize":
        return False
    if msg.method == "server/discover":
        return True
    return request.headers.get(HEADER_PROTOCOL_VERSION) in MODERN_VERSIONS


def decode_header_value(value: str) -> str | None:
    """A ``Mcp-Name``/``Mcp-Param-*`` value, with the ``=?base64?…?=`` form decoded; ``None`` when invalid."""
    if value.startswith("=?base64?") and value.endswith("?=") and len(value) >= 11:
        try:
            return base64.b64decode(value[9:-2], validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            return None
    return value


# -- the endpoint -----------------------------------------------------------------------------------------

class McpEndpoint:
    """``/mcp``: the methods of ``methods``; sessions signed by ``sessions``; streams fed by ``hub``."""

    def __init__(self, settings: Settings, methods: McpMethods, sessions: SessionCodec, challenges: Challenges,
                 hub: ChangeHub, *, elicitations: Elicitations | None = None) -> None:
        self._methods = methods
        self._elicitations = elicitations
        """URL-mode elicitation of ``kv_request_input`` (:mod:`bridge.mcp.elicitation`); ``None``: off."""
        self._sessions = sessions
        self._challenges = challenges
        self._hub = hub
        self._max_depth = settings.max_json_depth

    async def post(self, request: web.Request) -> web.StreamResponse:
        msg_id: str | int | None = None
        try:
            msg = await read_message(request, max_depth=self._max_depth)
            msg_id = msg.id
            name = msg.params.get("name") if msg.method == "tools/call" else None
            request[MCP_MESSAGE] = RpcPeek(msg.id, msg.method, name if isinstance(name, str) else None)
            if _is_modern(request, msg):
                return await self._modern(request, msg)
            return await self._legacy(request, msg)
        except RpcError as err:
            if err.bridge_code is not None:
                request[ERROR_CODE] = err.bridge_code
            if msg_id is None and err.request_id is None:
                msg_id = (await peek_message(request)).id  # refused before reading (406, 415): a bounded peek
            return rpc_error(msg_id if msg_id is not None else err.request_id, err)
        except BridgeError as err:
            if err.code == "insufficient_scope":  # an operation outside the caller's scopes: the 403 challenge
                scope = err.extra.get("required_scope")
                err.headers["WWW-Authenticate"] = self._challenges.bearer(
                    request, error="insufficient_scope", scope=scope if isinstance(scope, str) else None)
            raise  # HTTP-level answers (403, 429 ...) rendered and audited by the error middleware
        except web.HTTPException:
            raise
        except Exception:
            log.exception("mcp.unhandled_error")
            return rpc_error(msg_id, RpcError(INTERNAL_ERROR, "Internal error; the request id identifies it in the "
                                                              "logs.", http_status=500))

    def _context(self, request: web.Request, *, modern: bool, session: str | None = None) -> McpContext:
        decision = request.get(RATE_DECISION)
        return McpContext(request[IDENTITY], modern, prepaid=1 if decision is not None else 0, decision=decision,
                          session=session, access_logged=True)

    async def _call(self, request: web.Request, ctx: McpContext, method: str, params: dict[str, Any]
                    ) -> dict[str, Any]:
        try:
            return await self._methods.call(ctx, method, params)
        finally:
            if ctx.decision is not None:
                request[RATE_DECISION] = ctx.decision

    async def _modern(self, request: web.Request, msg: Message) -> web.StreamResponse:
        """2026-07-28: stateless; every request carries its version and capabilities in ``_meta``."""
        if msg.method is None:
            raise _bad_request("Invalid Request: clients of protocol 2026-07-28 must not send responses.")
        if not msg.is_request:
            if msg.method == "notifications/cancelled":  # the era's one client notification (stdio's, harmless)
                return web.Response(status=202)
            request[ERROR_CODE] = "method_not_found"  # a removed notification (notifications/initialized ...)
            return rpc_response({"jsonrpc": "2.0", "error": method_not_found(msg.method, modern=True).to_dict()},
                                status=404)  # no id: the schema forbids "id": null
        meta = msg.params.get("_meta")
        version = meta.get(META_PROTOCOL_VERSION) if isinstance(meta, dict) else None
        if not isinstance(meta, dict) or not isinstance(version, str):
            raise _bad_request(f"Invalid params: params._meta must carry '{META_PROTOCOL_VERSION}' and "
                               f"'{META_CLIENT_CAPABILITIES}'.", INVALID_PARAMS)
        header_version = request.headers.get(HEADER_PROTOCOL_VERSION)
        if header_version is None:
            raise _bad_request(f"Header mismatch: the {HEADER_PROTOCOL_VERSION} header is required.",
                               HEADER_MISMATCH, "header_mismatch")
        if header_version != version:
            raise _bad_request(f"Header mismatch: {HEADER_PROTOCOL_VERSION} header '{_short(header_version)}' "
                               f"does not match _meta protocolVersion '{_short(version)}'.", HEADER_MISMATCH,
                               "header_mismatch")
        if version not in MODERN_VERSIONS:
            raise RpcError(UNSUPPORTED_PROTOCOL_VERSION, "Unsupported protocol version",
                           data={"supported": list(SUPPORTED_VERSIONS), "requested": version}, http_status=400,
                           bridge_code="unsupported_protocol_version")
        if not isinstance(meta.get(META_CLIENT_CAPABILITIES), dict):
            raise _bad_request(f"Invalid params: params._meta must carry '{META_CLIENT_CAPABILITIES}' (an object).",
                               INVALID_PARAMS)
        header_method = request.headers.get(HEADER_METHOD)
        if header_method != msg.method:
            what = "is required" if header_method is None else f"'{_short(header_method)}' does not match the body"
            raise _bad_request(f"Header mismatch: the {HEADER_METHOD} header {what} (method "
                               f"'{_short(msg.method)}').", HEADER_MISMATCH, "header_mismatch")
        if not self._methods.serves(msg.method, modern=True):
            raise method_not_found(msg.method, modern=True)
        named = NAMED_METHODS.get(msg.method)
        if named is not None:
            value = msg.params.get(named)
            header_name = request.headers.get(HEADER_NAME)
            decoded = decode_header_value(header_name) if header_name is not None else None
            if isinstance(value, str) and decoded != value:
                what = "is required" if header_name is None else f"does not match params.{named}"
                raise _bad_request(f"Header mismatch: the {HEADER_NAME} header {what}.", HEADER_MISMATCH,
                                   "header_mismatch")
        assert msg.id is not None
        elicitations = self._elicitations
        if msg.method == "server/discover":
            result = discover_result()
        elif msg.method == "subscriptions/listen":
            return await self._listen(request, msg.id, msg.params)
        elif (msg.method == "tools/call" and elicitations is not None
              and elicitations.handles(msg.params.get("name")) and url_mode(meta.get(META_CLIENT_CAPABILITIES))):
            ctx = self._context(request, modern=True)
            if msg.params.get("requestState") is not None:
                self._methods.check_scope(ctx, msg.params.get("name"))  # a retry runs no operation
            answer = await elicitations.modern_call(
                request, msg.id, request[IDENTITY], msg.params,
                lambda: self._call(request, ctx, "tools/call", msg.params), lambda r: finish("tools/call", r))
            if isinstance(answer, web.StreamResponse):
                return answer
            result = answer
        else:
            result = await self._call(request, self._context(request, modern=True), msg.method, msg.params)
        return rpc_result(msg.id, finish(msg.method, result))

    async def _legacy(self, request: web.Request, msg: Message) -> web.StreamResponse:
        """2025-03-26 … 2025-11-25: ``initialize`` first, then the signed session id on every POST."""
        identity = request[IDENTITY]
        if msg.method == "initialize":
            if msg.id is None:
                raise _bad_request("Invalid Request: 'initialize' is a request and needs an 'id'.")
            version, result = initialize_result(msg.params)
            flags = session_flags(version, msg.params.get("capabilities"))
            log.info("mcp.session.started", agent=identity.subject, protocol_version=version, flags=flags)
            return rpc_result(msg.id, result, headers={HEADER_SESSION_ID: self._sessions.issue(
                identity.subject, version, flags=flags)})
        session_id, session = self._session(request)
        elicitations = self._elicitations
        if msg.method is None and msg.body is not None and elicitations is not None:
            await elicitations.on_response(identity, msg.id, msg.body)  # the answer to an elicitation/create
        if not msg.is_request or msg.method is None:
            return web.Response(status=202)  # notifications (initialized, cancelled, ...) and responses
        assert msg.id is not None
        ctx = self._context(request, modern=False, session=session_id)
        result = await self._call(request, ctx, msg.method, msg.params)
        if (msg.method == "tools/call" and elicitations is not None and URL_FLAG in session.flags
                and elicitations.handles(msg.params.get("name"))):
            return await elicitations.legacy_call(request, msg.id, identity, result)
        return rpc_result(msg.id, result)

    def _session(self, request: web.Request) -> tuple[str, McpSession]:
        """The request's valid handshake-era session id (400 without one, 404 for one that is not valid for the
        caller), after the ``MCP-Protocol-Version`` check."""
        session_id = request.headers.get(HEADER_SESSION_ID)
        if not session_id:
            raise _bad_request(f"Bad Request: the {HEADER_SESSION_ID} header is required; send 'initialize' first "
                               "(or use protocol 2026-07-28 with per-request _meta).")
        session = self._sessions.verify(session_id, request[IDENTITY].subject)
        if session is None:
            raise RpcError(INVALID_REQUEST, "Session not found: it expired, was issued to another identity, or is "
                                            "not one of ours. Send 'initialize' again.", http_status=404,
                           bridge_code="session_not_found")
        header_version = request.headers.get(HEADER_PROTOCOL_VERSION, DEFAULT_HEADERLESS_VERSION)
        if header_version not in HANDSHAKE_VERSIONS:
            raise RpcError(INVALID_REQUEST, f"Bad Request: unsupported {HEADER_PROTOCOL_VERSION} "
                                            f"'{_short(header_version)}'.",
                           data={"supported": list(SUPPORTED_VERSIONS), "requested": header_version},
                           http_status=400, bridge_code="unsupported_protocol_version")
        return session_id, session

    # -- notification streams --------------------------------------------------------------------------------

    async def get(self, request: web.Request) -> web.StreamResponse:
        """``GET /mcp``: a handshake-era session's stream of ``notifications/resources/updated`` for the URIs it
        subscribed to (on any replica). 2026-07-28 has no GET stream (405)."""
        try:
            if request.headers.get(HEADER_PROTOCOL_VERSION) in MODERN_VERSIONS:
                raise _get_not_allowed("protocol 2026-07-28 has no GET stream; use subscriptions/listen")
            if not request.headers.get(HEADER_SESSION_ID):
                raise _get_not_allowed(f"a GET stream belongs to a session; send {HEADER_SESSION_ID}")
            accept = request.headers.get("Accept", "")
            if not any(media in ("text/event-stream", "text/*", "*/*") and quality > 0
                       for media, quality in _media_ranges(accept).items()):
                raise RpcError(INVALID_REQUEST, "Not Acceptable: a GET stream needs 'Accept: text/event-stream'.",
                               http_status=406)
            session_id, _ = self._session(request)
        except RpcError as err:
            if err.bridge_code is not None:
                request[ERROR_CODE] = err.bridge_code
            return rpc_error(None, err)
        identity = request[IDENTITY]
        listener = SessionListener(identity, session_key(session_id), self._hub.store, os.urandom(8).hex())
        return await self._stream(request, listener, opened=self._hub.open_session_stream, first=[],
                                  frame=_updated_frame(None), closing=None)

    async def _listen(self, request: web.Request, listen_id: str | int, params: dict[str, Any]
                      ) -> web.StreamResponse:
        """``subscriptions/listen``: the acknowledgment at once, then the updates of the honoured URIs."""
        uris, honored = self._methods.listen_filter(params)
        identity = request[IDENTITY]
        listener = ListenListener(identity, await self._hub.states(identity, uris))
        meta = {META_SUBSCRIPTION_ID: listen_id}
        ack = {"jsonrpc": "2.0", "method": "notifications/subscriptions/acknowledged",
               "params": {"_meta": meta, "notifications": honored}}
        closing = {"jsonrpc": "2.0", "id": listen_id, "result": {"resultType": "complete", "_meta": meta}}
        return await self._stream(request, listener, opened=None, first=[ack], frame=_updated_frame(listen_id),
                                  closing=closing)

    async def _stream(self, request: web.Request, listener: Listener, *,
                      opened: Callable[[SessionListener], Awaitable[None]] | None,
                      first: list[dict[str, Any]], frame: Callable[[str], dict[str, Any]],
                      closing: dict[str, Any] | None) -> web.StreamResponse:
        """Serve ``listener`` as an SSE stream until the client leaves, the stream is superseded or falls behind,
        or the server shuts down (then ``closing`` is sent, when given)."""
        hub = self._hub
        if hub.closing:
            raise BridgeError("The bridge is shutting down; reconnect to another replica.", status=503,
                              code="shutting_down", headers={"Retry-After": "1"})
        if hub.count(listener.agent) >= MAX_STREAMS_PER_AGENT:
            raise RateLimitedError(f"This agent has {MAX_STREAMS_PER_AGENT} notification streams open on this "
                                   "replica; close one first.", code="too_many_streams",
                                   headers={"Retry-After": "5"})
        resp = web.StreamResponse(status=200, headers=SSE_HEADERS)
        decision = request.get(RATE_DECISION)
        if decision is not None:
            resp.headers.update(decision.headers())
        if REQUEST_ID in request:  # the outer middlewares' headers would come too late for a stream
            resp.headers["X-Request-Id"] = request[REQUEST_ID]
        await resp.prepare(request)
        slot = request.get(INFLIGHT_SLOT)
        if slot is not None:
            slot.release()  # a stream waits for changes, not on Vault: it holds no in-flight slot
        if opened is not None and isinstance(listener, SessionListener):
            await opened(listener)
        else:
            hub.attach(listener)
        log.info("mcp.stream.opened", agent=listener.agent, kind=type(listener).__name__)
        try:
            await resp.write(b": stream open\n\n")
            for message in first:
                await resp.write(_sse(message))
            last = time.monotonic()
            while True:
                try:
                    uri = await asyncio.wait_for(listener.queue.get(), min(1.0, hub.keepalive))
                except TimeoutError:
                    transport = request.transport
                    if transport is None or transport.is_closing():
                        break  # the client went away
                    if time.monotonic() - last >= hub.keepalive:
                        await resp.write(b":\n\n")
                        last = time.monotonic()
                    continue
                if uri is None:
                    if hub.closing and closing is not None:
                        await resp.write(_sse(closing))
                    break
                await resp.write(_sse(frame(uri)))
                last = time.monotonic()
        except ConnectionError:
            pass  # the client went away mid-write
        finally:
            hub.detach(listener)
            log.info("mcp.stream.closed", agent=listener.agent, shutdown=hub.closing)
        with contextlib.suppress(ConnectionError):
            await resp.write_eof()
        return resp


def _get_not_allowed(reason: str) -> RpcError:
    return RpcError(HTTP_ERROR_BASE - 405, f"Method GET is not allowed here: {reason}.", http_status=405,
                    headers={"Allow": "GET, POST"}, bridge_code="method_not_allowed")


def _sse(message: dict[str, Any]) -> bytes:
    return b"event: message\ndata: " + json.dumps(message, separators=(",", ":")).encode() + b"\n\n"


def _updated_frame(listen_id: str | int | None) -> Callable[[str], dict[str, Any]]:
    def frame(uri: str) -> dict[str, Any]:
        params: dict[str, Any] = {"uri": uri}
        if listen_id is not None:
            params = {"_meta": {META_SUBSCRIPTION_ID: listen_id}, "uri": uri}
        return {"jsonrpc": "2.0", "method": "notifications/resources/updated", "params": params}

    return frame


def session_codec(settings: Settings) -> SessionCodec:
    """The session-id codec, keyed by ``MCP_SESSION_SECRET`` (a random per-process key without it)."""
    secret = settings.mcp_session_secret.get_secret_value() if settings.mcp_session_secret else None
    if secret is None:
        log.info("mcp.session.ephemeral_key", hint="set MCP_SESSION_SECRET so every replica accepts the ids")
    if settings.auth_jwt_enabled and settings.jwt_issuer and not settings.jwt_audience:
        log.warning("mcp.jwt.audience_unset",
                    hint="set JWT_AUDIENCE to this server's MCP resource URL so tokens for other services fail")
    return SessionCodec.from_secret(secret, settings.mcp_session_ttl)


def setup_mcp_routes(app: web.Application, endpoint: McpEndpoint) -> frozenset[str]:
    """``POST /mcp`` and ``GET /mcp`` (DELETE falls to the router's 405). No public routes."""
    app.router.add_post(MCP_PATH, endpoint.post, name="mcp")
    app.router.add_get(MCP_PATH, endpoint.get, name="mcp_get", allow_head=False)
    return frozenset()
