"""``vault-mcp-bridge stdio`` against the real OpenBao: the official SDK's stdio client in both eras (tools,
resources, prompts, completion, subscriptions), and the raw process for what a client relies on: stdout carries
protocol messages only, logs go to stderr, a closed stdin ends the process by itself (the SDK kills it 2 s later),
a bad credential stops it with one line, and it applies the same scopes, rate limit and audit as HTTP.

The SDK's child inherits only HOME, PATH, SHELL, TERM, USER, LOGNAME: the bridge's settings are given as ``env``.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import mcp_types
import pytest
from mcp import Client, StdioServerParameters
from mcp.shared.exceptions import MCPError
from mcp.shared.subscriptions import ResourceUpdated
from mcp_types import ResourceTemplateReference

from devtools.devvault import DevVault
from tests.auth.conftest import hs256
from tests.conftest import JWT_SECRET
from tests.mcp.conftest import unique_agent

pytestmark = pytest.mark.integration

BRIDGE = Path(sys.prefix) / "bin" / "vault-mcp-bridge"
CANARY = "stdio-CANARY-91e2"
WAIT = 10.0


def _env(bao: DevVault, keys: dict[str, Any], **extra: str) -> dict[str, str]:
    return {"VAULT_ADDR": bao.addr, "VAULT_TOKEN": bao.root_token, "API_KEYS_JSON": json.dumps(keys),
            "LOG_LEVEL": "info", "SUBSCRIPTION_POLL_INTERVAL": "0", **extra}


def _key_file(tmp_path: Path, key: str) -> Path:
    path = tmp_path / "key"
    path.write_text(key + "\n")
    path.chmod(0o600)
    return path


@pytest.mark.parametrize("mode", ["legacy", "2026-07-28", "auto"])
async def test_sdk_stdio_client(bao: DevVault, tmp_path: Path, mode: str) -> None:
    agent, key = unique_agent("stdio")
    params = StdioServerParameters(command=str(BRIDGE), args=["stdio", "--api-key-file", str(_key_file(tmp_path, key))],
                                   env=_env(bao, {key: agent}))
    updates: list[str] = []
    updated = asyncio.Event()

    async def on_message(message: Any) -> None:
        if isinstance(message, mcp_types.ResourceUpdatedNotification):
            updates.append(str(message.params.uri))
            updated.set()

    async with Client(params, mode=mode, message_handler=on_message) as client:
        assert client.protocol_version == ("2025-11-25" if mode == "legacy" else "2026-07-28")
        names = [t.name for t in (await client.list_tools()).tools]
        assert "kv_write" in names
        assert "whoami" in names
        result = await client.call_tool("kv_write", {"path": "db/prod", "data": {"password": CANARY}})
        assert not result.is_error
        assert (await client.call_tool("whoami", {})).structured_content["subject"] == agent
        assert [str(r.uri) for r in (await client.list_resources()).resources] == ["vault://kv/db/prod"]
        read = await client.read_resource("vault://kv/db/prod")
        assert json.loads(read.contents[0].text)["data"] == {"password": CANARY}  # type: ignore[union-attr]
        done = await client.complete(ResourceTemplateReference(type="ref/resource", uri="vault://kv/{path}"),
                                     {"name": "path", "value": "db/"})
        assert done.completion.values == ["db/prod"]
        assert (await client.list_prompts()).prompts[0].name == "store_credential"
        with pytest.raises(MCPError) as exc:
            await client.call_tool("no_such_tool", {})
        assert exc.value.code == -32602
        if mode == "legacy":
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                await client.subscribe_resource("vault://kv/db/prod")
            await client.call_tool("kv_patch", {"path": "db/prod", "data": {"port": 5432}})
            await asyncio.wait_for(updated.wait(), WAIT)
            assert updates == ["vault://kv/db/prod"]
        else:
            async with client.listen(resource_subscriptions=["vault://kv/db/prod"]) as sub:
                await client.call_tool("kv_patch", {"path": "db/prod", "data": {"port": 5432}})
                assert await asyncio.wait_for(anext(aiter(sub)), WAIT) == ResourceUpdated(uri="vault://kv/db/prod")


async def _start(bao: DevVault, tmp_path: Path, keys: dict[str, Any], key: str,
                 **extra: str) -> asyncio.subprocess.Process:
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), **_env(bao, keys, **extra)}
    return await asyncio.create_subprocess_exec(
        str(BRIDGE), "stdio", "--api-key-file", str(_key_file(tmp_path, key)), env=env,
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)


async def _ask(proc: asyncio.subprocess.Process, message: dict[str, Any]) -> dict[str, Any]:
    assert proc.stdin is not None
    assert proc.stdout is not None
    proc.stdin.write(json.dumps(message).encode() + b"\n")
    await proc.stdin.drain()
    line = await asyncio.wait_for(proc.stdout.readline(), WAIT)
    answer: dict[str, Any] = json.loads(line)
    return answer


def _modern(method: str, params: dict[str, Any] | None = None, msg_id: int = 1) -> dict[str, Any]:
    meta = {"io.modelcontextprotocol/protocolVersion": "2026-07-28", "io.modelcontextprotocol/clientCapabilities": {}}
    return {"jsonrpc": "2.0", "id": msg_id, "method": method, "params": {**(params or {}), "_meta": meta}}


async def test_raw_process_stdout_stderr_limits_and_exit(bao: DevVault, tmp_path: Path) -> None:
    """Only JSON-RPC on stdout (logs on stderr, no value in them); scopes and the rate limit refuse as on HTTP,
    and are audited; a line that is not JSON gets -32700; closing stdin ends the process by itself, quickly."""
    agent, key = unique_agent("raw")
    audit = tmp_path / "audit.log"
    keys = {key: {"agent": agent, "scopes": ["read", "list"], "rate_limit": {"requests": 5, "window_seconds": 60}}}
    proc = await _start(bao, tmp_path, keys, key, AUDIT_LOG=str(audit))
    assert proc.stdin is not None
    assert proc.stdout is not None
    assert proc.stderr is not None
    discover = await _ask(proc, _modern("server/discover"))
    assert discover["result"]["supportedVersions"][0] == "2026-07-28"
    assert discover["result"]["resultType"] == "complete"
    refused = await _ask(proc, _modern("tools/call", {"name": "kv_write",
                                                      "arguments": {"path": "x", "data": {"v": CANARY}}}, 2))
    assert refused["error"]["code"] == -31403
    assert refused["error"]["data"] == {"code": "insufficient_scope", "required_scope": "write"}
    parse = await _ask(proc, {"not": "json-rpc"})
    assert parse["error"]["code"] == -32600
    proc.stdin.write(b"{not json\n")
    await proc.stdin.drain()
    assert json.loads(await proc.stdout.readline())["error"]["code"] == -32700
    legacy_too_early = await _ask(proc, {"jsonrpc": "2.0", "id": 3, "method": "tools/list"})
    assert legacy_too_early["error"]["code"] == -32600  # handshake era: initialize first
    codes = [(await _ask(proc, _modern("tools/list", msg_id=10 + i))).get("error", {}).get("code") for i in range(4)]
    assert codes[-1] == -31429  # the key's 5 requests per minute: discover, kv_write, tools/list x3, then refused
    started = time.monotonic()
    proc.stdin.close()
    code = await asyncio.wait_for(proc.wait(), WAIT)
    elapsed = time.monotonic() - started
    assert code == 0
    assert elapsed < WAIT  # by itself (the SDK would SIGTERM it after 2 s); in practice a fraction of a second
    rest = await proc.stdout.read()
    assert rest == b""  # nothing but the answers above ever reached stdout
    stderr = (await proc.stderr.read()).decode()
    assert "mcp.stdio.started" in stderr
    assert "mcp.stdio.stopped" in stderr
    assert CANARY not in stderr
    records = [json.loads(line) for line in audit.read_text().splitlines()]
    assert {(r.get("operation"), r["outcome"]) for r in records} >= {("kv_write", "denied"), (None, "denied")}
    assert all(r["agent"] == agent for r in records)
    assert CANARY not in audit.read_text()


async def test_bad_credential_exits_2(bao: DevVault, tmp_path: Path) -> None:
    agent, key = unique_agent("bad")
    proc = await _start(bao, tmp_path, {key: agent}, key + "-wrong")
    _, stderr = await asyncio.wait_for(proc.communicate(), WAIT)
    assert proc.returncode == 2
    assert "invalid API key" in stderr.decode()
    assert key not in stderr.decode()


async def test_jwt_file_is_read_again_when_it_changes(bao: DevVault, tmp_path: Path) -> None:
    """--jwt-file: the token is verified by the bridge's JWT settings; a renewed token in the file is used from the
    next request on (here naming another subject, to make the switch visible)."""
    first, _ = unique_agent("jwt")
    second, _ = unique_agent("jwt")
    token_file = tmp_path / "token"
    token_file.write_text(hs256({"sub": first, "exp": int(time.time()) + 600}))
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), **_env(bao, {}), "JWT_HS256_SECRET": JWT_SECRET}
    proc = await asyncio.create_subprocess_exec(
        str(BRIDGE), "stdio", "--jwt-file", str(token_file), env=env, stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL)
    assert proc.stdin is not None
    whoami = _modern("tools/call", {"name": "whoami", "arguments": {}})
    assert (await _ask(proc, whoami))["result"]["structuredContent"]["subject"] == first
    token_file.write_text(hs256({"sub": second, "exp": int(time.time()) + 600, "pad": "x"}))
    assert (await _ask(proc, whoami))["result"]["structuredContent"]["subject"] == second
    token_file.write_text("not-a-jwt")
    refused = await _ask(proc, whoami)
    assert refused["error"]["code"] == -31401
    proc.stdin.close()
    assert await asyncio.wait_for(proc.wait(), WAIT) == 0
