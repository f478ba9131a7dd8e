"""Hashed API keys: ``API_KEYS_JSON`` may hold ``sha256:<hex>`` instead of the key, and ``hash-key`` prints it."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from collections.abc import Callable
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from bridge.app import create_app
from bridge.auth.api_key import hashed_form
from bridge.config import ConfigError, Settings
from devtools.fakevault import FakeVault

KEY = "carol-plaintext-key-" + "c" * 20


@pytest.fixture
async def client(fake_vault: FakeVault, aiohttp_client: Callable[..., Any]) -> TestClient[Any, Any]:
    keys = {hashed_form(KEY): {"agent": "carol", "scopes": ["read"]},
            "sha256:" + hashlib.sha256(b"dave-key-0123456789").hexdigest().upper(): "dave"}
    settings = Settings.from_env({"API_KEYS_JSON": json.dumps(keys)}, vault_addr=fake_vault.addr,
                                 vault_token=fake_vault.root_token)
    c: TestClient[Any, Any] = await aiohttp_client(create_app(settings))
    return c


async def test_hashed_keys_authenticate(client: TestClient[Any, Any]) -> None:
    resp = await client.get("/whoami", headers={"X-API-Key": KEY})
    assert resp.status == 200
    assert (await resp.json())["subject"] == "carol"
    assert (await resp.json())["scopes"] == ["read"]
    resp = await client.get("/whoami", headers={"X-API-Key": "dave-key-0123456789"})  # upper-case hex works too
    assert (await resp.json())["subject"] == "dave"


async def test_the_hash_itself_is_not_a_key(client: TestClient[Any, Any]) -> None:
    resp = await client.get("/whoami", headers={"X-API-Key": hashed_form(KEY)})
    assert resp.status == 401


@pytest.mark.parametrize("bad", ["sha256:abc", "sha256:" + "z" * 64, "sha256:" + "a" * 63 + " "])
def test_malformed_hashes_are_a_config_error(bad: str) -> None:
    with pytest.raises(ConfigError, match=r"API_KEYS_JSON.*64 hex digits"):
        Settings.from_env({"API_KEYS_JSON": json.dumps({bad: "x"})})


def test_hash_key_command_reads_stdin() -> None:
    out = subprocess.run([sys.executable, "-m", "bridge", "hash-key"], input=KEY + "\n", capture_output=True,
                         text=True, timeout=30, check=True)
    assert out.stdout.strip() == "sha256:" + hashlib.sha256(KEY.encode()).hexdigest()
    assert KEY not in out.stdout + out.stderr
    short = subprocess.run([sys.executable, "-m", "bridge", "hash-key"], input="short\n", capture_output=True,
                           text=True, timeout=30, check=False)
    assert short.returncode == 2
