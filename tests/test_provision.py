"""``vault-mcp-bridge provision`` against a real OpenBao: each test provisions a fresh namespace (no mounts, no
auth methods, no policies), so the first run really creates everything and the second proves idempotency."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from bridge.app import create_app
from bridge.config import Settings
from bridge.keys import KEEPER
from bridge.provision import ProvisionError, ProvisionOptions, provision
from bridge.vault.client import VaultClient
from bridge.vault.errors import VaultCredentialError, VaultInvalidRequestError, VaultPermissionDeniedError
from devtools.devvault import DevVault
from tests.conftest import API_KEY_ALICE, API_KEY_BOB, TEST_AGENTS
from tests.support.vault import root_client

pytestmark = pytest.mark.integration

ALICE = {"X-API-Key": API_KEY_ALICE}
AGENTS = ["alice", "bob"]


@pytest.fixture
def namespace(fresh_namespace: str) -> str:
    return fresh_namespace


async def run(bao: DevVault, namespace: str, **kw: Any) -> Any:
    options = kw.pop("options", None) or ProvisionOptions(agents=AGENTS)
    return await provision(bao.addr, bao.root_token, options, namespace=namespace, **kw)


def bridge_settings(make_settings: Callable[..., Settings], namespace: str, role_id: str, **kw: Any) -> Settings:
    return make_settings(vault_token=None, vault_namespace=namespace, vault_role_id=role_id,
                         child_token_enabled=True, **kw)


async def test_first_run_creates_everything_and_second_run_changes_nothing(bao: DevVault, namespace: str) -> None:
    first = await run(bao, namespace)
    text = "\n".join(first.changes)
    for expected in ("enabled KV v2 at secret/", "enabled Transit at transit/", "enabled AppRole at auth/approle/",
                     "created policy mcp-agent-alice", "created policy mcp-agent-bob",
                     "created token role mcp-agent-batch", "created token role mcp-agent",
                     "created policy vault-mcp-bridge", "created AppRole role vault-mcp-bridge",
                     "issued a new secret id"):
        assert expected in text, text
    assert first.role_id
    assert first.secret_id
    second = await run(bao, namespace)
    assert second.changes == []
    assert not second.changed
    assert second.secret_id is None
    assert second.secret_id_exists
    assert second.role_id == first.role_id


async def test_drift_is_repaired(bao: DevVault, namespace: str) -> None:
    await run(bao, namespace)
    async with root_client(bao, namespace) as root:
        await root.request("PUT", "sys/policies/acl/mcp-agent-alice", operation="test.policy",
                           json_body={"policy": 'path "secret/*" { capabilities = ["read"] }'})
        await root.request("POST", "auth/token/roles/mcp-agent-batch", operation="test.role",
                           json_body={"allowed_policies_glob": ["*"], "orphan": True, "token_type": "batch"})
    repaired = await run(bao, namespace)
    assert repaired.changes == ["updated policy mcp-agent-alice", "updated token role mcp-agent-batch"]
    assert (await run(bao, namespace)).changes == []


async def test_provisioned_credentials_run_the_bridge_with_child_tokens(
        bao: DevVault, namespace: str, aiohttp_client: Callable[..., Any],
        make_settings: Callable[..., Settings]) -> None:
    result = await run(bao, namespace)
    settings = bridge_settings(make_settings, namespace, result.role_id, vault_secret_id=result.secret_id)
    client: TestClient[Any, Any] = await aiohttp_client(create_app(settings))
    resp = await client.put("/secrets/prov/db", json={"data": {"pw": "x"}}, headers=ALICE)
    assert resp.status == 200, await resp.text()
    resp = await client.get("/secrets/prov/db", headers={"X-API-Key": API_KEY_BOB})
    assert resp.status == 404  # bob's own (empty) namespace
    resp = await client.post("/transit/keys", json={"key": "k", "type": "ed25519"}, headers=ALICE)
    assert resp.status == 200, await resp.text()
    # the bridge's own token: nothing on secrets
    token = await client.app[KEEPER].ensure()
    async with VaultClient(bao.addr, namespace=namespace) as vault:
        with pytest.raises(VaultPermissionDeniedError):
            await vault.kv.read("secret", "mcp/alice/prov/db", token=token)


async def test_wrapped_secret_id_is_unwrapped_once_at_start(
        bao: DevVault, namespace: str, aiohttp_client: Callable[..., Any],
        make_settings: Callable[..., Settings]) -> None:
    await run(bao, namespace)
    result = await run(bao, namespace, new_secret_id=True, wrap_ttl="120s")
    assert result.secret_id is None
    assert result.wrapped_secret_id
    assert result.changes == ["issued a new secret id (response-wrapped)"]
    settings = bridge_settings(make_settings, namespace, result.role_id,
                               vault_wrapped_secret_id=result.wrapped_secret_id)
    client: TestClient[Any, Any] = await aiohttp_client(create_app(settings))
    resp = await client.put("/secrets/wrapped/db", json={"data": {"pw": "x"}}, headers=ALICE)
    assert resp.status == 200, await resp.text()
    keeper = client.app[KEEPER]
    await keeper.login()  # a second login reuses the unwrapped secret id
    async with VaultClient(bao.addr, namespace=namespace) as vault:
        with pytest.raises(VaultInvalidRequestError):  # the wrapping token was used up
            await vault.request("POST", "sys/wrapping/unwrap", operation="test.unwrap",
                                token=result.wrapped_secret_id)


async def test_secret_id_from_a_file(bao: DevVault, namespace: str, aiohttp_client: Callable[..., Any],
                                     make_settings: Callable[..., Settings], tmp_path: Path) -> None:
    result = await run(bao, namespace)
    path = tmp_path / "secret-id"
    path.write_text(result.secret_id + "\n")
    settings = bridge_settings(make_settings, namespace, result.role_id, vault_secret_id_file=str(path))
    client: TestClient[Any, Any] = await aiohttp_client(create_app(settings))
    resp = await client.get("/secrets/none/here", headers=ALICE)
    assert resp.status == 404, await resp.text()
    path.write_text("")
    with pytest.raises(VaultCredentialError, match="empty"):
        await client.app[KEEPER].login()


async def test_a_kv_v1_mount_is_not_overwritten(bao: DevVault, namespace: str) -> None:
    async with root_client(bao, namespace) as root:
        await root.request("POST", "sys/mounts/secret", operation="test.mount", json_body={"type": "kv"})
    with pytest.raises(ProvisionError, match="not KV version 2"):
        await run(bao, namespace)


def test_options_refuse_bad_agent_ids() -> None:
    with pytest.raises(ValueError, match="agent id"):
        ProvisionOptions(agents=["ok", "Not.OK"])


def test_settings_need_exactly_one_secret_id_source(make_settings: Callable[..., Settings]) -> None:
    from bridge.config import ConfigError

    with pytest.raises(ConfigError, match="VAULT_SECRET_ID_FILE"):
        make_settings(vault_token=None, vault_role_id="r")
    with pytest.raises(ConfigError, match="only one"):
        make_settings(vault_token=None, vault_role_id="r", vault_secret_id="s", vault_secret_id_file="/x")


def test_cli_prints_credentials_then_no_changes(bao: DevVault, namespace: str) -> None:
    env = {**os.environ, "VAULT_ADDR": bao.addr, "VAULT_TOKEN": bao.root_token, "VAULT_NAMESPACE": namespace}
    cmd = [sys.executable, "-m", "bridge", "provision", "--agents", "alice,bob"]
    first = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=60, check=False)
    assert first.returncode == 0, first.stderr
    # stdout is an env file (`provision > bridge.env`): env lines only, the log goes to stderr
    assert all(re.fullmatch(r"[A-Z_]+=\S*", line) for line in first.stdout.splitlines()), first.stdout
    values = dict(line.split("=", 1) for line in first.stdout.splitlines())
    assert values["VAULT_ROLE_ID"]
    assert values["VAULT_SECRET_ID"]
    assert values["CHILD_TOKEN_ENABLED"] == "true"
    assert "created policy mcp-agent-alice" in first.stderr
    second = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=60, check=False)
    assert second.returncode == 0, second.stderr
    assert "no changes" in second.stderr
    assert "VAULT_SECRET_ID=" not in second.stdout
    assert values["VAULT_SECRET_ID"] not in second.stdout + second.stderr
    bad = subprocess.run([*cmd[:-1], "a,../b"], env=env, capture_output=True, text=True, timeout=60, check=False)
    assert bad.returncode == 2
    no_token = subprocess.run(cmd, env={k: v for k, v in env.items() if k != "VAULT_TOKEN"}, capture_output=True,
                              text=True, timeout=60, check=False)
    assert no_token.returncode == 2


# -- provision hardens what it creates (issue 9) -------------------------------------------------------------


async def _bridge_token(bao: DevVault, namespace: str, result: Any) -> str:
    """Log in with the provisioned AppRole, as the bridge does: children are minted with this token."""
    async with VaultClient(bao.addr, namespace=namespace) as vault:
        auth = await vault.approle.login(result.role_id, result.secret_id)
        return auth.client_token.get_secret_value()


async def _mint(bao: DevVault, namespace: str, token: str, role: str, body: dict[str, Any]) -> dict[str, Any]:
    async with VaultClient(bao.addr, namespace=namespace) as vault:
        resp = await vault.auth_token.create_with_role(role, body, token=token)
        return (resp.raw or {}).get("auth") or {}


async def test_token_roles_refuse_root_default_and_the_bridge_policy(bao: DevVault, namespace: str) -> None:
    """The bridge's own policy is refused even when its name matches the roles' glob (here the bridge role is
    called ``mcp-agent-bridge``, inside ``mcp-agent-*``): a child must never be able to mint children."""
    options = ProvisionOptions(agents=AGENTS, bridge_name="mcp-agent-bridge")
    result = await run(bao, namespace, options=options)
    token = await _bridge_token(bao, namespace, result)
    for role in ("mcp-agent-batch", "mcp-agent"):
        ok = await _mint(bao, namespace, token, role, {"policies": ["mcp-agent-alice"], "ttl": "60s"})
        assert ok["policies"] == ["mcp-agent-alice"]
        for refused in (["root"], ["default"], ["mcp-agent-bridge"], ["mcp-agent-alice", "mcp-agent-bridge"],
                        ["vault-mcp-bridge"], ["other-policy"]):
            with pytest.raises(VaultInvalidRequestError):
                await _mint(bao, namespace, token, role, {"policies": refused, "ttl": "60s"})
    assert (await run(bao, namespace, options=options)).changes == []


async def _token_mount_max(bao: DevVault, namespace: str = "", set_to: int | None = None) -> int:
    async with root_client(bao, namespace) as root:
        if set_to is not None:
            await root.request("POST", "sys/auth/token/tune", operation="test.tune",
                               json_body={"max_lease_ttl": set_to})
        tune = (await root.request("GET", "sys/auth/token/tune", operation="test.tune")).data or {}
        return int(tune["max_lease_ttl"])


@pytest.fixture
async def uncapped_token_mount(bao: DevVault) -> AsyncIterator[None]:
    """The session's OpenBao with the root namespace's token mount back at 768 h (what a fresh Vault has); the
    cap the session's own provisioning set is restored afterwards."""
    before = await _token_mount_max(bao)
    await _token_mount_max(bao, set_to=768 * 3600)
    try:
        yield
    finally:
        await _token_mount_max(bao, set_to=before)


@pytest.mark.usefixtures("uncapped_token_mount")
async def test_child_lifetimes_are_capped_on_the_server(bao: DevVault) -> None:
    """A batch role cannot carry an explicit max TTL: provisioning lowers the token mount's max_lease_ttl, which
    caps a batch child that asks for 10 h or for no TTL (768 h before); the service role caps at child TTL + 30 s.
    OpenBao applies only the root namespace's token mount cap, so this provisions the root namespace."""
    options = ProvisionOptions(agents=TEST_AGENTS)
    result = await provision(bao.addr, bao.root_token, options, new_secret_id=True)
    assert "capped token lifetimes at auth/token/ to 1h (max_lease_ttl, was 32d)" in result.changes
    token = await _bridge_token(bao, "", result)
    for body in ({"policies": ["mcp-agent-alice"], "ttl": "10h"}, {"policies": ["mcp-agent-alice"]}):
        batch = await _mint(bao, "", token, "mcp-agent-batch", body)
        assert batch["token_type"] == "batch"
        assert 0 < batch["lease_duration"] <= 3600
    service = await _mint(bao, "", token, "mcp-agent", {"policies": ["mcp-agent-alice"], "ttl": "10h"})
    assert 0 < service["lease_duration"] <= 120
    assert (await provision(bao.addr, bao.root_token, options)).changes == []  # idempotent


@pytest.mark.usefixtures("uncapped_token_mount")
async def test_a_namespace_gets_a_warning_not_a_write_that_vault_ignores(bao: DevVault, namespace: str) -> None:
    first = await run(bao, namespace)
    assert not [c for c in first.changes if "auth/token/" in c]
    assert len(first.warnings) == 1
    assert "root namespace" in first.warnings[0]
    second = await run(bao, namespace)
    assert second.changes == []
    assert second.warnings == first.warnings
    await _token_mount_max(bao, set_to=3600)  # the root namespace's operator caps it: the warning goes away
    third = await run(bao, namespace)
    assert third.warnings == []
    assert third.changes == []


@pytest.mark.usefixtures("uncapped_token_mount")
async def test_the_token_mount_cap_is_never_raised_and_can_be_left_alone(bao: DevVault) -> None:
    await _token_mount_max(bao, set_to=600)
    result = await provision(bao.addr, bao.root_token, ProvisionOptions(agents=TEST_AGENTS))
    assert not [c for c in result.changes if "auth/token/" in c]
    assert await _token_mount_max(bao) == 600
    await _token_mount_max(bao, set_to=768 * 3600)
    await provision(bao.addr, bao.root_token, ProvisionOptions(agents=TEST_AGENTS, child_max_ttl=0))
    assert await _token_mount_max(bao) == 768 * 3600


async def test_approle_secret_ids_expire_and_tokens_have_a_max_ttl(bao: DevVault, namespace: str) -> None:
    result = await run(bao, namespace)
    async with root_client(bao, namespace) as root:
        role = (await root.request("GET", "auth/approle/role/vault-mcp-bridge", operation="test.role")).data or {}
        assert role["secret_id_ttl"] == 30 * 86400
        assert role["token_max_ttl"] == 4 * 3600
        assert role["token_ttl"] == 3600
        looked = await root.request("POST", "auth/approle/role/vault-mcp-bridge/secret-id/lookup",
                                    operation="test.lookup", json_body={"secret_id": result.secret_id})
        assert (looked.data or {})["secret_id_ttl"] == 30 * 86400
    options = ProvisionOptions(agents=AGENTS, secret_id_ttl=3600, token_ttl=600, token_max_ttl=1200)
    assert (await run(bao, namespace, options=options)).changes == ["updated AppRole role vault-mcp-bridge"]
    async with root_client(bao, namespace) as root:
        role = (await root.request("GET", "auth/approle/role/vault-mcp-bridge", operation="test.role")).data or {}
        assert (role["secret_id_ttl"], role["token_ttl"], role["token_max_ttl"]) == (3600, 600, 1200)


def test_options_refuse_unsafe_values() -> None:
    with pytest.raises(ValueError, match="policy prefix"):
        ProvisionOptions(agents=["a"], policy_prefix="")  # the glob "*" would allow every policy
    with pytest.raises(ValueError, match="policy prefix"):
        ProvisionOptions(agents=["a"], policy_prefix="mcp-*")
    with pytest.raises(ValueError, match="child max TTL"):
        ProvisionOptions(agents=["a"], child_ttl=90, child_max_ttl=100)
    with pytest.raises(ValueError, match="max TTL"):
        ProvisionOptions(agents=["a"], token_ttl=7200, token_max_ttl=3600)
    with pytest.raises(ValueError, match="secret id TTL"):
        ProvisionOptions(agents=["a"], secret_id_ttl=-1)


def test_cli_hardening_options(bao: DevVault, namespace: str) -> None:
    env = {**os.environ, "VAULT_ADDR": bao.addr, "VAULT_TOKEN": bao.root_token, "VAULT_NAMESPACE": namespace}
    cmd = [sys.executable, "-m", "bridge", "provision", "--agents", "alice", "--secret-id-ttl", "7d",
           "--child-max-ttl", "2h", "--token-max-ttl", "8h"]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    assert "the secret id expires in 7d" in done.stderr
    bad = subprocess.run([*cmd, "--child-max-ttl", "10s"], env=env, capture_output=True, text=True, timeout=60,
                         check=False)
    assert bad.returncode == 2
    assert "child max TTL" in bad.stderr
