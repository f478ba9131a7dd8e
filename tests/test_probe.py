"""``/healthz`` never calls Vault; ``/readyz`` answers from the background probe (``bridge/probe.py``): at most one
Vault call per ``READY_PROBE_INTERVAL`` whatever the request rate, and not-ready once the bridge's own token is
revoked. Against the in-process fake Vault (counting its calls; hanging) and a real OpenBao (revocation)."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from bridge.app import create_app
from bridge.config import Settings
from bridge.vault.client import VaultClient
from devtools.devvault import DevVault
from devtools.fakevault import FakeVault
from tests.conftest import API_KEYS, until_status

Client = TestClient[Any, Any]


def fake_settings(fake: FakeVault, **overrides: Any) -> Settings:
    base: dict[str, Any] = {"vault_addr": fake.addr, "vault_token": fake.root_token,
                            "api_keys_json": json.dumps(API_KEYS), "vault_timeout": 3.0,
                            "vault_breaker_threshold": 0}
    base.update(overrides)
    return Settings.from_env({}, **base)


async def test_healthz_answers_at_once_while_vault_hangs(aiohttp_client: Callable[..., Any],
                                                         fake_vault: FakeVault) -> None:
    api: Client = await aiohttp_client(create_app(fake_settings(fake_vault, ready_probe_interval=0.2)))
    await until_status(api, "/readyz", 200)
    fake_vault.slow("*", 30)  # from now on every Vault call hangs (longer than VAULT_TIMEOUT)
    durations = []
    for _ in range(10):
        started = time.monotonic()
        resp = await api.get("/healthz")
        durations.append(time.monotonic() - started)
        assert resp.status == 200
    assert max(durations) < 1.0, durations  # the old /healthz waited for Vault: VAULT_TIMEOUT (3 s) each
    health = fake_vault.calls("sys/health")
    assert all(r.path == "sys/health" for r in health)


async def test_healthz_makes_no_vault_call(aiohttp_client: Callable[..., Any], fake_vault: FakeVault) -> None:
    api: Client = await aiohttp_client(create_app(fake_settings(fake_vault, ready_probe_interval=60)))
    before = len(fake_vault.requests)
    for _ in range(50):
        assert (await api.get("/healthz")).status == 200
    assert len(fake_vault.requests) == before


async def test_readyz_burst_costs_one_call_per_interval(aiohttp_client: Callable[..., Any],
                                                        fake_vault: FakeVault) -> None:
    interval = 0.5
    api: Client = await aiohttp_client(create_app(fake_settings(fake_vault, ready_probe_interval=interval)))
    await until_status(api, "/readyz", 200)
    before = len(fake_vault.calls())  # not the bridge's own state (the quarantine poll)
    started = time.monotonic()
    for _ in range(10):  # 10 waves of 30 concurrent probes, ~0.15 s apart
        answers = await asyncio.gather(*(api.get("/readyz") for _ in range(30)))
        assert all(a.status == 200 for a in answers)
        await asyncio.sleep(0.15)
    elapsed = time.monotonic() - started
    calls = len(fake_vault.calls()) - before
    assert calls <= elapsed / interval + 2, (calls, elapsed)  # 300 probes; the old /readyz: 300+ Vault calls


async def test_readyz_follows_seal_and_approle_revocation(aiohttp_client: Callable[..., Any],
                                                          fake_vault: FakeVault) -> None:
    """AppRole: a revoked bridge token is noticed by the probe and replaced by a new login, with no request
    traffic at all (the old /readyz trusted the keeper's memory until the token's TTL ran out)."""
    api: Client = await aiohttp_client(create_app(fake_settings(
        fake_vault, vault_token=None, vault_role_id=fake_vault.role_id, vault_secret_id=fake_vault.secret_id,
        ready_probe_interval=0.1)))
    await until_status(api, "/readyz", 200)
    logins = len(fake_vault.calls("auth/approle/login"))
    first = [t for t in fake_vault.tokens if t != fake_vault.root_token]
    for token in first:
        fake_vault.revoke(token)
    deadline = time.monotonic() + 10
    while len(fake_vault.calls("auth/approle/login")) == logins:
        assert time.monotonic() < deadline, "the probe never logged in again"
        await asyncio.sleep(0.05)
    await until_status(api, "/readyz", 200)
    fake_vault.seal()
    body = await until_status(api, "/readyz", 503)
    assert body["vault"]["sealed"] is True
    fake_vault.unseal()
    await until_status(api, "/readyz", 200)


async def _root(bao: DevVault, method: str, path: str, body: dict[str, Any]) -> dict[str, Any]:
    async with VaultClient(bao.addr) as root:
        resp = await root.request(method, path, operation="test", json_body=body, token=bao.root_token)
        return (resp.raw or {}).get("auth") or {}


@pytest.mark.integration
async def test_readyz_turns_not_ready_when_the_bridge_token_is_revoked(
        aiohttp_client: Callable[..., Any], make_settings: Callable[..., Settings], bao: DevVault) -> None:
    """Real OpenBao: the operator revokes the bridge's token with the root token; /readyz goes 503 within a
    few probe intervals, with no agent traffic in between."""
    interval = 0.2
    auth = await _root(bao, "POST", "auth/token/create", {"policies": ["default"], "ttl": "1h"})
    token = str(auth["client_token"])
    api: Client = await aiohttp_client(create_app(make_settings(vault_token=token, ready_probe_interval=interval)))
    await until_status(api, "/readyz", 200)
    await _root(bao, "POST", "auth/token/revoke", {"token": token})
    started = time.monotonic()
    body = await until_status(api, "/readyz", 503, within=10)
    assert body["token_valid"] is False
    assert body["vault"]["reachable"] is True
    assert time.monotonic() - started < 20 * interval  # "within a few intervals", generously
    health = await api.get("/healthz")  # liveness is not readiness
    assert health.status == 200
