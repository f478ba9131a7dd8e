"""References in Transit (issue 12): ``transit_encrypt`` takes ``plaintext_ref``, ``transit_hmac`` and
``transit_sign`` take ``input_ref`` (also in batch items), REST and MCP; the bridge base64-encodes the resolved value.
The results equal those of the value itself; every refusal has its code."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from tests.support.reveal import ALICE, USE_KEY, USER, WRITER, Admin, RevealClient, mcp_tool, structured, unique

pytestmark = pytest.mark.integration


def b64(value: str) -> str:
    return base64.b64encode(value.encode()).decode()


async def post(client: TestClient[Any, Any], route: str, body: dict[str, Any], headers: dict[str, str],
               status: int = 200) -> dict[str, Any]:
    resp = await client.post(f"/transit/{route}", json=body, headers=headers)
    answer: dict[str, Any] = await resp.json()
    assert resp.status == status, answer
    return answer


async def test_encrypt_hmac_and_sign_by_reference(reveal_client: RevealClient, admin: Admin) -> None:
    client = await reveal_client()
    path = unique("db")
    value = "s3cr\u00e9t \"quoted\" / +%"
    await admin.write(path, {"password": value, "port": 5432})
    ref = f"secret://{path}#password"
    await post(client, "keys", {"key": "signer", "type": "ed25519"}, ALICE)

    # encrypt by reference (use + write), decrypt (read) gives the value back
    enc = await post(client, "encrypt", {"key": "k", "plaintext_ref": ref}, USER)
    assert enc["ciphertext"].startswith("vault:v1:")
    dec = await post(client, "decrypt", {"key": "k", "ciphertext": enc["ciphertext"]}, ALICE)
    assert base64.b64decode(dec["plaintext"]).decode() == value

    # hmac and sign by reference equal those of the value
    by_ref = await post(client, "hmac", {"key": "k", "input_ref": ref}, USER)
    by_value = await post(client, "hmac", {"key": "k", "input": b64(value)}, ALICE)
    assert by_ref == by_value
    sig = await post(client, "sign", {"key": "signer", "input_ref": ref}, USER)
    ok = await post(client, "verify", {"key": "signer", "input": b64(value), "signature": sig["signature"]}, ALICE)
    assert ok == {"valid": True}
    port = await post(client, "hmac", {"key": "k", "input_ref": f"secret://{path}#port"}, USER)
    assert port == await post(client, "hmac", {"key": "k", "input": b64("5432")}, ALICE)  # compact JSON

    # MCP, the same
    result = structured(await mcp_tool(client, USE_KEY, "transit_hmac", {"key": "k", "input_ref": ref}))
    assert result == by_ref
    result = structured(await mcp_tool(client, USE_KEY, "transit_encrypt", {"key": "k", "plaintext_ref": ref}))
    assert result["ciphertext"].startswith("vault:v1:")
    for answer in (enc, by_ref, sig, result):
        assert value not in json.dumps(answer)
        assert b64(value) not in json.dumps(answer)


async def test_batches_take_references_per_item(reveal_client: RevealClient, admin: Admin) -> None:
    client = await reveal_client()
    path = unique("batch")
    await admin.write(path, {"a": "alpha", "b": "beta"})
    await admin.write(path, {"a": "alpha-2", "b": "beta"})
    items = [{"input_ref": f"secret://{path}#a@1", "reference": "r1"},
             {"input": b64("alpha"), "reference": "r2"},
             {"input_ref": f"secret://{path}#missing", "reference": "r3"},
             {"input_ref": "secret://../x#a", "reference": "r4"},
             {"input_ref": f"secret://{path}#a", "input": b64("x"), "reference": "r5"},
             {"input_ref": f"secret://{path}#a", "reference": "r6"}]
    out = (await post(client, "hmac", {"key": "k", "batch_input": items}, USER))["batch_results"]
    assert [item.get("reference") for item in out] == ["r1", "r2", "r3", "r4", "r5", "r6"]
    assert out[0]["hmac"] == out[1]["hmac"]  # version 1 of a is "alpha"
    assert "has no field 'missing'" in out[2]["error"]
    assert "Invalid secret reference" in out[3]["error"]
    assert "either 'input' or 'input_ref'" in out[4]["error"]
    assert out[5]["hmac"] != out[0]["hmac"]  # the latest: alpha-2
    enc = await post(client, "encrypt", {"key": "k", "batch_input": [
        {"plaintext_ref": f"secret://{path}#b"}, {"plaintext": b64("beta")}]}, USER)
    plain = await post(client, "decrypt", {"key": "k", "batch_input": [
        {"ciphertext": r["ciphertext"]} for r in enc["batch_results"]]}, ALICE)
    assert [base64.b64decode(r["plaintext"]).decode() for r in plain["batch_results"]] == ["beta", "beta"]


async def test_reference_refusals(reveal_client: RevealClient, admin: Admin) -> None:
    client = await reveal_client()
    path = unique("refuse")
    await admin.write(path, {"password": "refused-value"})
    never = unique("never")
    await admin.write(never, {"password": "never-value"})
    await admin.policy(never, reveal="never")

    async def refused(route: str, body: dict[str, Any], headers: dict[str, str], status: int,
                      code: str) -> dict[str, Any]:
        answer = await post(client, route, body, headers, status)
        assert answer["error"]["code"] == code, answer
        assert "refused-value" not in json.dumps(answer) and "never-value" not in json.dumps(answer)  # noqa: PT018
        return answer

    ref = f"secret://{path}#password"
    body = await refused("hmac", {"key": "k", "input_ref": ref}, WRITER, 403, "forbidden")  # write, not use
    assert body["error"]["accepted_scopes"] == ["use", "read"]
    await refused("hmac", {"key": "k", "input_ref": f"secret://{path}#nope"}, USER, 404, "field_not_found")
    await refused("hmac", {"key": "k", "input_ref": f"secret://{unique('gone')}#a"}, USER, 404, "not_found")
    await refused("hmac", {"key": "k", "input_ref": f"secret://{path}#password@9"}, USER, 404,
                  "version_not_found")
    await refused("hmac", {"key": "k", "input_ref": "secret://app/db"}, USER, 400, "invalid_reference")
    await refused("sign", {"key": "k", "input_ref": "secret:///abs#a"}, USER, 400, "invalid_reference")
    await refused("encrypt", {"key": "k", "plaintext_ref": ref, "plaintext": b64("x")}, USER, 400,
                  "invalid_request")
    # reveal=never: encryption would be reversible by transit_decrypt, so refused; HMAC and signing still work
    for headers in (USER, ALICE):
        await refused("encrypt", {"key": "k", "plaintext_ref": f"secret://{never}#password"}, headers, 403,
                      "secret_not_revealable")
    batch = await post(client, "encrypt", {"key": "k", "batch_input": [
        {"plaintext_ref": f"secret://{never}#password", "reference": "n"}, {"plaintext": b64("ok")}]}, USER)
    assert "bridge.reveal=never" in batch["batch_results"][0]["error"]
    assert batch["batch_results"][1]["ciphertext"].startswith("vault:v1:")
    assert "hmac" in await post(client, "hmac", {"key": "k", "input_ref": f"secret://{never}#password"}, USER)
    result = await mcp_tool(client, USE_KEY, "transit_encrypt",
                            {"key": "k", "plaintext_ref": f"secret://{never}#password"})
    structured(result, error="secret_not_revealable")
