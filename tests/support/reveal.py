"""Fixtures of the use-don't-reveal tests (issue 12): a bridge whose API keys include a ``use``-only identity and a
write-only one, and admin helpers that write secrets and their ``bridge.*`` settings in Vault directly (as an
operator does, never through the bridge)."""

from __future__ import annotations

import json
import uuid
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from bridge.app import create_app
from bridge.config import Settings
from bridge.secret_policy import apply_secret_policy, settings_patch
from bridge.vault.client import VaultClient
from devtools.devvault import DevVault
from tests.broker.conftest import make_upstream  # noqa: F401 - the recording servers, for tests outside tests/broker
from tests.conftest import API_KEY_ALICE, API_KEYS

USE_KEY = "use-key-" + "u" * 22
"""alice with ``use,write,list``: the recommended identity of a model-driven agent."""
WRITE_ONLY_KEY = "write-only-key-" + "w" * 15
"""alice with ``write`` alone: may not use secrets by reference."""
REVEAL_KEYS: dict[str, Any] = {
    **API_KEYS,
    USE_KEY: {"agent": "alice", "scopes": ["use", "write", "list"]},
    WRITE_ONLY_KEY: {"agent": "alice", "scopes": ["write"]},
}
ALICE = {"X-API-Key": API_KEY_ALICE}
USER = {"X-API-Key": USE_KEY}
WRITER = {"X-API-Key": WRITE_ONLY_KEY}


def unique(name: str) -> str:
    return f"reveal-{uuid.uuid4().hex[:10]}/{name}"


class Admin:
    """An operator's direct access to the tests' OpenBao (root token): secrets and their ``bridge.*`` settings of
    agent ``alice`` (prefix ``mcp``, mount ``secret``)."""

    def __init__(self, bao: DevVault) -> None:
        self.bao = bao

    async def write(self, path: str, data: Mapping[str, Any], *, agent: str = "alice") -> int:
        async with VaultClient(self.bao.addr) as client:
            meta = await client.kv.write("secret", f"mcp/{agent}/{path}", dict(data), token=self.bao.root_token)
            return meta.version

    async def policy(self, path: str, *, reveal: str | None = None, allowed_hosts: str | None = None,
                     canary: str | None = None, agent: str = "alice") -> dict[str, str]:
        patch = settings_patch(reveal=reveal, allowed_hosts=allowed_hosts, canary=canary)
        async with VaultClient(self.bao.addr) as client:
            settings, _ = await apply_secret_policy(client, self.bao.root_token, "secret", f"mcp/{agent}/{path}",
                                                    patch)
            return settings

    async def raw_metadata(self, path: str, custom: Mapping[str, str], *, agent: str = "alice") -> None:
        """Custom metadata exactly as given (values ``secret-policy`` would refuse too)."""
        async with VaultClient(self.bao.addr) as client:
            await client.kv.write_custom_metadata("secret", f"mcp/{agent}/{path}", dict(custom),
                                                  token=self.bao.root_token, create=True)

    async def custom_metadata(self, path: str, *, agent: str = "alice") -> dict[str, str]:
        async with VaultClient(self.bao.addr) as client:
            meta = await client.kv.metadata("secret", f"mcp/{agent}/{path}", token=self.bao.root_token)
            return meta.custom_metadata or {}


@pytest.fixture
def admin(bao: DevVault) -> Admin:
    return Admin(bao)


RevealClient = Callable[..., Awaitable[TestClient[Any, Any]]]


@pytest.fixture
def reveal_client(aiohttp_client: Callable[..., Awaitable[TestClient[Any, Any]]],
                  make_settings: Callable[..., Settings]) -> RevealClient:
    """``await reveal_client(**settings)``: a test client of a bridge with :data:`REVEAL_KEYS`
    (``create_app`` keyword arguments go in ``app_kwargs``)."""

    async def make(app_kwargs: Mapping[str, Any] | None = None, **overrides: Any) -> TestClient[Any, Any]:
        overrides.setdefault("api_keys_json", json.dumps(REVEAL_KEYS))
        return await aiohttp_client(create_app(make_settings(**overrides), **(app_kwargs or {})))

    return make


async def mcp_tool(client: TestClient[Any, Any], key: str, tool: str, arguments: Mapping[str, Any],
                   *, status: int = 200) -> dict[str, Any]:
    """One ``tools/call`` in the stateless 2026-07-28 era (raw JSON-RPC, no session); the JSON-RPC ``result`` (or
    the whole body when ``status`` is not 200)."""
    from tests.mcp.conftest import modern_body, modern_headers

    resp = await client.post("/mcp", json=modern_body("tools/call", {"name": tool, "arguments": dict(arguments)}),
                             headers=modern_headers(key, "tools/call", tool))
    body: dict[str, Any] = await resp.json()
    assert resp.status == status, body
    if status != 200:
        return body
    result: dict[str, Any] = body["result"]
    return result


def structured(result: Mapping[str, Any], *, error: str | None = None) -> dict[str, Any]:
    """A tool result's ``structuredContent``, checked to be a success (or the error ``error``)."""
    content: dict[str, Any] = dict(result["structuredContent"])
    if error is None:
        assert result["isError"] is False, content
    else:
        assert result["isError"] is True, content
        assert content["error"]["code"] == error, content
    return content
