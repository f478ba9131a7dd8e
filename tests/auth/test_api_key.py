"""``X-API-Key``: both ``API_KEYS_JSON`` forms, constant-time comparison, 401 with no fall-through."""

from __future__ import annotations

import hashlib
import hmac
import json
from types import SimpleNamespace
from typing import Any

import pytest

from bridge.auth import api_key as api_key_module
from bridge.auth.api_key import ApiKeyAuthenticator, key_digest
from bridge.config import parse_api_keys
from bridge.errors import UnauthenticatedError
from devtools.fakevault import FakeVault
from tests.auth.conftest import MakeClient, hs256
from tests.conftest import API_KEY_ALICE, API_KEY_BOB, API_KEY_READONLY


async def test_key_maps_to_agent_with_all_scopes(make_client: MakeClient) -> None:
    client = await make_client()
    resp = await client.get("/whoami", headers={"X-API-Key": API_KEY_ALICE})
    assert resp.status == 200
    body = await resp.json()
    assert body.pop("capabilities")[:3] == ["kv_read", "kv_write", "kv_patch"]  # tests/mcp/test_capabilities.py
    assert body == {"subject": "alice", "auth_method": "api_key", "scopes": ["delete", "list", "read", "write"],
                    "vault_path_prefix": "secret/data/mcp/alice/"}
    resp = await client.get("/whoami", headers={"X-API-Key": API_KEY_BOB})
    assert (await resp.json())["subject"] == "bob"


async def test_scopes_object_form(make_client: MakeClient, fake_vault: FakeVault) -> None:
    client = await make_client()
    hdrs = {"X-API-Key": API_KEY_READONLY}
    body = await (await client.get("/whoami", headers=hdrs)).json()
    assert body["subject"] == "alice"
    assert body["scopes"] == ["list", "read"]
    for method, path, payload in [("PUT", "/secrets/x", {"data": {"a": 1}}), ("PATCH", "/secrets/x", {"data": {}}),
                                  ("DELETE", "/secrets/x", None), ("POST", "/secrets/x:destroy", {"versions": [1]}),
                                  ("POST", "/secrets/x:undelete", {"versions": [1]}),
                                  ("POST", "/transit/encrypt", {"key": "k", "plaintext": "eA=="})]:
        resp = await client.request(method, path, json=payload, headers=hdrs)
        assert resp.status == 403, (method, path)
        err = (await resp.json())["error"]
        assert err["code"] == "forbidden"
        need = "delete" if method == "DELETE" or path.endswith(":destroy") else "write"
        assert f"'{need}'" in err["message"]
        assert err["required_scope"] == need
    assert fake_vault.calls("secret/") == []
    assert fake_vault.calls("transit/") == []


@pytest.mark.parametrize("presented", ["wrong-key-0000000000", API_KEY_ALICE + "x", API_KEY_ALICE[:-1], ""])
async def test_invalid_key_is_401_with_challenge(make_client: MakeClient, presented: str) -> None:
    client = await make_client()
    resp = await client.get("/whoami", headers={"X-API-Key": presented})
    assert resp.status == 401
    assert (await resp.json())["error"]["code"] == "unauthenticated"
    assert (await resp.json())["error"]["message"].startswith("invalid API key")
    # the API-key scheme, never Bearer: MCP clients read a Bearer challenge as "start OAuth"
    assert resp.headers["WWW-Authenticate"] == 'ApiKey realm="vault-mcp-bridge", header="X-API-Key"'
    assert presented not in (await resp.text()) or presented == ""


async def test_invalid_key_does_not_fall_through_to_a_valid_jwt(make_client: MakeClient) -> None:
    client = await make_client()
    resp = await client.get("/whoami", headers={"X-API-Key": "wrong-key-0000000000",
                                                "Authorization": f"Bearer {hs256({'sub': 'alice'})}"})
    assert resp.status == 401


async def test_no_credential_is_401_with_challenge(make_client: MakeClient) -> None:
    client = await make_client()
    resp = await client.get("/whoami")
    assert resp.status == 401
    assert resp.headers["WWW-Authenticate"] == 'ApiKey realm="vault-mcp-bridge", header="X-API-Key"'
    assert "X-API-Key" in (await resp.json())["error"]["message"]


async def test_disabled_api_keys_are_not_accepted(make_client: MakeClient) -> None:
    client = await make_client(auth_api_key_enabled=False)
    resp = await client.get("/whoami", headers={"X-API-Key": API_KEY_ALICE})
    assert resp.status == 401


async def test_sha256_key_form(make_client: MakeClient) -> None:
    digest = hashlib.sha256(b"carols-key-123456").hexdigest()
    client = await make_client(api_keys_json=json.dumps({f"sha256:{digest}": "carol"}))
    resp = await client.get("/whoami", headers={"X-API-Key": "carols-key-123456"})
    assert (await resp.json())["subject"] == "carol"
    resp = await client.get("/whoami", headers={"X-API-Key": f"sha256:{digest}"})
    assert resp.status == 401  # the digest itself is not a key


def test_compare_is_constant_time_against_every_key(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every configured key's digest is compared with ``hmac.compare_digest`` on every request, whether
    and wherever it matches: no early exit, no ``==`` on secret material."""
    keys = parse_api_keys(json.dumps({f"key-{i:020d}": f"agent{i}" for i in range(5)}))
    auth = ApiKeyAuthenticator(keys)
    calls: list[tuple[bytes, bytes]] = []
    real = hmac.compare_digest

    def spy(a: Any, b: Any) -> bool:
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(api_key_module, "hmac", SimpleNamespace(compare_digest=spy))

    class Req:
        def __init__(self, key: str) -> None:
            self.headers = {"X-API-Key": key}

    for presented, agent in ((f"key-{0:020d}", "agent0"), (f"key-{4:020d}", "agent4"), ("nope-nope-nope", None)):
        calls.clear()
        request: Any = Req(presented)
        if agent is None:
            with pytest.raises(UnauthenticatedError):
                auth.authenticate(request)
        else:
            identity = auth.authenticate(request)
            assert identity is not None
            assert identity.subject == agent
        assert len(calls) == 5, presented
        assert all(a == key_digest(presented) for a, _ in calls)
        assert {b for _, b in calls} == {key_digest(f"key-{i:020d}") for i in range(5)}
