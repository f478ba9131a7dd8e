"""mTLS behind a real proxy: Debian's nginx runs ``deploy/nginx/vault-mcp-bridge.conf`` (ports and paths
substituted) on free ports in front of a real bridge and OpenBao. Skipped only when nginx is not installed
(``make sysdeps`` installs it)."""

from __future__ import annotations

import asyncio
import shutil
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

from bridge.app import create_app
from bridge.config import Settings
from bridge.devvault import free_port
from tests.trust.pki import Issued, client_context, issue, make_ca

ROOT = Path(__file__).resolve().parents[2]
SITE = ROOT / "deploy" / "nginx" / "vault-mcp-bridge.conf"
NGINX = shutil.which("nginx") or next((p for p in ("/usr/sbin/nginx",) if Path(p).exists()), None)

pytestmark = [pytest.mark.integration,
              pytest.mark.skipif(NGINX is None, reason="nginx is not installed (make sysdeps)")]


@dataclass
class Proxy:
    url: str
    ca: Issued
    agent: Issued
    alice: Issued
    foreign: Issued

    def ctx(self, client: Issued | None) -> ssl.SSLContext:
        return client_context(self.ca, client)


def render_site(bridge_port: int, listen_port: int, server: Issued, client_ca: Issued) -> str:
    """The deployed file with only its ports and certificate paths changed."""
    text = SITE.read_text()
    replacements = {
        "server 127.0.0.1:8089;": f"server 127.0.0.1:{bridge_port};",
        "listen 8443 ssl;": f"listen 127.0.0.1:{listen_port} ssl;",
        "/etc/nginx/tls/bridge.crt": str(server.cert_path),
        "/etc/nginx/tls/bridge.key": str(server.key_path),
        "/etc/nginx/tls/agents-ca.crt": str(client_ca.cert_path),
    }
    for old, new in replacements.items():
        assert old in text, old
        text = text.replace(old, new)
    return text


@pytest.fixture
async def proxy(tmp_path: Path, aiohttp_server: Callable[..., Awaitable[TestServer]],
                make_settings: Callable[..., Settings]) -> AsyncIterator[Proxy]:
    ca = make_ca(tmp_path, "agents-ca")
    other = make_ca(tmp_path, "other-ca")
    server_cert = issue(tmp_path, ca, "bridge", cn="localhost", server=True)
    agent = issue(tmp_path, ca, "agent", cn="agent_mtls")
    alice = issue(tmp_path, ca, "alice", cn="alice")
    foreign = issue(tmp_path, other, "foreign", cn="agent_mtls")

    settings = make_settings(auth_mtls_enabled=True, mtls_trusted_proxies="127.0.0.1/32")
    bridge = await aiohttp_server(create_app(settings))
    listen = free_port()
    site = tmp_path / "site.conf"
    site.write_text(render_site(bridge.port or 0, listen, server_cert, ca))
    for sub in ("body", "proxy", "fastcgi", "uwsgi", "scgi"):
        (tmp_path / sub).mkdir()
        (tmp_path / sub).chmod(0o777)
    main = tmp_path / "nginx.conf"
    main.write_text(f"""
worker_processes 1;
pid {tmp_path}/nginx.pid;
error_log {tmp_path}/error.log warn;
events {{ worker_connections 64; }}
http {{
    access_log off;
    client_body_temp_path {tmp_path}/body;
    proxy_temp_path {tmp_path}/proxy;
    fastcgi_temp_path {tmp_path}/fastcgi;
    uwsgi_temp_path {tmp_path}/uwsgi;
    scgi_temp_path {tmp_path}/scgi;
    include {site};
}}
""")
    assert NGINX is not None
    proc = await asyncio.create_subprocess_exec(
        NGINX, "-p", str(tmp_path), "-e", str(tmp_path / "error.log"), "-c", str(main), "-g", "daemon off;",
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)
    try:
        for _ in range(100):
            try:
                _, writer = await asyncio.open_connection("127.0.0.1", listen)
                writer.close()
                await writer.wait_closed()
                break
            except OSError:
                if proc.returncode is not None:
                    err = await proc.stderr.read() if proc.stderr else b""
                    raise AssertionError(f"nginx exited: {err.decode()}") from None
                await asyncio.sleep(0.05)
        yield Proxy(f"https://127.0.0.1:{listen}", ca, agent, alice, foreign)
    finally:
        if proc.returncode is None:
            proc.terminate()
        await asyncio.wait_for(proc.communicate(), timeout=15)


async def call(proxy: Proxy, method: str, path: str, client: Issued | None, **kw: Any) -> tuple[int, Any]:
    async with aiohttp.ClientSession() as session, session.request(method, proxy.url + path, ssl=proxy.ctx(client),
                                                                   **kw) as resp:
        if resp.content_type == "application/json":
            return resp.status, await resp.json()
        return resp.status, await resp.text()


async def test_certificate_identity_through_nginx(proxy: Proxy) -> None:
    status, body = await call(proxy, "GET", "/whoami", proxy.agent)
    assert status == 200, body
    assert body["subject"] == "agent_mtls"
    assert body["auth_method"] == "mtls"
    status, body = await call(proxy, "PUT", "/secrets/nginx/db", proxy.agent, json={"data": {"pw": "x"}})
    assert status == 200, body
    status, body = await call(proxy, "GET", "/secrets/nginx/db", proxy.agent)
    assert body["data"] == {"pw": "x"}


async def test_client_supplied_identity_headers_are_overwritten(proxy: Proxy) -> None:
    status, body = await call(proxy, "GET", "/whoami", proxy.alice,
                              headers={"X-SSL-Client-S-DN": "CN=agent_mtls", "X-SSL-Client-Verify": "SUCCESS"})
    assert status == 200
    assert body["subject"] == "alice"


@pytest.mark.parametrize("who", ["none", "foreign"])
async def test_nginx_refuses_unverified_clients(proxy: Proxy, who: str) -> None:
    client = None if who == "none" else proxy.foreign
    status, body = await call(proxy, "GET", "/whoami", client,
                              headers={"X-SSL-Client-S-DN": "CN=agent_mtls", "X-SSL-Client-Verify": "SUCCESS"})
    assert status == 400  # nginx's own answer; the bridge never sees the request
    assert "certificate" in body.lower()
