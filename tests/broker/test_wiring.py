"""Brokered HTTP wired on the operation registry: ``POST /broker/http`` and the ``http_request`` tool, against the
real OpenBao (the secrets and their ``bridge.allowed_hosts``) and local servers on 127.0.0.1 that record what they
received. Every refusal answers its own code, through the route, and leaves an audit record naming the destination
and the references, never a value or the URL's path."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from aiohttp.test_utils import TestClient

from bridge.broker import value_forms
from devtools.devvault import free_port
from tests.broker.conftest import MakeUpstream
from tests.support.reveal import (
    ALICE,
    USE_KEY,
    USER,
    WRITE_ONLY_KEY,
    WRITER,
    Admin,
    RevealClient,
    mcp_tool,
    structured,
    unique,
)

pytestmark = pytest.mark.integration

TOKEN = "brk-T0k3n/with+odd=chars \"q\" \u00e9"


async def broker(client: TestClient[Any, Any], body: dict[str, Any], headers: dict[str, str],
                 status: int = 200) -> dict[str, Any]:
    resp = await client.post("/broker/http", json=body, headers=headers)
    answer: dict[str, Any] = await resp.json()
    assert resp.status == status, answer
    return answer


def leaks(value: str, text: str) -> list[str]:
    return [form for form in value_forms(value) if len(form) >= 6 and form in text]


async def test_brokered_request_over_rest_and_mcp(reveal_client: RevealClient, admin: Admin,
                                                  make_upstream: MakeUpstream, tmp_path: Path) -> None:
    audit_log = tmp_path / "audit.log"
    client = await reveal_client(audit_log=str(audit_log))
    upstream = await make_upstream()
    path = unique("api")
    await admin.write(path, {"token": TOKEN})
    await admin.policy(path, allowed_hosts=f"127.0.0.1:{upstream.port}")
    ref = f"secret://{path}#token"
    request = {"method": "POST", "url": f"http://127.0.0.1:{upstream.port}/echo?q={{{{{ref}}}}}",
               "headers": {"X-Token": f"{{{{{ref}}}}}", "Authorization": f"Bearer {{{{{ref}}}}}",
                           "Content-Type": "application/json"},
               "body": json.dumps({"secret": f"{{{{{ref}}}}}"})}
    answer = await broker(client, request, USER)
    assert answer["status"] == 200
    assert answer["redactions"] > 0
    text = json.dumps(answer)
    assert leaks(TOKEN, text) == []
    assert "[redacted:hmac-sha256:v1:" in text
    got = upstream.received[-1]
    assert got.headers["X-Token"] == TOKEN
    assert got.headers["Authorization"] == f"Bearer {TOKEN}"
    assert got.path_qs == f"/echo?q={quote(TOKEN, safe='')}"
    assert json.loads(got.body) == {"secret": TOKEN}

    # the fingerprint in the markers is the one kv_read shows
    refs = await (await client.get(f"/secrets/{path}", headers=USER)).json()
    assert f"[redacted:{refs['fields']['token']['fingerprint']}]" in text

    result = structured(await mcp_tool(client, USE_KEY, "http_request", request))
    assert result["status"] == 200
    assert leaks(TOKEN, json.dumps(result)) == []
    assert len(upstream.received) == 2

    # read may broker too; the audit record names host, port and references, never the path, query or value
    await broker(client, request, ALICE)
    records = [json.loads(line) for line in audit_log.read_text().splitlines()]
    sent = [r for r in records if r["operation"] == "http_request"]
    assert len(sent) == 3
    for record in sent:
        assert record["outcome"] == "ok"
        assert record["host"] == "127.0.0.1"
        assert record["port"] == upstream.port
        assert record["method"] == "POST"
        assert record["references"] == [ref]
        assert record["upstream_status"] == 200
    assert leaks(TOKEN, audit_log.read_text()) == []
    assert "/echo" not in audit_log.read_text()


async def test_every_refusal_through_the_route(reveal_client: RevealClient, admin: Admin,
                                               make_upstream: MakeUpstream, tmp_path: Path) -> None:
    audit_log = tmp_path / "audit.log"
    client = await reveal_client(audit_log=str(audit_log), broker_timeout="1s", broker_max_request_bytes=1024,
                                 broker_max_response_bytes=1024)
    listed, unlisted = await make_upstream(), await make_upstream()
    closed = free_port()
    path, bare, never = unique("api"), unique("bare"), unique("never")
    for secret in (path, bare, never):
        await admin.write(secret, {"token": TOKEN})
    await admin.policy(path, allowed_hosts=f"127.0.0.1:{listed.port},127.0.0.1:{closed},*.example.com")
    await admin.policy(never, allowed_hosts=f"127.0.0.1:{listed.port}", reveal="never")
    ref = f"{{{{secret://{path}#token}}}}"

    def req(url: str, **extra: Any) -> dict[str, Any]:
        return {"method": "GET", "url": url, "headers": {"X-Token": ref}, **extra}

    base = f"http://127.0.0.1:{listed.port}"
    cases: list[tuple[dict[str, Any], dict[str, str], int, str]] = [
        (req(f"http://127.0.0.1:{unlisted.port}/echo"), USER, 403, "broker_host_not_allowed"),
        ({"method": "GET", "url": f"{base}/echo", "headers": {"X-Token": f"{{{{secret://{bare}#token}}}}"}}, USER,
         403, "broker_not_brokerable"),
        (req("http://169.254.169.254/latest/meta-data/"), USER, 403, "broker_address_refused"),
        (req(f"{base}/echo", headers={"X-Token": "{{secret://../etc#x}}"}), USER, 400, "invalid_reference"),
        (req(f"{base}/echo", headers={"X-Token": f"{{{{secret://{path}#nope}}}}"}), USER, 404, "field_not_found"),
        (req(f"{base}/echo", headers={"X-Token": "plain"}), USER, 400, "invalid_request"),  # no reference
        (req(f"{base}/echo", method="TRACE"), USER, 400, "invalid_request"),
        (req(f"{base}/echo", method="POST", body="x" * 2000), USER, 413, "broker_request_too_large"),
        (req(f"{base}/big?n=5000"), USER, 502, "broker_response_too_large"),
        (req(f"{base}/brotli"), USER, 502, "broker_bad_response"),
        (req(f"{base}/slow"), USER, 504, "broker_timeout"),
        (req(f"http://127.0.0.1:{closed}/"), USER, 502, "broker_connect_failed"),
        (req(f"{base}/echo"), WRITER, 403, "forbidden"),  # neither use nor read
    ]
    for body, headers, status, code in cases:
        answer = await broker(client, body, headers, status)
        assert answer["error"]["code"] == code, (body, answer)
        assert leaks(TOKEN, json.dumps(answer)) == [], code
    assert unlisted.received == []  # the server no secret lists received nothing
    result = await mcp_tool(client, WRITE_ONLY_KEY, "http_request", req(f"{base}/echo"), status=403)
    assert result["error"]["data"]["code"] == "insufficient_scope"
    assert result["error"]["data"]["required_scope"] == "use"
    assert result["error"]["data"]["accepted_scopes"] == ["use", "read"]
    result = await mcp_tool(client, USE_KEY, "http_request", req(f"http://127.0.0.1:{unlisted.port}/"))
    structured(result, error="broker_host_not_allowed")
    assert unlisted.received == []

    # bridge.reveal=never does not stop brokering
    answer = await broker(client, {"method": "GET", "url": f"{base}/echo",
                                   "headers": {"X-Token": f"{{{{secret://{never}#token}}}}"}}, ALICE)
    assert answer["status"] == 200
    assert leaks(TOKEN, json.dumps(answer)) == []

    records = [json.loads(line) for line in audit_log.read_text().splitlines()]
    refused = [r for r in records if r["operation"] == "http_request" and r["outcome"] != "ok"]
    assert {r["code"] for r in refused} >= {code for *_, code in cases}
    host_refusal = next(r for r in refused if r["code"] == "broker_host_not_allowed")
    assert host_refusal["host"] == "127.0.0.1"
    assert host_refusal["references"] == [f"secret://{path}#token"]
    assert leaks(TOKEN, audit_log.read_text()) == []


async def test_tls_failures_have_their_code(reveal_client: RevealClient, admin: Admin,
                                            make_upstream: MakeUpstream) -> None:
    """https to a server that speaks plain HTTP: the handshake fails (502 broker_tls_failed)."""
    client = await reveal_client(broker_timeout="5s")
    upstream = await make_upstream()
    path = unique("tls")
    await admin.write(path, {"token": TOKEN})
    await admin.policy(path, allowed_hosts=f"127.0.0.1:{upstream.port}")
    answer = await broker(client, {"method": "GET", "url": f"https://127.0.0.1:{upstream.port}/",
                                   "headers": {"X-Token": f"{{{{secret://{path}#token}}}}"}}, USER, 502)
    assert answer["error"]["code"] == "broker_tls_failed", answer
    assert base64.b64encode(TOKEN.encode()).decode() not in json.dumps(answer)
