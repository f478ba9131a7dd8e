"""The service layer: every agent operation, shared by REST and MCP. Knows nothing of aiohttp.web.

Each public method checks the caller's scope, confines the path to the agent's namespace, calls Vault with
the right token, and turns Vault errors into bridge errors (``bridge.errors.from_vault_error``).
"""

from __future__ import annotations

import builtins
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from pydantic import BaseModel

from bridge.audit import AuditLog, audited
from bridge.auth.identity import Identity
from bridge.config import Settings
from bridge.errors import (
    BridgeError,
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
    ListOut,
    MetadataOut,
    OkOut,
    PatchBody,
    PatchOut,
    RandomBody,
    RandomOut,
    RewrapBody,
    RewrapOut,
    SecretOut,
    SignBody,
    SignOut,
    VerifyBody,
    VerifyOut,
    VersionsBody,
    WhoamiOut,
    WriteBody,
    WriteOut,
)
from bridge.paths import agent_path, validate_path, validate_prefix
from bridge.vault.childtokens import ChildTokenBroker
from bridge.vault.client import VaultClient
from bridge.vault.errors import VaultError, VaultNotFoundError, VaultPermissionDeniedError
from bridge.vault.lifetime import TokenKeeper
from bridge.vault.models import KvMetadata, KvSecret, KvVersion, TransitItem, TransitKey, TransitResult
from bridge.vault.tokens import TokenSource, with_token

T = TypeVar("T")

# operation -> scope it needs (None: any authenticated identity)
OPERATION_SCOPES: dict[str, str | None] = {
    "kv_read": "read",
    "kv_write": "write",
    "kv_patch": "write",
    "kv_delete": "delete",
    "kv_list": "list",
    "kv_undelete": "write",
    "kv_destroy": "delete",  # permanent: at least what the recoverable soft delete needs
    "kv_metadata": "read",
    "transit_encrypt": "write",
    "transit_decrypt": "read",
    "transit_rewrap": "write",
    "transit_sign": "write",
    "transit_verify": "read",
    "transit_hmac": "write",
    "transit_random": "read",
    "transit_create_key": "write",
    "whoami": None,
}


def batch_results(items: tuple[TransitItem, ...], expected: int) -> list[dict[str, Any]]:
    """Vault's ``batch_results``, one per item: a failed item is ``{"error", "reference"?}``, a good one keeps
    its fields. Vault answers in input order; a short answer marks the missing items failed."""
    out = [item.fields() for item in items[:expected]]
    out.extend({"error": "Vault returned no result for this item"} for _ in range(expected - len(out)))
    return out


class SecretService:
    def __init__(self, settings: Settings, vault: VaultClient, keeper: TokenKeeper, *,
                 audit_log: AuditLog | None = None, children: ChildTokenBroker | None = None) -> None:
        self.children = children  # per-agent child tokens when CHILD_TOKEN_ENABLED (bridge/vault/childtokens.py)
        self.audit_log = audit_log  # one audit record per public operation (see bridge/audit.py)
        self._s = settings
        self._vault = vault
        self._keeper = keeper
        self._mount = settings.kv_mount
        self._transit = settings.transit_mount
        self._prefix = settings.default_prefix
        # TRANSIT_MAX_KEYS_PER_AGENT (bridge/keyguard.py); shared-scope keys belong to no agent
        self.key_guard = TransitKeyGuard(
            prefix=settings.default_prefix, list_names=self._list_transit_keys,
            limit=settings.transit_max_keys_per_agent if settings.transit_key_scope == "agent" else 0)

    # -- plumbing ------------------------------------------------------------------------------------

    def authorize(self, identity: Identity, operation: str) -> None:
        scope = OPERATION_SCOPES[operation]
        if scope is not None:
            try:
                identity.require(scope)
            except BridgeError as err:
                err.operation = operation  # named in the audit record of the refusal
                raise

    def request_cost(self, body: BaseModel) -> int:
        """What a request costs against the rate limit: the number of items of a Transit batch, else 1. A batch
        over ``TRANSIT_MAX_BATCH`` is refused here (400 ``batch_too_large``), before anything is charged."""
        items = getattr(body, "batch_input", None)
        if not items:
            return 1
        if len(items) > self._s.transit_max_batch:
            raise InvalidRequestError(
                f"A batch may have at most {self._s.transit_max_batch} items (TRANSIT_MAX_BATCH); this one has "
                f"{len(items)}: split it.", code="batch_too_large", extra={"max_items": self._s.transit_max_batch})
        return len(items)

    def vault_path(self, identity: Identity, path: str) -> str:
        return agent_path(self._prefix, identity.subject, path)

    def transit_key(self, identity: Identity, key: str) -> str:
        """The Vault key name: ``{prefix}.{agent}.{key}`` (TRANSIT_KEY_SCOPE=agent) or ``key`` (shared)."""
        if self._s.transit_key_scope == "shared":
            return key
        return f"{self._prefix}.{identity.subject}.{key}"

    async def _call(self, identity: Identity, what: str, fn: Callable[[str], Awaitable[T]]) -> T:
        """Run ``fn(token)`` with the right Vault token (the agent's child token when enabled, else the
        bridge's); retry once with a new token if Vault says the token was gone."""
        source: TokenSource[Any] = self.children if self.children is not None else self._keeper
        try:
            return await with_token(source, identity.subject, identity.auth_method, fn)
        except VaultError as exc:
            raise from_vault_error(exc, what=what) from None

    async def _key_exists(self, identity: Identity, key: str) -> bool:
        """Whether Transit key ``key`` exists, asked with the agent's token (False: missing or cannot tell)."""

        async def go(token: str) -> bool:
            await self._vault.transit.read_key(self._transit, key, token=token)
            return True

        try:
            return await self._call(identity, "the key lookup", go)
        except (NotFoundError, ForbiddenError):
            return False

    async def _list_transit_keys(self) -> list[str]:
        """Every key name of the Transit mount, listed with the bridge's own token (never an agent's)."""
        async def names(token: str) -> builtins.list[str]:
            return await self._vault.transit.list_keys(self._transit, token=token)

        try:
            return await with_token(self._keeper, "", "", names)
        except VaultPermissionDeniedError:
            raise VaultUnavailableBridgeError(
                "The bridge cannot count this agent's Transit keys (TRANSIT_MAX_KEYS_PER_AGENT): its own Vault "
                f"token needs 'list' on {self._transit}/keys. An operator must re-run 'vault-mcp-bridge provision' "
                "(or grant it), or set TRANSIT_MAX_KEYS_PER_AGENT=0.", code="key_count_unavailable",
                status=502) from None
        except VaultError as exc:
            raise from_vault_error(exc, what="the key count") from None

    # -- KV v2 ---------------------------------------------------------------------------------------

    @audited("kv_read")
    async def read(self, identity: Identity, path: str, version: int | None = None) -> SecretOut:
        self.authorize(identity, "kv_read")
        path = validate_path(path)
        full = self.vault_path(identity, path)

        async def go(token: str) -> KvSecret:
            return await self._vault.kv.read(self._mount, full, version=version, token=token)

        try:
            result = await self._call(identity, "the read", go)
        except NotFoundError as exc:
            err = self._not_found(path, exc)
            if version and err.code == "not_found":
                err = await self._version_not_found(identity, full, path, version) or err
            raise err from None
        meta = result.metadata
        return SecretOut(path=path, data=result.data, version=meta.version, created_time=meta.created_time,
                         custom_metadata=meta.custom_metadata)

    async def _versions(self, identity: Identity, full: str) -> tuple[int, int] | None:
        """``(current_version, oldest_version)`` of a secret, ``(0, 0)`` when it does not exist, ``None`` when
        Vault could not say (the caller then keeps its first answer)."""

        async def go(token: str) -> KvMetadata:
            return await self._vault.kv.metadata(self._mount, full, token=token)

        try:
            meta = await self._call(identity, "the metadata read", go)
        except NotFoundError:
            return (0, 0)
        except BridgeError:
            return None
        return meta.current_version, meta.oldest_version

    async def _version_not_found(self, identity: Identity, full: str, path: str,
                                 version: int) -> BridgeError | None:
        """Vault answers a missing version as it answers a missing secret (404, no body): tell them apart."""
        versions = await self._versions(identity, full)
        if versions is None or versions[0] == 0:
            return None
        current, oldest = versions
        return NotFoundError(
            f"Version {version} of '{path}' does not exist: its versions run from {oldest or 1} to {current}.",
            code="version_not_found",
            extra={"version": version, "current_version": current, "oldest_version": oldest or 1})

    async def _cas_conflict(self, identity: Identity, full: str, path: str, cas: int | None,
                            exc: ConflictError) -> BridgeError:
        """A check-and-set mismatch, naming the secret's current version (read from Vault after the conflict:
        Vault's message does not carry it)."""
        versions = await self._versions(identity, full)
        if versions is None:
            return exc
        current = versions[0]
        now = f"'{path}' does not exist yet (current version 0)" if current == 0 else \
            f"the current version of '{path}' is {current}"
        return ConflictError(
            f"Check-and-set failed: 'cas' was {cas} but {now}. Read the secret, then write with cas={current} "
            "(0 = only if it does not exist).", extra={"current_version": current})

    def _not_found(self, path: str, exc: BridgeError) -> BridgeError:
        cause = exc.__cause__ or exc.__context__
        meta = cause.version_meta if isinstance(cause, VaultNotFoundError) else None
        if meta is not None:
            version = meta.version
            if meta.destroyed:
                return NotFoundError(f"Version {version} of '{path}' was destroyed and cannot be recovered.",
                                     code="secret_destroyed",
                                     extra={"version": version, "deletion_time": meta.deletion_time or None})
            if meta.deletion_time:
                return NotFoundError(
                    f"Version {version} of '{path}' is deleted; undelete it to read it again.",
                    code="secret_deleted",
                    extra={"version": version, "deletion_time": meta.deletion_time})
        return NotFoundError(f"No secret at '{path}'.")

    @audited("kv_write")
    async def write(self, identity: Identity, path: str, body: WriteBody) -> WriteOut:
        self.authorize(identity, "kv_write")
        path = validate_path(path)
        full = self.vault_path(identity, path)

        async def go(token: str) -> KvVersion:
            return await self._vault.kv.write(self._mount, full, body.data, cas=body.cas, token=token)

        try:
            meta = await self._call(identity, "the write", go)
        except ConflictError as exc:
            raise await self._cas_conflict(identity, full, path, body.cas, exc) from None
        return WriteOut(path=path, data=body.data, version=meta.version, created_time=meta.created_time)

    @audited("kv_patch")
    async def patch(self, identity: Identity, path: str, body: PatchBody) -> PatchOut:
        self.authorize(identity, "kv_patch")
        path = validate_path(path)
        full = self.vault_path(identity, path)

        async def go(token: str) -> KvVersion:
            return await self._vault.kv.patch(self._mount, full, body.data, cas=body.cas, token=token)

        try:
            meta = await self._call(identity, "the patch", go)
        except ConflictError as exc:
            raise await self._cas_conflict(identity, full, path, body.cas, exc) from None
        except NotFoundError:
            raise NotFoundError(f"No secret at '{path}' to patch (or its latest version is deleted); "
                                "write it first.") from None
        return PatchOut(path=path, version=meta.version, created_time=meta.created_time)

    @audited("kv_delete")
    async def delete(self, identity: Identity, path: str) -> None:
        self.authorize(identity, "kv_delete")
        path = validate_path(path)
        full = self.vault_path(identity, path)

        async def go(token: str) -> None:
            await self._vault.kv.delete_latest(self._mount, full, token=token)

        await self._call(identity, "the delete", go)

    @audited("kv_undelete")
    async def undelete(self, identity: Identity, path: str, body: VersionsBody) -> OkOut:
        self.authorize(identity, "kv_undelete")
        path = validate_path(path)
        full = self.vault_path(identity, path)

        async def go(token: str) -> None:
            await self._vault.kv.undelete(self._mount, full, body.versions, token=token)

        await self._call(identity, "the undelete", go)
        return OkOut(ok=True)

    @audited("kv_destroy")
    async def destroy(self, identity: Identity, path: str, body: VersionsBody) -> OkOut:
        self.authorize(identity, "kv_destroy")
        path = validate_path(path)
        full = self.vault_path(identity, path)

        async def go(token: str) -> None:
            await self._vault.kv.destroy(self._mount, full, body.versions, token=token)

        await self._call(identity, "the destroy", go)
        return OkOut(ok=True)

    @audited("kv_list")
    async def list(self, identity: Identity, prefix: str | None) -> ListOut:
        self.authorize(identity, "kv_list")
        prefix = validate_prefix(prefix)
        full = self.vault_path(identity, prefix)

        async def go(token: str) -> list[str]:
            return await self._vault.kv.list(self._mount, full, token=token)

        keys = await self._call(identity, "the list", go)
        return ListOut(prefix=prefix, keys=keys)

    @audited("kv_metadata")
    async def metadata(self, identity: Identity, path: str) -> MetadataOut:
        self.authorize(identity, "kv_metadata")
        path = validate_path(path)
        full = self.vault_path(identity, path)

        async def go(token: str) -> KvMetadata:
            return await self._vault.kv.metadata(self._mount, full, token=token)

        try:
            meta = await self._call(identity, "the metadata read", go)
        except NotFoundError:
            raise NotFoundError(f"No secret at '{path}'.") from None
        return MetadataOut(current_version=meta.current_version, oldest_version=meta.oldest_version,
                           created_time=meta.created_time, updated_time=meta.updated_time, versions=meta.versions,
                           custom_metadata=meta.custom_metadata)

    # -- Transit -------------------------------------------------------------------------------------

    async def _transit_op(self, identity: Identity, op: str, what: str, body: BaseModel, *,
                          algorithm: str | None = None) -> tuple[TransitItem, builtins.list[dict[str, Any]] | None]:
        """One Transit operation on the caller's key, with Vault's field names: the single result, or (with
        ``batch_input``) the results per item.

        Batch items that failed validation (:class:`BatchItemError`) are not sent: each keeps its place in
        ``batch_results`` with its error, and the valid items go to Vault (none valid: no Vault call)."""
        self.authorize(identity, f"transit_{op}")
        self.request_cost(body)  # TRANSIT_MAX_BATCH (the handler charged the cost before this call)
        name = str(getattr(body, "key"))  # noqa: B009 - every transit body has it
        key = self.transit_key(identity, name)
        payload = body.model_dump(exclude_none=True, exclude={"key", "hash_algorithm", "batch_input"})
        items: list[BaseModel] | None = getattr(body, "batch_input", None)
        valid: list[BaseModel] = []
        if items is not None:
            valid = [item for item in items if not isinstance(item, BatchItemError)]
            payload["batch_input"] = [item.model_dump(exclude_none=True) for item in valid]

        async def go(token: str) -> TransitResult:
            return await self._vault.transit.call(self._transit, op, key, payload, algorithm=algorithm, token=token)

        out = TransitResult()
        if items is None or valid:
            try:
                if op == "encrypt":  # Vault creates a missing key on encrypt: that key counts against the cap too
                    async with self.key_guard.admit(identity.subject, key, lambda: self._key_exists(identity, key)):
                        out = await self._call(identity, what, go)
                else:
                    out = await self._call(identity, what, go)
            except NotFoundError as exc:
                if exc.code != "key_not_found":
                    raise
                raise NotFoundError(
                    f"You have no Transit key '{name}' for {what}. Create it first: transit_encrypt (POST "
                    "/transit/encrypt) creates an encryption key on first use, transit_create_key (POST "
                    "/transit/keys) a key of any type.", code="key_not_found", extra={"key": name}) from None
        if items is None:
            return out.single or TransitItem(), None
        answers = iter(batch_results(out.batch or (), len(valid)) if valid else [])
        return TransitItem(), [item.model_dump(exclude_none=True) if isinstance(item, BatchItemError)
                               else next(answers) for item in items]

    @audited("transit_encrypt")
    async def encrypt(self, identity: Identity, body: EncryptBody) -> EncryptOut:
        out, batch = await self._transit_op(identity, "encrypt", "the encryption", body)
        if batch is not None:
            return EncryptOut(batch_results=batch)
        return EncryptOut(ciphertext=out.ciphertext or "", key_version=out.key_version or 0)

    @audited("transit_decrypt")
    async def decrypt(self, identity: Identity, body: DecryptBody) -> DecryptOut:
        out, batch = await self._transit_op(identity, "decrypt", "the decryption", body)
        if batch is not None:
            return DecryptOut(batch_results=batch)
        return DecryptOut(plaintext=out.plaintext or "")

    @audited("transit_rewrap")
    async def rewrap(self, identity: Identity, body: RewrapBody) -> RewrapOut:
        out, batch = await self._transit_op(identity, "rewrap", "the rewrap", body)
        if batch is not None:
            return RewrapOut(batch_results=batch)
        return RewrapOut(ciphertext=out.ciphertext or "", key_version=out.key_version or 0)

    @audited("transit_sign")
    async def sign(self, identity: Identity, body: SignBody) -> SignOut:
        out, batch = await self._transit_op(identity, "sign", "the signing", body, algorithm=body.hash_algorithm)
        if batch is not None:
            return SignOut(batch_results=batch)
        return SignOut(signature=out.signature or "", key_version=out.key_version or 0)

    @audited("transit_verify")
    async def verify(self, identity: Identity, body: VerifyBody) -> VerifyOut:
        out, batch = await self._transit_op(identity, "verify", "the verification", body,
                                            algorithm=body.hash_algorithm)
        if batch is not None:
            return VerifyOut(batch_results=batch)
        return VerifyOut(valid=bool(out.valid))

    @audited("transit_hmac")
    async def hmac(self, identity: Identity, body: HmacBody) -> HmacOut:
        out, batch = await self._transit_op(identity, "hmac", "the HMAC", body, algorithm=body.hash_algorithm)
        if batch is not None:
            return HmacOut(batch_results=batch)
        return HmacOut(hmac=out.hmac or "")

    @audited("transit_random")
    async def random(self, identity: Identity, body: RandomBody) -> RandomOut:
        self.authorize(identity, "transit_random")

        async def go(token: str) -> str:
            return await self._vault.transit.random(self._transit, nbytes=body.bytes, fmt=body.format, token=token)

        return RandomOut(random_bytes=await self._call(identity, "the random bytes", go), format=body.format)

    @audited("transit_create_key")
    async def create_key(self, identity: Identity, body: CreateKeyBody) -> KeyOut:
        """Create the caller's key ``body.key`` of ``body.type``; an existing key of that type is returned
        unchanged (idempotent), one of another type is a 409."""
        self.authorize(identity, "transit_create_key")
        allowed = self._s.transit_allowed_key_types
        if body.type not in allowed:
            raise InvalidRequestError(
                f"Key type {body.type} is not allowed here; allowed: {', '.join(allowed)} "
                "(TRANSIT_ALLOWED_KEY_TYPES).", code="key_type_not_allowed", extra={"allowed": list(allowed)})
        key = self.transit_key(identity, body.key)

        async def go(token: str) -> TransitKey:
            return await self._vault.transit.create_key(self._transit, key, body.type, key_size=body.key_size,
                                                        token=token)

        async with self.key_guard.admit(identity.subject, key, lambda: self._key_exists(identity, key)):
            info = await self._call(identity, "the key creation", go)
        if info.type != body.type:
            raise ConflictError(f"Key '{body.key}' already exists with type {info.type}; pick another name.",
                                code="key_type_mismatch", extra={"type": info.type})
        return KeyOut(key=body.key, type=info.type, latest_version=info.latest_version,
                      supports_encryption=info.supports_encryption, supports_decryption=info.supports_decryption,
                      supports_signing=info.supports_signing, public_keys=info.public_keys or None)

    # -- identity ------------------------------------------------------------------------------------

    def whoami(self, identity: Identity) -> WhoamiOut:
        return WhoamiOut(subject=identity.subject, auth_method=identity.auth_method,
                         scopes=sorted(identity.scopes),
                         vault_path_prefix=f"{self._mount}/data/{self._prefix}/{identity.subject}/")
