"""Nothing secret in any log line or error body, aiohttp's own included: a real ``vault-mcp-bridge serve``
process at ``LOG_LEVEL=debug`` (stdout and stderr captured: every line the process writes), raw requests over a
socket.

The findings: a header with a control character (an API key read from a file saved with CRLF) was logged in
full by aiohttp's bad-request logging and echoed in its 400 body; ``VAULT_ADDR`` user info was logged at start.
"""

from __future__ import annotations

import asyncio
import json
import secrets
from collections.abc import Callable

import aiohttp
import pytest

from devtools.devvault import DevVault, free_port
from tests.conftest import API_KEY_ALICE, API_KEYS
from tests.support.servers import BridgeProcess

pytestmark = pytest.mark.integration


def canary() -> str:
    return "CANARY" + secrets.token_hex(10)


async def raw(port: int, request: bytes) -> bytes:
    """Send ``request`` exactly; everything the bridge answers until it closes."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(request)
    await writer.drain()
    try:
        return await asyncio.wait_for(reader.read(), timeout=10)
    finally:
        writer.close()


def malformed_requests() -> dict[str, tuple[str, bytes]]:
    """name -> (canary, raw request). Each carries its own canary where aiohttp's parser fails."""
    cases: dict[str, tuple[str, bytes]] = {}

    def add(name: str, build: Callable[[str], bytes]) -> None:
        value = canary()
        cases[name] = (value, build(value))

    head = b"GET /whoami HTTP/1.1\r\nHost: localhost\r\n"
    add("key file saved with CRLF", lambda c: head + f"X-API-Key: {c}\r\r\n\r\n".encode())
    add("CR inside the key", lambda c: head + f"X-API-Key: {c}\rmore\r\n\r\n".encode())
    add("NUL in the key", lambda c: head + f"X-API-Key: {c}\x00\r\n\r\n".encode())
    add("key over 8190 bytes", lambda c: head + f"X-API-Key: {c}{'k' * 9000}\r\n\r\n".encode())
    add("bearer token with CR", lambda c: head + f"Authorization: Bearer {c}\r\r\n\r\n".encode())
    add("cookie with NUL", lambda c: head + f"Cookie: s={c}\x00\r\n\r\n".encode())
    add("header name with the secret", lambda c: head + f"{c}\x01: x\r\n\r\n".encode())
    add("request line over 8190 bytes", lambda c: f"GET /secrets/{c}{'p' * 9000} HTTP/1.1\r\n"
                                                  "Host: localhost\r\n\r\n".encode())
    add("control character in the path", lambda c: f"GET /secrets/{c}\x01 HTTP/1.1\r\nHost: localhost\r\n\r\n"
                                                    .encode())
    return cases


async def test_malformed_requests_never_echo_or_log_a_header(spawn_bridge: Callable[..., BridgeProcess],
                                                             bao: DevVault) -> None:
    env = {"VAULT_ADDR": bao.addr, "VAULT_TOKEN": bao.root_token, "API_KEYS_JSON": json.dumps(API_KEYS),
           "LOG_LEVEL": "debug", "PYTHONASYNCIODEBUG": "1"}
    bridge = await asyncio.to_thread(spawn_bridge, env)
    cases = malformed_requests()
    answers = {}
    for name, (_value, request) in cases.items():
        answers[name] = await raw(bridge.port, request)
    # the same secrets in well-formed requests too: a wrong key is a 401, a path is a 404
    wrong_key = canary()
    answers["wrong key"] = await raw(bridge.port, f"GET /whoami HTTP/1.1\r\nHost: localhost\r\nX-API-Key: "
                                                  f"{wrong_key}\r\nConnection: close\r\n\r\n".encode())
    bridge.stop()  # flush and close: the log is complete
    log = bridge.log_path.read_text(errors="replace")
    for name, (value, _request) in cases.items():
        answer = answers[name]
        assert value.encode() not in answer, f"{name}: echoed in the response"
        assert value not in log, f"{name}: in the log"
        assert int(answer.split(b" ", 2)[1]) == 400, (name, answer[:300])
        body = json.loads(answer.partition(b"\r\n\r\n")[2])
        assert body["error"]["code"] == "invalid_request", (name, body)
    assert wrong_key.encode() not in answers["wrong key"]
    assert wrong_key not in log
    assert API_KEY_ALICE not in log and bao.root_token not in log  # noqa: PT018
    events = [json.loads(line) for line in log.splitlines() if line.startswith("{")]
    assert sum(e["event"] == "http.malformed_request" for e in events) == len(cases)
    assert all(line.startswith("{") for line in log.splitlines() if line.strip()), "a line outside the pipeline"


async def test_vault_addr_user_info_is_never_shown(spawn_bridge: Callable[..., BridgeProcess],
                                                  bao: DevVault) -> None:
    password = canary()
    userinfo = f"vaultuser:{password}@"
    host_port = bao.addr.removeprefix("http://")
    seen: list[str] = []
    for addr in (f"http://{userinfo}{host_port}", f"http://{userinfo}127.0.0.1:{free_port()}"):  # up, and down
        env = {"VAULT_ADDR": addr, "VAULT_TOKEN": bao.root_token, "API_KEYS_JSON": json.dumps(API_KEYS),
               "LOG_LEVEL": "debug", "VAULT_TIMEOUT": "1s"}
        bridge = await asyncio.to_thread(spawn_bridge, env)
        async with aiohttp.ClientSession() as session:
            for path in ("/status", "/metrics", "/healthz", "/readyz", "/secrets/userinfo/x"):
                async with session.get(bridge.url + path, headers={"X-API-Key": API_KEY_ALICE}) as resp:
                    seen.append(await resp.text())
        bridge.stop()
        seen.append(bridge.log_path.read_text(errors="replace"))
    assert any(host_port in text for text in seen)  # the address itself is shown (status page, start-up log)
    for text in seen:
        assert password not in text
        assert "vaultuser" not in text
