"""``VAULT_HTTP_CLIENT=lean`` (bridge/vault/transport.py): the same behaviour as aiohttp, against real OpenBao
and against fakes for the framing and failure cases."""

from __future__ import annotations

import asyncio
import ssl
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from bridge.app import create_app
from bridge.config import Settings
from bridge.vault.client import VaultClient
from bridge.vault.errors import VaultConnectionError, VaultNotFoundError, VaultTimeoutError
from tests.conftest import API_KEY_ALICE, API_KEY_BOB

ALICE = {"X-API-Key": API_KEY_ALICE}


@pytest.mark.integration
async def test_every_kv_operation_through_the_bridge(aiohttp_client: Callable[..., Any],
                                                     make_settings: Callable[..., Settings]) -> None:
    client: TestClient[Any, Any] = await aiohttp_client(create_app(make_settings(vault_http_client="lean")))
    path = f"/secrets/lean/{time.time_ns()}"
    resp = await client.put(path, json={"data": {"a": "1"}, "cas": 0}, headers=ALICE)
    assert resp.status == 200, await resp.text()
    assert (await resp.json())["version"] == 1
    resp = await client.put(path, json={"data": {"a": "1"}, "cas": 0}, headers=ALICE)
    assert resp.status == 409  # a 400 with an error envelope
    resp = await client.patch(path, json={"data": {"b": "2"}}, headers=ALICE)
    assert resp.status == 200, await resp.text()
    resp = await client.get(path, headers=ALICE)
    body = await resp.json()
    assert (body["data"], body["version"]) == ({"a": "1", "b": "2"}, 2)
    resp = await client.get(f"{path}?version=1", headers=ALICE)
    assert (await resp.json())["data"] == {"a": "1"}
    resp = await client.get("/secrets", params={"prefix": "lean"}, headers=ALICE)  # list (GET ?list=true)
    assert resp.status == 200
    assert path.rsplit("/", 1)[1] in (await resp.json())["keys"]
    resp = await client.delete(path, headers=ALICE)  # 204, empty body
    assert resp.status in (200, 204)
    resp = await client.get(path, headers=ALICE)  # 404 with the KV envelope
    assert resp.status == 404
    assert (await resp.json())["error"]["code"] == "secret_deleted"
    resp = await client.get("/secrets/lean/missing", headers={"X-API-Key": API_KEY_BOB})
    assert resp.status == 404
    assert (await client.get("/readyz")).status == 200


async def _serve(handler: Callable[[web.Request], Any]) -> TestServer:
    app = web.Application()
    app.router.add_route("*", "/v1/{tail:.*}", handler)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    return server


async def test_keep_alive_chunked_and_connection_close() -> None:
    transports: list[object] = []

    async def handler(request: web.Request) -> web.StreamResponse:
        transports.append(request.transport)
        if request.query.get("mode") == "chunked":
            resp = web.StreamResponse()
            resp.enable_chunked_encoding()
            resp.content_type = "application/json"
            await resp.prepare(request)
            await resp.write(b'{"data": {"data": {"k": "')
            await resp.write(b"x" * 10000 + b'"}, "metadata": {"version": 7}}}')
            await resp.write_eof()
            return resp
        if request.query.get("mode") == "close":
            return web.json_response({"data": {"data": {}, "metadata": {}}}, headers={"Connection": "close"})
        if request.method == "DELETE":
            return web.Response(status=204)
        if request.path.endswith("/missing"):
            return web.json_response({"errors": []}, status=404)
        return web.json_response({"data": {"data": {"k": "v"}, "metadata": {"version": 1}}})

    server = await _serve(handler)
    try:
        async with VaultClient(f"http://127.0.0.1:{server.port}", http_client="lean") as vault:
            vault.token = "t"
            for _ in range(5):
                assert (await vault.kv.read("secret", "a"))["data"] == {"k": "v"}
            assert len({id(t) for t in transports}) == 1  # one kept-alive connection
            chunked = await vault.request("GET", "secret/data/a", operation="t", params={"mode": "chunked"})
            assert chunked.data is not None
            assert chunked.data["data"]["k"] == "x" * 10000
            await vault.kv.delete_latest("secret", "a")
            with pytest.raises(VaultNotFoundError):
                await vault.kv.read("secret", "missing")
            await vault.request("GET", "secret/data/a", operation="t", params={"mode": "close"})
            before = len({id(t) for t in transports})
            await vault.kv.read("secret", "a")
            assert len({id(t) for t in transports}) == before + 1  # "Connection: close" was honoured
    finally:
        await server.close()


async def test_dropped_connection_retried_for_reads_only_and_timeouts() -> None:
    hits = {"GET": 0, "POST": 0}

    async def handler(request: web.Request) -> web.StreamResponse:
        hits[request.method] += 1
        if request.path.endswith("/slow"):
            await asyncio.sleep(5)
        if hits[request.method] == 1:
            assert request.transport is not None
            request.transport.close()
            await asyncio.sleep(0.05)
        return web.json_response({"data": {"data": {"k": "v"}, "metadata": {"version": 1}}})

    server = await _serve(handler)
    port = server.port
    try:
        async with VaultClient(f"http://127.0.0.1:{port}", http_client="lean", timeout=0.4,
                               retry_backoff=0.01) as vault:
            vault.token = "t"
            assert (await vault.kv.read("secret", "a"))["data"] == {"k": "v"}
            assert hits["GET"] == 2
            with pytest.raises(VaultConnectionError):
                await vault.kv.write("secret", "a", {"k": "v"})
            assert hits["POST"] == 1
            t0 = time.monotonic()
            with pytest.raises(VaultTimeoutError):
                await vault.kv.read("secret", "slow")
            assert 0.35 < time.monotonic() - t0 < 1.0
            assert (await vault.kv.read("secret", "a"))["data"] == {"k": "v"}  # the pool recovered
    finally:
        await server.close()
    async with VaultClient(f"http://127.0.0.1:{port}", http_client="lean", timeout=1) as vault:
        with pytest.raises(VaultConnectionError):
            await vault.kv.read("secret", "a")  # refused


@pytest.mark.parametrize("http_client", ["aiohttp", "lean"])
async def test_tls_with_vault_cacert(http_client: str, tmp_path: Path) -> None:
    from tests.trust.pki import issue, make_ca

    ca = make_ca(tmp_path, "ca")
    other = make_ca(tmp_path, "other")
    cert = issue(tmp_path, ca, "vault", cn="localhost", server=True)
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(cert.cert_path, cert.key_path)

    async def handler(request: web.Request) -> web.Response:
        return web.json_response({"data": {"data": {"k": "v"}, "metadata": {"version": 1}}})

    app = web.Application()
    app.router.add_route("*", "/v1/{tail:.*}", handler)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server(ssl=server_ctx)
    try:
        addr = f"https://localhost:{server.port}"
        async with VaultClient(addr, cacert=str(ca.cert_path), http_client=http_client) as vault:
            vault.token = "t"
            assert (await vault.kv.read("secret", "a"))["data"] == {"k": "v"}
        async with VaultClient(addr, cacert=str(other.cert_path), http_client=http_client, timeout=2) as vault:
            with pytest.raises(VaultConnectionError):  # a certificate from another CA is refused
                await vault.kv.read("secret", "a")
    finally:
        await server.close()


async def test_waiting_for_a_pool_slot_counts_against_the_timeout() -> None:
    async def handler(request: web.Request) -> web.StreamResponse:
        await asyncio.sleep(1.0)
        return web.json_response({})

    server = await _serve(handler)
    try:
        async with VaultClient(f"http://127.0.0.1:{server.port}", http_client="lean", pool_size=1,
                               timeout=0.3) as vault:
            vault.token = "t"
            first = asyncio.create_task(vault.kv.read("secret", "a"))
            await asyncio.sleep(0.05)
            t0 = time.monotonic()
            with pytest.raises(VaultTimeoutError):
                await vault.kv.read("secret", "b")  # the only slot is busy
            assert time.monotonic() - t0 < 0.55  # not 0.3 waiting + 0.3 calling
            with pytest.raises(VaultTimeoutError):
                await first
    finally:
        await server.close()


async def test_header_line_breaks_are_refused() -> None:
    async with VaultClient("http://127.0.0.1:9", http_client="lean") as vault:
        with pytest.raises(ValueError, match="line break"):
            await vault.request("GET", "sys/health", operation="t", headers={"X-Test": "a\r\nX-Evil: 1"})
