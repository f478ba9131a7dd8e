"""The bridge state documents (:mod:`bridge.vault.state`) and the agents' lease tokens
(:mod:`bridge.vault.leasetokens`) against a real OpenBao: check-and-set keeps every concurrent change of two
"replicas"; two replicas needing an agent's lease token at once end up sharing one; a token Vault rejects is
replaced; revoking it revokes it."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator
from typing import Any

import pytest

from bridge.vault.client import VaultClient
from bridge.vault.errors import VaultPermissionDeniedError
from bridge.vault.leasetokens import LeaseToken, LeaseTokens
from bridge.vault.state import BridgeState, StateConflictError
from bridge.vault.tokens import with_token
from devtools.devvault import DevVault

pytestmark = pytest.mark.integration


class Fixed:
    """A token source that always hands out one token (the dev server's root token: the bridge's own here)."""

    def __init__(self, token: str) -> None:
        self.token = token

    async def acquire(self, agent: str, auth_method: str) -> Fixed:
        return self

    def release(self, handle: Fixed) -> None:
        return None

    async def rejected(self, handle: Fixed) -> bool:
        return False


@pytest.fixture
async def clients(bao: DevVault) -> AsyncIterator[tuple[VaultClient, VaultClient]]:
    """Two clients: two replicas."""
    async with VaultClient(bao.addr) as one, VaultClient(bao.addr) as two:
        yield one, two


async def record(state: BridgeState, agent: str) -> LeaseToken | None:
    doc = await state.read(LeaseTokens.record(agent))
    return LeaseToken.from_data(agent, doc.data) if doc is not None else None


def states(bao: DevVault, clients: tuple[VaultClient, VaultClient]) -> tuple[BridgeState, BridgeState]:
    prefix = "t" + secrets.token_hex(5)  # a state subtree of this test's own
    return (BridgeState(clients[0], Fixed(bao.root_token), mount="secret", prefix=prefix),
            BridgeState(clients[1], Fixed(bao.root_token), mount="secret", prefix=prefix))


async def test_check_and_set_keeps_every_concurrent_change(
        bao: DevVault, clients: tuple[VaultClient, VaultClient]) -> None:
    one, two = states(bao, clients)
    assert await one.read("doc") is None

    def append(item: int) -> Any:
        def change(data: dict[str, Any] | None) -> dict[str, Any]:
            return {"items": [*(data or {}).get("items", []), item]}
        return change

    await asyncio.gather(*(state.update("doc", append(i)) for i in range(12) for state in (one, two)))
    doc = await two.read("doc")
    assert doc is not None
    assert sorted(doc.data["items"]) == sorted([*range(12), *range(12)])
    with pytest.raises(StateConflictError):
        await one.write("doc", {"items": []}, cas=doc.version - 1)
    assert await one.write("doc", {"items": []}, cas=doc.version) == doc.version + 1
    unchanged = await one.update("doc", lambda data: data)  # the same object: nothing written
    assert unchanged == {"items": []}
    again = await one.read("doc")
    assert again is not None
    assert again.version == doc.version + 1
    await one.write("folder/a", {})
    await one.write("folder/b", {})
    assert sorted(await two.names("folder")) == ["a", "b"]
    await one.delete("folder/a")
    assert await two.names("folder") == ["b"]
    assert await two.read("folder/a") is None
    await one.delete("folder/a")  # nothing there: no error


async def test_two_replicas_share_one_lease_token_and_replace_a_dead_one(
        bao: DevVault, clients: tuple[VaultClient, VaultClient]) -> None:
    one_state, two_state = states(bao, clients)
    minted: list[tuple[str, str]] = []

    async def on_minted(agent: str, accessor: str) -> None:
        minted.append((agent, accessor))

    one = LeaseTokens(clients[0], Fixed(bao.root_token), one_state, on_minted=on_minted)
    two = LeaseTokens(clients[1], Fixed(bao.root_token), two_state, on_minted=on_minted)
    first, second = await asyncio.gather(one.acquire("alice", "api_key"), two.acquire("alice", "api_key"))
    assert first.token == second.token  # the loser of the race took the stored token (and revoked its own)
    assert len(minted) == 1
    assert minted[0] == ("alice", first.accessor)
    assert await one.ensure(first, 60) > 60  # alive, and long enough
    vault = clients[0]
    # renewing by more than it has left: renew-self resets a periodic token to its period
    assert await one.ensure(first, 10**6) > 0

    await vault.auth_token.revoke_self(token=first.token)  # gone behind the bridge's back

    async def use(token: str) -> str:
        handle = two.handle_for("alice", token)
        await two.ensure(handle, 10**6)  # forces renew-self: Vault rejects a dead token
        return token

    fresh = await with_token(two, "alice", "api_key", use)
    assert fresh != first.token
    assert len(minted) == 2
    stored = await record(one_state, "alice")
    assert stored is not None
    assert stored.token == fresh
    one.forget("alice")
    assert (await one.acquire("alice", "api_key")).token == fresh  # the other replica follows the record

    assert await one.revoke("alice") == stored.accessor
    with pytest.raises(VaultPermissionDeniedError):
        await vault.auth_token.renew_self(token=fresh)
    assert await two.revoke("alice") is None  # nothing left to revoke
    assert await record(two_state, "alice") is None
    await one.close()
    await two.close()
