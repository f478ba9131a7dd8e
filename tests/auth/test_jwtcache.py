"""The verified-JWT cache (bridge/auth/jwtcache.py) and its hook in the JWT authenticator."""

from __future__ import annotations

import time
from typing import Any

import pytest
from aiohttp.test_utils import make_mocked_request
from joserfc import jwt
from joserfc.jwk import OctKey

from bridge.auth.identity import Identity
from bridge.auth.jwt import JwtAuthenticator
from bridge.auth.jwtcache import VerifiedTokenCache
from bridge.errors import UnauthenticatedError

ALICE = Identity("alice", "jwt", frozenset({"read"}))
SECRET = "jwt-cache-test-secret-" + "x" * 32


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def test_hit_until_exp_then_miss() -> None:
    clock = Clock()
    cache = VerifiedTokenCache(60, clock=clock)
    cache.put("tok", ALICE, {"exp": clock.now + 10})
    assert cache.get("tok") is ALICE
    clock.now += 9.9
    assert cache.get("tok") is ALICE
    clock.now += 0.1
    assert cache.get("tok") is None  # never past exp
    assert len(cache) == 0


def test_max_age_bounds_tokens_without_or_with_far_exp() -> None:
    clock = Clock()
    cache = VerifiedTokenCache(5, clock=clock)
    cache.put("a", ALICE, {})
    cache.put("b", ALICE, {"exp": clock.now + 3600})
    clock.now += 5
    assert cache.get("a") is None
    assert cache.get("b") is None


def test_expired_not_stored_eviction_and_disabled() -> None:
    clock = Clock()
    cache = VerifiedTokenCache(60, max_entries=2, clock=clock)
    cache.put("old", ALICE, {"exp": clock.now - 1})
    assert len(cache) == 0
    for name in ("a", "b", "c"):
        cache.put(name, ALICE, {})
    assert cache.get("a") is None  # oldest evicted
    assert cache.get("c") is ALICE
    off = VerifiedTokenCache(0)
    off.put("a", ALICE, {})
    assert off.get("a") is None


def _request(token: str) -> Any:
    return make_mocked_request("GET", "/whoami", headers={"Authorization": f"Bearer {token}"})


def test_authenticator_verifies_once_and_never_caches_failures() -> None:
    cache = VerifiedTokenCache(60)
    auth = JwtAuthenticator(hs256_secret=SECRET, issuer="", audience="", default_scopes=["read"], leeway=0,
                            max_bytes=8192, cache=cache)
    now = int(time.time())
    token = jwt.encode({"alg": "HS256"}, {"sub": "alice", "exp": now + 60}, OctKey.import_key(SECRET))
    first = auth.authenticate(_request(token))
    assert first is not None
    assert first.subject == "alice"
    assert cache.misses == 1
    assert auth.authenticate(_request(token)) == first
    assert cache.hits == 1
    bad = token[:-2] + ("AA" if not token.endswith("AA") else "BB")
    for _ in range(2):
        with pytest.raises(UnauthenticatedError):
            auth.authenticate(_request(bad))
    assert len(cache) == 1
