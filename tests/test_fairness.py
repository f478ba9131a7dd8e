"""One agent cannot take Vault from everyone (issue 9): the in-flight cap and the shared circuit breaker, against
a listening bridge and a slow in-process fake Vault (whose answers a test can hold, time out or fail at will).

- ``AGENT_MAX_INFLIGHT``: one agent's requests beyond the cap wait briefly, then get 429; another agent is served
  at once even while the first holds every slot it may (before the fix it took the whole Vault pool).
- The breaker: a flood of one agent's 4xx and timeouts on expensive calls leaves it closed for everyone else;
  timeouts on cheap calls still open it (Vault really is hung).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from bridge.app import create_app
from bridge.config import Settings
from bridge.keys import VAULT
from devtools.fakevault import DENIED_BODY, FakeVault
from tests.conftest import API_KEY_ALICE, API_KEY_BOB, API_KEYS

ALICE = {"X-API-Key": API_KEY_ALICE}
BOB = {"X-API-Key": API_KEY_BOB}
Client = TestClient[Any, Any]
MakeBridge = Callable[..., Awaitable[tuple[Client, Any]]]


@pytest.fixture
def make_bridge(fake_vault: FakeVault, aiohttp_client: Callable[..., Any]) -> MakeBridge:
    async def make(**overrides: Any) -> tuple[Client, Any]:
        base: dict[str, Any] = {"vault_addr": fake_vault.addr, "vault_token": fake_vault.root_token,
                                "api_keys_json": json.dumps(API_KEYS), "rate_limit_enabled": False}
        # settings a release before the limits did not have are left out, so that the attacks run there too
        base.update({k: v for k, v in overrides.items() if k in Settings.model_fields})
        app = create_app(Settings.from_env({}, **base))
        client: Client = await aiohttp_client(app)
        return client, app

    return make


async def wait_for(condition: Callable[[], bool]) -> None:
    """Poll until ``condition`` holds (at most 10 s: generous for a loaded machine)."""
    async with asyncio.timeout(10):
        while not condition():  # noqa: ASYNC110 - the condition is the fake Vault's request log, no event to wait on
            await asyncio.sleep(0.01)


# -- AGENT_MAX_INFLIGHT --------------------------------------------------------------------------------------

async def test_one_agent_cannot_hold_every_vault_connection(fake_vault: FakeVault, make_bridge: MakeBridge) -> None:
    # a Vault pool of 20 connections; alice's reads hang in Vault until the gate opens
    client, _ = await make_bridge(vault_pool_size=20, agent_inflight_wait="300ms")
    gate = fake_vault.hold("secret/data/mcp/alice/*")

    async def read(headers: dict[str, str], path: str) -> tuple[int, Any]:
        resp = await client.get(f"/secrets/{path}", headers=headers)
        return resp.status, await resp.json() if resp.status != 204 else None

    flood = [asyncio.create_task(read(ALICE, f"slow{i}")) for i in range(40)]
    await wait_for(lambda: len(fake_vault.calls("secret/data/mcp/alice/")) >= 16)
    # alice holds her 16 slots: bob is served now, not after her (before the fix: queued behind 20 of her 40)
    status, _ = await asyncio.wait_for(read(BOB, "fast"), timeout=10)
    assert status == 404  # nothing there: answered by Vault
    # alice's requests beyond the cap waited 300 ms for a slot, then were refused
    await wait_for(lambda: sum(t.done() for t in flood) >= 24)
    refused = [t.result() for t in flood if t.done()]
    assert len(refused) == 24
    assert all(s == 429 and body["error"]["code"] == "too_many_concurrent_requests" for s, body in refused)
    assert len(fake_vault.calls("secret/data/mcp/alice/")) == 16  # never more than 16 of hers reached Vault
    gate.set()
    done = await asyncio.gather(*flood)
    assert sorted(s for s, _ in done) == [404] * 16 + [429] * 24


async def test_waiters_get_the_next_free_slot_and_the_line_is_bounded(fake_vault: FakeVault,
                                                                      make_bridge: MakeBridge) -> None:
    client, _ = await make_bridge(agent_max_inflight=2, agent_inflight_wait="30s")
    gate = fake_vault.hold("secret/data/mcp/alice/*")
    holders = [asyncio.create_task(client.get(f"/secrets/h{i}", headers=ALICE)) for i in range(2)]
    await wait_for(lambda: len(fake_vault.calls("secret/data/mcp/alice/")) == 2)
    waiters = [asyncio.create_task(client.get(f"/secrets/w{i}", headers=ALICE)) for i in range(2)]
    await asyncio.sleep(0.2)
    resp = await client.get("/secrets/x", headers=ALICE)  # two already wait: refused at once, not after 30 s
    assert (resp.status, resp.headers["Retry-After"]) == (429, "1")
    assert len(fake_vault.calls("secret/data/mcp/alice/")) == 2  # the waiters have not reached Vault
    gate.set()
    assert [(await t).status for t in holders + waiters] == [404] * 4  # each waiter got a slot when one freed


# -- the circuit breaker -----------------------------------------------------------------------------------------

async def test_one_agents_4xx_and_slow_expensive_calls_leave_the_breaker_closed(
        fake_vault: FakeVault, make_bridge: MakeBridge) -> None:
    # no background quarantine poll during the test: only the calls made here move the breaker
    client, app = await make_bridge(vault_timeout="300ms", vault_breaker_threshold=3,
                                    quarantine_poll_interval="60s")
    breaker = app[VAULT].breaker
    fake_vault.slow("transit/sign/*", 2.0)  # an expensive signing call that outlasts VAULT_TIMEOUT
    fake_vault.set("transit/hmac/*", status=504)  # a gateway gave up on it
    fake_vault.set("secret/data/mcp/alice/denied*", status=403, body=DENIED_BODY)
    fake_vault.set("secret/data/mcp/alice/bad*", status=400, body={"errors": ["no data provided"]})

    async def alice(kind: int, i: int) -> int:
        if kind == 0:
            resp = await client.post("/transit/sign", json={"key": "k", "input": "eA=="}, headers=ALICE)
        elif kind == 1:
            resp = await client.post("/transit/hmac", json={"key": "k", "input": "eA=="}, headers=ALICE)
        elif i % 2:
            resp = await client.get(f"/secrets/denied{i}", headers=ALICE)
        else:
            resp = await client.put(f"/secrets/bad{i}", json={"data": {"a": 1}}, headers=ALICE)
        return resp.status

    # one wave of each, 8 at a time (within her AGENT_MAX_INFLIGHT: this test is about the breaker)
    statuses = [await asyncio.gather(*(alice(kind, i) for i in range(8))) for kind in range(3)]
    assert statuses[0] == [504] * 8  # vault_timeout: her signatures outlast VAULT_TIMEOUT
    assert statuses[1] == [503] * 8  # the gateway's 504, as vault_unavailable
    assert sorted(set(statuses[2])) == [400, 403]
    assert breaker.state == "closed"  # before the fix: open after 3 of her timeouts, failing everyone
    resp = await client.get("/secrets/fine", headers=BOB)
    assert resp.status == 404  # bob reaches Vault

    # a timeout on a cheap call is a sign Vault itself hangs: that still opens the breaker for everyone
    fake_vault.slow("secret/data/*", 2.0)
    for i in range(3):
        assert (await client.get(f"/secrets/hung{i}", headers=BOB)).status == 504
    assert breaker.state == "open"
    resp = await client.get("/secrets/fine", headers=ALICE)
    assert (resp.status, (await resp.json())["error"]["code"]) == (503, "vault_unavailable")


# -- the key count needs the bridge's own list right ------------------------------------------------------------

async def test_no_list_right_refuses_creation_and_says_why(fake_vault: FakeVault, make_bridge: MakeBridge) -> None:
    client, _ = await make_bridge()
    fake_vault.set("transit/keys", status=403, body=DENIED_BODY)  # the LIST (GET ?list=true)
    resp = await client.post("/transit/encrypt", json={"key": "new", "plaintext": "eA=="}, headers=ALICE)
    body = await resp.json()
    assert (resp.status, body["error"]["code"]) == (502, "key_count_unavailable")
    assert "list" in body["error"]["message"]
    assert not fake_vault.calls("transit/encrypt/")  # nothing was created
