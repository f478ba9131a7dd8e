"""``kv_request_input`` through the official MCP Python SDK (``mcp`` 2.x) against a real listening bridge and
OpenBao, in both eras: the SDK's elicitation callback receives the URL-mode request (2025-11-25: the server's
``elicitation/create`` on the call's SSE stream, with ``elicitationId``; 2026-07-28: an ``InputRequiredResult``
the SDK's multi-round-trip driver resolves and retries), a human submits the form, and ``call_tool`` returns
``{stored, version, fingerprints}``. A client without an elicitation callback declares no elicitation and gets the
link in the result. The human here is an HTTP client; tests/intake/test_chromium.py uses a browser."""

from __future__ import annotations

import asyncio
import json
import re
import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
import httpx2
import pytest
from mcp import Client
from mcp.client.session import ClientRequestContext
from mcp.client.streamable_http import streamable_http_client
from mcp_types import ElicitRequestParams, ElicitRequestURLParams, ElicitResult, ErrorData

from tests.conftest import API_KEY_ALICE
from tests.mcp.conftest import ServerFactory

pytestmark = pytest.mark.integration

CSRF = re.compile(r'name="csrf" value="([^"]+)"')
MODES = ["legacy", "2026-07-28", "auto"]


async def human(url: str, values: list[str]) -> None:
    """A person with a browser: open the link, fill in the form, submit."""
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as http:  # cookies for 127.0.0.1
        async with http.get(url) as resp:
            assert resp.status == 200
            match = CSRF.search(await resp.text())
        assert match is not None
        form = {"csrf": match.group(1), **{f"f{i}": v for i, v in enumerate(values)}}
        async with http.post(url, data=form) as resp:
            assert resp.status == 200, await resp.text()


class Person:
    """The elicitation callback of the SDK client: shows the request to a "human", who submits the form in the
    background (or declines), and answers the client's ``accept``/``decline``."""

    def __init__(self, values: list[str], *, action: str = "accept") -> None:
        self.values = values
        self.action = action
        self.requests: list[ElicitRequestURLParams] = []
        self.tasks: list[asyncio.Task[None]] = []

    async def __call__(self, context: ClientRequestContext, params: ElicitRequestParams) -> ElicitResult | ErrorData:
        assert isinstance(params, ElicitRequestURLParams), params
        self.requests.append(params)
        if self.action == "accept":
            self.tasks.append(asyncio.create_task(human(params.url, self.values)))
        return ElicitResult(action=self.action)


@asynccontextmanager
async def connect(url: str, mode: str, callback: Any = None,
                  messages: list[Any] | None = None) -> AsyncIterator[Client]:
    async def on_message(message: Any) -> None:
        if messages is not None:
            messages.append(message)

    async with (
        httpx2.AsyncClient(headers={"X-API-Key": API_KEY_ALICE}, timeout=30) as http,
        Client(streamable_http_client(url, http_client=http), mode=mode, elicitation_callback=callback,
               message_handler=on_message) as client,
    ):
        yield client


def unique() -> str:
    return f"sdk-intake-{secrets.token_hex(3)}/db"


@pytest.mark.parametrize("mode", MODES)
async def test_sdk_url_elicitation(mcp_server: ServerFactory, mode: str) -> None:
    url = await mcp_server()
    person = Person(["sdk-user", "sdk-secret-value"])
    messages: list[Any] = []
    path = unique()
    async with connect(url, mode, person, messages) as client:
        result = await asyncio.wait_for(client.call_tool(
            "kv_request_input", {"path": path, "fields": ["user", "password"], "description": "SDK test"}), 60)
        await asyncio.gather(*person.tasks)
    assert not result.is_error, result
    structured = result.structured_content
    assert isinstance(structured, dict)
    assert structured["status"] == "stored"
    assert structured["stored"] is True
    assert structured["version"] == 1
    assert set(structured["fingerprints"]) == {"user", "password"}
    assert "url" not in structured
    assert json.loads(result.content[0].text) == structured  # type: ignore[union-attr]
    [request] = person.requests
    assert request.mode == "url"
    assert path in request.message
    if mode == "legacy":
        assert request.elicitation_id  # 2025-11-25: required; and the completion notification names it
        completes = [m for m in messages if getattr(getattr(m, "root", m), "method", "")
                     == "notifications/elicitation/complete"]
        assert completes, messages
    else:
        assert request.elicitation_id is None  # 2026-07-28: removed


@pytest.mark.parametrize("mode", ["legacy", "2026-07-28"])
async def test_sdk_decline(mcp_server: ServerFactory, mode: str) -> None:
    url = await mcp_server()
    person = Person([], action="decline")
    async with connect(url, mode, person) as client:
        result = await asyncio.wait_for(client.call_tool("kv_request_input",
                                                         {"path": unique(), "fields": ["password"]}), 60)
    assert result.structured_content is not None
    assert result.structured_content["status"] == "declined"
    assert result.structured_content["stored"] is False


@pytest.mark.parametrize("mode", ["legacy", "2026-07-28"])
async def test_sdk_without_elicitation_gets_the_link_and_polls(mcp_server: ServerFactory, mode: str) -> None:
    """No callback: the SDK declares no elicitation capability; the result carries the link and the id, which
    ``kv_request_input_status`` takes."""
    url = await mcp_server()
    path = unique()
    async with connect(url, mode) as client:
        pending = await client.call_tool("kv_request_input", {"path": path, "fields": ["password"]})
        assert pending.structured_content is not None
        assert pending.structured_content["status"] == "pending"
        link = pending.structured_content["url"]
        eid = pending.structured_content["elicitation_id"]
        waiting = await client.call_tool("kv_request_input_status", {"path": path, "id": eid})
        assert waiting.structured_content is not None
        assert waiting.structured_content["status"] == "pending"
        await human(link, ["polled-value"])
        stored = await client.call_tool("kv_request_input_status", {"path": path, "id": eid})
    assert stored.structured_content is not None
    assert stored.structured_content["status"] == "stored"
    assert stored.structured_content["fingerprints"]["password"].startswith("hmac-sha256:v1:")


