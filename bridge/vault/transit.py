"""Transit secrets engine."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from bridge.vault.client import quote_path

if TYPE_CHECKING:
    from bridge.vault.client import VaultClient


class TransitAPI:
    def __init__(self, client: VaultClient) -> None:
        self._c = client

    async def encrypt(self, mount: str, key: str, plaintext_b64: str, *, token: str | None = None) -> dict[str, Any]:
        """``{"ciphertext", "key_version"}``."""
        resp = await self._c.request("POST", f"{mount}/encrypt/{quote_path(key)}", operation="transit.encrypt",
                                     token=token, json_body={"plaintext": plaintext_b64})
        return resp.data or {}

    async def decrypt(self, mount: str, key: str, ciphertext: str, *, token: str | None = None) -> dict[str, Any]:
        """``{"plaintext": <base64>}``."""
        resp = await self._c.request("POST", f"{mount}/decrypt/{quote_path(key)}", operation="transit.decrypt",
                                     token=token, json_body={"ciphertext": ciphertext})
        return resp.data or {}
