"""Native TLS: HTTPS, and client certificates verified by the bridge itself (CN or SPIFFE ID)."""

from __future__ import annotations

import asyncio
import json
import os
import ssl
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

from bridge.app import create_app
from bridge.config import ConfigError, Settings
from bridge.tls import server_ssl_context, ssl_context_from_settings
from devtools.devvault import DevVault, free_port
from devtools.fakevault import FakeVault
from tests.conftest import API_KEY_BOB, API_KEYS
from tests.support.pki import (
    CRAFTED,
    CRAFTED_SPIFFE,
    SPIFFE_DOMAIN,
    Issued,
    client_context,
    issue,
    issue_crafted,
    make_ca,
)


@dataclass
class Pki:
    ca: Issued
    other_ca: Issued
    server: Issued
    alice: Issued
    spiffe_bob: Issued
    spiffe_elsewhere: Issued
    foreign: Issued
    expired: Issued
    bad_name: Issued


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    d = tmp_path_factory.mktemp("pki")
    ca = make_ca(d, "ca")
    other = make_ca(d, "other-ca")
    return Pki(
        ca=ca, other_ca=other,
        server=issue(d, ca, "server", cn="localhost", server=True),
        alice=issue(d, ca, "alice", cn="alice"),
        spiffe_bob=issue(d, ca, "spiffe-bob", cn="ignored", uris=("spiffe://example.org/ns/prod/sa/bob",)),
        spiffe_elsewhere=issue(d, ca, "spiffe-else", uris=("spiffe://evil.example/ns/prod/sa/bob",)),
        foreign=issue(d, other, "foreign", cn="alice"),
        expired=issue(d, ca, "expired", cn="alice", expired=True),
        bad_name=issue(d, ca, "bad-name", cn="Alice Smith/ops"),
    )


Serve = Callable[..., Awaitable[TestServer]]


@pytest.fixture
def serve(fake_vault: FakeVault, aiohttp_server: Callable[..., Awaitable[TestServer]], pki: Pki) -> Serve:
    async def start(**overrides: Any) -> TestServer:
        base: dict[str, Any] = {"vault_addr": fake_vault.addr, "vault_token": fake_vault.root_token,
                                "api_keys_json": json.dumps(API_KEYS), "tls_cert_file": str(pki.server.cert_path),
                                "tls_key_file": str(pki.server.key_path), "rate_limit_enabled": False}
        base.update(overrides)
        settings = Settings.from_env({}, **base)
        return await aiohttp_server(create_app(settings), ssl=ssl_context_from_settings(settings))

    return start


async def get(server: TestServer, ctx: ssl.SSLContext, path: str = "/whoami",
              headers: dict[str, str] | None = None) -> tuple[int, dict[str, Any]]:
    async with aiohttp.ClientSession() as session, session.get(server.make_url(path), ssl=ctx,
                                                               headers=headers) as resp:
        return resp.status, await resp.json()


async def test_https_without_client_certificates(serve: Serve, pki: Pki) -> None:
    server = await serve()
    assert server.scheme == "https"
    status, body = await get(server, client_context(pki.ca, None), headers={"X-API-Key": API_KEY_BOB})
    assert status == 200
    assert body["subject"] == "bob"
    status, _ = await get(server, client_context(pki.ca, pki.alice))  # a certificate is not asked for
    assert status == 401


async def test_client_certificate_names_the_agent(serve: Serve, pki: Pki) -> None:
    server = await serve(tls_client_ca_file=str(pki.ca.cert_path))
    status, body = await get(server, client_context(pki.ca, pki.alice))
    assert status == 200, body
    assert body["subject"] == "alice"
    assert body["auth_method"] == "mtls"
    assert body["scopes"] == ["delete", "list", "read", "write"]


async def test_explicit_credentials_come_before_the_certificate(serve: Serve, pki: Pki) -> None:
    server = await serve(tls_client_ca_file=str(pki.ca.cert_path))
    status, body = await get(server, client_context(pki.ca, pki.alice), headers={"X-API-Key": API_KEY_BOB})
    assert status == 200
    assert body["subject"] == "bob"


@pytest.mark.parametrize("who", ["none", "foreign", "expired"])
async def test_unverified_clients_fail_the_handshake(serve: Serve, pki: Pki, who: str) -> None:
    server = await serve(tls_client_ca_file=str(pki.ca.cert_path))
    client = {"none": None, "foreign": pki.foreign, "expired": pki.expired}[who]
    with pytest.raises(aiohttp.ClientError):
        await get(server, client_context(pki.ca, client))


async def test_invalid_common_name_is_refused(serve: Serve, pki: Pki) -> None:
    server = await serve(tls_client_ca_file=str(pki.ca.cert_path))
    status, body = await get(server, client_context(pki.ca, pki.bad_name))
    assert status == 403
    assert body["error"]["code"] == "invalid_subject"


async def test_spiffe_id_names_the_agent(serve: Serve, pki: Pki) -> None:
    server = await serve(tls_client_ca_file=str(pki.ca.cert_path), mtls_spiffe_trust_domain="example.org")
    status, body = await get(server, client_context(pki.ca, pki.spiffe_bob))
    assert status == 200, body
    assert body["subject"] == "bob"
    for cert in (pki.spiffe_elsewhere, pki.alice):  # another trust domain; no SPIFFE ID at all
        status, body = await get(server, client_context(pki.ca, cert))
        assert status == 401, body


def test_tls_settings_are_checked(pki: Pki, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="TLS_CLIENT_CA_FILE needs"):
        Settings.from_env({}, tls_client_ca_file=str(pki.ca.cert_path))
    with pytest.raises(ConfigError, match="go together"):
        Settings.from_env({}, tls_cert_file=str(pki.server.cert_path))
    with pytest.raises(ConfigError, match="TLS_CERT_FILE"):
        server_ssl_context(str(tmp_path / "missing.crt"), str(pki.server.key_path))
    with pytest.raises(ConfigError, match="TLS_CERT_FILE"):
        server_ssl_context(str(pki.server.cert_path), str(pki.alice.key_path))  # key does not match
    with pytest.raises(ConfigError, match="TLS_CLIENT_CA_FILE"):
        server_ssl_context(str(pki.server.cert_path), str(pki.server.key_path), str(tmp_path / "nope.pem"))


@pytest.fixture
async def served_bridge(bao: DevVault, pki: Pki) -> AsyncIterator[str]:
    """``vault-mcp-bridge serve`` as a process, with TLS and client certificates from the environment."""
    port = free_port()
    env = {**{k: v for k, v in os.environ.items() if not k.startswith(("VAULT_", "TLS_", "JWT_", "API_"))},
           "VAULT_ADDR": bao.addr, "VAULT_TOKEN": bao.root_token, "PORT": str(port),
           "TLS_CERT_FILE": str(pki.server.cert_path), "TLS_KEY_FILE": str(pki.server.key_path),
           "TLS_CLIENT_CA_FILE": str(pki.ca.cert_path), "LOG_LEVEL": "warning", "WORKERS": "1"}
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "bridge", "serve", env=env,
                                                stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)
    url = f"https://127.0.0.1:{port}"
    try:
        ctx = client_context(pki.ca, pki.alice)
        for _ in range(100):
            try:
                async with aiohttp.ClientSession() as session, session.get(f"{url}/healthz", ssl=ctx):
                    break
            except aiohttp.ClientError:
                if proc.returncode is not None:
                    err = await proc.stderr.read() if proc.stderr else b""
                    raise AssertionError(err.decode()) from None
                await asyncio.sleep(0.1)
        yield url
    finally:
        if proc.returncode is None:
            proc.terminate()
        await asyncio.wait_for(proc.communicate(), timeout=15)


@pytest.mark.integration
async def test_cli_serves_mtls(served_bridge: str, pki: Pki) -> None:
    async with aiohttp.ClientSession() as session:
        async with session.put(f"{served_bridge}/secrets/tls/db", json={"data": {"pw": "x"}},
                               ssl=client_context(pki.ca, pki.alice)) as resp:
            assert resp.status == 200, await resp.text()
        async with session.get(f"{served_bridge}/secrets/tls/db", ssl=client_context(pki.ca, pki.alice)) as resp:
            assert (await resp.json())["data"] == {"pw": "x"}
        with pytest.raises(aiohttp.ClientError):
            async with session.get(f"{served_bridge}/whoami", ssl=client_context(pki.ca, None)):
                pass


async def test_crafted_subjects_by_the_same_rule_as_proxied_certificates(serve: Serve, pki: Pki,
                                                                         tmp_path: Path) -> None:
    """Native TLS and the proxy's forwarded certificate share one rule (bridge.auth.peercert.certificate_agent):
    the crafted subjects of tests/auth/test_mtls.py give the same answers here."""
    crafted = issue_crafted(tmp_path, pki.ca, CRAFTED)
    spiffe = issue_crafted(tmp_path, pki.ca, CRAFTED_SPIFFE)
    for cases, issued, extra in ((CRAFTED, crafted, {}),
                                 (CRAFTED_SPIFFE, spiffe, {"mtls_spiffe_trust_domain": SPIFFE_DOMAIN})):
        server = await serve(tls_client_ca_file=str(pki.ca.cert_path), **extra)
        wrong = {}
        for name, expected in cases.items():
            status, body = await get(server, client_context(pki.ca, issued[name]))
            if (status, body.get("subject")) != (expected.status, expected.agent):
                wrong[name] = (status, body)
        assert wrong == {}
