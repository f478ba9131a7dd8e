"""Request bodies past the JSON limits are 400 before anything reaches Vault, on REST and MCP alike: nesting deeper
than ``MAX_JSON_DEPTH``, ``NaN``/``Infinity``, integers beyond 2**53 - 1, floats that overflow. The finding: a body
nested ~300 deep was written to Vault (and audited "ok") while the client saw a 500, and the secret could no
longer be read. (The loader's own rules: ``tests/test_jsonbody.py``.)"""

from __future__ import annotations

import json
import secrets
from collections.abc import Callable
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from bridge.app import create_app
from bridge.config import Settings
from bridge.vault.client import VaultClient
from bridge.vault.errors import VaultNotFoundError
from devtools.devvault import DevVault
from devtools.fakevault import FakeVault
from tests.conftest import API_KEY_ALICE, API_KEYS
from tests.mcp.conftest import modern_body, modern_headers

ALICE = {"X-API-Key": API_KEY_ALICE, "Content-Type": "application/json"}
Client = TestClient[Any, Any]


def nested(depth: int, leaf: Any = "x") -> Any:
    """A value that is ``depth`` objects deep (``nested(1)`` is ``{"k": leaf}``)."""
    value = leaf
    for _ in range(depth):
        value = {"k": value}
    return value


async def _vault_has(bao: DevVault, path: str) -> bool:
    async with VaultClient(bao.addr) as client:
        try:
            await client.kv.read("secret", f"mcp/alice/{path}", token=bao.root_token)
        except VaultNotFoundError:
            return False
        return True


BAD_BODIES: dict[str, Callable[[], str]] = {
    "depth 300": lambda: json.dumps({"data": nested(300)}),
    "depth 33": lambda: json.dumps({"data": nested(32)}),  # 1 (the body) + 32
    "NaN": lambda: '{"data": {"v": NaN}}',
    "Infinity": lambda: '{"data": {"v": [1, -Infinity]}}',
    "2**53": lambda: json.dumps({"data": {"v": 2**53}}),
    "-2**60": lambda: json.dumps({"data": {"v": -(2**60)}}),
    "1e999": lambda: '{"data": {"v": 1e999}}',
    "cas 2**64": lambda: json.dumps({"data": {"v": 1}, "cas": 2**64}),
}


@pytest.mark.integration
@pytest.mark.parametrize("case", list(BAD_BODIES))
async def test_rest_write_refused_and_vault_untouched(aiohttp_client: Callable[..., Any],
                                                      make_settings: Callable[..., Settings], bao: DevVault,
                                                      case: str) -> None:
    api: Client = await aiohttp_client(create_app(make_settings()))
    path = f"json-limits/{secrets.token_hex(4)}"
    for method in ("PUT", "PATCH"):
        resp = await api.request(method, f"/secrets/{path}", data=BAD_BODIES[case](), headers=ALICE)
        assert resp.status == 400, (method, case, await resp.text())
        assert (await resp.json())["error"]["code"] == "invalid_request"
    assert not await _vault_has(bao, path), "nothing may reach Vault"
    resp = await api.put(f"/secrets/{path}", json={"data": nested(31)}, headers={"X-API-Key": API_KEY_ALICE})
    assert resp.status == 200, await resp.text()  # the limit itself: the body + 31 = 32 levels
    resp = await api.get(f"/secrets/{path}", headers={"X-API-Key": API_KEY_ALICE})
    assert resp.status == 200
    assert (await resp.json())["data"] == nested(31)


@pytest.mark.integration
async def test_transit_body_refused(aiohttp_client: Callable[..., Any],
                                    make_settings: Callable[..., Settings]) -> None:
    api: Client = await aiohttp_client(create_app(make_settings()))
    resp = await api.post("/transit/encrypt", data='{"key": "k", "plaintext": "aGk=", "x": NaN}', headers=ALICE)
    assert resp.status == 400
    assert (await resp.json())["error"]["code"] == "invalid_request"


@pytest.mark.integration
@pytest.mark.parametrize("case", ["depth 300", "NaN", "2**53"])
async def test_mcp_write_refused_and_vault_untouched(aiohttp_client: Callable[..., Any],
                                                     make_settings: Callable[..., Settings], bao: DevVault,
                                                     case: str) -> None:
    api: Client = await aiohttp_client(create_app(make_settings()))
    path = f"json-limits/{secrets.token_hex(4)}"
    data = BAD_BODIES[case]()  # the REST body's {"data": ...}: reused as the tool's arguments, plus the path
    body = json.dumps(modern_body("tools/call", {"name": "kv_write", "arguments": {"path": path}}))
    body = body.replace(f'"path": "{path}"', f'"path": "{path}", {data[1:-1]}')
    resp = await api.post("/mcp", data=body, headers=modern_headers(API_KEY_ALICE, "tools/call", "kv_write"))
    assert resp.status == 400, await resp.text()
    answer = await resp.json()
    assert answer["error"]["code"] == -32600
    assert not await _vault_has(bao, path)


@pytest.mark.integration
async def test_max_json_depth_setting(aiohttp_client: Callable[..., Any],
                                      make_settings: Callable[..., Settings]) -> None:
    api: Client = await aiohttp_client(create_app(make_settings(max_json_depth=4)))
    path = f"json-limits/{secrets.token_hex(4)}"
    headers = {"X-API-Key": API_KEY_ALICE}
    assert (await api.put(f"/secrets/{path}", json={"data": nested(4)}, headers=headers)).status == 400
    assert (await api.put(f"/secrets/{path}", json={"data": nested(3)}, headers=headers)).status == 200


@pytest.mark.parametrize("case", list(BAD_BODIES))
async def test_nothing_reaches_vault(aiohttp_client: Callable[..., Any], fake_vault: FakeVault, case: str) -> None:
    """The fake Vault records every call: a refused body causes none (OpenBao itself refuses some of these
    bodies, which alone would hide that they were sent)."""
    settings = Settings.from_env({}, vault_addr=fake_vault.addr, vault_token=fake_vault.root_token,
                                 api_keys_json=json.dumps(API_KEYS))
    api: Client = await aiohttp_client(create_app(settings))
    before = len(fake_vault.calls("secret/"))
    for method in ("PUT", "PATCH"):
        resp = await api.request(method, "/secrets/fake/limits", data=BAD_BODIES[case](), headers=ALICE)
        assert resp.status == 400, (method, await resp.text())
    body = json.dumps(modern_body("tools/call", {"name": "kv_write", "arguments": {"path": "fake/limits"}}))
    body = body.replace('"path": "fake/limits"', '"path": "fake/limits", ' + BAD_BODIES[case]()[1:-1])
    resp = await api.post("/mcp", data=body, headers=modern_headers(API_KEY_ALICE, "tools/call", "kv_write"))
    assert resp.status == 400
    assert len(fake_vault.calls("secret/")) == before
