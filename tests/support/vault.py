"""Vault helpers for tests: a fresh OpenBao namespace per test (no mounts, no auth methods, no policies), so a
first provisioning run really creates everything and a second proves idempotency."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator

import pytest

from bridge.devvault import DevVault
from bridge.vault.client import VaultClient


@pytest.fixture
async def fresh_namespace(bao: DevVault) -> AsyncIterator[str]:
    name = "t" + secrets.token_hex(5)
    async with VaultClient(bao.addr) as root:
        root.token = bao.root_token
        await root.request("POST", f"sys/namespaces/{name}", operation="test.ns", json_body={})
        yield name


def root_client(bao: DevVault, namespace: str = "") -> VaultClient:
    """A client (``async with``) holding the dev server's root token, in ``namespace``."""
    client = VaultClient(bao.addr, namespace=namespace)
    client.token = bao.root_token
    return client
