"""Intake links: issue, verify, expiry, forgery, key derivation, CSRF tokens (bridge/intake/token.py)."""

from __future__ import annotations

import base64
import json

import pytest

from bridge.config import Settings
from bridge.errors import IntakeError, InvalidRequestError
from bridge.intake import IntakeCodec, IntakeField
from bridge.mcp.session import SessionCodec
from tests.intake.conftest import KEY, Clock

FIELDS = (IntakeField("username"), IntakeField("private key", multiline=True))


def test_issue_and_verify_round_trip() -> None:
    clock = Clock()
    codec = IntakeCodec(KEY, 600, clock=clock)
    ticket = codec.issue(agent="alice", path="app/db", cas=3, fields=FIELDS, description="  a note\nline 2 ")
    assert ticket.expires_at == int(clock.now + 600)
    assert ticket.intake_id == f"{ticket.expires_at}.{ticket.nonce}"
    assert len(ticket.nonce) == 22
    again = codec.verify(ticket.token)
    assert again == ticket
    assert again.description == "a note\nline 2"
    assert ticket.token.startswith("i1.")
    assert len(ticket.token) < 1000
    other = codec.issue(agent="alice", path="app/db", cas=3, fields=FIELDS)
    assert other.nonce != ticket.nonce


def test_expiry() -> None:
    clock = Clock()
    codec = IntakeCodec(KEY, 600, clock=clock)
    token = codec.issue(agent="alice", path="p", cas=0, fields=FIELDS).token
    clock.now += 599
    codec.verify(token)
    clock.now += 1
    with pytest.raises(IntakeError) as info:
        codec.verify(token)
    assert (info.value.status, info.value.code) == (410, "intake_expired")


def _tamper(token: str, **changes: object) -> str:
    _, payload, mac = token.split(".")
    data = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    data.update(changes)
    new = base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()
    return f"i1.{new}.{mac}"


@pytest.mark.parametrize("changes", [{"a": "bob"}, {"p": "other"}, {"c": 7}, {"x": 2_000_000_000},
                                     {"f": [["username", False]]}])
def test_altered_links_are_invalid(changes: dict[str, object]) -> None:
    codec = IntakeCodec(KEY, 600, clock=Clock())
    token = codec.issue(agent="alice", path="p", cas=0, fields=FIELDS).token
    with pytest.raises(IntakeError) as info:
        codec.verify(_tamper(token, **changes))
    assert (info.value.status, info.value.code) == (404, "intake_invalid")


def test_forged_and_malformed_links_are_invalid() -> None:
    codec = IntakeCodec(KEY, 600, clock=Clock())
    token = codec.issue(agent="alice", path="p", cas=0, fields=FIELDS).token
    other_key = IntakeCodec(b"x" * 32, 600, clock=Clock())
    for bad in ("", "i1", token + "x", token[:-1] + ("A" if token[-1] != "A" else "B"), token.replace("i1.", "i2."),
                other_key.issue(agent="alice", path="p", cas=0, fields=FIELDS).token):
        with pytest.raises(IntakeError) as info:
            codec.verify(bad)
        assert info.value.code == "intake_invalid"


def test_a_session_id_is_no_link() -> None:
    secret = "s" * 40
    session = SessionCodec.from_secret(secret, 600).issue("alice", "2025-11-25")
    codec = IntakeCodec(IntakeCodec.derive_key(secret), 600)
    with pytest.raises(IntakeError):
        codec.verify(session)


@pytest.mark.parametrize(("kwargs", "reason"), [
    ({"agent": "Alice"}, "agent id"),
    ({"path": "../x"}, "Invalid path"),
    ({"cas": -1}, "cas"),
    ({"cas": True}, "cas"),
    ({"fields": ()}, "1 to 16 fields"),
    ({"fields": tuple(IntakeField(f"f{i}") for i in range(17))}, "1 to 16 fields"),
    ({"fields": (IntakeField("a"), IntakeField("a"))}, "twice"),
    ({"fields": (IntakeField(""),)}, "empty"),
    ({"fields": (IntakeField("x" * 129),)}, "longer than 128"),
    ({"fields": (IntakeField("a\nb"),)}, "control character"),
    ({"fields": (IntakeField("a", label="x" * 65),)}, "label is longer than 64"),
    ({"fields": (IntakeField("a", label="tab\there"),)}, "label has a control character"),
    ({"fields": (IntakeField("a", description="x" * 201),)}, "description is longer than 200"),
    ({"fields": (IntakeField("a", description="two\nlines"),)}, "description has a control character"),
    ({"fields": tuple(IntakeField(f"f{i}", label="l" * 60, description="d" * 100) for i in range(16))},
     "together are longer than 2048"),
    ({"description": "x" * 501}, "longer than 500"),
    ({"description": "a\x1b[31mred"}, "control character"),
])
def test_requests_outside_the_limits_are_400(kwargs: dict[str, object], reason: str) -> None:
    codec = IntakeCodec(KEY, 600)
    args: dict[str, object] = {"agent": "alice", "path": "p", "cas": 0, "fields": FIELDS, "description": ""}
    args.update(kwargs)
    with pytest.raises(InvalidRequestError) as info:
        codec.issue(**args)  # type: ignore[arg-type]
    assert reason in info.value.message


def test_key_from_settings() -> None:
    """INTAKE_SECRET, else derived from MCP_SESSION_SECRET (replicas sharing it verify each other's links), else
    random per process."""
    a = IntakeCodec.from_settings(Settings.from_env({}, mcp_session_secret="m" * 20))
    b = IntakeCodec.from_settings(Settings.from_env({}, mcp_session_secret="m" * 20))
    token = a.issue(agent="alice", path="p", cas=0, fields=FIELDS).token
    assert b.verify(token).agent == "alice"
    own = IntakeCodec.from_settings(Settings.from_env({}, mcp_session_secret="m" * 20, intake_secret="i" * 32))
    with pytest.raises(IntakeError):
        own.verify(token)
    r1, r2 = IntakeCodec.from_settings(Settings.from_env({})), IntakeCodec.from_settings(Settings.from_env({}))
    with pytest.raises(IntakeError):
        r2.verify(r1.issue(agent="alice", path="p", cas=0, fields=FIELDS).token)
    assert a.ttl == 600


def test_csrf_tokens_are_bound_to_link_and_cookie() -> None:
    codec = IntakeCodec(KEY, 600)
    t1 = codec.issue(agent="alice", path="p", cas=0, fields=FIELDS)
    t2 = codec.issue(agent="alice", path="p", cas=0, fields=FIELDS)
    token = codec.csrf_token(t1, "cookie-1")
    assert codec.csrf_ok(t1, "cookie-1", token)
    assert not codec.csrf_ok(t1, "cookie-2", token)
    assert not codec.csrf_ok(t2, "cookie-1", token)
    assert not codec.csrf_ok(t1, None, token)
    assert not codec.csrf_ok(t1, "cookie-1", None)
    assert not codec.csrf_ok(t1, "cookie-1", "")


def test_labels_and_descriptions_travel_in_the_link() -> None:
    """A field's label and description are part of the signed link; a link without them has the original
    payload (links made before them still verify)."""
    codec = IntakeCodec(KEY, 600, clock=Clock())
    fields = (IntakeField("pw", label="Database password", description="From the vault of the DBA team"),
              IntakeField("key", True, "", "PEM, with its BEGIN line"), IntakeField("user", False, "User name"))
    ticket = codec.issue(agent="alice", path="p", cas=0, fields=fields)
    assert codec.verify(ticket.token).fields == fields
    payload = ticket.token.split(".")[1]
    data = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    assert data["f"] == [["pw", False, "Database password", "From the vault of the DBA team"],
                         ["key", True, "", "PEM, with its BEGIN line"], ["user", False, "User name"]]
    plain = codec.issue(agent="alice", path="p", cas=0, fields=FIELDS)
    payload = plain.token.split(".")[1]
    assert json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))["f"] == [
        ["username", False], ["private key", True]]


def test_a_request_too_large_for_a_link_is_400() -> None:
    """Within every single limit, but quotes and non-ASCII text escape into more than a link holds."""
    codec = IntakeCodec(KEY, 600)
    fields = tuple(IntakeField(f"f{i}", label='"' * 60, description="\\" * 65) for i in range(16))
    path = "/".join(["q" * 120] * 4)
    with pytest.raises(InvalidRequestError) as info:
        codec.issue(agent="alice", path=path, cas=0, fields=fields, description="€" * 500)
    assert "does not fit into a link" in info.value.message


def test_references_name_the_request_not_the_link() -> None:
    """``ref_id`` names the agent's request (record name, path, expiry); only the same key and agent read it back;
    altered, foreign or malformed ones are ``None``; it carries nothing to submit values with."""
    clock = Clock()
    codec = IntakeCodec(KEY, 600, clock=clock)
    ticket = codec.issue(agent="alice", path="app/db@prod", cas=2, fields=FIELDS)
    ref_id = codec.ref_id(ticket)
    ref = codec.read_ref(ref_id, "alice")
    assert ref is not None
    assert (ref.agent, ref.path, ref.expires_at, ref.nonce) == ("alice", "app/db@prod", ticket.expires_at,
                                                                ticket.nonce)
    assert ref.intake_id == ticket.intake_id
    assert ticket.token.split(".")[2] not in ref_id  # not the link's MAC
    assert codec.read_ref(ref_id, "bob") is None
    assert IntakeCodec(b"o" * 32, 600).read_ref(ref_id, "alice") is None
    first, nonce, path, mac = ref_id.split(".")
    other_path = base64.urlsafe_b64encode(b"app/other").rstrip(b"=").decode()
    for forged in (f"{int(first) + 1}.{nonce}.{path}.{mac}", f"{first}.{nonce}.{other_path}.{mac}", ref_id + "x",
                   "", "1.2.3.4", ticket.token):
        assert codec.read_ref(forged, "alice") is None
    with pytest.raises(IntakeError):
        codec.verify(ref_id)
