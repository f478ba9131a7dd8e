"""The API contract as measured from outside (issue 10 "Contract defects", issue 9 "Scopes mean what they say"
and "Bad input never half-succeeds"): a real listening bridge in front of the real OpenBao, REST and MCP.

Each test failed on the code before its fix (see docs/hardening-tests.md, "Errors and contracts").
"""

from __future__ import annotations

import base64
import json
import secrets
from collections.abc import Awaitable, Callable
from typing import Any

import jsonschema  # type: ignore[import-untyped]
import pytest
from aiohttp.test_utils import TestClient

from bridge.app import create_app
from bridge.config import Settings
from bridge.mcp.tools import definition
from bridge.operations import default_registry
from tests.conftest import API_KEY_ALICE, API_KEYS
from tests.mcp.conftest import modern_body, modern_headers

pytestmark = pytest.mark.integration

Client = TestClient[Any, Any]
ALICE = {"X-API-Key": API_KEY_ALICE}
DELETER_KEY = "deleter-key-" + "d" * 20  # alice with read + delete
WRITER_KEY = "writer-key-" + "w" * 21  # alice with read + write
KEYS = {**API_KEYS, DELETER_KEY: {"agent": "alice", "scopes": ["read", "delete"]},
        WRITER_KEY: {"agent": "alice", "scopes": ["read", "write"]}}


@pytest.fixture
async def api(aiohttp_client: Callable[..., Awaitable[Client]], make_settings: Callable[..., Settings]) -> Client:
    return await aiohttp_client(create_app(make_settings(api_keys_json=json.dumps(KEYS))))


def unique(prefix: str = "contract") -> str:
    return f"{prefix}-{secrets.token_hex(4)}"


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


async def tool(api: Client, name: str, arguments: dict[str, Any], key: str = API_KEY_ALICE) -> dict[str, Any]:
    """A 2026-07-28 ``tools/call``; returns the ``CallToolResult``."""
    resp = await api.post("/mcp", json=modern_body("tools/call", {"name": name, "arguments": arguments}),
                          headers=modern_headers(key, "tools/call", name))
    assert resp.status == 200, await resp.text()
    result: dict[str, Any] = (await resp.json())["result"]
    return result


async def tool_error_code(api: Client, name: str, arguments: dict[str, Any]) -> str:
    """The error code of a failing ``tools/call``: an ``isError`` result's, or, for a number the bridge's JSON
    loader refuses before any tool runs (beyond ±(2^53-1)), the JSON-RPC error's ``data.code`` (HTTP 400)."""
    resp = await api.post("/mcp", json=modern_body("tools/call", {"name": name, "arguments": arguments}),
                          headers=modern_headers(API_KEY_ALICE, "tools/call", name))
    body = await resp.json()
    if resp.status == 400:
        return str(body["error"]["data"]["code"])
    assert resp.status == 200, body
    assert body["result"]["isError"] is True
    return str(body["result"]["structuredContent"]["error"]["code"])


async def error_of(resp: Any) -> dict[str, Any]:
    err: dict[str, Any] = (await resp.json())["error"]
    return err


# -- paths ------------------------------------------------------------------------------------------------

async def test_empty_secret_path_is_invalid_path_and_listing_is_the_query(api: Client) -> None:
    base = unique()
    assert (await api.put(f"/secrets/{base}/x", json={"data": {"v": 1}}, headers=ALICE)).status == 200
    resp = await api.get("/secrets/", headers=ALICE)
    assert resp.status == 400
    assert (await error_of(resp))["code"] == "invalid_path"
    for url in ("/secrets?prefix=", "/secrets"):
        resp = await api.get(url, headers=ALICE)
        assert resp.status == 200
        assert base + "/" in (await resp.json())["keys"]


# -- check-and-set --------------------------------------------------------------------------------------

@pytest.mark.parametrize("method", ["PUT", "PATCH"])
async def test_malformed_cas_is_400_and_nothing_is_written(api: Client, method: str) -> None:
    path = unique("cas")
    assert (await api.put(f"/secrets/{path}", json={"data": {"v": 1}}, headers=ALICE)).status == 200
    for cas in (10**20, 2**63, 1_000_000_000):  # Vault: "error parsing check-and-set parameter" for the first two
        resp = await api.request(method, f"/secrets/{path}", json={"data": {"v": 2}, "cas": cas}, headers=ALICE)
        assert resp.status == 400, (cas, await resp.text())
        assert (await error_of(resp))["code"] == "invalid_request"
    assert (await (await api.get(f"/secrets/{path}", headers=ALICE)).json())["version"] == 1
    for cas in (10**20, 10**12):
        assert await tool_error_code(api, "kv_write", {"path": path, "data": {"v": 3}, "cas": cas}) == \
            "invalid_request"


async def test_cas_conflict_names_the_current_version(api: Client) -> None:
    path = unique("cas")
    for _ in range(3):
        assert (await api.put(f"/secrets/{path}", json={"data": {"v": 1}}, headers=ALICE)).status == 200
    for method, cas in (("PUT", 1), ("PATCH", 7), ("PUT", 0)):
        resp = await api.request(method, f"/secrets/{path}", json={"data": {"v": 2}, "cas": cas}, headers=ALICE)
        assert resp.status == 409
        err = await error_of(resp)
        assert err["code"] == "cas_mismatch"
        assert err["current_version"] == 3
        assert "current version of" in err["message"]
        assert "is 3" in err["message"]
    missing = unique("cas-missing")
    resp = await api.put(f"/secrets/{missing}", json={"data": {"v": 1}, "cas": 4}, headers=ALICE)
    assert resp.status == 409
    assert (await error_of(resp))["current_version"] == 0
    result = await tool(api, "kv_write", {"path": path, "data": {"v": 9}, "cas": 2})
    assert result["isError"] is True
    assert result["structuredContent"]["error"]["current_version"] == 3


# -- versions ---------------------------------------------------------------------------------------------

async def test_a_version_that_does_not_exist_says_so(api: Client) -> None:
    path = unique("ver")
    for n in (1, 2):
        assert (await api.put(f"/secrets/{path}", json={"data": {"n": n}}, headers=ALICE)).status == 200
    resp = await api.get(f"/secrets/{path}?version=5", headers=ALICE)
    assert resp.status == 404
    err = await error_of(resp)
    assert err["code"] == "version_not_found"
    assert (err["version"], err["current_version"], err["oldest_version"]) == (5, 2, 1)
    assert "No secret" not in err["message"]
    # a secret that does not exist at all is still not_found, whatever the version asked for
    resp = await api.get(f"/secrets/{unique('none')}?version=5", headers=ALICE)
    assert (await error_of(resp))["code"] == "not_found"
    result = await tool(api, "kv_read", {"path": path, "version": 5})
    assert result["structuredContent"]["error"]["code"] == "version_not_found"


async def test_mcp_version_is_bounded_like_rest(api: Client) -> None:
    path = unique("ver")
    assert (await api.put(f"/secrets/{path}", json={"data": {"n": 1}}, headers=ALICE)).status == 200
    for version in (10**9, 10**20):
        resp = await api.get(f"/secrets/{path}?version={version}", headers=ALICE)
        assert resp.status == 400
        assert await tool_error_code(api, "kv_read", {"path": path, "version": version}) == "invalid_request"
    assert (await tool(api, "kv_read", {"path": path, "version": 999_999_999}))["structuredContent"]["error"][
        "code"] == "version_not_found"  # the largest accepted number reaches Vault, as over REST
    schema = definition(default_registry()["kv_read"])["inputSchema"]["properties"]["version"]
    assert schema["anyOf"][0]["maximum"] == 999_999_999


# -- Transit ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("route", "body"), [
    ("decrypt", {"ciphertext": "vault:v1:AAAA"}),
    ("rewrap", {"ciphertext": "vault:v1:AAAA"}),
    ("sign", {"input": "AAAA"}),
    ("verify", {"input": "AAAA", "signature": "vault:v1:AAAA"}),
    ("hmac", {"input": "AAAA"}),
    ("decrypt", {"batch_input": [{"ciphertext": "vault:v1:AAAA"}]}),
])
async def test_a_key_that_does_not_exist_is_404_key_not_found(api: Client, route: str, body: dict[str, Any]) -> None:
    name = unique("nokey")
    resp = await api.post(f"/transit/{route}", json={"key": name, **body}, headers=ALICE)
    assert resp.status == 404, await resp.text()
    err = await error_of(resp)
    assert err["code"] == "key_not_found"
    assert err["key"] == name
    assert name in err["message"]


async def test_batch_items_that_fail_validation_are_answered_in_place(api: Client) -> None:
    key = unique("batch")
    items: list[Any] = [
        {"plaintext": b64(b"one"), "reference": "r1"},
        {"plaintext": "not base64!", "reference": "r2"},
        {"plaintext": b64(b"three")},
        {"plaintext": b64(b"four"), "unknown": 1, "reference": "r4"},
        "not an object",
    ]
    resp = await api.post("/transit/encrypt", json={"key": key, "batch_input": items}, headers=ALICE)
    assert resp.status == 200, await resp.text()
    results = (await resp.json())["batch_results"]
    assert len(results) == 5
    assert results[0]["ciphertext"].startswith("vault:v1:")
    assert results[0]["reference"] == "r1"
    assert set(results[1]) == {"error", "reference"}
    assert results[1]["reference"] == "r2"
    assert "plaintext" in results[1]["error"]
    assert "not base64!" not in results[1]["error"]  # the message names the field, never the value
    assert results[2]["ciphertext"].startswith("vault:v1:")
    assert results[3]["reference"] == "r4"
    assert "unknown" in results[3]["error"]
    assert "error" in results[4]
    # the valid items were really encrypted: they decrypt, next to a bad item, in one batch
    resp = await api.post("/transit/decrypt", json={"key": key, "batch_input": [
        {"ciphertext": results[0]["ciphertext"]}, {"ciphertext": ""}, {"ciphertext": results[2]["ciphertext"]}]},
        headers=ALICE)
    assert resp.status == 200
    decrypted = (await resp.json())["batch_results"]
    assert decrypted[0]["plaintext"] == b64(b"one")
    assert "error" in decrypted[1]
    assert decrypted[2]["plaintext"] == b64(b"three")
    # every item invalid: answered in place too, Vault not asked
    resp = await api.post("/transit/hmac", json={"key": key, "batch_input": [{"input": "?"}]}, headers=ALICE)
    assert resp.status == 200
    assert "error" in (await resp.json())["batch_results"][0]
    # only a malformed envelope is a 400
    for batch in ([], "x", [{"plaintext": b64(b"x")}] * 1001, {"plaintext": b64(b"x")}):
        resp = await api.post("/transit/encrypt", json={"key": key, "batch_input": batch}, headers=ALICE)
        assert resp.status == 400, batch if len(batch) < 5 else len(batch)
    # MCP: the same, with a result valid against the tool's outputSchema
    result = await tool(api, "transit_encrypt", {"key": key, "batch_input": items[:2]})
    assert result["isError"] is False
    assert [("ciphertext" in r, "error" in r) for r in result["structuredContent"]["batch_results"]] == [
        (True, False), (False, True)]


def _nulls(value: Any, where: str = "") -> list[str]:
    if value is None:
        return [where or "<root>"]
    if isinstance(value, dict):
        return [n for k, v in value.items() for n in _nulls(v, f"{where}.{k}")]
    if isinstance(value, list):
        return [n for i, v in enumerate(value) for n in _nulls(v, f"{where}[{i}]")]
    return []


async def test_mcp_transit_results_carry_no_null_fields(api: Client) -> None:
    key, signer = unique("nulls"), unique("signer")
    text = b64(b"attack at dawn")
    enc = await tool(api, "transit_encrypt", {"key": key, "plaintext": text})
    ciphertext = enc["structuredContent"]["ciphertext"]
    await tool(api, "transit_create_key", {"key": signer, "type": "ed25519"})
    signature = (await tool(api, "transit_sign", {"key": signer, "input": text}))["structuredContent"]["signature"]
    mac = (await tool(api, "transit_hmac", {"key": key, "input": text}))["structuredContent"]["hmac"]
    calls: list[tuple[str, dict[str, Any]]] = [
        ("transit_encrypt", {"key": key, "plaintext": text}),
        ("transit_encrypt", {"key": key, "batch_input": [{"plaintext": text}]}),
        ("transit_decrypt", {"key": key, "ciphertext": ciphertext}),
        ("transit_decrypt", {"key": key, "batch_input": [{"ciphertext": ciphertext}]}),
        ("transit_rewrap", {"key": key, "ciphertext": ciphertext}),
        ("transit_sign", {"key": signer, "input": text}),
        ("transit_sign", {"key": signer, "batch_input": [{"input": text}]}),
        ("transit_verify", {"key": signer, "input": text, "signature": signature}),
        ("transit_verify", {"key": key, "input": text, "hmac": mac}),
        ("transit_hmac", {"key": key, "batch_input": [{"input": text}]}),
        ("transit_random", {"bytes": 8}),
        ("transit_create_key", {"key": key}),
        ("kv_metadata", {"path": unique("absent")}),  # an error result: no nulls either
    ]
    for name, arguments in calls:
        result = await tool(api, name, arguments)
        structured = result["structuredContent"]
        assert _nulls(structured) == [], (name, arguments, structured)
        jsonschema.validate(structured, definition(default_registry()[name])["outputSchema"],
                            cls=jsonschema.Draft202012Validator)
        assert json.loads(result["content"][0]["text"]) == structured
    # the schemas themselves admit no null where results never send one
    for op in default_registry().tools():
        for prop, schema in definition(op)["outputSchema"]["properties"].items():
            assert {"type": "null"} not in schema.get("anyOf", []), (op.name, prop)


# -- scopes -----------------------------------------------------------------------------------------------

async def test_destroy_needs_delete_and_undelete_needs_write(api: Client) -> None:
    path = unique("scopes")
    for n in (1, 2):
        assert (await api.put(f"/secrets/{path}", json={"data": {"n": n}}, headers=ALICE)).status == 200
    deleter, writer = {"X-API-Key": DELETER_KEY}, {"X-API-Key": WRITER_KEY}

    resp = await api.post(f"/secrets/{path}:destroy", json={"versions": [1]}, headers=writer)
    assert resp.status == 403
    assert (await error_of(resp))["required_scope"] == "delete"
    resp = await api.post(f"/secrets/{path}:undelete", json={"versions": [2]}, headers=deleter)
    assert resp.status == 403
    assert (await error_of(resp))["required_scope"] == "write"
    assert (await api.post(f"/secrets/{path}:destroy", json={"versions": [1]}, headers=deleter)).status == 200
    assert (await api.delete(f"/secrets/{path}", headers=deleter)).status == 204
    assert (await api.post(f"/secrets/{path}:undelete", json={"versions": [2]}, headers=writer)).status == 200
    meta = await (await api.get(f"/secrets/{path}:metadata", headers=ALICE)).json()
    assert meta["versions"]["1"]["destroyed"] is True
    assert meta["versions"]["2"]["deletion_time"] == ""

    async def listed(key: str) -> set[str]:
        resp = await api.post("/mcp", json=modern_body("tools/list"), headers=modern_headers(key, "tools/list"))
        return {t["name"] for t in (await resp.json())["result"]["tools"]}

    assert {"kv_destroy", "kv_delete"} <= await listed(DELETER_KEY)
    assert "kv_undelete" not in await listed(DELETER_KEY)
    assert "kv_undelete" in await listed(WRITER_KEY)
    assert not {"kv_destroy", "kv_delete"} & await listed(WRITER_KEY)
    resp = await api.post("/mcp", json=modern_body("tools/call", {"name": "kv_destroy", "arguments": {
        "path": path, "versions": [2]}}), headers=modern_headers(WRITER_KEY, "tools/call", "kv_destroy"))
    assert resp.status == 403
    assert (await resp.json())["error"]["data"] == {"code": "insufficient_scope", "required_scope": "delete"}
    assert (await tool(api, "kv_destroy", {"path": path, "versions": [2]}, DELETER_KEY))["isError"] is False
