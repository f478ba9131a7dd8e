"""``WORKERS=2`` without ``MCP_SESSION_SECRET``: the supervisor generates one session key and hands it to both
workers, so an ``Mcp-Session-Id`` issued by one is valid on the other. The finding: each worker made its own key
and about half of the session calls (those the kernel sent to the other worker) answered 404."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from devtools.devvault import DevVault
from tests.conftest import API_KEY_ALICE, API_KEYS
from tests.mcp.conftest import legacy_headers, rpc
from tests.support.servers import BridgeProcess

pytestmark = pytest.mark.integration


def _children(pid: int) -> list[int]:
    try:
        return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def _environ(pid: int) -> bytes:
    return Path(f"/proc/{pid}/environ").read_bytes()


async def test_workers_share_a_generated_session_key(spawn_bridge: Callable[..., BridgeProcess],
                                                     bao: DevVault) -> None:
    env = {"VAULT_ADDR": bao.addr, "VAULT_TOKEN": bao.root_token, "API_KEYS_JSON": json.dumps(API_KEYS),
           "WORKERS": "2", "RATE_LIMIT_ENABLED": "false", "LOG_LEVEL": "info"}
    bridge = await asyncio.to_thread(spawn_bridge, env)
    workers = _children(bridge.process.pid)
    assert len(workers) == 2, workers
    statuses: list[int] = []
    # a new connection for every request: the kernel spreads them over both workers (SO_REUSEPORT)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as session:
        for i in range(40):
            init = {"protocolVersion": "2025-11-25", "capabilities": {},
                    "clientInfo": {"name": "workers-test", "version": "0"}}
            async with session.post(f"{bridge.url}/mcp", json=rpc("initialize", init, msg_id=i),
                                    headers=legacy_headers(API_KEY_ALICE)) as resp:
                assert resp.status == 200, await resp.text()
                sid = resp.headers["Mcp-Session-Id"]
            headers: dict[str, Any] = legacy_headers(API_KEY_ALICE, sid, **{"MCP-Protocol-Version": "2025-11-25"})
            async with session.post(f"{bridge.url}/mcp", json=rpc("tools/list", msg_id=i), headers=headers) as resp:
                statuses.append(resp.status)
                if resp.status == 200:
                    assert (await resp.json())["result"]["tools"]
    assert statuses == [200] * 40, statuses  # before: ~half were 404 "Session not found"
    for pid in workers:  # the key went through a pipe: no worker's environment carries it
        assert b"MCP_SESSION_SECRET" not in _environ(pid)
    log = bridge.log_path.read_text()
    assert "mcp.session.ephemeral_key" not in log  # the workers did not each make their own
