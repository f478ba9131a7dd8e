"""Fingerprints of secret values: keyed HMACs computed by Vault Transit with the bridge's own key.

A fingerprint lets an agent (and its model) tell whether two values are equal, or whether a value changed,
without learning it: ``POST {TRANSIT_MOUNT}/hmac/{FINGERPRINT_KEY} {"algorithm": "sha2-256", "batch_input":
[{"input": base64(value)}, …]}`` with the bridge's own token (:meth:`~bridge.service.access.VaultAccess.as_bridge`;
its policy allows exactly that path, the algorithm goes in the body for that reason, and no agent can HMAC with that
key, so nobody can test guesses against a fingerprint). Never a plain hash of the value.

The format is ``hmac-sha256:v<key version>:<base64 of the 32-byte HMAC>``: Vault's ``vault:v1:<base64>`` with
its ``vault:`` prefix replaced by the algorithm, so a fingerprint says what it is and cannot be mistaken for a
Transit ciphertext (``vault:v1:…``) an agent could hand back to ``transit_decrypt``; the key version stays, since
rotating ``FINGERPRINT_KEY`` changes every fingerprint. Its characters are all in the redaction label alphabet
(``A-Z a-z 0-9 _ . : + / = -``) of :mod:`bridge.broker.redact`.

A value is fingerprinted as the UTF-8 bytes of a string; a JSON value that is no string is fingerprinted as its
compact JSON text (``json.dumps(value, separators=(",", ":"), ensure_ascii=False)``), as references resolve it.

Interface (one instance per app, made from the :class:`~bridge.service.access.VaultAccess`):

- ``await Fingerprinter(access).fingerprint(value) -> str``;
- ``await Fingerprinter(access).fingerprints({"field": value, …}) -> {"field": fingerprint, …}`` (one Transit
  batch call for all of them);
- ``format_fingerprint("vault:v1:…") -> "hmac-sha256:v1:…"``.

Errors: a Vault failure is a :class:`~bridge.errors.BridgeError` (``from_vault_error``, "the fingerprint").
"""

from __future__ import annotations

import base64
from collections.abc import Mapping

from bridge.errors import VaultUnavailableBridgeError, from_vault_error
from bridge.policy import default_fingerprint_key
from bridge.service.access import VaultAccess
from bridge.vault.errors import VaultError
from bridge.vault.models import TransitResult

ALGORITHM = "sha2-256"
PREFIX = "hmac-sha256:"


def format_fingerprint(vault_hmac: str) -> str:
    """``vault:v1:<base64>`` → ``hmac-sha256:v1:<base64>`` (a ``ValueError`` for anything else)."""
    scheme, _, rest = vault_hmac.partition(":")
    version, _, digest = rest.partition(":")
    if scheme != "vault" or not version.startswith("v") or not version[1:].isdigit() or not digest:
        raise ValueError("not a Transit HMAC")
    return f"{PREFIX}{version}:{digest}"


def _input(value: str) -> str:
    return base64.b64encode(value.encode()).decode()


class Fingerprinter:
    """Fingerprints with ``FINGERPRINT_KEY`` (default ``{DEFAULT_PREFIX}-bridge-fingerprint``) on
    ``TRANSIT_MOUNT``, with the bridge's own token."""

    def __init__(self, access: VaultAccess) -> None:
        settings = access.settings
        self._access = access
        self._mount = settings.transit_mount
        self.key = settings.fingerprint_key or default_fingerprint_key(settings.default_prefix)

    async def fingerprint(self, value: str) -> str:
        return (await self.fingerprints({"value": value}))["value"]

    async def fingerprints(self, values: Mapping[str, str]) -> dict[str, str]:
        """The fingerprint of each value, by the same keys (one Vault call)."""
        if not values:
            return {}
        names = list(values)
        # the algorithm in the body: the bridge's policy grants exactly {transit}/hmac/{key}, not .../sha2-256
        body = {"algorithm": ALGORITHM, "batch_input": [{"input": _input(values[name])} for name in names]}

        async def go(token: str) -> TransitResult:
            return await self._access.vault.transit.call(self._mount, "hmac", self.key, body, token=token)

        try:
            result = await self._access.as_bridge(go)
        except VaultError as exc:
            raise from_vault_error(exc, what="the fingerprint") from None
        items = result.batch or ()
        if len(items) != len(names) or any(item.hmac is None for item in items):
            raise VaultUnavailableBridgeError("Vault did not return a fingerprint for every value.")
        try:
            return {name: format_fingerprint(item.hmac or "") for name, item in zip(names, items, strict=True)}
        except ValueError:
            raise VaultUnavailableBridgeError("Vault returned a fingerprint in an unknown form.", code="vault_error",
                                              status=502) from None


__all__ = ["ALGORITHM", "PREFIX", "Fingerprinter", "format_fingerprint"]
