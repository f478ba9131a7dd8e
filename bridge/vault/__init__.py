"""Our own async Vault HTTP client (no hvac). It imports nothing from the rest of the bridge."""

from bridge.vault.client import VaultClient
from bridge.vault.errors import VaultError
from bridge.vault.lifetime import TokenKeeper
from bridge.vault.models import VaultResponse

__all__ = ["TokenKeeper", "VaultClient", "VaultError", "VaultResponse"]
