"""Fixtures of the trust tests: the bridge's own AppRole credentials from ``bridge.provision``."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest

from bridge.config import Settings
from bridge.provision import ProvisionOptions, provision
from devtools.devvault import DevVault
from tests.conftest import TEST_AGENTS


@dataclass(frozen=True)
class BridgeCreds:
    role_id: str
    secret_id: str


@pytest.fixture(scope="session")
def bridge_creds(bao: DevVault) -> BridgeCreds:
    """A fresh secret id of the provisioned ``vault-mcp-bridge`` AppRole (its policy: mint child tokens)."""
    result = asyncio.run(provision(bao.addr, bao.root_token, ProvisionOptions(agents=TEST_AGENTS),
                                   new_secret_id=True))
    assert result.role_id
    assert result.secret_id
    return BridgeCreds(result.role_id, result.secret_id)


@pytest.fixture
def child_settings(make_settings: Callable[..., Settings], bridge_creds: BridgeCreds) -> Callable[..., Settings]:
    def make(**overrides: Any) -> Settings:
        base: dict[str, Any] = {"vault_token": None, "vault_role_id": bridge_creds.role_id,
                                "vault_secret_id": bridge_creds.secret_id, "child_token_enabled": True}
        base.update(overrides)
        return make_settings(**base)

    return make
