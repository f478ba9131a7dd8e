"""Taking a secret in, end to end, in Debian's chromium (headless, JavaScript off, driven by playwright): a real
``vault-mcp-bridge serve`` process at ``LOG_LEVEL=debug`` with an audit file, on the real OpenBao; the agent is the
official MCP SDK client (both eras with URL-mode elicitation, and one without it that polls the status over MCP
and REST); the human fills the form in the browser. Each value is then in Vault (read with the root token) and in
no MCP message either way (every byte the SDK sent and received, recorded at its HTTP transport), no REST answer,
no log line and no audit record, in none of its encoded forms. A used link and an expired link are refused in the
browser."""

from __future__ import annotations

import asyncio
import json
import secrets
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import httpx2
import pytest
from mcp import Client
from mcp.client.session import ClientRequestContext
from mcp.client.streamable_http import streamable_http_client
from mcp_types import ElicitRequestParams, ElicitRequestURLParams, ElicitResult, ErrorData

from bridge.broker.redact import value_forms
from bridge.intake import IntakeCodec, IntakeField
from devtools.devvault import DevVault
from tests.conftest import API_KEY_ALICE, API_KEYS
from tests.intake.conftest import CHROMIUM
from tests.support.servers import BridgeProcess

pytestmark = [pytest.mark.integration,
              pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="Debian chromium not installed (make sysdeps)")]

INTAKE_SECRET = "e2e-intake-secret-" + "x" * 20


class Recording(httpx2.AsyncBaseTransport):
    """The SDK client's HTTP transport, keeping every request body and every response byte (SSE streams too)."""

    def __init__(self) -> None:
        self.inner = httpx2.AsyncHTTPTransport()
        self.chunks: list[bytes] = []

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        self.chunks.append(await request.aread())
        response = await self.inner.handle_async_request(request)
        self.chunks.append(str(response.headers).encode())
        upstream = response.stream
        chunks = self.chunks

        class Tee(httpx2.AsyncByteStream):
            async def __aiter__(self) -> AsyncIterator[bytes]:
                async for chunk in upstream:  # type: ignore[union-attr]
                    chunks.append(chunk)
                    yield chunk

            async def aclose(self) -> None:
                await upstream.aclose()  # type: ignore[union-attr]

        return httpx2.Response(response.status_code, headers=response.headers, stream=Tee(),
                               extensions=response.extensions)

    async def aclose(self) -> None:
        await self.inner.aclose()

    def text(self) -> str:
        return b"".join(self.chunks).decode(errors="replace")


class Human:
    """Fills forms in the browser. As an elicitation callback: takes the URL-mode request, consents, and fills the
    form in the background (the client's answer does not wait for the human)."""

    def __init__(self, browser: Any) -> None:
        self.browser = browser
        self.tasks: list[asyncio.Task[str]] = []
        self.requests: list[ElicitRequestURLParams] = []
        self.values: list[str] = []

    async def fill(self, url: str, values: list[str]) -> str:
        page = await self.browser.new_page()
        try:
            resp = await page.goto(url)
            assert resp is not None
            assert resp.status == 200
            for index, value in enumerate(values):
                await page.fill(f"#f{index}", value)
            async with page.expect_navigation():
                await page.click("#submit")
            heading: str = await page.locator("#heading").inner_text()
            return heading
        finally:
            await page.close()

    async def heading_of(self, url: str) -> tuple[int, str]:
        page = await self.browser.new_page()
        try:
            resp = await page.goto(url)
            assert resp is not None
            return resp.status, await page.locator("#heading").inner_text()
        finally:
            await page.close()

    async def __call__(self, context: ClientRequestContext, params: ElicitRequestParams) -> ElicitResult | ErrorData:
        assert isinstance(params, ElicitRequestURLParams)
        self.requests.append(params)
        self.tasks.append(asyncio.create_task(self.fill(params.url, self.values)))
        return ElicitResult(action="accept")


@asynccontextmanager
async def agent(url: str, mode: str, recording: Recording, callback: Any = None) -> AsyncIterator[Client]:
    async with (
        httpx2.AsyncClient(headers={"X-API-Key": API_KEY_ALICE}, timeout=60, transport=recording) as http,
        Client(streamable_http_client(url, http_client=http), mode=mode, elicitation_callback=callback) as client,
    ):
        yield client


def canary(name: str) -> str:
    return f"CANARY-{name}-{secrets.token_hex(6)}-\"q\" <t> &é/+="


async def root_read(bao: DevVault, path: str) -> dict[str, Any]:
    async with aiohttp.ClientSession() as http, http.get(f"{bao.addr}/v1/secret/data/mcp/alice/{path}",
                                                         headers={"X-Vault-Token": bao.root_token}) as resp:
        assert resp.status == 200
        body: dict[str, Any] = await resp.json()
        return body["data"]["data"]  # type: ignore[no-any-return]


async def test_intake_end_to_end_in_chromium(spawn_bridge: Callable[..., BridgeProcess], bao: DevVault,
                                             browser: Any, tmp_path: Path) -> None:
    audit = tmp_path / "audit.jsonl"
    bridge = await asyncio.to_thread(spawn_bridge, {
        "VAULT_ADDR": bao.addr, "VAULT_TOKEN": bao.root_token, "API_KEYS_JSON": json.dumps(API_KEYS),
        "LOG_LEVEL": "debug", "AUDIT_LOG": str(audit), "INTAKE_SECRET": INTAKE_SECRET})
    mcp_url = f"{bridge.url}/mcp"
    folder = f"e2e-{secrets.token_hex(3)}"
    recording = Recording()
    human = Human(browser)
    rest_answers: list[str] = []
    stored_paths: dict[str, str] = {}

    # 2025-11-25 and 2026-07-28: URL-mode elicitation; the model's result is {stored, version, fingerprints}
    for mode in ("legacy", "2026-07-28"):
        value = canary(mode)
        human.values = [value]
        path = f"{folder}/{mode.replace('-', '')}"
        async with agent(mcp_url, mode, recording, human) as client:
            result = await asyncio.wait_for(client.call_tool(
                "kv_request_input", {"path": path, "fields": [{"name": "token", "label": "API token"}],
                                     "description": f"e2e {mode}"}), 90)
        assert await asyncio.wait_for(human.tasks[-1], 30) == "Stored"
        assert not result.is_error, result
        assert result.structured_content is not None
        assert set(result.structured_content) == {"path", "status", "stored", "version", "fingerprints"}
        assert result.structured_content["stored"] is True
        assert result.structured_content["version"] == 1
        assert await root_read(bao, path) == {"token": value}
        stored_paths[value] = path

    # a client without URL mode: the link in the result, the outcome by polling (MCP and REST)
    value = canary("fallback")
    path = f"{folder}/fallback"
    async with agent(mcp_url, "legacy", recording) as client:
        pending = await client.call_tool("kv_request_input", {"path": path, "fields": ["token"]})
        assert pending.structured_content is not None
        link = pending.structured_content["url"]
        eid = pending.structured_content["elicitation_id"]
        assert await human.fill(link, [value]) == "Stored"
        status = await client.call_tool("kv_request_input_status", {"path": path, "id": eid})
    assert status.structured_content is not None
    assert status.structured_content["status"] == "stored"
    async with aiohttp.ClientSession(headers={"X-API-Key": API_KEY_ALICE}) as http:
        async with http.get(f"{bridge.url}/secrets/{path}:request-input", params={"id": eid}) as resp:
            rest_answers.append(await resp.text())
            assert (await resp.json())["fingerprints"] == status.structured_content["fingerprints"]
        async with http.post(f"{bridge.url}/secrets/{folder}/rest:request-input", json={"fields": ["x"]}) as resp:
            rest_answers.append(await resp.text())
            assert resp.status == 200
    assert await root_read(bao, path) == {"token": value}
    stored_paths[value] = path

    # used: the browser is told so; expired: a link of this bridge's key, past its time
    assert await human.heading_of(link) == (410, "Link used")
    codec = IntakeCodec(IntakeCodec.derive_key(INTAKE_SECRET), 600, clock=lambda: time.time() - 601)
    expired = codec.issue(agent="alice", path=f"{folder}/late", cas=0, fields=(IntakeField("token"),))
    assert await human.heading_of(f"{bridge.url}/intake/{expired.token}") == (410, "Link expired")

    bridge.stop()  # flush and close: the log is complete
    log = bridge.log_path.read_text(errors="replace")
    assert '"intake.stored"' in log
    assert '"intake.opened"' in log  # a debug event: the real log, at debug level
    audit_text = audit.read_text()
    operations = [json.loads(line)["operation"] for line in audit_text.splitlines()]
    assert operations.count("kv_request_input.submit") == 3
    mcp_bytes = recording.text()
    assert "elicitation/create" in mcp_bytes  # both eras were recorded
    assert "input_required" in mcp_bytes
    places = {"MCP messages": mcp_bytes, "REST answers": "".join(rest_answers), "log": log, "audit": audit_text}
    for value in stored_paths:
        for form in value_forms(value):
            for where, text in places.items():
                assert form not in text, f"a form of a stored value is in the {where}"
