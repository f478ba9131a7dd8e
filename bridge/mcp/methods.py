"""The MCP methods, whatever the transport: :class:`McpMethods` answers one request of an identified caller.

Both transports use it: Streamable HTTP (:mod:`bridge.mcp.server`, after its header, session and era checks) and
stdio (:mod:`bridge.mcp.stdio`). The streams (``GET /mcp``, ``subscriptions/listen``) are the transports' own; the
subscription bookkeeping they share is :mod:`bridge.mcp.changes`.

| method | handshake era (2025-11-25 …) | 2026-07-28 |
| --- | --- | --- |
| ``tools/list``, ``tools/call`` | yes | yes (``ttlMs``/``cacheScope`` on the list) |
| ``resources/list``, ``resources/read``, ``resources/templates/list`` | yes | yes (caching hints) |
| ``prompts/list``, ``prompts/get`` | yes | yes (caching hints on the list) |
| ``completion/complete`` | yes | yes |
| ``ping``, ``logging/setLevel``, ``resources/subscribe``, ``resources/unsubscribe`` | yes | removed: -32601 |
| ``server/discover``, ``subscriptions/listen`` | no: -32601 | yes |

A 2026-07-28 result carries ``resultType: "complete"`` and the server's info in ``_meta`` (:meth:`finish`).
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Awaitable, Callable
from typing import Any

import structlog

from bridge.errors import BridgeError
from bridge.logging import info_line
from bridge.mcp.changes import ChangeHub, parse_uri, session_key
from bridge.mcp.context import McpContext
from bridge.mcp.prompts import Prompts, Tools
from bridge.mcp.protocol import (
    HANDSHAKE_VERSIONS,
    INSTRUCTIONS,
    INVALID_PARAMS,
    LATEST_HANDSHAKE,
    META_SERVER_INFO,
    METHOD_NOT_FOUND,
    SERVER_INFO,
    SUPPORTED_VERSIONS,
    RpcError,
)
from bridge.mcp.resources import McpResources
from bridge.mcp.tools import McpTools, result_content
from bridge.operations import Call, Executor
from bridge.operations.pipeline import scope_error

log = structlog.get_logger("bridge.mcp")

META_SUBSCRIPTION_ID = "io.modelcontextprotocol/subscriptionId"
LOG_LEVELS = frozenset({"debug", "info", "notice", "warning", "error", "critical", "alert", "emergency"})
MAX_ECHO = 80

CAPABILITIES_MODERN: dict[str, Any] = {
    "tools": {"listChanged": False}, "resources": {"subscribe": True, "listChanged": False},
    "prompts": {"listChanged": False}, "completions": {}}
"""2026-07-28 (``server/discover``): no ``logging`` (``logging/setLevel`` is gone; without a per-request
``logLevel`` the server sends no log messages, and it never does)."""
CAPABILITIES_LEGACY: dict[str, Any] = {**CAPABILITIES_MODERN, "logging": {}}
"""Handshake era (``initialize``): ``logging/setLevel`` is accepted (the bridge sends no log notifications)."""

# caching hints (2026-07-28, server/utilities/caching.mdx): lists that depend on the caller are private
DISCOVER_TTL_MS = 3_600_000
TOOLS_LIST_TTL_MS = 60_000
RESOURCES_LIST_TTL_MS = 10_000
"""Short: secrets change (and no list_changed notification is sent)."""
STATIC_LIST_TTL_MS = 3_600_000
"""Templates and prompts are the same for everyone until the bridge is upgraded."""
CACHE_HINTS: dict[str, tuple[int, str]] = {
    "server/discover": (DISCOVER_TTL_MS, "public"),
    "tools/list": (TOOLS_LIST_TTL_MS, "private"),
    "resources/list": (RESOURCES_LIST_TTL_MS, "private"),
    "resources/templates/list": (STATIC_LIST_TTL_MS, "public"),
    "resources/read": (0, "private"),  # a secret's value is never served from a cache
    "prompts/list": (STATIC_LIST_TTL_MS, "public"),
}

COMMON = frozenset({"tools/list", "tools/call", "resources/list", "resources/read", "resources/templates/list",
                    "prompts/list", "prompts/get", "completion/complete"})
LEGACY_ONLY = frozenset({"ping", "logging/setLevel", "resources/subscribe", "resources/unsubscribe"})
MODERN_ONLY = frozenset({"server/discover", "subscriptions/listen"})


def short(value: str) -> str:
    return value if len(value) <= MAX_ECHO else value[:MAX_ECHO] + "…"


def method_not_found(method: str, *, modern: bool) -> RpcError:
    """-32601; in 2026-07-28 it travels with HTTP 404 (a removed or unknown method)."""
    return RpcError(METHOD_NOT_FOUND, f"Method not found: '{short(method)}'.", http_status=404 if modern else 200,
                    bridge_code="method_not_found")


def finish(method: str, result: dict[str, Any]) -> dict[str, Any]:
    """A 2026-07-28 result: its caching hints (lists, read, discover), ``resultType`` and the server's info."""
    hints = CACHE_HINTS.get(method)
    if hints is not None:
        result["ttlMs"], result["cacheScope"] = hints
    result.setdefault("resultType", "complete")  # a tools/call may say input_required (URL-mode elicitation)
    result["_meta"] = {META_SERVER_INFO: SERVER_INFO}
    return result


def initialize_result(params: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """The negotiated version and the ``InitializeResult`` of a handshake."""
    requested = params.get("protocolVersion")
    if not isinstance(requested, str):
        raise RpcError(INVALID_PARAMS, "Invalid params: 'protocolVersion' (a string) is required.")
    version = requested if requested in HANDSHAKE_VERSIONS else LATEST_HANDSHAKE
    return version, {"protocolVersion": version, "capabilities": CAPABILITIES_LEGACY, "serverInfo": SERVER_INFO,
                     "instructions": INSTRUCTIONS}


def discover_result() -> dict[str, Any]:
    return {"supportedVersions": list(SUPPORTED_VERSIONS), "capabilities": CAPABILITIES_MODERN,
            "instructions": INSTRUCTIONS}


class McpMethods:
    """The methods of :data:`COMMON` and :data:`LEGACY_ONLY` (and the filter of ``subscriptions/listen``), for
    any transport. ``hub`` keeps the handshake era's subscriptions."""

    def __init__(self, tools: McpTools, executor: Executor, resources: McpResources, prompts: Prompts,
                 hub: ChangeHub, page_size: int) -> None:
        self.tools = tools
        self.executor = executor
        self.resources = resources
        self.prompts = prompts
        self.hub = hub
        self._page_size = page_size
        self._prompt_arguments = prompts.argument_names()
        self._handlers: dict[str, Callable[[McpContext, dict[str, Any]], Awaitable[dict[str, Any]]]] = {
            "tools/list": self.tools_list, "tools/call": self.tools_call, "resources/list": self.resources_list,
            "resources/read": self.resources_read, "resources/templates/list": self.resource_templates,
            "prompts/list": self.prompts_list, "prompts/get": self.prompts_get,
            "completion/complete": self.complete, "ping": self.ping, "logging/setLevel": self.set_level,
            "resources/subscribe": self.subscribe, "resources/unsubscribe": self.unsubscribe,
        }

    def serves(self, method: str, *, modern: bool) -> bool:
        return method in COMMON or (method in MODERN_ONLY if modern else method in LEGACY_ONLY)

    async def call(self, ctx: McpContext, method: str, params: dict[str, Any]) -> dict[str, Any]:
        """The result of ``method`` (not yet :func:`finish`-ed); :class:`RpcError`, or a ``BridgeError`` the
        transport renders (``insufficient_scope`` and ``rate_limited`` of an operation)."""
        handler = self._handlers.get(method)
        if handler is None or not self.serves(method, modern=ctx.modern):
            raise method_not_found(method, modern=ctx.modern)
        return await handler(ctx, params)

    # -- tools ------------------------------------------------------------------------------------------------

    async def tools_list(self, ctx: McpContext, params: dict[str, Any]) -> dict[str, Any]:
        visible = await self.tools.visible(ctx.identity)
        start = decode_cursor(params.get("cursor"))
        page = visible[start:start + self._page_size]
        result: dict[str, Any] = {"tools": [self.tools.definition(op) for op in page]}
        if start + self._page_size < len(visible):
            result["nextCursor"] = encode_cursor(start + self._page_size)
        return result

    async def tools_call(self, ctx: McpContext, params: dict[str, Any]) -> dict[str, Any]:
        """One tool call through the executor. A tool outside the caller's scopes (``insufficient_scope``) and an
        exhausted rate limit (``rate_limited``) raise their ``BridgeError`` (the transport renders them); any other
        failure is the tool's own ``isError`` result."""
        identity = ctx.identity
        name = params.get("name")
        if not isinstance(name, str):
            raise RpcError(INVALID_PARAMS, "Invalid params: 'name' (the tool name, a string) is required.")
        op = self.tools.get(name)
        if op is None:
            raise RpcError(INVALID_PARAMS, f"Unknown tool: '{short(name)}'. Call tools/list for the tools "
                                           "available.")
        call = Call(identity, "mcp", prepaid=ctx.prepaid, decision=ctx.decision)
        ctx.prepaid = 0
        try:
            out = await self.executor.execute(op, call, _arguments(params.get("arguments")))
        except BridgeError as err:
            if err.code == "insufficient_scope":
                log.info("mcp.tool.forbidden", agent=identity.subject, tool=name, accepted_scopes=list(op.scopes))
                raise
            if err.code == "rate_limited":
                raise
            info_line("mcp.tool.called", {"agent": identity.subject, "tool": name, "is_error": True, "code": err.code})
            return result_content(err.to_dict(), is_error=True)
        finally:
            ctx.decision = call.decision
        if ctx.access_logged:  # the access line names the tool; this one only at debug (it costs ~10 % of a call)
            log.debug("mcp.tool.called", agent=identity.subject, tool=name, is_error=False)
        else:
            info_line("mcp.tool.called", {"agent": identity.subject, "tool": name, "is_error": False})
        # no null fields: optional fields that do not apply are left out, as in REST (the outputSchema says so)
        return result_content(out.model_dump(mode="json", exclude_none=True), is_error=False)

    def check_scope(self, ctx: McpContext, name: Any) -> None:
        """The scope check of a tool call that runs no operation (an elicitation's retry): the executor's
        ``insufficient_scope`` refusal."""
        op = self.tools.get(name) if isinstance(name, str) else None
        if op is not None and not op.allowed(ctx.identity):
            raise scope_error(op, Call(ctx.identity, "mcp"))

    # -- resources, prompts, completion -------------------------------------------------------------------

    async def resources_list(self, ctx: McpContext, params: dict[str, Any]) -> dict[str, Any]:
        return await self.resources.catalog(ctx, params.get("cursor"))

    async def resources_read(self, ctx: McpContext, params: dict[str, Any]) -> dict[str, Any]:
        uri = params.get("uri")
        if not isinstance(uri, str):
            raise RpcError(INVALID_PARAMS, "Invalid params: 'uri' (a string) is required.")
        return await self.resources.read(ctx, uri)

    async def resource_templates(self, ctx: McpContext, params: dict[str, Any]) -> dict[str, Any]:
        decode_cursor(params.get("cursor"))  # one page: any cursor but ours is refused
        return self.resources.templates()

    async def prompts_list(self, ctx: McpContext, params: dict[str, Any]) -> dict[str, Any]:
        decode_cursor(params.get("cursor"))
        return {"prompts": self.prompts.definitions()}

    async def prompts_get(self, ctx: McpContext, params: dict[str, Any]) -> dict[str, Any]:
        tools = Tools(frozenset(op.name for op in await self.tools.visible(ctx.identity)))
        return self.prompts.render(params.get("name"), params.get("arguments"), tools)

    async def complete(self, ctx: McpContext, params: dict[str, Any]) -> dict[str, Any]:
        return await self.resources.complete(ctx, params, self._prompt_arguments)

    # -- handshake era only -----------------------------------------------------------------------------------

    async def ping(self, ctx: McpContext, params: dict[str, Any]) -> dict[str, Any]:
        return {}

    async def set_level(self, ctx: McpContext, params: dict[str, Any]) -> dict[str, Any]:
        """Accepted (the bridge sends no ``notifications/message``: its logs go to its operator, not the client)."""
        if params.get("level") not in LOG_LEVELS:
            raise RpcError(INVALID_PARAMS, "Invalid params: 'level' is one of " + ", ".join(sorted(LOG_LEVELS)) + ".")
        return {}

    async def subscribe(self, ctx: McpContext, params: dict[str, Any]) -> dict[str, Any]:
        """Remember ``uri`` for the session: its ``GET /mcp`` stream (on any replica) is told when it changes. Any
        URI is accepted; only the caller's own ``vault://`` resources can ever change."""
        uri = _uri(params)
        if ctx.session is None:
            raise RpcError(INVALID_PARAMS, "Invalid params: subscriptions belong to a session.")
        if parse_uri(uri) is not None:
            state = (await self.hub.states(ctx.identity, [uri]))[uri]
            try:
                added = await self.hub.store.add(session_key(ctx.session), uri, state, self.hub.max_uris)
            except Exception as exc:
                log.warning("mcp.subscription.store_failed", error=type(exc).__name__)
                raise RpcError(-32603, "The subscription store is unavailable; retry shortly.") from None
            if not added:
                raise RpcError(INVALID_PARAMS, f"Invalid params: a session may subscribe to at most "
                                               f"{self.hub.max_uris} resources (SUBSCRIPTION_MAX_URIS).")
        return {}

    async def unsubscribe(self, ctx: McpContext, params: dict[str, Any]) -> dict[str, Any]:
        uri = _uri(params)
        if ctx.session is not None:
            try:
                await self.hub.store.remove(session_key(ctx.session), uri)
            except Exception as exc:
                log.warning("mcp.subscription.store_failed", error=type(exc).__name__)
                raise RpcError(-32603, "The subscription store is unavailable; retry shortly.") from None
        return {}

    # -- 2026-07-28 subscriptions/listen ----------------------------------------------------------------------

    def listen_filter(self, params: dict[str, Any]) -> tuple[list[str], dict[str, Any]]:
        """The URIs a ``subscriptions/listen`` stream will announce and the acknowledged ``notifications``: the
        caller's own well-formed ``vault://`` URIs (at most ``SUBSCRIPTION_MAX_URIS``); no list-changed
        notifications (the lists change only with an upgrade)."""
        wanted = params.get("notifications")
        if wanted is None:
            wanted = {}
        if not isinstance(wanted, dict):
            raise RpcError(INVALID_PARAMS, "Invalid params: 'notifications' must be an object.")
        requested = wanted.get("resourceSubscriptions") or []
        if not isinstance(requested, list) or not all(isinstance(u, str) for u in requested):
            raise RpcError(INVALID_PARAMS, "Invalid params: 'notifications.resourceSubscriptions' is a list of URIs.")
        uris = list(dict.fromkeys(u for u in requested if parse_uri(u) is not None))
        if len(uris) > self.hub.max_uris:
            raise RpcError(INVALID_PARAMS, f"Invalid params: at most {self.hub.max_uris} resource subscriptions per "
                                           "stream (SUBSCRIPTION_MAX_URIS).")
        honored: dict[str, Any] = {"resourceSubscriptions": uris} if "resourceSubscriptions" in wanted else {}
        return uris, honored


def _uri(params: dict[str, Any]) -> str:
    uri = params.get("uri")
    if not isinstance(uri, str) or not uri or len(uri) > 1024:
        raise RpcError(INVALID_PARAMS, "Invalid params: 'uri' (a string of at most 1024 characters) is required.")
    return uri


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


def encode_cursor(offset: int) -> str:
    """The opaque cursor of an offset into a list (``tools/list``)."""
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
