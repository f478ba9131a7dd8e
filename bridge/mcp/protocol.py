"""JSON-RPC 2.0 and MCP protocol constants, the one JSON-RPC error type, and response envelopes.

Error codes (``RpcError.code``), by where they come from:

- JSON-RPC 2.0: -32700 parse error, -32600 invalid request, -32601 method not found, -32602 invalid params,
  -32603 internal error.
- MCP 2026-07-28 (``basic/index.mdx`` §Error Codes): -32020 header mismatch, -32022 unsupported protocol
  version (``data.supported``/``data.requested``).
- Ours, outside the JSON-RPC reserved range as the spec asks: -31403 forbidden (a bad ``Origin``, or a tool
  outside the caller's scopes; always sent with HTTP 403).
"""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web

import bridge

PARSE_ERROR = -32700
INVALID_REQUEST = -32600
METHOD_NOT_FOUND = -32601
INVALID_PARAMS = -32602
INTERNAL_ERROR = -32603
HEADER_MISMATCH = -32020
UNSUPPORTED_PROTOCOL_VERSION = -32022
FORBIDDEN = -31403

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
    "transit_* tools encrypt and decrypt with keys that never leave Vault; whoami shows your identity and "
    "scopes. A failed tool call returns isError with structuredContent.error.code (not_found, cas_mismatch, "
    "invalid_path, invalid_request, forbidden, vault_unavailable, ...)."
)


class RpcError(Exception):
    """A JSON-RPC error response, with the HTTP status it travels with."""

    def __init__(self, code: int, message: str, *, data: Any = None, http_status: int = 200,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.data = data
        self.http_status = http_status
        self.headers = headers or {}
        self.request_id: str | int | None = None
        """The request's id when it was read before the error (else the response carries ``id: null``)."""

    def to_dict(self) -> dict[str, Any]:
        error: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.data is not None:
            error["data"] = self.data
        return error


def rpc_response(payload: dict[str, Any], *, status: int = 200, headers: dict[str, str] | None = None
                 ) -> web.Response:
    resp = web.Response(status=status, text=json.dumps(payload, separators=(",", ":")),
                        content_type="application/json")
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
