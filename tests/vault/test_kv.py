"""KV v2 through our client against a real OpenBao: every operation the bridge uses, and its error bodies."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest

from bridge.vault.client import VaultClient
from bridge.vault.errors import VaultInvalidRequestError, VaultNotFoundError
from bridge.vault.kv import KvV2
from devtools.devvault import DevVault

pytestmark = pytest.mark.integration
MOUNT = "secret"


@dataclass
class Root:
    """The client and the token every call passes (the dev server's root token)."""

    kv: KvV2
    root: str


@pytest.fixture
async def kv(bao: DevVault) -> AsyncIterator[Root]:
    async with VaultClient(bao.addr) as c:
        yield Root(c.kv, bao.root_token)


def path() -> str:
    return f"mcp/kvtest/{secrets.token_hex(4)}"


async def test_write_read_versions(kv: Root) -> None:
    p = path()
    meta = await kv.kv.write(MOUNT, p, {"a": 1, "nested": {"b": [True, None]}}, token=kv.root)
    assert meta.version == 1
    assert meta.created_time
    assert meta.destroyed is False
    await kv.kv.write(MOUNT, p, {"a": 2}, token=kv.root)
    latest = await kv.kv.read(MOUNT, p, token=kv.root)
    assert latest.data == {"a": 2}
    assert latest.metadata.version == 2
    first = await kv.kv.read(MOUNT, p, version=1, token=kv.root)
    assert first.data == {"a": 1, "nested": {"b": [True, None]}}
    with pytest.raises(VaultNotFoundError):
        await kv.kv.read(MOUNT, p, version=9, token=kv.root)
    with pytest.raises(VaultNotFoundError) as missing:
        await kv.kv.read(MOUNT, path(), token=kv.root)
    assert missing.value.errors == []
    assert missing.value.version_meta is None


async def test_check_and_set(kv: Root) -> None:
    p = path()
    await kv.kv.write(MOUNT, p, {"a": 1}, cas=0, token=kv.root)
    with pytest.raises(VaultInvalidRequestError) as info:
        await kv.kv.write(MOUNT, p, {"a": 2}, cas=0, token=kv.root)
    assert "check-and-set" in info.value.detail
    assert (await kv.kv.write(MOUNT, p, {"a": 3}, cas=1, token=kv.root)).version == 2


async def test_patch(kv: Root) -> None:
    p = path()
    await kv.kv.write(MOUNT, p, {"a": 1, "b": 2}, token=kv.root)
    assert (await kv.kv.patch(MOUNT, p, {"b": None, "c": 3}, token=kv.root)).version == 2
    assert (await kv.kv.read(MOUNT, p, token=kv.root)).data == {"a": 1, "c": 3}
    with pytest.raises(VaultInvalidRequestError):
        await kv.kv.patch(MOUNT, p, {"x": 1}, cas=1, token=kv.root)
    with pytest.raises(VaultNotFoundError):
        await kv.kv.patch(MOUNT, path(), {"x": 1}, token=kv.root)


async def test_delete_undelete_destroy_carry_the_version_metadata(kv: Root) -> None:
    p = path()
    await kv.kv.write(MOUNT, p, {"a": 1}, token=kv.root)
    await kv.kv.write(MOUNT, p, {"a": 2}, token=kv.root)
    await kv.kv.delete_latest(MOUNT, p, token=kv.root)
    with pytest.raises(VaultNotFoundError) as deleted:
        await kv.kv.read(MOUNT, p, token=kv.root)
    meta = deleted.value.version_meta
    assert meta is not None
    assert meta.version == 2
    assert meta.deletion_time
    assert meta.destroyed is False
    await kv.kv.undelete(MOUNT, p, [2], token=kv.root)
    assert (await kv.kv.read(MOUNT, p, token=kv.root)).data == {"a": 2}
    await kv.kv.destroy(MOUNT, p, [1], token=kv.root)
    with pytest.raises(VaultNotFoundError) as destroyed:
        await kv.kv.read(MOUNT, p, version=1, token=kv.root)
    assert destroyed.value.version_meta is not None
    assert destroyed.value.version_meta.destroyed is True
    await kv.kv.delete_latest(MOUNT, path(), token=kv.root)  # deleting nothing is fine


async def test_list_and_metadata(kv: Root) -> None:
    base = path()
    for sub in ("x", "y/z"):
        await kv.kv.write(MOUNT, f"{base}/{sub}", {"v": 1}, token=kv.root)
    assert await kv.kv.list(MOUNT, base, token=kv.root) == ["x", "y/"]
    assert await kv.kv.list(MOUNT, base + "/", token=kv.root) == ["x", "y/"]
    assert await kv.kv.list(MOUNT, path(), token=kv.root) == []
    meta = await kv.kv.metadata(MOUNT, f"{base}/x", token=kv.root)
    assert meta.current_version == 1
    assert set(meta.versions) == {"1"}
    with pytest.raises(VaultNotFoundError):
        await kv.kv.metadata(MOUNT, path(), token=kv.root)



async def test_create_only_and_metadata_delete(kv: Root) -> None:
    """``create`` (cas 0) makes version 1 once: of 8 concurrent creates one wins, the others get ``None``.
    ``delete_metadata`` removes every version (also when there is
    nothing), so a later create succeeds again."""
    import asyncio

    p = path()
    results = await asyncio.gather(*(kv.kv.create(MOUNT, p, {"n": n}, token=kv.root) for n in range(8)))
    made = [r for r in results if r is not None]
    assert len(made) == 1
    assert made[0].version == 1
    assert await kv.kv.create(MOUNT, p, {"n": 9}, token=kv.root) is None
    await kv.kv.write(MOUNT, p, {"n": 10}, cas=1, token=kv.root)
    assert (await kv.kv.read(MOUNT, p, token=kv.root)).metadata.version == 2
    await kv.kv.delete_metadata(MOUNT, p, token=kv.root)
    with pytest.raises(VaultNotFoundError):
        await kv.kv.metadata(MOUNT, p, token=kv.root)
    await kv.kv.delete_metadata(MOUNT, p, token=kv.root)  # nothing there: still fine
    again = await kv.kv.create(MOUNT, p, {"n": 11}, token=kv.root)
    assert again is not None
    assert again.version == 1
