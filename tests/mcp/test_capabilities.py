"""Tools that match the agent's real Vault rights: ``tools/list`` and ``GET /whoami``'s ``capabilities`` ask Vault
(``sys/capabilities-self`` with the token the agent's calls use) and follow a policy change within
``CAPABILITIES_TTL``; a hidden tool called anyway is refused by Vault as before.

Real OpenBao, the provisioned AppRole and child tokens: the agent's policy is ``mcp-agent-<agent>`` (what the
child-token role allows), written here by the test with the root token.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from typing import Any

import pytest
from aiohttp import ClientSession

from bridge.app import create_app
from bridge.config import Settings
from devtools.devvault import DevVault
from tests.mcp.conftest import Rpc, unique_agent

pytestmark = pytest.mark.integration

READ_ONLY = """
path "secret/data/mcp/{agent}/*" {{ capabilities = ["read"] }}
path "secret/metadata/mcp/{agent}/*" {{ capabilities = ["read", "list"] }}
path "sys/capabilities-self" {{ capabilities = ["update"] }}
"""
READ_WRITE = READ_ONLY + """
path "secret/data/mcp/{agent}/*" {{ capabilities = ["create", "read", "update"] }}
"""


async def _vault(bao: DevVault, method: str, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
    async with ClientSession() as http, http.request(method, f"{bao.addr}/v1/{path}", json=body,
                                                      headers={"X-Vault-Token": bao.root_token}) as resp:
        assert resp.status in (200, 204), await resp.text()
        return await resp.json() if resp.status == 200 else {}


async def _policy(bao: DevVault, name: str, hcl: str) -> None:
    await _vault(bao, "PUT", f"sys/policies/acl/{name}", {"policy": hcl})


async def _tools(rpc: Rpc) -> list[str]:
    return [t["name"] for t in (await rpc.result("tools/list"))["tools"]]


async def test_tools_follow_the_agents_policy(aiohttp_client: Callable[..., Any], bao: DevVault,
                                              child_settings: Callable[..., Settings]) -> None:
    agent, key = unique_agent("cap")
    await _policy(bao, f"mcp-agent-{agent}", READ_ONLY.format(agent=agent))
    client = await aiohttp_client(create_app(child_settings(api_keys_json=json.dumps({key: agent}),
                                                            capabilities_ttl=1)))
    for modern in (False, True):
        rpc = Rpc(client, key, modern=modern)
        tools = await _tools(rpc)
        assert "kv_read" in tools
        assert "kv_list" in tools
        assert "kv_metadata" in tools
        for hidden in ("kv_write", "kv_patch", "kv_delete", "kv_undelete", "kv_destroy", "transit_encrypt"):
            assert hidden not in tools, hidden
        assert "whoami" in tools  # needs nothing of Vault
    whoami = await (await client.get("/whoami", headers={"X-API-Key": key})).json()
    assert whoami["capabilities"] == ["kv_read", "kv_list", "kv_metadata", "http_request", "whoami", "lease_list",
                                      "lease_resolve"]

    # hidden, called anyway: refused exactly as before, by Vault's own 403
    rpc = Rpc(client, key, modern=True)
    result = await rpc.result("tools/call", {"name": "kv_write", "arguments": {"path": "a", "data": {"v": 1}}})
    assert result["isError"]
    assert result["structuredContent"]["error"]["code"] == "forbidden"

    # a policy change shows within CAPABILITIES_TTL (1 s here)
    await _policy(bao, f"mcp-agent-{agent}", READ_WRITE.format(agent=agent))
    changed = time.monotonic()
    while "kv_write" not in await _tools(rpc):
        assert time.monotonic() - changed < 10, "kv_write never appeared"
        await asyncio.sleep(0.2)
    assert "kv_delete" not in await _tools(rpc)
    assert not (await rpc.result("tools/call", {"name": "kv_write",
                                                "arguments": {"path": "a", "data": {"v": 1}}}))["isError"]


async def test_without_child_tokens_the_bridge_token_is_asked(make_settings: Callable[..., Settings],
                                                              aiohttp_client: Callable[..., Any],
                                                              bao: DevVault) -> None:
    """Without child tokens every call uses the bridge's own token: its capabilities decide (a root token has
    them all). A token that may not ask (no default policy, no grant) hides nothing."""
    agent, key = unique_agent("cap")
    await _policy(bao, f"bridge-ro-{agent}", READ_ONLY.format(agent=agent))
    asking = (await _vault(bao, "POST", "auth/token/create", {"policies": [f"bridge-ro-{agent}"],
                                                              "no_default_policy": True, "ttl": "10m"}))
    mute = (await _vault(bao, "POST", "auth/token/create", {"policies": [f"bridge-ro-{agent}-none"],
                                                            "no_default_policy": True, "ttl": "10m"}))
    keys = json.dumps({key: agent})
    expected = {"root": True, "asking": False, "mute": True}  # is kv_write listed?
    for name, token in (("root", bao.root_token), ("asking", asking["auth"]["client_token"]),
                        ("mute", mute["auth"]["client_token"])):
        client = await aiohttp_client(create_app(make_settings(vault_token=token, api_keys_json=keys)))
        tools = await _tools(Rpc(client, key, modern=True))
        assert ("kv_write" in tools) is expected[name], (name, tools)
        assert "kv_read" in tools
