"""Pure pieces of the MCP endpoint: session ids, the tool table and its schemas, Origin and Accept rules."""

from __future__ import annotations

import re

import jsonschema  # type: ignore[import-untyped]
import pytest

from bridge.auth.identity import Identity
from bridge.config import SCOPES, Settings
from bridge.edge import origin_policy
from bridge.mcp.server import accepts_both, decode_cursor, decode_header_value, encode_cursor
from bridge.mcp.session import SessionCodec
from bridge.mcp.tools import definition, output_schema
from bridge.models import SecretOut
from bridge.operations import default_registry

KEY = b"k" * 32


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_session_roundtrip_and_rejections() -> None:
    clock = Clock(1_000_000.0)
    codec = SessionCodec(KEY, 3600, clock=clock)
    sid = codec.issue("alice", "2025-06-18")
    assert all(0x21 <= ord(c) <= 0x7E for c in sid)
    session = codec.verify(sid, "alice")
    assert session is not None
    assert session.protocol_version == "2025-06-18"
    assert session.agent == "alice"
    assert codec.verify(sid, "bob") is None                                  # someone else's
    assert SessionCodec(b"x" * 32, 3600, clock=clock).verify(sid, "alice") is None  # other key
    assert codec.verify(sid.replace("alice", "bob", 1), "bob") is None        # re-labelled
    assert codec.verify(sid[:-1] + ("A" if sid[-1] != "A" else "B"), "alice") is None
    assert codec.verify("", "alice") is None
    clock.now += 3599
    assert codec.verify(sid, "alice") is not None
    clock.now += 1
    assert codec.verify(sid, "alice") is None                                 # expired
    assert codec.issue("alice", "2025-11-25") != codec.issue("alice", "2025-11-25")  # nonce


def test_session_flags_are_signed() -> None:
    """What the client declared (``u``: URL-mode elicitation) travels in the signed id: ``v2`` with flags; the
    flags cannot be added, changed or dropped without the key; a ``v1`` id has none."""
    clock = Clock(1_000_000.0)
    codec = SessionCodec(KEY, 3600, clock=clock)
    sid = codec.issue("alice", "2025-11-25", flags="u")
    assert sid.startswith("v2.alice.2025-11-25.1000000.u.")
    session = codec.verify(sid, "alice")
    assert session is not None
    assert (session.flags, session.protocol_version) == ("u", "2025-11-25")
    plain = codec.issue("alice", "2025-11-25")
    assert plain.startswith("v1.")
    plain_session = codec.verify(plain, "alice")
    assert plain_session is not None
    assert plain_session.flags == ""
    assert codec.verify(sid.replace(".u.", ".x.", 1), "alice") is None
    head, nonce, mac = plain.rsplit(".", 2)
    assert codec.verify(f"v2{head[2:]}.u.{nonce}.{mac}", "alice") is None  # a flag added to a v1 id
    with pytest.raises(ValueError, match="flags"):
        codec.issue("alice", "2025-11-25", flags="U!")


def test_session_issued_in_the_future_is_rejected() -> None:
    future = SessionCodec(KEY, 3600, clock=lambda: 2_000_000.0).issue("alice", "2025-11-25")
    assert SessionCodec(KEY, 3600, clock=lambda: 1_000_000.0).verify(future, "alice") is None


def test_random_key_when_no_secret() -> None:
    one, two = SessionCodec.from_secret(None, 60), SessionCodec.from_secret(None, 60)
    assert two.verify(one.issue("alice", "2025-11-25"), "alice") is None
    shared = SessionCodec.from_secret("s" * 20, 60)
    assert SessionCodec.from_secret("s" * 20, 60).verify(shared.issue("alice", "2025-11-25"), "alice")


REGISTRY = default_registry()
TOOLS = {op.name: definition(op) for op in REGISTRY.tools()}


def test_tool_table_is_complete_and_consistent() -> None:
    names = [op.name for op in REGISTRY.tools()]
    assert len(names) == len(set(names))
    assert {"kv_read", "kv_write", "kv_patch", "kv_list", "kv_delete", "kv_undelete", "kv_destroy", "kv_metadata",
            "transit_encrypt", "transit_decrypt", "whoami"} <= set(names)
    for op in REGISTRY.tools():
        assert re.fullmatch(r"[a-z][a-z0-9_]{0,63}", op.name)
        assert set(op.scopes) <= set(SCOPES)
        tool = TOOLS[op.name]
        assert tool["inputSchema"]["type"] == "object"
        jsonschema.Draft202012Validator.check_schema(tool["inputSchema"])
        jsonschema.Draft202012Validator.check_schema(tool["outputSchema"])
        assert set(tool["annotations"]) >= {"readOnlyHint", "destructiveHint", "idempotentHint"}
        if tool["annotations"]["readOnlyHint"]:
            assert not tool["annotations"]["destructiveHint"]
        assert REGISTRY[op.name] is op


def test_output_schema_admits_success_and_error_only() -> None:
    schema = output_schema(SecretOut)
    validator = jsonschema.Draft202012Validator(schema)
    assert schema["type"] == "object"
    assert validator.is_valid({"path": "a", "data": {"k": 1}, "version": 1, "created_time": "t"})
    assert validator.is_valid({"error": {"code": "not_found", "message": "No secret at 'a'."}})
    assert not validator.is_valid({"path": "a"})
    assert not validator.is_valid({"error": {"code": "x"}})
    assert not validator.is_valid([])


def test_argument_schemas_come_from_the_rest_models() -> None:
    write = TOOLS["kv_write"]["inputSchema"]
    assert set(write["required"]) == {"path", "data"}
    assert write["additionalProperties"] is False
    assert write["properties"]["cas"]["anyOf"][0] == {"minimum": 0, "maximum": 999_999_999, "type": "integer"}
    assert TOOLS["whoami"]["inputSchema"]["properties"] == {}


def test_visible_tools_follow_scopes() -> None:
    none = Identity("alice", "api_key", frozenset())
    assert [op.name for op in REGISTRY.tools() if op.allowed(none)] == ["whoami"]
    reader = Identity("alice", "api_key", frozenset({"read"}))
    assert {op.name for op in REGISTRY.tools() if op.allowed(reader)} == {
        "kv_read", "kv_metadata", "transit_decrypt", "transit_verify", "transit_random", "http_request", "whoami",
        "db_creds", "pki_issue", "pki_sign", "ssh_sign", "lease_list", "lease_renew"}
    user = Identity("alice", "api_key", frozenset({"use"}))  # any-of scopes: use opens what reads references
    assert {op.name for op in REGISTRY.tools() if op.allowed(user)} == {
        "kv_read", "kv_metadata", "http_request", "whoami",
        "db_creds", "pki_sign", "ssh_sign", "lease_list", "lease_renew"}  # answered with references, or public


@pytest.mark.parametrize(("origin", "allowed"), [
    ("http://localhost", True), ("http://localhost:6274", True), ("http://127.0.0.1:8089", True),
    ("http://[::1]:3000", True), ("https://LOCALHOST", True),
    ("http://localhost.evil.example", False), ("http://127.0.0.1.nip.io", False), ("null", False),
    ("file:///etc", False), ("", False), ("http://10.0.0.5", False),
])
def test_default_origins(origin: str, allowed: bool) -> None:
    assert origin_policy(Settings.from_env({}))(origin) is allowed


def test_wildcard_bind_host_does_not_allow_everything() -> None:
    settings = Settings.from_env({}, host="0.0.0.0")
    assert not origin_policy(settings)("http://0.0.0.0")
    assert origin_policy(settings)("http://localhost:1")


@pytest.mark.parametrize(("header", "ok"), [
    ("application/json, text/event-stream", True), ("*/*", True), ("text/event-stream,application/json", True),
    ("application/json", False), ("", False), (None, False), ("*/*;q=0", False),
    ("application/json;q=0.5, text/*;q=0.1", True),
])
def test_accept(header: str | None, ok: bool) -> None:
    assert accepts_both(header) is ok


def test_header_value_decoding_and_cursors() -> None:
    assert decode_header_value("kv_read") == "kv_read"
    assert decode_header_value("=?base64?a3ZfcmVhZA==?=") == "kv_read"
    assert decode_header_value("=?base64?%%%?=") is None
    assert decode_cursor(encode_cursor(7)) == 7
    assert decode_cursor(None) == 0


def test_mcp_settings() -> None:
    from bridge.config import ConfigError

    with pytest.raises(ConfigError, match="MCP_SESSION_SECRET"):
        Settings.from_env({"MCP_SESSION_SECRET": "too-short"})
    with pytest.raises(ConfigError, match="MCP_PAGE_SIZE"):
        Settings.from_env({"MCP_PAGE_SIZE": "0"})
    s = Settings.from_env({"MCP_SESSION_TTL": "2h", "MCP_ALLOWED_ORIGINS": "https://a.example, https://b.example"})
    assert s.mcp_session_ttl == 7200
    assert s.mcp_allowed_origins == ["https://a.example", "https://b.example"]
    assert Settings.from_env({}).mcp_page_size == 50
