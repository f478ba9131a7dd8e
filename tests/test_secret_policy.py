"""``vault-mcp-bridge secret-policy AGENT PATH``: sets the bridge.* keys of a secret's custom metadata against a
real OpenBao, merging (other keys are kept), validating with the bridge's own rules, never showing a value."""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
from typing import Any

import pytest

from bridge.secret_policy import add_secret_policy_args, parse_allowed_hosts, secret_policy_main, settings_patch
from devtools.devvault import DevVault
from tests.support.vault import root_client

CANARY = "sp-canary-value-6f1c"


def _args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_secret_policy_args(parser)
    return parser.parse_args(argv)


def _run(bao: DevVault, namespace: str, capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    env = {"VAULT_ADDR": bao.addr, "VAULT_TOKEN": bao.root_token, "VAULT_NAMESPACE": namespace}
    code = secret_policy_main(_args(*argv), env)
    out = capsys.readouterr()
    return code, out.out, out.err


async def _vault(bao: DevVault, namespace: str, method: str, path: str, body: Any = None) -> dict[str, Any]:
    async with root_client(bao, namespace) as root:
        return (await root.request(method, path, operation="test", json_body=body)).data or {}


def _custom(bao: DevVault, namespace: str, path: str) -> dict[str, str]:
    meta = asyncio.run(_vault(bao, namespace, "GET", f"secret/metadata/mcp/{path}"))
    return dict(meta.get("custom_metadata") or {})


@pytest.fixture
def kv_namespace(bao: DevVault, fresh_namespace: str) -> str:
    async def setup() -> None:
        await _vault(bao, fresh_namespace, "POST", "sys/mounts/secret", {"type": "kv", "options": {"version": "2"}})
        await _vault(bao, fresh_namespace, "POST", "secret/data/mcp/alice/app/db", {"data": {"pw": CANARY}})
        await _vault(bao, fresh_namespace, "POST", "secret/metadata/mcp/alice/app/db",
                     {"custom_metadata": {"owner": "ops"}})

    asyncio.run(setup())
    return fresh_namespace


@pytest.mark.integration
def test_sets_merges_and_prints_the_settings(bao: DevVault, kv_namespace: str,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = _run(bao, kv_namespace, capsys, "alice", "app/db", "--reveal", "never",
                          "--allowed-hosts", "API.example.com:443, *.svc.internal", "--canary", "true")
    assert code == 0, err
    assert out.splitlines() == ["bridge.allowed_hosts=api.example.com:443,*.svc.internal", "bridge.canary=true",
                                "bridge.reveal=never"]
    assert "updated secret/metadata/mcp/alice/app/db" in err
    assert _custom(bao, kv_namespace, "alice/app/db") == {
        "owner": "ops", "bridge.reveal": "never", "bridge.canary": "true",
        "bridge.allowed_hosts": "api.example.com:443,*.svc.internal"}
    code, out, err = _run(bao, kv_namespace, capsys, "alice", "app/db", "--reveal", "never")
    assert (code, "no changes to" in err) == (0, True)
    code, out, err = _run(bao, kv_namespace, capsys, "Alice", "app/db", "--allowed-hosts", "", "--canary", "false")
    assert code == 0, err
    assert out.splitlines() == ["bridge.canary=false", "bridge.reveal=never"]
    assert _custom(bao, kv_namespace, "alice/app/db") == {"owner": "ops", "bridge.reveal": "never",
                                                          "bridge.canary": "false"}
    code, out, err = _run(bao, kv_namespace, capsys, "alice", "app/db")  # no option: show only
    assert (code, out.splitlines()) == (0, ["bridge.canary=false", "bridge.reveal=never"])
    data = asyncio.run(_vault(bao, kv_namespace, "GET", "secret/data/mcp/alice/app/db"))
    assert data["data"] == {"pw": CANARY}  # the value is untouched, and never shown
    assert data["metadata"]["version"] == 1


@pytest.mark.integration
def test_a_secret_not_written_yet_gets_its_settings_first(bao: DevVault, kv_namespace: str,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = _run(bao, kv_namespace, capsys, "alice", "later/token", "--reveal", "never")
    assert (code, out) == (0, "bridge.reveal=never\n"), err
    asyncio.run(_vault(bao, kv_namespace, "POST", "secret/data/mcp/alice/later/token", {"data": {"t": "x"}}))
    data = asyncio.run(_vault(bao, kv_namespace, "GET", "secret/data/mcp/alice/later/token"))
    assert data["metadata"]["custom_metadata"] == {"bridge.reveal": "never"}
    code, out, err = _run(bao, kv_namespace, capsys, "alice", "never/written", "--allowed-hosts", "")
    assert (code, out) == (0, "")
    assert "has no bridge.* settings" in err


@pytest.mark.integration
@pytest.mark.parametrize("argv", [
    ("alice", "../bob/db", "--reveal", "never"),
    ("alice", "/abs", "--reveal", "never"),
    ("alice", "a%2Fb", "--reveal", "never"),
    ("al.ice", "app/db", "--reveal", "never"),
    ("_bridge", "leases/x", "--reveal", "never"),
    ("alice", "app/db", "--allowed-hosts", "https://api.example.com/"),
    ("alice", "app/db", "--allowed-hosts", "*"),
    ("alice", "app/db", "--mount", '"x'),
])
def test_bad_input_is_refused_and_changes_nothing(bao: DevVault, kv_namespace: str,
                                                  capsys: pytest.CaptureFixture[str], argv: tuple[str, ...]) -> None:
    before = _custom(bao, kv_namespace, "alice/app/db")
    code, out, err = _run(bao, kv_namespace, capsys, *argv)
    assert code == 2
    assert out == ""
    assert err.startswith("secret-policy: ")
    assert err.count("\n") == 1
    assert _custom(bao, kv_namespace, "alice/app/db") == before


def test_cli_needs_an_admin_token_and_reports_vault_errors(bao: DevVault) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VAULT_", "BAO_"))}
    cmd = [sys.executable, "-m", "bridge", "secret-policy", "alice", "app/db", "--reveal", "never"]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 2
    assert "VAULT_TOKEN" in done.stderr
    env.update(VAULT_ADDR=bao.addr, VAULT_TOKEN="not-a-token")
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 1
    assert "permission denied" in done.stderr
    assert done.stdout == ""


def test_settings_patch_and_hosts() -> None:
    assert settings_patch(reveal=None, allowed_hosts=None, canary=None) == {}
    assert settings_patch(reveal="allow", allowed_hosts="", canary="true") == {
        "bridge.reveal": "allow", "bridge.allowed_hosts": None, "bridge.canary": "true"}
    assert parse_allowed_hosts("a.example, A.example,[::1]:8443,10.0.0.1") == "a.example,[::1]:8443,10.0.0.1"
    for bad in ("*.10.0.0.1", "host:0", "host:", "[::1", "x..y", "a b", "user@host", "h:99999"):
        with pytest.raises(ValueError, match=r"^'"):  # the message starts with the entry it refuses
            parse_allowed_hosts(bad)
    with pytest.raises(ValueError, match="512 bytes"):
        parse_allowed_hosts(",".join(f"host{i}.example.com" for i in range(40)))
    with pytest.raises(ValueError, match="allow or never"):
        settings_patch(reveal="sometimes", allowed_hosts=None, canary=None)
