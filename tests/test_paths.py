"""Secret paths and prefixes: the validation rules, and the traversal table on EVERY route taking a path.

The route tests send raw HTTP request lines over a socket (an HTTP client would normalise ``..`` and ``//``
before sending), to a bridge in front of the in-process fake Vault, which records every request: after the
table, nothing but the token keeper's own start-up call may have reached it.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
from aiohttp.test_utils import TestServer

from bridge.app import create_app
from bridge.config import Settings
from bridge.errors import InvalidPathError
from bridge.paths import MAX_PATH_LENGTH, MAX_SEGMENTS, agent_path, decode_raw, validate_path, validate_prefix
from devtools.fakevault import FakeVault
from tests.conftest import API_KEY_ALICE, API_KEYS

# -- the rules ---------------------------------------------------------------------------------------

GOOD_PATHS = ["db", "db/prod/password", "a.b", "x=1+y@z,w-_", ".hidden", "a..b", "...", "A/B",
              "/".join(["s"] * MAX_SEGMENTS), "p" * 128, "/".join(["a" * 127] * 4)[:MAX_PATH_LENGTH]]


@pytest.mark.parametrize("path", GOOD_PATHS)
def test_good_paths_pass_unchanged(path: str) -> None:
    assert validate_path(path) == path


# (vector, description): each is invalid as a secret path AND as a list prefix.
VECTORS: list[tuple[str, str]] = [
    ("..", "dot-dot"),
    ("../bob/db", "dot-dot into another agent"),
    ("a/../../bob/db", "dot-dot deeper"),
    ("a/..", "trailing dot-dot"),
    (".", "dot"),
    ("./a", "leading dot segment"),
    ("a/./b", "inner dot segment"),
    ("a//b", "empty segment"),
    ("//a", "double leading slash"),
    ("/etc/passwd", "absolute"),
    ("/", "root"),
    ("a\\b", "backslash"),
    ("..\\bob\\db", "backslash traversal"),
    ("a\x00b", "NUL"),
    ("a\x01b", "control char"),
    ("a\nb", "newline"),
    ("a\x7fb", "DEL"),
    ("x" * (MAX_PATH_LENGTH + 1), "over-long path"),
    ("y" * 129, "over-long segment"),
    ("/".join(["s"] * (MAX_SEGMENTS + 1)), "too many segments"),
    ("a b", "space"),
    ("a?b", "question mark"),
    ("a#b", "hash"),
    ("a*b", "glob star"),
    ("a:b", "colon"),
    ("a;b", "semicolon"),
    ('a"b', "quote"),
    ("a<b>", "angle brackets"),
    ("a{b}", "braces"),
    ("a|b", "pipe"),
    ("a~b", "tilde"),
    ("caf\u00e9", "non-ASCII"),
    ("a%b", "literal percent"),
    ("\u2025", "two-dot leader"),
]


@pytest.mark.parametrize(("vector", "why"), VECTORS)
def test_vectors_are_invalid_paths_and_prefixes(vector: str, why: str) -> None:
    with pytest.raises(InvalidPathError) as info:
        validate_path(vector)
    assert info.value.status == 400
    assert info.value.code == "invalid_path"
    assert "Invalid path" in info.value.message
    if vector.endswith("/") and vector.strip("/") and "//" not in vector:
        return
    with pytest.raises(InvalidPathError):
        validate_prefix(vector)


def test_empty_path_is_invalid_but_empty_prefix_is_the_root() -> None:
    with pytest.raises(InvalidPathError):
        validate_path("")
    with pytest.raises(InvalidPathError):
        validate_path(None)
    assert validate_prefix("") == ""
    assert validate_prefix(None) == ""
    assert validate_prefix("app/") == "app/"
    assert validate_prefix("app/db") == "app/db"
    with pytest.raises(InvalidPathError):
        validate_prefix("app//")
    with pytest.raises(InvalidPathError):
        validate_path("app/")


def test_decode_raw_decodes_exactly_once() -> None:
    assert decode_raw("a%2Fb") == "a/b"
    assert decode_raw("%252e%252e") == "%2e%2e"  # still encoded → refused by validate_path
    with pytest.raises(InvalidPathError):
        validate_path(decode_raw("%252e%252e"))
    with pytest.raises(InvalidPathError, match="UTF-8"):
        decode_raw("%ff%fe")


def test_agent_path() -> None:
    assert agent_path("mcp", "alice", "db/x") == "mcp/alice/db/x"
    assert agent_path("mcp", "alice", "") == "mcp/alice/"


# -- the table on every route ----------------------------------------------------------------------

def encode_once(value: str) -> str:
    """Percent-encode every byte that is not a letter or digit (so ``.``, ``/`` and ``%`` are hidden)."""
    return "".join(ch if ch.isascii() and ch.isalnum() else "".join(f"%{b:02X}" for b in ch.encode())
                   for ch in value)


def encode_twice(value: str) -> str:
    return encode_once(value).replace("%", "%25")


def http_illegal(target: str) -> bool:
    """Characters an HTTP/1.1 request line cannot carry raw (the HTTP parser refuses them before the app)."""
    return any(ord(c) <= 0x20 or ord(c) >= 0x7F for c in target)


@dataclass
class RawResponse:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


async def raw_request(server: TestServer, method: str, target: str, *, headers: dict[str, str] | None = None,
                      body: bytes = b"") -> RawResponse:
    """Send exactly ``target`` as the request line's target (no client-side normalisation)."""
    assert server.port is not None
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    lines = [f"{method} {target} HTTP/1.1", "Host: localhost", "Connection: close", f"Content-Length: {len(body)}"]
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("utf-8", "surrogateescape") + body)
    await writer.drain()
    data = await asyncio.wait_for(reader.read(), timeout=10)
    writer.close()
    await writer.wait_closed()
    head, _, payload = data.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    hdrs = {}
    for line in header_lines:
        name, _, value = line.partition(":")
        hdrs[name.strip().lower()] = value.strip()
    return RawResponse(int(status_line.split()[1]), hdrs, payload)


BODY_WRITE = json.dumps({"data": {"k": "v"}}).encode()
BODY_VERSIONS = json.dumps({"versions": [1]}).encode()


@dataclass(frozen=True)
class Route:
    name: str
    method: str
    target: Callable[[str], str]
    body: bytes = b""


ROUTES = [
    Route("read", "GET", lambda p: f"/secrets/{p}"),
    Route("read_version", "GET", lambda p: f"/secrets/{p}?version=1"),
    Route("write", "PUT", lambda p: f"/secrets/{p}", BODY_WRITE),
    Route("patch", "PATCH", lambda p: f"/secrets/{p}", BODY_WRITE),
    Route("delete", "DELETE", lambda p: f"/secrets/{p}"),
    Route("undelete", "POST", lambda p: f"/secrets/{p}:undelete", BODY_VERSIONS),
    Route("destroy", "POST", lambda p: f"/secrets/{p}:destroy", BODY_VERSIONS),
    Route("metadata", "GET", lambda p: f"/secrets/{p}:metadata"),
    Route("list", "GET", lambda p: f"/secrets?prefix={p}"),
]


@pytest.fixture
async def bridge_on_fake(fake_vault: FakeVault, aiohttp_server: Callable[..., Any]) -> TestServer:
    settings = Settings.from_env({}, vault_addr=fake_vault.addr, vault_token=fake_vault.root_token,
                                 api_keys_json=json.dumps(API_KEYS), rate_limit_enabled=False)
    server: TestServer = await aiohttp_server(create_app(settings))
    return server


@pytest.mark.parametrize("route", ROUTES, ids=lambda r: r.name)
async def test_traversal_table_on_every_route(route: Route, bridge_on_fake: TestServer,
                                              fake_vault: FakeVault) -> None:
    headers = {"X-API-Key": API_KEY_ALICE, "Content-Type": "application/json"}
    failures: list[str] = []
    tried = 0
    for vector, why in VECTORS:
        forms = {"raw": vector, "once": encode_once(vector), "twice": encode_twice(vector)}
        for form, encoded in forms.items():
            if form == "raw" and ("?" in vector or "#" in vector or "%" in vector) and route.name == "list":
                continue  # raw '?', '#', '%' in a query string are query syntax, not part of the value
            if form == "raw" and "?" in vector:
                continue  # a raw '?' starts the query string: "/secrets/a?b" is a read of "a"
            if form == "raw" and ("\n" in vector or "\r" in vector):
                continue  # a raw CR/LF ends the request line: it cannot be part of a target
            target = route.target(encoded)
            resp = await raw_request(bridge_on_fake, route.method, target, headers=headers, body=route.body)
            tried += 1
            if form == "raw" and http_illegal(target):
                ok = resp.status == 400  # refused by the HTTP parser itself, before the app
            else:
                try:
                    code = resp.json()["error"]["code"]
                except (ValueError, KeyError, TypeError):
                    code = None
                ok = resp.status == 400 and code == "invalid_path"
            if not ok:
                failures.append(f"{why} [{form}] {target[:60]!r} -> {resp.status} {resp.body[:120]!r}")
    assert not failures, "\n".join(failures)
    assert tried > 60
    # Nothing reached Vault: only the token keeper's start-up lookup (and health checks) were recorded.
    assert fake_vault.calls_except("auth/token/lookup-self", "sys/health") == []


async def test_an_empty_path_is_invalid_on_every_method(bridge_on_fake: TestServer, fake_vault: FakeVault) -> None:
    headers = {"X-API-Key": API_KEY_ALICE, "Content-Type": "application/json"}
    for method, target, body in [("PUT", "/secrets/", BODY_WRITE), ("PATCH", "/secrets/", BODY_WRITE),
                                 ("DELETE", "/secrets/", b""), ("GET", "/secrets/:metadata", b""),
                                 ("POST", "/secrets/:undelete", BODY_VERSIONS),
                                 ("POST", "/secrets/:destroy", BODY_VERSIONS)]:
        resp = await raw_request(bridge_on_fake, method, target, headers=headers, body=body)
        assert resp.status == 400, (method, target, resp.status, resp.body)
        assert resp.json()["error"]["code"] == "invalid_path"
    assert fake_vault.calls_except("auth/token/lookup-self", "sys/health") == []


async def test_valid_paths_do_reach_vault(bridge_on_fake: TestServer, fake_vault: FakeVault) -> None:
    """The control: the same harness with a good path does reach the (fake) Vault, at the agent's place."""
    headers = {"X-API-Key": API_KEY_ALICE, "Content-Type": "application/json"}
    resp = await raw_request(bridge_on_fake, "PUT", "/secrets/app%2Fdb.prod", headers=headers, body=BODY_WRITE)
    assert resp.status == 200, resp.body
    assert resp.json()["path"] == "app/db.prod"
    assert [c.path for c in fake_vault.calls("secret/")] == ["secret/data/mcp/alice/app/db.prod"]
