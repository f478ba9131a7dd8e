"""Client-certificate identity relayed by a proxy (issue 9, "Identity from a proxy must not be forgeable"):
believed only from a peer in ``MTLS_TRUSTED_PROXIES`` that also sends ``X-Proxy-Secret``; the identity comes
from the whole forwarded certificate, never from a subject DN string.

Every request here goes to a listening bridge (pytest-aiohttp's server on 127.0.0.1). Settings are passed as
environment variables, so a bridge that does not know them simply ignores them (the tests then show the old
behaviour failing)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from structlog.testing import capture_logs

from bridge.config import ConfigError, Settings
from tests.auth.conftest import MakeClient, hs256
from tests.conftest import API_KEY_ALICE
from tests.support.pki import (
    CRAFTED,
    CRAFTED_SPIFFE,
    PROXY_SECRET,
    SPIFFE_DOMAIN,
    Issued,
    base64_der,
    escaped_pem,
    issue,
    issue_crafted,
    legacy_dn,
    make_ca,
    relayed,
)

MTLS_ENV = {"AUTH_MTLS_ENABLED": "true", "MTLS_TRUSTED_PROXIES": "127.0.0.1/32", "MTLS_PROXY_SECRET": PROXY_SECRET}


@dataclass
class Certs:
    agent_mtls: Issued
    agent_api: Issued
    crafted: dict[str, Issued]
    spiffe: dict[str, Issued]


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    d = tmp_path_factory.mktemp("proxy-pki")
    ca = make_ca(d, "agents-ca")
    return Certs(issue(d, ca, "agent_mtls", cn="agent_mtls"), issue(d, ca, "agent_api", cn="agent_api"),
                 issue_crafted(d, ca, CRAFTED), issue_crafted(d, ca, CRAFTED_SPIFFE))


async def whoami(client: TestClient[Any, Any], headers: dict[str, str]) -> tuple[int, dict[str, Any]]:
    resp = await client.get("/whoami", headers=headers)
    return resp.status, await resp.json()


# --- 1. only the configured proxy, proven by its secret ---

async def test_forged_proxy_headers_from_loopback_are_ignored(make_client: MakeClient, certs: Certs) -> None:
    """The reported attack: any local process (or a DNS-rebinding page) sends the proxy's headers from
    127.0.0.1 and becomes any agent. Without the proxy secret nothing of it is believed."""
    client = await make_client(env=MTLS_ENV)
    forged = {"X-SSL-Client-Verify": "SUCCESS", "X-SSL-Client-S-DN": "CN=agent_api",
              "X-SSL-Client-Cert": escaped_pem(certs.agent_api)}
    with capture_logs() as logs:
        status, body = await whoami(client, forged)
        status_wrong, _ = await whoami(client, {**forged, "X-Proxy-Secret": "x" * 40})
        status_prefix, _ = await whoami(client, {**forged, "X-Proxy-Secret": PROXY_SECRET[:-1]})
    assert (status, status_wrong, status_prefix) == (401, 401, 401), body
    assert body["error"]["code"] == "unauthenticated"
    assert [e["event"] for e in logs if e["event"].startswith("auth.mtls")] == [
        "auth.mtls.proxy_secret_mismatch"] * 3
    assert PROXY_SECRET not in repr(logs)
    # the genuine proxy: same peer, with the secret
    status, body = await whoami(client, relayed(certs.agent_api))
    assert (status, body["subject"], body["auth_method"]) == (200, "agent_api", "mtls")


async def test_subject_dn_header_is_no_identity_source(make_client: MakeClient) -> None:
    client = await make_client(env=MTLS_ENV)
    status, _ = await whoami(client, {"X-Proxy-Secret": PROXY_SECRET, "X-SSL-Client-Verify": "SUCCESS",
                                      "X-SSL-Client-S-DN": "CN=agent_api"})
    assert status == 401


async def test_secret_from_an_untrusted_peer_is_ignored(make_client: MakeClient, certs: Certs) -> None:
    client = await make_client(env={**MTLS_ENV, "MTLS_TRUSTED_PROXIES": "10.0.0.0/8,fd00::/8"})
    with capture_logs() as logs:
        status, _ = await whoami(client, relayed(certs.agent_mtls))
    assert status == 401
    assert [e["event"] for e in logs if e["event"].startswith("auth.mtls")] == ["auth.mtls.untrusted_peer"]
    # ignored, not fatal: another credential on the same request still works
    status, body = await whoami(client, {**relayed(certs.agent_mtls), "X-API-Key": API_KEY_ALICE})
    assert (status, body["subject"]) == (200, "alice")


@pytest.mark.parametrize("form", ["escaped-pem", "base64-der"])
async def test_forwarded_certificate_forms(make_client: MakeClient, certs: Certs, form: str) -> None:
    client = await make_client(env=MTLS_ENV)
    status, body = await whoami(client, relayed(certs.agent_mtls, form=form))
    assert status == 200, body
    assert "kv_write" in body.pop("capabilities")
    assert body == {"subject": "agent_mtls", "auth_method": "mtls", "scopes": ["delete", "list", "read", "write"],
                    "vault_path_prefix": "secret/data/mcp/agent_mtls/"}


def test_certificate_decoding(certs: Certs) -> None:
    from bridge.auth.mtls import decode_forwarded_certificate

    cert = certs.agent_mtls.cert
    pem = escaped_pem(certs.agent_mtls)
    der = base64_der(certs.agent_mtls)
    from urllib.parse import quote, unquote

    for value in (pem, unquote(pem), der, quote(der, safe=""), der[:40] + "\n " + der[40:]):
        assert decode_forwarded_certificate(value) == cert
    for bad in ("", "not a certificate", "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----",
                der[:-8], "A" * 40_000, "%ZZ"):
        with pytest.raises(ValueError, match=r"."):
            decode_forwarded_certificate(bad)


@pytest.mark.parametrize("verify", ["FAILED:certificate has expired", "success", "NONE"])
async def test_verify_header_must_say_success(make_client: MakeClient, certs: Certs, verify: str) -> None:
    client = await make_client(env=MTLS_ENV)
    status, _ = await whoami(client, {**relayed(certs.agent_mtls), "X-SSL-Client-Verify": verify})
    assert status == 401


async def test_relayed_request_without_a_certificate_may_use_another_method(make_client: MakeClient) -> None:
    """``ssl_verify_client optional``: nginx relays requests without a client certificate too (verify
    ``NONE``, no certificate header); those are not certificate logins, an API key still works."""
    client = await make_client(env=MTLS_ENV)
    proxy_only = {"X-Proxy-Secret": PROXY_SECRET, "X-SSL-Client-Verify": "NONE"}
    status, body = await whoami(client, proxy_only)
    assert status == 401
    assert "Authentication required" in body["error"]["message"]
    status, body = await whoami(client, {**proxy_only, "X-API-Key": API_KEY_ALICE})
    assert (status, body["subject"]) == (200, "alice")


async def test_success_without_a_certificate_or_with_garbage_is_401(make_client: MakeClient) -> None:
    client = await make_client(env=MTLS_ENV)
    for cert in (None, "garbage", "-----BEGIN%20CERTIFICATE-----%0AAAAA"):
        headers = {"X-Proxy-Secret": PROXY_SECRET, "X-SSL-Client-Verify": "SUCCESS"}
        if cert is not None:
            headers["X-SSL-Client-Cert"] = cert
        status, body = await whoami(client, headers)
        assert status == 401, cert
        assert body["error"]["code"] == "unauthenticated"


async def test_invalid_jwt_does_not_fall_through_to_the_certificate(make_client: MakeClient, certs: Certs) -> None:
    client = await make_client(env=MTLS_ENV)
    status, _ = await whoami(client, {**relayed(certs.agent_mtls), "Authorization": "Bearer not.a.jwt"})
    assert status == 401
    status, body = await whoami(client, {**relayed(certs.agent_mtls),
                                         "Authorization": f"Bearer {hs256({'sub': 'alice'})}"})
    assert (status, body["subject"]) == (200, "alice")  # JWT comes first in the order


async def test_disabled_header_identity_ignores_everything(make_client: MakeClient, certs: Certs) -> None:
    client = await make_client(env={**MTLS_ENV, "AUTH_MTLS_ENABLED": "false"})
    status, _ = await whoami(client, relayed(certs.agent_mtls))
    assert status == 401


async def test_configured_header_names(make_client: MakeClient, certs: Certs) -> None:
    client = await make_client(env={**MTLS_ENV, "MTLS_CERT_HEADER": "X-Client-Cert",
                                    "MTLS_VERIFY_HEADER": "X-Client-Verify"})
    headers = {"X-Proxy-Secret": PROXY_SECRET, "X-Client-Verify": "SUCCESS",
               "X-Client-Cert": escaped_pem(certs.agent_mtls)}
    status, body = await whoami(client, headers)
    assert (status, body["subject"]) == (200, "agent_mtls")
    status, _ = await whoami(client, relayed(certs.agent_mtls))
    assert status == 401  # the default names mean nothing now


# --- 2. the certificate itself, by the same rule as native TLS ---

@pytest.mark.parametrize("dn_form", ["legacy", "rfc4514"])
@pytest.mark.parametrize("case", list(CRAFTED))
async def test_crafted_subjects(make_client: MakeClient, certs: Certs, case: str, dn_form: str) -> None:
    """Crafted subjects forwarded as a proxy does; a DN header as proxies used to send it rides along and
    must change nothing."""
    client = await make_client(env=MTLS_ENV)
    issued = certs.crafted[case]
    dn = legacy_dn(issued) if dn_form == "legacy" else issued.cert.subject.rfc4514_string()
    status, body = await whoami(client, {**relayed(issued), "X-SSL-Client-S-DN": dn})
    expected = CRAFTED[case]
    assert status == expected.status, body
    if expected.agent is not None:
        assert body["subject"] == expected.agent
    elif status == 403:
        assert body["error"]["code"] == "invalid_subject"


@pytest.mark.parametrize("case", list(CRAFTED_SPIFFE))
async def test_spiffe_id_from_the_forwarded_certificate(make_client: MakeClient, certs: Certs, case: str) -> None:
    client = await make_client(env={**MTLS_ENV, "MTLS_SPIFFE_TRUST_DOMAIN": SPIFFE_DOMAIN})
    status, body = await whoami(client, relayed(certs.spiffe[case]))
    expected = CRAFTED_SPIFFE[case]
    assert status == expected.status, body
    if expected.agent is not None:
        assert body["subject"] == expected.agent


# --- start-up: header identity needs a named proxy and its secret ---

@pytest.mark.parametrize(("env", "var"), [
    ({"AUTH_MTLS_ENABLED": "true", "MTLS_PROXY_SECRET": PROXY_SECRET}, "MTLS_TRUSTED_PROXIES"),
    ({**MTLS_ENV, "MTLS_TRUSTED_PROXIES": "0.0.0.0/0"}, "MTLS_TRUSTED_PROXIES"),
    ({**MTLS_ENV, "MTLS_TRUSTED_PROXIES": "10.0.0.1/32,::/0"}, "MTLS_TRUSTED_PROXIES"),
    ({**MTLS_ENV, "AUTH_MTLS_ENABLED": "false", "MTLS_TRUSTED_PROXIES": "0.0.0.0/0"}, "MTLS_TRUSTED_PROXIES"),
    ({**MTLS_ENV, "MTLS_PROXY_SECRET": ""}, "MTLS_PROXY_SECRET"),
    ({**MTLS_ENV, "MTLS_PROXY_SECRET": "s" * 31}, "MTLS_PROXY_SECRET"),
    ({**MTLS_ENV, "MTLS_PROXY_SECRET": "s" * 32 + ' $host"'}, "MTLS_PROXY_SECRET"),
    ({**MTLS_ENV, "MTLS_CERT_HEADER": "X Cert"}, "MTLS_CERT_HEADER"),
    ({"MTLS_IDENTITY_HEADER": "x-ssl-client-s-dn"}, "MTLS_IDENTITY_HEADER"),
    ({"MTLS_SUBJECT_CN_PREFIX": "CN="}, "MTLS_SUBJECT_CN_PREFIX"),
])
def test_header_identity_settings_are_checked(env: dict[str, str], var: str) -> None:
    with pytest.raises(ConfigError) as info:
        Settings.from_env(env)
    message = str(info.value)
    assert message.startswith(f"invalid setting {var}: "), message
    assert "\n" not in message
    assert PROXY_SECRET not in message


def test_trusted_proxies_have_no_default(tmp_path: Path) -> None:
    assert Settings.from_env({}).mtls_trusted_proxies == []
    secret_file = tmp_path / "proxy-secret"
    secret_file.write_text(PROXY_SECRET + "\n")
    settings = Settings.from_env({"AUTH_MTLS_ENABLED": "true", "MTLS_TRUSTED_PROXIES": "127.0.0.1/32",
                                  "MTLS_PROXY_SECRET_FILE": str(secret_file)})
    assert settings.mtls_proxy_secret is not None
    assert settings.mtls_proxy_secret.get_secret_value() == PROXY_SECRET
    assert PROXY_SECRET not in repr(settings)
