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
    assert "kv_write" not in body.pop("capabilities")  # read and list only
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


# --- strict by default (issue 9, "JWTs are strict by default") ---

@pytest.mark.parametrize(("case", "claims", "env"), [
    ("no exp", {"exp": None}, {}),
    ("no exp, with iat", {"exp": None, "iat": "now"}, {}),
    ("exp 25 h after iat", {"iat": "now", "exp": "now+25h"}, {}),
    ("exp 25 h from now, no iat", {"exp": "now+25h"}, {}),
    ("exp 30 days away, iat backdated", {"iat": "now-30d", "exp": "now+1h"}, {}),
    ("exp 2 h away, JWT_MAX_TTL=1h", {"iat": "now", "exp": "now+2h"}, {"JWT_MAX_TTL": "1h"}),
    ("nbf 5 min ahead", {"nbf": "now+5m"}, {}),
    ("iat 5 min ahead", {"iat": "now+5m"}, {}),
    ("exp not a number", {"exp": "tomorrow"}, {}),
])
async def test_strict_claims_are_401(make_client: MakeClient, case: str, claims: dict[str, Any],
                                     env: dict[str, str]) -> None:
    status, body, challenge = await whoami_env(make_client, hs256(_times({"sub": "alice", **claims})), env)
    assert status == 401, (case, body)
    assert body["error"]["code"] == "unauthenticated"
    assert 'error="invalid_token"' in challenge


@pytest.mark.parametrize(("case", "claims", "env"), [
    ("exp 24 h after iat", {"iat": "now", "exp": "now+24h"}, {}),
    ("exp 24 h from now, no iat", {"exp": "now+24h"}, {}),
    ("iat within the leeway", {"iat": "now+20s", "exp": "now+1h"}, {}),
    ("nbf within the leeway", {"nbf": "now+20s"}, {}),
    ("exp 2 h away, JWT_MAX_TTL=3h", {"iat": "now", "exp": "now+2h"}, {"JWT_MAX_TTL": "3h"}),
])
async def test_strict_claims_accept_honest_tokens(make_client: MakeClient, case: str, claims: dict[str, Any],
                                                  env: dict[str, str]) -> None:
    status, body, _ = await whoami_env(make_client, hs256(_times({"sub": "alice", **claims})), env)
    assert status == 200, (case, body)


@pytest.mark.parametrize(("aud", "expected"), [
    (["other", "vault-bridge"], 200),
    (["other", "another"], 401),
    ([], 401),
    (["vault-bridge-x"], 401),
    ("vault-bridge extra", 401),
])
async def test_list_valued_audience_must_contain_ours(make_client: MakeClient, aud: Any, expected: int) -> None:
    status, _, _ = await whoami(make_client, hs256({"sub": "alice", "aud": aud}), jwt_audience="vault-bridge")
    assert status == expected


async def whoami_env(make_client: MakeClient, token: str, env: dict[str, str]) -> tuple[int, dict[str, Any], str]:
    client = await make_client(env=env)
    resp = await client.get("/whoami", headers={"Authorization": f"Bearer {token}"})
    return resp.status, await resp.json(), resp.headers.get("WWW-Authenticate", "")


_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def _times(claims: dict[str, Any]) -> dict[str, Any]:
    """``"now"``, ``"now+25h"``, ``"now-30d"`` → seconds since the epoch; anything else as is."""
    out: dict[str, Any] = {}
    for name, value in claims.items():
        if isinstance(value, str) and value.startswith("now"):
            offset = value[3:]
            seconds = int(offset[1:-1]) * _UNITS[offset[-1]] if offset else 0
            value = now() + (-seconds if offset.startswith("-") else seconds)
        out[name] = value
    return out


def test_hs256_secret_must_have_32_bytes() -> None:
    from bridge.config import ConfigError, Settings

    with pytest.raises(ConfigError, match=r"^invalid setting JWT_HS256_SECRET: must be at least 32 bytes"):
        Settings.from_env({"JWT_HS256_SECRET": "s" * 31})
    assert Settings.from_env({"JWT_HS256_SECRET": "s" * 32}).jwt_hs256_secret is not None
    with pytest.raises(ConfigError, match="JWT_HS256_SECRET"):
        Settings.from_env({"JWT_HS256_SECRET": "\u00e9" * 15})  # 30 bytes of UTF-8
    with pytest.raises(ConfigError, match="JWT_MAX_TTL"):
        Settings.from_env({"JWT_MAX_TTL": "0"})
    assert Settings.from_env({}).jwt_max_ttl == 86400.0
