"""``/status`` behind a proxy needs an admin key: ``STATUS_ALLOWED_NETWORKS`` applies to the direct peer of a
request no proxy relayed. Relayed = it carries Forwarded / X-Forwarded-For / X-Forwarded-Host /
X-Forwarded-Proto / X-Real-IP / Via, or (with mTLS header identity on) its direct peer is in
``MTLS_TRUSTED_PROXIES``. The finding: with a proxy on the bridge's host, every client on the internet was
"from 127.0.0.1" and got the status page. Through Debian's nginx, and directly."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

from bridge.app import create_app
from bridge.config import Settings
from devtools.devvault import free_port
from tests.conftest import OpsClient
from tests.support.nginx import NGINX, running_nginx

pytestmark = pytest.mark.integration

ADMIN_KEY = "admin-key-" + "p" * 24


@pytest.mark.parametrize("header", [("X-Forwarded-For", "203.0.113.9"), ("Forwarded", "for=203.0.113.9"),
                                    ("X-Real-IP", "203.0.113.9"), ("X-Forwarded-Proto", "https"),
                                    ("X-Forwarded-Host", "bridge.example"), ("Via", "1.1 proxy")])
async def test_relayed_request_needs_the_admin_key(ops_client: OpsClient, header: tuple[str, str]) -> None:
    client = await ops_client(admin_api_keys=ADMIN_KEY)  # STATUS_ALLOWED_NETWORKS: loopback (the default)
    assert (await client.get("/status")).status == 200  # direct from loopback: allowed
    resp = await client.get("/status", headers=dict([header]))
    assert resp.status == 403, header
    assert (await resp.json())["error"]["code"] == "status_forbidden"
    assert (await client.get("/status", headers={**dict([header]), "X-API-Key": ADMIN_KEY})).status == 200


PROXY_SECRET = "proxy-secret-" + "p" * 32


async def test_trusted_proxy_peer_needs_the_admin_key(ops_client: OpsClient) -> None:
    """No forwarding header at all, but the mTLS proxy's own X-Proxy-Secret marker: relayed all the same."""
    client = await ops_client(auth_mtls_enabled=True, mtls_trusted_proxies="127.0.0.1/32",
                              mtls_proxy_secret=PROXY_SECRET, admin_api_keys=ADMIN_KEY)
    for secret in (PROXY_SECRET, "not-the-secret"):
        assert (await client.get("/status", headers={"X-Proxy-Secret": secret})).status == 403
    assert (await client.get("/status", headers={"X-Proxy-Secret": PROXY_SECRET,
                                                 "X-API-Key": ADMIN_KEY})).status == 200
    # A browser on the bridge's own host (make run trusts loopback as its demo proxy) sends no proxy header:
    # not relayed, so the network rule applies.
    assert (await client.get("/status")).status == 200


@pytest.fixture
async def nginx_in_front(tmp_path: Path, aiohttp_server: Callable[..., Awaitable[TestServer]],
                         make_settings: Callable[..., Settings]) -> AsyncIterator[str]:
    """A plain reverse proxy, as an operator would put in front: Host and X-Forwarded-For passed on."""
    if NGINX is None:
        pytest.skip("nginx is not installed (make sysdeps)")
    bridge = await aiohttp_server(create_app(make_settings(admin_api_keys=ADMIN_KEY)))
    listen = free_port()
    http = f"""    server {{
        listen 127.0.0.1:{listen};
        location / {{
            proxy_pass http://127.0.0.1:{bridge.port};
            proxy_set_header Host $host;
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
        }}
    }}"""
    async with running_nginx(tmp_path / "nginx", http, listen):
        yield f"http://127.0.0.1:{listen}"


async def test_status_through_nginx_needs_the_admin_key(nginx_in_front: str) -> None:
    async def get(**headers: Any) -> int:
        async with aiohttp.ClientSession() as session, session.get(
                nginx_in_front + "/status", headers={"Host": "localhost", **headers}) as resp:
            return resp.status

    assert await get() == 403  # the bridge's peer is nginx on 127.0.0.1, the client could be anyone
    assert await get(**{"X-API-Key": ADMIN_KEY}) == 200
