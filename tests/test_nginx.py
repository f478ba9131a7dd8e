"""mTLS behind a real proxy: Debian's nginx runs ``deploy/nginx/vault-mcp-bridge.conf`` (ports and paths
substituted) on free ports in front of a real bridge and OpenBao: the forwarded certificate with the proxy
secret, certificates with crafted subjects, SPIFFE IDs, and failed-login throttling per client behind the
proxy. Skipped only when nginx is not installed (``make sysdeps`` installs it)."""

from __future__ import annotations

import contextlib
import itertools
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
from devtools.devvault import free_port
from tests.support.nginx import NGINX, running_nginx
from tests.support.pki import (
    CRAFTED,
    CRAFTED_SPIFFE,
    PROXY_SECRET,
    SPIFFE_DOMAIN,
    Issued,
    client_context,
    escaped_pem,
    issue,
    issue_crafted,
    make_ca,
)

ROOT = Path(__file__).resolve().parents[1]
SITE = ROOT / "deploy" / "nginx" / "vault-mcp-bridge.conf"

pytestmark = [pytest.mark.integration,
              pytest.mark.skipif(NGINX is None, reason="nginx is not installed (make sysdeps)")]


@dataclass
class Proxy:
    url: str
    ca: Issued
    agent: Issued
    alice: Issued
    foreign: Issued
    crafted: dict[str, Issued]
    spiffe: dict[str, Issued]

    def ctx(self, client: Issued | None) -> ssl.SSLContext:
        return client_context(self.ca, client)


SECRET_INCLUDE = "include                 /etc/nginx/vault-mcp-bridge-proxy-secret.conf;"


def render_site(bridge_port: int, listen_port: int, server: Issued, client_ca: Issued, secret_conf: Path) -> str:
    """The deployed file with only its ports and file paths changed."""
    text = SITE.read_text()
    replacements = {
        "server 127.0.0.1:8089;": f"server 127.0.0.1:{bridge_port};",
        "listen 8443 ssl;": f"listen 127.0.0.1:{listen_port} ssl;",
        "/etc/nginx/tls/bridge.crt": str(server.cert_path),
        "/etc/nginx/tls/bridge.key": str(server.key_path),
        "/etc/nginx/tls/agents-ca.crt": str(client_ca.cert_path),
        "/etc/nginx/vault-mcp-bridge-proxy-secret.conf": str(secret_conf),
    }
    for old, new in replacements.items():
        assert old in text, old
        text = text.replace(old, new)
    return text


StartProxy = Callable[..., Awaitable[Proxy]]


@pytest.fixture(scope="module")
def nginx_pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    d = tmp_path_factory.mktemp("nginx-pki")
    ca = make_ca(d, "agents-ca")
    other = make_ca(d, "other-ca")
    return {"dir": d, "ca": ca, "server": issue(d, ca, "bridge", cn="localhost", server=True),
            "agent": issue(d, ca, "agent", cn="agent_mtls"), "alice": issue(d, ca, "alice", cn="alice"),
            "foreign": issue(d, other, "foreign", cn="agent_mtls"),
            "crafted": issue_crafted(d, ca, CRAFTED), "spiffe": issue_crafted(d, ca, CRAFTED_SPIFFE)}


@pytest.fixture
async def start_proxy(tmp_path: Path, aiohttp_server: Callable[..., Awaitable[TestServer]],
                      make_settings: Callable[..., Settings], nginx_pki: dict[str, Any]) -> AsyncIterator[StartProxy]:
    """``await start_proxy(**env)``: a bridge (header identity on, trusting 127.0.0.1/32 with the proxy secret,
    plus ``env``) behind nginx running the deployed site file."""
    stack = contextlib.AsyncExitStack()
    numbers = itertools.count()

    async def start(**env: str) -> Proxy:
        settings = make_settings(env={"AUTH_MTLS_ENABLED": "true", "MTLS_TRUSTED_PROXIES": "127.0.0.1/32",
                                      "MTLS_PROXY_SECRET": PROXY_SECRET, **env})
        bridge = await aiohttp_server(create_app(settings))
        listen = free_port()
        work = tmp_path / f"nginx-{next(numbers)}"
        work.mkdir()
        secret_conf = work / "proxy-secret.conf"
        secret_conf.write_text(f'proxy_set_header X-Proxy-Secret "{PROXY_SECRET}";\n')
        site = work / "site.conf"
        site.write_text(render_site(bridge.port or 0, listen, nginx_pki["server"], nginx_pki["ca"], secret_conf))
        await stack.enter_async_context(running_nginx(work, f"    include {site};", listen))
        return Proxy(f"https://127.0.0.1:{listen}", nginx_pki["ca"], nginx_pki["agent"], nginx_pki["alice"],
                     nginx_pki["foreign"], nginx_pki["crafted"], nginx_pki["spiffe"])

    try:
        yield start
    finally:
        await stack.aclose()


@pytest.fixture
async def proxy(start_proxy: StartProxy) -> Proxy:
    return await start_proxy()


async def call(proxy: Proxy, method: str, path: str, client: Issued | None, *, source: str = "127.0.0.1",
               **kw: Any) -> tuple[int, Any]:
    connector = aiohttp.TCPConnector(local_addr=(source, 0))  # the client address nginx sees
    async with aiohttp.ClientSession(connector=connector) as session, session.request(
            method, proxy.url + path, ssl=proxy.ctx(client), **kw) as resp:
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
    forged = {"X-SSL-Client-S-DN": "CN=agent_mtls", "X-SSL-Client-Verify": "SUCCESS",
              "X-SSL-Client-Cert": escaped_pem(proxy.agent), "X-Proxy-Secret": "forged-" + "x" * 32}
    status, body = await call(proxy, "GET", "/whoami", proxy.alice, headers=forged)
    assert status == 200, body
    assert body["subject"] == "alice"


@pytest.mark.parametrize("who", ["none", "foreign"])
async def test_nginx_refuses_unverified_clients(proxy: Proxy, who: str) -> None:
    client = None if who == "none" else proxy.foreign
    status, body = await call(proxy, "GET", "/whoami", client,
                              headers={"X-SSL-Client-S-DN": "CN=agent_mtls", "X-SSL-Client-Verify": "SUCCESS"})
    assert status == 400  # nginx's own answer; the bridge never sees the request
    assert "certificate" in body.lower()


def test_site_file_forwards_the_certificate_and_the_secret() -> None:
    text = SITE.read_text()
    assert "proxy_set_header        X-SSL-Client-Cert $ssl_client_escaped_cert;" in text
    assert SECRET_INCLUDE in text
    assert "$ssl_client_s_dn" not in text  # the DN string is no identity source any more


async def test_crafted_subjects_through_nginx(proxy: Proxy) -> None:
    """Real certificates with crafted subjects, verified by nginx and forwarded as the deployed file does: the
    bridge reads exactly one CN from the certificate itself."""
    wrong = {}
    for name, expected in CRAFTED.items():
        status, body = await call(proxy, "GET", "/whoami", proxy.crafted[name])
        got = (status, body.get("subject") if isinstance(body, dict) else None)
        if got != (expected.status, expected.agent):
            wrong[name] = got
    assert wrong == {}


async def test_spiffe_ids_through_nginx(start_proxy: StartProxy) -> None:
    proxy = await start_proxy(MTLS_SPIFFE_TRUST_DOMAIN=SPIFFE_DOMAIN)
    wrong = {}
    for name, expected in CRAFTED_SPIFFE.items():
        status, body = await call(proxy, "GET", "/whoami", proxy.spiffe[name])
        got = (status, body.get("subject") if isinstance(body, dict) else None)
        if got != (expected.status, expected.agent):
            wrong[name] = got
    assert wrong == {}


async def test_failed_logins_behind_nginx_count_per_client(start_proxy: StartProxy) -> None:
    """Behind the proxy every request comes from nginx's address; the bridge counts failures against the client
    address nginx appended to X-Forwarded-For (believed because the proxy secret came with it), so one
    client guessing keys does not lock out the others."""
    proxy = await start_proxy(AUTH_FAILURE_LIMIT="3")
    wrong_key = {"X-API-Key": "wrong-key-" + "w" * 20}
    statuses = [(await call(proxy, "GET", "/whoami", proxy.agent, source="127.0.0.2", headers=wrong_key))[0]
                for _ in range(4)]
    assert statuses == [401, 401, 401, 429]
    status, _ = await call(proxy, "GET", "/whoami", proxy.agent, source="127.0.0.2")  # even a good credential
    assert status == 429
    status, body = await call(proxy, "GET", "/whoami", proxy.agent, source="127.0.0.3")
    assert (status, body["subject"]) == (200, "agent_mtls")
    # a client cannot choose the address it is counted against: nginx appends the real one
    spoofed = {**wrong_key, "X-Forwarded-For": "127.0.0.9"}
    assert (await call(proxy, "GET", "/whoami", proxy.agent, source="127.0.0.2", headers=spoofed))[0] == 429
