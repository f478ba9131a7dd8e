"""Transit with the calling agent's own keys (``{DEFAULT_PREFIX}.{agent}.{key}``, or the names as given with
``TRANSIT_KEY_SCOPE=shared``). Field names are Vault's own; every operation but ``random`` and key creation
takes one item or a ``batch_input`` answered per item.

Batch items that failed validation (:class:`~bridge.models.BatchItemError`) are not sent: each keeps its place in
``batch_results`` with its error, and the valid items go to Vault (none valid: no Vault call). A batch costs its
items against the rate limit and may hold at most ``TRANSIT_MAX_BATCH`` of them (:meth:`TransitService.cost`,
which the executor asks before the operation runs).
Creating a key (``transit_create_key``, or an encrypt naming a key that does not exist yet) is admitted by the
``TRANSIT_MAX_KEYS_PER_AGENT`` guard (:mod:`bridge.keyguard`).

References (issue 12): ``transit_encrypt`` takes ``plaintext_ref`` and ``transit_sign`` / ``transit_hmac`` take
``input_ref``, a ``secret://<path>#<field>[@<version>]`` in place of the value, also in batch items. The secret is
read with the caller's identity (``use`` or ``read`` scope, :meth:`bridge.service.secrets.SecretValues.use`) and its
value base64-encoded into the request; it never passes through the agent. ``bridge.reveal=never`` refuses
encryption by reference (``transit_decrypt`` would reverse it), not HMAC or signing.
"""

from __future__ import annotations

import base64
from collections.abc import Callable
from typing import Any, TypeVar

from pydantic import BaseModel

from bridge.auth.identity import Identity
from bridge.errors import (
    ConflictError,
    ForbiddenError,
    InvalidRequestError,
    NotFoundError,
    VaultUnavailableBridgeError,
    from_vault_error,
)
from bridge.keyguard import TransitKeyGuard
from bridge.models import (
    BatchItemError,
    CreateKeyBody,
    DecryptBody,
    DecryptOut,
    EncryptBody,
    EncryptOut,
    HmacBody,
    HmacOut,
    KeyOut,
    RandomBody,
    RandomOut,
    RewrapBody,
    RewrapOut,
    SignBody,
    SignOut,
    VerifyBody,
    VerifyOut,
)
from bridge.references import parse_reference
from bridge.service.access import VaultAccess
from bridge.service.secrets import SecretValues
from bridge.vault.errors import VaultError, VaultPermissionDeniedError
from bridge.vault.models import TransitItem, TransitKey, TransitResult

Out = TypeVar("Out", bound=BaseModel)
REF_FIELDS = {"plaintext_ref": "plaintext", "input_ref": "input"}
"""A reference field and the field its value (base64) takes the place of."""


def batch_results(items: tuple[TransitItem, ...], expected: int) -> list[dict[str, Any]]:
    """Vault's ``batch_results``, one per item: a failed item is ``{"error", "reference"?}``, a good one keeps
    its fields. Vault answers in input order; a short answer marks the missing items failed."""
    out = [item.fields() for item in items[:expected]]
    out.extend({"error": "Vault returned no result for this item"} for _ in range(expected - len(out)))
    return out


class TransitService:
    def __init__(self, access: VaultAccess) -> None:
        settings = access.settings
        self._access = access
        self._vault = access.vault
        self._mount = settings.transit_mount
        self._prefix = settings.default_prefix
        self._shared = settings.transit_key_scope == "shared"
        self._max_batch = settings.transit_max_batch
        self._allowed_types = settings.transit_allowed_key_types
        self._values = SecretValues(access)
        # TRANSIT_MAX_KEYS_PER_AGENT; shared-scope keys belong to no agent
        self.key_guard = TransitKeyGuard(prefix=settings.default_prefix, list_names=self._list_key_names,
                                         limit=0 if self._shared else settings.transit_max_keys_per_agent)

    def cost(self, args: BaseModel) -> int:
        """What a request costs against the rate limit: the number of items of a batch, else 1. A batch over
        ``TRANSIT_MAX_BATCH`` is refused here (400 ``batch_too_large``), before anything is charged."""
        items = getattr(args, "batch_input", None)
        if not items:
            return 1
        if len(items) > self._max_batch:
            raise InvalidRequestError(
                f"A batch may have at most {self._max_batch} items (TRANSIT_MAX_BATCH); this one has {len(items)}: "
                "split it.", code="batch_too_large", extra={"max_items": self._max_batch})
        return len(items)

    def vault_key(self, identity: Identity, key: str) -> str:
        """The Vault key name: ``{prefix}.{agent}.{key}`` (TRANSIT_KEY_SCOPE=agent) or ``key`` (shared)."""
        return key if self._shared else f"{self._prefix}.{identity.subject}.{key}"

    # -- the operations --------------------------------------------------------------------------------

    async def encrypt(self, identity: Identity, args: EncryptBody) -> EncryptOut:
        return await self._transit(identity, "encrypt", "the encryption", args, EncryptOut, lambda r: EncryptOut(
            ciphertext=r.ciphertext or "", key_version=r.key_version or 0))

    async def decrypt(self, identity: Identity, args: DecryptBody) -> DecryptOut:
        return await self._transit(identity, "decrypt", "the decryption", args, DecryptOut,
                                   lambda r: DecryptOut(plaintext=r.plaintext or ""))

    async def rewrap(self, identity: Identity, args: RewrapBody) -> RewrapOut:
        return await self._transit(identity, "rewrap", "the rewrap", args, RewrapOut, lambda r: RewrapOut(
            ciphertext=r.ciphertext or "", key_version=r.key_version or 0))

    async def sign(self, identity: Identity, args: SignBody) -> SignOut:
        return await self._transit(identity, "sign", "the signing", args, SignOut, lambda r: SignOut(
            signature=r.signature or "", key_version=r.key_version or 0), algorithm=args.hash_algorithm)

    async def verify(self, identity: Identity, args: VerifyBody) -> VerifyOut:
        return await self._transit(identity, "verify", "the verification", args, VerifyOut,
                                   lambda r: VerifyOut(valid=bool(r.valid)), algorithm=args.hash_algorithm)

    async def hmac_of(self, identity: Identity, args: HmacBody) -> HmacOut:
        return await self._transit(identity, "hmac", "the HMAC", args, HmacOut, lambda r: HmacOut(hmac=r.hmac or ""),
                                   algorithm=args.hash_algorithm)

    async def random_bytes(self, identity: Identity, args: RandomBody) -> RandomOut:
        async def go(token: str) -> str:
            return await self._vault.transit.random(self._mount, nbytes=args.bytes, fmt=args.format, token=token)

        return RandomOut(random_bytes=await self._access.call(identity, "the random bytes", go), format=args.format)

    async def create_key(self, identity: Identity, args: CreateKeyBody) -> KeyOut:
        """Create the caller's key ``args.key`` of ``args.type``; an existing key of that type is returned
        unchanged (idempotent), one of another type is a 409."""
        if args.type not in self._allowed_types:
            raise InvalidRequestError(
                f"Key type {args.type} is not allowed here; allowed: {', '.join(self._allowed_types)} "
                "(TRANSIT_ALLOWED_KEY_TYPES).", code="key_type_not_allowed",
                extra={"allowed": list(self._allowed_types)})
        key = self.vault_key(identity, args.key)

        async def go(token: str) -> TransitKey:
            return await self._vault.transit.create_key(self._mount, key, args.type, key_size=args.key_size,
                                                        token=token)

        async with self.key_guard.admit(identity.subject, key, lambda: self._key_exists(identity, key)):
            info = await self._access.call(identity, "the key creation", go)
        if info.type != args.type:
            raise ConflictError(f"Key '{args.key}' already exists with type {info.type}; pick another name.",
                                code="key_type_mismatch", extra={"type": info.type})
        return KeyOut(key=args.key, type=info.type, latest_version=info.latest_version,
                      supports_encryption=info.supports_encryption, supports_decryption=info.supports_decryption,
                      supports_signing=info.supports_signing, public_keys=info.public_keys or None)

    # -- plumbing --------------------------------------------------------------------------------------

    async def _transit(self, identity: Identity, op: str, what: str, args: BaseModel, output: type[Out],
                       single: Callable[[TransitItem], Out], *, algorithm: str | None = None) -> Out:
        """One Transit operation on the caller's key: ``single(result)``, or (with ``batch_input``) ``output``
        with the results per item (see the module docstring). References (``plaintext_ref``, ``input_ref``) are
        resolved first, the values base64-encoded in their place."""
        name = str(getattr(args, "key"))  # noqa: B009 - every transit input has it
        key = self.vault_key(identity, name)
        payload = args.model_dump(exclude_none=True, exclude={"key", "hash_algorithm", "batch_input", *REF_FIELDS})
        await self._inline_reference(identity, op, args, payload)
        items: list[BaseModel] | None = getattr(args, "batch_input", None)
        sent: list[dict[str, Any] | BatchItemError] = []
        if items is not None:
            sent = await self._inline_item_references(identity, op, items)
            payload["batch_input"] = [item for item in sent if not isinstance(item, BatchItemError)]
        valid = payload.get("batch_input", [])

        async def go(token: str) -> TransitResult:
            return await self._vault.transit.call(self._mount, op, key, payload, algorithm=algorithm, token=token)

        out = TransitResult()
        if items is None or valid:
            try:
                if op == "encrypt":  # Vault creates a missing key on encrypt: that key counts against the cap too
                    async with self.key_guard.admit(identity.subject, key, lambda: self._key_exists(identity, key)):
                        out = await self._access.call(identity, what, go)
                else:
                    out = await self._access.call(identity, what, go)
            except NotFoundError as exc:
                if exc.code != "key_not_found":
                    raise
                raise NotFoundError(
                    f"You have no Transit key '{name}' for {what}. Create it first: transit_encrypt (POST "
                    "/transit/encrypt) creates an encryption key on first use, transit_create_key (POST "
                    "/transit/keys) a key of any type.", code="key_not_found", extra={"key": name}) from None
        if items is None:
            return single(out.single or TransitItem())
        answers = iter(batch_results(out.batch or (), len(valid)) if valid else [])
        return output(batch_results=[item.model_dump(exclude_none=True) if isinstance(item, BatchItemError)
                                     else next(answers) for item in sent])

    # -- references in place of values ----------------------------------------------------------------------

    async def _referenced(self, identity: Identity, op: str, field: str, text: str) -> str:
        """The base64 of the value ``text`` (a reference in ``field``) names, used for ``transit_<op>``. Encryption
        of a ``bridge.reveal=never`` secret is refused: ``transit_decrypt`` would give the value back."""
        ref = parse_reference(text, where=field)
        used = await self._values.use(identity, ref, operation=f"transit_{op}", how="transit")
        if op == "encrypt" and not used.settings.revealable:
            raise ForbiddenError(
                f"{used.reference} is marked bridge.reveal=never: encrypting it would let transit_decrypt reveal it. "
                "HMAC or sign it by reference instead (input_ref).", code="secret_not_revealable",
                extra={"reference": str(used.reference)})
        return base64.b64encode(used.value.encode("utf-8")).decode("ascii")

    async def _inline_reference(self, identity: Identity, op: str, args: BaseModel, payload: dict[str, Any]) -> None:
        for field, target in REF_FIELDS.items():
            text = getattr(args, field, None)
            if text is not None:
                payload[target] = await self._referenced(identity, op, field, text)

    async def _inline_item_references(self, identity: Identity, op: str,
                                      items: list[BaseModel]) -> list[dict[str, Any] | BatchItemError]:
        """Each batch item as sent to Vault (its reference resolved), or its :class:`BatchItemError` (a malformed
        reference, a missing secret or field, a secret that may not be encrypted: that item only). An identity
        without ``use`` or ``read`` is refused the whole batch; Vault being unavailable fails it too."""
        return [item if isinstance(item, BatchItemError) else await self._inline_item(identity, op, item)
                for item in items]

    async def _inline_item(self, identity: Identity, op: str, item: BaseModel) -> dict[str, Any] | BatchItemError:
        dumped = item.model_dump(exclude_none=True, exclude=set(REF_FIELDS))
        for field, target in REF_FIELDS.items():
            text = getattr(item, field, None)
            if text is None:
                continue
            try:
                dumped[target] = await self._referenced(identity, op, f"batch_input.{field}", text)
            except (InvalidRequestError, NotFoundError) as exc:
                return BatchItemError(error=exc.message, reference=dumped.get("reference"))
            except ForbiddenError as exc:
                if exc.code != "secret_not_revealable":
                    raise
                return BatchItemError(error=exc.message, reference=dumped.get("reference"))
        return dumped

    async def _key_exists(self, identity: Identity, key: str) -> bool:
        """Whether Transit key ``key`` exists, asked with the agent's token (False: missing or cannot tell)."""

        async def go(token: str) -> bool:
            await self._vault.transit.read_key(self._mount, key, token=token)
            return True

        try:
            return await self._access.call(identity, "the key lookup", go)
        except (NotFoundError, ForbiddenError):
            return False

    async def _list_key_names(self) -> list[str]:
        """Every key name of the Transit mount, listed with the bridge's own token (never an agent's)."""

        async def go(token: str) -> list[str]:
            return await self._vault.transit.list_keys(self._mount, token=token)

        try:
            return await self._access.as_bridge(go)
        except VaultPermissionDeniedError:
            raise VaultUnavailableBridgeError(
                "The bridge cannot count this agent's Transit keys (TRANSIT_MAX_KEYS_PER_AGENT): its own Vault "
                f"token needs 'list' on {self._mount}/keys. An operator must re-run 'vault-mcp-bridge provision' "
                "(or grant it), or set TRANSIT_MAX_KEYS_PER_AGENT=0.", code="key_count_unavailable",
                status=502) from None
        except VaultError as exc:
            raise from_vault_error(exc, what="the key count") from None
