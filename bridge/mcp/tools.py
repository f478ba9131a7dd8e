"""MCP tools, derived from the operation registry: every operation with ``mcp=True`` is a tool named like it, with
its title, its description for a model, ``inputSchema``/``outputSchema`` made from its input and output models,
and its annotations (:class:`McpTools`). ``tools/call`` hands the tool's ``arguments`` to the executor
(:mod:`bridge.operations.pipeline`), which validates them with the same input model (and the same 400
``invalid_request``) as REST, so MCP and REST cannot drift apart.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from bridge.auth.identity import Identity
from bridge.jsonbody import dumps
from bridge.operations import AnyOperation, Executor, Registry

ERROR_SCHEMA: dict[str, Any] = {
    "type": "object",
    "description": "Present instead of the result when the tool failed (isError is true).",
    "properties": {
        "code": {"type": "string", "description": "Stable error code, the same as the REST API's."},
        "message": {"type": "string", "description": "What went wrong and what to do about it."},
    },
    "required": ["code", "message"],
    "additionalProperties": True,
}


def _strip_titles(schema: Any) -> Any:
    """Drop pydantic's generated ``title`` keywords (noise for a model); keep properties named 'title'."""
    if isinstance(schema, dict):
        out: dict[str, Any] = {}
        for key, value in schema.items():
            if key == "title" and isinstance(value, str):
                continue
            if key in ("properties", "$defs") and isinstance(value, dict):
                out[key] = {name: _strip_titles(sub) for name, sub in value.items()}
            else:
                out[key] = _strip_titles(value)
        return out
    if isinstance(schema, list):
        return [_strip_titles(item) for item in schema]
    return schema


def input_schema(model: type[BaseModel]) -> dict[str, Any]:
    schema: dict[str, Any] = _strip_titles(model.model_json_schema())
    schema.setdefault("properties", {})
    return schema


def _not_null(prop: dict[str, Any]) -> dict[str, Any]:
    """An optional output field (``X | None = None``) without its ``null`` branch: results leave a field that
    does not apply out (``exclude_none``), they never send it as ``null``."""
    branches = prop.get("anyOf")
    if prop.get("default", ...) is not None or not isinstance(branches, list):
        return prop
    kept = [b for b in branches if b != {"type": "null"}]
    if len(kept) == len(branches):
        return prop
    rest = {k: v for k, v in prop.items() if k not in ("anyOf", "default")}
    return {**rest, **kept[0]} if len(kept) == 1 else {**rest, "anyOf": kept}


def output_schema(model: type[BaseModel]) -> dict[str, Any]:
    """An object schema admitting the success shape (``model``) and the ``{"error": {...}}`` shape. A union output
    (a ``RootModel`` of several models, e.g. ``kv_read``: values, references or a wrapping token) admits each of its
    shapes: their properties together, and one ``required`` set per shape."""
    success: dict[str, Any] = _strip_titles(model.model_json_schema(mode="serialization"))
    defs = success.pop("$defs", None)
    shapes = [success]
    if "properties" not in success and isinstance(success.get("anyOf"), list):
        shapes = [(defs or {})[branch["$ref"].rsplit("/", 1)[-1]] if "$ref" in branch else branch
                  for branch in success["anyOf"]]
    properties: dict[str, Any] = {}
    for shape in shapes:
        for name, prop in shape.get("properties", {}).items():
            properties.setdefault(name, _not_null(prop))
    schema: dict[str, Any] = {
        "type": "object",
        "properties": {**properties, "error": ERROR_SCHEMA},
        "anyOf": [*({"required": shape.get("required", [])} for shape in shapes), {"required": ["error"]}],
    }
    if defs:
        schema["$defs"] = defs
    return schema


def definition(op: AnyOperation) -> dict[str, Any]:
    """The ``Tool`` object of ``tools/list``."""
    return {
        "name": op.name,
        "title": op.title,
        "description": op.description,
        "inputSchema": input_schema(op.input),
        "outputSchema": output_schema(op.output),
        "annotations": {"title": op.title, **op.annotations},
    }


class McpTools:
    """The registry's tools, in registry order (deterministic, for stable pagination), their definitions made
    once."""

    def __init__(self, registry: Registry, executor: Executor) -> None:
        self._tools = registry.tools()
        self._by_name = {op.name: op for op in self._tools}
        self._definitions = {op.name: definition(op) for op in self._tools}
        self._executor = executor

    def get(self, name: str) -> AnyOperation | None:
        return self._by_name.get(name)

    def definition(self, op: AnyOperation) -> dict[str, Any]:
        return self._definitions[op.name]

    async def visible(self, identity: Identity) -> list[AnyOperation]:
        """The tools open to the caller: its scopes allow them (and their ``available`` hook, if any)."""
        return [op for op in self._tools if await self._executor.allows(op, identity)]


def result_content(structured: dict[str, Any], *, is_error: bool) -> dict[str, Any]:
    """A ``CallToolResult``: the structured JSON plus the same JSON as a text block."""
    return {
        "content": [{"type": "text", "text": dumps(structured).decode()}],
        "structuredContent": structured,
        "isError": is_error,
    }
