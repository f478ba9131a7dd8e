"""``API_KEYS_FILE`` (issue 10, "Keys and secrets from files, changed without a restart"): re-read when it
changes (polled every second) and on SIGHUP; added keys work, removed keys get 401, in-flight requests finish,
a bad new file is refused with a log line and the old keys stay in force. Against a listening bridge; the
SIGHUP path also against a ``vault-mcp-bridge serve`` process and OpenBao."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Awaitable, Callable, Mapping, Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from structlog.testing import capture_logs

from bridge.auth.api_key import ApiKeyAuthenticator
from bridge.config import parse_api_keys
from bridge.keys import AUTH
from devtools.devvault import DevVault, free_port
from devtools.fakevault import FakeVault
from tests.auth.conftest import MakeClient

KEY_A = "file-key-alice-" + "a" * 16
KEY_B = "file-key-bob-" + "b" * 18
KEY_C = "file-key-carol-" + "c" * 16


def write_keys(path: Path, keys: dict[str, Any] | str) -> None:
    """Replace the file atomically (write a sibling, rename), as secret managers and editors do."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text(keys if isinstance(keys, str) else json.dumps(keys))
    os.replace(tmp, path)


async def status_of(client: TestClient[Any, Any], key: str) -> int:
    return (await client.get("/whoami", headers={"X-API-Key": key})).status


async def eventually(check: Callable[[], Awaitable[bool]], within: float = 15.0) -> float:
    """Seconds until ``check()`` held; fails after ``within`` seconds (generous: the machine may be loaded)."""
    started = time.monotonic()
    while time.monotonic() - started < within:
        if await check():
            return time.monotonic() - started
        await asyncio.sleep(0.05)
    raise AssertionError(f"not within {within}s")


async def file_client(make_client: MakeClient, path: Path, **env: str) -> TestClient[Any, Any]:
    return await make_client(env={"API_KEYS_FILE": str(path), **env}, api_keys_json=None)


def test_the_file_is_polled_at_least_every_two_seconds() -> None:
    from bridge.auth import keyfile

    assert keyfile.POLL_SECONDS <= 2.0


async def test_added_key_works_and_removed_key_is_refused_without_restart(make_client: MakeClient,
                                                                          tmp_path: Path) -> None:
    path = tmp_path / "api-keys.json"
    write_keys(path, {KEY_A: "alice"})
    client = await file_client(make_client, path)
    assert await status_of(client, KEY_A) == 200
    assert await status_of(client, KEY_B) == 401

    write_keys(path, {KEY_A: "alice", KEY_B: {"agent": "bob", "scopes": ["read"]}})
    waited = await eventually(lambda: _is(client, KEY_B, 200))
    print(f"added key accepted after {waited:.2f}s")  # at most one poll interval on an idle machine
    body = await (await client.get("/whoami", headers={"X-API-Key": KEY_B})).json()
    assert (body["subject"], body["scopes"]) == ("bob", ["read"])

    write_keys(path, {KEY_B: "bob"})
    await eventually(lambda: _is(client, KEY_A, 401))
    assert await status_of(client, KEY_B) == 200


async def _is(client: TestClient[Any, Any], key: str, status: int) -> bool:
    return await status_of(client, key) == status


BAD_FILES = {
    "not JSON": '{"file-key-carol-cccccccccccccccc": "carol"',
    "a short key": json.dumps({"short-key": "carol"}),
    "an unknown scope": json.dumps({KEY_C: {"agent": "carol", "scopes": ["admin"]}}),
    "not an object": "[]",
}


async def test_a_bad_new_file_is_refused_and_the_old_keys_stay(make_client: MakeClient, tmp_path: Path) -> None:
    path = tmp_path / "api-keys.json"
    write_keys(path, {KEY_A: "alice"})
    client = await file_client(make_client, path)
    watcher = client.app[AUTH].api_keys_file
    assert watcher is not None
    with capture_logs() as logs:
        write_keys(path, BAD_FILES["a short key"])
        await eventually(lambda: _refused(logs))  # seen by the poller
        assert not await watcher.check()  # polling the same bad file again: no new line
    refused = [e for e in logs if e["event"] == "auth.api_keys.reload_refused"]
    assert len(refused) == 1
    assert refused[0]["log_level"] == "error"
    assert refused[0]["keys_in_force"] == 1
    assert "API_KEYS_FILE" in refused[0]["error"]
    assert "short-key" not in repr(logs)  # never a key in the log
    assert await status_of(client, KEY_A) == 200
    write_keys(path, {KEY_C: "carol"})  # fixed: loaded
    await eventually(lambda: _is(client, KEY_C, 200))
    assert await status_of(client, KEY_A) == 401


@pytest.mark.parametrize("case", list(BAD_FILES))
async def test_every_kind_of_bad_file_is_refused(tmp_path: Path, case: str) -> None:
    """The reload entry point itself (no poller running), for each kind of bad file."""
    path = tmp_path / "api-keys.json"
    write_keys(path, {KEY_A: "alice"})
    from bridge.auth.keyfile import ApiKeyFile

    auth = ApiKeyAuthenticator(parse_api_keys(path.read_text()))
    watcher = ApiKeyFile(str(path), auth)
    write_keys(path, BAD_FILES[case])
    with capture_logs() as logs:
        assert not await watcher.check()
        assert not await watcher.check()
    assert [e["event"] for e in logs] == ["auth.api_keys.reload_refused"]
    assert len(auth) == 1
    identity = auth.authenticate(cast(web.Request, SimpleNamespace(headers={"X-API-Key": KEY_A})))
    assert identity is not None
    assert identity.subject == "alice"


async def _refused(logs: Sequence[Mapping[str, Any]]) -> bool:
    return any(e["event"] == "auth.api_keys.reload_refused" for e in logs)


async def test_a_deleted_file_keeps_the_keys(make_client: MakeClient, tmp_path: Path) -> None:
    path = tmp_path / "api-keys.json"
    write_keys(path, {KEY_A: "alice"})
    client = await file_client(make_client, path)
    with capture_logs() as logs:
        path.unlink()
        await eventually(lambda: _refused(logs))
    assert await status_of(client, KEY_A) == 200
    write_keys(path, {KEY_B: "bob"})
    await eventually(lambda: _is(client, KEY_B, 200))


async def test_in_flight_requests_finish(make_client: MakeClient, fake_vault: FakeVault, tmp_path: Path) -> None:
    path = tmp_path / "api-keys.json"
    write_keys(path, {KEY_A: "alice"})
    client = await file_client(make_client, path)
    await client.put("/secrets/slow", json={"data": {"v": 1}}, headers={"X-API-Key": KEY_A})
    fake_vault.slow("secret/data/mcp/alice/slow", delay=2.0, method="GET", times=1)
    reads_before = len(fake_vault.calls("secret/data/mcp/alice/slow", method="GET"))
    slow = asyncio.create_task(client.get("/secrets/slow", headers={"X-API-Key": KEY_A}))
    await eventually(lambda: _vault_saw(fake_vault, reads_before))  # authenticated, now waiting on Vault
    watcher = client.app[AUTH].api_keys_file
    assert watcher is not None
    write_keys(path, {KEY_B: "bob"})
    assert await watcher.check(reason="test")  # the key is gone now (the reload entry point, no waiting)
    assert await status_of(client, KEY_A) == 401
    resp = await slow
    assert resp.status == 200
    assert (await resp.json())["data"] == {"v": 1}


async def _vault_saw(fake_vault: FakeVault, before: int) -> bool:
    return len(fake_vault.calls("secret/data/mcp/alice/slow", method="GET")) > before


async def test_reload_entry_point_rereads_even_an_unchanged_file(make_client: MakeClient, tmp_path: Path) -> None:
    """What the SIGHUP handler calls: it wakes the watcher at once and forces a reload."""
    path = tmp_path / "api-keys.json"
    write_keys(path, {KEY_A: "alice"})
    client = await file_client(make_client, path)
    watcher = client.app[AUTH].api_keys_file
    assert watcher is not None
    with capture_logs() as logs:
        watcher.request_reload()
        await eventually(lambda: _reloaded(logs, "sighup"))
    line = next(e for e in logs if e["event"] == "auth.api_keys.reloaded")
    assert (line["keys"], line["keys_before"]) == (1, 1)


async def _reloaded(logs: Sequence[Mapping[str, Any]], reason: str) -> bool:
    return any(e["event"] == "auth.api_keys.reloaded" and e["reason"] == reason for e in logs)


def test_both_forms_are_a_config_error(tmp_path: Path) -> None:
    from bridge.config import ConfigError, Settings

    path = tmp_path / "api-keys.json"
    write_keys(path, {KEY_A: "alice"})
    with pytest.raises(ConfigError, match=r"^invalid setting API_KEYS_FILE: set only one of API_KEYS_JSON"):
        Settings.from_env({"API_KEYS_FILE": str(path), "API_KEYS_JSON": json.dumps({KEY_B: "bob"})})
    write_keys(path, {"short": "alice"})
    with pytest.raises(ConfigError, match=r"^invalid setting API_KEYS_FILE: entry #1: an API key must have"):
        Settings.from_env({"API_KEYS_FILE": str(path)})
    with pytest.raises(ConfigError, match=r"^invalid setting API_KEYS_FILE: cannot read"):
        Settings.from_env({"API_KEYS_FILE": str(tmp_path / "missing.json")})


def wait_for(check: Callable[[], bool], within: float = 30.0) -> None:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.05)
    raise AssertionError(f"not within {within}s")


@pytest.mark.integration
def test_sighup_reloads_a_serving_bridge(bao: DevVault, tmp_path: Path) -> None:
    """``vault-mcp-bridge serve`` installs the SIGHUP handler: the process keeps serving (SIGHUP's default would
    end it) and reloads the file, logging ``reason=sighup``; a key added to the file then works."""
    from bridge.config import Settings

    path = tmp_path / "api-keys.json"
    write_keys(path, {KEY_A: "alice"})
    port = free_port()
    names = {n.upper() for n in Settings.model_fields}
    env = {k: v for k, v in os.environ.items() if k not in names}
    env.update(PORT=str(port), HOST="127.0.0.1", VAULT_ADDR=bao.addr, VAULT_TOKEN=bao.root_token,
               API_KEYS_FILE=str(path), LOG_FORMAT="json", LOG_LEVEL="info")
    log_path = tmp_path / "bridge.log"
    with open(log_path, "wb") as log_file:
        proc = subprocess.Popen([sys.executable, "-m", "bridge", "serve"], env=env, stdout=log_file,
                                stderr=subprocess.STDOUT)

    def key_status(key: str) -> int:
        assert proc.poll() is None, log_path.read_text()
        request = urllib.request.Request(f"http://127.0.0.1:{port}/whoami", headers={"X-API-Key": key})
        try:
            with urllib.request.urlopen(request, timeout=10) as resp:
                return int(resp.status)
        except urllib.error.HTTPError as exc:
            return exc.code
        except (urllib.error.URLError, ConnectionError):
            return 0

    def sighup_logged() -> bool:
        return any(json.loads(line).get("reason") == "sighup" for line in log_path.read_text().splitlines()
                   if '"auth.api_keys.reloaded"' in line)

    try:
        wait_for(lambda: key_status(KEY_A) == 200)
        proc.send_signal(signal.SIGHUP)
        wait_for(sighup_logged)
        assert proc.poll() is None
        write_keys(path, {KEY_A: "alice", KEY_B: "bob"})
        wait_for(lambda: key_status(KEY_B) == 200)
        assert key_status(KEY_A) == 200
    finally:
        proc.terminate()
        proc.wait(timeout=20)
    assert KEY_A not in log_path.read_text()
