"""Fingerprints (bridge/service/fingerprint.py) against the real OpenBao: keyed HMACs by Transit with the bridge's
own key, stable per value, different per value, in one batch call, and never the value or a plain hash of it."""

from __future__ import annotations

import base64
import hashlib
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from pydantic import SecretStr

from bridge.config import ConfigError, Settings
from bridge.errors import BridgeError
from bridge.service.access import VaultAccess
from bridge.service.fingerprint import Fingerprinter, format_fingerprint
from bridge.vault import TokenKeeper, VaultClient
from bridge.vault.auth import StaticToken
from devtools.devvault import DevVault

pytestmark = pytest.mark.integration


def _access(settings: Settings, vault: VaultClient, token: str) -> VaultAccess:
    return VaultAccess(settings, vault, bridge_tokens=TokenKeeper(vault, StaticToken(SecretStr(token))))


@pytest.fixture
async def vault(bao: DevVault) -> AsyncIterator[VaultClient]:
    async with VaultClient(bao.addr) as client:
        yield client


def test_format() -> None:
    assert format_fingerprint("vault:v1:abc+/=") == "hmac-sha256:v1:abc+/="
    assert format_fingerprint("vault:v12:x") == "hmac-sha256:v12:x"
    for bad in ("", "vault:v1:", "vault:1:x", "hmac:v1:x", "vault:vx:y"):
        with pytest.raises(ValueError, match="not a Transit HMAC"):
            format_fingerprint(bad)


async def test_fingerprints_are_keyed_hmacs_of_the_bridge_key(bao: DevVault, vault: VaultClient,
                                                              make_settings: Callable[..., Settings]) -> None:
    access = _access(make_settings(), vault, bao.root_token)
    prints = Fingerprinter(access)
    assert prints.key == "mcp-bridge-fingerprint"  # what provision makes (default FINGERPRINT_KEY)
    value = "s3cret \"é\" \n"
    got = await prints.fingerprints({"a": value, "b": value, "c": "other"})
    assert got["a"] == got["b"] != got["c"]
    assert got["a"].startswith("hmac-sha256:v1:")
    assert await prints.fingerprint(value) == got["a"]  # stable
    digest = base64.b64decode(got["a"].rsplit(":", 1)[1])
    assert len(digest) == 32
    assert digest != hashlib.sha256(value.encode()).digest()  # keyed: never a plain hash
    # the same as Transit's own answer for that key
    raw = await vault.transit.call("transit", "hmac", "mcp-bridge-fingerprint",
                                   {"input": base64.b64encode(value.encode()).decode()}, token=bao.root_token,
                                   algorithm="sha2-256")
    assert raw.single is not None
    assert got["a"] == "hmac-sha256:" + (raw.single.hmac or "").removeprefix("vault:")
    assert value not in str(got)
    assert await prints.fingerprints({}) == {}


async def test_a_missing_key_is_a_bridge_error(bao: DevVault, vault: VaultClient,
                                               make_settings: Callable[..., Settings]) -> None:
    """``FINGERPRINT_KEY`` names the key; one that does not exist is a bridge error (Vault's 4xx), never a value
    or a fingerprint of another key."""
    prints = Fingerprinter(_access(make_settings(fingerprint_key="no-such-key"), vault, bao.root_token))
    assert prints.key == "no-such-key"
    with pytest.raises(BridgeError) as info:
        await prints.fingerprint("v")
    assert info.value.status < 500 or info.value.code.startswith("vault")
    assert info.value.message != "v"


@pytest.mark.parametrize("value", ["", "a b", "bad.name", "UPPER"])
def test_fingerprint_key_setting_is_validated(value: str, make_settings: Callable[..., Any]) -> None:
    if value == "":
        assert make_settings(fingerprint_key=value).fingerprint_key == ""
        return
    with pytest.raises(ConfigError, match="FINGERPRINT_KEY"):
        make_settings(fingerprint_key=value)
