"""MCP resources and completion: the agent's secrets as ``vault://kv/<path>``, its Transit keys as
``vault://transit/<key>``.

Every answer comes from an operation carried out by the executor for the caller, so scopes, Vault policy, the
rate limit, audit and metrics apply exactly as to a tool call:

- ``resources/list``: ``kv_secrets`` (scope ``list``: names, versions, update times, never a value) then
  ``transit_keys`` (type and versions, never key material), paged by ``MCP_PAGE_SIZE`` with one opaque cursor.
  Without the ``list`` scope the list is empty (it may vary by authorization).
- ``resources/read``: a secret is **``kv_read``** itself (its rules, scopes and refusals are the tool's, and will
  stay so as ``kv_read`` changes); a key is ``transit_key``. Not found (or deleted, destroyed, an invalid URI) is
  the era's "resource not found" error with ``data.uri``; an out-of-scope read is the tool's 403; any other
  failure is a JSON-RPC error carrying the bridge's code.
- ``resources/templates/list``: ``vault://kv/{path}`` and ``vault://transit/{key}``.
- ``completion/complete``: the ``path`` argument of a prompt or of ``vault://kv/{path}`` from ``kv_list`` of the
  folder typed so far; the ``key`` argument from ``transit_keys``. Anything else completes to nothing.
"""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any

from bridge.errors import BridgeError
from bridge.mcp.changes import parse_uri, resource_uri
from bridge.mcp.context import McpContext
from bridge.mcp.protocol import INVALID_PARAMS, RESOURCE_NOT_FOUND, RpcError, rpc_code_for_status
from bridge.models import ListOut, SecretsPageOut, TransitKeyInfo, TransitKeysOut
from bridge.operations import Executor
from bridge.paths import validate_prefix

KV_TEMPLATE = "vault://kv/{path}"
TRANSIT_TEMPLATE = "vault://transit/{key}"
MIME = "application/json"
MAX_COMPLETIONS = 100
NOT_FOUND_CODES = frozenset({"not_found", "secret_deleted", "secret_destroyed", "version_not_found", "invalid_path",
                             "key_not_found"})

TEMPLATES: list[dict[str, Any]] = [
    {"uriTemplate": KV_TEMPLATE, "name": "kv-secret", "title": "A secret of yours",
     "description": "Any secret path in your namespace (e.g. vault://kv/db/prod); reading it answers exactly what "
                    "the kv_read tool answers.", "mimeType": MIME},
    {"uriTemplate": TRANSIT_TEMPLATE, "name": "transit-key", "title": "A Transit key of yours",
     "description": "One of your Transit keys: its type and versions, never key material.", "mimeType": MIME},
]


def not_found(uri: Any, modern: bool, message: str = "Resource not found") -> RpcError:
    """The era's "resource not found": -32602 (2026-07-28) or -32002 (handshake era), ``data.uri``."""
    return RpcError(INVALID_PARAMS if modern else RESOURCE_NOT_FOUND, message,
                    data={"uri": uri if isinstance(uri, str) else None})


def _encode_cursor(part: str, after: str) -> str:
    return base64.urlsafe_b64encode(json.dumps({"p": part, "a": after}).encode()).decode()


def _decode_cursor(cursor: Any) -> tuple[str, str]:
    if cursor is None:
        return "kv", ""
    try:
        value = json.loads(base64.urlsafe_b64decode(str(cursor).encode()))
        part, after = value["p"], value["a"]
    except (ValueError, KeyError, TypeError, binascii.Error):
        part = after = None
    if part not in ("kv", "transit") or not isinstance(after, str):
        raise RpcError(INVALID_PARAMS, "Invalid params: 'cursor' is not a cursor this server issued.")
    return part, after


def _secret(entry: Any) -> dict[str, Any]:
    return {"uri": resource_uri("kv", entry.path), "name": entry.path, "title": f"Secret {entry.path}",
            "description": f"KV v2 secret '{entry.path}': version {entry.version}, updated {entry.updated_time}. "
                           "Read it for the value (the rules of kv_read apply).",
            "mimeType": MIME, "annotations": {"lastModified": entry.updated_time}}


def _key(info: TransitKeyInfo) -> dict[str, Any]:
    return {"uri": resource_uri("transit", info.key), "name": f"transit/{info.key}",
            "title": f"Transit key {info.key}",
            "description": f"Transit key '{info.key}': type {info.type}, latest version {info.latest_version}. "
                           "Use it with the transit_* tools; its material never leaves Vault.",
            "mimeType": MIME}


class McpResources:
    def __init__(self, executor: Executor, page_size: int) -> None:
        self._executor = executor
        self._page_size = page_size

    async def _optional(self, ctx: McpContext, name: str, arguments: dict[str, Any]) -> Any:
        """An operation the caller may not have the scope for (then ``None``: nothing to show)."""
        try:
            return await ctx.execute(self._executor, name, arguments)
        except BridgeError as err:
            if err.code == "insufficient_scope":
                return None
            raise

    async def catalog(self, ctx: McpContext, cursor: Any) -> dict[str, Any]:
        part, after = _decode_cursor(cursor)
        size = self._page_size
        resources: list[dict[str, Any]] = []
        next_cursor: str | None = None
        if part == "kv":
            page = await self._optional(ctx, "kv_secrets", {"after": after, "limit": size})
            if isinstance(page, SecretsPageOut):
                resources += [_secret(entry) for entry in page.secrets]
                if page.next_after is not None:
                    next_cursor = _encode_cursor("kv", page.next_after)
            part, after = "transit", ""
        if next_cursor is None and len(resources) < size:
            keys = await self._optional(ctx, "transit_keys", {"after": after, "limit": size - len(resources)})
            if isinstance(keys, TransitKeysOut):
                resources += [_key(info) for info in keys.keys]
                if keys.next_after is not None:
                    next_cursor = _encode_cursor("transit", keys.next_after)
        elif next_cursor is None:
            next_cursor = _encode_cursor("transit", "")
        result: dict[str, Any] = {"resources": resources}
        if next_cursor is not None:
            result["nextCursor"] = next_cursor
        return result

    async def read(self, ctx: McpContext, uri: Any) -> dict[str, Any]:
        parsed = parse_uri(uri)
        if parsed is None:
            raise not_found(uri, ctx.modern)
        kind, name = parsed
        try:
            if kind == "kv":
                out = await ctx.execute(self._executor, "kv_read", {"path": name})
            else:
                out = await ctx.execute(self._executor, "transit_key", {"key": name})
        except BridgeError as err:
            if err.code in ("insufficient_scope", "rate_limited"):
                raise  # the tool's own refusals (HTTP 403 with its challenge, 429)
            if err.code in NOT_FOUND_CODES:
                raise not_found(uri, ctx.modern, f"Resource not found: {err.message}") from None
            raise RpcError(rpc_code_for_status(err.status), err.message,
                           data={"code": err.code, "uri": uri, **err.extra}) from None
        text = json.dumps(out.model_dump(mode="json", exclude_none=True), ensure_ascii=False)
        return {"contents": [{"uri": uri, "mimeType": MIME, "text": text}]}

    @staticmethod
    def templates() -> dict[str, Any]:
        return {"resourceTemplates": TEMPLATES}

    async def complete(self, ctx: McpContext, params: dict[str, Any], prompt_arguments: dict[str, set[str]]
                       ) -> dict[str, Any]:
        """``completion/complete``: ``prompt_arguments`` maps each prompt to its argument names."""
        ref, argument = params.get("ref"), params.get("argument")
        if not isinstance(ref, dict) or not isinstance(argument, dict):
            raise RpcError(INVALID_PARAMS, "Invalid params: 'ref' and 'argument' (objects) are required.")
        name, value = argument.get("name"), argument.get("value", "")
        if not isinstance(name, str) or not isinstance(value, str):
            raise RpcError(INVALID_PARAMS, "Invalid params: 'argument' needs 'name' and 'value' (strings).")
        kind = ref.get("type")
        if kind == "ref/prompt":
            if name not in prompt_arguments.get(str(ref.get("name")), set()):
                return _completion([])  # a prompt or argument we do not know: nothing to suggest
        elif kind == "ref/resource":
            if (ref.get("uri"), name) not in ((KV_TEMPLATE, "path"), (TRANSIT_TEMPLATE, "key")):
                return _completion([])
        else:
            raise RpcError(INVALID_PARAMS, "Invalid params: 'ref.type' is 'ref/prompt' or 'ref/resource'.")
        if name == "path":
            return _completion(await self._paths(ctx, value))
        if name == "key":
            return _completion(await self._keys(ctx, value))
        return _completion([])

    async def _paths(self, ctx: McpContext, value: str) -> list[str]:
        folder, _, partial = value.rpartition("/")
        folder = folder + "/" if folder else ""
        try:
            folder = validate_prefix(folder)
        except BridgeError:
            return []
        try:
            listed = await self._optional(ctx, "kv_list", {"prefix": folder})
        except BridgeError:
            return []
        if not isinstance(listed, ListOut):
            return []
        return sorted(folder + key for key in listed.keys if key.startswith(partial))

    async def _keys(self, ctx: McpContext, value: str) -> list[str]:
        try:
            keys = await self._optional(ctx, "transit_keys", {"limit": 1000})
        except BridgeError:
            return []
        if not isinstance(keys, TransitKeysOut):
            return []
        return sorted(info.key for info in keys.keys if info.key.startswith(value))


def _completion(values: list[str]) -> dict[str, Any]:
    return {"completion": {"values": values[:MAX_COMPLETIONS], "total": len(values),
                           "hasMore": len(values) > MAX_COMPLETIONS}}
