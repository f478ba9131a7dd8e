"""Told when a secret changes, against a real bridge and the real OpenBao: 2025-11-25 ``resources/subscribe`` with
the session's ``GET /mcp`` stream, 2026-07-28 ``subscriptions/listen``; the official SDK in both eras and raw SSE
for the exact wire (acknowledgment first, subscription ids, keep-alives, graceful close at shutdown).

Absence is proven without sleeping: after the event that must not arrive, a sentinel change that must arrive is
made on the same stream; the stream is ordered, so whatever was not there before the sentinel never will be.
"""

from __future__ import annotations

import asyncio
import json
import signal
import time
import warnings
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import httpx2
import mcp_types
import pytest
from aiohttp import ClientResponse, ClientSession, ClientTimeout, CookieJar
from aiohttp.test_utils import TestServer
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.subscriptions import ResourceUpdated

from bridge.app import create_app
from bridge.config import Settings
from devtools.devvault import DevVault
from tests.mcp.conftest import (
    MCP_ACCEPT,
    ServerFactory,
    legacy_headers,
    modern_body,
    modern_headers,
    rpc,
    unique_agent,
)
from tests.support.servers import BridgeProcess, RedisServer

pytestmark = pytest.mark.integration

WAIT = 10.0
"""The most a test waits for an event that must come (it comes in milliseconds)."""


# -- SDK clients ----------------------------------------------------------------------------------------------------

@asynccontextmanager
async def sdk(url: str, key: str, mode: str, received: list[str] | None = None) -> AsyncIterator[Client]:
    async def on_message(message: Any) -> None:
        if received is not None and isinstance(message, mcp_types.ResourceUpdatedNotification):
            received.append(str(message.params.uri))

    async with (
        httpx2.AsyncClient(headers={"X-API-Key": key}, timeout=httpx2.Timeout(10, read=60)) as http,
        Client(streamable_http_client(url, http_client=http), mode=mode, message_handler=on_message) as client,
    ):
        yield client


async def until(check: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + WAIT
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"never: {what}")
        await asyncio.sleep(0.02)


async def subscribe(client: Client, uri: str) -> None:
    with warnings.catch_warnings():  # subscribe_resource is deprecated by the 2026 revision, not gone
        warnings.simplefilter("ignore")
        await client.subscribe_resource(uri)


async def unsubscribe(client: Client, uri: str) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        await client.unsubscribe_resource(uri)


async def test_handshake_era_subscribe_and_get_stream(mcp_server: ServerFactory) -> None:
    """Every change through the bridge (write, patch, delete, undelete, destroy) reaches the session's GET stream;
    another agent's change of the same path never does; unsubscribe stops it."""
    alice, alice_key = unique_agent("sub")
    bob, bob_key = unique_agent("sub")
    url = await mcp_server(api_keys_json=json.dumps({alice_key: alice, bob_key: bob}))
    got: list[str] = []
    async with sdk(url, alice_key, "legacy", got) as client, sdk(url, bob_key, "legacy") as other:
        await client.call_tool("kv_write", {"path": "db/prod", "data": {"v": 1}})
        await subscribe(client, "vault://kv/db/prod")
        await subscribe(client, "vault://kv/sentinel")
        await subscribe(client, "test://not-ours")  # accepted, never fires
        await other.call_tool("kv_write", {"path": "db/prod", "data": {"v": "bob's"}})  # bob's own db/prod
        changes: list[tuple[str, dict[str, Any]]] = [
            ("kv_write", {"data": {"v": 2}}), ("kv_patch", {"data": {"w": 3}}), ("kv_delete", {}),
            ("kv_undelete", {"versions": [3]}), ("kv_destroy", {"versions": [1]})]
        for count, (tool, arguments) in enumerate(changes, 1):
            result = await client.call_tool(tool, {"path": "db/prod", **arguments})
            assert not result.is_error, result
            await until(lambda n=count: len(got) == n, f"notification {count} ({tool})")  # type: ignore[misc]
        assert got == ["vault://kv/db/prod"] * len(changes)  # nothing of bob's
        await unsubscribe(client, "vault://kv/db/prod")
        await client.call_tool("kv_write", {"path": "db/prod", "data": {"v": 9}})
        await client.call_tool("kv_write", {"path": "sentinel", "data": {"v": 1}})
        await until(lambda: len(got) == len(changes) + 1, "the sentinel")
        assert got[-1] == "vault://kv/sentinel"


async def test_listen_stream_through_the_sdk(mcp_server: ServerFactory, bao: DevVault) -> None:
    """2026-07-28: the acknowledgment names the honoured URIs (the caller's own vault:// ones); an update arrives
    for a write through the bridge and, by polling, for a write made to Vault directly; never another agent's."""
    alice, alice_key = unique_agent("lsn")
    bob, bob_key = unique_agent("lsn")
    url = await mcp_server(api_keys_json=json.dumps({alice_key: alice, bob_key: bob}),
                           subscription_poll_interval=0.2)
    async with sdk(url, alice_key, "2026-07-28") as client, sdk(url, bob_key, "2026-07-28") as other:
        wanted = ["vault://kv/app/token", "vault://kv/direct", "test://elsewhere", "vault://kv/../escape"]
        async with client.listen(resource_subscriptions=wanted, tools_list_changed=True) as sub, \
                other.listen(resource_subscriptions=["vault://kv/app/token"]) as bob_sub:
            assert sub.honored.resource_subscriptions == ["vault://kv/app/token", "vault://kv/direct"]
            assert not sub.honored.tools_list_changed
            events = aiter(sub)
            await other.call_tool("kv_write", {"path": "app/token", "data": {"v": "bob"}})
            assert await asyncio.wait_for(anext(aiter(bob_sub)), WAIT) == ResourceUpdated(uri="vault://kv/app/token")
            await client.call_tool("kv_write", {"path": "app/token", "data": {"v": 1}})
            assert await asyncio.wait_for(anext(events), WAIT) == ResourceUpdated(uri="vault://kv/app/token")
            await direct_write(bao, alice, "direct")
            assert await asyncio.wait_for(anext(events), WAIT) == ResourceUpdated(uri="vault://kv/direct")


async def direct_write(bao: DevVault, agent: str, path: str) -> None:
    """A write made to Vault directly (not through the bridge): only the poller can notice it."""
    async with ClientSession() as http, http.post(f"{bao.addr}/v1/secret/data/mcp/{agent}/{path}",
                                                  json={"data": {"direct": True}},
                                                  headers={"X-Vault-Token": bao.root_token}) as resp:
        assert resp.status == 200, await resp.text()


# -- raw SSE ---------------------------------------------------------------------------------------------------------

class Sse:
    """The events of one SSE response: ``next()`` is the next event's JSON, or ``":"`` for a comment."""

    def __init__(self, resp: ClientResponse) -> None:
        self.resp = resp

    async def next(self) -> Any:
        data: list[str] = []
        while True:
            raw = await asyncio.wait_for(self.resp.content.readline(), WAIT)
            if not raw:
                return None  # the stream ended
            line = raw.decode().rstrip("\r\n")
            if line.startswith(":"):
                if not data:
                    return ":"
                continue
            if line.startswith("data:"):
                data.append(line[5:].lstrip())
            elif line == "" and data:
                return json.loads("\n".join(data))

    async def message(self) -> dict[str, Any]:
        while (event := await self.next()) == ":":
            pass
        assert isinstance(event, dict), event
        return event


def listen_request(key: str, uris: list[str], *, listen_id: str | int = "L-1",
                   extra: dict[str, Any] | None = None) -> tuple[dict[str, Any], dict[str, str]]:
    body = modern_body("subscriptions/listen", {"notifications": {"resourceSubscriptions": uris, **(extra or {})}},
                       msg_id=listen_id)
    return body, modern_headers(key, "subscriptions/listen")


async def call_tool(http: ClientSession, url: str, key: str, name: str, arguments: dict[str, Any]) -> None:
    async with http.post(url, json=modern_body("tools/call", {"name": name, "arguments": arguments}),
                         headers=modern_headers(key, "tools/call", name)) as resp:
        body = await resp.json()
        assert resp.status == 200, body
        assert not body["result"]["isError"], body


async def test_listen_wire(mcp_server: ServerFactory) -> None:
    """The SSE response: event-stream headers (X-Accel-Buffering: no), the acknowledgment first with the listen
    request's id, keep-alive comments, and every notification tagged with that id; a filter asking only for
    list changes is acknowledged empty."""
    agent, key = unique_agent("wire")
    url = await mcp_server(api_keys_json=json.dumps({key: agent}), subscription_keepalive=0.2)
    async with ClientSession(timeout=ClientTimeout(total=60)) as http:
        body, headers = listen_request(key, ["vault://kv/one", "file:///etc/passwd"], extra={"toolsListChanged": True})
        async with http.post(url, json=body, headers=headers) as resp:
            assert resp.status == 200
            assert resp.headers["Content-Type"].startswith("text/event-stream")
            assert resp.headers["X-Accel-Buffering"] == "no"
            assert resp.headers["Cache-Control"] == "no-cache"
            assert len(resp.headers["X-Request-Id"]) == 32
            stream = Sse(resp)
            assert await stream.message() == {
                "jsonrpc": "2.0", "method": "notifications/subscriptions/acknowledged",
                "params": {"_meta": {"io.modelcontextprotocol/subscriptionId": "L-1"},
                           "notifications": {"resourceSubscriptions": ["vault://kv/one"]}}}
            assert await stream.next() == ":"  # a keep-alive comment within SUBSCRIPTION_KEEPALIVE
            await call_tool(http, url, key, "kv_write", {"path": "one", "data": {"v": 1}})
            assert await stream.message() == {
                "jsonrpc": "2.0", "method": "notifications/resources/updated",
                "params": {"_meta": {"io.modelcontextprotocol/subscriptionId": "L-1"}, "uri": "vault://kv/one"}}
        body, headers = listen_request(key, [], listen_id=7)
        body["params"]["notifications"] = {"promptsListChanged": True}
        async with http.post(url, json=body, headers=headers) as resp:
            ack = await Sse(resp).message()
            assert ack["params"] == {"_meta": {"io.modelcontextprotocol/subscriptionId": 7}, "notifications": {}}


async def test_get_stream_refusals_and_supersede(mcp_server: ServerFactory) -> None:
    agent, key = unique_agent("get")
    url = await mcp_server(api_keys_json=json.dumps({key: agent}))
    base = url.rsplit("/mcp", 1)[0]
    async with ClientSession(base, timeout=ClientTimeout(total=60)) as http:
        init = await http.post("/mcp", json=rpc("initialize", {"protocolVersion": "2025-11-25", "capabilities": {},
                                                               "clientInfo": {"name": "t", "version": "1"}}),
                               headers=legacy_headers(key))
        session = init.headers["Mcp-Session-Id"]
        get_headers = {"X-API-Key": key, "Mcp-Session-Id": session, "MCP-Protocol-Version": "2025-11-25",
                       "Accept": "text/event-stream"}
        async with http.get("/mcp", headers={**get_headers, "Accept": "application/json"}) as resp:
            assert resp.status == 406
        async with http.get("/mcp", headers={**get_headers, "Mcp-Session-Id": session[:-2] + "xx"}) as resp:
            assert resp.status == 404
            assert (await resp.json())["error"]["data"]["code"] == "session_not_found"
        async with http.get("/mcp", headers=get_headers) as first:
            assert first.status == 200
            assert first.headers["Content-Type"].startswith("text/event-stream")
            assert await Sse(first).next() == ":"  # ": stream open"
            async with http.get("/mcp", headers=get_headers) as second:  # the same session again: it wins
                assert second.status == 200
                assert await Sse(first).next() is None  # the first stream ended
                await http.post("/mcp", json=rpc("resources/subscribe", {"uri": "vault://kv/x"}, msg_id=2),
                                headers=legacy_headers(key, session, **{"MCP-Protocol-Version": "2025-11-25"}))
                await call_tool(http, "/mcp", key, "kv_write", {"path": "x", "data": {"v": 1}})
                stream = Sse(second)
                assert await stream.message() == {"jsonrpc": "2.0", "method": "notifications/resources/updated",
                                                  "params": {"uri": "vault://kv/x"}}


async def test_streams_hold_no_inflight_slot(mcp_server: ServerFactory) -> None:
    """A stream waits for changes, not on Vault: with AGENT_MAX_INFLIGHT=1 an open stream leaves the agent its
    one slot for calls."""
    agent, key = unique_agent("slot")
    url = await mcp_server(api_keys_json=json.dumps({key: agent}), agent_max_inflight=1, agent_inflight_wait=0.1)
    async with ClientSession(timeout=ClientTimeout(total=60)) as http:
        body, headers = listen_request(key, ["vault://kv/a"])
        async with http.post(url, json=body, headers=headers) as stream:
            await Sse(stream).message()
            await call_tool(http, url, key, "whoami", {})


async def test_shutdown_ends_streams_gracefully(aiohttp_server: Callable[..., Any],
                                                make_settings: Callable[..., Settings]) -> None:
    """At shutdown a listen stream gets its graceful result (the listen request's response, with its id) and ends,
    a GET stream ends; the server's shutdown does not wait on them."""
    agent, key = unique_agent("stop")
    server: TestServer = await aiohttp_server(create_app(make_settings(api_keys_json=json.dumps({key: agent}))))
    url = str(server.make_url("/mcp"))
    async with ClientSession(timeout=ClientTimeout(total=60)) as http:
        session = await initialize_session(http, url, key)
        body, headers = listen_request(key, ["vault://kv/a"], listen_id=42)
        async with http.post(url, json=body, headers=headers) as listen, \
                http.get(url, headers={"X-API-Key": key, "Mcp-Session-Id": session, "Accept": MCP_ACCEPT,
                                       "MCP-Protocol-Version": "2025-11-25"}) as get:
            listen_stream, get_stream = Sse(listen), Sse(get)
            await listen_stream.message()
            assert await get_stream.next() == ":"
            started = time.monotonic()
            await asyncio.wait_for(server.close(), WAIT)
            assert time.monotonic() - started < WAIT
            assert await listen_stream.message() == {
                "jsonrpc": "2.0", "id": 42,
                "result": {"resultType": "complete", "_meta": {"io.modelcontextprotocol/subscriptionId": 42}}}
            assert await listen_stream.next() is None
            assert await get_stream.next() is None


async def initialize_session(http: ClientSession, url: str, key: str) -> str:
    async with http.post(url, json=rpc("initialize", {"protocolVersion": "2025-11-25", "capabilities": {},
                                                     "clientInfo": {"name": "t", "version": "1"}}),
                         headers=legacy_headers(key)) as resp:
        assert resp.status == 200
        session: str = resp.headers["Mcp-Session-Id"]
    async with http.post(url, json=rpc("notifications/initialized", msg_id=None),
                         headers=legacy_headers(key, session, **{"MCP-Protocol-Version": "2025-11-25"})) as resp:
        assert resp.status == 202
    return session


async def test_replicas_share_subscriptions_and_changes(aiohttp_server: Callable[..., Any],
                                                       make_settings: Callable[..., Settings],
                                                       redis_server: RedisServer) -> None:
    """Two replicas on one Redis: a session subscribes on one and holds its GET stream on the other; a listen
    stream on one; writes through the other reach both within a second. Another agent's write of the same path
    never does."""
    alice, alice_key = unique_agent("rep")
    bob, bob_key = unique_agent("rep")
    settings = make_settings(api_keys_json=json.dumps({alice_key: alice, bob_key: bob}), redis_url=redis_server.url,
                             mcp_session_secret="replica-secret-" + "s" * 20)
    one: TestServer = await aiohttp_server(create_app(settings))
    two: TestServer = await aiohttp_server(create_app(settings))
    url_one, url_two = str(one.make_url("/mcp")), str(two.make_url("/mcp"))
    legacy = {"MCP-Protocol-Version": "2025-11-25"}
    async with ClientSession(timeout=ClientTimeout(total=60)) as http:
        session = await initialize_session(http, url_one, alice_key)
        async with http.post(url_one, json=rpc("resources/subscribe", {"uri": "vault://kv/shared"}, msg_id=2),
                             headers=legacy_headers(alice_key, session, **legacy)) as resp:
            assert (await resp.json())["result"] == {}
        body, headers = listen_request(alice_key, ["vault://kv/shared"])
        async with http.get(url_two, headers={"X-API-Key": alice_key, "Mcp-Session-Id": session,
                                              "Accept": MCP_ACCEPT, **legacy}) as get, \
                http.post(url_two, json=body, headers=headers) as listen:
            get_stream, listen_stream = Sse(get), Sse(listen)
            assert await get_stream.next() == ":"
            await listen_stream.message()
            await call_tool(http, url_one, bob_key, "kv_write", {"path": "shared", "data": {"v": "bob"}})
            for round_ in range(3):
                started = time.monotonic()
                await call_tool(http, url_one, alice_key, "kv_write", {"path": "shared", "data": {"v": round_}})
                got = await get_stream.message()
                latency = time.monotonic() - started
                assert got["params"] == {"uri": "vault://kv/shared"}  # alice's, not bob's (which came first)
                assert latency < 1.0, latency
                assert (await listen_stream.message())["params"]["uri"] == "vault://kv/shared"


async def test_sigterm_ends_open_streams(spawn_bridge: Callable[..., BridgeProcess], bao: DevVault) -> None:
    """A real process with open streams and a long SHUTDOWN_GRACE_SECONDS: SIGTERM sends the listen stream its
    graceful close, ends the GET stream, and the process exits without waiting out the grace period."""
    agent, key = unique_agent("term")
    bridge = await asyncio.to_thread(spawn_bridge, {
        "VAULT_ADDR": bao.addr, "VAULT_TOKEN": bao.root_token, "API_KEYS_JSON": json.dumps({key: agent}),
        "SHUTDOWN_GRACE_SECONDS": "60"})
    url = f"{bridge.url}/mcp"
    async with ClientSession(timeout=ClientTimeout(total=60)) as http:
        session = await initialize_session(http, url, key)
        body, headers = listen_request(key, ["vault://kv/a"], listen_id="bye")
        async with http.post(url, json=body, headers=headers) as listen, \
                http.get(url, headers={"X-API-Key": key, "Mcp-Session-Id": session, "Accept": MCP_ACCEPT,
                                       "MCP-Protocol-Version": "2025-11-25"}) as get:
            listen_stream, get_stream = Sse(listen), Sse(get)
            await listen_stream.message()
            assert await get_stream.next() == ":"
            started = time.monotonic()
            bridge.process.send_signal(signal.SIGTERM)
            final = await listen_stream.message()
            assert final["id"] == "bye"
            assert final["result"]["resultType"] == "complete"
            assert await get_stream.next() is None
            code = await asyncio.to_thread(bridge.process.wait, 30)
    assert code == 0
    assert time.monotonic() - started < 30  # far below SHUTDOWN_GRACE_SECONDS: nothing waited on the streams


async def test_direct_write_reaches_a_session(mcp_server: ServerFactory, bao: DevVault) -> None:
    """2025-11-25 too: a write made to Vault directly reaches the subscribed session's GET stream by polling,
    including the first write of a secret that did not exist when subscribed."""
    agent, key = unique_agent("dir")
    url = await mcp_server(api_keys_json=json.dumps({key: agent}), subscription_poll_interval=0.2)
    got: list[str] = []
    async with sdk(url, key, "legacy", got) as client:
        await subscribe(client, "vault://kv/later")
        await direct_write(bao, agent, "later")
        await until(lambda: got == ["vault://kv/later"], "the direct write's notification")


async def test_values_a_human_stores_through_intake_reach_subscribers(mcp_server: ServerFactory) -> None:
    """A ``kv_request_input`` link filled in by a human is a write through the bridge: the agent's subscribers
    hear of it at once (polling is off here, so only the bridge's own notification can bring it)."""
    from tests.intake.conftest import CSRF_RE

    agent, key = unique_agent("intake")
    url = await mcp_server(api_keys_json=json.dumps({key: agent}), subscription_poll_interval=0)
    got: list[str] = []
    async with sdk(url, key, "legacy", got) as client:
        await subscribe(client, "vault://kv/app/token")
        result = await client.call_tool("kv_request_input", {"path": "app/token", "fields": ["token"]})
        assert not result.is_error, result
        link = result.structured_content["url"]
        async with ClientSession(cookie_jar=CookieJar(unsafe=True)) as human:  # the form cookie on 127.0.0.1
            form = await (await human.get(link)).text()
            match = CSRF_RE.search(form)
            assert match is not None
            resp = await human.post(link, data={"csrf": match.group(1), "f0": "typed-by-a-human"})
            assert resp.status == 200, await resp.text()
        await until(lambda: got == ["vault://kv/app/token"], "the intake write's notification")
