"""The auth chain: every presented credential must be valid; the first valid one in order names the agent."""

from __future__ import annotations

from tests.auth.conftest import MakeClient, hs256, now
from tests.conftest import API_KEY_ALICE, API_KEY_BOB


async def test_valid_api_key_with_forged_jwt_is_401(make_client: MakeClient) -> None:
    client = await make_client()
    forged = hs256({"sub": "alice", "exp": now() + 60}, secret="not-the-secret-" + "x" * 32)
    resp = await client.get("/whoami", headers={"X-API-Key": API_KEY_ALICE, "Authorization": f"Bearer {forged}"})
    assert resp.status == 401
    assert (await resp.json())["error"]["code"] == "unauthenticated"
    assert 'error="invalid_token"' in resp.headers["WWW-Authenticate"]


async def test_valid_jwt_with_bad_api_key_is_401(make_client: MakeClient) -> None:
    client = await make_client()
    token = hs256({"sub": "bob", "exp": now() + 60})
    resp = await client.get("/whoami", headers={"X-API-Key": "wrong-key-wrong-key", "Authorization": f"Bearer {token}"})
    assert resp.status == 401


async def test_two_valid_credentials_use_the_first_method(make_client: MakeClient) -> None:
    client = await make_client()
    token = hs256({"sub": "alice", "exp": now() + 60})
    resp = await client.get("/whoami", headers={"X-API-Key": API_KEY_BOB, "Authorization": f"Bearer {token}"})
    assert resp.status == 200
    body = await resp.json()
    assert body["subject"] == "bob"
    assert body["auth_method"] == "api_key"
