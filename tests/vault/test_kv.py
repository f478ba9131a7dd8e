"""KV v2 through our client against a real OpenBao: every operation the bridge uses, and its error bodies."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator

import pytest

from bridge.devvault import DevVault
from bridge.vault.client import VaultClient
from bridge.vault.errors import VaultInvalidRequestError, VaultNotFoundError

pytestmark = pytest.mark.integration
MOUNT = "secret"


@pytest.fixture
async def kv(bao: DevVault) -> AsyncIterator[VaultClient]:
    async with VaultClient(bao.addr) as c:
        c.token = bao.root_token
        yield c


def path() -> str:
    return f"mcp/kvtest/{secrets.token_hex(4)}"


async def test_write_read_versions(kv: VaultClient) -> None:
    p = path()
    meta = await kv.kv.write(MOUNT, p, {"a": 1, "nested": {"b": [True, None]}})
    assert meta["version"] == 1
    assert meta["created_time"]
    assert meta["destroyed"] is False
    await kv.kv.write(MOUNT, p, {"a": 2})
    latest = await kv.kv.read(MOUNT, p)
    assert latest["data"] == {"a": 2}
    assert latest["metadata"]["version"] == 2
    first = await kv.kv.read(MOUNT, p, version=1)
    assert first["data"] == {"a": 1, "nested": {"b": [True, None]}}
    with pytest.raises(VaultNotFoundError):
        await kv.kv.read(MOUNT, p, version=9)
    with pytest.raises(VaultNotFoundError) as missing:
        await kv.kv.read(MOUNT, path())
    assert missing.value.errors == []


async def test_check_and_set(kv: VaultClient) -> None:
    p = path()
    await kv.kv.write(MOUNT, p, {"a": 1}, cas=0)
    with pytest.raises(VaultInvalidRequestError) as info:
        await kv.kv.write(MOUNT, p, {"a": 2}, cas=0)
    assert "check-and-set" in info.value.detail
    assert (await kv.kv.write(MOUNT, p, {"a": 3}, cas=1))["version"] == 2


async def test_patch(kv: VaultClient) -> None:
    p = path()
    await kv.kv.write(MOUNT, p, {"a": 1, "b": 2})
    assert (await kv.kv.patch(MOUNT, p, {"b": None, "c": 3}))["version"] == 2
    assert (await kv.kv.read(MOUNT, p))["data"] == {"a": 1, "c": 3}
    with pytest.raises(VaultInvalidRequestError):
        await kv.kv.patch(MOUNT, p, {"x": 1}, cas=1)
    with pytest.raises(VaultNotFoundError):
        await kv.kv.patch(MOUNT, path(), {"x": 1})


async def test_delete_undelete_destroy_keep_the_envelope(kv: VaultClient) -> None:
    p = path()
    await kv.kv.write(MOUNT, p, {"a": 1})
    await kv.kv.write(MOUNT, p, {"a": 2})
    await kv.kv.delete_latest(MOUNT, p)
    with pytest.raises(VaultNotFoundError) as deleted:
        await kv.kv.read(MOUNT, p)
    meta = deleted.value.body["data"]["metadata"]  # type: ignore[index]
    assert meta["version"] == 2
    assert meta["deletion_time"]
    assert meta["destroyed"] is False
    await kv.kv.undelete(MOUNT, p, [2])
    assert (await kv.kv.read(MOUNT, p))["data"] == {"a": 2}
    await kv.kv.destroy(MOUNT, p, [1])
    with pytest.raises(VaultNotFoundError) as destroyed:
        await kv.kv.read(MOUNT, p, version=1)
    assert destroyed.value.body["data"]["metadata"]["destroyed"] is True  # type: ignore[index]
    await kv.kv.delete_latest(MOUNT, path())  # deleting nothing is fine


async def test_list_and_metadata(kv: VaultClient) -> None:
    base = path()
    for sub in ("x", "y/z"):
        await kv.kv.write(MOUNT, f"{base}/{sub}", {"v": 1})
    assert await kv.kv.list(MOUNT, base) == ["x", "y/"]
    assert await kv.kv.list(MOUNT, base + "/") == ["x", "y/"]
    assert await kv.kv.list(MOUNT, path()) == []
    meta = await kv.kv.metadata(MOUNT, f"{base}/x")
    assert meta["current_version"] == 1
    assert set(meta["versions"]) == {"1"}
    with pytest.raises(VaultNotFoundError):
        await kv.kv.metadata(MOUNT, path())

