"""``secret://<path>#<field>[@<version>]`` and ``lease://<lease_id>#password`` references and ``{{…}}`` placeholders
(bridge/references.py)."""

from __future__ import annotations

import pytest

from bridge.errors import InvalidReferenceError
from bridge.references import (
    MAX_FIELD_LENGTH,
    AnyReference,
    LeaseReference,
    Reference,
    collect_references,
    find_placeholders,
    format_reference,
    parse_any_reference,
    parse_reference,
    substitute,
)

GOOD = [
    ("secret://db#password", Reference("db", "password")),
    ("secret://app/db/prod#password@3", Reference("app/db/prod", "password", 3)),
    ("secret://x=1+y@z,w-_#f", Reference("x=1+y@z,w-_", "f")),  # '@' in a path segment is part of the path
    ("secret://a#api%20key", Reference("a", "api key")),
    ("secret://a#user%40example.com@12", Reference("a", "user@example.com", 12)),
    ("secret://a#%E2%82%AC", Reference("a", "€")),
    ("secret://a#a/b:c=d,e+f!g$h*i~j.k_l-m", Reference("a", "a/b:c=d,e+f!g$h*i~j.k_l-m")),
    ("secret://a#%23%7B%7D%25", Reference("a", "#{}%")),
    ("secret://a#f@999999999", Reference("a", "f", 999_999_999)),
    ("secret://a#" + "f" * MAX_FIELD_LENGTH, Reference("a", "f" * MAX_FIELD_LENGTH)),
]

BAD = [
    ("", "secret://"),
    ("Secret://a#b", "secret://"),
    ("secret:/a#b", "secret://"),
    ("secret://a", "no #<field>"),
    ("secret://a#", "field name is empty"),
    ("secret://a#@3", "field name is empty"),
    ("secret:///a#b", "path is invalid (absolute path)"),
    ("secret://../a#b", "path is invalid ('.' or '..' segment)"),
    ("secret://a//b#c", "path is invalid (empty segment)"),
    ("secret://a%2Fb#c", "path is invalid (still percent-encoded"),
    ("secret://a b#c", "path is invalid (character outside"),
    ("secret://a#b c", "percent-encoded"),
    ("secret://a#b%2", "percent-encoded"),
    ("secret://a#b%zz", "percent-encoded"),
    ("secret://a#%FF", "not UTF-8"),
    ("secret://a#%0A", "control character"),
    ("secret://a#%7F", "control character"),
    ("secret://a#%C2%85", "control character"),
    ("secret://a#" + "f" * (MAX_FIELD_LENGTH + 1), "longer than 256"),
    ("secret://a#b@0", "version"),
    ("secret://a#b@03", "version"),
    ("secret://a#b@1000000000", "version"),
    ("secret://a#b@-1", "version"),
    ("secret://a#b@1@2", "version"),
    ("secret://a#b@1x", "version"),
    ("secret://a#b#c", "percent-encoded"),
    ("secret://" + "a" * 2000 + "#b", "too long"),
]


@pytest.mark.parametrize(("text", "ref"), GOOD)
def test_good_references_parse_and_format_back(text: str, ref: Reference) -> None:
    assert parse_reference(text) == ref
    assert parse_reference(format_reference(ref)) == ref
    assert str(ref) == format_reference(ref)


def test_format_is_canonical() -> None:
    assert format_reference(Reference("a", "api key", 2)) == "secret://a#api%20key@2"
    assert format_reference(Reference("a", "user@x")) == "secret://a#user%40x"
    assert Reference("a", "b").at(7) == Reference("a", "b", 7)


@pytest.mark.parametrize(("text", "reason"), BAD)
def test_bad_references_are_400_invalid_reference(text: str, reason: str) -> None:
    with pytest.raises(InvalidReferenceError) as info:
        parse_reference(text, where="body")
    err = info.value
    assert err.status == 400
    assert err.code == "invalid_reference"
    assert reason in err.message
    assert err.message.startswith("Invalid secret reference in body:")
    assert err.extra == {"where": "body"}


def test_placeholders_found_in_order_with_spans() -> None:
    text = "Bearer {{secret://app/api#token}} and {{ secret://db#pw@2 }}{{secret://db#pw@2}}"
    found = find_placeholders(text)
    assert [p.reference for p in found] == [Reference("app/api", "token"), Reference("db", "pw", 2),
                                            Reference("db", "pw", 2)]
    assert [text[p.start:p.end] for p in found] == ["{{secret://app/api#token}}", "{{ secret://db#pw@2 }}",
                                                    "{{secret://db#pw@2}}"]


def test_other_braces_are_left_alone() -> None:
    for text in ("{{name}}", "{{ user.id }}", "{secret://a#b}", "{{secrets}}", "{{ secretary }}", "{{", "}}",
                 "secret://a#b"):
        assert find_placeholders(text) == []
        assert substitute(text, {}) == text


@pytest.mark.parametrize("text", [
    "{{secret://a#b", "{{secret://a#b}", "{{secret://a#b c}}", "{{secret://a#b\n}}", "x {{SECRET://a#b}}",
    "{{secret:a#b}}", "{{secret://a#b@0}}", "{{ secret://../x#b }}", "{{secret://a#{{secret://b#c}}}}",
])
def test_malformed_placeholders_are_refused_with_position(text: str) -> None:
    with pytest.raises(InvalidReferenceError) as info:
        find_placeholders(text, where="headers.Authorization")
    assert info.value.extra["where"] == "headers.Authorization"
    assert info.value.extra["position"] == text.index("{{")
    assert "in headers.Authorization at character" in info.value.message


def test_error_messages_do_not_echo_the_text() -> None:
    canary = "canary-" + "q" * 20
    with pytest.raises(InvalidReferenceError) as info:
        find_placeholders("{{secret://" + canary + " }}", where="body")
    assert canary not in info.value.message
    assert canary not in str(info.value.to_dict())


def test_too_many_placeholders() -> None:
    with pytest.raises(InvalidReferenceError, match="more than 64"):
        find_placeholders("{{secret://a#b}}" * 65)


def test_substitute_and_collect() -> None:
    a, b = Reference("a", "x"), Reference("b", "y", 1)
    values: dict[AnyReference, str] = {a: "va/&", b: "vb"}
    assert substitute("[{{secret://a#x}}|{{ secret://b#y@1 }}]", values) == "[va/&|vb]"
    assert substitute("?q={{secret://a#x}}", values, encode=lambda v: v.upper()) == "?q=VA/&"
    assert collect_references([("url", "{{secret://b#y@1}}"), ("body", "{{secret://a#x}} {{secret://b#y@1}}")]) \
        == [b, a]
    with pytest.raises(KeyError):
        substitute("{{secret://c#z}}", values)


# -- lease references ------------------------------------------------------------------------------------------

LEASE_GOOD = [
    ("lease://database/creds/mcp.alice.ro/AbC123xyz#password",
     LeaseReference("database/creds/mcp.alice.ro/AbC123xyz")),
    ("lease://database/creds/mcp.alice.ro/AbC123xyz.nsid9#password",  # a lease in a namespace
     LeaseReference("database/creds/mcp.alice.ro/AbC123xyz.nsid9")),
    ("lease://db%20x/creds/r/1#password", LeaseReference("db x/creds/r/1")),
    ("lease://a%23b%40c#password", LeaseReference("a#b@c")),
]

LEASE_BAD = [
    ("lease://#password", "the lease id is empty"),
    ("lease://database/creds/r/1", "no #password"),
    ("lease://database/creds/r/1#", "the field must be one of: password"),
    ("lease://database/creds/r/1#username", "the field must be one of: password"),
    ("lease://database/creds/r/1#password@2", "the field must be one of: password"),
    ("lease://a b#password", "percent-encoded"),
    ("lease://a%zz#password", "percent-encoded"),
    ("lease://a%FF#password", "not UTF-8"),
    ("lease://a%0A#password", "control character"),
    ("lease://" + "a" * 513 + "#password", "longer than 512"),
    ("lease://" + "%41" * 5000 + "#password", "too long"),
]


@pytest.mark.parametrize(("text", "ref"), LEASE_GOOD)
def test_lease_references_parse_and_format_back(text: str, ref: LeaseReference) -> None:
    assert parse_any_reference(text) == ref
    assert parse_any_reference(str(ref)) == ref
    assert str(ref) == text
    assert parse_any_reference("secret://a#b@2") == Reference("a", "b", 2)


@pytest.mark.parametrize(("text", "reason"), LEASE_BAD)
def test_bad_lease_references_are_400_invalid_reference(text: str, reason: str) -> None:
    with pytest.raises(InvalidReferenceError) as info:
        parse_any_reference(text, where="--env PGPASSWORD")
    assert info.value.code == "invalid_reference"
    assert reason in info.value.message
    assert info.value.message.startswith("Invalid lease reference in --env PGPASSWORD:")
    with pytest.raises(InvalidReferenceError, match="secret:// or lease://"):
        parse_any_reference("LEASE://a#password")


def test_only_secret_references_where_a_secret_is_expected() -> None:
    """Transit's plaintext_ref / input_ref take secret references: a lease reference is refused, saying where
    it is accepted."""
    with pytest.raises(InvalidReferenceError) as info:
        parse_reference("lease://database/creds/r/1#password", where="plaintext_ref")
    assert "http_request placeholders and by vault-mcp-bridge exec" in info.value.message
    assert info.value.extra == {"where": "plaintext_ref"}


def test_lease_placeholders() -> None:
    lease, secret = LeaseReference("database/creds/mcp.alice.ro/x1"), Reference("app", "user")
    text = "{{secret://app#user}}:{{ lease://database/creds/mcp.alice.ro/x1#password }}"
    assert [p.reference for p in find_placeholders(text)] == [secret, lease]
    assert collect_references([("headers.Authorization", text)]) == [secret, lease]
    assert substitute(text, {secret: "u", lease: "p"}) == "u:p"
    for bad in ("{{lease://a#username}}", "{{lease://a}}", "{{ Lease:a#password }}", "{{lease://a b#password}}"):
        with pytest.raises(InvalidReferenceError) as info:
            find_placeholders("x " + bad, where="body")
        assert info.value.extra["position"] == 2
    assert find_placeholders("{{leases}} {{ leaseholder }}") == []
