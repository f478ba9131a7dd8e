"""Shared fixtures.

- ``bao``: one real OpenBao dev server for the whole session (free port, killed at the end), with kv-v2 at
  ``secret/``, transit, and policies for the test agents.
- ``make_settings``: Settings for a bridge pointed at that server (override anything by keyword).
- ``bridge_client``: an ``aiohttp`` test client for ``create_app(settings)``.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from bridge.app import create_app
from bridge.config import Settings
from bridge.devvault import DevVault, provision_demo_sync, start_dev_vault

# ``fake_vault`` (in-process fake Vault), ``postgres`` (Debian's PostgreSQL, session), ``fresh_namespace`` (an empty
# OpenBao namespace per test): tests/fakevault.py, tests/support/
pytest_plugins = ("tests.fakevault", "tests.support.postgres", "tests.support.vault")

TEST_AGENTS = ["alice", "bob", "agent_api", "agent_jwt", "agent_mtls"]
API_KEY_ALICE = "alice-key-" + "a" * 20
API_KEY_BOB = "bob-key-" + "b" * 22
API_KEY_READONLY = "ro-key-" + "r" * 23
JWT_SECRET = "jwt-test-secret-" + "s" * 32

API_KEYS = {
    API_KEY_ALICE: "alice",
    API_KEY_BOB: "bob",
    API_KEY_READONLY: {"agent": "alice", "scopes": ["read", "list"]},
}


@pytest.fixture(scope="session")
def bao(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevVault]:
    log = tmp_path_factory.mktemp("bao") / "bao.log"
    vault = start_dev_vault(root_token="root-" + secrets.token_hex(8), log_path=log)
    try:
        provision_demo_sync(vault.addr, vault.root_token, TEST_AGENTS)
        yield vault
    finally:
        vault.stop()


@pytest.fixture
def make_settings(bao: DevVault) -> Callable[..., Settings]:
    import json

    def make(**overrides: Any) -> Settings:
        base: dict[str, Any] = {
            "vault_addr": bao.addr,
            "vault_token": bao.root_token,
            "api_keys_json": json.dumps(API_KEYS),
            "jwt_hs256_secret": JWT_SECRET,
            "rate_limit_requests": 10_000,
        }
        base.update(overrides)
        return Settings.from_env({}, **base)

    return make


@pytest.fixture
async def bridge_client(
    aiohttp_client: Callable[..., Any], make_settings: Callable[..., Settings]
) -> TestClient[Any, Any]:
    client: TestClient[Any, Any] = await aiohttp_client(create_app(make_settings()))
    return client
