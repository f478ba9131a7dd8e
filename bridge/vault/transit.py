"""Transit secrets engine.

Transit's work depends on what the agent sent (key type, batch size, input size), so its operations are
``expensive`` calls: a timeout there says nothing about Vault's health and does not feed the circuit breaker
(see :func:`bridge.vault.breaker.counts_as_failure`).

Every operation is ``POST {mount}/{op}/{key}[/{algorithm}]`` with Vault's own field names (:meth:`TransitAPI.call`).
Batches (``batch_input``) are answered per item in ``batch_results``; when items fail Vault still answers 400
for ``encrypt``/``decrypt`` (unless ``partial_failure_response_code`` is sent, and even then when every item
failed) with the per-item results in the body: those come back as a result here, not as an exception.
"""

from __future__ import annotations

from typing import Any

from bridge.vault.api import LIST, Requester, quote_path
from bridge.vault.errors import VaultInvalidRequestError, VaultNotFoundError
from bridge.vault.models import TransitKey, TransitResult


class TransitAPI:
    def __init__(self, requester: Requester) -> None:
        self._requester = requester

    async def call(self, mount: str, op: str, key: str, body: dict[str, Any], *, token: str,
                   algorithm: str | None = None) -> TransitResult:
        """One Transit operation on ``key`` (``encrypt``, ``decrypt``, ``rewrap``, ``sign``, ``verify``,
        ``hmac``); ``algorithm`` goes into the URL (hash for sign/verify/hmac)."""
        path = f"{mount}/{op}/{quote_path(key)}"
        if algorithm:
            path += f"/{quote_path(algorithm)}"
        batch = "batch_input" in body
        if batch and op in ("encrypt", "decrypt"):
            body = {**body, "partial_failure_response_code": 207}
        try:
            resp = await self._requester.request("POST", path, operation=f"transit.{op}", token=token,
                                                 json_body=body, expensive=True)
        except VaultInvalidRequestError as exc:
            data = (exc.body or {}).get("data") if isinstance(exc.body, dict) else None
            if batch and isinstance(data, dict) and isinstance(data.get("batch_results"), list):
                return TransitResult.parse(data, batch=True)
            raise
        return TransitResult.parse(resp.data, batch=batch)

    async def random(self, mount: str, *, nbytes: int, fmt: str, token: str) -> str:
        """``nbytes`` random bytes from Vault, in ``fmt`` (base64 or hex)."""
        resp = await self._requester.request("POST", f"{mount}/random", operation="transit.random", token=token,
                                             json_body={"bytes": nbytes, "format": fmt}, expensive=True)
        return str((resp.data or {}).get("random_bytes") or "")

    async def create_key(self, mount: str, key: str, key_type: str, *, token: str,
                         key_size: int | None = None) -> TransitKey:
        """Create ``key`` (idempotent: an existing key comes back unchanged, whatever ``key_type`` says).
        ``key_size`` (bytes) is for ``hmac`` keys."""
        body: dict[str, Any] = {"type": key_type}
        if key_size is not None:
            body["key_size"] = key_size
        resp = await self._requester.request("POST", f"{mount}/keys/{quote_path(key)}",
                                             operation="transit.create_key", token=token, json_body=body,
                                             expensive=True)
        return TransitKey.parse(resp.data)

    async def read_key(self, mount: str, key: str, *, token: str) -> TransitKey:
        """The key's description; :class:`VaultNotFoundError` when it does not exist."""
        resp = await self._requester.request("GET", f"{mount}/keys/{quote_path(key)}", operation="transit.read_key",
                                             token=token)
        return TransitKey.parse(resp.data)

    async def list_keys(self, mount: str, *, token: str) -> list[str]:
        """Every key name of the mount (Vault cannot list by prefix); empty when there is none."""
        try:
            resp = await self._requester.request("GET", f"{mount}/keys", operation="transit.list_keys", token=token,
                                                 params=LIST)
        except VaultNotFoundError:
            return []
        keys = (resp.data or {}).get("keys")
        return [str(k) for k in keys] if isinstance(keys, list) else []
