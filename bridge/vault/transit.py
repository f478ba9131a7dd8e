"""Transit secrets engine.

Transit's work depends on what the agent sent (key type, batch size, input size), so its operations are
``expensive`` calls: a timeout there says nothing about Vault's health and does not feed the circuit breaker
(see :func:`bridge.vault.breaker.counts_as_failure`).

Every operation is ``POST {mount}/{op}/{key}[/{algorithm}]`` with Vault's own field names (:meth:`TransitAPI.call`).
Batches (``batch_input``) are answered per item in ``batch_results``; when items fail Vault still answers 400
for ``encrypt``/``decrypt`` (unless ``partial_failure_response_code`` is sent, and even then when every item
failed) with the per-item results in the body: those come back as data here, not as an exception.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from bridge.vault.client import quote_path
from bridge.vault.errors import VaultInvalidRequestError, VaultNotFoundError

if TYPE_CHECKING:
    from bridge.vault.client import VaultClient


class TransitAPI:
    def __init__(self, client: VaultClient) -> None:
        self._c = client

    async def encrypt(self, mount: str, key: str, plaintext_b64: str, *, token: str | None = None) -> dict[str, Any]:
        """``{"ciphertext", "key_version"}``."""
        resp = await self._c.request("POST", f"{mount}/encrypt/{quote_path(key)}", operation="transit.encrypt",
                                     token=token, json_body={"plaintext": plaintext_b64}, expensive=True)
        return resp.data or {}

    async def decrypt(self, mount: str, key: str, ciphertext: str, *, token: str | None = None) -> dict[str, Any]:
        """``{"plaintext": <base64>}``."""
        resp = await self._c.request("POST", f"{mount}/decrypt/{quote_path(key)}", operation="transit.decrypt",
                                     token=token, json_body={"ciphertext": ciphertext}, expensive=True)
        return resp.data or {}

    async def call(self, mount: str, op: str, key: str, body: dict[str, Any], *, algorithm: str | None = None,
                   token: str | None = None) -> dict[str, Any]:
        """One Transit operation on ``key`` (``encrypt``, ``decrypt``, ``rewrap``, ``sign``, ``verify``,
        ``hmac``); ``algorithm`` goes into the URL (hash for sign/verify/hmac)."""
        path = f"{mount}/{op}/{quote_path(key)}"
        if algorithm:
            path += f"/{quote_path(algorithm)}"
        if "batch_input" in body and op in ("encrypt", "decrypt"):
            body = {**body, "partial_failure_response_code": 207}
        try:
            resp = await self._c.request("POST", path, operation=f"transit.{op}", token=token, json_body=body,
                                         expensive=True)
        except VaultInvalidRequestError as exc:
            results = ((exc.body or {}).get("data") or {}).get("batch_results")
            if "batch_input" in body and isinstance(results, list):
                return {"batch_results": results}
            raise
        return resp.data or {}

    async def random(self, mount: str, *, nbytes: int, fmt: str, token: str | None = None) -> dict[str, Any]:
        """``{"random_bytes"}``."""
        resp = await self._c.request("POST", f"{mount}/random", operation="transit.random", token=token,
                                     json_body={"bytes": nbytes, "format": fmt}, expensive=True)
        return resp.data or {}

    async def create_key(self, mount: str, key: str, key_type: str, *, key_size: int | None = None,
                         token: str | None = None) -> dict[str, Any]:
        """Create ``key`` (idempotent: an existing key comes back unchanged, whatever ``key_type`` says).
        ``key_size`` (bytes) is for ``hmac`` keys."""
        body: dict[str, Any] = {"type": key_type}
        if key_size is not None:
            body["key_size"] = key_size
        resp = await self._c.request("POST", f"{mount}/keys/{quote_path(key)}", operation="transit.create_key",
                                     token=token, json_body=body, expensive=True)
        return resp.data or {}

    async def read_key(self, mount: str, key: str, *, token: str | None = None) -> dict[str, Any]:
        """The key's info (type, versions, public keys); :class:`VaultNotFoundError` when it does not exist."""
        resp = await self._c.request("GET", f"{mount}/keys/{quote_path(key)}", operation="transit.read_key",
                                     token=token)
        return resp.data or {}

    async def list_keys(self, mount: str, *, token: str | None = None) -> list[str]:
        """Every key name of the mount (Vault cannot list by prefix); empty when there is none."""
        try:
            # GET ?list=true: Vault's twin of the LIST verb (as kv.list), which every proxy passes
            resp = await self._c.request("GET", f"{mount}/keys", operation="transit.list_keys", token=token,
                                         params={"list": "true"})
        except VaultNotFoundError:
            return []
        keys = (resp.data or {}).get("keys")
        return [str(k) for k in keys] if isinstance(keys, list) else []
