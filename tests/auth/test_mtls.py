"""Client-certificate identity from a TLS-terminating proxy's headers: trusted peers only, SUCCESS only."""

from __future__ import annotations

import pytest
from structlog.testing import capture_logs

from bridge.auth.mtls import common_name
from tests.auth.conftest import MakeClient
from tests.conftest import API_KEY_ALICE

OK = {"x-ssl-client-verify": "SUCCESS"}


@pytest.mark.parametrize(("dn", "cn"), [
    ("CN=agent_mtls,O=Acme,C=DE", "agent_mtls"),
    ("O=Acme, CN=agent_mtls", "agent_mtls"),
    ("/C=DE/O=Acme/CN=agent_mtls", "agent_mtls"),
    ("/CN=agent_mtls/O=Acme", "agent_mtls"),
    ("cn=lower,O=x", "lower"),
    ("CN=a\\,b,O=x", "a,b"),
    ("O=Acme", None),
    ("", None),
])
def test_common_name(dn: str, cn: str | None) -> None:
    assert common_name(dn) == cn


@pytest.mark.parametrize("dn", ["CN=agent_mtls,O=Acme", "/O=Acme/CN=agent_mtls", "CN=Agent_MTLS"])
async def test_both_dn_forms_from_a_trusted_proxy(make_client: MakeClient, dn: str) -> None:
    client = await make_client(auth_mtls_enabled=True)
    resp = await client.get("/whoami", headers={"x-ssl-client-s-dn": dn, **OK})
    assert resp.status == 200
    assert await resp.json() == {"subject": "agent_mtls", "auth_method": "mtls",
                                 "scopes": ["delete", "list", "read", "write"],
                                 "vault_path_prefix": "secret/data/mcp/agent_mtls/"}


@pytest.mark.parametrize("verify", ["FAILED:unable to verify", "NONE", "success", ""])
async def test_verify_header_must_be_success(make_client: MakeClient, verify: str) -> None:
    client = await make_client(auth_mtls_enabled=True)
    resp = await client.get("/whoami", headers={"x-ssl-client-s-dn": "CN=agent_mtls",
                                                "x-ssl-client-verify": verify})
    assert resp.status == 401
    assert "WWW-Authenticate" in resp.headers


async def test_missing_verify_header_or_cn_is_401(make_client: MakeClient) -> None:
    client = await make_client(auth_mtls_enabled=True)
    resp = await client.get("/whoami", headers={"x-ssl-client-s-dn": "CN=agent_mtls"})
    assert resp.status == 401
    resp = await client.get("/whoami", headers={"x-ssl-client-s-dn": "O=Acme", **OK})
    assert resp.status == 401


async def test_headers_from_an_untrusted_peer_are_ignored_and_logged(make_client: MakeClient) -> None:
    client = await make_client(auth_mtls_enabled=True, mtls_trusted_proxies="10.0.0.0/8,192.168.0.0/16")
    with capture_logs() as logs:
        resp = await client.get("/whoami", headers={"x-ssl-client-s-dn": "CN=agent_mtls", **OK})
    assert resp.status == 401
    assert "Authentication required" in (await resp.json())["error"]["message"]
    warnings = [e for e in logs if e["event"] == "auth.mtls.untrusted_peer"]
    assert warnings
    assert warnings[0]["log_level"] == "warning"
    assert warnings[0]["peer"] == "127.0.0.1"
    # ignored, not fatal: another credential on the same request still works
    resp = await client.get("/whoami", headers={"x-ssl-client-s-dn": "CN=agent_mtls", **OK,
                                                "X-API-Key": API_KEY_ALICE})
    assert resp.status == 200
    assert (await resp.json())["subject"] == "alice"


async def test_disabled_mtls_ignores_headers(make_client: MakeClient) -> None:
    client = await make_client()
    resp = await client.get("/whoami", headers={"x-ssl-client-s-dn": "CN=agent_mtls", **OK})
    assert resp.status == 401


async def test_configured_header_names_and_prefix(make_client: MakeClient) -> None:
    client = await make_client(auth_mtls_enabled=True, mtls_identity_header="x-client-dn",
                               mtls_verify_header="x-client-ok", mtls_subject_cn_prefix="CN=")
    resp = await client.get("/whoami", headers={"x-client-dn": "CN=agent_mtls", "x-client-ok": "SUCCESS"})
    assert resp.status == 200
    assert (await resp.json())["subject"] == "agent_mtls"
    resp = await client.get("/whoami", headers={"x-ssl-client-s-dn": "CN=agent_mtls", **OK})
    assert resp.status == 401  # the default names mean nothing now


async def test_invalid_cn_is_invalid_subject(make_client: MakeClient) -> None:
    client = await make_client(auth_mtls_enabled=True)
    resp = await client.get("/whoami", headers={"x-ssl-client-s-dn": "CN=bob.smith@example.com,O=Acme", **OK})
    assert resp.status == 403
    assert (await resp.json())["error"]["code"] == "invalid_subject"
