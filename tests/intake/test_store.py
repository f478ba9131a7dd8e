"""The consumed-nonce record (bridge/intake/store.py): one contract, run against the in-memory store and against
the bridge's own :class:`~bridge.service.intake.VaultIntakeStore` on a real OpenBao (the KV v2 facts it relies on:
a ``cas: 0`` write is create-only, ``cas: 1`` updates the claim, a metadata delete lets a claim succeed again, the
records can be listed by name; tests/vault/test_kv.py checks them on the client itself)."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator

import pytest
from pydantic import SecretStr

from bridge.config import Settings
from bridge.intake import IntakeCodec, IntakeField, IntakeRecord, IntakeStore, IntakeTicket, MemoryIntakeStore
from bridge.intake.store import AgentVoid, expired_record, record_path
from bridge.service.access import VaultAccess
from bridge.service.intake import VaultIntakeStore
from bridge.vault import TokenKeeper, VaultClient
from bridge.vault.auth import StaticToken
from devtools.devvault import DevVault
from tests.intake.conftest import KEY, Clock


@pytest.fixture(params=["memory", "openbao"])
def backend(request: pytest.FixtureRequest) -> DevVault | None:
    """``None`` for the in-memory store, else the session's OpenBao (a sync fixture: it may start the server)."""
    return request.getfixturevalue("bao") if request.param == "openbao" else None


@pytest.fixture
async def store(backend: DevVault | None) -> AsyncIterator[IntakeStore]:
    if backend is None:
        yield MemoryIntakeStore()
        return
    # a prefix of its own per test, so that listing and purging see only this test's records
    settings = Settings.from_env({}, vault_addr=backend.addr, vault_token=backend.root_token,
                                 default_prefix=f"t{secrets.token_hex(4)}")
    async with VaultClient(backend.addr) as vault:
        keeper = TokenKeeper(vault, StaticToken(SecretStr(backend.root_token)))
        yield VaultIntakeStore(VaultAccess(settings, vault, bridge_tokens=keeper))


def _ticket(codec: IntakeCodec, path: str = "app/db") -> IntakeTicket:
    return codec.issue(agent="alice", path=path, cas=0, fields=(IntakeField("v"),))


async def test_claim_is_create_only_and_release_reopens(store: IntakeStore) -> None:
    clock = Clock()
    codec = IntakeCodec(KEY, 600, clock=clock)
    ticket = _ticket(codec)
    assert await store.lookup(ticket) is None
    assert await store.claim(ticket, clock.now) is True
    assert await store.claim(ticket, clock.now) is False
    record = await store.lookup(ticket)
    assert record == IntakeRecord("claimed", "alice", "app/db", clock.now)
    await store.release(ticket)
    assert await store.lookup(ticket) is None
    assert await store.claim(ticket, clock.now) is True
    await store.finish(ticket, 4)
    assert await store.lookup(ticket) == IntakeRecord("stored", "alice", "app/db", clock.now, 4)
    assert await store.claim(ticket, clock.now) is False
    other = _ticket(codec)
    assert await store.claim(other, clock.now) is True  # another link is another record


async def test_concurrent_claims_one_wins(store: IntakeStore) -> None:
    clock = Clock()
    ticket = _ticket(IntakeCodec(KEY, 600, clock=clock))
    results = await asyncio.gather(*(store.claim(ticket, clock.now) for _ in range(8)))
    assert sorted(results) == [False] * 7 + [True]


async def test_purge_removes_expired_records_only(store: IntakeStore) -> None:
    clock = Clock()
    old = IntakeCodec(KEY, 60, clock=clock)
    young = IntakeCodec(KEY, 3600, clock=clock)
    stale = [_ticket(old) for _ in range(3)]
    fresh = _ticket(young)
    for ticket in [*stale, fresh]:
        assert await store.claim(ticket, clock.now)
    assert await store.purge(clock.now) == 0
    assert await store.purge(clock.now + 61) == 3
    assert [await store.lookup(t) for t in stale] == [None] * 3
    assert await store.lookup(fresh) is not None
    assert await store.purge(clock.now + 61) == 0


def test_record_names() -> None:
    ticket = _ticket(IntakeCodec(KEY, 600, clock=Clock()))
    assert record_path("mcp", ticket) == f"mcp/_bridge/intake/{ticket.expires_at}.{ticket.nonce}"
    assert expired_record(ticket.intake_id, ticket.expires_at + 1)
    assert not expired_record(ticket.intake_id, ticket.expires_at)
    assert not expired_record("something-else", 1e12)


async def test_outcomes_are_recorded(store: IntakeStore) -> None:
    """A stored record keeps the fingerprints (never a value); a failed write its code; a declined link is void
    (created only when nobody submitted first), and settling a record that is not claimed changes nothing."""
    clock = Clock()
    codec = IntakeCodec(KEY, 600, clock=clock)
    stored, failed, declined = _ticket(codec), _ticket(codec), _ticket(codec)
    prints = {"v": "hmac-sha256:v1:" + "A" * 43 + "="}
    assert await store.claim(stored, clock.now)
    await store.finish(stored, 7, prints)
    assert await store.lookup(stored) == IntakeRecord("stored", "alice", "app/db", clock.now, 7, prints)
    assert await store.claim(failed, clock.now)
    await store.fail(failed, "cas_mismatch")
    assert await store.lookup(failed) == IntakeRecord("failed", "alice", "app/db", clock.now, code="cas_mismatch")
    assert await store.void(declined, "declined", clock.now) is True
    assert await store.claim(declined, clock.now) is False  # the human comes too late
    await store.finish(declined, 3)  # not claimed: nothing changes
    assert await store.lookup(declined) == IntakeRecord("void", "alice", "app/db", clock.now, code="declined")
    assert await store.void(stored, "cancelled", clock.now) is False  # the human was first


async def test_agent_void_and_its_purge(store: IntakeStore) -> None:
    clock = Clock()
    assert await store.agent_void("alice") is None
    await store.void_agent("alice", clock.now, clock.now + 600)
    void = await store.agent_void("alice")
    assert void == AgentVoid(clock.now, clock.now + 600)
    assert void.voids(clock.now + 600, 600)  # made at the void
    assert not void.voids(clock.now + 601, 600)  # made a second later
    assert await store.agent_void("bob") is None
    assert await store.purge(clock.now + 600) == 0
    assert await store.purge(clock.now + 601) == 1
    assert await store.agent_void("alice") is None
