"""Graceful shutdown of a real bridge process on SIGTERM: stop accepting, finish in-flight requests, exit."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import time
from collections.abc import Callable
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from tests.conftest import API_KEY_ALICE, API_KEYS
from tests.support.servers import BridgeProcess


def _connect_refused(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return False
    except OSError:
        return True


async def _fake_vault(read_delay: float, seen: asyncio.Event) -> TestServer:
    async def lookup_self(request: web.Request) -> web.Response:
        return web.json_response({"data": {"policies": ["root"], "ttl": 0, "renewable": False}})

    async def health(request: web.Request) -> web.Response:
        return web.json_response({"initialized": True, "sealed": False, "version": "fake"})

    async def read(request: web.Request) -> web.Response:
        if request.match_info["tail"].startswith("mcp/_bridge/"):  # the bridge's own state (the quarantine poll)
            return web.json_response({"errors": []}, status=404)  # is no agent's in-flight request
        seen.set()
        await asyncio.sleep(read_delay)
        return web.json_response({"data": {"data": {"k": "v"}, "metadata": {"version": 3}}})

    fake = web.Application()
    fake.router.add_get("/v1/auth/token/lookup-self", lookup_self)
    fake.router.add_get("/v1/sys/health", health)
    fake.router.add_get("/v1/secret/data/{tail:.*}", read)
    server = TestServer(fake, host="127.0.0.1")
    await server.start_server()
    return server


@pytest.mark.parametrize(("delay", "grace", "expect"), [(1.0, "5", 200), (3.0, "0.5", None)])
async def test_sigterm_finishes_in_flight_requests(delay: float, grace: str, expect: int | None,
                                                   spawn_bridge: Callable[..., BridgeProcess]) -> None:
    seen = asyncio.Event()
    fake = await _fake_vault(delay, seen)
    try:
        env = {"VAULT_ADDR": f"http://127.0.0.1:{fake.port}", "VAULT_TOKEN": "fake-root",
               "API_KEYS_JSON": json.dumps(API_KEYS), "SHUTDOWN_GRACE_SECONDS": grace, "VAULT_TIMEOUT": "10"}
        bridge = await asyncio.to_thread(spawn_bridge, env)
        async with aiohttp.ClientSession() as session:

            async def slow_read() -> int:
                async with session.get(f"{bridge.url}/secrets/db", headers={"X-API-Key": API_KEY_ALICE}) as resp:
                    await resp.read()
                    return resp.status

            in_flight = asyncio.create_task(slow_read())
            await asyncio.wait_for(seen.wait(), 5)
            t0 = time.monotonic()
            bridge.process.send_signal(signal.SIGTERM)
            await asyncio.sleep(0.2)
            assert await asyncio.to_thread(_connect_refused, bridge.port), "stopped accepting new connections"
            if expect is not None:
                assert await asyncio.wait_for(in_flight, 10) == expect  # the in-flight request completed
            else:
                with pytest.raises(aiohttp.ClientError):  # cut off when the grace period ran out
                    await asyncio.wait_for(in_flight, 10)
            code = await asyncio.to_thread(bridge.process.wait, 10)
            elapsed = time.monotonic() - t0
        assert code == 0, bridge.log_path.read_text()[-2000:]
        assert elapsed < float(grace) + 3.0
    finally:
        await fake.close()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _children(pid: int) -> list[int]:
    try:
        raw = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(p) for p in raw.split()]


async def test_workers_share_one_port_and_stop_together(spawn_bridge: Callable[..., BridgeProcess]) -> None:
    seen = asyncio.Event()
    fake = await _fake_vault(0.0, seen)
    try:
        env = {"VAULT_ADDR": f"http://127.0.0.1:{fake.port}", "VAULT_TOKEN": "fake-root",
               "API_KEYS_JSON": json.dumps(API_KEYS), "WORKERS": "2", "SHUTDOWN_GRACE_SECONDS": "2"}
        bridge = await asyncio.to_thread(spawn_bridge, env)
        workers = _children(bridge.process.pid)
        assert len(workers) == 2, workers
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as session:
            for _ in range(10):  # a new connection each time: the kernel spreads them over the workers
                async with session.get(f"{bridge.url}/secrets/db", headers={"X-API-Key": API_KEY_ALICE}) as r:
                    assert r.status == 200
        bridge.process.send_signal(signal.SIGTERM)
        code = await asyncio.to_thread(bridge.process.wait, 10)
        assert code == 0, bridge.log_path.read_text()[-2000:]
        assert not any(_alive(pid) for pid in workers), "the workers exited with the supervisor"
    finally:
        await fake.close()
