"""JWT with public keys: RS256/ES256/EdDSA from a JWK Set served over HTTP (or a file), key rotation, the
rate-limited refresh, and the attack matrix (every case a 401, and no request ever leaves for a URL a token
names)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
import warnings
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from joserfc import jwt
from joserfc.errors import SecurityWarning
from joserfc.jwk import ECKey, OctKey, OKPKey, RSAKey

from bridge.app import create_app
from bridge.auth.jwks import JwksCache, JwksError, parse_jwks
from bridge.config import Settings
from devtools.fakevault import FakeVault
from tests.conftest import JWT_SECRET

ISSUER = "https://idp.example"
AUDIENCE = "vault-mcp-bridge"

RSA = RSAKey.generate_key(2048, parameters={"kid": "rsa1"})
RSA_NEXT = RSAKey.generate_key(2048, parameters={"kid": "rsa2"})
EC = ECKey.generate_key("P-256", parameters={"kid": "ec1"})
ED = OKPKey.generate_key("Ed25519", parameters={"kid": "ed1"})
ATTACKER = RSAKey.generate_key(2048, parameters={"kid": "evil"})
ATTACKER_SAME_KID = RSAKey.generate_key(2048, parameters={"kid": "rsa1"})


def b64url(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def claims(**extra: Any) -> dict[str, Any]:
    t = int(time.time())
    base: dict[str, Any] = {"sub": "agent_jwt", "iss": ISSUER, "aud": AUDIENCE, "iat": t, "exp": t + 300}
    base.update(extra)
    return {k: v for k, v in base.items() if v is not None}


def sign(key: Any, alg: str, payload: dict[str, Any] | None = None, **header: Any) -> str:
    head = {"alg": alg, "typ": "JWT", "kid": key.kid, **header}
    head = {k: v for k, v in head.items() if v is not None}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SecurityWarning)
        return jwt.encode(head, payload if payload is not None else claims(), key, algorithms=[alg])


def jwks_of(*keys: Any) -> dict[str, Any]:
    return {"keys": [k.as_dict(private=False) for k in keys]}


@dataclass
class KeyServer:
    """An HTTP server publishing a JWK Set (``/jwks.json``) and counting every request it gets."""

    document: dict[str, Any]
    hits: list[str] = field(default_factory=list)
    server: TestServer | None = None

    @property
    def url(self) -> str:
        assert self.server is not None
        return str(self.server.make_url("/jwks.json"))

    def app(self) -> web.Application:
        async def serve(request: web.Request) -> web.StreamResponse:
            self.hits.append(request.path)
            if request.path == "/redirect":
                raise web.HTTPFound(str(request.url.with_path("/jwks.json")))
            return web.json_response(self.document)

        app = web.Application()
        app.router.add_get("/{tail:.*}", serve)
        return app


@pytest.fixture
async def key_servers(aiohttp_server: Callable[..., Awaitable[TestServer]]) -> tuple[KeyServer, KeyServer]:
    idp = KeyServer(jwks_of(RSA, EC, ED))
    attacker = KeyServer(jwks_of(ATTACKER, ATTACKER_SAME_KID))
    idp.server = await aiohttp_server(idp.app())
    attacker.server = await aiohttp_server(attacker.app())
    return idp, attacker


MakeBridge = Callable[..., Awaitable[TestClient[Any, Any]]]


@pytest.fixture
def bridge(fake_vault: FakeVault, aiohttp_client: Callable[..., Any],
           key_servers: tuple[KeyServer, KeyServer]) -> MakeBridge:
    async def make(**overrides: Any) -> TestClient[Any, Any]:
        base: dict[str, Any] = {"vault_addr": fake_vault.addr, "vault_token": fake_vault.root_token,
                                "jwt_hs256_secret": JWT_SECRET, "jwt_jwks_url": key_servers[0].url,
                                "jwt_issuer": ISSUER, "jwt_audience": AUDIENCE, "rate_limit_enabled": False}
        base.update(overrides)
        client: TestClient[Any, Any] = await aiohttp_client(create_app(Settings.from_env({}, **base)))
        return client

    return make


async def whoami(client: TestClient[Any, Any], token: str) -> tuple[int, dict[str, Any]]:
    resp = await client.get("/whoami", headers={"Authorization": f"Bearer {token}"})
    return resp.status, await resp.json()


@pytest.mark.parametrize(("key", "alg"), [(RSA, "RS256"), (EC, "ES256"), (ED, "EdDSA"), (ED, "Ed25519")])
async def test_public_key_algorithms(bridge: MakeBridge, key: Any, alg: str) -> None:
    client = await bridge()
    status, body = await whoami(client, sign(key, alg))
    assert status == 200, body
    assert body["subject"] == "agent_jwt"
    assert body["auth_method"] == "jwt"


async def test_a_token_without_kid_works_when_exactly_one_key_fits(bridge: MakeBridge,
                                                                   key_servers: tuple[KeyServer, KeyServer]) -> None:
    key_servers[0].document = jwks_of(RSA, EC)
    client = await bridge()
    status, _ = await whoami(client, sign(EC, "ES256", kid=None))
    assert status == 200
    key_servers[0].document = jwks_of(RSA, RSA_NEXT)
    client = await bridge()
    status, _ = await whoami(client, sign(RSA, "RS256", kid=None))
    assert status == 401  # two RSA keys: which one is ambiguous


def hs256_with_public_key() -> str:
    """Algorithm confusion: an HS256 'signature' whose secret is the RSA public key (PEM), kid of that key."""
    head = b64url(json.dumps({"alg": "HS256", "typ": "JWT", "kid": "rsa1"}).encode())
    body = b64url(json.dumps(claims()).encode())
    pem = RSA.as_pem(private=False)
    sig = hmac.new(pem, f"{head}.{body}".encode(), hashlib.sha256).digest()
    return f"{head}.{body}.{b64url(sig)}"


def alg_none() -> str:
    head = b64url(json.dumps({"alg": "none", "typ": "JWT", "kid": "rsa1"}).encode())
    return f"{head}.{b64url(json.dumps(claims()).encode())}."


def bad_signature() -> str:
    head, _body, sig = sign(RSA, "RS256").split(".")
    tampered = b64url(json.dumps(claims(sub="admin")).encode())
    return f"{head}.{tampered}.{sig}"


def attacks(attacker_url: str) -> dict[str, str]:
    t = int(time.time())
    return {
        "alg none": alg_none(),
        "HS256 signed with the RSA public key": hs256_with_public_key(),
        "expired": sign(RSA, "RS256", claims(exp=t - 3600)),
        "not yet valid": sign(RSA, "RS256", claims(nbf=t + 3600)),
        "wrong issuer": sign(RSA, "RS256", claims(iss="https://evil.example")),
        "wrong audience": sign(RSA, "RS256", claims(aud="someone-else")),
        "missing sub": sign(RSA, "RS256", claims(sub=None)),
        "bad signature": bad_signature(),
        "signed by another key with a known kid": sign(ATTACKER_SAME_KID, "RS256"),
        "unknown kid": sign(ATTACKER, "RS256"),
        "jku pointing elsewhere": sign(ATTACKER, "RS256", jku=attacker_url),
        "x5u pointing elsewhere": sign(ATTACKER, "RS256", x5u=attacker_url.replace("jwks.json", "cert.pem")),
        "jku with a known kid": sign(ATTACKER_SAME_KID, "RS256", jku=attacker_url),
        "embedded jwk": sign(ATTACKER, "RS256", jwk=ATTACKER.as_dict(private=False)),
        "oversized token": sign(RSA, "RS256", claims(pad="x" * 5000)),  # JWT_MAX_BYTES=4096 below
        "RS256 key used as ES256": sign(EC, "ES256", kid="rsa1"),
        "HS384 not allowed": sign(OctKey.import_key(JWT_SECRET), "HS384", kid=None),
        "garbage": "a.b.c",
    }


ATTACK_NAMES = list(attacks("https://x/jwks.json"))


@pytest.mark.parametrize("case", ATTACK_NAMES)
async def test_attack_matrix_is_401(bridge: MakeBridge, key_servers: tuple[KeyServer, KeyServer], case: str) -> None:
    idp, attacker = key_servers
    client = await bridge(jwt_jwks_min_refresh_seconds="0", jwt_max_bytes=4096)
    status, body = await whoami(client, attacks(attacker.url)[case])
    assert status == 401, body
    assert body["error"]["code"] == "unauthenticated"
    assert attacker.hits == []  # never followed
    assert all(hit == "/jwks.json" for hit in idp.hits)


async def test_confusion_without_a_shared_secret_is_refused_by_algorithm(bridge: MakeBridge) -> None:
    client = await bridge(jwt_hs256_secret=None)
    status, body = await whoami(client, hs256_with_public_key())
    assert status == 401
    assert "algorithm not allowed" in body["error"]["message"]


async def test_rotation_refreshes_on_an_unknown_kid(bridge: MakeBridge,
                                                    key_servers: tuple[KeyServer, KeyServer]) -> None:
    idp, _ = key_servers
    client = await bridge(jwt_jwks_min_refresh_seconds="0")
    assert len(idp.hits) == 1  # loaded at startup
    status, _ = await whoami(client, sign(RSA, "RS256"))
    assert status == 200
    assert len(idp.hits) == 1  # cached
    idp.document = jwks_of(RSA, RSA_NEXT)
    status, body = await whoami(client, sign(RSA_NEXT, "RS256"))
    assert status == 200, body
    assert len(idp.hits) == 2


async def test_refreshes_are_rate_limited(bridge: MakeBridge, key_servers: tuple[KeyServer, KeyServer]) -> None:
    idp, _ = key_servers
    client = await bridge(jwt_jwks_min_refresh_seconds="60")
    for i in range(5):
        key = RSAKey.generate_key(2048, parameters={"kid": f"made-up-{i}"}) if i == 0 else ATTACKER
        status, _ = await whoami(client, sign(key, "RS256", kid=f"made-up-{i}"))
        assert status == 401
    assert len(idp.hits) == 1  # only the startup load: made-up kids cannot make the bridge fetch


async def test_jwks_file(bridge: MakeBridge, tmp_path: Path) -> None:
    path = tmp_path / "jwks.json"
    path.write_text(json.dumps(jwks_of(EC)))
    client = await bridge(jwt_jwks_url="", jwt_jwks_file=str(path))
    status, _ = await whoami(client, sign(EC, "ES256"))
    assert status == 200
    status, _ = await whoami(client, sign(RSA, "RS256"))
    assert status == 401


async def test_algorithm_allow_list(bridge: MakeBridge) -> None:
    client = await bridge(jwt_algorithms="ES256")
    assert (await whoami(client, sign(EC, "ES256")))[0] == 200
    assert (await whoami(client, sign(RSA, "RS256")))[0] == 401
    assert (await whoami(client, sign(OctKey.import_key(JWT_SECRET), "HS256", kid=None)))[0] == 401


async def test_redirects_are_not_followed(bridge: MakeBridge, key_servers: tuple[KeyServer, KeyServer]) -> None:
    idp, _ = key_servers
    client = await bridge(jwt_jwks_url=idp.url.replace("/jwks.json", "/redirect"))
    assert idp.hits == ["/redirect"]
    assert (await whoami(client, sign(RSA, "RS256")))[0] == 401


def test_parse_keeps_only_public_signing_keys() -> None:
    document = {"keys": [
        RSA.as_dict(private=True),
        OctKey.import_key(JWT_SECRET, parameters={"kid": "oct"}).as_dict(private=True),
        {**EC.as_dict(private=False), "use": "enc"},
        ED.as_dict(private=False),
    ]}
    keys = parse_jwks(document)
    assert [k.kid for k in keys] == ["rsa1", "ed1"]
    assert not any(k.is_private for k in keys)
    with pytest.raises(JwksError):
        parse_jwks({"keys": "nope"})
    with pytest.raises(JwksError):
        parse_jwks({"keys": [{"kty": "RSA", "n": "!!", "e": "AQAB"}]})


def test_plain_http_only_for_loopback() -> None:
    with pytest.raises(ValueError, match="https"):
        JwksCache(url="http://idp.example/jwks.json")
    JwksCache(url="https://idp.example/jwks.json")
    JwksCache(url="http://127.0.0.1:9/jwks.json")


def test_settings_refuse_alg_none() -> None:
    from bridge.config import ConfigError

    with pytest.raises(ConfigError, match="JWT_ALGORITHMS"):
        Settings.from_env({"JWT_ALGORITHMS": "RS256,none"})


@pytest.mark.parametrize(("env", "var"), [
    ({"JWT_JWKS_URL": "https://idp.example/jwks.json"}, "JWT_ISSUER"),
    ({"JWT_JWKS_URL": "https://idp.example/jwks.json", "JWT_ISSUER": ISSUER}, "JWT_AUDIENCE"),
    ({"JWT_JWKS_FILE": "/etc/jwks.json", "JWT_AUDIENCE": AUDIENCE}, "JWT_ISSUER"),
])
def test_a_key_set_needs_issuer_and_audience(env: dict[str, str], var: str) -> None:
    """Issue 9, "JWTs are strict by default": a JWK Set (typically an IdP shared by many services) without
    both would accept any token that IdP signs for any audience."""
    from bridge.config import ConfigError

    with pytest.raises(ConfigError, match=rf"^invalid setting {var}: a JWK Set .* needs both JWT_ISSUER and"):
        Settings.from_env(env)
    Settings.from_env({**env, "JWT_ISSUER": ISSUER, "JWT_AUDIENCE": AUDIENCE})
    Settings.from_env({**env, "AUTH_JWT_ENABLED": "false"})  # not used: not checked


async def test_jwks_token_without_exp_or_living_too_long_is_401(bridge: MakeBridge) -> None:
    client = await bridge()
    t = int(time.time())
    for payload in (claims(exp=None), claims(iat=t, exp=t + 2 * 86400)):
        status, body = await whoami(client, sign(RSA, "RS256", payload))
        assert status == 401, (payload, body)
    status, _ = await whoami(client, sign(RSA, "RS256", claims(iat=t, exp=t + 86400)))
    assert status == 200
