"""The audit trail against a real OpenBao: one line per operation, written before the response, no secrets."""

from __future__ import annotations

import base64
import json
import secrets
from pathlib import Path
from typing import Any

import pytest

from bridge.app import create_app
from bridge.audit import AuditLog
from bridge.config import Settings
from bridge.keys import METRICS
from devtools.devvault import DevVault
from tests.conftest import API_KEY_ALICE, API_KEY_READONLY, OpsClient

pytestmark = pytest.mark.integration

ALICE = {"X-API-Key": API_KEY_ALICE}


def records(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


async def test_canary_never_reaches_the_audit_file(ops_client: OpsClient, tmp_path: Path,
                                                   bao: DevVault) -> None:
    audit = tmp_path / "audit.jsonl"
    client = await ops_client(audit_log=str(audit))
    canary = "CANARY-" + secrets.token_hex(12)
    canary_b64 = base64.b64encode(canary.encode()).decode()
    base = f"audit-{secrets.token_hex(4)}"

    resp = await client.put(f"/secrets/{base}/db", json={"data": {"password": canary}}, headers=ALICE)
    assert resp.status == 200
    # The acknowledged write is in the file the moment the response is here (flushed before sending).
    lines = records(audit)
    assert lines[-1]["operation"] == "kv_write"
    assert lines[-1]["outcome"] == "ok"
    assert lines[-1]["request_id"] == resp.headers["X-Request-Id"]
    assert lines[-1]["version"] == (await resp.json())["version"]

    await client.patch(f"/secrets/{base}/db", json={"data": {"extra": canary}}, headers=ALICE)
    await client.get(f"/secrets/{base}/db", headers=ALICE)
    await client.get(f"/secrets/{base}/db?version=1", headers=ALICE)
    await client.get(f"/secrets/{base}/db:metadata", headers=ALICE)
    await client.get("/secrets", params={"prefix": f"{base}/"}, headers=ALICE)
    enc = await client.post("/transit/encrypt", json={"key": "audit-key", "plaintext": canary_b64}, headers=ALICE)
    ciphertext = (await enc.json())["ciphertext"]
    dec = await client.post("/transit/decrypt", json={"key": "audit-key", "ciphertext": ciphertext}, headers=ALICE)
    assert (await dec.json())["plaintext"] == canary_b64
    await client.delete(f"/secrets/{base}/db", headers=ALICE)
    await client.post(f"/secrets/{base}/db:undelete", json={"versions": [2]}, headers=ALICE)
    await client.post(f"/secrets/{base}/db:destroy", json={"versions": [1]}, headers=ALICE)
    await client.get(f"/secrets/{base}/missing", headers=ALICE)
    denied = await client.delete(f"/secrets/{base}/db", headers={"X-API-Key": API_KEY_READONLY})
    assert denied.status == 403

    text = audit.read_text()
    for needle in (canary, canary_b64, ciphertext, ciphertext.split(":")[-1], API_KEY_ALICE, API_KEY_READONLY,
                   bao.root_token):
        assert needle not in text
    lines = records(audit)
    ops = [(r["operation"], r["outcome"], r.get("code")) for r in lines]
    assert ops == [
        ("kv_write", "ok", None), ("kv_patch", "ok", None), ("kv_read", "ok", None), ("kv_read", "ok", None),
        ("kv_metadata", "ok", None), ("kv_list", "ok", None), ("transit_encrypt", "ok", None),
        ("transit_decrypt", "ok", None), ("kv_delete", "ok", None), ("kv_undelete", "ok", None),
        ("kv_destroy", "ok", None), ("kv_read", "error", "not_found"), ("kv_delete", "denied", "forbidden"),
    ]
    by_op = {r["operation"]: r for r in lines}
    for r in lines:
        assert set(r) <= {"time", "type", "request_id", "agent", "auth_method", "operation", "path", "prefix",
                          "key", "version", "versions", "cas", "outcome", "code", "status", "vault_request_id",
                          "duration_ms", "answer"}
        assert r["agent"] == "alice"
        assert r["auth_method"] == "api_key"
        assert r["request_id"]
    assert by_op["kv_write"]["path"] == f"{base}/db"
    assert by_op["kv_write"]["vault_request_id"]
    assert by_op["kv_patch"]["version"] == 2
    assert lines[3]["version"] == 1  # the read of ?version=1
    assert lines[3]["answer"] == "values"  # how the read answered (values, references or wrapped)
    assert by_op["kv_list"]["prefix"] == f"{base}/"
    assert by_op["transit_encrypt"]["key"] == "audit-key"
    assert by_op["transit_encrypt"]["version"] == 1
    assert by_op["kv_undelete"]["versions"] == [2]
    assert by_op["kv_destroy"]["versions"] == [1]
    assert lines[-2]["status"] == 404
    assert lines[-2]["vault_request_id"] is None
    assert lines[-1]["status"] == 403


async def test_audit_to_stdout(ops_client: OpsClient, capsys: pytest.CaptureFixture[str]) -> None:
    client = await ops_client(audit_log="stdout")
    resp = await client.put("/secrets/audit-stdout/x", json={"data": {"k": "stdout-canary"}}, headers=ALICE)
    assert resp.status == 200
    out = capsys.readouterr().out
    lines = [json.loads(x) for x in out.splitlines() if x.startswith("{") and '"type":"audit"' in x]
    assert [(r["operation"], r["path"]) for r in lines] == [("kv_write", "audit-stdout/x")]
    assert "stdout-canary" not in "".join(x for x in out.splitlines() if '"type":"audit"' in x)


async def test_off_by_default_writes_nothing(ops_client: OpsClient, capsys: pytest.CaptureFixture[str]) -> None:
    client = await ops_client()
    assert (await client.put("/secrets/audit-off/x", json={"data": {"k": "v"}}, headers=ALICE)).status == 200
    assert '"type":"audit"' not in capsys.readouterr().out


async def test_unwritable_audit_fails_closed(ops_client: OpsClient) -> None:
    client = await ops_client(audit_log="/dev/full")  # every write fails with ENOSPC
    resp = await client.put("/secrets/audit-full/x", json={"data": {"k": "v"}}, headers=ALICE)
    assert resp.status == 503
    assert (await resp.json())["error"]["code"] == "audit_unavailable"
    metrics = client.app[METRICS].render().decode()
    assert "bridge_audit_write_failures_total 1.0" in metrics


async def test_bad_audit_path_stops_startup(make_settings: Any, tmp_path: Path) -> None:
    from aiohttp.test_utils import TestServer

    settings: Settings = make_settings(audit_log=str(tmp_path / "missing-dir" / "audit.jsonl"))
    server = TestServer(create_app(settings))
    with pytest.raises(FileNotFoundError):
        await server.start_server()
    await server.close()


async def test_fsync_mode_writes_and_syncs(tmp_path: Path) -> None:
    log = AuditLog(str(tmp_path / "a.jsonl"), fsync=True)
    log.open()
    await log.write({"operation": "kv_write", "outcome": "ok"})
    log.close()
    assert records(tmp_path / "a.jsonl") == [{"operation": "kv_write", "outcome": "ok"}]
    assert (tmp_path / "a.jsonl").stat().st_mode & 0o777 == 0o600


# -- every refusal, once (docs/hardening-tests.md, "Errors and contracts") --------------------------------

async def test_every_refusal_of_an_identity_is_audited_once_as_denied(ops_client: OpsClient, tmp_path: Path) -> None:
    """Refusals raised before or outside a service method (the REST handler's scope check, the MCP scope check,
    the rate limiter, the body limit) leave one record with ``outcome: denied`` and the error code, as do
    those raised inside one (path, scope); none is recorded twice; unauthenticated requests are not audited."""
    from tests.mcp.conftest import modern_body, modern_headers

    audit = tmp_path / "audit.jsonl"
    client = await ops_client(audit_log=str(audit), rate_limit_requests=8, max_body_bytes=4096)
    readonly = {"X-API-Key": API_KEY_READONLY}
    sent: list[tuple[int, str]] = []

    async def send(method: str, url: str, headers: dict[str, str], **kw: Any) -> None:
        resp = await client.request(method, url, headers=headers, **kw)
        sent.append((resp.status, resp.headers["X-Request-Id"]))

    await send("PUT", "/secrets/denied/x", readonly, json={"data": {"a": 1}})  # handler: scope, before the body
    await send("DELETE", "/secrets/denied/x", readonly)  # service: scope
    await send("GET", "/secrets/bad*name", ALICE)  # service: path
    await send("PUT", "/secrets/denied/big", ALICE, json={"data": {"v": "a" * 8000}})  # body limit
    await send("POST", "/mcp", modern_headers(API_KEY_READONLY, "tools/call", "kv_write"),
               json=modern_body("tools/call", {"name": "kv_write", "arguments": {"path": "x", "data": {}}}))
    await send("GET", "/whoami", {"X-API-Key": "wrong-key-" + "x" * 20})  # no identity: not an audit record
    for _ in range(4):  # alice (the read-only key is alice too): 5 so far, 8 allowed; the 9th on are refused
        await send("GET", "/whoami", ALICE)
    await send("POST", "/mcp", modern_headers(API_KEY_ALICE, "tools/call", "kv_read"),
               json=modern_body("tools/call", {"name": "kv_read", "arguments": {"path": "x"}}))
    await send("GET", "/secrets/denied/x", ALICE)
    assert [s for s, _ in sent] == [403, 403, 400, 413, 403, 401, 200, 200, 200, 429, 429, 429]

    lines = records(audit)
    by_request: dict[str, list[dict[str, Any]]] = {}
    for r in lines:
        by_request.setdefault(r["request_id"], []).append(r)
    assert all(len(rs) == 1 for rs in by_request.values()), by_request  # never two records for one refusal
    denied = [(r["operation"], r["outcome"], r["code"], r["status"]) for r in lines if r["outcome"] != "ok"]
    assert denied == [
        ("kv_write", "denied", "forbidden", 403),
        ("kv_delete", "denied", "forbidden", 403),
        ("kv_read", "denied", "invalid_path", 400),
        ("kv_write", "denied", "payload_too_large", 413),
        ("kv_write", "denied", "insufficient_scope", 403),
        ("whoami", "denied", "rate_limited", 429),
        ("kv_read", "denied", "rate_limited", 429),
        ("kv_read", "denied", "rate_limited", 429),
    ]
    refused_ids = {rid for status, rid in sent if status >= 400 and status != 401}
    assert refused_ids == {r["request_id"] for r in lines if r["outcome"] == "denied"}
    assert all(r["agent"] == "alice" for r in lines)


async def test_client_request_id_is_kept_beside_the_bridges_own(ops_client: OpsClient, tmp_path: Path) -> None:
    audit = tmp_path / "audit.jsonl"
    client = await ops_client(audit_log=str(audit))
    resp = await client.get("/secrets/audit-rid/none", headers={**ALICE, "X-Request-Id": "client-trace-42"})
    assert resp.status == 404
    ours = resp.headers["X-Request-Id"]
    assert ours != "client-trace-42"
    resp = await client.get("/secrets/audit-rid/none", headers={**ALICE, "X-Request-Id": "bad id; drop"})
    first, second = records(audit)
    assert (first["request_id"], first["client_request_id"]) == (ours, "client-trace-42")
    assert second["request_id"] == resp.headers["X-Request-Id"]
    assert "client_request_id" not in second  # malformed: not recorded at all
