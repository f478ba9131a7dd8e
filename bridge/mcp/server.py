"""``POST /mcp``: our own JSON-RPC 2.0 handler for MCP over Streamable HTTP, both eras on one endpoint.

Before this handler runs, the middlewares have answered a bad ``Origin`` (403), a missing or bad credential
(401) and an exhausted rate limit (429): each keeps its HTTP status and headers and carries a JSON-RPC error
body (``bridge.middlewares.render_error``), as does every non-2xx answer of this handler (``data.code`` is the
bridge's error code). Then, in order:

1. transport: ``Accept`` must list ``application/json`` and ``text/event-stream`` (406), the body must be JSON
   (415 / -32700), one message, not a batch (-32600);
2. era: an ``initialize`` selects the handshake era (2025-11-25, 2025-06-18, 2025-03-26: signed
   ``Mcp-Session-Id``, ``MCP-Protocol-Version`` header); per-request ``_meta`` (or ``server/discover``, or an
   ``MCP-Protocol-Version`` of the stateless era) selects 2026-07-28 (header/body checks -32020, version
   -32022, ``resultType``, ``ttlMs``/``cacheScope``);
3. method: ``tools/list`` (paginated, filtered by the caller's scopes) and ``tools/call`` (a tool outside the
   caller's scopes is HTTP 403 ``insufficient_scope``, rendered and audited as every refusal; a failing tool
   is an ``isError`` result carrying the REST error code).

``GET``/``DELETE /mcp`` answer 405: we push no server-initiated stream and sessions are stateless.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import structlog
from aiohttp import web

from bridge.auth.identity import Identity
from bridge.config import Settings
from bridge.errors import BridgeError, ForbiddenError
from bridge.jsonbody import JsonBodyError, JsonLimitError, load_json
from bridge.mcp.elicitation import URL_FLAG, Elicitations, session_flags, url_mode
from bridge.mcp.metadata import MCP_PATH, Challenges
from bridge.mcp.protocol import (
    DEFAULT_HEADERLESS_VERSION,
    HANDSHAKE_VERSIONS,
    HEADER_METHOD,
    HEADER_MISMATCH,
    HEADER_NAME,
    HEADER_PROTOCOL_VERSION,
    HEADER_SESSION_ID,
    INSTRUCTIONS,
    INTERNAL_ERROR,
    INVALID_PARAMS,
    INVALID_REQUEST,
    LATEST_HANDSHAKE,
    META_CLIENT_CAPABILITIES,
    META_PROTOCOL_VERSION,
    META_SERVER_INFO,
    METHOD_NOT_FOUND,
    MODERN_VERSIONS,
    PARSE_ERROR,
    SERVER_INFO,
    SUPPORTED_VERSIONS,
    UNSUPPORTED_PROTOCOL_VERSION,
    RpcError,
    RpcPeek,
    peek_message,
    rpc_error,
    rpc_result,
)
from bridge.mcp.session import SessionCodec
from bridge.mcp.tools import McpTools, result_content
from bridge.operations import Call, Executor
from bridge.routing import ERROR_CODE, IDENTITY, MCP_MESSAGE, RATE_DECISION

log = structlog.get_logger("bridge.mcp")

TOOLS_LIST_TTL_MS = 60_000
"""``tools/list`` may be cached for a minute; it is ``private`` because it depends on the caller's scopes."""
DISCOVER_TTL_MS = 3_600_000
SERVER_CAPABILITIES: dict[str, Any] = {"tools": {"listChanged": False}}
MODERN_METHODS = frozenset({"server/discover", "tools/list", "tools/call"})
MAX_ECHO = 80


@dataclass(frozen=True, slots=True)
class Message:
    """One JSON-RPC message: a request (``id`` set), a notification, or a response (``method`` is None)."""

    id: str | int | None
    method: str | None
    params: dict[str, Any]
    is_request: bool
    body: dict[str, Any] | None = None
    """A response's whole body (its ``result`` or ``error``): the client's answer to a request of ours."""


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
    raw = await request.read()
    try:
        body = load_json(raw, max_depth=max_depth)
    except JsonLimitError as exc:
        raise _bad_request(f"Invalid Request: {exc}") from None
    except JsonBodyError:
        raise _bad_request("Parse error: the body is not valid JSON.", PARSE_ERROR, "parse_error") from None
    if isinstance(body, list):
        raise _bad_request("Batches are not supported: send one JSON-RPC message per POST.")
    if not isinstance(body, dict) or body.get("jsonrpc") != "2.0":
        raise _bad_request("Invalid Request: expected a JSON-RPC 2.0 object with \"jsonrpc\": \"2.0\".")
    has_id = "id" in body
    msg_id = body.get("id")
    if has_id and (isinstance(msg_id, bool) or not isinstance(msg_id, str | int)):
        raise _bad_request("Invalid Request: 'id' must be a string or an integer.")
    method = body.get("method")
    params = body.get("params", {})
    if params is None:
        params = {}
    if method is None:
        if has_id and (("result" in body) != ("error" in body)):
            return Message(msg_id, None, {}, is_request=False, body=body)
        raise _bad_request("Invalid Request: a message needs 'method' (request or notification) or "
                           "'id' with 'result' or 'error' (response).")
    if not isinstance(method, str) or not method:
        raise _bad_request("Invalid Request: 'method' must be a non-empty string.")
    if not isinstance(params, dict):
        err = _bad_request("Invalid params: 'params' must be an object.", INVALID_PARAMS)
        err.request_id = msg_id if has_id else None
        raise err
    return Message(msg_id if has_id else None, method, params, is_request=has_id)


def _is_modern(request: web.Request, msg: Message) -> bool:
    if msg.method == "initialize":
        return False
    meta = msg.params.get("_meta")
    if isinstance(meta, dict) and META_PROTOCOL_VERSION in meta:
        return True
    if msg.method in ("server/discover",):
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
    """``POST /mcp``: the tools of ``tools``, carried out by ``executor``; sessions signed by ``sessions``."""

    def __init__(self, settings: Settings, tools: McpTools, executor: Executor, sessions: SessionCodec,
                 challenges: Challenges, *, elicitations: Elicitations | None = None) -> None:
        self._elicitations = elicitations
        """URL-mode elicitation of ``kv_request_input`` (:mod:`bridge.mcp.elicitation`); ``None``: off."""
        self._tools = tools
        self._executor = executor
        self._sessions = sessions
        self._challenges = challenges
        self._max_depth = settings.max_json_depth
        self._page_size = settings.mcp_page_size

    async def post(self, request: web.Request) -> web.StreamResponse:
        msg_id: str | int | None = None
        try:
            msg = await read_message(request, max_depth=self._max_depth)
            msg_id = msg.id
            tool = msg.params.get("name") if msg.method == "tools/call" else None
            request[MCP_MESSAGE] = RpcPeek(msg.id, msg.method, tool if isinstance(tool, str) else None)
            if _is_modern(request, msg):
                return await self._modern(request, msg)
            return await self._legacy(request, msg)
        except RpcError as err:
            if err.bridge_code is not None:
                request[ERROR_CODE] = err.bridge_code
            if msg_id is None and err.request_id is None:
                msg_id = (await peek_message(request)).id  # refused before reading (406, 415): a bounded peek
            return rpc_error(msg_id if msg_id is not None else err.request_id, err)
        except (web.HTTPException, BridgeError):
            raise  # HTTP-level answers (413, 403 insufficient_scope, 429 ...) rendered by the error middleware
        except Exception:
            log.exception("mcp.unhandled_error")
            return rpc_error(msg_id, RpcError(INTERNAL_ERROR, "Internal error; the request id identifies it in the "
                                                              "logs.", http_status=500))

    async def _modern(self, request: web.Request, msg: Message) -> web.StreamResponse:
        """2026-07-28: stateless; every request carries its version and capabilities in ``_meta``."""
        if msg.method is None:
            raise _bad_request("Invalid Request: clients of protocol 2026-07-28 must not send responses.")
        if not msg.is_request:
            return web.Response(status=202)  # 2026-07-28 defines no client notifications over HTTP; accept them
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
        if msg.method not in MODERN_METHODS:
            raise RpcError(METHOD_NOT_FOUND, f"Method not found: '{_short(msg.method)}'.", http_status=404,
                           bridge_code="method_not_found")
        assert msg.id is not None
        if msg.method == "server/discover":
            result: dict[str, Any] = {
                "supportedVersions": list(SUPPORTED_VERSIONS),
                "capabilities": SERVER_CAPABILITIES,
                "instructions": INSTRUCTIONS,
                "ttlMs": DISCOVER_TTL_MS,
                "cacheScope": "public",
            }
        elif msg.method == "tools/list":
            result = await self._tools_list(request, msg.params)
            result.update({"ttlMs": TOOLS_LIST_TTL_MS, "cacheScope": "private"})
        else:
            name = msg.params.get("name")
            header_name = request.headers.get(HEADER_NAME)
            decoded = decode_header_value(header_name) if header_name is not None else None
            if isinstance(name, str) and decoded != name:
                what = "is required" if header_name is None else "does not match params.name"
                raise _bad_request(f"Header mismatch: the {HEADER_NAME} header {what}.", HEADER_MISMATCH,
                                   "header_mismatch")
            elicitations = self._elicitations
            if elicitations is not None and elicitations.handles(name) and url_mode(
                    meta.get(META_CLIENT_CAPABILITIES)):
                if msg.params.get("requestState") is not None:
                    await self._check_scope(request, name)  # a retry runs no operation: its scope is checked here
                answer = await elicitations.modern_call(
                    request, msg.id, request[IDENTITY], msg.params, lambda: self._tools_call(request, msg.params),
                    _finish_modern)
                if isinstance(answer, web.StreamResponse):
                    return answer
                result = answer
            else:
                result = await self._tools_call(request, msg.params)
        return rpc_result(msg.id, _finish_modern(result))

    async def _legacy(self, request: web.Request, msg: Message) -> web.StreamResponse:
        """2025-03-26 … 2025-11-25: ``initialize`` first, then the signed session id on every POST."""
        identity = request[IDENTITY]
        if msg.method == "initialize":
            if msg.id is None:
                raise _bad_request("Invalid Request: 'initialize' is a request and needs an 'id'.")
            return _initialize(msg, identity, self._sessions)
        session_id = request.headers.get(HEADER_SESSION_ID)
        if not session_id:
            raise _bad_request(f"Bad Request: the {HEADER_SESSION_ID} header is required; send 'initialize' first "
                               "(or use protocol 2026-07-28 with per-request _meta).")
        session = self._sessions.verify(session_id, identity.subject)
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
        if msg.method is None and msg.body is not None and self._elicitations is not None:
            await self._elicitations.on_response(identity, msg.id, msg.body)  # the answer to an elicitation
        if not msg.is_request or msg.method is None:
            return web.Response(status=202)  # notifications (initialized, cancelled, ...) and responses
        assert msg.id is not None
        if msg.method == "ping":
            return rpc_result(msg.id, {})
        if msg.method == "tools/list":
            return rpc_result(msg.id, await self._tools_list(request, msg.params))
        if msg.method == "tools/call":
            result = await self._tools_call(request, msg.params)
            if (self._elicitations is not None and URL_FLAG in session.flags
                    and self._elicitations.handles(msg.params.get("name"))):
                return await self._elicitations.legacy_call(request, msg.id, identity, result)
            return rpc_result(msg.id, result)
        raise RpcError(METHOD_NOT_FOUND, f"Method not found: '{_short(msg.method)}'.")

    async def _check_scope(self, request: web.Request, name: Any) -> None:
        """The scope check of a tool call that runs no operation (an elicitation's retry): 403
        ``insufficient_scope``, as the executor's."""
        identity = request[IDENTITY]
        op = self._tools.get(name) if isinstance(name, str) else None
        if op is not None and not await self._executor.allows(op, identity):
            have = ", ".join(sorted(identity.scopes)) or "none"
            err = ForbiddenError(f"The tool '{op.name}' needs the '{op.scope}' scope; this identity has: {have}.",
                                 code="insufficient_scope", extra={"required_scope": op.scope})
            err.headers["WWW-Authenticate"] = self._challenges.bearer(request, error="insufficient_scope",
                                                                      scope=op.scope)
            raise err

    async def _tools_list(self, request: web.Request, params: dict[str, Any]) -> dict[str, Any]:
        visible = await self._tools.visible(request[IDENTITY])
        start = decode_cursor(params.get("cursor"))
        size = self._page_size
        page = visible[start:start + size]
        result: dict[str, Any] = {"tools": [self._tools.definition(op) for op in page]}
        if start + size < len(visible):
            result["nextCursor"] = encode_cursor(start + size)
        return result

    async def _tools_call(self, request: web.Request, params: dict[str, Any]) -> dict[str, Any]:
        """One tool call through the executor. A tool outside the caller's scopes is HTTP 403
        ``insufficient_scope`` and an exhausted rate limit HTTP 429 (both JSON-RPC errors); any other failure is
        the tool's own ``isError`` result."""
        identity = request[IDENTITY]
        name = params.get("name")
        if not isinstance(name, str):
            raise RpcError(INVALID_PARAMS, "Invalid params: 'name' (the tool name, a string) is required.")
        op = self._tools.get(name)
        if op is None:
            raise RpcError(INVALID_PARAMS, f"Unknown tool: '{_short(name)}'. Call tools/list for the tools "
                                           "available.")
        arguments = params.get("arguments")
        decision = request.get(RATE_DECISION)
        call = Call(identity, "mcp", prepaid=1 if decision is not None else 0, decision=decision)
        try:
            out = await self._executor.execute(op, call, _arguments(arguments))
        except BridgeError as err:
            if err.code == "insufficient_scope":
                log.info("mcp.tool.forbidden", agent=identity.subject, tool=name, required_scope=op.scope)
                err.headers["WWW-Authenticate"] = self._challenges.bearer(request, error="insufficient_scope",
                                                                          scope=op.scope)
                raise  # HTTP 403, JSON-RPC -31403 (bridge.middlewares), audited as denied
            if err.code == "rate_limited":
                raise  # HTTP 429 with its headers, as the middleware's refusals
            log.info("mcp.tool.called", agent=identity.subject, tool=name, is_error=True, code=err.code)
            return result_content(err.to_dict(), is_error=True)
        finally:
            if call.decision is not None:
                request[RATE_DECISION] = call.decision
        log.info("mcp.tool.called", agent=identity.subject, tool=name, is_error=False)
        # no null fields: optional fields that do not apply are left out, as in REST (the outputSchema says so)
        return result_content(out.model_dump(mode="json", exclude_none=True), is_error=False)


def _arguments(arguments: Any) -> dict[str, Any] | Callable[[], Awaitable[dict[str, Any]]]:
    """A tool call's ``arguments`` for the executor; not an object is a JSON-RPC error (-32602), raised only
    once the executor has checked the scope."""
    if arguments is None:
        return {}
    if isinstance(arguments, dict):
        return arguments

    async def invalid() -> dict[str, Any]:
        raise RpcError(INVALID_PARAMS, "Invalid params: 'arguments' must be an object.")

    return invalid


def _finish_modern(result: dict[str, Any]) -> dict[str, Any]:
    """A 2026-07-28 result: ``resultType`` (``complete`` unless it says ``input_required``) and the server's info."""
    result.setdefault("resultType", "complete")
    result["_meta"] = {META_SERVER_INFO: SERVER_INFO}
    return result


def _initialize(msg: Message, identity: Identity, codec: SessionCodec) -> web.Response:
    requested = msg.params.get("protocolVersion")
    if not isinstance(requested, str):
        raise RpcError(INVALID_PARAMS, "Invalid params: 'protocolVersion' (a string) is required.")
    version = requested if requested in HANDSHAKE_VERSIONS else LATEST_HANDSHAKE
    result = {
        "protocolVersion": version,
        "capabilities": SERVER_CAPABILITIES,
        "serverInfo": SERVER_INFO,
        "instructions": INSTRUCTIONS,
    }
    flags = session_flags(version, msg.params.get("capabilities"))
    log.info("mcp.session.started", agent=identity.subject, protocol_version=version, flags=flags)
    assert msg.id is not None
    return rpc_result(msg.id, result, headers={HEADER_SESSION_ID: codec.issue(identity.subject, version,
                                                                               flags=flags)})


# -- methods ------------------------------------------------------------------------------------------------

def encode_cursor(offset: int) -> str:
    return base64.urlsafe_b64encode(json.dumps({"o": offset}).encode()).decode()


def decode_cursor(cursor: Any) -> int:
    if cursor is None:
        return 0
    try:
        value = json.loads(base64.urlsafe_b64decode(str(cursor).encode()))["o"]
    except (ValueError, KeyError, TypeError, binascii.Error):
        value = None
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise RpcError(INVALID_PARAMS, "Invalid params: 'cursor' is not a cursor this server issued.")
    return value


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
    """``POST /mcp`` (GET/DELETE fall to the router's 405). No public routes."""
    app.router.add_post(MCP_PATH, endpoint.post, name="mcp")
    return frozenset()
