"""``Authorization: Bearer`` JWT (HS256): claims, scopes, and every refused algorithm."""

from __future__ import annotations

from typing import Any

import pytest
from joserfc import jwt
from joserfc.jwk import RSAKey

from tests.auth.conftest import MakeClient, b64url, hand_signed, hs256, now


async def whoami(make_client: MakeClient, token: str, **settings: Any) -> tuple[int, dict[str, Any], str]:
    client = await make_client(**settings)
    resp = await client.get("/whoami", headers={"Authorization": f"Bearer {token}"})
    return resp.status, await resp.json(), resp.headers.get("WWW-Authenticate", "")


async def test_valid_token_default_scopes(make_client: MakeClient) -> None:
    status, body, _ = await whoami(make_client, hs256({"sub": "agent_jwt", "exp": now() + 60}))
    assert status == 200
    assert body == {"subject": "agent_jwt", "auth_method": "jwt", "scopes": ["list", "read"],
                    "vault_path_prefix": "secret/data/mcp/agent_jwt/"}


async def test_sub_is_lower_cased(make_client: MakeClient) -> None:
    status, body, _ = await whoami(make_client, hs256({"sub": "Agent_JWT"}))
    assert status == 200
    assert body["subject"] == "agent_jwt"


@pytest.mark.parametrize(("claims", "scopes"), [
    ({"scopes": ["read", "write", "delete"]}, ["delete", "read", "write"]),
    ({"scopes": ["read", "admin", "sudo"]}, ["read"]),  # unknown scopes are dropped
    ({"scopes": []}, []),
    ({"scope": "write list"}, ["list", "write"]),
    ({"scopes": "read write"}, ["read", "write"]),  # the list claim sent as a string
    ({"scope": "read  delete admin"}, ["delete", "read"]),
    ({}, ["list", "read"]),  # JWT_DEFAULT_SCOPES
])
async def test_scopes(make_client: MakeClient, claims: dict[str, Any], scopes: list[str]) -> None:
    status, body, _ = await whoami(make_client, hs256({"sub": "alice", **claims}))
    assert status == 200
    assert body["scopes"] == scopes


async def test_configured_default_scopes(make_client: MakeClient) -> None:
    status, body, _ = await whoami(make_client, hs256({"sub": "alice"}), jwt_default_scopes="read,write")
    assert status == 200
    assert body["scopes"] == ["read", "write"]


async def test_scope_denial_names_the_scope(make_client: MakeClient) -> None:
    client = await make_client()
    resp = await client.put("/secrets/x", json={"data": {"a": 1}},
                            headers={"Authorization": f"Bearer {hs256({'sub': 'alice', 'scope': 'read'})}"})
    assert resp.status == 403
    err = (await resp.json())["error"]
    assert err["code"] == "forbidden"
    assert "'write'" in err["message"]


def _tokens() -> dict[str, str]:
    t = now()
    rsa = RSAKey.generate_key(2048)
    return {
        "no sub": hs256({"exp": t + 60}),
        "empty sub": hs256({"sub": ""}),
        "non-string sub": hs256({"sub": 42}),
        "expired": hs256({"sub": "alice", "exp": t - 120}),
        "not yet valid": hs256({"sub": "alice", "nbf": t + 120}),
        "wrong secret": hs256({"sub": "alice"}, secret="another-secret-" + "x" * 32),
        "alg none": hand_signed({"sub": "alice"}, "none"),
        "alg none, HS256 signature kept": hand_signed({"sub": "alice"}, "none")[:-1]
        + hs256({"sub": "alice"}).rsplit(".", 1)[1],
        "HS384": hand_signed({"sub": "alice"}, "HS384"),
        "HS512": hand_signed({"sub": "alice"}, "HS512"),
        "RS256": jwt.encode({"alg": "RS256"}, {"sub": "alice"}, rsa, algorithms=["RS256"]),
        "garbage": "not.a.jwt",
        "two parts": "abc.def",
        "tampered payload": _tamper(hs256({"sub": "bob"})),
    }


def _tamper(token: str) -> str:
    head, _, sig = token.split(".")
    payload = b64url(b'{"sub":"alice"}')
    return f"{head}.{payload}.{sig}"


@pytest.mark.parametrize("case", list(_tokens()))
async def test_invalid_tokens_are_401(make_client: MakeClient, case: str) -> None:
    token = _tokens()[case]
    status, body, challenge = await whoami(make_client, token)
    assert status == 401, body
    assert body["error"]["code"] == "unauthenticated"
    assert 'error="invalid_token"' in challenge


async def test_too_large_token_is_401(make_client: MakeClient) -> None:
    status, _, challenge = await whoami(make_client, hs256({"sub": "alice", "pad": "x" * 600}), jwt_max_bytes=512)
    assert status == 401
    assert 'error="invalid_token"' in challenge


async def test_exp_and_nbf_have_leeway(make_client: MakeClient) -> None:
    t = now()
    for claims in ({"exp": t - 10}, {"nbf": t + 10}):
        status, _, _ = await whoami(make_client, hs256({"sub": "alice", **claims}))
        assert status == 200, claims
    status, _, _ = await whoami(make_client, hs256({"sub": "alice", "exp": t - 10}), jwt_leeway_seconds="2s")
    assert status == 401


@pytest.mark.parametrize(("claims", "expected"), [
    ({"iss": "https://issuer.example"}, 200),
    ({"iss": "https://evil.example"}, 401),
    ({}, 401),
])
async def test_issuer_checked_when_configured(make_client: MakeClient, claims: dict[str, Any], expected: int) -> None:
    status, _, _ = await whoami(make_client, hs256({"sub": "alice", **claims}), jwt_issuer="https://issuer.example")
    assert status == expected


async def test_issuer_ignored_when_not_configured(make_client: MakeClient) -> None:
    status, _, _ = await whoami(make_client, hs256({"sub": "alice", "iss": "anyone"}))
    assert status == 200


@pytest.mark.parametrize(("claims", "expected"), [
    ({"aud": "vault-bridge"}, 200),
    ({"aud": ["other", "vault-bridge"]}, 200),
    ({"aud": "other"}, 401),
    ({"aud": ["other"]}, 401),
    ({}, 401),
])
async def test_audience_checked_when_configured(make_client: MakeClient, claims: dict[str, Any],
                                                expected: int) -> None:
    status, _, _ = await whoami(make_client, hs256({"sub": "alice", **claims}), jwt_audience="vault-bridge")
    assert status == expected


async def test_invalid_jwt_does_not_fall_through_to_mtls(make_client: MakeClient) -> None:
    client = await make_client(auth_mtls_enabled=True)
    resp = await client.get("/whoami", headers={"Authorization": "Bearer not.a.jwt",
                                                "x-ssl-client-s-dn": "CN=alice", "x-ssl-client-verify": "SUCCESS"})
    assert resp.status == 401


async def test_no_secret_configured_refuses_tokens(make_client: MakeClient) -> None:
    client = await make_client(jwt_hs256_secret=None)
    resp = await client.get("/whoami", headers={"Authorization": f"Bearer {hs256({'sub': 'alice'})}"})
    assert resp.status == 401


async def test_disabled_jwt_ignores_bearer(make_client: MakeClient) -> None:
    client = await make_client(auth_jwt_enabled=False)
    resp = await client.get("/whoami", headers={"Authorization": f"Bearer {hs256({'sub': 'alice'})}"})
    assert resp.status == 401


async def test_other_schemes_are_not_a_jwt(make_client: MakeClient) -> None:
    client = await make_client()
    resp = await client.get("/whoami", headers={"Authorization": "Basic YWxpY2U6cHc="})
    assert resp.status == 401
    assert "Authentication required" in (await resp.json())["error"]["message"]
