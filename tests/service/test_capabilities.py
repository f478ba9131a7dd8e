"""The capability cache without Vault: paths resolved per agent, any-of capabilities, ``root``, the TTL, one
request in flight per agent, and "Vault could not say" (refused, slow) hiding nothing. (Against OpenBao:
tests/mcp/test_capabilities.py.)"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any, cast

import pytest

from bridge.auth.identity import Identity
from bridge.config import Settings
from bridge.errors import ForbiddenError
from bridge.service import capabilities as caps
from bridge.service.access import VaultAccess
from bridge.service.capabilities import CapabilityCache, need

ALICE = Identity("alice", "api_key", frozenset({"read"}))
READ = need("{kv}/data/{ns}/{probe}", "read")
WRITE = need("{kv}/data/{ns}/{probe}", "create", "update")
ENCRYPT = need("{transit}/encrypt/{key}", "update")


class StubAccess:
    """What the cache uses of VaultAccess: the settings and ``call`` (which here answers from ``grants``)."""

    def __init__(self, grants: dict[str, list[str]], *, delay: float = 0.0, refuse: bool = False) -> None:
        self.settings = Settings.from_env({}, vault_token="x")
        self.grants = grants
        self.delay = delay
        self.refuse = refuse
        self.asked: list[list[str]] = []
        self.vault = self

    @property
    def sys(self) -> StubAccess:
        return self

    async def capabilities_self(self, paths: list[str], *, token: str) -> dict[str, frozenset[str]]:
        self.asked.append(paths)
        await asyncio.sleep(self.delay)
        if self.refuse:
            raise ForbiddenError("permission denied")
        return {p: frozenset(self.grants.get(p, ["deny"])) for p in paths}

    async def call(self, identity: Identity, what: str, fn: Callable[[str], Awaitable[Any]]) -> Any:
        return await fn("token")


def _cache(access: StubAccess, ttl: float = 60, clock: Callable[[], float] = time.monotonic) -> CapabilityCache:
    cache = CapabilityCache(cast(VaultAccess, access), ttl, clock=clock)
    cache.register([READ, WRITE, ENCRYPT])
    return cache


async def test_paths_any_of_and_root() -> None:
    access = StubAccess({"secret/data/mcp/alice/vault-mcp-bridge-probe": ["read", "update"],
                         "transit/encrypt/mcp.alice.vault-mcp-bridge-probe": ["deny"]})
    cache = _cache(access)
    assert await cache.grants(ALICE, [READ])
    assert await cache.grants(ALICE, [WRITE])  # update is one of create/update
    assert not await cache.grants(ALICE, [ENCRYPT])
    assert not await cache.grants(ALICE, [READ, ENCRYPT])
    assert await cache.grants(ALICE, [])
    assert access.asked == [sorted(["secret/data/mcp/alice/vault-mcp-bridge-probe",
                                    "transit/encrypt/mcp.alice.vault-mcp-bridge-probe"])]  # one request
    root = _cache(StubAccess({p: ["root"] for p in access.asked[0]}))
    assert await root.grants(ALICE, [ENCRYPT])


async def test_ttl_and_single_flight() -> None:
    now = [0.0]
    access = StubAccess({}, delay=0.05)
    cache = _cache(access, ttl=10, clock=lambda: now[0])
    await asyncio.gather(*(cache.grants(ALICE, [READ]) for _ in range(20)))
    assert len(access.asked) == 1
    now[0] = 9.0
    await cache.grants(ALICE, [READ])
    assert len(access.asked) == 1
    now[0] = 10.5
    await cache.grants(ALICE, [READ])
    assert len(access.asked) == 2
    uncached = _cache(access, ttl=0)
    await uncached.grants(ALICE, [READ])
    await uncached.grants(ALICE, [READ])
    assert len(access.asked) == 4


@pytest.mark.parametrize("problem", ["refused", "slow"])
async def test_when_vault_cannot_say_nothing_is_hidden(problem: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(caps, "ASK_SECONDS", 0.05)
    now = [0.0]
    access = StubAccess({}, refuse=problem == "refused", delay=1.0 if problem == "slow" else 0.0)
    cache = _cache(access, ttl=60, clock=lambda: now[0])
    assert await cache.grants(ALICE, [WRITE])
    now[0] = caps.UNKNOWN_SECONDS + 1  # asked again long before CAPABILITIES_TTL
    access.refuse, access.delay = False, 0.0
    assert not await cache.grants(ALICE, [WRITE])
