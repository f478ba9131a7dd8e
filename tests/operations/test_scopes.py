"""Any-of scopes (issue 12): an operation may be allowed by any one of several scopes (``kv_read``, ``kv_metadata``
and ``http_request``: ``use`` or ``read``). ``tools/list``, the OpenAPI document, the 403 (REST ``forbidden``, MCP
``insufficient_scope`` with its challenge) and the audit record follow the declaration; the ``use`` scope is
accepted in API keys and JWTs, and the default scopes stay as they were."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from bridge.auth.identity import Identity
from bridge.config import DEFAULT_SCOPES, SCOPES, Settings
from bridge.models import NoArgs, WhoamiOut
from bridge.operations import Operation, Registry, default_registry
from bridge.operations.pipeline import scope_phrase
from bridge.ops.openapi import build_openapi
from bridge.service.identity import IdentityService
from tests.auth.conftest import hs256
from tests.mcp.conftest import modern_body, modern_headers
from tests.support.reveal import USE_KEY, USER, WRITE_ONLY_KEY, WRITER, RevealClient

pytestmark = pytest.mark.integration


def test_operation_scopes_and_the_registry_check() -> None:
    registry = default_registry()
    assert registry["kv_read"].scopes == ("use", "read")
    assert registry["kv_metadata"].scopes == ("use", "read")
    assert registry["http_request"].scopes == ("use", "read")
    assert registry["kv_write"].scopes == ("write",)
    assert registry["whoami"].scopes == ()
    user = Identity("a", "api_key", frozenset({"use"}))
    reader = Identity("a", "api_key", frozenset({"read"}))
    writer = Identity("a", "api_key", frozenset({"write"}))
    assert registry["kv_read"].allowed(user) and registry["kv_read"].allowed(reader)  # noqa: PT018
    assert not registry["kv_read"].allowed(writer)
    assert not registry["transit_decrypt"].allowed(user)  # use never opens what answers plaintext
    assert scope_phrase(("use", "read")) == "the 'use' or 'read' scope"
    base = Operation(name="x", scope=(), input=NoArgs, output=WhoamiOut, service=IdentityService,
                     run=IdentityService.whoami, title="x", summary="x", description="x")
    with pytest.raises(ValueError, match="any-of scopes"):
        Registry([base])
    with pytest.raises(ValueError, match="any-of scopes"):
        Registry([Operation(name="x", scope=("use", "use"), input=NoArgs, output=WhoamiOut, service=IdentityService,
                            run=IdentityService.whoami, title="x", summary="x", description="x")])


def test_the_use_scope_is_known_and_the_defaults_are_unchanged() -> None:
    assert "use" in SCOPES
    assert DEFAULT_SCOPES == ("read", "write", "delete", "list")
    settings = Settings.from_env({}, api_keys_json=json.dumps({"k" * 24: "alice",
                                                              "u" * 24: {"agent": "bob", "scopes": ["use", "list"]}}))
    assert settings.api_keys_json["k" * 24].scopes == DEFAULT_SCOPES
    assert settings.api_keys_json["u" * 24].scopes == ("use", "list")
    assert settings.jwt_default_scopes == ["read", "list"]
    assert Settings.from_env({"JWT_DEFAULT_SCOPES": "use,list"}).jwt_default_scopes == ["use", "list"]


def test_openapi_names_the_scopes() -> None:
    doc = build_openapi(default_registry())
    read = doc["paths"]["/secrets/{path}"]["get"]
    assert read["x-scopes"] == ["use", "read"]
    assert read["description"] == "Needs the 'use' or 'read' scope (any one of them)."
    assert doc["paths"]["/secrets/{path}"]["put"]["x-scopes"] == ["write"]
    assert doc["paths"]["/broker/http"]["post"]["x-scopes"] == ["use", "read"]
    assert "x-scopes" not in doc["paths"]["/whoami"]["get"]
    assert "wrap_ttl" in {p["name"] for p in read["parameters"]}


async def test_refusals_name_the_scopes_on_both_transports(reveal_client: RevealClient, tmp_path: Path) -> None:
    client = await reveal_client(audit_log=str(tmp_path / "audit.log"), jwt_issuer="https://issuer.example")
    resp = await client.get("/secrets/app/db", headers=WRITER)
    assert resp.status == 403
    err = (await resp.json())["error"]
    assert err["code"] == "forbidden"
    assert "needs the 'use' or 'read' scope" in err["message"]
    assert err["required_scope"] == "use"
    assert err["accepted_scopes"] == ["use", "read"]

    resp = await client.post("/mcp", json=modern_body("tools/call", {"name": "kv_read",
                                                                     "arguments": {"path": "app/db"}}),
                             headers=modern_headers(WRITE_ONLY_KEY, "tools/call", "kv_read"))
    assert resp.status == 403
    data = (await resp.json())["error"]["data"]
    assert data == {"code": "insufficient_scope", "required_scope": "use", "accepted_scopes": ["use", "read"]}
    challenge = resp.headers["WWW-Authenticate"]
    assert 'error="insufficient_scope", scope="use"' in challenge  # the least privileged scope, never "use read"
    assert "resource_metadata=" in challenge

    resp = await client.post("/mcp", json=modern_body("tools/list"), headers=modern_headers(USE_KEY, "tools/list"))
    tools = [t["name"] for t in (await resp.json())["result"]["tools"]]
    assert tools == ["kv_read", "kv_write", "kv_patch", "kv_list", "kv_undelete", "kv_metadata", "kv_request_input",
                     "kv_request_input_status", "transit_encrypt", "transit_rewrap", "transit_sign", "transit_hmac",
                     "transit_create_key", "http_request", "whoami", "db_creds", "pki_sign", "ssh_sign", "lease_list",
                     "lease_renew"]
    resp = await client.post("/mcp", json=modern_body("tools/list"),
                             headers=modern_headers(WRITE_ONLY_KEY, "tools/list"))
    tools = [t["name"] for t in (await resp.json())["result"]["tools"]]
    assert "kv_read" not in tools and "http_request" not in tools  # noqa: PT018

    records = [json.loads(line) for line in (tmp_path / "audit.log").read_text().splitlines()]
    denied = [(r["operation"], r["outcome"], r["code"], r.get("path")) for r in records]
    assert denied == [("kv_read", "denied", "forbidden", "app/db"),
                      ("kv_read", "denied", "insufficient_scope", "app/db")]


async def test_use_scope_in_a_jwt(reveal_client: RevealClient) -> None:
    client = await reveal_client()
    token = hs256({"sub": "alice", "scope": "use list"})
    resp = await client.get("/whoami", headers={"Authorization": f"Bearer {token}"})
    assert (await resp.json())["scopes"] == ["list", "use"]
    resp = await client.get("/secrets/never-written-by-anyone", headers={"Authorization": f"Bearer {token}"})
    assert resp.status == 404  # allowed (use), and nothing there
    resp = await client.get("/whoami", headers=USER)
    body: dict[str, Any] = await resp.json()
    assert body["scopes"] == ["list", "use", "write"]
