"""``GET /status``: content, access control, no secrets; rendered in a real headless Chromium (Debian's)."""

from __future__ import annotations

import os
import re
import secrets
import shutil
from pathlib import Path

import pytest

from bridge.logging import safe_url
from bridge.ops.stats import MinuteRow
from bridge.ops.status import chart
from devtools.devvault import DevVault
from tests.conftest import API_KEY_ALICE, API_KEY_BOB, OpsClient

pytestmark = pytest.mark.integration

ADMIN_KEY = "admin-key-" + "z" * 24
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]


async def _traffic(client: object, canary: str) -> None:
    from aiohttp.test_utils import TestClient

    assert isinstance(client, TestClient)
    alice, bob = {"X-API-Key": API_KEY_ALICE}, {"X-API-Key": API_KEY_BOB}
    assert (await client.put(f"/secrets/status-{canary}/x", json={"data": {"v": canary}}, headers=alice)).status == 200
    assert (await client.get(f"/secrets/status-{canary}/x", headers=alice)).status == 200
    assert (await client.get(f"/secrets/status-{canary}/none", headers=bob)).status == 404
    for _ in range(4):  # the 4th is over the limit of 4 (the 404 counted too)
        await client.get("/whoami", headers=bob)


async def test_status_page_content_and_no_secrets(ops_client: OpsClient, bao: DevVault) -> None:
    client = await ops_client(rate_limit_requests=4, audit_log="")
    canary = secrets.token_hex(8)
    await _traffic(client, canary)
    resp = await client.get("/status")
    assert resp.status == 200
    assert resp.content_type == "text/html"
    assert "default-src 'none'" in resp.headers["Content-Security-Policy"]
    html = await resp.text()
    assert bao.addr in html
    assert "unsealed" in html
    assert "static token" in html
    assert "api_key, jwt" in html
    assert "4 per 60s per agent" in html
    rows = dict(re.findall(r"<tr><td><code>([a-z_]+)</code></td><td>(\d+)</td>", html))
    assert rows == {"bob": "5", "alice": "2"}
    assert re.search(r"<code>rate_limited</code></td><td><code>/whoami</code>", html)
    assert re.search(r"<code>not_found</code></td><td><code>/secrets/\{tail\}</code>", html)
    assert html.count("<rect") >= 30  # background + one bar per minute with traffic
    assert "<script" not in html
    assert "http://" not in html.replace(bao.addr, "").replace(
        'xmlns="http://www.w3.org/2000/svg"', "")
    for needle in (canary, API_KEY_ALICE, API_KEY_BOB, bao.root_token):
        assert needle not in html


async def test_status_access_control(ops_client: OpsClient) -> None:
    client = await ops_client(status_allowed_networks="10.0.0.0/8", admin_api_keys=ADMIN_KEY)
    denied = await client.get("/status")
    assert denied.status == 403
    assert (await denied.json())["error"]["code"] == "status_forbidden"
    assert (await client.get("/status", headers={"X-API-Key": API_KEY_ALICE})).status == 403  # agent key: no
    assert (await client.get("/status", headers={"X-API-Key": ADMIN_KEY + "x"})).status == 403
    assert (await client.get("/status", headers={"X-API-Key": ADMIN_KEY})).status == 200


async def test_status_page_shows_the_apis_error_codes(ops_client: OpsClient) -> None:
    """Router 404/405, aiohttp's 413 and the JSON-RPC errors of /mcp appear with the API's codes (the same as
    in the error bodies), never as ``http_<status>``."""
    from tests.mcp.conftest import legacy_headers, rpc

    client = await ops_client(max_body_bytes=1024)
    alice = {"X-API-Key": API_KEY_ALICE}
    assert (await client.get("/no-such-route", headers=alice)).status == 404
    assert (await client.delete("/whoami", headers=alice)).status == 405
    assert (await client.put("/secrets/big", data="x" * 2048, headers={**alice, "Content-Type": "application/json"})
            ).status == 413
    assert (await client.post("/mcp", json=rpc("ping"), headers=legacy_headers(API_KEY_ALICE, "v1.forged"))
            ).status == 404
    assert (await client.post("/mcp", json=rpc("ping"), headers={**legacy_headers(API_KEY_ALICE),
                                                                  "Accept": "text/html"})).status == 406
    html = await (await client.get("/status")).text()
    codes = re.findall(r"<td>(\d{3})</td><td><code>([a-z_]+)</code></td>", html)
    assert sorted(codes) == [("404", "not_found"), ("404", "session_not_found"), ("405", "method_not_allowed"),
                             ("406", "not_acceptable"), ("413", "payload_too_large")], codes
    assert "http_" not in html


def test_display_addr_drops_credentials() -> None:
    assert safe_url("https://user:pw@vault.example:8200") == "https://vault.example:8200"
    assert safe_url("http://127.0.0.1:8200") == "http://127.0.0.1:8200"


def test_chart_geometry() -> None:
    rows = [MinuteRow(60.0 * i, i * 2, i % 2, 0) for i in range(5)]
    c = chart(rows)
    assert c["peak"] == 8
    assert c["total"] == 20
    assert next(b["h"] for b in c["bars"]) == 0
    assert c["bars"][-1]["h"] == c["height"] - 10
    assert all(b["y"] + b["h"] == pytest.approx(c["height"], abs=0.11) for b in c["bars"])


@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="Debian chromium not installed (make sysdeps)")
async def test_status_page_in_headless_chromium(ops_client: OpsClient, tmp_path: Path) -> None:
    from playwright.async_api import async_playwright

    client = await ops_client(rate_limit_requests=4)
    await _traffic(client, secrets.token_hex(8))
    url = str(client.make_url("/status"))
    shot = tmp_path / "status.png"
    async with async_playwright() as pw:
        # headless=True makes playwright pass --headless itself; a fresh profile dir for every run.
        context = await pw.chromium.launch_persistent_context(
            str(tmp_path / "profile"), executable_path=CHROMIUM, headless=True,
            args=[a for a in CHROMIUM_ARGS if a != "--headless"],
            viewport={"width": 1100, "height": 900}, java_script_enabled=False)
        try:
            page = await context.new_page()
            resp = await page.goto(url)
            assert resp is not None
            assert resp.status == 200
            assert await page.title() == "Vault MCP Bridge — status"
            assert "unsealed" in await page.locator("#vault").inner_text()
            assert "static token" in await page.locator("#token").inner_text()
            assert await page.locator("#agents tbody tr").count() == 2
            assert await page.locator("#errors tbody tr").count() >= 2
            box = await page.locator("#chart").bounding_box()
            assert box is not None
            assert box["width"] >= 500
            assert box["height"] >= 100
            assert await page.locator("#chart rect").count() >= 31
            await page.screenshot(path=str(shot), full_page=True)
        finally:
            await context.close()
    assert shot.stat().st_size > 10_000
    keep = os.environ.get("OPS_SCREENSHOT_DIR")
    if keep:
        os.makedirs(keep, exist_ok=True)
        shutil.copy(shot, os.path.join(keep, "status.png"))
