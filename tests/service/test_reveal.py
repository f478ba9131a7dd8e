"""Who may see a value (issue 12), against the real OpenBao: a read answers values only to ``read`` on a secret whose
``bridge.reveal`` is ``allow``; otherwise references and fingerprints (Transit HMACs with the bridge's own key,
one Vault call per read). Writes answer no data; no operation takes custom metadata; ``bridge.canary`` is never
shown."""

from __future__ import annotations

import base64
import json
import re
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from pydantic import BaseModel

from bridge.models import FieldRef
from bridge.operations import default_registry
from bridge.secret_settings import SecretSettings, agent_view
from bridge.service.secrets import fingerprint_text, value_text
from devtools.devvault import DevVault
from tests.support.reveal import ALICE, USER, Admin, RevealClient, unique
from tests.support.vault import root_client

pytestmark = pytest.mark.integration

FINGERPRINT = re.compile(r"hmac-sha256:v1:[A-Za-z0-9_-]{43}")


async def read(client: TestClient[Any, Any], path: str, headers: dict[str, str], **query: str) -> dict[str, Any]:
    resp = await client.get(f"/secrets/{path}", params=query, headers=headers)
    body: dict[str, Any] = await resp.json()
    assert resp.status == 200, body
    return body


async def hmac_calls(client: TestClient[Any, Any]) -> float:
    """How many Transit HMAC calls the bridge made so far (its own Vault metrics)."""
    text = await (await client.get("/metrics")).text()
    match = re.search(r'bridge_vault_request_duration_seconds_count\{operation="transit.hmac"\} ([0-9.e+]+)', text)
    return float(match.group(1)) if match else 0.0


async def test_use_only_reads_references_and_fingerprints(reveal_client: RevealClient, admin: Admin,
                                                          bao: DevVault) -> None:
    client = await reveal_client()
    path = unique("db")
    await admin.write(path, {"password": "hunter2-abc", "user": "app", "port": 5432, "copy": "hunter2-abc"})
    version = await admin.write(path, {"password": "hunter2-abc", "user": "app", "port": 5432, "copy": "hunter2-abc",
                                       "odd key@#": "x"})
    before = await hmac_calls(client)
    body = await read(client, path, USER)
    assert await hmac_calls(client) == before + 1  # every field of one read: one Transit call (batch_input)
    assert set(body) == {"path", "version", "fields"}
    assert body["path"] == path
    assert body["version"] == version
    fields = body["fields"]
    assert set(fields) == {"password", "user", "port", "copy", "odd key@#"}
    for entry in fields.values():
        assert set(entry) == {"fingerprint", "reference"}
        assert FINGERPRINT.fullmatch(entry["fingerprint"]), entry
        assert entry["reference"].endswith(f"@{version}")
    assert fields["password"]["reference"] == f"secret://{path}#password@{version}"
    assert fields["odd key@#"]["reference"] == f"secret://{path}#odd%20key%40%23@{version}"
    assert fields["password"]["fingerprint"] == fields["copy"]["fingerprint"]  # equal values, equal fingerprints
    assert fields["password"]["fingerprint"] != fields["user"]["fingerprint"]
    assert "hunter2" not in json.dumps(body)

    # stable per value, across reads and secrets; and it is Vault's HMAC with the bridge's key, not a plain hash
    again = await read(client, path, USER, version="1")
    assert again["fields"]["password"]["fingerprint"] == fields["password"]["fingerprint"]
    assert again["version"] == 1
    assert again["fields"]["password"]["reference"] == f"secret://{path}#password@1"
    async with root_client(bao) as root:
        resp = await root.request("POST", "transit/hmac/mcp-bridge-fingerprint", operation="test.hmac",
                                  json_body={"input": base64.b64encode(b"hunter2-abc").decode()})
    assert resp.data is not None
    assert fingerprint_text(resp.data["hmac"]) == fields["password"]["fingerprint"]
    async with root_client(bao) as root:
        resp = await root.request("POST", "transit/hmac/mcp-bridge-fingerprint", operation="test.hmac",
                                  json_body={"input": base64.b64encode(b"5432").decode()})
    assert resp.data is not None
    assert fingerprint_text(resp.data["hmac"]) == fields["port"]["fingerprint"]  # non-strings: compact JSON


async def test_read_scope_sees_values_unless_reveal_never(reveal_client: RevealClient, admin: Admin) -> None:
    client = await reveal_client()
    path = unique("api")
    await admin.write(path, {"token": "tok-123"})
    await admin.policy(path, allowed_hosts="api.example.com")
    body = await read(client, path, ALICE)
    assert body["data"] == {"token": "tok-123"}
    assert body["custom_metadata"] == {"bridge.allowed_hosts": "api.example.com"}

    await admin.policy(path, reveal="never")
    body = await read(client, path, ALICE)  # read, but no one sees this secret's values
    assert set(body) == {"path", "version", "fields"}
    assert FINGERPRINT.fullmatch(body["fields"]["token"]["fingerprint"])
    assert "tok-123" not in json.dumps(body)

    # a malformed reveal value fails closed
    for value in ("NEVER", "no", "sometimes"):  # (Vault refuses an empty value)
        await admin.raw_metadata(path, {"bridge.reveal": value})
        assert "fields" in await read(client, path, ALICE), value
    await admin.raw_metadata(path, {"bridge.reveal": " Allow "})
    assert (await read(client, path, ALICE))["data"] == {"token": "tok-123"}


async def test_kv_read_tool_answers_both_shapes_within_its_output_schema(reveal_client: RevealClient,
                                                                         admin: Admin) -> None:
    import jsonschema  # type: ignore[import-untyped]

    from bridge.mcp.tools import output_schema
    from bridge.models import KvReadOut

    client = await reveal_client()
    path = unique("schema")
    await admin.write(path, {"a": "1", "b": {"nested": True}})
    schema = output_schema(KvReadOut)
    validator = jsonschema.Draft202012Validator(schema)
    values = await read(client, path, ALICE)
    refs = await read(client, path, USER)
    for body in (values, refs, {"error": {"code": "not_found", "message": "x"}}):
        validator.validate({k: v for k, v in body.items() if v is not None})  # MCP leaves null fields out
    assert not validator.is_valid({"path": path, "version": 1})  # neither data nor fields nor wrap_info
    assert refs["fields"]["b"]["fingerprint"] != refs["fields"]["a"]["fingerprint"]


async def test_writes_answer_no_data(reveal_client: RevealClient) -> None:
    client = await reveal_client()
    path = unique("w")
    for headers in (ALICE, USER):
        resp = await client.put(f"/secrets/{path}", json={"data": {"pw": "write-canary-1"}}, headers=headers)
        body = await resp.json()
        assert resp.status == 200, body
        assert set(body) == {"path", "version", "created_time"}
        resp = await client.patch(f"/secrets/{path}", json={"data": {"pw2": "write-canary-2"}}, headers=headers)
        body = await resp.json()
        assert resp.status == 200, body
        assert set(body) == {"path", "version", "created_time"}


def _field_names(schema: Any) -> set[str]:
    names: set[str] = set()
    if isinstance(schema, dict):
        for key, value in schema.items():
            if key == "properties" and isinstance(value, dict):
                names |= set(value)
            names |= _field_names(value)
    elif isinstance(schema, list):
        for item in schema:
            names |= _field_names(item)
    return names


def test_no_operation_takes_custom_metadata() -> None:
    """Agents cannot set ``bridge.*`` keys: no operation's input (REST body, URL, MCP arguments) has any field about
    metadata, and every input model forbids unknown fields."""
    for op in default_registry():
        model: type[BaseModel] = op.input
        names = _field_names(model.model_json_schema())
        assert not [n for n in names if "metadata" in n.lower() or n.lower().startswith("bridge")], op.name
        assert model.model_config.get("extra") == "forbid", op.name


async def test_custom_metadata_in_a_write_is_refused_and_never_reaches_vault(reveal_client: RevealClient,
                                                                             admin: Admin) -> None:
    client = await reveal_client()
    path = unique("meta")
    await admin.write(path, {"a": "1"})
    await admin.policy(path, reveal="never")
    for method, body in (("PUT", {"data": {"a": "2"}, "custom_metadata": {"bridge.reveal": "allow"}}),
                         ("PATCH", {"data": {"a": "2"}, "custom_metadata": {"bridge.reveal": "allow"}}),
                         ("PUT", {"data": {"a": "2"}, "options": {"custom_metadata": {"bridge.canary": "false"}}})):
        resp = await client.request(method, f"/secrets/{path}", json=body, headers=ALICE)
        assert resp.status == 400, await resp.text()
        assert (await resp.json())["error"]["code"] == "invalid_request"
    assert await admin.custom_metadata(path) == {"bridge.reveal": "never"}
    body = await read(client, path, ALICE)
    assert body["version"] == 1
    assert "fields" in body


async def test_the_canary_mark_is_never_shown(reveal_client: RevealClient, admin: Admin) -> None:
    client = await reveal_client()
    plain, canary = unique("plain"), unique("decoy")
    for path in (plain, canary):
        await admin.write(path, {"k": "v"})
    await admin.policy(canary, canary="true")
    for path in (plain, canary):
        body = await read(client, path, ALICE)
        assert body["custom_metadata"] is None
        resp = await client.get(f"/secrets/{path}:metadata", headers=USER)  # use may see version history
        meta = await resp.json()
        assert resp.status == 200, meta
        assert meta["custom_metadata"] is None
    await admin.policy(canary, allowed_hosts="api.example.com")
    resp = await client.get(f"/secrets/{canary}:metadata", headers=ALICE)
    assert (await resp.json())["custom_metadata"] == {"bridge.allowed_hosts": "api.example.com"}


def test_settings_parser() -> None:
    assert SecretSettings.parse(None) == SecretSettings("allow", None, canary=False)
    assert SecretSettings.parse({"bridge.reveal": "never"}).reveal == "never"
    assert SecretSettings.parse({"bridge.reveal": "NEVER"}).reveal == "never"
    assert SecretSettings.parse({"bridge.reveal": "typo"}).reveal == "never"  # fail closed
    assert SecretSettings.parse({"bridge.reveal": "ALLOW "}).reveal == "allow"
    for value, expected in (("true", True), ("TRUE", True), ("yes", True), ("1", True), ("x", True),
                            ("false", False), ("0", False), ("no", False), ("off", False), ("", False)):
        assert SecretSettings.parse({"bridge.canary": value}).canary is expected, value
    assert SecretSettings.parse({"bridge.allowed_hosts": "a.example"}).allowed_hosts == "a.example"
    assert agent_view({"bridge.canary": "true"}) is None
    assert agent_view({"bridge.canary": "true", "owner": "ops"}) == {"owner": "ops"}
    assert agent_view({}) is None


def test_fingerprint_text_and_values() -> None:
    raw = bytes(range(32))
    text = fingerprint_text("vault:v3:" + base64.b64encode(raw).decode())
    assert text == "hmac-sha256:v3:" + base64.urlsafe_b64encode(raw).decode().rstrip("=")
    assert re.fullmatch(r"[A-Za-z0-9_.:+/=-]+", text)  # the broker's redaction label alphabet
    for bad in ("", "vault:v1:", "vault:vx:AAAA", "hmac:v1:AAAA", "vault:v1:!!!!"):
        with pytest.raises(ValueError, match="HMAC"):
            fingerprint_text(bad)
    assert value_text("s") == "s"
    assert value_text({"b": [1, 2], "a": None}) == '{"b":[1,2],"a":null}'
    assert FieldRef(fingerprint="f").reference is None


async def test_no_fingerprint_without_the_bridges_own_hmac_right(reveal_client: RevealClient, child_settings: Any,
                                                                 admin: Admin) -> None:
    """Fingerprints use the bridge's own token: in child-token mode its provisioned policy grants HMAC with exactly
    FINGERPRINT_KEY, so another key name is refused by Vault: 502 fingerprint_unavailable, never a plain hash."""
    path = unique("nofp")
    await admin.write(path, {"k": "fp-value"})
    for key in ("mcp-bridge-fingerprint", "not-granted-key"):
        settings = child_settings(fingerprint_key=key)
        client = await reveal_client(**{k: getattr(settings, k) for k in
                                        ("vault_token", "vault_role_id", "vault_secret_id", "child_token_enabled",
                                         "fingerprint_key")})
        resp = await client.get(f"/secrets/{path}", headers=USER)
        body = await resp.json()
        if key == "mcp-bridge-fingerprint":
            assert resp.status == 200, body
            assert FINGERPRINT.fullmatch(body["fields"]["k"]["fingerprint"])
        else:
            assert resp.status == 502, body
            assert body["error"]["code"] == "fingerprint_unavailable"
            assert "transit/hmac/not-granted-key" in body["error"]["message"]
            assert "fp-value" not in json.dumps(body)
            resp = await client.get(f"/secrets/{path}", headers=ALICE)  # values need no fingerprint
            assert (await resp.json())["data"] == {"k": "fp-value"}
