"""One agent cannot take Vault from everyone (issue 9): the Transit limits, against a listening bridge and a real
OpenBao, through REST and MCP.

Each test reproduces an attack that worked before: an RSA-4096 key (seconds of Vault CPU per create), a 450-item
batch, a 26th key, a batch that cost the rate limit 1 however large it was.
"""

from __future__ import annotations

import asyncio
import base64
import json
import secrets
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from bridge.app import create_app
from bridge.config import Settings
from bridge.provision import ProvisionOptions, provision
from bridge.vault.client import VaultClient
from bridge.vault.errors import VaultNotFoundError
from devtools.devvault import DevVault
from tests.conftest import API_KEY_ALICE, API_KEYS
from tests.mcp.conftest import initialize, legacy_headers, rpc

pytestmark = pytest.mark.integration

Client = TestClient[Any, Any]
ALICE = {"X-API-Key": API_KEY_ALICE}


def b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


@pytest.fixture
async def root(bao: DevVault) -> AsyncIterator[VaultClient]:
    async with VaultClient(bao.addr) as vault:
        yield vault


async def new_agent(bao: DevVault) -> tuple[str, str]:
    """A fresh agent (its own policy provisioned, so child tokens work) and an API key for it."""
    agent = "lim" + secrets.token_hex(4)
    await provision(bao.addr, bao.root_token, ProvisionOptions(agents=[agent]))
    return agent, f"{agent}-key-{secrets.token_hex(12)}"


def with_key(key: str, agent: str, **entry: Any) -> str:
    return json.dumps({**API_KEYS, key: {"agent": agent, **entry} if entry else agent})


Fresh = tuple[str, str, Callable[..., Settings]]


@pytest.fixture
async def fresh(bao: DevVault, child_settings: Callable[..., Settings]) -> Fresh:
    """A fresh agent (no keys yet: the session's other tests share alice), its API key, and child-token settings
    that know the key."""
    agent, key = await new_agent(bao)

    def make(**overrides: Any) -> Settings:
        return child_settings(api_keys_json=with_key(key, agent), **overrides)

    return agent, key, make


async def post(client: Client, op: str, body: dict[str, Any], key: str = API_KEY_ALICE) -> tuple[int, Any, Any]:
    resp = await client.post(f"/transit/{op}", json=body, headers={"X-API-Key": key})
    return resp.status, await resp.json(), resp.headers


async def vault_key_type(root: VaultClient, root_token: str, name: str) -> str | None:
    try:
        return (await root.transit.read_key("transit", name, token=root_token)).type
    except VaultNotFoundError:
        return None


# -- key types --------------------------------------------------------------------------------------------------

async def test_an_rsa_4096_key_is_refused_and_never_reaches_vault(
        aiohttp_client: Callable[..., Any], fresh: Fresh, root: VaultClient, bao: DevVault) -> None:
    agent, key, settings = fresh
    client: Client = await aiohttp_client(create_app(settings()))
    for key_type in ("rsa-4096", "rsa-3072", "ecdsa-p521", "aes128-gcm96"):
        status, body, _ = await post(client, "keys", {"key": "big", "type": key_type}, key)
        assert status == 400, body  # before the fix: 200 after seconds of Vault CPU for the 4096-bit key
        assert body["error"]["code"] == "key_type_not_allowed"
        assert "rsa-2048" in body["error"]["allowed"]
        assert await vault_key_type(root, bao.root_token, f"mcp.{agent}.big") is None  # nothing was created
    for key_type in ("ed25519", "ecdsa-p256", "chacha20-poly1305", "aes256-gcm96", "rsa-2048"):
        status, body, _ = await post(client, "keys", {"key": f"ok-{key_type[:5]}", "type": key_type}, key)
        assert status == 200, body
        assert body["type"] == key_type


async def test_hmac_keys_need_an_explicit_size(aiohttp_client: Callable[..., Any], fresh: Fresh,
                                               root: VaultClient, bao: DevVault) -> None:
    agent, key, settings = fresh
    client: Client = await aiohttp_client(create_app(settings()))
    status, body, _ = await post(client, "keys", {"key": "mac", "type": "hmac"}, key)
    assert status == 400  # without it Vault itself answers a 500
    assert "key_size" in body["error"]["message"]
    status, body, _ = await post(client, "keys", {"key": "mac", "type": "aes256-gcm96", "key_size": 32}, key)
    assert status == 400
    status, body, _ = await post(client, "keys", {"key": "mac", "type": "hmac", "key_size": 64}, key)
    assert status == 200, body  # through the agent's child token: its policy allows key_size
    assert await vault_key_type(root, bao.root_token, f"mcp.{agent}.mac") == "hmac"
    status, body, _ = await post(client, "hmac", {"key": "mac", "input": b64(b"x")}, key)
    assert status == 200
    assert body["hmac"].startswith("vault:v1:")


async def test_the_allowed_types_are_the_operators_choice(aiohttp_client: Callable[..., Any], fresh: Fresh) -> None:
    _, key, settings = fresh
    client: Client = await aiohttp_client(create_app(settings(transit_allowed_key_types="aes256-gcm96")))
    status, body, _ = await post(client, "keys", {"key": "sig", "type": "ed25519"}, key)
    assert (status, body["error"]["code"], body["error"]["allowed"]) == (400, "key_type_not_allowed",
                                                                         ["aes256-gcm96"])


# -- batch size and cost --------------------------------------------------------------------------------------

def batch(n: int) -> list[dict[str, str]]:
    return [{"plaintext": b64(f"item {i}".encode()), "reference": str(i)} for i in range(n)]


async def test_a_450_item_batch_is_400_and_costs_nothing_more(aiohttp_client: Callable[..., Any],
                                                              fresh: Fresh) -> None:
    _, key, settings = fresh
    # one token back every 36 s: none during the test, so the count is exact
    client: Client = await aiohttp_client(create_app(settings(rate_limit_requests=1000,
                                                              rate_limit_window_seconds="10h")))
    assert (await post(client, "keys", {"key": "signer", "type": "ed25519"}, key))[0] == 200
    signing = {"key": "signer", "batch_input": [{"input": b64(f"doc {i}".encode())} for i in range(450)]}
    status, body, headers = await post(client, "sign", signing, key)
    assert status == 400, body  # before the fix: 200, 450 signatures for the price of one request
    assert body["error"]["code"] == "batch_too_large"
    assert body["error"]["max_items"] == 100
    status, body, headers = await post(client, "encrypt", {"key": "bulk", "batch_input": batch(101)}, key)
    assert (status, body["error"]["code"]) == (400, "batch_too_large")
    status, body, headers = await post(client, "encrypt", {"key": "bulk", "batch_input": batch(100)}, key)
    assert status == 200, body
    assert len(body["batch_results"]) == 100
    # the key (1), the refused 450 and 101 (1 each: refused before their items were charged), this batch (100)
    assert headers["RateLimit-Remaining"] == str(1000 - 103)


async def test_a_batch_costs_its_items_against_the_rate_limit(aiohttp_client: Callable[..., Any],
                                                              fresh: Fresh) -> None:
    _, key, settings = fresh
    # one token a minute: nothing refills during the test, every number is exact
    client: Client = await aiohttp_client(create_app(settings(rate_limit_requests=60,
                                                              rate_limit_window_seconds="60m")))
    status, _, headers = await post(client, "encrypt", {"key": "costly", "batch_input": batch(50)}, key)
    assert status == 200
    assert (headers["RateLimit-Limit"], headers["RateLimit-Remaining"]) == ("60", "10")
    status, body, headers = await post(client, "encrypt", {"key": "costly", "batch_input": batch(20)}, key)
    assert status == 429, body  # before the fix the batch cost 1, so 60 batches of 100 items passed an hour
    assert body["error"]["code"] == "rate_limited"
    assert "cost 20" in body["error"]["message"]
    assert headers["RateLimit-Remaining"] == "10"  # a refusal costs nothing
    assert headers["Retry-After"] == headers["RateLimit-Reset"]
    assert 590 < int(headers["Retry-After"]) <= 600  # 10 tokens short, at one a minute
    status, _, headers = await post(client, "encrypt", {"key": "costly", "batch_input": batch(9)}, key)
    assert status == 200
    assert headers["RateLimit-Remaining"] == "1"


async def test_a_batch_larger_than_the_burst_is_400_not_a_retry_forever(
        aiohttp_client: Callable[..., Any], fresh: Fresh) -> None:
    _, key, settings = fresh
    client: Client = await aiohttp_client(create_app(settings(rate_limit_requests=600, rate_limit_burst=30)))
    status, body, _ = await post(client, "encrypt", {"key": "costly", "batch_input": batch(31)}, key)
    assert (status, body["error"]["code"], body["error"]["max_items"]) == (400, "batch_too_large", 30)


async def mcp_call(client: Client, key: str, session: str, name: str, args: dict[str, Any]) -> tuple[int, Any, Any]:
    resp = await client.post("/mcp", json=rpc("tools/call", {"name": name, "arguments": args}),
                             headers=legacy_headers(key, session, **{"MCP-Protocol-Version": "2025-11-25"}))
    text = await resp.text()
    body = json.loads(text.split("data: ", 1)[1]) if text.startswith(("event:", "data:")) else json.loads(text)
    return resp.status, body, resp.headers


async def test_batch_limits_and_cost_apply_to_mcp_tools_too(aiohttp_client: Callable[..., Any],
                                                            fresh: Fresh) -> None:
    _, key, settings = fresh
    client: Client = await aiohttp_client(create_app(settings(rate_limit_requests=60,
                                                              rate_limit_window_seconds="60m")))
    session = await initialize(client, key)  # costs 1
    status, body, _ = await mcp_call(client, key, session, "transit_encrypt",
                                     {"key": "mcpbulk", "batch_input": batch(450)})
    assert status == 200
    assert body["result"]["isError"] is True
    assert body["result"]["structuredContent"]["error"]["code"] == "batch_too_large"
    status, body, headers = await mcp_call(client, key, session, "transit_encrypt",
                                           {"key": "mcpbulk", "batch_input": batch(50)})
    assert status == 200
    assert body["result"]["isError"] is False
    assert headers["RateLimit-Remaining"] == "7"  # 60 - initialize - initialized - the refused 450 - 50
    status, body, headers = await mcp_call(client, key, session, "transit_encrypt",
                                           {"key": "mcpbulk", "batch_input": batch(20)})
    assert status == 429  # refused before Vault, with the limiter's headers
    assert int(headers["Retry-After"]) > 600


# -- keys per agent --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("mode", ["child_tokens", "bridge_token"])
async def test_the_26th_key_is_refused(mode: str, aiohttp_client: Callable[..., Any], bao: DevVault,
                                       make_settings: Callable[..., Settings],
                                       child_settings: Callable[..., Settings], root: VaultClient) -> None:
    """Both ways of creating a key (POST /transit/keys, and an encrypt with a new name, which Vault upserts) count;
    the count holds in a fresh process too (it comes from Vault, not from memory)."""
    agent, key = await new_agent(bao)
    make = child_settings if mode == "child_tokens" else make_settings
    settings = make(api_keys_json=with_key(key, agent), rate_limit_requests=10_000)
    client: Client = await aiohttp_client(create_app(settings))
    for i in range(20):
        status, body, _ = await post(client, "keys", {"key": f"k{i}"}, key)
        assert status == 200, body
    statuses = await asyncio.gather(*(post(client, "encrypt", {"key": f"e{i}", "plaintext": b64(b"x")}, key)
                                      for i in range(10)))  # concurrent: the count and the create are serialised
    assert sorted(s for s, _, _ in statuses) == [200] * 5 + [409] * 5
    status, body, _ = await post(client, "keys", {"key": "one-too-many", "type": "ed25519"}, key)
    assert status == 409, body  # before the fix: 200, and a 26th, 27th … key
    assert body["error"]["code"] == "key_limit_reached"
    assert body["error"]["limit"] == 25
    status, body, _ = await post(client, "encrypt", {"key": "one-more", "plaintext": b64(b"x")}, key)
    assert (status, body["error"]["code"]) == (409, "key_limit_reached")
    # existing keys go on working, and re-creating one is still the idempotent 200
    assert (await post(client, "encrypt", {"key": "k3", "plaintext": b64(b"x")}, key))[0] == 200
    assert (await post(client, "keys", {"key": "k3"}, key))[0] == 200
    names = await root.transit.list_keys("transit", token=bao.root_token)
    assert len([n for n in names if n.startswith(f"mcp.{agent}.")]) == 25
    fresh: Client = await aiohttp_client(create_app(settings))  # another process: nothing remembered
    assert (await post(fresh, "encrypt", {"key": "k7", "plaintext": b64(b"x")}, key))[0] == 200
    assert (await post(fresh, "keys", {"key": "and-another"}, key))[0] == 409
    # other agents are not affected
    assert (await post(fresh, "keys", {"key": "alice-" + secrets.token_hex(3)}))[0] == 200  # alice has room


async def test_the_key_cap_is_a_setting(aiohttp_client: Callable[..., Any], fresh: Fresh) -> None:
    _, key, settings = fresh
    client: Client = await aiohttp_client(create_app(settings(transit_max_keys_per_agent=2)))
    assert [(await post(client, "keys", {"key": f"k{i}"}, key))[0] for i in range(3)] == [200, 200, 409]
    off: Client = await aiohttp_client(create_app(settings(transit_max_keys_per_agent=0)))
    assert (await post(off, "keys", {"key": "k9"}, key))[0] == 200  # 0: no cap
