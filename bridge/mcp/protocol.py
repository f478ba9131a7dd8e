"""JSON-RPC 2.0 and MCP protocol constants, the one JSON-RPC error type, and response envelopes.

Error codes (``RpcError.code``), by where they come from:

- JSON-RPC 2.0: -32700 parse error, -32600 invalid request, -32601 method not found, -32602 invalid params,
  -32603 internal error.
- MCP 2026-07-28 (``basic/index.mdx`` §Error Codes): -32020 header mismatch, -32022 unsupported protocol
  version (``data.supported``/``data.requested``). MCP 2025-11-25: -32002 resource not found (``data.uri``; the
  2026-07-28 revision answers -32602 with ``data.uri`` instead).
- Ours, outside the JSON-RPC reserved range as the spec asks: ``-31000 - <HTTP status>`` for a refusal that
  travels with a non-2xx HTTP status and has no JSON-RPC meaning of its own: -31401 unauthenticated, -31403
  forbidden (a bad ``Origin``, a tool outside the caller's scopes), -31404, -31405, -31413, -31429 rate limited,
  -31503 unavailable, -31504 ... (a 400 is -32600, a 500 -32603).

Every error that travels with a non-2xx HTTP status carries ``data.code``, the bridge's error code (the REST
API's), and ``data.retry_after`` (seconds) when the answer has a ``Retry-After``: :func:`rpc_error_for`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from dataclasses import dataclass
from typing import Any

from aiohttp import web

import bridge
from bridge.errors import BridgeError, code_for_status
from bridge.jsonbody import JsonBodyError, JsonLimitError, dumps, load_json

PARSE_ERROR = -32700
INVALID_REQUEST = -32600
METHOD_NOT_FOUND = -32601
INVALID_PARAMS = -32602
INTERNAL_ERROR = -32603
RESOURCE_NOT_FOUND = -32002
"""Handshake era (2025-11-25 resources §Error Handling); 2026-07-28 answers -32602 instead."""
HEADER_MISMATCH = -32020
UNSUPPORTED_PROTOCOL_VERSION = -32022
HTTP_ERROR_BASE = -31000
"""Ours: ``HTTP_ERROR_BASE - status`` (-31401, -31429 ...) for an HTTP-level refusal on ``/mcp``."""
PEEK_LIMIT = 64 * 1024
"""The most body bytes read to find the id of a request refused before the handler read it."""
PEEK_SECONDS = 1.0

MODERN_VERSIONS: tuple[str, ...] = ("2026-07-28",)
"""Stateless revisions: per-request ``_meta``, ``server/discover``, no sessions."""
HANDSHAKE_VERSIONS: tuple[str, ...] = ("2025-11-25", "2025-06-18", "2025-03-26")
"""Revisions that open with ``initialize``; the first is the one we offer."""
SUPPORTED_VERSIONS: tuple[str, ...] = MODERN_VERSIONS + HANDSHAKE_VERSIONS
LATEST_HANDSHAKE = HANDSHAKE_VERSIONS[0]
DEFAULT_HEADERLESS_VERSION = "2025-03-26"
"""A handshake-era request without ``MCP-Protocol-Version`` is taken as this revision (transports §Protocol
Version Header)."""

META_PROTOCOL_VERSION = "io.modelcontextprotocol/protocolVersion"
META_CLIENT_CAPABILITIES = "io.modelcontextprotocol/clientCapabilities"
META_SERVER_INFO = "io.modelcontextprotocol/serverInfo"

HEADER_PROTOCOL_VERSION = "MCP-Protocol-Version"
HEADER_SESSION_ID = "Mcp-Session-Id"
HEADER_METHOD = "Mcp-Method"
HEADER_NAME = "Mcp-Name"

SERVER_INFO: dict[str, str] = {"name": "vault-mcp-bridge", "title": "Vault MCP Bridge", "version": bridge.__version__}
INSTRUCTIONS = (
    "Secrets of the calling agent in HashiCorp Vault / OpenBao. Paths are relative to the agent's own "
    "namespace (you never see other agents' secrets). kv_* tools manage versioned key/value secrets; "
    "transit_* tools encrypt and decrypt with keys that never leave Vault; db_creds, pki_issue, pki_sign, "
    "ssh_sign make credentials on demand and lease_* manage them; whoami shows your identity and scopes. "
    "Without the 'read' scope you get references and fingerprints instead of values (kv_read: "
    "secret://<path>#<field>, db_creds: lease://…#password): use them as {{reference}} placeholders in "
    "http_request (URL, headers, body) or as transit_* *_ref arguments, so values never enter your context. To "
    "get a value from a human, call kv_request_input; never ask for secret values in the chat. A failed tool "
    "call returns isError with structuredContent.error.code (not_found, cas_mismatch, invalid_path, "
    "invalid_request, forbidden, vault_unavailable, ...)."
)


class RpcError(Exception):
    """A JSON-RPC error response, with the HTTP status it travels with.

    ``bridge_code`` is the bridge's error code for ``data.code`` (default: the one of ``http_status``); it is
    sent when the HTTP status is not 2xx, so that a client that only shows the HTTP status still has it."""

    def __init__(self, code: int, message: str, *, data: Any = None, http_status: int = 200,
                 headers: dict[str, str] | None = None, bridge_code: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.data = data
        self.http_status = http_status
        self.headers = headers or {}
        self.bridge_code = bridge_code or (code_for_status(http_status) if http_status >= 400 else None)
        self.request_id: str | int | None = None
        """The request's id when it was read before the error (else the response carries ``id: null``)."""

    def to_dict(self) -> dict[str, Any]:
        error: dict[str, Any] = {"code": self.code, "message": self.message}
        data = self.data
        if self.http_status >= 400:
            data = {"code": self.bridge_code, **(data if isinstance(data, dict) else {})}
            retry = self.headers.get("Retry-After", "")
            if retry.isdigit():
                data["retry_after"] = int(retry)
        if data is not None:
            error["data"] = data
        return error


def rpc_code_for_status(status: int) -> int:
    """The JSON-RPC error code of an HTTP-level refusal: -32600 for a 400, -32603 for a 500, else ours."""
    if status == 400:
        return INVALID_REQUEST
    if status == 500:
        return INTERNAL_ERROR
    return HTTP_ERROR_BASE - status


def rpc_error_for(err: BridgeError) -> RpcError:
    """A bridge error (raised by a middleware or a handler) as the JSON-RPC error of ``/mcp``: same HTTP
    status and headers, the bridge's message, ``data.code`` and the error's extra fields."""
    return RpcError(rpc_code_for_status(err.status), err.message, data=dict(err.extra), http_status=err.status,
                    headers=err.headers, bridge_code=err.code)


@dataclass(frozen=True, slots=True)
class RpcPeek:
    """What is known of a ``/mcp`` request's JSON-RPC message: its id, method and, for ``tools/call``, the
    tool's name (all ``None`` when the body was not, or could not be, read)."""

    id: str | int | None = None
    method: str | None = None
    tool: str | None = None


def peek_of(body: Any) -> RpcPeek:
    if not isinstance(body, dict):
        return RpcPeek()
    msg_id = body.get("id")
    if isinstance(msg_id, bool) or not isinstance(msg_id, str | int):
        msg_id = None
    method = body.get("method") if isinstance(body.get("method"), str) else None
    params = body.get("params")
    tool = params.get("name") if method == "tools/call" and isinstance(params, dict) else None
    return RpcPeek(msg_id, method, tool if isinstance(tool, str) else None)


async def peek_message(request: web.Request) -> RpcPeek:
    """The id (method, tool) of a request refused before its handler read the body: read only a JSON body
    whose ``Content-Length`` is at most :data:`PEEK_LIMIT`, for at most :data:`PEEK_SECONDS`; anything else
    is an unknown id (``null``). The body is read once: aiohttp keeps it for a later ``read()``."""
    length = request.content_length
    if request.method != "POST" or length is None or length > PEEK_LIMIT:
        return RpcPeek()
    raw = b""
    with contextlib.suppress(Exception):  # a slow, broken or oversized body: the id stays unknown
        async with asyncio.timeout(PEEK_SECONDS):
            raw = await request.read()
    try:
        return peek_of(json.loads(raw)) if raw else RpcPeek()
    except ValueError:
        return RpcPeek()


def rpc_response(payload: dict[str, Any], *, status: int = 200, headers: dict[str, str] | None = None
                 ) -> web.Response:
    resp = web.Response(status=status, body=dumps(payload), content_type="application/json", charset="utf-8")
    for name, value in (headers or {}).items():
        resp.headers[name] = value
    return resp


def rpc_result(request_id: str | int, result: dict[str, Any], *, headers: dict[str, str] | None = None
               ) -> web.Response:
    return rpc_response({"jsonrpc": "2.0", "id": request_id, "result": result}, headers=headers)


def rpc_error(request_id: str | int | None, err: RpcError) -> web.Response:
    """The error response; ``id`` is ``null`` when the request's id could not be read (JSON-RPC 2.0 §5)."""
    return rpc_response({"jsonrpc": "2.0", "id": request_id, "error": err.to_dict()},
                        status=err.http_status, headers=err.headers)


@dataclass(frozen=True, slots=True)
class Message:
    """One JSON-RPC message: a request (``id`` set), a notification, or a response (``method`` is None)."""

    id: str | int | None
    method: str | None
    params: dict[str, Any]
    is_request: bool
    body: dict[str, Any] | None = None
    """A response's whole body (its ``result`` or ``error``): the client's answer to a request of ours."""


def _invalid(message: str, code: int = INVALID_REQUEST, bridge_code: str | None = None) -> RpcError:
    return RpcError(code, message, http_status=400, bridge_code=bridge_code)


def parse_message(raw: bytes, *, max_depth: int) -> Message:
    """One JSON-RPC 2.0 message (a POST body of ``/mcp``, a line of stdio): -32700 when it is not JSON, -32600
    for a batch or anything that is not a single JSON-RPC 2.0 message, -32602 when ``params`` is not an object."""
    try:
        body = load_json(raw, max_depth=max_depth)
    except JsonLimitError as exc:
        raise _invalid(f"Invalid Request: {exc}") from None
    except JsonBodyError:
        raise _invalid("Parse error: the body is not valid JSON.", PARSE_ERROR, "parse_error") from None
    if isinstance(body, list):
        raise _invalid("Batches are not supported: send one JSON-RPC message per POST.")
    if not isinstance(body, dict) or body.get("jsonrpc") != "2.0":
        raise _invalid("Invalid Request: expected a JSON-RPC 2.0 object with \"jsonrpc\": \"2.0\".")
    has_id = "id" in body
    msg_id = body.get("id")
    if has_id and (isinstance(msg_id, bool) or not isinstance(msg_id, str | int)):
        raise _invalid("Invalid Request: 'id' must be a string or an integer.")
    method = body.get("method")
    params = body.get("params", {})
    if params is None:
        params = {}
    if method is None:
        if has_id and (("result" in body) != ("error" in body)):
            return Message(msg_id, None, {}, is_request=False, body=body)
        raise _invalid("Invalid Request: a message needs 'method' (request or notification) or "
                       "'id' with 'result' or 'error' (response).")
    if not isinstance(method, str) or not method:
        raise _invalid("Invalid Request: 'method' must be a non-empty string.")
    if not isinstance(params, dict):
        err = _invalid("Invalid params: 'params' must be an object.", INVALID_PARAMS)
        err.request_id = msg_id if has_id else None
        raise err
    return Message(msg_id if has_id else None, method, params, is_request=has_id)
