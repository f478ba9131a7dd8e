"""A credential header sent twice is refused (401), never "first wins" (issue 9, "Identity from a proxy must
not be forgeable", point 3). Requests are written byte by byte on a raw socket to a listening bridge, so the
duplicates reach it exactly as sent."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from tests.auth.conftest import MakeClient, hs256
from tests.auth.test_mtls import MTLS_ENV
from tests.conftest import API_KEY_ALICE, API_KEY_BOB
from tests.support.pki import PROXY_SECRET, escaped_pem, issue, make_ca


async def raw_request(client: TestClient[Any, Any], headers: list[tuple[str, str]]) -> tuple[int, dict[str, Any]]:
    reader, writer = await asyncio.open_connection(client.host, client.port)
    try:
        lines = ["GET /whoami HTTP/1.1", f"Host: {client.host}:{client.port}", "Connection: close",
                 *(f"{name}: {value}" for name, value in headers)]
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode())
        await writer.drain()
        raw = await asyncio.wait_for(reader.read(), timeout=30)
    finally:
        writer.close()
        await writer.wait_closed()
    head, _, body = raw.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    return status, json.loads(body) if body.startswith(b"{") else {}


WRONG_KEY = "wrong-key-" + "w" * 20


@pytest.mark.parametrize(("case", "headers"), [
    ("X-API-Key valid, then wrong", [("X-API-Key", API_KEY_ALICE), ("X-API-Key", WRONG_KEY)]),
    ("X-API-Key wrong, then valid", [("X-API-Key", WRONG_KEY), ("X-API-Key", API_KEY_ALICE)]),
    ("X-API-Key two valid agents", [("X-API-Key", API_KEY_ALICE), ("X-API-Key", API_KEY_BOB)]),
    ("X-API-Key the same twice", [("X-API-Key", API_KEY_ALICE), ("x-api-key", API_KEY_ALICE)]),
    ("Authorization valid, then garbage", [("Authorization", "Bearer " + hs256({"sub": "alice"})),
                                           ("Authorization", "Bearer not.a.jwt")]),
    ("Authorization garbage, then valid", [("Authorization", "Basic YWxpY2U6cHc="),
                                           ("Authorization", "Bearer " + hs256({"sub": "alice"}))]),
    ("Authorization two valid agents", [("Authorization", "Bearer " + hs256({"sub": "alice"})),
                                        ("AUTHORIZATION", "Bearer " + hs256({"sub": "bob"}))]),
])
async def test_duplicated_credential_header_is_401(make_client: MakeClient, case: str,
                                                   headers: list[tuple[str, str]]) -> None:
    client = await make_client()
    status, body = await raw_request(client, headers)
    assert status == 401, (case, body)
    assert body["error"]["code"] == "unauthenticated"
    assert "more than once" in body["error"]["message"]


@pytest.mark.parametrize("duplicate", ["X-Proxy-Secret", "X-SSL-Client-Cert", "X-SSL-Client-Verify"])
async def test_duplicated_proxy_header_is_401(make_client: MakeClient, tmp_path: Path, duplicate: str) -> None:
    ca = make_ca(tmp_path, "ca")
    alice, bob = issue(tmp_path, ca, "alice", cn="alice"), issue(tmp_path, ca, "bob", cn="bob")
    client = await make_client(env=MTLS_ENV)
    good = [("X-Proxy-Secret", PROXY_SECRET), ("X-SSL-Client-Verify", "SUCCESS"),
            ("X-SSL-Client-Cert", escaped_pem(alice))]
    status, body = await raw_request(client, good)
    assert (status, body.get("subject")) == (200, "alice")
    second = {"X-Proxy-Secret": "another-secret-" + "x" * 30, "X-SSL-Client-Cert": escaped_pem(bob),
              "X-SSL-Client-Verify": "SUCCESS"}[duplicate]
    for headers in ([*good, (duplicate, second)], [(duplicate, second), *good]):
        status, body = await raw_request(client, headers)
        assert status == 401, (duplicate, body)


async def test_duplicated_header_of_a_disabled_method_is_ignored(make_client: MakeClient) -> None:
    """Only the credential headers of enabled methods are the bridge's business."""
    client = await make_client(auth_jwt_enabled=False)
    status, body = await raw_request(client, [("Authorization", "Bearer a"), ("Authorization", "Bearer b"),
                                              ("X-API-Key", API_KEY_ALICE)])
    assert (status, body.get("subject")) == (200, "alice")
