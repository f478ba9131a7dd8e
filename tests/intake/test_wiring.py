"""Intake wired into the bridge (bridge/service/intake.py, bridge/operations/intake.py, create_app): the REST route
and status, the pages of a real app, the Vault-backed single-use records, the agent's write at the bound version,
fingerprints, the audit record of the submission, the edge's Origin rule for the pages, where links point, the
quarantine hook, expiry, and the bridge's own AppRole policy with child tokens. Real OpenBao throughout."""

from __future__ import annotations

import asyncio
import json
import re
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestClient
from structlog.testing import capture_logs
from yarl import URL

from bridge.app import create_app
from bridge.config import Settings
from bridge.intake import IntakeCodec, IntakeField, MemoryIntakeStore
from bridge.intake.flow import IntakeFlow, IntakeStored
from bridge.keys import INTAKE
from devtools.devvault import DevVault
from tests.conftest import API_KEY_ALICE, API_KEY_BOB, API_KEY_READONLY, OpsClient
from tests.intake.conftest import CSRF_RE, Clock

pytestmark = pytest.mark.integration

Client = TestClient[Any, Any]
ALICE = {"X-API-Key": API_KEY_ALICE}
FINGERPRINT = re.compile(r"hmac-sha256:v1:[A-Za-z0-9_-]{43}")


def canary() -> str:
    return "CANARY-intake-" + secrets.token_hex(8) + " \"<&>'é"


def folder() -> str:
    return f"intake-{secrets.token_hex(4)}"


async def ask(client: Client, path: str, body: dict[str, Any], *, key: str = API_KEY_ALICE,
              status: int = 200) -> dict[str, Any]:
    resp = await client.post(f"/secrets/{path}:request-input", json=body, headers={"X-API-Key": key})
    answer: dict[str, Any] = await resp.json()
    assert resp.status == status, answer
    return answer


async def outcome(client: Client, path: str, eid: str, *, key: str = API_KEY_ALICE,
                  status: int = 200) -> dict[str, Any]:
    resp = await client.get(f"/secrets/{path}:request-input", params={"id": eid}, headers={"X-API-Key": key})
    answer: dict[str, Any] = await resp.json()
    assert resp.status == status, answer
    return answer


async def fill(client: Client, url: str, values: list[str], *, headers: dict[str, str] | None = None
               ) -> tuple[int, str]:
    """Open the link's form (the client keeps its cookie), then submit ``values`` (field 0, 1, ...)."""
    link = URL(url)
    resp = await client.get(link.path)
    html = await resp.text()
    if resp.status != 200:
        return resp.status, html
    match = CSRF_RE.search(html)
    assert match is not None
    form = {"csrf": match.group(1), **{f"f{i}": value for i, value in enumerate(values)}}
    resp = await client.post(link.path, data=form, headers=headers or {})
    return resp.status, await resp.text()


async def vault_read(bao: DevVault, full: str) -> dict[str, Any]:
    async with aiohttp.ClientSession() as http, http.get(f"{bao.addr}/v1/secret/data/{full}",
                                                         headers={"X-Vault-Token": bao.root_token}) as resp:
        body: dict[str, Any] = await resp.json()
        assert resp.status == 200, body
        data: dict[str, Any] = body["data"]
        return data


def audit_records(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


async def test_request_fill_and_status_over_rest(ops_client: OpsClient, bao: DevVault, tmp_path: Path) -> None:
    audit = tmp_path / "audit.jsonl"
    client = await ops_client(audit_log=str(audit))
    path = f"{folder()}/db"
    user, password = canary(), canary()
    answers: list[str] = []
    with capture_logs() as logs:
        pending = await ask(client, path, {"fields": ["user", {"name": "password", "label": "DB password"}],
                                           "description": "Nightly export login"})
        answers.append(json.dumps(pending))
        assert pending["status"] == "pending"
        assert pending["stored"] is False
        assert pending["expected_version"] == 0
        assert pending["url"].startswith(str(client.make_url("/intake/i1.")))
        assert set(pending) == {"path", "status", "stored", "url", "elicitation_id", "expected_version",
                                "expires_at"}
        before = await outcome(client, path, pending["elicitation_id"])
        answers.append(json.dumps(before))
        assert (before["status"], before["stored"]) == ("pending", False)
        status, html = await fill(client, pending["url"], [user, password])
        assert status == 200, html
        assert "version 1" in html
        assert password not in html
        stored = await outcome(client, path, pending["elicitation_id"])
        answers.append(json.dumps(stored))
        # the link works once
        status, html = await fill(client, pending["url"], ["again", "again"])
        assert status == 410
        assert "used already" in html
    assert stored["status"] == "stored"
    assert stored["stored"] is True
    assert stored["version"] == 1
    assert set(stored["fingerprints"]) == {"user", "password"}
    assert all(FINGERPRINT.fullmatch(fp) for fp in stored["fingerprints"].values())
    assert stored["fingerprints"]["user"] != stored["fingerprints"]["password"]
    assert "url" not in stored
    secret = await vault_read(bao, f"mcp/alice/{path}")
    assert secret["data"] == {"user": user, "password": password}
    # the values are in Vault and nowhere else: no answer, log event or audit record has them
    records = audit_records(audit)
    everything = "".join(answers) + audit.read_text() + repr(logs)
    for value in (user, password):
        assert value not in everything
        assert json.dumps(value)[1:-1] not in everything
    submit = [r for r in records if r["operation"] == "kv_request_input.submit"]
    assert len(submit) == 1
    assert submit[0] | {"time": None, "request_id": None, "duration_ms": None, "vault_request_id": None,
                        "intake_id": None} == {
        "time": None, "type": "audit", "request_id": None, "agent": "alice", "auth_method": "intake",
        "operation": "kv_request_input.submit", "path": path, "cas": 0, "fields": ["user", "password"],
        "intake_id": None, "outcome": "ok", "version": 1, "vault_request_id": None, "duration_ms": None}
    assert submit[0]["vault_request_id"]
    ops = [r["operation"] for r in records]
    assert ops.count("kv_request_input") == 1
    assert ops.count("kv_request_input_status") == 2


async def test_an_existing_secret_is_patched_at_the_bound_version(ops_client: OpsClient, bao: DevVault) -> None:
    """The link binds the secret's version at request time: the values are merged into it (other keys stay);
    if the secret changed meanwhile nothing is stored, the page says so and the status is failed/cas_mismatch."""
    client = await ops_client()
    path = f"{folder()}/api"
    put = await client.put(f"/secrets/{path}", json={"data": {"host": "db.internal", "token": "old"}}, headers=ALICE)
    assert put.status == 200
    first = await ask(client, path, {"fields": [{"name": "token", "multiline": True}]})
    assert first["expected_version"] == 1
    pem = "-----BEGIN X-----\r\nAAA\r\n-----END X-----"
    assert (await fill(client, first["url"], [pem]))[0] == 200
    assert (await vault_read(bao, f"mcp/alice/{path}"))["data"] == {"host": "db.internal",
                                                                   "token": pem.replace("\r\n", "\n")}
    second = await ask(client, path, {"fields": ["token"]})
    assert second["expected_version"] == 2
    assert (await client.patch(f"/secrets/{path}", json={"data": {"host": "moved"}}, headers=ALICE)).status == 200
    status, html = await fill(client, second["url"], ["newer"])
    assert status == 409
    assert "The secret has changed" in html
    failed = await outcome(client, path, second["elicitation_id"])
    assert (failed["status"], failed["stored"], failed["code"]) == ("failed", False, "cas_mismatch")
    data = await vault_read(bao, f"mcp/alice/{path}")
    assert data["data"]["token"] != "newer"
    assert data["metadata"]["version"] == 3


async def test_refusals(ops_client: OpsClient) -> None:
    client = await ops_client()
    path = f"{folder()}/x"
    denied = await ask(client, path, {"fields": ["a"]}, key=API_KEY_READONLY, status=403)
    assert denied["error"]["code"] == "forbidden"
    for body, fragment in (({"fields": []}, "fields"), ({"fields": ["a", "a"]}, "twice"),
                           ({"fields": [f"f{i}" for i in range(17)]}, "fields"),
                           ({"fields": ["a"], "description": "x\x1b[31m"}, "control character"),
                           ({"fields": [{"name": "a", "label": "x" * 65}]}, "label"),
                           ({"fields": ["a"], "extra": 1}, "extra")):
        err = await ask(client, path, body, status=400)
        assert err["error"]["code"] == "invalid_request", err
        assert fragment in err["error"]["message"], err
    assert (await ask(client, "a%20b/x", {"fields": ["a"]}, status=400))["error"]["code"] == "invalid_path"
    mine = await ask(client, path, {"fields": ["a"]})
    eid = mine["elicitation_id"]
    for key, where, ident in ((API_KEY_BOB, path, eid), (API_KEY_ALICE, f"{path}2", eid),
                              (API_KEY_ALICE, path, eid[:-2] + "AA"), (API_KEY_ALICE, path, "junk")):
        err = await outcome(client, where, ident, key=key, status=404)
        assert err["error"]["code"] == "intake_not_found"
    assert (await outcome(client, path, eid, key=API_KEY_READONLY, status=403))["error"]["code"] == "forbidden"


async def test_quarantine_hook_voids_the_agents_pending_links(ops_client: OpsClient) -> None:
    """``app[INTAKE].void_agent(agent)``: links the agent holds are refused on every replica (the record is in
    Vault), their status is cancelled/quarantined; a link made afterwards works, and another agent's is untouched."""
    client = await ops_client()
    path = f"{folder()}/q"
    before = await ask(client, path, {"fields": ["a"]})
    bobs = await ask(client, path, {"fields": ["a"]}, key=API_KEY_BOB)
    await client.app[INTAKE].void_agent("alice")
    status, html = await fill(client, before["url"], ["v"])
    assert status == 410
    assert "Request withdrawn" in html
    voided = await outcome(client, path, before["elicitation_id"])
    assert (voided["status"], voided["code"]) == ("cancelled", "quarantined")
    await asyncio.sleep(1.05)  # links are timed to the second: the next one is made after the void
    after = await ask(client, path, {"fields": ["a"]})
    assert (await fill(client, after["url"], ["v"]))[0] == 200
    assert (await fill(client, bobs["url"], ["v"]))[0] == 200


async def test_expired_links_are_refused(ops_client: OpsClient) -> None:
    client = await ops_client(intake_secret="i" * 32)
    clock = Clock()
    flow = client.app[INTAKE]
    flow.codec = IntakeCodec(IntakeCodec.derive_key("i" * 32), 600, clock=clock)
    path = f"{folder()}/e"
    pending = await ask(client, path, {"fields": ["a"]})
    link = URL(pending["url"]).path
    assert (await client.get(link)).status == 200
    clock.now += 600
    resp = await client.get(link)
    assert resp.status == 410
    assert "Link expired" in await resp.text()
    assert (await outcome(client, path, pending["elicitation_id"]))["status"] == "expired"


@pytest.mark.parametrize(("overrides", "base"), [
    ({"intake_public_url": "https://bridge.example.com/vault"}, "https://bridge.example.com/vault"),
    ({"mcp_resource_url": "https://mcp.example.com/team/mcp"}, "https://mcp.example.com/team"),
    ({"mcp_resource_url": "https://mcp.example.com/other"}, "https://mcp.example.com"),
    ({}, None),
])
async def test_where_links_point(ops_client: OpsClient, overrides: dict[str, str], base: str | None) -> None:
    client = await ops_client(**overrides)
    url = (await ask(client, f"{folder()}/l", {"fields": ["a"]}))["url"]
    expected = base if base is not None else str(client.make_url("")).rstrip("/")
    assert url.startswith(expected + "/intake/i1."), url


async def test_the_pages_own_origin_passes_the_edge(ops_client: OpsClient, bao: DevVault) -> None:
    """With ``MCP_ALLOWED_ORIGINS`` set for browser MCP clients, the form's own POST (``Origin`` =
    ``INTAKE_PUBLIC_URL``'s) still goes through: the pages check the origin themselves. A foreign origin is
    refused by the page (nothing stored), the exemption covers only the pages (``/mcp`` still 403), and the
    ``Host`` check still applies to them (DNS rebinding)."""
    client = await ops_client(mcp_allowed_origins=["https://app.example"],
                              intake_public_url="http://bridge.example.com")  # http: the test client has no TLS
    path = f"{folder()}/o"
    pending = await ask(client, path, {"fields": ["a"]})
    status, html = await fill(client, pending["url"], ["v"], headers={"Origin": "https://evil.example"})
    assert status == 403
    assert "Not sent from this page" in html
    status, html = await fill(client, pending["url"], ["v"], headers={"Origin": "http://bridge.example.com"})
    assert status == 200, html
    assert (await vault_read(bao, f"mcp/alice/{path}"))["data"] == {"a": "v"}
    resp = await client.post("/mcp", json={"jsonrpc": "2.0", "id": 1, "method": "ping"},
                             headers={**ALICE, "Origin": "http://bridge.example.com"})
    assert resp.status == 403
    resp = await client.get(URL(pending["url"]).path, headers={"Host": "rebound.example"})
    assert resp.status == 421


async def test_child_tokens_and_the_bridges_own_policy(aiohttp_client: Callable[..., Any],
                                                       child_settings: Callable[..., Settings],
                                                       bao: DevVault) -> None:
    """With the provisioned AppRole (the bridge's policy: its state subtree and the fingerprint key, nothing of an
    agent's secrets) and child tokens: the records, the fingerprints and the write (with alice's child token)
    all work."""
    client: Client = await aiohttp_client(create_app(child_settings()))
    path = f"{folder()}/child"
    pending = await ask(client, path, {"fields": ["k"]})
    assert (await fill(client, pending["url"], ["child-value"]))[0] == 200
    stored = await outcome(client, path, pending["elicitation_id"])
    assert stored["version"] == 1
    assert FINGERPRINT.fullmatch(stored["fingerprints"]["k"])
    assert (await vault_read(bao, f"mcp/alice/{path}"))["data"] == {"k": "child-value"}


async def test_purge_runs_in_the_background() -> None:
    """``run_purge`` deletes the records of expired links every interval and survives a failing round."""
    clock = Clock()
    store = MemoryIntakeStore()

    async def writer(_submission: Any) -> IntakeStored:
        return IntakeStored(1)

    flow = IntakeFlow(IntakeCodec(b"k" * 32, 60, clock=clock), store, writer)
    tickets = [flow.request(agent="alice", path="p", cas=0, fields=(IntakeField("a"),)) for _ in range(3)]
    for ticket in tickets:
        assert await store.claim(ticket, clock.now)
    calls = 0
    purge = store.purge

    async def flaky(now: float) -> int:
        nonlocal calls
        calls += 1
        if calls == 1:
            from bridge.errors import VaultUnavailableBridgeError
            raise VaultUnavailableBridgeError("down")
        return await purge(now)

    store.purge = flaky  # type: ignore[method-assign]
    clock.now += 61
    task = asyncio.create_task(flow.run_purge(0.01))
    try:
        for _ in range(500):
            if all([await store.lookup(t) is None for t in tickets]):
                break
            await asyncio.sleep(0.01)
        assert [await store.lookup(t) for t in tickets] == [None] * 3
        assert calls >= 2
    finally:
        task.cancel()
