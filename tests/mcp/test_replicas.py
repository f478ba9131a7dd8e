"""Many replicas, no lost sessions: three ``vault-mcp-bridge serve`` processes behind Debian's nginx (upstream
round-robin: each request goes to the next replica), sharing ``MCP_SESSION_SECRET`` and one Redis (rate limit,
subscriptions, change bus), against the real OpenBao.

In each era the official SDK makes 1,000 mixed calls (tools, resources, prompts, completion) from concurrent
clients: zero errors, zero "session not found". Meanwhile a subscriber in each era (a 2025-11-25 session's GET
stream, a 2026-07-28 listen stream, each on whichever replica nginx picked) is told of every change of its secret
made through the other clients, whichever replica served the write, and of no other agent's.
Skipped when nginx or redis-server is not installed (``make sysdeps``).
"""

from __future__ import annotations

import asyncio
import json
import time
import warnings
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx2
import mcp_types
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError
from mcp.shared.subscriptions import ResourceUpdated
from mcp_types import ResourceTemplateReference

from devtools.devvault import DevVault, free_port
from tests.mcp.conftest import unique_agent
from tests.support.nginx import NGINX, running_nginx
from tests.support.servers import BridgeProcess, RedisServer

pytestmark = [pytest.mark.integration,
              pytest.mark.skipif(NGINX is None, reason="nginx is not installed (make sysdeps)")]

REPLICAS = 3
CALLS = 1000
CLIENTS = 10
WAIT = 10.0


@dataclass
class RoundRobin:
    url: str
    keys: dict[str, str]
    bridges: list[BridgeProcess]


@pytest.fixture
async def round_robin(tmp_path: Path, bao: DevVault, redis_server: RedisServer,
                      spawn_bridge: Callable[..., BridgeProcess]) -> AsyncIterator[RoundRobin]:
    """Three replicas behind nginx: the proxy's /mcp URL, API key → agent, the bridge processes."""
    agent, key = unique_agent("rr")
    other, other_key = unique_agent("rr")
    keys = {key: agent, other_key: other}
    env = {"VAULT_ADDR": bao.addr, "VAULT_TOKEN": bao.root_token, "API_KEYS_JSON": json.dumps(keys),
           "MCP_SESSION_SECRET": "replicas-share-this-" + "s" * 16, "RATE_LIMIT_BACKEND": "redis",
           "REDIS_URL": redis_server.url, "RATE_LIMIT_REQUESTS": "1000000", "SUBSCRIPTION_KEEPALIVE": "5s",
           "LOG_LEVEL": "warning"}
    bridges = [spawn_bridge(env) for _ in range(REPLICAS)]
    listen = free_port()
    upstreams = "\n".join(f"        server 127.0.0.1:{b.port};" for b in bridges)
    http = f"""    upstream bridges {{
{upstreams}
        keepalive 32;
    }}
    server {{
        listen 127.0.0.1:{listen};
        location / {{
            proxy_pass http://bridges;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host $http_host;
            proxy_buffering off;
            proxy_read_timeout 60s;
        }}
    }}"""
    try:
        async with running_nginx(tmp_path / "nginx", http, listen, worker_connections=512):
            yield RoundRobin(f"http://127.0.0.1:{listen}/mcp", keys, bridges)
    finally:
        for bridge in bridges:
            assert bridge.process.poll() is None, bridge.log_path.read_text()[-2000:]


async def _mixed_calls(url: str, key: str, mode: str, client_no: int, calls: int, errors: list[str]) -> int:
    """``calls`` calls of a mix; failures go to ``errors``. The number of calls made."""
    made = 0
    async with (
        httpx2.AsyncClient(headers={"X-API-Key": key}, timeout=30) as http,
        Client(streamable_http_client(url, http_client=http), mode=mode) as client,
    ):
        for i in range(calls):
            path = f"c{client_no}/s{i % 5}"
            step = i % 10
            try:
                if step in (0, 5):
                    result = await client.call_tool("kv_write", {"path": path, "data": {"i": i}})
                    assert not result.is_error, result.structured_content
                elif step in (1, 6):
                    result = await client.call_tool("kv_read", {"path": f"c{client_no}/s0"})
                    assert not result.is_error or result.structured_content["error"]["code"] == "not_found"
                elif step == 2:
                    assert (await client.list_tools()).tools
                elif step == 3:
                    await client.list_resources(cache_mode="bypass")
                elif step == 4:
                    await client.read_resource(f"vault://kv/c{client_no}/s0")
                elif step == 7:
                    await client.complete(ResourceTemplateReference(type="ref/resource", uri="vault://kv/{path}"),
                                          {"name": "path", "value": f"c{client_no}/"})
                elif step == 8:
                    assert (await client.list_prompts(cache_mode="bypass")).prompts
                else:
                    result = await client.call_tool("kv_list", {"prefix": f"c{client_no}/"})
                    assert not result.is_error
            except (MCPError, AssertionError, httpx2.HTTPError) as exc:
                errors.append(f"{mode} client {client_no} call {i} step {step}: {type(exc).__name__}: {exc}")
            made += 1
    return made


async def _run_era(url: str, keys: dict[str, str], mode: str) -> None:
    key, other_key = list(keys)
    errors: list[str] = []
    updates: list[str] = []
    got_update = asyncio.Event()

    async def on_message(message: Any) -> None:
        if isinstance(message, mcp_types.ResourceUpdatedNotification):
            updates.append(str(message.params.uri))
            got_update.set()

    started = time.monotonic()
    async with (
        httpx2.AsyncClient(headers={"X-API-Key": key}, timeout=httpx2.Timeout(10, read=60)) as http,
        Client(streamable_http_client(url, http_client=http), mode=mode, message_handler=on_message) as watcher,
        httpx2.AsyncClient(headers={"X-API-Key": other_key}, timeout=30) as other_http,
        Client(streamable_http_client(url, http_client=other_http), mode=mode) as other,
    ):
        watched = "vault://kv/watched"
        if mode == "legacy":  # the GET stream is on one replica, the subscribe and the writes on others
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                await watcher.subscribe_resource(watched)
            for round_ in range(3):
                got_update.clear()
                await other.call_tool("kv_write", {"path": "watched", "data": {"v": "other agent"}})
                await watcher.call_tool("kv_write", {"path": "watched", "data": {"v": round_}})
                await asyncio.wait_for(got_update.wait(), WAIT)
            assert updates == [watched] * 3  # never the other agent's
        else:
            async with watcher.listen(resource_subscriptions=[watched]) as sub:
                events = aiter(sub)
                for round_ in range(3):
                    await other.call_tool("kv_write", {"path": "watched", "data": {"v": "other agent"}})
                    await watcher.call_tool("kv_write", {"path": "watched", "data": {"v": round_}})
                    assert await asyncio.wait_for(anext(events), WAIT) == ResourceUpdated(uri=watched)
        per_client = CALLS // CLIENTS
        made = await asyncio.gather(*(_mixed_calls(url, key, mode, n, per_client, errors) for n in range(CLIENTS)))
    assert sum(made) == CALLS
    assert errors == [], errors[:10]
    assert not any("ession not found" in e for e in errors)
    print(f"{mode}: {CALLS} calls through {REPLICAS} replicas in {time.monotonic() - started:.1f}s")


async def test_thousand_calls_per_era_through_round_robin(round_robin: RoundRobin) -> None:
    for mode in ("legacy", "2026-07-28"):
        await _run_era(round_robin.url, round_robin.keys, mode)
    async with httpx2.AsyncClient(timeout=10) as http:  # every replica served its share
        for bridge in round_robin.bridges:
            text = (await http.get(f"{bridge.url}/metrics")).text
            served = sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                         if line.startswith("bridge_http_requests_total{") and 'route="/mcp"' in line)
            assert served > 2 * CALLS / REPLICAS * 0.5, (bridge.port, served)
