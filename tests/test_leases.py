"""The agents' lease records (:class:`bridge.leases.LeaseBook`) in a real OpenBao: two replicas recording leases
of one agent at once keep every record; the per-agent limit holds across them; expired records go; SSH
certificates survive a revocation of everything; ``last_seen`` never goes back."""

from __future__ import annotations

import asyncio
import secrets
import time

import pytest

from bridge.errors import ConflictError
from bridge.lease_values import HeldValue
from bridge.leases import Kind, LeaseBook, LeaseRecord
from bridge.vault.client import VaultClient
from bridge.vault.state import BridgeState
from devtools.devvault import DevVault
from tests.vault.test_state import Fixed

pytestmark = pytest.mark.integration


def record(n: int, *, kind: Kind = "database", ttl: float = 600, now: float | None = None) -> LeaseRecord:
    start = time.time() if now is None else now
    lease = None if kind == "ssh" else f"database/creds/mcp.alice.ro/{n:04d}"
    return LeaseRecord(kind=kind, role="ro", issued_at=start, expires_at=start + ttl,
                       lease_id=lease, renewable=kind == "database", token="acc",
                       details={"username": f"v-{n}"} if kind == "database" else {"serial_number": f"{n:x}"})


async def test_two_replicas_keep_every_record_and_the_limit(bao: DevVault) -> None:
    prefix = "t" + secrets.token_hex(5)
    async with VaultClient(bao.addr) as one, VaultClient(bao.addr) as two:
        books = [LeaseBook(BridgeState(client, Fixed(bao.root_token), mount="secret", prefix=prefix), limit=30)
                 for client in (one, two)]
        await asyncio.gather(*(books[i % 2].add("alice", record(i)) for i in range(24)))
        held = await books[0].read("alice")
        assert sorted(r.lease_id or "" for r in held.records) == [f"database/creds/mcp.alice.ro/{i:04d}"
                                                                    for i in range(24)]
        assert held.last_seen > 0
        # the limit counts live records, whichever replica wrote them
        results = await asyncio.gather(*(books[i % 2].add("alice", record(100 + i)) for i in range(10)),
                                       return_exceptions=True)
        refused = [r for r in results if isinstance(r, ConflictError)]
        assert len(refused) == 4
        assert all(r.code == "lease_limit_reached" for r in refused)
        with pytest.raises(ConflictError):
            await books[1].check_room("alice")
        assert len((await books[1].read("alice")).records) == 30
        # renew, remove, find
        first = "database/creds/mcp.alice.ro/0000"
        await books[0].renewed("alice", first, time.time() + 5000)
        found = await books[1].find("alice", first)
        assert found is not None
        assert found.expires_at > time.time() + 4000
        await books[1].remove("alice", [first, "database/creds/mcp.alice.ro/0001"])
        assert await books[0].find("alice", first) is None
        assert await books[0].agents() == ["alice"]


async def test_expiry_revocation_and_last_seen(bao: DevVault) -> None:
    prefix = "t" + secrets.token_hex(5)
    clock = [time.time()]
    async with VaultClient(bao.addr) as client:
        book = LeaseBook(BridgeState(client, Fixed(bao.root_token), mount="secret", prefix=prefix),
                         clock=lambda: clock[0])
        await book.add("bob", record(1, ttl=10, now=clock[0]))
        await book.add("bob", record(2, ttl=1000, now=clock[0]))
        await book.add("bob", record(3, kind="ssh", ttl=1000, now=clock[0]))
        clock[0] += 60  # the first lease expired
        assert [r.lease_id for r in (await book.read("bob")).records] == ["database/creds/mcp.alice.ro/0002", None]
        await book.seen("bob", clock[0])
        await book.seen("bob", clock[0] - 30)  # a replica that saw bob earlier writes later: never back
        assert (await book.read("bob")).last_seen == pytest.approx(clock[0], abs=0.01)
        assert await book.drop_revocable("bob") == 1
        left = (await book.read("bob")).records
        assert [r.kind for r in left] == ["ssh"]  # SSH certificates cannot be revoked: listed until they expire
        assert not left[0].revocable
        assert await book.drop_revocable("bob") == 0
        await book.seen("nobody", clock[0])  # no document, nothing written
        assert await book.agents() == ["bob"]


async def test_an_agent_can_hold_hundreds_of_leases(bao: DevVault) -> None:
    """OpenBao refuses a request body with more than 1000 strings (keys included): records kept as a list of
    objects would hit that at about 60 leases; the document keeps them as one string."""
    prefix = "t" + secrets.token_hex(5)
    async with VaultClient(bao.addr) as client:
        book = LeaseBook(BridgeState(client, Fixed(bao.root_token), mount="secret", prefix=prefix), limit=1000)
        await asyncio.gather(*(book.add("alice", record(i)) for i in range(200)))
        assert len((await book.read("alice")).records) == 200


async def test_a_held_password_goes_with_its_record(bao: DevVault) -> None:
    """A password the bridge holds for a ``use``-only identity (bridge.lease_values) is deleted when its record
    goes: removed, dropped with the agent's revocable leases, or expired and left out at the next write; a record
    that stays keeps it."""
    prefix = "t" + secrets.token_hex(5)
    clock = [time.time()]
    async with VaultClient(bao.addr) as client:
        book = LeaseBook(BridgeState(client, Fixed(bao.root_token), mount="secret", prefix=prefix),
                         clock=lambda: clock[0])

        async def hold(n: int, ttl: float) -> str:
            rec = record(n, ttl=ttl, now=clock[0])
            assert rec.lease_id is not None
            rec.details["password_reference"] = f"lease://{rec.lease_id}#password"
            await book.values.put("alice", HeldValue(rec.lease_id, "ro", f"pw-{n}", f"fp-{n}"))
            await book.add("alice", rec)
            return rec.lease_id

        removed, expires, stays, dropped = (await hold(1, 1000), await hold(2, 10), await hold(3, 1000),
                                            await hold(4, 1000))
        await book.add("alice", record(5, now=clock[0]))  # a plain record (the password was handed out)
        await book.remove("alice", [removed])
        assert await book.values.get("alice", removed) is None
        clock[0] += 60  # one expired: still there until the document is written again
        assert await book.values.get("alice", expires) is not None
        await book.renewed("alice", stays, clock[0] + 600)
        assert await book.values.get("alice", expires) is None
        held = await book.values.get("alice", stays)
        assert held is not None
        assert (held.password, held.fingerprint) == ("pw-3", "fp-3")
        assert await book.values.get("bob", stays) is None  # per agent
        assert await book.drop_revocable("alice") == 3
        assert await book.values.get("alice", dropped) is None
        assert await book.values.get("alice", stays) is None
