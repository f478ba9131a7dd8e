"""The consumed-nonce record (bridge/intake/store.py): one contract, run against the in-memory store and against
a real OpenBao through the KV v2 calls the module's docstring names (the Vault facts the wiring relies on: a
``cas: 0`` write is create-only, ``cas: 1`` updates the claim, a metadata delete lets a claim succeed again, the
records can be listed by name)."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from bridge.intake import IntakeCodec, IntakeField, IntakeRecord, IntakeStore, IntakeTicket, MemoryIntakeStore
from bridge.intake.store import RECORD_DIR, expired_record, record_path
from devtools.devvault import DevVault
from tests.intake.conftest import KEY, Clock


class RawVaultIntakeStore:
    """:class:`IntakeStore` over KV v2 with plain HTTP (the wiring will do the same with the bridge's client)."""

    def __init__(self, session: aiohttp.ClientSession, addr: str, token: str, *, mount: str = "secret",
                 prefix: str) -> None:
        self._http = session
        self._addr = addr
        self._headers = {"X-Vault-Token": token}
        self._mount = mount
        self._prefix = prefix
        self.last_error = ""

    def _url(self, kind: str, ticket: IntakeTicket | None = None) -> str:
        tail = record_path(self._prefix, ticket) if ticket else f"{self._prefix}/{RECORD_DIR}"
        return f"{self._addr}/v1/{self._mount}/{kind}/{tail}"

    async def _write(self, ticket: IntakeTicket, record: IntakeRecord, cas: int) -> tuple[int, Any]:
        async with self._http.post(self._url("data", ticket), headers=self._headers,
                                   json={"options": {"cas": cas}, "data": record.to_data()}) as resp:
            return resp.status, await resp.json()

    async def claim(self, ticket: IntakeTicket, now: float) -> bool:
        status, body = await self._write(ticket, IntakeRecord("claimed", ticket.agent, ticket.path, now), 0)
        if status == 400:
            self.last_error = body["errors"][0]
            return False
        assert status == 200, body
        assert body["data"]["version"] == 1
        return True

    async def finish(self, ticket: IntakeTicket, version: int) -> None:
        record = await self.lookup(ticket)
        assert record is not None
        status, body = await self._write(ticket, IntakeRecord("stored", record.agent, record.path, record.claimed_at,
                                                              version), 1)
        assert status == 200, body

    async def release(self, ticket: IntakeTicket) -> None:
        async with self._http.delete(self._url("metadata", ticket), headers=self._headers) as resp:
            assert resp.status == 204

    async def lookup(self, ticket: IntakeTicket) -> IntakeRecord | None:
        async with self._http.get(self._url("data", ticket), headers=self._headers) as resp:
            if resp.status == 404:
                return None
            body = await resp.json()
            return IntakeRecord.from_data(body["data"]["data"])

    async def purge(self, now: float) -> int:
        async with self._http.request("LIST", self._url("metadata"), headers=self._headers) as resp:
            if resp.status == 404:
                return 0
            names = (await resp.json())["data"]["keys"]
        gone = [n for n in names if expired_record(n, now)]
        for name in gone:
            async with self._http.delete(f"{self._url('metadata')}/{name}", headers=self._headers) as resp:
                assert resp.status == 204
        return len(gone)


@pytest.fixture(params=["memory", "openbao"])
def backend(request: pytest.FixtureRequest) -> DevVault | None:
    """``None`` for the in-memory store, else the session's OpenBao (a sync fixture: it may start the server)."""
    return request.getfixturevalue("bao") if request.param == "openbao" else None


@pytest.fixture
async def store(backend: DevVault | None) -> AsyncIterator[IntakeStore]:
    if backend is None:
        yield MemoryIntakeStore()
        return
    async with aiohttp.ClientSession() as session:
        # a prefix of its own per test, so that listing and purging see only this test's records
        yield RawVaultIntakeStore(session, backend.addr, backend.root_token, prefix=f"t{secrets.token_hex(4)}")


def _ticket(codec: IntakeCodec, path: str = "app/db") -> IntakeTicket:
    return codec.issue(agent="alice", path=path, cas=0, fields=(IntakeField("v"),))


async def test_claim_is_create_only_and_release_reopens(store: IntakeStore) -> None:
    clock = Clock()
    codec = IntakeCodec(KEY, 600, clock=clock)
    ticket = _ticket(codec)
    assert await store.lookup(ticket) is None
    assert await store.claim(ticket, clock.now) is True
    assert await store.claim(ticket, clock.now) is False
    if isinstance(store, RawVaultIntakeStore):
        assert store.last_error == "check-and-set parameter did not match the current version"
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
