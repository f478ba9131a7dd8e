"""``GET /metrics`` scraped from a live bridge on a real OpenBao and parsed with prometheus-client's parser."""

from __future__ import annotations

import json
import secrets
import urllib.request
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from bridge.keys import KEEPER
from bridge.ops.metrics import Metrics, error_kind
from bridge.ops.stats import OpsStats
from bridge.vault.client import CallStats
from devtools.devvault import DevVault
from tests.conftest import API_KEY_ALICE, API_KEY_BOB, OpsClient

pytestmark = pytest.mark.integration

ALICE = {"X-API-Key": API_KEY_ALICE}


def samples(text: str) -> list[tuple[str, dict[str, str], float]]:
    out = []
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out.append((s.name, dict(s.labels), float(s.value)))
    return out


def value(all_samples: list[tuple[str, dict[str, str], float]], name: str, **labels: str) -> float:
    """Sum of the samples named ``name`` whose labels include ``labels``."""
    return sum(v for n, lab, v in all_samples if n == name and all(lab.get(k) == x for k, x in labels.items()))


async def scrape(client: Any) -> tuple[str, list[tuple[str, dict[str, str], float]]]:
    resp = await client.get("/metrics")
    assert resp.status == 200
    assert resp.headers["Content-Type"].startswith("text/plain")
    text = await resp.text()
    return text, samples(text)


async def test_requests_vault_calls_and_errors_are_counted(ops_client: OpsClient) -> None:
    client = await ops_client()
    secret_path = f"metrics-{secrets.token_hex(4)}/deep/name"
    canary = "canary-" + secrets.token_hex(8)
    resp = await client.put(f"/secrets/{secret_path}", json={"data": {"v": canary}}, headers=ALICE)
    assert resp.status == 200, await resp.text()
    assert (await client.get(f"/secrets/{secret_path}", headers=ALICE)).status == 200
    assert (await client.get(f"/secrets/{secret_path}-missing", headers=ALICE)).status == 404
    assert (await client.get("/whoami", headers={"X-API-Key": "wrong-key-" + "x" * 20})).status == 401
    assert (await client.get(f"/no/such/{secret_path}")).status == 404

    text, s = await scrape(client)
    assert value(s, "bridge_http_requests_total", route="/secrets/{tail}", method="PUT", status="200",
                 auth_method="api_key") == 1
    assert value(s, "bridge_http_requests_total", route="/secrets/{tail}", method="GET", status="404",
                 auth_method="api_key") == 1
    assert value(s, "bridge_http_requests_total", route="/whoami", status="401", auth_method="none") == 1
    assert value(s, "bridge_http_requests_total", route="<unmatched>", status="404") == 1
    assert value(s, "bridge_http_request_duration_seconds_count", route="/secrets/{tail}", method="GET") == 2
    assert value(s, "bridge_vault_request_duration_seconds_count", operation="kv.write") == 1
    assert value(s, "bridge_vault_request_duration_seconds_count", operation="kv.read") == 2
    assert value(s, "bridge_vault_errors_total", operation="kv.read", kind="not_found") == 1
    # No label carries the path below the agent, a value, a key or a token; no agent label by default.
    for needle in ("metrics-", canary, API_KEY_ALICE, "wrong-key"):
        assert needle not in text
    assert all("agent" not in labels for _, labels, _ in s)


async def test_rate_limit_rejections_and_agent_labels(ops_client: OpsClient) -> None:
    client = await ops_client(rate_limit_requests=2, metrics_agent_labels=True)
    statuses = [(await client.get("/whoami", headers={"X-API-Key": API_KEY_BOB})).status for _ in range(3)]
    assert statuses == [200, 200, 429]
    _, s = await scrape(client)
    assert value(s, "bridge_rate_limit_rejections_total", agent="bob") == 1
    assert value(s, "bridge_http_requests_total", route="/whoami", status="429", agent="bob") == 1
    assert value(s, "bridge_http_requests_total", route="/whoami", status="200", agent="bob") == 2


async def test_rate_limit_rejections_without_agent_labels(ops_client: OpsClient) -> None:
    client = await ops_client(rate_limit_requests=1)
    for _ in range(3):
        await client.get("/whoami", headers={"X-API-Key": API_KEY_BOB})
    text, s = await scrape(client)
    assert value(s, "bridge_rate_limit_rejections_total") == 2
    assert "bob" not in text


def _create_token(bao: DevVault, ttl: str) -> str:
    req = urllib.request.Request(
        f"{bao.addr}/v1/auth/token/create",
        data=json.dumps({"policies": ["default"], "ttl": ttl, "renewable": True}).encode(),
        headers={"X-Vault-Token": bao.root_token, "Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(req, timeout=5) as resp:
        return str(json.load(resp)["auth"]["client_token"])


async def test_token_renewal_is_counted(ops_client: OpsClient, bao: DevVault) -> None:
    token = _create_token(bao, "1h")
    client = await ops_client(vault_token=token)
    keeper = client.app[KEEPER]
    await keeper.verify()
    await keeper.renew()
    _, s = await scrape(client)
    assert value(s, "bridge_vault_token_events_total", event="renewal") == 1
    assert value(s, "bridge_vault_token_events_total", event="login") == 0
    assert value(s, "bridge_vault_request_duration_seconds_count", operation="token.renew_self") == 1


def test_registries_are_per_instance() -> None:
    a, b = Metrics(), Metrics()
    a.token_event("login")
    assert value(samples(a.render().decode()), "bridge_vault_token_events_total", event="login") == 1
    assert value(samples(b.render().decode()), "bridge_vault_token_events_total", event="login") == 0


def test_hooks_fold_unknown_label_values() -> None:
    m = Metrics()
    m.observe_vault(CallStats("kv.read", 0.01, "VaultPermissionDeniedError"))
    m.observe_vault(CallStats("kv.read", 0.01, "ok"))
    m.operation("kv_read", "mcp", "ok")
    m.operation("../secret/path", "mcp", "not_found")
    m.operation("kv_read", "mcp", "Some Weird Outcome")
    m.operation("kv_read", "rest", "ok")  # REST requests are counted per route, not here
    from bridge.vault.childtokens import BrokerStats

    assert value(samples(m.render().decode()), "bridge_child_token_events_total", event="mint") == 0
    m.watch_child_tokens(BrokerStats(mints=3, reuses=7, renewals=1))
    s = samples(m.render().decode())
    assert value(s, "bridge_vault_errors_total", operation="kv.read", kind="permission_denied") == 1
    assert value(s, "bridge_vault_request_duration_seconds_count", operation="kv.read") == 2
    assert value(s, "bridge_mcp_tool_calls_total", tool="kv_read", outcome="ok") == 1
    assert value(s, "bridge_mcp_tool_calls_total", tool="other", outcome="not_found") == 1
    assert value(s, "bridge_mcp_tool_calls_total", tool="kv_read", outcome="other") == 1
    assert value(s, "bridge_child_token_events_total", event="mint") == 3
    assert value(s, "bridge_child_token_events_total", event="cache_hit") == 7
    assert value(s, "bridge_child_token_events_total", event="renewal") == 1
    assert value(s, "bridge_child_token_events_total", event="revoke") == 0


def test_error_kind() -> None:
    assert error_kind("VaultNotFoundError") == "not_found"
    assert error_kind("VaultSealedError") == "sealed"
    assert error_kind("VaultError") == "error"
    assert error_kind("CircuitOpenError") == "circuit_open"
    assert error_kind("ok") == "ok"


def test_ops_stats_is_bounded_and_windowed() -> None:
    now = [6000.0]
    stats = OpsStats(minutes=5, max_agents=3, max_errors=4, clock=lambda: now[0])
    for i in range(10):
        stats.record(agent=f"agent{i}", status=200, code="", request_id=f"r{i}", route="/whoami")
    stats.record(agent="agent0", status=429, code="rate_limited", request_id="rl", route="/whoami")
    rows = {r.agent: r for r in stats.agents()}
    assert set(rows) == {"agent0", "agent1", "agent2", "(other)"}
    assert rows["agent0"].requests == 2
    assert rows["agent0"].rejections == 1
    assert rows["(other)"].requests == 7
    assert len(stats._last_seen) == 3  # bounded
    for i in range(6):
        stats.record(agent="agent1", status=500 + i, code="vault_error", request_id=f"e{i}", route="/x")
    assert [e.request_id for e in stats.recent_errors()] == ["e5", "e4", "e3", "e2"]
    per_minute = stats.per_minute()
    assert len(per_minute) == 5
    assert per_minute[-1].requests == 17
    assert per_minute[-1].rejections == 1
    now[0] += 60 * 6  # the window moves on: old minutes drop out
    assert stats.agents() == []
    assert all(r.requests == 0 for r in stats.per_minute())


async def test_mcp_calls_and_child_tokens_are_counted_and_audited(ops_client: OpsClient, tmp_path: Any) -> None:
    from tests.mcp.conftest import modern_body, modern_headers

    audit = tmp_path / "audit.jsonl"
    client = await ops_client(child_token_enabled=True, audit_log=str(audit))

    async def call(tool: str, arguments: dict[str, Any]) -> dict[str, Any]:
        resp = await client.post("/mcp", json=modern_body("tools/call", {"name": tool, "arguments": arguments}),
                                 headers=modern_headers(API_KEY_ALICE, "tools/call", tool))
        assert resp.status == 200, await resp.text()
        body: dict[str, Any] = await resp.json()
        return body

    path = f"mcp-metrics-{secrets.token_hex(4)}"
    canary = "mcp-canary-" + secrets.token_hex(6)
    assert not (await call("kv_write", {"path": path, "data": {"v": canary}}))["result"].get("isError")
    assert not (await call("kv_read", {"path": path}))["result"].get("isError")
    assert (await call("kv_read", {"path": path + "-missing"}))["result"]["isError"] is True
    # REST uses the same broker: a second request within the reuse window is a cache hit.
    assert (await client.get(f"/secrets/{path}", headers=ALICE)).status == 200

    text, s = await scrape(client)
    assert value(s, "bridge_mcp_tool_calls_total", tool="kv_write", outcome="ok") == 1
    assert value(s, "bridge_mcp_tool_calls_total", tool="kv_read", outcome="ok") == 1
    assert value(s, "bridge_mcp_tool_calls_total", tool="kv_read", outcome="not_found") == 1
    assert value(s, "bridge_child_token_events_total", event="mint") >= 1
    assert value(s, "bridge_child_token_events_total", event="cache_hit") >= 1
    assert value(s, "bridge_http_requests_total", route="/mcp", method="POST", status="200") == 3
    assert canary not in text
    assert path not in text

    lines = [json.loads(x) for x in audit.read_text().splitlines()]
    assert [(r["operation"], r["path"], r["outcome"]) for r in lines] == [
        ("kv_write", path, "ok"), ("kv_read", path, "ok"), ("kv_read", path + "-missing", "error"),
        ("kv_read", path, "ok")]
    assert canary not in audit.read_text()
