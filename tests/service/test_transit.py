"""Transit through the bridge against a real OpenBao: every operation, batches answered per item, and keys
isolated per agent (the bridge runs with per-agent child tokens, so Vault's policies are what allow it)."""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from bridge.app import create_app
from bridge.config import Settings
from bridge.keys import CHILD_TOKENS, VAULT
from bridge.vault.errors import VaultNotFoundError, VaultPermissionDeniedError
from devtools.devvault import DevVault
from tests.conftest import API_KEY_ALICE, API_KEY_BOB, API_KEY_READONLY
from tests.support.vault import RootVault, root_client

pytestmark = pytest.mark.integration

ALICE = {"X-API-Key": API_KEY_ALICE}
BOB = {"X-API-Key": API_KEY_BOB}
READONLY = {"X-API-Key": API_KEY_READONLY}


def b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


@pytest.fixture
async def client(aiohttp_client: Callable[..., Any], child_settings: Callable[..., Settings]) -> TestClient[Any, Any]:
    c: TestClient[Any, Any] = await aiohttp_client(create_app(child_settings()))
    return c


@pytest.fixture
async def root(bao: DevVault) -> AsyncIterator[RootVault]:
    async with root_client(bao) as vault:
        yield vault


async def post(client: TestClient[Any, Any], op: str, body: dict[str, Any],
               headers: dict[str, str] = ALICE) -> tuple[int, dict[str, Any]]:
    resp = await client.post(f"/transit/{op}", json=body, headers=headers)
    return resp.status, await resp.json()


async def test_encrypt_decrypt_and_per_item_batch(client: TestClient[Any, Any]) -> None:
    status, out = await post(client, "encrypt", {"key": "tx", "plaintext": b64(b"hello")})
    assert status == 200, out
    assert out["ciphertext"].startswith("vault:v1:")
    assert "batch_results" not in out  # no nulls in REST answers
    status, out2 = await post(client, "decrypt", {"key": "tx", "ciphertext": out["ciphertext"]})
    assert out2 == {"plaintext": b64(b"hello")}

    status, batch = await post(client, "encrypt", {"key": "tx", "batch_input": [
        {"plaintext": b64(b"one"), "reference": "r1"}, {"plaintext": b64(b"two"), "reference": "r2"}]})
    assert status == 200, batch
    results = batch["batch_results"]
    assert [r["reference"] for r in results] == ["r1", "r2"]
    status, dec = await post(client, "decrypt", {"key": "tx", "batch_input": [
        {"ciphertext": results[0]["ciphertext"], "reference": "a"},
        {"ciphertext": "vault:v1:AAAAbroken", "reference": "b"},
        {"ciphertext": results[1]["ciphertext"]}]})
    assert status == 200, dec
    first, bad, third = dec["batch_results"]
    assert first == {"plaintext": b64(b"one"), "reference": "a"}
    assert set(bad) == {"error", "reference"}
    assert bad["reference"] == "b"
    assert third == {"plaintext": b64(b"two")}


async def test_a_batch_whose_items_all_fail_is_still_answered_per_item(client: TestClient[Any, Any]) -> None:
    await post(client, "encrypt", {"key": "allfail", "plaintext": b64(b"x")})
    status, out = await post(client, "decrypt", {"key": "allfail", "batch_input": [
        {"ciphertext": "vault:v1:bad1"}, {"ciphertext": "nope"}]})
    assert status == 200, out
    assert all("error" in item for item in out["batch_results"])
    assert len(out["batch_results"]) == 2


async def test_rewrap_after_rotation(client: TestClient[Any, Any], root: RootVault) -> None:
    _, enc = await post(client, "encrypt", {"key": "rot", "plaintext": b64(b"data")})
    await root.request("POST", "transit/keys/mcp.alice.rot/rotate", operation="test.rotate")
    status, out = await post(client, "rewrap", {"key": "rot", "ciphertext": enc["ciphertext"]})
    assert status == 200, out
    assert out["ciphertext"].startswith("vault:v2:")
    assert out["key_version"] == 2
    _, dec = await post(client, "decrypt", {"key": "rot", "ciphertext": out["ciphertext"]})
    assert dec["plaintext"] == b64(b"data")


async def test_create_signing_key_sign_and_verify(client: TestClient[Any, Any]) -> None:
    status, key = await post(client, "keys", {"key": "signer", "type": "ed25519"})
    assert status == 200, key
    assert key["type"] == "ed25519"
    assert key["supports_signing"] is True
    assert key["public_keys"]["1"]
    status, again = await post(client, "keys", {"key": "signer", "type": "ed25519"})
    assert status == 200  # idempotent
    assert again["public_keys"] == key["public_keys"]
    status, conflict = await post(client, "keys", {"key": "signer", "type": "aes256-gcm96"})
    assert status == 409
    assert conflict["error"]["code"] == "key_type_mismatch"

    msg = b64(b"sign me")
    status, sig = await post(client, "sign", {"key": "signer", "input": msg})
    assert status == 200, sig
    _, ok = await post(client, "verify", {"key": "signer", "input": msg, "signature": sig["signature"]})
    assert ok == {"valid": True}
    _, bad = await post(client, "verify", {"key": "signer", "input": b64(b"other"), "signature": sig["signature"]})
    assert bad == {"valid": False}

    status, batch = await post(client, "sign", {"key": "signer", "batch_input": [
        {"input": msg, "reference": "ok"}, {"input": b64(b"second")}]})
    assert status == 200, batch
    signatures = [r["signature"] for r in batch["batch_results"]]
    status, ver = await post(client, "verify", {"key": "signer", "batch_input": [
        {"input": msg, "signature": signatures[0]}, {"input": msg, "signature": signatures[1]},
        {"input": msg, "signature": "garbage"}]})
    assert status == 200, ver
    assert ver["batch_results"][0]["valid"] is True
    assert ver["batch_results"][1]["valid"] is False
    assert "error" in ver["batch_results"][2]


async def test_ecdsa_with_hash_algorithm(client: TestClient[Any, Any]) -> None:
    await post(client, "keys", {"key": "ec", "type": "ecdsa-p256"})
    msg = b64(b"payload")
    status, sig = await post(client, "sign", {"key": "ec", "input": msg, "hash_algorithm": "sha2-512"})
    assert status == 200, sig
    _, ok = await post(client, "verify", {"key": "ec", "input": msg, "signature": sig["signature"],
                                          "hash_algorithm": "sha2-512"})
    assert ok == {"valid": True}
    _, wrong = await post(client, "verify", {"key": "ec", "input": msg, "signature": sig["signature"],
                                             "hash_algorithm": "sha2-256"})
    assert wrong == {"valid": False}


async def test_signing_with_an_encryption_key_is_a_clear_400(client: TestClient[Any, Any]) -> None:
    await post(client, "keys", {"key": "aeskey"})
    status, out = await post(client, "sign", {"key": "aeskey", "input": b64(b"x")})
    assert status == 400
    assert "does not support signing" in out["error"]["message"]


async def test_hmac_and_verify_hmac(client: TestClient[Any, Any]) -> None:
    await post(client, "keys", {"key": "mac"})
    msg = b64(b"mac me")
    status, mac = await post(client, "hmac", {"key": "mac", "input": msg, "hash_algorithm": "sha2-512"})
    assert status == 200, mac
    assert mac["hmac"].startswith("vault:v1:")
    _, ok = await post(client, "verify", {"key": "mac", "input": msg, "hmac": mac["hmac"],
                                          "hash_algorithm": "sha2-512"})
    assert ok == {"valid": True}
    status, batch = await post(client, "hmac", {"key": "mac", "batch_input": [{"input": msg}, {"input": msg}]})
    assert status == 200
    assert len({r["hmac"] for r in batch["batch_results"]}) == 1


async def test_random(client: TestClient[Any, Any]) -> None:
    status, out = await post(client, "random", {"bytes": 16, "format": "hex"}, headers=READONLY)
    assert status == 200, out
    assert len(out["random_bytes"]) == 32
    int(out["random_bytes"], 16)
    status, out = await post(client, "random", {})
    assert len(base64.b64decode(out["random_bytes"])) == 32
    status, out = await post(client, "random", {"bytes": 100000})
    assert status == 400


async def test_keys_are_per_agent(client: TestClient[Any, Any], root: RootVault) -> None:
    _, enc = await post(client, "encrypt", {"key": "same", "plaintext": b64(b"alice's")})
    await post(client, "encrypt", {"key": "same", "plaintext": b64(b"bob's")}, headers=BOB)
    status, out = await post(client, "decrypt", {"key": "same", "ciphertext": enc["ciphertext"]}, headers=BOB)
    assert status == 400  # bob's "same" is another Vault key
    assert "message authentication failed" in out["error"]["message"]
    for name in ("mcp.alice.same", "mcp.bob.same"):
        info = await root.request("GET", f"transit/keys/{name}", operation="test.key")
        assert (info.data or {})["name"] == name


async def test_child_token_policy_grants_exactly_the_agents_keys(client: TestClient[Any, Any],
                                                                 root: RootVault) -> None:
    await post(client, "keys", {"key": "mine"})
    await post(client, "keys", {"key": "theirs"}, headers=BOB)
    broker = client.app.get(CHILD_TOKENS)
    assert broker is not None
    entry = await broker.acquire("alice", "api_key")
    vault = client.app[VAULT]
    try:
        await vault.transit.call("transit", "encrypt", "mcp.alice.mine", {"plaintext": "aGk="}, token=entry.token)
        for op, body in (("encrypt", {"plaintext": "aGk="}), ("decrypt", {"ciphertext": "vault:v1:x"}),
                         ("sign", {"input": "aGk="}), ("hmac", {"input": "aGk="}),
                         ("rewrap", {"ciphertext": "vault:v1:x"})):
            with pytest.raises(VaultPermissionDeniedError):
                await vault.transit.call("transit", op, "mcp.bob.theirs", body, token=entry.token)
        with pytest.raises(VaultPermissionDeniedError):  # another agent's key, even to create it
            await vault.transit.create_key("transit", "mcp.bob.new", "aes256-gcm96", token=entry.token)
        with pytest.raises(VaultPermissionDeniedError):  # a prefix that merely starts like alice's
            await vault.transit.create_key("transit", "mcp.alicex.k", "aes256-gcm96", token=entry.token)
        with pytest.raises(VaultPermissionDeniedError):  # no parameters but "type" on its own keys
            await vault.request("POST", "transit/keys/mcp.alice.mine/config", operation="test.config",
                                token=entry.token, json_body={"exportable": True})
        with pytest.raises(VaultPermissionDeniedError):
            await vault.request("GET", "transit/export/encryption-key/mcp.alice.mine", operation="test.export",
                                token=entry.token)
    finally:
        broker.release(entry)


async def test_bad_input_is_refused_and_changes_nothing(client: TestClient[Any, Any], root: RootVault) -> None:
    for body in ({"key": "Bad.Key", "plaintext": "aGk="}, {"key": "../x", "plaintext": "aGk="},
                 {"key": "ok", "plaintext": "not base64!"}, {"key": "ok", "plaintext": "aGk=", "batch_input": [
                     {"plaintext": "aGk="}]}, {"key": "ok"}, {"key": "ok", "batch_input": []},
                 {"key": "ok", "plaintext": "aGk=", "extra": 1}):
        status, out = await post(client, "encrypt", body)
        assert status == 400, (body, out)
        assert out["error"]["code"] == "invalid_request"
    status, _ = await post(client, "keys", {"key": "newkey", "type": "des"})
    assert status == 400
    with pytest.raises(VaultNotFoundError):
        await root.request("GET", "transit/keys/mcp.alice.newkey", operation="test.key")
    status, _ = await post(client, "verify", {"key": "k", "input": "aGk="})
    assert status == 400


async def test_scopes(client: TestClient[Any, Any]) -> None:
    await post(client, "keys", {"key": "scoped", "type": "ed25519"})
    status, out = await post(client, "sign", {"key": "scoped", "input": "aGk="}, headers=READONLY)
    assert status == 403
    assert out["error"]["required_scope"] == "write"
    status, _ = await post(client, "keys", {"key": "ro-new"}, headers=READONLY)
    assert status == 403
    status, _ = await post(client, "verify", {"key": "scoped", "input": "aGk=", "signature": "vault:v1:AAAA"},
                           headers=READONLY)
    assert status == 200


async def test_shared_key_scope(aiohttp_client: Callable[..., Any], make_settings: Callable[..., Settings],
                                root: RootVault) -> None:
    client: TestClient[Any, Any] = await aiohttp_client(create_app(make_settings(transit_key_scope="shared")))
    status, out = await post(client, "encrypt", {"key": "legacy-shared", "plaintext": "aGk="})
    assert status == 200, out
    status, dec = await post(client, "decrypt", {"key": "legacy-shared", "ciphertext": out["ciphertext"]},
                             headers=BOB)
    assert dec == {"plaintext": "aGk="}
    info = await root.request("GET", "transit/keys/legacy-shared", operation="test.key")
    assert (info.data or {})["name"] == "legacy-shared"
