"""Secrets used for an agent: reading one (with the errors that tell a missing, deleted, destroyed secret or
version apart), deciding whether its values may be shown, fingerprints, references, and the canary watch.

**Reveal or reference.** A read shows values only when both hold (:meth:`SecretValues.may_reveal`):

- the caller holds the ``read`` scope (``use`` alone never sees a value), and
- the secret's ``bridge.reveal`` is ``allow`` (the default; ``never`` hides its values from everyone).

Otherwise it answers, per field, a fingerprint and a reference (``secret://<path>#<field>@<version>``) pinned to
the version read, so that later uses see the value that was fingerprinted.

**Fingerprints** (:meth:`SecretValues.fingerprints`) are keyed HMACs computed by Vault Transit with the bridge's
own key (``FINGERPRINT_KEY``) and the bridge's own token (in child-token mode its only Transit right: ``update`` on
``{TRANSIT_MOUNT}/hmac/{FINGERPRINT_KEY}``), never a plain hash: no agent can compute one for a guess. All the
fields of one read cost one Transit call (``batch_input``). Vault's ``vault:v<N>:<base64>`` becomes
``hmac-sha256:v<N>:<base64url without padding>`` (:func:`fingerprint_text`): the key version stays visible
(fingerprints of different key versions are not comparable) and the text fits the broker's redaction labels
(``A-Z a-z 0-9 _ . : + / = -``). A field that is no JSON string is fingerprinted, and used, as its compact JSON
text (the number ``5`` and the string ``"5"`` therefore have the same fingerprint: they are the same bytes in a
request).

**Using a secret by reference** (:meth:`SecretValues.use`, :meth:`SecretValues.resolve`): the caller needs
``use`` or ``read``; the secret is read with the caller's own token (its child token in child-token mode: Vault
applies the agent's policy), at the reference's version; a missing field is 404 ``field_not_found``.
``bridge.reveal=never`` does not stop a use (brokered HTTP, HMAC and signing); the caller decides what it allows.

**Canaries**: every read, wrap and use of a secret marked ``bridge.canary`` tells the app's
:class:`~bridge.canary.CanaryWatch` (``VaultAccess.canary``) before the answer is built; the answer is the same.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from bridge.auth.identity import Identity
from bridge.broker import ResolvedSecret
from bridge.canary import How
from bridge.errors import (
    BridgeError,
    ForbiddenError,
    NotFoundError,
    VaultUnavailableBridgeError,
    from_vault_error,
)
from bridge.references import Reference, check_field
from bridge.secret_settings import SecretSettings
from bridge.service.access import VaultAccess
from bridge.vault.errors import (
    VaultError,
    VaultInvalidRequestError,
    VaultNotFoundError,
    VaultPermissionDeniedError,
)
from bridge.vault.models import KvMetadata, KvSecret, KvVersion

USE_SCOPES = ("use", "read")
"""Either allows using a secret by reference."""
FINGERPRINT_SCHEME = "hmac-sha256"
_VAULT_HMAC = re.compile(r"vault:v([0-9]{1,9}):([A-Za-z0-9+/]+={0,2})")


def value_text(value: Any) -> str:
    """A field's value as it is used and fingerprinted: a string as it is, anything else as compact JSON."""
    return value if isinstance(value, str) else json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def fingerprint_text(vault_hmac: str) -> str:
    """``vault:v1:<base64>`` → ``hmac-sha256:v1:<base64url without padding>``; ``ValueError`` for anything else."""
    match = _VAULT_HMAC.fullmatch(vault_hmac)
    if match is None:
        raise ValueError("not a vault:vN: HMAC")
    try:
        raw = base64.b64decode(match.group(2), validate=True)
    except binascii.Error:
        raise ValueError("not a vault:vN: HMAC") from None
    return f"{FINGERPRINT_SCHEME}:v{match.group(1)}:{base64.urlsafe_b64encode(raw).decode().rstrip('=')}"


def referable(field: str) -> bool:
    """Whether a reference can name this KV key (1-256 characters, no control characters)."""
    try:
        check_field(field)
    except ValueError:
        return False
    return True


@dataclass(frozen=True, slots=True)
class UsedSecret:
    """One field of a secret, read for a use: its value, the reference pinned to the version read, and the
    secret's ``bridge.*`` settings."""

    reference: Reference
    value: str
    settings: SecretSettings


class SecretValues:
    """Made by each service that uses secrets, from its :class:`VaultAccess` (the canary watch is the app's)."""

    def __init__(self, access: VaultAccess) -> None:
        self._access = access
        self._vault = access.vault
        self._mount = access.settings.kv_mount
        self._transit = access.settings.transit_mount
        self._key = access.settings.fingerprint_key_name
        self.canary = access.canary

    @staticmethod
    def may_reveal(identity: Identity, settings: SecretSettings) -> bool:
        """Whether a read shows values (see the module docstring): ``read`` scope and ``bridge.reveal=allow``."""
        return "read" in identity.scopes and settings.revealable

    async def tripwire(self, identity: Identity, settings: SecretSettings, *, operation: str, path: str,
                       how: How) -> None:
        """Tell the canary watch when the secret is a canary (nothing else changes)."""
        if settings.canary:
            await self.canary.trip(identity, operation=operation, path=path, how=how)

    # -- reading -----------------------------------------------------------------------------------------------

    async def read(self, identity: Identity, path: str, version: int | None) -> KvSecret:
        """The secret at ``path`` (validated, relative) with the caller's token; a missing, deleted or destroyed
        secret or version is a 404 with its own code."""
        full = self._access.kv_path(identity, path)

        async def go(token: str) -> KvSecret:
            try:
                return await self._vault.kv.read(self._mount, full, version=version, token=token)
            except VaultNotFoundError as exc:
                meta = exc.version_meta
                if meta is None or not (meta.destroyed or meta.deletion_time):
                    raise
                raise gone(path, meta) from None

        try:
            return await self._access.call(identity, "the read", go)
        except NotFoundError as exc:
            if exc.code != "not_found":
                raise  # deleted or destroyed
            err: BridgeError = NotFoundError(f"No secret at '{path}'.")
            if version:
                err = await self.version_not_found(identity, full, path, version) or err
            raise err from None

    async def metadata(self, identity: Identity, path: str) -> KvMetadata:
        full = self._access.kv_path(identity, path)

        async def go(token: str) -> KvMetadata:
            return await self._vault.kv.metadata(self._mount, full, token=token)

        try:
            return await self._access.call(identity, "the metadata read", go)
        except NotFoundError:
            raise NotFoundError(f"No secret at '{path}'.") from None

    async def versions(self, identity: Identity, full: str) -> tuple[int, int] | None:
        """``(current_version, oldest_version)`` of a secret, ``(0, 0)`` when it does not exist, ``None`` when
        Vault could not say (the caller then keeps its first answer)."""

        async def go(token: str) -> KvMetadata:
            return await self._vault.kv.metadata(self._mount, full, token=token)

        try:
            meta = await self._access.call(identity, "the metadata read", go)
        except NotFoundError:
            return (0, 0)
        except BridgeError:
            return None
        return meta.current_version, meta.oldest_version

    async def version_not_found(self, identity: Identity, full: str, path: str,
                                version: int) -> BridgeError | None:
        """Vault answers a missing version as it answers a missing secret (404, no body): tell them apart."""
        versions = await self.versions(identity, full)
        if versions is None or versions[0] == 0:
            return None
        current, oldest = versions
        return version_error(path, version, current, oldest)

    # -- fingerprints ------------------------------------------------------------------------------------------

    async def fingerprints(self, values: Sequence[str]) -> list[str]:
        """The fingerprint of each value, in order: one Transit HMAC call (``batch_input``) with the bridge's own
        token and ``FINGERPRINT_KEY``. 502 ``fingerprint_unavailable`` when the bridge may not or cannot."""
        if not values:
            return []
        batch = [{"input": base64.b64encode(value.encode("utf-8")).decode("ascii")} for value in values]

        async def go(token: str) -> list[str]:
            result = await self._vault.transit.call(self._transit, "hmac", self._key, {"batch_input": batch},
                                                    token=token)
            items = result.batch or ()
            if len(items) != len(values) or any(item.error or not item.hmac for item in items):
                raise ValueError("Vault did not HMAC every value")
            return [fingerprint_text(item.hmac or "") for item in items]

        try:
            return await self._access.as_bridge(go)
        except (VaultPermissionDeniedError, VaultNotFoundError, VaultInvalidRequestError, ValueError):
            raise VaultUnavailableBridgeError(
                f"The bridge cannot compute fingerprints: its own Vault token needs 'update' on "
                f"{self._transit}/hmac/{self._key}, a Transit key of type hmac (FINGERPRINT_KEY). An operator must "
                "re-run 'vault-mcp-bridge provision' (or grant it).", code="fingerprint_unavailable",
                status=502) from None
        except VaultError as exc:
            raise from_vault_error(exc, what="the fingerprint") from None

    # -- using by reference ------------------------------------------------------------------------------------

    async def use(self, identity: Identity, ref: Reference, *, operation: str, how: How) -> UsedSecret:
        """The value ``ref`` names, read with the caller's identity for ``operation`` (see the module docstring);
        the canary watch is told before anything else happens with it."""
        if not any(scope in identity.scopes for scope in USE_SCOPES):
            raise ForbiddenError(
                f"Using a secret by reference ({ref}) needs the 'use' or 'read' scope; this identity has: "
                f"{', '.join(sorted(identity.scopes)) or 'none'}.",
                extra={"required_scope": "use", "accepted_scopes": list(USE_SCOPES), "reference": str(ref)})
        secret = await self.read(identity, ref.path, ref.version)
        settings = SecretSettings.parse(secret.metadata.custom_metadata)
        await self.tripwire(identity, settings, operation=operation, path=ref.path, how=how)
        pinned = ref.at(secret.metadata.version)
        if ref.field not in secret.data:
            raise NotFoundError(f"{pinned} does not exist: the secret has no field '{ref.field}'.",
                                code="field_not_found", extra={"reference": str(pinned)})
        return UsedSecret(pinned, value_text(secret.data[ref.field]), settings)

    async def resolve(self, identity: Identity, ref: Reference, *, operation: str) -> ResolvedSecret:
        """The broker's resolver (:data:`bridge.broker.SecretResolver`) for one reference: value, fingerprint and
        the secret's ``bridge.allowed_hosts``."""
        used = await self.use(identity, ref, operation=operation, how="broker")
        (fingerprint,) = await self.fingerprints([used.value])
        return ResolvedSecret(value=used.value, fingerprint=fingerprint, allowed_hosts=used.settings.allowed_hosts)


def gone(path: str, meta: KvVersion) -> NotFoundError:
    """The version is destroyed or deleted (Vault's 404 carries its metadata)."""
    if meta.destroyed:
        return NotFoundError(f"Version {meta.version} of '{path}' was destroyed and cannot be recovered.",
                             code="secret_destroyed",
                             extra={"version": meta.version, "deletion_time": meta.deletion_time or None})
    return NotFoundError(f"Version {meta.version} of '{path}' is deleted; undelete it to read it again.",
                         code="secret_deleted", extra={"version": meta.version, "deletion_time": meta.deletion_time})


def version_error(path: str, version: int, current: int, oldest: int) -> NotFoundError:
    return NotFoundError(
        f"Version {version} of '{path}' does not exist: its versions run from {oldest or 1} to {current}.",
        code="version_not_found", extra={"version": version, "current_version": current, "oldest_version": oldest or 1})


__all__ = ["FINGERPRINT_SCHEME", "USE_SCOPES", "SecretValues", "UsedSecret", "fingerprint_text", "gone",
           "referable", "value_text", "version_error"]
