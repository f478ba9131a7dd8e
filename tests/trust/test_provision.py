"""``vault-mcp-bridge provision`` against a real OpenBao: each test provisions a fresh namespace (no mounts, no
auth methods, no policies), so the first run really creates everything and the second proves idempotency."""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from bridge.app import create_app
from bridge.config import Settings
from bridge.devvault import DevVault
from bridge.keys import KEEPER
from bridge.provision import ProvisionError, ProvisionOptions, provision
from bridge.vault.client import VaultClient
from bridge.vault.errors import VaultInvalidRequestError, VaultPermissionDeniedError
from tests.conftest import API_KEY_ALICE, API_KEY_BOB

pytestmark = pytest.mark.integration

ALICE = {"X-API-Key": API_KEY_ALICE}
AGENTS = ["alice", "bob"]


@pytest.fixture
async def namespace(bao: DevVault) -> AsyncIterator[str]:
    name = "prov" + secrets.token_hex(4)
    async with VaultClient(bao.addr) as root:
        root.token = bao.root_token
        await root.request("POST", f"sys/namespaces/{name}", operation="test.ns", json_body={})
        yield name


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
    async with VaultClient(bao.addr, namespace=namespace) as root:
        root.token = bao.root_token
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
    with pytest.raises(VaultInvalidRequestError, match="empty"):
        await client.app[KEEPER].login()


async def test_a_kv_v1_mount_is_not_overwritten(bao: DevVault, namespace: str) -> None:
    async with VaultClient(bao.addr, namespace=namespace) as root:
        root.token = bao.root_token
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
