"""Fingerprints (``SecretValues.fingerprints``, bridge/service/secrets.py) against the real OpenBao: keyed HMACs by
Transit with the bridge's own key, stable per value, different per value, in one batch call, and never the value
or a plain hash of it. Reads by reference and intake results both use them."""

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
from bridge.service.secrets import SecretValues, fingerprint_text
from bridge.vault import TokenKeeper, VaultClient
from bridge.vault.auth import StaticToken
from devtools.devvault import DevVault

pytestmark = pytest.mark.integration


def _access(settings: Settings, vault: VaultClient, token: str) -> VaultAccess:
    return VaultAccess(settings, vault, bridge_tokens=TokenKeeper(vault, StaticToken(SecretStr(token))))


def _b64url(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


@pytest.fixture
async def vault(bao: DevVault) -> AsyncIterator[VaultClient]:
    async with VaultClient(bao.addr) as client:
        yield client


def test_format() -> None:
    digest = bytes(range(32))
    assert fingerprint_text("vault:v1:" + base64.b64encode(digest).decode()) == "hmac-sha256:v1:" + _b64url(digest)
    assert fingerprint_text("vault:v12:" + base64.b64encode(b"x").decode()).startswith("hmac-sha256:v12:")
    for bad in ("", "vault:v1:", "vault:1:eA==", "hmac:v1:eA==", "vault:vx:eA==", "vault:v1:e"):
        with pytest.raises(ValueError, match="not a vault:vN: HMAC"):
            fingerprint_text(bad)


async def test_fingerprints_are_keyed_hmacs_of_the_bridge_key(bao: DevVault, vault: VaultClient,
                                                              make_settings: Callable[..., Settings]) -> None:
    settings = make_settings()
    assert settings.fingerprint_key_name == "mcp-bridge-fingerprint"  # what provision makes (default FINGERPRINT_KEY)
    values = SecretValues(_access(settings, vault, bao.root_token))
    value = "s3cret \"é\" \n"
    got = await values.fingerprints([value, value, "other"])
    assert got[0] == got[1] != got[2]
    assert got[0].startswith("hmac-sha256:v1:")
    assert await values.fingerprints([value]) == [got[0]]  # stable
    raw_digest = got[0].rsplit(":", 1)[1]
    digest = base64.urlsafe_b64decode(raw_digest + "=" * (-len(raw_digest) % 4))
    assert len(digest) == 32
    assert digest != hashlib.sha256(value.encode()).digest()  # keyed: never a plain hash
    # the same as Transit's own answer for that key
    raw = await vault.transit.call("transit", "hmac", "mcp-bridge-fingerprint",
                                   {"input": base64.b64encode(value.encode()).decode()}, token=bao.root_token,
                                   algorithm="sha2-256")
    assert raw.single is not None
    assert got[0] == fingerprint_text(raw.single.hmac or "")
    assert value not in str(got)
    assert await values.fingerprints([]) == []


async def test_a_missing_key_is_a_bridge_error(bao: DevVault, vault: VaultClient,
                                               make_settings: Callable[..., Settings]) -> None:
    """``FINGERPRINT_KEY`` names the key; one that does not exist is a bridge error, never a value or a fingerprint
    of another key."""
    values = SecretValues(_access(make_settings(fingerprint_key="no-such-key"), vault, bao.root_token))
    with pytest.raises(BridgeError) as info:
        await values.fingerprints(["v"])
    assert info.value.code == "fingerprint_unavailable"
    assert info.value.message != "v"


@pytest.mark.parametrize("value", ["", "a b", "bad.name", "UPPER"])
def test_fingerprint_key_setting_is_validated(value: str, make_settings: Callable[..., Any]) -> None:
    if value == "":
        assert make_settings(fingerprint_key=value).fingerprint_key == ""
        return
    with pytest.raises(ConfigError, match="FINGERPRINT_KEY"):
        make_settings(fingerprint_key=value)
