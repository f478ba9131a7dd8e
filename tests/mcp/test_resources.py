"""MCP resources, templates, completion and prompts against a real bridge and the real OpenBao, in both eras:
raw JSON-RPC for the exact wire (caching hints, cursors, error codes), the official SDK for what a client sees.

Each test has an agent of its own (the tests' Vault token is root, so any agent has a namespace; a fresh one is
empty), so listings are exact.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx2
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError
from mcp_types import PromptReference, ResourceTemplateReference

from tests.mcp.conftest import McpClientFactory, Rpc, ServerFactory, unique_agent

pytestmark = pytest.mark.integration

CANARY = "canary-VALUE-7f3a9c"


async def _seed(rpc: Rpc) -> None:
    for path in ("db/prod", "db/dev", "app", "z/deep/er/one"):
        await rpc.tool("kv_write", {"path": path, "data": {"password": CANARY, "path": path}})
    await rpc.tool("transit_create_key", {"key": "signer", "type": "ed25519"})


@pytest.mark.parametrize("modern", [False, True], ids=["2025-11-25", "2026-07-28"])
async def test_list_read_and_templates(mcp_client: McpClientFactory, modern: bool) -> None:
    agent, key = unique_agent("res")
    client = await mcp_client(api_keys_json=json.dumps({key: agent}))
    rpc = Rpc(client, key, modern=modern)
    await _seed(rpc)
    await rpc.tool("kv_write", {"path": "db/prod", "data": {"password": CANARY, "v": 2}})  # version 2

    listed = await rpc.result("resources/list")
    assert CANARY not in json.dumps(listed)  # names, versions and times: never a value
    uris = [r["uri"] for r in listed["resources"]]
    assert uris == ["vault://kv/app", "vault://kv/db/dev", "vault://kv/db/prod", "vault://kv/z/deep/er/one",
                    "vault://transit/signer"]
    prod = listed["resources"][2]
    assert prod["name"] == "db/prod"
    assert prod["mimeType"] == "application/json"
    assert "version 2" in prod["description"]
    assert prod["annotations"]["lastModified"].startswith("20")
    assert "ed25519" in listed["resources"][4]["description"]
    assert "nextCursor" not in listed
    if modern:
        assert (listed["ttlMs"], listed["cacheScope"], listed["resultType"]) == (10_000, "private", "complete")
    else:
        assert "ttlMs" not in listed
        assert "resultType" not in listed

    read = await rpc.result("resources/read", {"uri": "vault://kv/db/prod"})
    (content,) = read["contents"]
    assert content["uri"] == "vault://kv/db/prod"
    assert content["mimeType"] == "application/json"
    # exactly what the kv_read tool answers
    assert json.loads(content["text"]) == await rpc.tool("kv_read", {"path": "db/prod"})
    if modern:
        assert (read["ttlMs"], read["cacheScope"]) == (0, "private")  # a value is never served from a cache
    key_read = await rpc.result("resources/read", {"uri": "vault://transit/signer"})
    info = json.loads(key_read["contents"][0]["text"])
    assert info == {"key": "signer", "type": "ed25519", "latest_version": 1, "supports_encryption": False,
                    "supports_decryption": False, "supports_signing": True}  # no key material, not even public

    templates = await rpc.result("resources/templates/list")
    assert [t["uriTemplate"] for t in templates["resourceTemplates"]] == ["vault://kv/{path}", "vault://transit/{key}"]
    if modern:
        assert templates["cacheScope"] in ("public", "private")
        assert templates["ttlMs"] >= 0


@pytest.mark.parametrize("modern", [False, True], ids=["2025-11-25", "2026-07-28"])
async def test_not_found_deleted_and_foreign(mcp_client: McpClientFactory, modern: bool) -> None:
    """Deleted and destroyed secrets are not listed, and reading them (or anything not ours, or not a vault://
    URI) is the era's "resource not found" with data.uri; another agent's path names the caller's own namespace."""
    agent, key = unique_agent("res")
    other, other_key = unique_agent("res")
    client = await mcp_client(api_keys_json=json.dumps({key: agent, other_key: other}))
    rpc = Rpc(client, key, modern=modern)
    for path in ("kept", "deleted", "destroyed"):
        await rpc.tool("kv_write", {"path": path, "data": {"v": CANARY}})
    await rpc.tool("kv_delete", {"path": "deleted"})
    await rpc.tool("kv_destroy", {"path": "destroyed", "versions": [1]})
    listed = await rpc.result("resources/list")
    assert [r["uri"] for r in listed["resources"]] == ["vault://kv/kept"]
    code = -32602 if modern else -32002
    for uri in ("vault://kv/deleted", "vault://kv/destroyed", "vault://kv/missing", "vault://kv/../x",
                "test://nonexistent-resource-for-conformance-testing", "vault://transit/nokey",
                f"vault://kv/{'a' * 600}"):
        status, body = await rpc.call("resources/read", {"uri": uri})
        assert status == 200, (uri, body)
        assert body["error"]["code"] == code, (uri, body)
        assert body["error"]["data"]["uri"] == uri
        assert "contents" not in body
    # the other agent sees nothing of ours, and "kept" in its namespace does not exist
    theirs = Rpc(client, other_key, modern=modern)
    assert (await theirs.result("resources/list"))["resources"] == []
    status, body = await theirs.call("resources/read", {"uri": "vault://kv/kept"})
    assert body["error"]["code"] == code


async def test_scopes_and_audit(mcp_client: McpClientFactory, tmp_path: Path) -> None:
    """resources/read is kv_read: an identity without the read scope gets the tool's 403 insufficient_scope (with
    its challenge), one without list an empty list; every read is audited as kv_read."""
    agent, key = unique_agent("res")
    write_only = agent + "-w-" + "x" * 24
    list_only = agent + "-l-" + "x" * 24
    audit = tmp_path / "audit.log"
    client = await mcp_client(audit_log=str(audit), api_keys_json=json.dumps({
        key: agent, write_only: {"agent": agent, "scopes": ["write"]},
        list_only: {"agent": agent, "scopes": ["list"]}}))
    await Rpc(client, key, modern=True).tool("kv_write", {"path": "s", "data": {"v": CANARY}})
    for modern in (False, True):
        assert (await Rpc(client, write_only, modern=modern).result("resources/list"))["resources"] == []
        status, body = await Rpc(client, list_only, modern=modern).call("resources/read", {"uri": "vault://kv/s"})
        assert status == 403, body
        assert body["error"]["code"] == -31403
        assert body["error"]["data"] == {"code": "insufficient_scope", "required_scope": "use",
                                         "accepted_scopes": ["use", "read"]}
    assert [r["uri"] for r in (await Rpc(client, list_only, modern=True).result("resources/list"))["resources"]] \
        == ["vault://kv/s"]
    await Rpc(client, key, modern=False).result("resources/read", {"uri": "vault://kv/s"})
    records = [json.loads(line) for line in audit.read_text().splitlines()]
    reads = [r for r in records if r.get("operation") == "kv_read"]
    assert [r["outcome"] for r in reads] == ["denied", "denied", "ok"]
    assert all(r["agent"] == agent and r["path"] == "s" for r in reads)
    assert CANARY not in audit.read_text()


async def test_pagination(mcp_client: McpClientFactory) -> None:
    agent, key = unique_agent("page")
    client = await mcp_client(api_keys_json=json.dumps({key: agent}), mcp_page_size=2)
    rpc = Rpc(client, key, modern=True)
    paths = ["a", "b/c", "b/d", "e", "f/g/h"]
    for path in paths:
        await rpc.tool("kv_write", {"path": path, "data": {"v": 1}})
    for name in ("k1", "k2"):
        await rpc.tool("transit_create_key", {"key": name})
    seen: list[str] = []
    cursor = None
    for _ in range(10):
        page = await rpc.result("resources/list", {"cursor": cursor} if cursor else {})
        assert len(page["resources"]) <= 2
        seen += [r["uri"] for r in page["resources"]]
        cursor = page.get("nextCursor")
        if cursor is None:
            break
    assert seen == [f"vault://kv/{p}" for p in paths] + ["vault://transit/k1", "vault://transit/k2"]
    _, body = await rpc.call("resources/list", {"cursor": "not-a-cursor"})
    assert body["error"]["code"] == -32602


@pytest.mark.parametrize("modern", [False, True], ids=["2025-11-25", "2026-07-28"])
async def test_completion(mcp_client: McpClientFactory, modern: bool) -> None:
    agent, key = unique_agent("cmp")
    other, other_key = unique_agent("cmp")
    client = await mcp_client(api_keys_json=json.dumps({key: agent, other_key: other}))
    rpc = Rpc(client, key, modern=modern)
    await _seed(rpc)
    await Rpc(client, other_key, modern=modern).tool("kv_write", {"path": "dz-theirs", "data": {"v": 1}})

    async def complete(ref: dict[str, Any], name: str, value: str, as_rpc: Rpc = rpc) -> dict[str, Any]:
        result = await as_rpc.result("completion/complete", {"ref": ref, "argument": {"name": name, "value": value}})
        if modern:
            assert result["resultType"] == "complete"
            assert "ttlMs" not in result
        completion: dict[str, Any] = result["completion"]
        return completion

    template = {"type": "ref/resource", "uri": "vault://kv/{path}"}
    assert (await complete(template, "path", "db/"))["values"] == ["db/dev", "db/prod"]
    assert (await complete(template, "path", "db/p"))["values"] == ["db/prod"]
    assert (await complete(template, "path", "d")) == {"values": ["db/"], "total": 1, "hasMore": False}
    assert (await complete(template, "path", ""))["values"] == ["app", "db/", "z/"]
    assert (await complete(template, "path", "z/deep/er/"))["values"] == ["z/deep/er/one"]
    assert (await complete(template, "path", "../"))["values"] == []
    prompt = {"type": "ref/prompt", "name": "rotate_secret"}
    assert (await complete(prompt, "path", "db/d"))["values"] == ["db/dev"]
    assert (await complete({"type": "ref/prompt", "name": "encrypt_payload"}, "key", "si"))["values"] == ["signer"]
    assert (await complete({"type": "ref/resource", "uri": "vault://transit/{key}"}, "key", ""))["values"] == \
        ["signer"]
    # never another agent's listing; unknown prompts and arguments complete to nothing (the conformance probe)
    assert (await complete(template, "path", "d", Rpc(client, other_key, modern=modern)))["values"] == ["dz-theirs"]
    assert await complete({"type": "ref/prompt", "name": "test_prompt_with_arguments"}, "arg1", "test") == \
        {"values": [], "total": 0, "hasMore": False}
    assert (await complete(prompt, "nope", ""))["values"] == []
    _, body = await rpc.call("completion/complete", {"ref": {"type": "ref/other"},
                                                     "argument": {"name": "path", "value": ""}})
    assert body["error"]["code"] == -32602


@pytest.mark.parametrize("modern", [False, True], ids=["2025-11-25", "2026-07-28"])
async def test_prompts(mcp_client: McpClientFactory, modern: bool) -> None:
    agent, key = unique_agent("prm")
    read_only = agent + "-ro-" + "r" * 24
    client = await mcp_client(api_keys_json=json.dumps({key: agent, read_only: {"agent": agent,
                                                                                 "scopes": ["read", "list"]}}))
    rpc = Rpc(client, key, modern=modern)
    listed = await rpc.result("prompts/list")
    assert [(p["name"], [(a["name"], a["required"]) for a in p["arguments"]]) for p in listed["prompts"]] == [
        ("store_credential", [("path", True), ("description", False)]),
        ("rotate_secret", [("path", True), ("key", False)]),
        ("encrypt_payload", [("key", True)])]
    assert all(p["description"] and p["title"] for p in listed["prompts"])
    if modern:
        assert listed["ttlMs"] >= 0
        assert listed["cacheScope"] == "public"

    async def text(name: str, arguments: dict[str, str], as_rpc: Rpc = rpc) -> str:
        got = await as_rpc.result("prompts/get", {"name": name, "arguments": arguments})
        assert got["description"]
        (message,) = got["messages"]
        assert message["role"] == "user"
        assert message["content"]["type"] == "text"
        value: str = message["content"]["text"]
        return value

    stored = await text("store_credential", {"path": "db/prod", "description": "the production password"})
    assert "'db/prod'" in stored
    assert "the production password" in stored
    assert "Never ask the user to paste the value into the chat" in stored
    assert "kv_metadata" in stored
    rotated = await text("rotate_secret", {"path": "db/prod", "key": "password"})
    assert "kv_metadata" in rotated
    assert "transit_random" in rotated
    assert "kv_patch with path 'db/prod', data {\"password\": <the new value>} and cas N" in rotated
    assert "cas_mismatch" in rotated
    whole = await text("rotate_secret", {"path": "db/prod"})
    assert "kv_write with path 'db/prod', the complete new data and cas N" in whole
    encrypted = await text("encrypt_payload", {"key": "payload-key"})
    assert "transit_encrypt with key 'payload-key'" in encrypted
    assert "transit_decrypt" in encrypted
    # the recipes name only the tools the caller can use
    ro = Rpc(client, read_only, modern=modern)
    assert "You cannot write this secret" in await text("rotate_secret", {"path": "db/prod"}, ro)
    assert "You cannot encrypt" in await text("encrypt_payload", {"key": "k"}, ro)
    # bad requests are -32602
    for name, arguments in (("nope", {}), ("store_credential", {}), ("store_credential", {"path": "../x"}),
                            ("rotate_secret", {"path": "a", "extra": "b"}), ("encrypt_payload", {"key": "Bad Key"}),
                            ("store_credential", {"path": 7})):
        status, body = await rpc.call("prompts/get", {"name": name, "arguments": arguments})
        assert status == 200
        assert body["error"]["code"] == -32602, (name, arguments, body)


@pytest.mark.parametrize("mode", ["legacy", "2026-07-28", "auto"])
async def test_through_the_sdk(mcp_server: ServerFactory, mode: str) -> None:
    agent, key = unique_agent("sdk")
    url = await mcp_server(api_keys_json=json.dumps({key: agent}))
    async with (
        httpx2.AsyncClient(headers={"X-API-Key": key}, timeout=10) as http,
        Client(streamable_http_client(url, http_client=http), mode=mode) as client,
    ):
        await client.call_tool("kv_write", {"path": "db/prod", "data": {"password": CANARY}})
        resources = await client.list_resources()
        assert [str(r.uri) for r in resources.resources] == ["vault://kv/db/prod"]
        read = await client.read_resource("vault://kv/db/prod")
        assert json.loads(read.contents[0].text)["data"] == {"password": CANARY}  # type: ignore[union-attr]
        templates = await client.list_resource_templates()
        assert templates.resource_templates[0].uri_template == "vault://kv/{path}"
        completed = await client.complete(ResourceTemplateReference(type="ref/resource", uri="vault://kv/{path}"),
                                          {"name": "path", "value": "db/"})
        assert completed.completion.values == ["db/prod"]
        completed = await client.complete(PromptReference(type="ref/prompt", name="rotate_secret"),
                                          {"name": "path", "value": "d"})
        assert completed.completion.values == ["db/"]
        prompts = await client.list_prompts()
        assert [p.name for p in prompts.prompts] == ["store_credential", "rotate_secret", "encrypt_payload"]
        got = await client.get_prompt("rotate_secret", {"path": "db/prod"})
        assert "cas" in got.messages[0].content.text  # type: ignore[union-attr]
        with pytest.raises(MCPError) as exc:
            await client.read_resource("vault://kv/missing")
        assert exc.value.code == (-32002 if mode == "legacy" else -32602)
