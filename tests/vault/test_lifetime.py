"""Token lifetime: the renewal schedule as a pure function, and the keeper against a real OpenBao (AppRole
login, renewal, re-login after an outside revocation; static root and non-renewable tokens left alone)."""

from __future__ import annotations

import asyncio
import contextlib
import math
import secrets
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import pytest
from pydantic import SecretStr

from bridge.vault.auth import AppRoleLogin, StaticToken, secret_id_value
from bridge.vault.client import VaultClient
from bridge.vault.errors import VaultCredentialError, VaultInvalidRequestError, VaultPermissionDeniedError
from bridge.vault.lifetime import (
    JITTER_FRACTION,
    MIN_DELAY,
    RENEW_FRACTION,
    RETRY_MAX,
    RETRY_MIN,
    Plan,
    TokenKeeper,
    plan_refresh,
    retry_delay,
)
from devtools.devvault import DevVault

# -- the schedule (pure) -----------------------------------------------------------------------------


def test_root_or_no_expiry_is_left_alone() -> None:
    assert plan_refresh(0, renewable=False, can_login=False, rand=0.5) == Plan("idle", math.inf)
    assert plan_refresh(0, renewable=True, can_login=True, rand=0.5) == Plan("idle", math.inf)


@pytest.mark.parametrize("ttl", [30.0, 3600.0, 86400.0])
def test_renewal_about_two_thirds_in_with_jitter(ttl: float) -> None:
    earliest = plan_refresh(ttl, renewable=True, can_login=False, rand=0.999999)
    latest = plan_refresh(ttl, renewable=True, can_login=False, rand=0.0)
    assert latest == Plan("renew", ttl * RENEW_FRACTION)
    assert earliest.action == "renew"
    assert earliest.delay == pytest.approx(ttl * (RENEW_FRACTION - JITTER_FRACTION), rel=1e-4)
    mid = plan_refresh(ttl, renewable=True, can_login=False, rand=0.5).delay
    assert earliest.delay < mid < latest.delay < ttl


def test_jitter_spreads_replicas() -> None:
    delays = {round(plan_refresh(3600, renewable=True, can_login=True, rand=r / 10).delay, 3) for r in range(10)}
    assert len(delays) == 10


def test_tiny_ttl_has_a_floor() -> None:
    assert plan_refresh(0.1, renewable=True, can_login=False, rand=0.0) == Plan("renew", MIN_DELAY)


def test_non_renewable_logs_in_again_or_is_left_alone() -> None:
    assert plan_refresh(600, renewable=False, can_login=True, rand=0.0) == Plan("login", 400.0)
    assert plan_refresh(600, renewable=False, can_login=False, rand=0.0) == Plan("idle", math.inf)


def test_capped_renewal_means_log_in_again() -> None:
    """A grant below half the asked increment: the max TTL is near, so renewing further is pointless."""
    assert plan_refresh(100, renewable=True, can_login=True, rand=0.0, increment=3600).action == "login"
    assert plan_refresh(2000, renewable=True, can_login=True, rand=0.0, increment=3600).action == "renew"
    # without a way to log in, keep renewing what is left
    assert plan_refresh(100, renewable=True, can_login=False, rand=0.0, increment=3600).action == "renew"


def test_retry_backoff_grows_and_is_capped() -> None:
    assert retry_delay(1, 0.0) == RETRY_MIN
    assert retry_delay(3, 0.999) <= RETRY_MIN * 4
    assert retry_delay(3, 0.999) > retry_delay(2, 0.999)
    assert all(RETRY_MIN <= retry_delay(n, r) <= RETRY_MAX for n in range(1, 40) for r in (0.0, 0.5, 0.99))
    assert retry_delay(30, 0.999) == pytest.approx(RETRY_MAX, rel=0.01)


# -- the keeper against a real OpenBao -----------------------------------------------------------------



@dataclass
class Role:
    role_id: str
    secret_id: str


    def method(self) -> AppRoleLogin:
        return AppRoleLogin(self.role_id, secret_id_value(SecretStr(self.secret_id)))


async def _approle(bao: DevVault, name: str, **role: Any) -> Role:
    root = bao.root_token
    async with VaultClient(bao.addr) as vault:
        with contextlib.suppress(VaultInvalidRequestError):  # already enabled by an earlier test
            await vault.sys.enable_auth("approle", "approle", token=root)
        await vault.logical.write(f"auth/approle/role/{name}", {"token_policies": ["mcp-agent-alice"],
                                                              "token_type": "service", **role}, token=root)
        rid = await vault.approle.role_id(name, mount="approle", token=root)
        sid = await vault.approle.new_secret_id(name, mount="approle", token=root)
        assert isinstance(sid, SecretStr)
        return Role(rid, sid.get_secret_value())


async def _revoke(bao: DevVault, token: str) -> None:
    async with VaultClient(bao.addr) as vault:
        await vault.logical.write("auth/token/revoke", {"token": token}, token=bao.root_token)


async def _create_token(bao: DevVault, **body: Any) -> str:
    async with VaultClient(bao.addr) as vault:
        resp = await vault.logical.write("auth/token/create", {"policies": ["mcp-agent-alice"], **body},
                                         token=bao.root_token)
        assert resp.auth is not None
        return resp.auth.client_token.get_secret_value()


class Events:
    """Records the keeper's ``on_event`` calls; ``wait_for`` waits until one was seen ``count`` times."""

    def __init__(self) -> None:
        self.seen: list[str] = []
        self._changed = asyncio.Event()

    def __call__(self, event: str) -> None:
        self.seen.append(event)
        self._changed.set()

    async def wait_for(self, event: str, count: int = 1, within: float = 8.0) -> None:
        async with asyncio.timeout(within):
            while self.seen.count(event) < count:
                self._changed.clear()
                await self._changed.wait()


@contextlib.asynccontextmanager
async def running(keeper: TokenKeeper) -> AsyncIterator[None]:
    task = asyncio.create_task(keeper.run())
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


@pytest.fixture
async def client(bao: DevVault) -> AsyncIterator[VaultClient]:
    async with VaultClient(bao.addr, timeout=5) as c:
        yield c


async def _wait(cond: Callable[[], bool], within: float = 5.0) -> None:
    for _ in range(int(within / 0.02)):
        if cond():
            return
        await asyncio.sleep(0.02)
    raise AssertionError("condition not met in time")


@pytest.mark.integration
async def test_approle_login_renewal_and_relogin_after_revocation(bao: DevVault, client: VaultClient) -> None:
    role = await _approle(bao, "keeper-short-" + secrets.token_hex(3), token_ttl="3s", token_max_ttl="60s")
    events = Events()
    keeper = TokenKeeper(client, role.method(), on_event=events)
    async with running(keeper):
        await events.wait_for("login")
        first = keeper.token
        assert first
        assert keeper.valid
        assert keeper.state.ttl == 3
        assert keeper.state.renewable
        assert (await client.auth_token.lookup_self(token=first)).policies == ("default", "mcp-agent-alice")

        await events.wait_for("renewal", within=6)  # about 2 s in (two thirds of 3 s, minus jitter)
        assert keeper.token == first
        assert keeper.state.renewals >= 1
        assert keeper.state.logins == 1

        await _revoke(bao, first)  # from outside: the next renewal fails, so the keeper logs in again
        await events.wait_for("login", count=2, within=6)
        assert keeper.token
        assert keeper.token != first
        assert (await client.auth_token.lookup_self(token=keeper.token)).policies == ("default", "mcp-agent-alice")
    assert events.seen[0] == "login"


@pytest.mark.integration
async def test_recover_logs_in_again_once_for_concurrent_callers(bao: DevVault, client: VaultClient) -> None:
    role = await _approle(bao, "keeper-long-" + secrets.token_hex(3), token_ttl="1h")
    keeper = TokenKeeper(client, role.method())
    first = await keeper.ensure()  # logs in on demand
    await _revoke(bao, first)
    with pytest.raises(VaultPermissionDeniedError):
        await client.auth_token.lookup_self(token=first)
    fresh = await asyncio.gather(*(keeper.recover(first) for _ in range(5)))
    assert len(set(fresh)) == 1
    assert fresh[0] != first
    assert keeper.state.logins == 2
    assert fresh[0] is not None
    await client.auth_token.lookup_self(token=fresh[0])  # the new token works


@pytest.mark.integration
async def test_static_root_token_is_left_alone(bao: DevVault, client: VaultClient) -> None:
    events = Events()
    keeper = TokenKeeper(client, StaticToken(SecretStr(bao.root_token)), on_event=events)
    async with running(keeper):
        await _wait(lambda: keeper.state.next_action == "idle" and keeper.state.verified)
        await asyncio.sleep(0.3)
    assert keeper.state.is_root
    assert keeper.valid
    assert keeper.remaining() is None
    assert keeper.state.renewals == 0
    assert keeper.state.logins == 0
    assert events.seen == []
    assert keeper.token == bao.root_token


@pytest.mark.integration
async def test_static_non_renewable_token_is_left_alone(bao: DevVault, client: VaultClient) -> None:
    token = await _create_token(bao, ttl="1h", renewable=False)
    events = Events()
    keeper = TokenKeeper(client, StaticToken(SecretStr(token)), on_event=events)
    async with running(keeper):
        await _wait(lambda: keeper.state.next_action == "idle" and keeper.state.verified)
    assert not keeper.state.renewable
    assert 3500 < (keeper.remaining() or 0) <= 3600
    assert events.seen == []
    assert keeper.token == token


@pytest.mark.integration
async def test_static_renewable_token_is_renewed(bao: DevVault, client: VaultClient) -> None:
    token = await _create_token(bao, ttl="3s", renewable=True, explicit_max_ttl="1m")
    events = Events()
    keeper = TokenKeeper(client, StaticToken(SecretStr(token)), on_event=events)
    async with running(keeper):
        await events.wait_for("renewal", within=6)
    assert keeper.token == token
    assert keeper.state.renewals >= 1
    assert keeper.state.logins == 0
    assert 0 < (await client.auth_token.lookup_self(token=token)).ttl <= 3


@pytest.mark.integration
async def test_invalid_static_token_is_not_valid(bao: DevVault, client: VaultClient) -> None:
    keeper = TokenKeeper(client, StaticToken(SecretStr("s.not-a-real-token-000000")))
    async with running(keeper):
        await _wait(lambda: keeper.state.last_error != "")
    assert not keeper.valid
    assert not await keeper.verify()
    assert "s.not-a-real-token" not in keeper.state.last_error


@pytest.mark.integration
async def test_bad_approle_credentials_do_not_log_in(bao: DevVault, client: VaultClient) -> None:
    keeper = TokenKeeper(client, AppRoleLogin("no-such-role", secret_id_value(SecretStr("nope"))))
    with pytest.raises(VaultInvalidRequestError):
        await keeper.ensure()
    assert keeper.token is None
    assert not keeper.valid


@pytest.mark.integration
async def test_bridge_with_approle_survives_an_outside_revocation(bao: DevVault, aiohttp_client: Any) -> None:
    """End to end: the bridge logs in with AppRole, its token is revoked behind its back, the next agent
    request still succeeds (one re-login and a retry), and Vault saw the new token."""
    import json

    from bridge.app import create_app
    from bridge.config import Settings
    from bridge.keys import KEEPER
    from tests.conftest import API_KEY_ALICE, API_KEYS, until_status

    role = await _approle(bao, "bridge-" + secrets.token_hex(3), token_ttl="1h")
    settings = Settings.from_env({}, vault_addr=bao.addr, vault_role_id=role.role_id,
                                 vault_secret_id=role.secret_id, api_keys_json=json.dumps(API_KEYS),
                                 ready_probe_interval=0.1)
    app = create_app(settings)
    api = await aiohttp_client(app)
    alice = {"X-API-Key": API_KEY_ALICE}
    assert (await api.put("/secrets/approle/db", json={"data": {"a": 1}}, headers=alice)).status == 200
    keeper = app[KEEPER]
    first = keeper.token
    assert first
    assert keeper.state.logins == 1
    await _revoke(bao, first)
    resp = await api.get("/secrets/approle/db", headers=alice)
    assert resp.status == 200
    assert (await resp.json())["data"] == {"a": 1}
    assert keeper.token != first
    assert keeper.state.logins == 2
    await until_status(api, "/readyz", 200)


# -- shutdown: the bridge revokes the token it logged in with -----------------------------------------------


async def _serve_and_stop(aiohttp_client: Any, **settings: Any) -> str:
    """Run a bridge (listening on a real port) with ``settings``, make one agent request, shut it down the
    way ``web.run_app`` does (its cleanup contexts run), and return the Vault token it had."""
    import json

    from bridge.app import create_app
    from bridge.config import Settings
    from bridge.keys import KEEPER
    from tests.conftest import API_KEY_ALICE, API_KEYS

    app = create_app(Settings.from_env({}, api_keys_json=json.dumps(API_KEYS), **settings))
    api = await aiohttp_client(app)
    resp = await api.put("/secrets/shutdown/db", json={"data": {"a": 1}}, headers={"X-API-Key": API_KEY_ALICE})
    assert resp.status == 200, await resp.text()
    token = app[KEEPER].token
    assert token
    await api.close()  # stops the server and runs cleanup_ctx
    return str(token)


@pytest.mark.integration
async def test_shutdown_revokes_the_approle_login_token(bao: DevVault, client: VaultClient,
                                                        aiohttp_client: Any) -> None:
    """Issue 9: a stopped bridge leaves no live token behind. The provisioned AppRole (policy
    ``vault-mcp-bridge``, no default policy) is used, so this also proves that policy allows revoke-self."""
    from bridge.provision import ProvisionOptions, provision
    from tests.conftest import TEST_AGENTS

    creds = await provision(bao.addr, bao.root_token, ProvisionOptions(agents=TEST_AGENTS), new_secret_id=True)
    assert creds.secret_id
    token = await _serve_and_stop(aiohttp_client, vault_addr=bao.addr, vault_role_id=creds.role_id,
                                  vault_secret_id=creds.secret_id, child_token_enabled=True)
    with pytest.raises(VaultPermissionDeniedError):
        await client.auth_token.lookup_self(token=token)


@pytest.mark.integration
async def test_shutdown_never_revokes_a_static_token(bao: DevVault, client: VaultClient,
                                                     aiohttp_client: Any) -> None:
    token = await _create_token(bao, ttl="1h")
    used = await _serve_and_stop(aiohttp_client, vault_addr=bao.addr, vault_token=token)
    assert used == token
    assert (await client.auth_token.lookup_self(token=token)).policies == ("default", "mcp-agent-alice")


@pytest.mark.integration
async def test_no_login_after_revocation(bao: DevVault, client: VaultClient) -> None:
    role = await _approle(bao, "bridge-" + secrets.token_hex(3), token_ttl="1h")
    keeper = TokenKeeper(client, role.method())
    token = await keeper.ensure()
    assert await keeper.revoke()
    assert keeper.token is None
    with pytest.raises(VaultPermissionDeniedError):
        await client.auth_token.lookup_self(token=token)
    with pytest.raises(VaultCredentialError, match="shutting down"):
        await keeper.ensure()
    assert not await keeper.revoke()  # nothing left to revoke
