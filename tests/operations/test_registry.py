"""Adding an operation is one declaration and one service method (docs/architecture.md, "Adding an operation"):
a throwaway operation registered in a test app is a REST route, an MCP tool (schema, title, annotations), an
OpenAPI row, leaves audit records, and its scope is enforced on both transports."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from pydantic import BaseModel, ConfigDict, Field

from bridge.app import create_app
from bridge.auth.identity import Identity
from bridge.config import Settings
from bridge.models import PATH_DESCRIPTION
from bridge.operations import Operation, Param, Registry, RestBinding, default_registry, hints
from bridge.ops.openapi import build_openapi
from bridge.service import VaultAccess
from tests.conftest import API_KEY_ALICE, API_KEY_READONLY
from tests.mcp.conftest import modern_body, modern_headers

pytestmark = pytest.mark.integration


# -- the throwaway operation: one declaration, one service method ------------------------------------------

class EchoBody(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    text: str = Field(max_length=64, description="What to echo.")


class EchoArgs(EchoBody):
    path: str = Field(description=PATH_DESCRIPTION)
    times: int | None = Field(default=None, ge=1, le=3, description="How often (default once).")


class EchoOut(BaseModel):
    agent: str
    path: str
    echo: str


class EchoService:
    def __init__(self, access: VaultAccess) -> None:
        self.prefix = access.settings.default_prefix

    async def shout(self, identity: Identity, args: EchoArgs) -> EchoOut:
        return EchoOut(agent=identity.subject, path=f"{self.prefix}/{args.path}",
                       echo=" ".join([args.text.upper()] * (args.times or 1)))

    async def crash(self, identity: Identity, args: EchoArgs) -> EchoOut:
        raise RuntimeError("internal detail that must not leak")


ECHO = Operation(
    name="test_echo", scope="write", input=EchoArgs, output=EchoOut, service=EchoService, run=EchoService.shout,
    title="Echo loudly", summary="Echo a text in capitals.", description="Test operation: echoes its text back.",
    annotations=hints(read_only=True, idempotent=True), audit=("path", "times"),
    rest=RestBinding("POST", "/echo/{path}:shout", route="echo_post", tag="test", errors=(), tail="path",
                     query=("times",), body=EchoBody,
                     params=(Param("path", "path", {"type": "string"}, "Where."),
                             Param("times", "query", {"type": "integer", "minimum": 1, "maximum": 3}, "How often."))))
CRASH = Operation(
    name="test_crash", scope="read", input=EchoArgs, output=EchoOut, service=EchoService, run=EchoService.crash,
    title="Crash", summary="Always fails.", description="Test operation: always crashes.", mcp=True)


def registry() -> Registry:
    return default_registry().with_operations(ECHO, CRASH)


@pytest.fixture
async def client(aiohttp_client: Any, make_settings: Any, tmp_path: Path) -> TestClient[Any, Any]:
    settings: Settings = make_settings(audit_log=str(tmp_path / "audit.jsonl"))
    api: TestClient[Any, Any] = await aiohttp_client(create_app(settings, registry=registry()))
    return api


def audit_records(tmp_path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (tmp_path / "audit.jsonl").read_text().splitlines()]


async def mcp(client: TestClient[Any, Any], key: str, method: str, params: dict[str, Any],
              name: str | None = None) -> Any:
    return await client.post("/mcp", json=modern_body(method, params), headers=modern_headers(key, method, name))


# -- derived: REST, MCP, OpenAPI, audit, scope ---------------------------------------------------------------

async def test_a_declared_operation_is_a_rest_route(client: TestClient[Any, Any], tmp_path: Path) -> None:
    alice = {"X-API-Key": API_KEY_ALICE}
    resp = await client.post("/echo/a/b:shout?times=2", json={"text": "hi"}, headers=alice)
    assert resp.status == 200, await resp.text()
    assert await resp.json() == {"agent": "alice", "path": "mcp/a/b", "echo": "HI HI"}
    assert "RateLimit-Remaining" in resp.headers  # the middlewares apply as to every route
    resp = await client.post("/echo/a:shout", json={"text": "hi", "path": "elsewhere"}, headers=alice)
    assert resp.status == 400  # a URL field in the body is refused
    assert (await resp.json())["error"]["message"] == "Invalid request: path: Extra inputs are not permitted."
    resp = await client.post("/echo/a:shout?times=x", json={"text": "hi"}, headers=alice)
    assert resp.status == 400
    resp = await client.post("/echo/a:shout?times=9", json={"text": "hi"}, headers=alice)
    assert resp.status == 400  # the input model's bound
    resp = await client.get("/echo/a:shout", headers=alice)
    assert resp.status == 405  # the router's, before any identity: not an operation, no record
    resp = await client.post("/echo/a:shout", json={"text": "hi"}, headers={"X-API-Key": API_KEY_READONLY})
    assert resp.status == 403  # the scope, before the body is read
    assert (await resp.json())["error"]["required_scope"] == "write"
    records = [(r["operation"], r["outcome"], r.get("code"), r.get("path"), r.get("times"))
               for r in audit_records(tmp_path)]
    assert records == [
        ("test_echo", "ok", None, "a/b", 2),
        ("test_echo", "denied", "invalid_request", None, None),  # the body: refused before it was validated
        ("test_echo", "denied", "invalid_request", None, None),  # the query: refused before the operation ran
        ("test_echo", "denied", "invalid_request", "a", 9),  # the input model
        ("test_echo", "denied", "forbidden", None, None),
    ]


async def test_a_declared_operation_is_an_mcp_tool(client: TestClient[Any, Any], tmp_path: Path) -> None:
    listed = (await (await mcp(client, API_KEY_ALICE, "tools/list", {})).json())["result"]["tools"]
    echo = next(t for t in listed if t["name"] == "test_echo")
    assert echo["title"] == "Echo loudly"
    assert echo["description"] == "Test operation: echoes its text back."
    assert echo["annotations"] == {"title": "Echo loudly", **hints(read_only=True, idempotent=True)}
    assert echo["inputSchema"]["required"] == ["text", "path"]
    assert set(echo["inputSchema"]["properties"]) == {"text", "path", "times"}
    assert set(echo["outputSchema"]["properties"]) == {"agent", "path", "echo", "error"}
    readonly = (await (await mcp(client, API_KEY_READONLY, "tools/list", {})).json())["result"]["tools"]
    assert "test_echo" not in {t["name"] for t in readonly}  # needs 'write'

    call = {"name": "test_echo", "arguments": {"path": "x", "text": "yo", "times": 3}}
    result = (await (await mcp(client, API_KEY_ALICE, "tools/call", call, "test_echo")).json())["result"]
    assert result["structuredContent"] == {"agent": "alice", "path": "mcp/x", "echo": "YO YO YO"}
    assert result["isError"] is False
    bad = {"name": "test_echo", "arguments": {"path": "x"}}
    result = (await (await mcp(client, API_KEY_ALICE, "tools/call", bad, "test_echo")).json())["result"]
    assert result["structuredContent"]["error"]["code"] == "invalid_request"
    resp = await mcp(client, API_KEY_READONLY, "tools/call", call, "test_echo")
    assert resp.status == 403
    assert (await resp.json())["error"]["data"] == {"code": "insufficient_scope", "required_scope": "write"}
    assert 'error="insufficient_scope", scope="write"' in resp.headers["WWW-Authenticate"]
    records = [(r["operation"], r["outcome"], r.get("code"), r.get("path")) for r in audit_records(tmp_path)]
    assert records == [("test_echo", "ok", None, "x"), ("test_echo", "denied", "invalid_request", "x"),
                       ("test_echo", "denied", "insufficient_scope", "x")]


async def test_a_declared_operation_is_an_openapi_row(client: TestClient[Any, Any]) -> None:
    doc = await (await client.get("/openapi.json")).json()
    row = doc["paths"]["/echo/{path}:shout"]["post"]
    assert row["operationId"] == "echo_post_shout"
    assert row["summary"] == "Echo a text in capitals."
    assert row["tags"] == ["test"]
    assert [(p["name"], p["in"], p["required"]) for p in row["parameters"]] == [("path", "path", True),
                                                                                ("times", "query", False)]
    assert row["requestBody"]["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/EchoBody"}
    assert row["responses"]["200"]["content"]["application/json"]["schema"] == \
        {"$ref": "#/components/schemas/EchoOut"}
    assert {"401", "403", "413", "415", "429"} <= set(row["responses"])
    assert "/echo/{path}:shout" not in build_openapi(default_registry())["paths"]


async def test_an_unexpected_fault_is_32603_and_recorded(client: TestClient[Any, Any], tmp_path: Path) -> None:
    call = {"name": "test_crash", "arguments": {"path": "a", "text": "t"}}
    resp = await mcp(client, API_KEY_ALICE, "tools/call", call, "test_crash")
    assert resp.status == 500
    body = await resp.json()
    assert body["error"]["code"] == -32603
    assert body["id"] == 1
    assert "internal detail" not in await resp.text()
    [record] = audit_records(tmp_path)
    assert (record["operation"], record["outcome"], record["code"], record["status"]) == (
        "test_crash", "error", "internal_error", 500)


def test_the_registry_refuses_inconsistent_declarations() -> None:
    with pytest.raises(ValueError, match="declared twice"):
        default_registry().with_operations(ECHO, ECHO)
    with pytest.raises(ValueError, match="both POST /echo"):
        default_registry().with_operations(ECHO, replace(ECHO, name="test_other"))
    loose = RestBinding("POST", "/echo/{path}:shout", route="echo_post", tag="test", errors=(), tail="path")
    with pytest.raises(ValueError, match="together be the fields"):
        Registry([replace(ECHO, rest=loose)])
