"""URL-mode elicitation of ``kv_request_input`` (bridge/mcp/elicitation.py) with raw JSON-RPC, against a real
bridge and OpenBao: 2025-11-25 (``elicitation/create`` on the call's SSE stream, the client's answer, the
completion notification), 2026-07-28 (``InputRequiredResult``, the retry with ``inputResponses`` and a signed
``requestState``), and clients without URL mode (the link in the result). The human is a plain HTTP client here;
tests/mcp/test_elicitation_sdk.py drives the same paths with the official SDK and tests/intake/test_chromium.py
with a browser."""

from __future__ import annotations

import asyncio
import base64
import json
from typing import Any

import pytest
from aiohttp import ClientResponse
from aiohttp.test_utils import TestClient
from yarl import URL

from bridge.mcp.elicitation import Elicitations
from tests.conftest import API_KEY_ALICE, API_KEY_BOB, API_KEY_READONLY
from tests.intake.conftest import CSRF_RE
from tests.mcp.conftest import (
    MCP_ACCEPT,
    META_CAPS,
    McpClientFactory,
    legacy_headers,
    modern_body,
    modern_headers,
    rpc,
)

pytestmark = pytest.mark.integration

Client = TestClient[Any, Any]
URL_CAPS: dict[str, Any] = {"elicitation": {"form": {}, "url": {}}}


def elicitations(client: Client) -> Elicitations:
    """The endpoint's elicitation handler (to shorten its keep-alive in a test)."""
    for route in client.app.router["mcp"]:
        handler: Any = route.handler
        found: Elicitations = handler.__self__._elicitations
        return found
    raise AssertionError("no /mcp route")


class Sse:
    """Reads a ``text/event-stream`` answer message by message; counts the comments."""

    def __init__(self, resp: ClientResponse) -> None:
        self.resp = resp
        self.comments = 0

    async def next(self) -> dict[str, Any]:
        event = ""
        while True:
            raw = await asyncio.wait_for(self.resp.content.readline(), 30)
            assert raw, "the stream ended"
            line = raw.decode().rstrip("\n")
            if line.startswith(":"):
                self.comments += 1
            elif line.startswith("event: "):
                event = line[7:]
            elif line.startswith("data: "):
                assert event == "message"
                message: dict[str, Any] = json.loads(line[6:])
                return message

    async def ended(self) -> bool:
        rest = await asyncio.wait_for(self.resp.content.read(), 30)
        assert rest.strip() == b"", rest  # the blank line that ends the last event
        return True


async def human(client: Client, url: str, values: list[str]) -> int:
    """Open the link and submit the form (as a person with a browser would)."""
    path = URL(url).path
    resp = await client.get(path)
    assert resp.status == 200, await resp.text()
    match = CSRF_RE.search(await resp.text())
    assert match is not None
    form = {"csrf": match.group(1), **{f"f{i}": v for i, v in enumerate(values)}}
    return (await client.post(path, data=form)).status


async def handshake(client: Client, key: str = API_KEY_ALICE, capabilities: dict[str, Any] | None = None,
                    version: str = "2025-11-25") -> dict[str, str]:
    resp = await client.post("/mcp", json=rpc("initialize", {
        "protocolVersion": version, "capabilities": capabilities or {},
        "clientInfo": {"name": "raw-test", "version": "0"}}), headers=legacy_headers(key))
    assert resp.status == 200
    headers = legacy_headers(key, resp.headers["Mcp-Session-Id"], **{"MCP-Protocol-Version": version})
    assert (await client.post("/mcp", json=rpc("notifications/initialized", msg_id=None), headers=headers)).status \
        == 202
    return headers


def call(path: str, msg_id: int = 2, **arguments: Any) -> dict[str, Any]:
    return rpc("tools/call", {"name": "kv_request_input",
                              "arguments": {"path": path, "fields": ["password"], **arguments}}, msg_id)


def unique(name: str) -> str:
    import secrets

    return f"elicit-{name}-{secrets.token_hex(3)}/db"


# -- 2025-11-25 ------------------------------------------------------------------------------------------------

async def test_legacy_url_elicitation_stream(mcp_client: McpClientFactory) -> None:
    """The session remembers the capability; the call answers an SSE stream: ``elicitation/create`` (mode url,
    elicitationId, the link), keep-alives while the human is away, then ``notifications/elicitation/complete`` and
    the result, which has no link and no value."""
    client = await mcp_client()
    elicitations(client).keepalive = 0.2
    headers = await handshake(client, capabilities=URL_CAPS)
    assert headers["Mcp-Session-Id"].startswith("v2.alice.2025-11-25.")
    assert ".u." in headers["Mcp-Session-Id"]
    path = unique("legacy")
    resp = await client.post("/mcp", json=call(path), headers=headers)
    assert resp.status == 200
    assert resp.content_type == "text/event-stream"
    assert resp.headers["X-Accel-Buffering"] == "no"
    assert resp.headers["X-Request-Id"]
    stream = Sse(resp)
    ask = await stream.next()
    eid = ask["params"]["elicitationId"]
    assert ask == {"jsonrpc": "2.0", "id": f"vmb-intake:{eid}", "method": "elicitation/create", "params": {
        "mode": "url", "elicitationId": eid, "url": ask["params"]["url"], "message": ask["params"]["message"]}}
    assert ask["params"]["url"].startswith(str(client.make_url("/intake/i1.")))
    assert path in ask["params"]["message"]
    # the client's answer: accept (the human agreed to open the link) changes nothing
    answer = {"jsonrpc": "2.0", "id": ask["id"], "result": {"action": "accept"}}
    assert (await client.post("/mcp", json=answer, headers=headers)).status == 202
    await asyncio.sleep(0.5)  # the human takes a moment: keep-alive comments flow
    assert await human(client, ask["params"]["url"], ["hunter2-value"]) == 200
    done = await stream.next()
    assert done == {"jsonrpc": "2.0", "method": "notifications/elicitation/complete",
                    "params": {"elicitationId": eid}}
    final = await stream.next()
    assert final["id"] == 2
    structured = final["result"]["structuredContent"]
    assert structured["status"] == "stored"
    assert structured["stored"] is True
    assert structured["version"] == 1
    assert set(structured) == {"path", "status", "stored", "version", "fingerprints"}
    assert final["result"]["isError"] is False
    assert json.loads(final["result"]["content"][0]["text"]) == structured
    assert stream.comments >= 1
    assert await stream.ended()


@pytest.mark.parametrize(("reply", "status"), [({"result": {"action": "decline"}}, "declined"),
                                               ({"result": {"action": "cancel"}}, "cancelled"),
                                               ({"error": {"code": -32602, "message": "no url mode"}}, "cancelled")])
async def test_legacy_decline_cancel_or_error_ends_the_call(mcp_client: McpClientFactory, reply: dict[str, Any],
                                                            status: str) -> None:
    client = await mcp_client()
    headers = await handshake(client, capabilities=URL_CAPS)
    path = unique("decline")
    resp = await client.post("/mcp", json=call(path), headers=headers)
    stream = Sse(resp)
    ask = await stream.next()
    assert (await client.post("/mcp", json={"jsonrpc": "2.0", "id": ask["id"], **reply}, headers=headers)).status \
        == 202
    final = await stream.next()
    assert final["result"]["structuredContent"] == {"path": path, "status": status, "stored": False, "code": status}
    # the link is void: the human cannot store anything with it any more
    page = await client.get(URL(ask["params"]["url"]).path)
    assert page.status == 410
    assert "Request withdrawn" in await page.text()


async def test_legacy_answers_of_others_change_nothing(mcp_client: McpClientFactory) -> None:
    """An answer naming the request of another agent, or no request of ours, is accepted (202) and ignored."""
    client = await mcp_client()
    headers = await handshake(client, capabilities=URL_CAPS)
    path = unique("others")
    resp = await client.post("/mcp", json=call(path), headers=headers)
    stream = Sse(resp)
    ask = await stream.next()
    bob = await handshake(client, key=API_KEY_BOB, capabilities=URL_CAPS)
    for who, msg_id in ((bob, ask["id"]), (headers, "vmb-intake:forged"), (headers, 7)):
        decline = {"jsonrpc": "2.0", "id": msg_id, "result": {"action": "decline"}}
        assert (await client.post("/mcp", json=decline, headers=who)).status == 202
    assert await human(client, ask["params"]["url"], ["v"]) == 200
    await stream.next()
    final = await stream.next()
    assert final["result"]["structuredContent"]["status"] == "stored"


@pytest.mark.parametrize(("capabilities", "version"), [({}, "2025-11-25"), ({"elicitation": {}}, "2025-11-25"),
                                                       ({"elicitation": {"form": {}}}, "2025-11-25"),
                                                       (URL_CAPS, "2025-06-18")])
async def test_legacy_without_url_mode_gets_the_link(mcp_client: McpClientFactory, capabilities: dict[str, Any],
                                                     version: str) -> None:
    """No URL mode declared (or a revision before it): an ordinary JSON result with the link for the human and the
    id to poll with ``kv_request_input_status``."""
    client = await mcp_client()
    headers = await handshake(client, capabilities=capabilities, version=version)
    assert headers["Mcp-Session-Id"].startswith("v1.")
    path = unique("plain")
    resp = await client.post("/mcp", json=call(path), headers=headers)
    assert resp.content_type == "application/json"
    pending = (await resp.json())["result"]["structuredContent"]
    assert pending["status"] == "pending"
    assert pending["url"].startswith(str(client.make_url("/intake/")))
    assert await human(client, pending["url"], ["v"]) == 200
    status = rpc("tools/call", {"name": "kv_request_input_status",
                                "arguments": {"path": path, "id": pending["elicitation_id"]}}, 3)
    stored = (await (await client.post("/mcp", json=status, headers=headers)).json())["result"]["structuredContent"]
    assert (stored["status"], stored["version"]) == ("stored", 1)
    assert stored["fingerprints"]["password"].startswith("hmac-sha256:v1:")


async def test_legacy_refusals_are_plain_json(mcp_client: McpClientFactory) -> None:
    """A refused call (bad arguments) is an ordinary error result, not a stream; a missing scope is 403."""
    client = await mcp_client()
    headers = await handshake(client, capabilities=URL_CAPS)
    resp = await client.post("/mcp", json=call(unique("bad"), fields=[]), headers=headers)
    assert resp.content_type == "application/json"
    result = (await resp.json())["result"]
    assert result["isError"] is True
    assert result["structuredContent"]["error"]["code"] == "invalid_request"
    readonly = await handshake(client, key=API_KEY_READONLY, capabilities=URL_CAPS)
    resp = await client.post("/mcp", json=call(unique("ro")), headers=readonly)
    assert resp.status == 403


# -- 2026-07-28 ------------------------------------------------------------------------------------------------

def modern_call(path: str, *, msg_id: int = 1, caps: dict[str, Any] | None = None, **extra: Any) -> dict[str, Any]:
    body = modern_body("tools/call", {"name": "kv_request_input",
                                      "arguments": {"path": path, "fields": ["password"]}, **extra}, msg_id=msg_id)
    body["params"]["_meta"][META_CAPS] = URL_CAPS if caps is None else caps
    return body


async def post_modern(client: Client, body: dict[str, Any], key: str = API_KEY_ALICE) -> ClientResponse:
    return await client.post("/mcp", json=body,
                             headers=modern_headers(key, "tools/call", body["params"]["name"]))


async def test_modern_input_required_then_retry(mcp_client: McpClientFactory) -> None:
    """The first call answers an ``InputRequiredResult`` with a URL-mode ``elicitation/create`` (no
    ``elicitationId`` in this revision) and a ``requestState``; a retry without the answer asks again; the
    ``accept`` retry is held open (SSE, keep-alives) until the human has submitted, then completes."""
    client = await mcp_client()
    elicitations(client).keepalive = 0.2
    path = unique("modern")
    resp = await post_modern(client, modern_call(path))
    assert resp.content_type == "application/json"
    first = (await resp.json())["result"]
    assert first["resultType"] == "input_required"
    request = first["inputRequests"]["intake"]
    assert request["method"] == "elicitation/create"
    assert set(request["params"]) == {"mode", "message", "url"}
    assert request["params"]["mode"] == "url"
    url = request["params"]["url"]
    state = first["requestState"]
    assert first["_meta"]["io.modelcontextprotocol/serverInfo"]["name"] == "vault-mcp-bridge"
    again = (await (await post_modern(client, modern_call(path, msg_id=2, requestState=state))).json())["result"]
    assert again["resultType"] == "input_required"
    assert again["inputRequests"]["intake"]["params"]["url"] == url
    retry = modern_call(path, msg_id=3, requestState=state, inputResponses={"intake": {"action": "accept"}})
    resp = await post_modern(client, retry)
    assert resp.content_type == "text/event-stream"
    stream = Sse(resp)
    await asyncio.sleep(0.5)
    assert await human(client, url, ["modern-value"]) == 200
    final = await stream.next()
    assert final["id"] == 3
    assert final["result"]["resultType"] == "complete"
    assert final["result"]["_meta"]["io.modelcontextprotocol/serverInfo"]["name"] == "vault-mcp-bridge"
    structured = final["result"]["structuredContent"]
    assert (structured["status"], structured["version"]) == ("stored", 1)
    assert stream.comments >= 1
    # a retry once it is settled answers at once, as JSON
    later = await post_modern(client, modern_call(path, msg_id=4, requestState=state,
                                                  inputResponses={"intake": {"action": "accept"}}))
    assert later.content_type == "application/json"
    assert (await later.json())["result"]["structuredContent"]["status"] == "stored"


async def test_modern_decline(mcp_client: McpClientFactory) -> None:
    client = await mcp_client()
    path = unique("mdecline")
    first = (await (await post_modern(client, modern_call(path))).json())["result"]
    retry = modern_call(path, msg_id=2, requestState=first["requestState"],
                        inputResponses={"intake": {"action": "decline"}})
    final = (await (await post_modern(client, retry)).json())["result"]
    assert final["resultType"] == "complete"
    assert final["structuredContent"] == {"path": path, "status": "declined", "stored": False, "code": "declined"}
    assert (await client.get(URL(first["inputRequests"]["intake"]["params"]["url"]).path)).status == 410


def _tampered(state: str) -> str:
    body, mac = state.rsplit(".", 1)
    raw = body[4:]
    payload = json.loads(base64.urlsafe_b64decode(raw + "=" * (-len(raw) % 4)))
    payload["a"] = "bob"
    forged = base64.urlsafe_b64encode(json.dumps(payload).encode()).rstrip(b"=").decode()
    return f"rs1.{forged}.{mac}"


async def test_modern_request_state_is_checked(mcp_client: McpClientFactory) -> None:
    """``requestState`` is attacker-controlled input: altered, another agent's, for other arguments, or not ours:
    -32602, nothing voided; a retry by an identity without the tool's scope: 403."""
    client = await mcp_client()
    path = unique("state")
    first = (await (await post_modern(client, modern_call(path))).json())["result"]
    state = first["requestState"]
    accept = {"intake": {"action": "decline"}}
    cases = [
        (API_KEY_ALICE, modern_call(path, requestState=_tampered(state), inputResponses=accept)),
        (API_KEY_ALICE, modern_call(path, requestState="rs1.e30.AAAA", inputResponses=accept)),
        (API_KEY_ALICE, modern_call(path, requestState=42, inputResponses=accept)),
        (API_KEY_ALICE, modern_call(unique("other"), requestState=state, inputResponses=accept)),
        (API_KEY_BOB, modern_call(path, requestState=state, inputResponses=accept)),
    ]
    for key, body in cases:
        resp = await post_modern(client, body, key)
        error = (await resp.json())["error"]
        assert error["code"] == -32602, error
        assert "requestState" in error["message"]
    resp = await post_modern(client, modern_call(path, requestState=state, inputResponses=accept),
                             API_KEY_READONLY)
    assert resp.status == 403
    bad = modern_call(path, requestState=state, inputResponses={"intake": {"action": "maybe"}})
    assert (await (await post_modern(client, bad)).json())["error"]["code"] == -32602
    # nothing of that voided the link
    assert await human(client, first["inputRequests"]["intake"]["params"]["url"], ["v"]) == 200


@pytest.mark.parametrize("caps", [{}, {"elicitation": {}}, {"elicitation": {"form": {}}}])
async def test_modern_without_url_mode_gets_the_link(mcp_client: McpClientFactory, caps: dict[str, Any]) -> None:
    client = await mcp_client()
    result = (await (await post_modern(client, modern_call(unique("mplain"), caps=caps))).json())["result"]
    assert result["resultType"] == "complete"
    assert result["structuredContent"]["status"] == "pending"
    assert result["structuredContent"]["url"]


async def test_the_waiting_call_ends_when_the_client_goes(mcp_client: McpClientFactory) -> None:
    """A client that closes the stream ends the wait at the next keep-alive (no task left behind); the link stays
    usable and its status can be polled."""
    client = await mcp_client()
    handler = elicitations(client)
    handler.keepalive = 0.05
    headers = await handshake(client, capabilities=URL_CAPS)
    flow = handler._flow
    resp = await client.post("/mcp", json=call(unique("gone")), headers={**headers, "Accept": MCP_ACCEPT})
    ask = await Sse(resp).next()
    assert len(flow.waiters) == 1
    resp.close()
    for _ in range(200):
        if len(flow.waiters) == 0:
            break
        await asyncio.sleep(0.02)
    assert len(flow.waiters) == 0
    assert await human(client, ask["params"]["url"], ["v"]) == 200


async def test_a_stopping_bridge_answers_waiting_calls(mcp_client: McpClientFactory) -> None:
    """At shutdown a waiting call answers at once: ``pending`` with the ``elicitation_id`` (no link), which
    ``kv_request_input_status`` on another replica takes."""
    client = await mcp_client()
    headers = await handshake(client, capabilities=URL_CAPS)
    path = unique("stop")
    stream = Sse(await client.post("/mcp", json=call(path), headers=headers))
    ask = await stream.next()
    await client.app.shutdown()
    final = await stream.next()
    structured = final["result"]["structuredContent"]
    assert structured["status"] == "pending"
    assert structured["elicitation_id"] == ask["params"]["elicitationId"]
    assert "url" not in structured
