"""Slow clients cannot exhaust the bridge: a real ``vault-mcp-bridge serve`` process (``bridge/serving.py``),
hundreds of raw sockets that never finish their headers or bodies, and a normal agent request beside them.

The findings: half-sent headers were held for 75 s, half-sent bodies forever, and a few hundred idle sockets
made real requests fail. Now: ``HEADER_READ_TIMEOUT``, ``BODY_READ_TIMEOUT`` (1-2 s here), ``MAX_CONNECTIONS``
(new connections beyond it reclaim an idle one or get an immediate 503), and the open-files limit checked at
start. Timing assertions are generous (a loaded 2-core CI machine): "closed within the timeout" means well
before aiohttp's own 75 s keep-alive.
"""

from __future__ import annotations

import asyncio
import json
import os
import resource
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest

from devtools.devvault import DevVault, free_port, stop_process
from tests.conftest import API_KEY_ALICE, API_KEY_BOB, API_KEYS
from tests.support.servers import BridgeProcess

pytestmark = pytest.mark.integration

HEAD = b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n"  # never finished: no blank line
Conn = tuple[asyncio.StreamReader, asyncio.StreamWriter]
RESET = b"<connection reset>"


def bridge_env(bao: DevVault, **extra: str) -> dict[str, str]:
    env = {"VAULT_ADDR": bao.addr, "VAULT_TOKEN": bao.root_token, "API_KEYS_JSON": json.dumps(API_KEYS),
           "HEADER_READ_TIMEOUT": "1s", "BODY_READ_TIMEOUT": "2s", "RATE_LIMIT_ENABLED": "false"}
    env.update(extra)
    return env


async def open_many(port: int, count: int, first_bytes: bytes = b"") -> list[Conn]:
    async def one() -> Conn:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        if first_bytes:
            writer.write(first_bytes)
            await writer.drain()
        return reader, writer

    conns: list[Conn] = []
    for start in range(0, count, 50):  # in waves: the test's own connect() calls stay orderly
        conns += await asyncio.gather(*(one() for _ in range(start, min(count, start + 50))))
    return conns


async def until_closed(conns: list[Conn], within: float) -> list[tuple[float, bytes]]:
    """For each connection: (seconds until the bridge closed it, what it sent before closing)."""
    started = time.monotonic()

    async def one(conn: Conn) -> tuple[float, bytes]:
        try:
            data = await asyncio.wait_for(conn[0].read(), timeout=within)
        except ConnectionResetError:  # refused at the cap with our bytes unread: the kernel sends a reset
            data = RESET
        return time.monotonic() - started, data

    try:
        return await asyncio.gather(*(one(c) for c in conns))
    finally:
        for _, writer in conns:
            writer.close()


async def agent_request(url: str) -> tuple[int, float]:
    """A normal agent request on a new connection: (status, seconds); gives up after 10 s."""
    started = time.monotonic()
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session, \
            session.get(f"{url}/secrets/slow-clients/none", headers={"X-API-Key": API_KEY_ALICE}) as resp:
        await resp.read()
        return resp.status, time.monotonic() - started


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
async def test_300_slow_header_sockets(spawn_bridge: Callable[..., BridgeProcess], bao: DevVault, loop: str) -> None:
    bridge = await asyncio.to_thread(spawn_bridge, bridge_env(bao, EVENT_LOOP=loop))
    partial = await open_many(bridge.port, 300, HEAD)
    silent = await open_many(bridge.port, 50)  # connected, never a byte
    status, took = await agent_request(bridge.url)
    assert status == 404, status  # served (nothing at that path), beside 350 stalled sockets
    assert took < 5.0, took
    closed = await until_closed(partial + silent, within=30)  # aiohttp alone held them 75 s
    assert max(t for t, _ in closed) < 15.0
    answered = [data for _, data in closed[:300]]
    assert all(data.startswith(b"HTTP/1.1 408 ") for data in answered), answered[:3]
    assert b'"request_timeout"' in answered[0]
    assert all(data == b"" for _, data in closed[300:])  # nothing sent, nothing answered: just closed
    assert bridge.process.poll() is None
    assert (await agent_request(bridge.url))[0] == 404


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
async def test_slow_and_trickled_bodies_are_cut_at_the_deadline(spawn_bridge: Callable[..., BridgeProcess],
                                                                bao: DevVault, loop: str) -> None:
    # The slow bodies are bob's; the normal request is alice's. Each slow body holds one of bob's
    # AGENT_MAX_INFLIGHT slots while it trickles in: the cap is raised here so that every one of the 51 is read
    # (and cut at the deadline) instead of being refused 429 on bob's own slots.
    bridge = await asyncio.to_thread(spawn_bridge, bridge_env(bao, EVENT_LOOP=loop, AGENT_MAX_INFLIGHT="100"))
    head = (f"PUT /secrets/slow-clients/body HTTP/1.1\r\nHost: localhost\r\nX-API-Key: {API_KEY_BOB}\r\n"
            "Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n").encode()
    half = await open_many(bridge.port, 50, head + b'{"data": {"v": "')  # then silence
    trickled = await open_many(bridge.port, 1, head)

    async def trickle() -> bool:
        """One byte every 50 ms (1000 bytes: 50 s); True when the bridge hung up while we were sending."""
        writer = trickled[0][1]
        try:
            for _ in range(1000):
                writer.write(b" ")
                await writer.drain()
                await asyncio.sleep(0.05)
        except ConnectionError:
            return True
        return False

    trickling = asyncio.create_task(trickle())
    status, took = await agent_request(bridge.url)
    assert (status, took < 5.0) == (404, True)
    closed = await until_closed(half + trickled, within=30)  # before: held forever
    assert await asyncio.wait_for(trickling, timeout=30)
    assert max(t for t, _ in closed) < 15.0
    for _, data in closed:
        assert data.startswith(b"HTTP/1.1 408 "), data[:200]
        body = json.loads(data.partition(b"\r\n\r\n")[2])
        assert body["error"]["code"] == "request_timeout"
    assert bridge.process.poll() is None


async def test_max_connections_refuses_or_reclaims(spawn_bridge: Callable[..., BridgeProcess],
                                                   bao: DevVault) -> None:
    bridge = await asyncio.to_thread(spawn_bridge, bridge_env(bao, MAX_CONNECTIONS="20", EVENT_LOOP="asyncio",
                                                              HEADER_READ_TIMEOUT="3s"))
    busy = await open_many(bridge.port, 20, HEAD)  # 20 connections in the middle of their headers
    await asyncio.sleep(0.3)
    reader, writer = await asyncio.open_connection("127.0.0.1", bridge.port)
    refused = await asyncio.wait_for(reader.read(), timeout=5)  # at once, not after a timeout
    writer.close()
    assert refused.startswith(b"HTTP/1.1 503 "), refused
    assert json.loads(refused.partition(b"\r\n\r\n")[2])["error"]["code"] == "too_many_connections"
    await until_closed(busy, within=30)  # freed by HEADER_READ_TIMEOUT
    idle = await open_many(bridge.port, 40)  # idle connections beyond the cap: the oldest are reclaimed
    status, took = await agent_request(bridge.url)  # ... and so is one for this request
    assert (status, took < 5.0) == (404, True)
    closed = await until_closed(idle, within=30)
    assert len(closed) == 40
    assert bridge.process.poll() is None


@dataclass
class LimitedBridge:
    port: int
    process: subprocess.Popen[bytes]
    log_path: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@pytest.fixture
def fd_limited_bridge(tmp_path: Path, bao: DevVault) -> Iterator[LimitedBridge]:
    """A bridge whose open-files limit (soft and hard) is 256, far below MAX_CONNECTIONS' default."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VAULT_", "BAO_"))}
    env.update(bridge_env(bao, HOST="127.0.0.1", PORT=str(port), LOG_LEVEL="info", HEADER_READ_TIMEOUT="2s"))
    log_path = tmp_path / "bridge.log"

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (256, 256))

    with open(log_path, "wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "bridge", "serve"], env=env, stdout=log,
                                stderr=subprocess.STDOUT, preexec_fn=limit, start_new_session=True)
    bridge = LimitedBridge(port, proc, log_path)
    try:
        deadline = time.monotonic() + 20
        while True:
            assert proc.poll() is None, log_path.read_text()
            assert time.monotonic() < deadline, "no start"
            try:
                with urllib.request.urlopen(f"{bridge.url}/healthz", timeout=1):
                    break
            except OSError:
                time.sleep(0.05)
        yield bridge
    finally:
        stop_process(proc, timeout=15)


async def test_file_descriptor_limit_is_respected(fd_limited_bridge: LimitedBridge) -> None:
    bridge = fd_limited_bridge
    stalled = await open_many(bridge.port, 300, HEAD)  # more sockets than the process may open
    status, took = await agent_request(bridge.url)
    assert status in (404, 503), status  # answered at once either way: served, or refused at the cap
    assert took < 5.0, took
    await until_closed(stalled, within=30)
    assert bridge.process.poll() is None, "the process survived"
    assert (await agent_request(bridge.url))[0] == 404  # and serves again once the stalled ones are gone
    log = bridge.log_path.read_text()
    assert "Too many open files" not in log
    capped = [json.loads(line) for line in log.splitlines() if "server.connections.capped" in line]
    assert capped, log  # the cap was lowered to what the limit allows, and said so at start
    assert capped[0]["max_connections"] < 256 - 100, capped


def _start_quiet(env: dict[str, str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-m", "bridge", "serve"], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)


async def test_tls_handshake_is_bounded_too(bao: DevVault, tmp_path: Path) -> None:
    """Native TLS: sockets that never start (or never finish) the handshake are closed after
    HEADER_READ_TIMEOUT, not asyncio's 60 s; a TLS client beside them is served."""
    from tests.support.pki import client_context, issue, make_ca

    ca = make_ca(tmp_path)
    server = issue(tmp_path, ca, "server", cn="localhost", server=True)
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VAULT_", "BAO_", "TLS_"))}
    env.update(bridge_env(bao, HOST="127.0.0.1", PORT=str(port), LOG_LEVEL="warning",
                          TLS_CERT_FILE=str(server.cert_path), TLS_KEY_FILE=str(server.key_path)))
    proc = _start_quiet(env)
    url = f"https://127.0.0.1:{port}"
    context = client_context(ca, None)

    async def get(path: str) -> int:
        async with aiohttp.ClientSession() as session, session.get(
                url + path, ssl=context, headers={"X-API-Key": API_KEY_ALICE}) as resp:
            return resp.status

    try:
        for _ in range(200):
            try:
                await get("/healthz")
                break
            except aiohttp.ClientError:
                assert proc.poll() is None
                await asyncio.sleep(0.1)
        silent = await open_many(port, 30)  # TCP only: no ClientHello
        cut = await open_many(port, 10, b"\x16\x03\x01\x00\xc8\x01\x00\x00\xc4\x03\x03")  # a cut ClientHello
        started = time.monotonic()
        assert await get("/secrets/slow-clients/none") == 404
        assert time.monotonic() - started < 5.0
        closed = await until_closed(silent + cut, within=30)
        assert max(t for t, _ in closed) < 15.0  # asyncio's own handshake timeout: 60 s
        assert proc.poll() is None
    finally:
        stop_process(proc, timeout=15)
