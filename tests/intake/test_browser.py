"""The intake form in a real browser: Debian's chromium, headless, JavaScript off, driven by playwright.

A human opens the link, types the values, submits: the writer callback receives them. The same link cannot be
used twice (also from a second tab), an expired link is refused, and a form on another site posting to the link
(cross-site, without the link's form token and without the SameSite=Strict cookie) is refused.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from bridge.intake import IntakeField
from tests.intake.conftest import CHROMIUM, IntakeHarness, MakeHarness

pytestmark = pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="Debian chromium not installed (make sysdeps)")

USER = "svc-export"
PASSWORD = "Tr0ub4dor&3 \"quoted\" <tag> é"
PEM = "-----BEGIN TEST KEY-----\nMIIBVQIBADANBgkqhkiG9w0BAQEFAASCAT8wggE7AgEAAkEA\n-----END TEST KEY-----"


async def served(harness: IntakeHarness, aiohttp_server: Callable[..., Awaitable[TestServer]]) -> str:
    server = await aiohttp_server(harness.app)
    return str(server.make_url("")).rstrip("/")


async def test_fill_and_submit_in_chromium(make_harness: MakeHarness, browser: Any,
                                           aiohttp_server: Callable[..., Awaitable[TestServer]]) -> None:
    harness = make_harness()
    base = await served(harness, aiohttp_server)
    ticket = harness.link(fields=(IntakeField("username"), IntakeField("password"), IntakeField("key", True)),
                          description="Export job login")
    page = await browser.new_page()
    resp = await page.goto(f"{base}/intake/{ticket.token}")
    assert resp is not None
    assert resp.status == 200
    assert await page.title() == "Vault MCP Bridge — provide a secret"
    assert await page.locator("#agent").inner_text() == "alice"
    assert await page.locator("#path").inner_text() == "app/db"
    assert await page.locator("#description").inner_text() == "Export job login"
    assert await page.get_attribute("#f1", "type") == "password"
    assert await page.get_attribute("#intake", "autocomplete") == "off"
    await page.fill("#f0", USER)
    await page.fill("#f1", PASSWORD)
    await page.fill("#f2", PEM)
    async with page.expect_navigation():
        await page.click("#submit")
    assert await page.locator("#heading").inner_text() == "Stored"
    assert "version 1" in await page.locator("#message").inner_text()
    [call] = harness.writer.calls
    assert call.values == {"username": USER, "password": PASSWORD, "key": PEM}
    assert PASSWORD not in await page.content()
    # the link is used up: opening it again says so
    resp = await page.goto(f"{base}/intake/{ticket.token}")
    assert resp is not None
    assert resp.status == 410
    assert await page.locator("#heading").inner_text() == "Link used"
    # two tabs hold the form of one link: the second submission is refused
    ticket = harness.link()
    first, second = await browser.new_page(), await browser.new_page()
    for tab in (first, second):
        await tab.goto(f"{base}/intake/{ticket.token}")
        await tab.fill("#f0", USER)
        await tab.fill("#f1", PASSWORD)
    async with first.expect_navigation():
        await first.click("#submit")
    assert await first.locator("#heading").inner_text() == "Stored"
    async with second.expect_navigation() as nav:
        await second.click("#submit")
    response = await nav.value
    assert response is not None
    assert response.status == 410
    assert await second.locator("#heading").inner_text() == "Link used"
    assert len(harness.writer.calls) == 2


async def test_cross_site_form_and_expired_link_are_refused(
        make_harness: MakeHarness, browser: Any, aiohttp_server: Callable[..., Awaitable[TestServer]]) -> None:
    """The victim opened the link (so holds the cookie); a page on another site (127.0.0.2 is another site than
    127.0.0.1) posts its own values to the link when clicked. No form token, no SameSite=Strict cookie, a
    cross-site ``Sec-Fetch-Site``: refused, nothing written, and the link still works for the human. Then a link
    whose form was left open too long is refused as expired."""
    harness = make_harness()
    base = await served(harness, aiohttp_server)
    ticket = harness.link()
    target = f"{base}/intake/{ticket.token}"

    async def attacker_page(_request: web.Request) -> web.Response:
        return web.Response(content_type="text/html", text=(
            f'<html><body><form method="post" action="{target}">'
            '<input name="f0" value="attacker"><input name="f1" value="known-password">'
            '<input name="csrf" value="guess"><button id="go" type="submit">win a prize</button></form>'
            "</body></html>"))

    evil_app = web.Application()
    evil_app.router.add_get("/", attacker_page)
    evil = await aiohttp_server(evil_app, host="127.0.0.2")
    page = await browser.new_page()
    await page.goto(target)  # the human has the form open (and the cookie)
    await page.goto(str(evil.make_url("/")))
    async with page.expect_navigation() as nav:
        await page.click("#go")
    response = await nav.value
    assert response is not None
    assert response.status == 403
    assert await page.locator("#heading").inner_text() == "Not sent from this page"
    assert harness.writer.calls == []
    # the human can still use the link
    await page.goto(target)
    await page.fill("#f0", USER)
    await page.fill("#f1", PASSWORD)
    async with page.expect_navigation():
        await page.click("#submit")
    assert await page.locator("#heading").inner_text() == "Stored"
    assert harness.writer.calls[0].values == {"username": USER, "password": PASSWORD}
    # expired while the form was open
    ticket = harness.link()
    await page.goto(f"{base}/intake/{ticket.token}")
    await page.fill("#f0", USER)
    await page.fill("#f1", PASSWORD)
    harness.clock.now += 601  # the human took too long
    async with page.expect_navigation() as nav:
        await page.click("#submit")
    response = await nav.value
    assert response is not None
    assert response.status == 410
    assert await page.locator("#heading").inner_text() == "Link expired"
    resp = await page.goto(f"{base}/intake/{ticket.token}")
    assert resp is not None
    assert resp.status == 410
    assert len(harness.writer.calls) == 1
