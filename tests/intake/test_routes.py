"""The intake pages over HTTP (bridge/intake/routes.py): form, submission, single use (also across replicas),
expiry, CSRF and origin checks, security headers, failures of the write, nothing secret in pages or logs."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from structlog.testing import capture_logs

from bridge.errors import ConflictError, ForbiddenError, VaultUnavailableBridgeError
from bridge.intake import IntakeField, MemoryIntakeStore
from bridge.intake.routes import COOKIE
from tests.intake.conftest import CSRF_RE, Clock, IntakeHarness, MakeHarness

Client = TestClient[Any, Any]
CANARY_USER = "canary-user-" + "u" * 12
CANARY_PASS = "canary-pass-\"<&>'" + "p" * 12


async def open_form(client: Client, token: str) -> tuple[str, str]:
    """GET the form: (its HTML, the CSRF field); the client keeps the cookie."""
    resp = await client.get(f"/intake/{token}")
    assert resp.status == 200
    html = await resp.text()
    match = CSRF_RE.search(html)
    assert match is not None
    return html, match.group(1)


async def submit(client: Client, token: str, csrf: str | None, values: dict[str, str], **kw: Any) -> tuple[int, str]:
    form = dict(values)
    if csrf is not None:
        form["csrf"] = csrf
    resp = await client.post(f"/intake/{token}", data=form, **kw)
    return resp.status, await resp.text()


@pytest.fixture
async def harness(make_harness: MakeHarness) -> IntakeHarness:
    return make_harness()


async def test_form_page_content_and_headers(harness: IntakeHarness, aiohttp_client: Callable[..., Any]) -> None:
    client: Client = await aiohttp_client(harness.app)
    ticket = harness.link(description="Please paste the <b>export</b> login\nfor prod")
    resp = await client.get(f"/intake/{ticket.token}")
    assert resp.status == 200
    assert resp.content_type == "text/html"
    assert resp.headers["Cache-Control"] == "no-store"
    csp = resp.headers["Content-Security-Policy"]
    for part in ("default-src 'none'", "frame-ancestors 'none'", "form-action 'self'"):
        assert part in csp
    assert resp.headers["X-Frame-Options"] == "DENY"
    assert resp.headers["Referrer-Policy"] == "same-origin"
    assert resp.headers["X-Content-Type-Options"] == "nosniff"
    cookie = resp.cookies[COOKIE]
    assert cookie["httponly"]
    assert cookie["samesite"] == "Strict"
    assert cookie["path"] == "/intake/"
    html = await resp.text()
    assert "<script" not in html
    assert '<form method="post" action="" autocomplete="off"' in html
    assert html.count('type="password"') == 2
    assert html.count('autocomplete="off"') == 3
    assert "<code id=\"agent\">alice</code>" in html
    assert "<code id=\"path\">app/db</code>" in html
    assert "Please paste the &lt;b&gt;export&lt;/b&gt; login\nfor prod" in html  # escaped, never markup
    assert "(a new secret)" in html
    multi = harness.link(fields=(IntakeField("pem", multiline=True),), cas=4)
    html = await (await client.get(f"/intake/{multi.token}")).text()
    assert "<textarea" in html
    assert "(replacing version 4)" in html


async def test_submission_reaches_the_writer_once(harness: IntakeHarness,
                                                  aiohttp_client: Callable[..., Any]) -> None:
    client: Client = await aiohttp_client(harness.app)
    ticket = harness.link(cas=2)
    _, csrf = await open_form(client, ticket.token)
    with capture_logs() as logs:
        status, html = await submit(client, ticket.token, csrf, {"f0": CANARY_USER, "f1": CANARY_PASS})
    assert status == 200
    assert "stored in Vault as version 3" in html
    [call] = harness.writer.calls
    assert call.values == {"username": CANARY_USER, "password": CANARY_PASS}
    assert call.ticket.agent == "alice"
    assert call.ticket.path == "app/db"
    assert call.ticket.cas == 2
    record = await harness.store.lookup(ticket)
    assert record is not None
    assert (record.state, record.version) == ("stored", 3)
    # used: the form says so, a second submission is refused and never reaches the writer
    resp = await client.get(f"/intake/{ticket.token}")
    assert resp.status == 410
    assert "the values were stored (version 3)" in await resp.text()
    status, html = await submit(client, ticket.token, csrf, {"f0": "again", "f1": "again"})
    assert status == 410
    assert len(harness.writer.calls) == 1
    for text in (html, json.dumps(logs, default=str), repr(call)):
        assert CANARY_USER not in text
        assert CANARY_PASS not in text
    assert any(e["event"] == "intake.stored" for e in logs)


async def test_single_use_across_replicas(make_harness: MakeHarness, aiohttp_client: Callable[..., Any]) -> None:
    """Two replicas sharing the key and the record store: a link used on one is refused on the other."""
    shared = MemoryIntakeStore()
    one, two = make_harness(store=shared), make_harness(store=shared)
    c1: Client = await aiohttp_client(one.app)
    c2: Client = await aiohttp_client(two.app)
    ticket = one.link()
    _, csrf1 = await open_form(c1, ticket.token)
    _, csrf2 = await open_form(c2, ticket.token)  # the other replica serves the same link
    assert (await submit(c1, ticket.token, csrf1, {"f0": "u", "f1": "p"}))[0] == 200
    status, html = await submit(c2, ticket.token, csrf2, {"f0": "u2", "f1": "p2"})
    assert status == 410
    assert "used already" in html
    assert len(one.writer.calls) == 1
    assert two.writer.calls == []


async def test_expired_and_invalid_links(harness: IntakeHarness, aiohttp_client: Callable[..., Any]) -> None:
    client: Client = await aiohttp_client(harness.app)
    ticket = harness.link()
    _, csrf = await open_form(client, ticket.token)
    harness.clock.now += 601
    resp = await client.get(f"/intake/{ticket.token}")
    assert resp.status == 410
    assert "expired" in await resp.text()
    assert (await submit(client, ticket.token, csrf, {"f0": "u", "f1": "p"}))[0] == 410
    for bad in ("nope", ticket.token[:-2] + "xx"):
        resp = await client.get(f"/intake/{bad}")
        assert resp.status == 404
        assert resp.headers["Cache-Control"] == "no-store"
        assert (await submit(client, bad, csrf, {"f0": "u", "f1": "p"}))[0] == 404
    assert harness.writer.calls == []


async def test_csrf_and_origin_checks(harness: IntakeHarness, aiohttp_client: Callable[..., Any]) -> None:
    client: Client = await aiohttp_client(harness.app)
    ticket = harness.link()
    other = harness.link()
    _, csrf = await open_form(client, ticket.token)
    _, other_csrf = await open_form(client, other.token)
    values = {"f0": "u", "f1": "p"}
    assert (await submit(client, ticket.token, None, values))[0] == 403  # no form token
    assert (await submit(client, ticket.token, "x" * 43, values))[0] == 403  # a made-up one
    assert (await submit(client, ticket.token, other_csrf, values))[0] == 403  # another link's
    status, html = await submit(client, ticket.token, csrf, values, headers={"Origin": "http://evil.example"})
    assert status == 403
    assert "Not sent from this page" in html
    assert (await submit(client, ticket.token, csrf, values, headers={"Origin": "null"}))[0] == 403
    assert (await submit(client, ticket.token, csrf, values, headers={"Sec-Fetch-Site": "cross-site"}))[0] == 403
    client.session.cookie_jar.clear()  # the cookie half missing
    assert (await submit(client, ticket.token, csrf, values))[0] == 403
    assert harness.writer.calls == []
    assert await harness.store.lookup(ticket) is None  # nothing claimed: the link still works
    _, csrf = await open_form(client, ticket.token)
    origin = f"http://{client.host}:{client.port}"
    status, _ = await submit(client, ticket.token, csrf, values,
                             headers={"Origin": origin, "Sec-Fetch-Site": "same-origin"})
    assert status == 200


async def test_public_url_origin_is_accepted(make_harness: MakeHarness, aiohttp_client: Callable[..., Any]) -> None:
    """Behind a proxy the browser's Origin is the public URL's, not the Host the bridge sees."""
    harness = make_harness(public_url="https://bridge.example.com/")
    client: Client = await aiohttp_client(harness.app)
    ticket = harness.link()
    resp = await client.get(f"/intake/{ticket.token}")
    assert resp.cookies[COOKIE]["secure"]  # an https public URL: the cookie is Secure
    cookie = resp.cookies[COOKIE].value
    match = CSRF_RE.search(await resp.text())
    assert match is not None
    client.session.cookie_jar.clear()
    status, _ = await submit(client, ticket.token, match.group(1), {"f0": "u", "f1": "p"},
                             headers={"Origin": "https://bridge.example.com", "Cookie": f"{COOKIE}={cookie}"})
    assert status == 200


async def test_form_errors_show_the_form_again_without_values(harness: IntakeHarness,
                                                              aiohttp_client: Callable[..., Any]) -> None:
    client: Client = await aiohttp_client(harness.app)
    ticket = harness.link(fields=(IntakeField("user"), IntakeField("key", multiline=True)))
    _, csrf = await open_form(client, ticket.token)
    status, html = await submit(client, ticket.token, csrf, {"f0": CANARY_USER, "f1": ""})
    assert status == 400
    assert "Fill in key." in html
    assert CANARY_USER not in html
    status, html = await submit(client, ticket.token, csrf, {"f0": "a\nb", "f1": "k"})
    assert status == 400
    assert "line break in a single-line field" in html
    status, html = await submit(client, ticket.token, csrf, {"f0": "x" * (64 * 1024 + 1), "f1": "k"})
    assert status == 400
    assert harness.writer.calls == []
    assert await harness.store.lookup(ticket) is None
    new_csrf = CSRF_RE.search(html)
    assert new_csrf is not None
    status, _ = await submit(client, ticket.token, new_csrf.group(1),
                             {"f0": CANARY_USER, "f1": "-----BEGIN-----\r\nabc\r\n-----END-----\r\n"})
    assert status == 200
    assert harness.writer.calls[0].values["key"] == "-----BEGIN-----\nabc\n-----END-----\n"  # CRLF of text areas


async def test_writer_failures(harness: IntakeHarness, aiohttp_client: Callable[..., Any]) -> None:
    client: Client = await aiohttp_client(harness.app)
    values = {"f0": "u", "f1": "p"}
    # Vault unavailable: nothing stored, the claim released, the same link works again
    ticket = harness.link()
    _, csrf = await open_form(client, ticket.token)
    harness.writer.fail = VaultUnavailableBridgeError("Vault is unreachable")
    status, html = await submit(client, ticket.token, csrf, values)
    assert status == 503
    assert "Submit the form again" in html
    assert await harness.store.lookup(ticket) is None
    harness.writer.fail = None
    assert (await submit(client, ticket.token, csrf, values))[0] == 200
    # the secret changed since the agent asked: the link is used up
    for error, code in ((ConflictError("Check-and-set failed"), 409), (ForbiddenError("Vault denied it"), 403)):
        ticket = harness.link()
        _, csrf = await open_form(client, ticket.token)
        harness.writer.fail = error
        status, html = await submit(client, ticket.token, csrf, values)
        assert status == code
        assert "Nothing was stored" in html or "nothing was stored" in html
        record = await harness.store.lookup(ticket)
        assert record is not None
        assert (record.state, record.code) == ("failed", error.code)  # the agent's status says why
        harness.writer.fail = None
        assert (await submit(client, ticket.token, csrf, values))[0] == 410


async def test_purge_keeps_the_store_small(make_harness: MakeHarness) -> None:
    clock = Clock()
    harness = make_harness(clock=clock, ttl=60)
    tickets = [harness.link() for _ in range(5)]
    for t in tickets:
        assert await harness.store.claim(t, clock.now)
    assert await harness.store.purge(clock.now + 61) == 5


async def test_field_labels_and_descriptions_on_the_form(harness: IntakeHarness,
                                                         aiohttp_client: Callable[..., Any]) -> None:
    """A field's label is shown instead of its name (the name beside it), its description under it; both are the
    agent's words and are escaped."""
    client: Client = await aiohttp_client(harness.app)
    ticket = harness.link(fields=(IntakeField("pw", label="Database <password>", description="From the DBA & team"),
                                  IntakeField("user")))
    html, _ = await open_form(client, ticket.token)
    assert 'for="f0">Database &lt;password&gt; <code class="muted">pw</code></label>' in html
    assert '<div class="muted" id="d0">From the DBA &amp; team</div>' in html
    assert 'for="f1">user</label>' in html
    assert 'id="d1"' not in html
