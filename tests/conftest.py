"""Shared fixtures.

- ``bao``: one real OpenBao dev server for the whole session (free port, killed at the end), with kv-v2 at
  ``secret/``, transit, and policies for the test agents.
- ``make_settings``: Settings for a bridge pointed at that server (override anything by keyword; ``env`` gives
  settings as environment variables).
- ``bridge_client``: an ``aiohttp`` test client for ``create_app(settings)``; ``ops_client``: one for a bridge
  with any setting overridden.
- From ``tests/support/``: ``fake_vault`` (the in-process fake Vault), ``fresh_namespace`` (an empty OpenBao
  namespace per test), ``postgres`` (Debian's PostgreSQL), ``pbao`` (a restartable OpenBao with Raft storage),
  ``redis_server``, ``spawn_bridge`` (a bridge process), ``bridge_creds``/``child_settings`` (the provisioned
  AppRole and child-token settings), ``reveal_client``/``admin`` (issue 12: a bridge with a ``use``-only key, and
  an operator's direct Vault access for secrets and their ``bridge.*`` settings).
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from bridge.app import create_app
from bridge.config import Settings
from devtools.devvault import DevVault, provision_demo_sync, start_dev_vault

pytest_plugins = ("tests.support.postgres", "tests.support.vault", "tests.support.servers", "tests.support.approle",
                  "tests.support.reveal", "tests.support.dynamic")

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


async def until(client: TestClient[Any, Any], path: str, check: Callable[[int, dict[str, Any]], bool], *,
                within: float = 10.0) -> tuple[int, dict[str, Any]]:
    """GET ``path`` until ``check(status, body)`` holds (for state that follows a background task, such as the
    readiness probe); the last (status, body). Fails after ``within`` seconds."""
    deadline = time.monotonic() + within
    while True:
        resp = await client.get(path)
        body: dict[str, Any] = await resp.json()
        if check(resp.status, body):
            return resp.status, body
        if time.monotonic() > deadline:
            raise AssertionError(f"GET {path} never satisfied the check; last {resp.status} {body}")
        await asyncio.sleep(0.05)


async def until_status(client: TestClient[Any, Any], path: str, status: int, *,
                       within: float = 10.0) -> dict[str, Any]:
    """GET ``path`` until it answers ``status``; its body."""
    return (await until(client, path, lambda got, _body: got == status, within=within))[1]


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

    def make(env: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        base: dict[str, Any] = {
            "vault_addr": bao.addr,
            "vault_token": bao.root_token,
            "api_keys_json": json.dumps(API_KEYS),
            "jwt_hs256_secret": JWT_SECRET,
            "rate_limit_requests": 10_000,
            "ready_probe_interval": 0.1,  # /readyz follows Vault within a tenth of a second in tests
            # A tripped canary only alerts here: quarantine state lives in the session's shared OpenBao, so a
            # test that trips one (as alice) would lock alice out of every later test. Tests of the quarantine
            # action set it themselves (tests/test_quarantine.py, tests/test_canary.py).
            "canary_action": "alert",
        }
        base.update(overrides)
        return Settings.from_env(env or {}, **base)

    return make


@pytest.fixture
async def bridge_client(
    aiohttp_client: Callable[..., Any], make_settings: Callable[..., Settings]
) -> TestClient[Any, Any]:
    client: TestClient[Any, Any] = await aiohttp_client(create_app(make_settings()))
    return client


OpsClient = Callable[..., Awaitable[TestClient[Any, Any]]]


@pytest.fixture
def ops_client(aiohttp_client: Callable[..., Awaitable[TestClient[Any, Any]]],
               make_settings: Callable[..., Settings]) -> OpsClient:
    """``await ops_client(audit_log=..., rate_limit_requests=...)``: a test client on 127.0.0.1."""

    async def make(**overrides: Any) -> TestClient[Any, Any]:
        return await aiohttp_client(create_app(make_settings(**overrides)))

    return make
