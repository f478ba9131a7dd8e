"""Our own async Vault HTTP client (no hvac)."""

from bridge.vault.client import VaultClient, VaultResponse
from bridge.vault.errors import VaultError
from bridge.vault.lifetime import TokenKeeper

__all__ = ["TokenKeeper", "VaultClient", "VaultError", "VaultResponse"]
