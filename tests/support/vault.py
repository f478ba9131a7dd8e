"""Vault helpers for tests: the in-process fake Vault (``fake_vault``), a fresh OpenBao namespace per test (no
mounts, no auth methods, no policies, so a first provisioning run really creates everything and a second proves
idempotency), and an admin client."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator, Mapping
from typing import Any

import pytest

from bridge.vault.client import VaultClient
from bridge.vault.models import VaultResponse
from devtools.devvault import DevVault
from devtools.fakevault import AiohttpServer, FakeVault


class RootVault:
    """``request`` of a :class:`VaultClient` with the dev server's root token on every call (the client itself
    holds no token); ``async with`` closes the client."""

    def __init__(self, client: VaultClient, token: str) -> None:
        self.client = client
        self.token = token

    async def request(self, method: str, path: str, *, operation: str, json_body: Any = None,
                      params: Mapping[str, str] | None = None,
                      headers: Mapping[str, str] | None = None) -> VaultResponse:
        return await self.client.request(method, path, operation=operation, token=self.token, json_body=json_body,
                                         params=params, headers=headers)

    async def __aenter__(self) -> RootVault:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.client.close()


@pytest.fixture
async def fresh_namespace(bao: DevVault) -> AsyncIterator[str]:
    name = "t" + secrets.token_hex(5)
    async with root_client(bao) as root:
        await root.request("POST", f"sys/namespaces/{name}", operation="test.ns", json_body={})
        yield name


def root_client(bao: DevVault, namespace: str = "") -> RootVault:
    """A client (``async with``) calling with the dev server's root token, in ``namespace``."""
    return RootVault(VaultClient(bao.addr, namespace=namespace), bao.root_token)

@pytest.fixture
async def fake_vault(aiohttp_server: AiohttpServer) -> AsyncIterator[FakeVault]:
    """A started :class:`FakeVault` on a free port (stopped with the test)."""
    fake = FakeVault()
    await fake.start(aiohttp_server)
    yield fake
    await fake.stop()
