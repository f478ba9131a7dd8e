"""Fixtures for the identity tests: a bridge in front of the in-process fake Vault (no Vault call is needed to
authenticate), and JWT helpers."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from joserfc import jwt
from joserfc.jwk import OctKey

from bridge.app import create_app
from bridge.config import Settings
from devtools.fakevault import FakeVault
from tests.conftest import API_KEYS, JWT_SECRET

MakeClient = Callable[..., Awaitable[TestClient[Any, Any]]]


@pytest.fixture
def make_client(fake_vault: FakeVault, aiohttp_client: Callable[..., Any]) -> MakeClient:
    """``await make_client(env, **settings_overrides)``: a test client for a bridge on the fake Vault (``env``: settings
    as environment variables, e.g. ones that older code would ignore)."""

    async def make(env: Mapping[str, str] | None = None, **overrides: Any) -> TestClient[Any, Any]:
        base: dict[str, Any] = {"vault_addr": fake_vault.addr, "vault_token": fake_vault.root_token,
                                "api_keys_json": json.dumps(API_KEYS), "jwt_hs256_secret": JWT_SECRET,
                                "rate_limit_enabled": False}
        base.update(overrides)
        client: TestClient[Any, Any] = await aiohttp_client(create_app(Settings.from_env(env or {}, **base)))
        return client

    return make


def b64url(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def hs256(claims: dict[str, Any], secret: str = JWT_SECRET) -> str:
    """An HS256 token; ``exp`` is five minutes away unless given (``"exp": None`` leaves it out)."""
    body = {"exp": now() + 300, **claims}
    body = {k: v for k, v in body.items() if v is not None}
    return jwt.encode({"alg": "HS256", "typ": "JWT"}, body, OctKey.import_key(secret))


def hand_signed(claims: dict[str, Any], alg: str, secret: str = JWT_SECRET) -> str:
    """A JWS built by hand, for algorithms our encoder would refuse (``none``, HS384, HS512)."""
    head = b64url(json.dumps({"alg": alg, "typ": "JWT"}).encode())
    body = b64url(json.dumps(claims).encode())
    signing_input = f"{head}.{body}".encode()
    digests = {"HS256": hashlib.sha256, "HS384": hashlib.sha384, "HS512": hashlib.sha512}
    sig = b"" if alg == "none" else hmac.new(secret.encode(), signing_input, digests[alg]).digest()
    return f"{head}.{body}.{b64url(sig)}"


def now() -> int:
    return int(time.time())
