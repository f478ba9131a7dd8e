"""Structured logging: the redaction processor, the JSON/console pipeline, the access line, and the canary:
a secret written through every route at LOG_LEVEL=debug never appears in any log line."""

from __future__ import annotations

import base64
import json
import logging
import secrets
import sys
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import structlog
from aiohttp.test_utils import TestClient
from structlog.testing import capture_logs

from bridge.app import create_app
from bridge.config import Settings
from bridge.logging import REDACTED, configure_logging, redact_processor
from devtools.devvault import DevVault
from tests.auth.conftest import hs256
from tests.conftest import API_KEY_ALICE

ALICE = {"X-API-Key": API_KEY_ALICE}


@pytest.fixture
def restore_structlog() -> Iterator[None]:
    """configure_logging is process-wide: put structlog, the stdlib root logger and the hooks back."""
    saved = structlog.get_config()
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    hooks = (sys.excepthook, threading.excepthook)
    yield
    structlog.configure(**saved)
    for handler in list(root.handlers):
        if handler not in handlers:
            root.removeHandler(handler)
    root.setLevel(level)
    logging.captureWarnings(False)
    sys.excepthook, threading.excepthook = hooks


def test_redaction_processor_top_level_and_nested() -> None:
    event = {"event": "x", "token": "t", "Authorization": "Bearer b", "plaintext": "p", "ciphertext": "c",
             "data": {"pw": "v"}, "path": "db/creds", "ctx": {"headers": {"X-API-Key": "k", "Accept": "*/*"},
                                                               "items": [{"secret_id": "s", "ok": 1}]}}
    out = redact_processor(None, "info", dict(event))
    assert out["event"] == "x"
    assert out["path"] == "db/creds"
    for key in ("token", "Authorization", "plaintext", "ciphertext", "data"):
        assert out[key] == REDACTED
    assert out["ctx"]["headers"] == {"X-API-Key": REDACTED, "Accept": "*/*"}
    assert out["ctx"]["items"] == [{"secret_id": REDACTED, "ok": 1}]


def test_deep_nesting_is_redacted_wholesale() -> None:
    deep: dict[str, Any] = {"v": "leaf"}
    for _ in range(10):
        deep = {"n": deep}
    assert "leaf" not in json.dumps(redact_processor(None, "info", {"event": "e", "deep": deep}))


def test_json_lines_with_redaction(capsys: pytest.CaptureFixture[str], restore_structlog: None) -> None:
    configure_logging("debug", "json")
    structlog.get_logger("t").debug("vault.token.renewed", ttl=5, token="s.secret", nested={"password": "pw"})
    line = capsys.readouterr().out.strip().splitlines()[-1]
    record = json.loads(line)
    assert record["event"] == "vault.token.renewed"
    assert record["level"] == "debug"
    assert record["ttl"] == 5
    assert record["token"] == REDACTED
    assert record["nested"] == {"password": REDACTED}
    assert "timestamp" in record
    assert "s.secret" not in line


def test_level_filter_and_console_format(capsys: pytest.CaptureFixture[str], restore_structlog: None) -> None:
    configure_logging("warning", "console")
    log = structlog.get_logger("t")
    log.info("quiet.event")
    log.warning("loud.event", api_key="k-123", n=1)
    out = capsys.readouterr().out
    assert "quiet.event" not in out
    assert "loud.event" in out
    assert "k-123" not in out


@pytest.mark.integration
async def test_access_line(aiohttp_client: Callable[..., Any], make_settings: Callable[..., Settings]) -> None:
    api: TestClient[Any, Any] = await aiohttp_client(create_app(make_settings()))
    with capture_logs() as logs:
        await api.put("/secrets/logs/db", json={"data": {"a": 1}}, headers={**ALICE, "X-Request-Id": "req-1"})
    access = [e for e in logs if e["event"] == "http.request"]
    assert len(access) == 1
    line = access[0]
    assert line["agent"] == "alice"
    assert line["method"] == "PUT"
    assert line["status"] == 200
    assert line["route"] == "/secrets/{tail}"  # the template, never the concrete path
    assert isinstance(line["duration_ms"], float)
    assert line.get("request_id", "req-1") == "req-1"


@pytest.mark.integration
async def test_the_access_line_names_the_mcp_call(aiohttp_client: Callable[..., Any],
                                                  make_settings: Callable[..., Settings]) -> None:
    """On /mcp the access line carries the JSON-RPC method and the tool, so a successful call writes one info
    line, not two (``mcp.tool.called`` is at debug then; a failed call still writes it at info, with its code)."""
    api: TestClient[Any, Any] = await aiohttp_client(create_app(make_settings()))
    headers = {**ALICE, "Accept": "application/json, text/event-stream", "MCP-Protocol-Version": "2026-07-28",
               "Mcp-Method": "tools/call", "Mcp-Name": "whoami"}
    meta = {"io.modelcontextprotocol/protocolVersion": "2026-07-28", "io.modelcontextprotocol/clientCapabilities": {}}
    body = {"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "whoami", "arguments": {},
                                                                         "_meta": meta}}
    with capture_logs() as logs:
        resp = await api.post("/mcp", json=body, headers=headers)
        assert resp.status == 200, await resp.text()
        bad = {**body, "params": {"name": "kv_read", "arguments": {"path": "../x"}, "_meta": meta}}
        resp = await api.post("/mcp", json=bad, headers={**headers, "Mcp-Name": "kv_read"})
        assert resp.status == 200, await resp.text()
    info = [e for e in logs if e["log_level"] == "info"]
    access = [e for e in info if e["event"] == "http.request"]
    assert [(e["mcp_method"], e["tool"]) for e in access] == [("tools/call", "whoami"), ("tools/call", "kv_read")]
    called = [e for e in info if e["event"] == "mcp.tool.called"]
    assert [(e["tool"], e["is_error"]) for e in called] == [("kv_read", True)]


async def _canary_scenario(api: TestClient[Any, Any], canary: str, bad_key: str, jwt: str) -> dict[str, Any]:
    """Write, patch, read, list, delete, undelete, destroy, encrypt, decrypt with the canary, plus bad inputs
    and bad credentials carrying it. Returns the responses' texts and the ciphertext."""
    canary_b64 = base64.b64encode(canary.encode()).decode()
    p = "canary/" + secrets.token_hex(4)
    bearer = {"Authorization": f"Bearer {jwt}"}
    seen: list[str] = []

    async def call(method: str, url: str, *, expect: int, **kw: Any) -> Any:
        resp = await api.request(method, url, **kw)
        text = await resp.text()
        assert resp.status == expect, (method, url, resp.status, text)
        seen.append(text)
        return json.loads(text) if text else None

    await call("PUT", f"/secrets/{p}", json={"data": {"password": canary, "deep": {"list": [canary]}}},
               headers=ALICE, expect=200)
    await call("PUT", f"/secrets/{p}", json={"data": {"v": canary}, "cas": 1}, headers=bearer, expect=200)
    await call("PUT", f"/secrets/{p}", json={"data": {"v": canary}, "cas": 1}, headers=ALICE, expect=409)
    await call("PATCH", f"/secrets/{p}", json={"data": {"other": canary}}, headers=ALICE, expect=200)
    await call("GET", f"/secrets/{p}", headers=ALICE, expect=200)
    await call("GET", f"/secrets/{p}?version=1", headers=bearer, expect=200)
    await call("GET", f"/secrets/{p}:metadata", headers=ALICE, expect=200)
    await call("GET", "/secrets?prefix=canary/", headers=ALICE, expect=200)
    await call("DELETE", f"/secrets/{p}", headers=ALICE, expect=204)
    await call("GET", f"/secrets/{p}", headers=ALICE, expect=404)
    await call("POST", f"/secrets/{p}:undelete", json={"versions": [3]}, headers=ALICE, expect=200)
    await call("POST", f"/secrets/{p}:destroy", json={"versions": [1]}, headers=ALICE, expect=200)
    enc = await call("POST", "/transit/encrypt", json={"key": "canary", "plaintext": canary_b64},
                     headers=ALICE, expect=200)
    dec = await call("POST", "/transit/decrypt", json={"key": "canary", "ciphertext": enc["ciphertext"]},
                     headers=ALICE, expect=200)
    assert dec["plaintext"] == canary_b64
    await call("POST", "/transit/decrypt", json={"key": "canary", "ciphertext": "vault:v1:" + canary_b64},
               headers=ALICE, expect=400)
    # bad inputs carrying the canary: refused without echoing it
    await call("PUT", f"/secrets/{p}", json={"data": canary}, headers=ALICE, expect=400)
    await call("PUT", f"/secrets/{p}", json={"data": {}, canary: 1}, headers=ALICE, expect=400)
    await call("PUT", f"/secrets/{p}", data=f'{{"data": "{canary}"',
               headers={**ALICE, "Content-Type": "application/json"}, expect=400)
    await call("POST", "/transit/encrypt", json={"key": "canary", "plaintext": canary + "!"}, headers=ALICE,
               expect=400)
    await call("GET", "/whoami", headers={"X-API-Key": bad_key}, expect=401)
    await call("GET", "/whoami", headers={"Authorization": f"Bearer {canary}"}, expect=401)
    await call("GET", "/echo-headers", headers={**ALICE, "Cookie": f"s={canary}", "X-Vault-Token": canary},
               expect=200)
    assert any(canary in text for text in seen)  # the canary really went through Vault and back
    return {"seen": seen, "ciphertext": enc["ciphertext"], "canary_b64": canary_b64}


@pytest.mark.integration
async def test_canary_never_reaches_a_log_line(aiohttp_client: Callable[..., Any],
                                               make_settings: Callable[..., Settings], bao: DevVault,
                                               capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture,
                                               restore_structlog: None) -> None:
    canary = "CANARY-" + secrets.token_hex(12)
    bad_key = "CANARYKEY-" + secrets.token_hex(8)
    jwt = hs256({"sub": "alice", "scopes": ["read", "write", "delete", "list"]})
    caplog.set_level(logging.DEBUG)
    configure_logging("debug", "json")  # 1) the real pipeline, redaction processor included, to stdout
    api: TestClient[Any, Any] = await aiohttp_client(create_app(make_settings(log_level="debug")))
    first = await _canary_scenario(api, canary, bad_key, jwt)
    stdout = capsys.readouterr().out
    lines = [json.loads(line) for line in stdout.splitlines() if line.startswith("{")]
    assert len([e for e in lines if e["event"] == "http.request"]) == len(first["seen"])

    with capture_logs() as captured:  # 2) the raw event dicts, before any processor
        second = await _canary_scenario(api, canary, bad_key, jwt)
    assert len([e for e in captured if e["event"] == "http.request"]) == len(second["seen"])

    leaks = [canary, first["canary_b64"], first["ciphertext"], second["ciphertext"], bad_key, API_KEY_ALICE, jwt,
             bao.root_token]
    for secret in leaks:
        assert secret not in stdout, "leaked into the JSON log lines"
        assert secret not in caplog.text, "leaked into stdlib logging"
        for event in captured:
            assert secret not in repr(event), event


def test_stdlib_loggers_go_through_the_redaction(capsys: pytest.CaptureFixture[str],
                                                 restore_structlog: None) -> None:
    """aiohttp's, asyncio's, any library's logging: the same JSON lines, free text scrubbed."""
    configure_logging("debug", "json")
    secret = "CANARY" + secrets.token_hex(8)
    try:
        raise ValueError(f"Invalid header value char:\n\n  b'X-API-Key: {secret}\\r'\n  ^")
    except ValueError:
        logging.getLogger("aiohttp.server").exception("Error handling request from %s", "127.0.0.1")
    logging.getLogger("asyncio").warning("connecting to https://user:%s@vault.example:8200", secret)
    logging.getLogger("some.library").info("sent Authorization: Bearer %s and X-Vault-Token=%s", secret, secret)
    logging.getLogger("some.library").info("token hvs.%s", "A" * 24 + secret)
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(lines) == 4
    assert all("timestamp" in record and "level" in record for record in lines)
    assert lines[0]["logger"] == "aiohttp.server"
    assert "ValueError" in lines[0]["exception"]
    assert "vault.example:8200" in lines[1]["event"]
    for record in lines:
        assert secret not in json.dumps(record)


@pytest.mark.parametrize(("text", "kept"), [
    ("cannot reach vault at https://u:p4ss@vault:8200/v1", "vault:8200/v1"),
    ("Got more than 8190 bytes when reading: b'k3y-material...'.", "Got more than 8190 bytes"),
    ("X-API-Key: k3y-material", "X-API-Key: "),
    ("authorization=Basic k3y-material", "authorization="),
    ("token s.k3y-materialk3y-materialk3y", "token "),
])
def test_scrub_text(text: str, kept: str) -> None:
    from bridge.logging import safe_url, scrub_text

    out = scrub_text(text)
    assert kept in out
    assert "k3y-material" not in out
    assert "p4ss" not in out
    assert safe_url("https://u:p4ss@vault:8200") == "https://vault:8200"
    assert safe_url("https://vault:8200") == "https://vault:8200"


@pytest.mark.parametrize("text", [
    "http.request", "tools/call", "kv_read", "", "b'raw'", 'b"raw"', "X-Api-Key: k3y", "SET-COOKIE=abc",
    "Bearer abcdefgh1234", "https://u:p@vault:8200", "hvs." + "A" * 24, "s." + "b" * 20, "s." + "b" * 19,
    "author\u0131zation: k3y", "Bearer\u00a0abcdefgh1234", "proxy-authorization: x", "cookie",
])
def test_scrub_text_shortcut_changes_nothing(text: str) -> None:
    """The substring pre-check only skips texts that no scrubber matches: the result is that of every scrubber
    applied in turn (non-ASCII text always takes the regular expressions: their case folding knows the dotless i)."""
    from bridge.logging import _SCRUBBERS, scrub_text

    expected = text
    for pattern, replacement in _SCRUBBERS:
        expected = pattern.sub(replacement, expected)
    assert scrub_text(text) == expected
