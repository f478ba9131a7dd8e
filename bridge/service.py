"""The service layer: every agent operation, shared by REST and MCP. Knows nothing of aiohttp.web.

Each public method checks the caller's scope, confines the path to the agent's namespace, calls Vault with
the right token, and turns Vault errors into bridge errors (``bridge.errors.from_vault_error``).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from bridge.auth.identity import Identity
from bridge.config import Settings
from bridge.errors import BridgeError, NotFoundError, from_vault_error
from bridge.models import (
    DecryptBody,
    DecryptOut,
    EncryptBody,
    EncryptOut,
    ListOut,
    MetadataOut,
    OkOut,
    PatchBody,
    PatchOut,
    SecretOut,
    VersionsBody,
    WhoamiOut,
    WriteBody,
    WriteOut,
)
from bridge.paths import agent_path, validate_path, validate_prefix
from bridge.vault.client import VaultClient
from bridge.vault.errors import VaultError, VaultNotFoundError, VaultPermissionDeniedError
from bridge.vault.lifetime import TokenKeeper

T = TypeVar("T")

# operation -> scope it needs (None: any authenticated identity)
OPERATION_SCOPES: dict[str, str | None] = {
    "kv_read": "read",
    "kv_write": "write",
    "kv_patch": "write",
    "kv_delete": "delete",
    "kv_list": "list",
    "kv_undelete": "write",
    "kv_destroy": "write",
    "kv_metadata": "read",
    "transit_encrypt": "write",
    "transit_decrypt": "read",
    "whoami": None,
}


def _token_rejected(exc: VaultPermissionDeniedError) -> bool:
    """Vault's bare ``permission denied`` means the token itself is bad; a policy denial is wrapped."""
    return exc.errors == ["permission denied"]


class SecretService:
    def __init__(self, settings: Settings, vault: VaultClient, keeper: TokenKeeper) -> None:
        self._s = settings
        self._vault = vault
        self._keeper = keeper
        self._mount = settings.kv_mount
        self._transit = settings.transit_mount
        self._prefix = settings.default_prefix

    # -- plumbing ------------------------------------------------------------------------------------

    def authorize(self, identity: Identity, operation: str) -> None:
        scope = OPERATION_SCOPES[operation]
        if scope is not None:
            identity.require(scope)

    def vault_path(self, identity: Identity, path: str) -> str:
        return agent_path(self._prefix, identity.subject, path)

    def transit_key(self, identity: Identity, key: str) -> str:
        return f"{self._prefix}.{identity.subject}.{key}"

    async def _call(self, identity: Identity, what: str, fn: Callable[[str], Awaitable[T]]) -> T:
        """Run ``fn(token)`` with the right Vault token; retry once after a re-login if the token was gone."""
        try:
            token = await self._keeper.ensure()
            try:
                return await fn(token)
            except VaultPermissionDeniedError as exc:
                if not _token_rejected(exc):
                    raise
                fresh = await self._keeper.recover(token)
                if fresh is None:
                    raise
                return await fn(fresh)
        except VaultError as exc:
            raise from_vault_error(exc, what=what) from None

    # -- KV v2 ---------------------------------------------------------------------------------------

    async def read(self, identity: Identity, path: str, version: int | None = None) -> SecretOut:
        self.authorize(identity, "kv_read")
        path = validate_path(path)
        full = self.vault_path(identity, path)

        async def go(token: str) -> dict[str, Any]:
            return await self._vault.kv.read(self._mount, full, version=version, token=token)

        try:
            result = await self._call(identity, "the read", go)
        except NotFoundError as exc:
            raise self._not_found(path, exc) from None
        meta = result.get("metadata") or {}
        return SecretOut(path=path, data=result.get("data") or {}, version=int(meta.get("version") or 0),
                         created_time=str(meta.get("created_time") or ""),
                         custom_metadata=meta.get("custom_metadata"))

    def _not_found(self, path: str, exc: BridgeError) -> BridgeError:
        cause = exc.__cause__ or exc.__context__
        body = cause.body if isinstance(cause, VaultNotFoundError) else None
        meta = ((body or {}).get("data") or {}).get("metadata") if body else None
        if isinstance(meta, dict):
            version = meta.get("version")
            if meta.get("destroyed"):
                return NotFoundError(f"Version {version} of '{path}' was destroyed and cannot be recovered.",
                                     code="secret_destroyed",
                                     extra={"version": version, "deletion_time": meta.get("deletion_time") or None})
            if meta.get("deletion_time"):
                return NotFoundError(
                    f"Version {version} of '{path}' is deleted; undelete it to read it again.",
                    code="secret_deleted",
                    extra={"version": version, "deletion_time": meta.get("deletion_time")})
        return NotFoundError(f"No secret at '{path}'.")

    async def write(self, identity: Identity, path: str, body: WriteBody) -> WriteOut:
        self.authorize(identity, "kv_write")
        path = validate_path(path)
        full = self.vault_path(identity, path)

        async def go(token: str) -> dict[str, Any]:
            return await self._vault.kv.write(self._mount, full, body.data, cas=body.cas, token=token)

        meta = await self._call(identity, "the write", go)
        return WriteOut(path=path, data=body.data, version=int(meta.get("version") or 0),
                        created_time=str(meta.get("created_time") or ""))

    async def patch(self, identity: Identity, path: str, body: PatchBody) -> PatchOut:
        self.authorize(identity, "kv_patch")
        path = validate_path(path)
        full = self.vault_path(identity, path)

        async def go(token: str) -> dict[str, Any]:
            return await self._vault.kv.patch(self._mount, full, body.data, cas=body.cas, token=token)

        try:
            meta = await self._call(identity, "the patch", go)
        except NotFoundError:
            raise NotFoundError(f"No secret at '{path}' to patch (or its latest version is deleted); "
                                "write it first.") from None
        return PatchOut(path=path, version=int(meta.get("version") or 0),
                        created_time=str(meta.get("created_time") or ""))

    async def delete(self, identity: Identity, path: str) -> None:
        self.authorize(identity, "kv_delete")
        path = validate_path(path)
        full = self.vault_path(identity, path)

        async def go(token: str) -> None:
            await self._vault.kv.delete_latest(self._mount, full, token=token)

        await self._call(identity, "the delete", go)

    async def undelete(self, identity: Identity, path: str, body: VersionsBody) -> OkOut:
        self.authorize(identity, "kv_undelete")
        path = validate_path(path)
        full = self.vault_path(identity, path)

        async def go(token: str) -> None:
            await self._vault.kv.undelete(self._mount, full, body.versions, token=token)

        await self._call(identity, "the undelete", go)
        return OkOut(ok=True)

    async def destroy(self, identity: Identity, path: str, body: VersionsBody) -> OkOut:
        self.authorize(identity, "kv_destroy")
        path = validate_path(path)
        full = self.vault_path(identity, path)

        async def go(token: str) -> None:
            await self._vault.kv.destroy(self._mount, full, body.versions, token=token)

        await self._call(identity, "the destroy", go)
        return OkOut(ok=True)

    async def list(self, identity: Identity, prefix: str | None) -> ListOut:
        self.authorize(identity, "kv_list")
        prefix = validate_prefix(prefix)
        full = self.vault_path(identity, prefix)

        async def go(token: str) -> list[str]:
            return await self._vault.kv.list(self._mount, full, token=token)

        keys = await self._call(identity, "the list", go)
        return ListOut(prefix=prefix, keys=keys)

    async def metadata(self, identity: Identity, path: str) -> MetadataOut:
        self.authorize(identity, "kv_metadata")
        path = validate_path(path)
        full = self.vault_path(identity, path)

        async def go(token: str) -> dict[str, Any]:
            return await self._vault.kv.metadata(self._mount, full, token=token)

        try:
            meta = await self._call(identity, "the metadata read", go)
        except NotFoundError:
            raise NotFoundError(f"No secret at '{path}'.") from None
        return MetadataOut(
            current_version=int(meta.get("current_version") or 0),
            oldest_version=int(meta.get("oldest_version") or 0),
            created_time=str(meta.get("created_time") or ""),
            updated_time=str(meta.get("updated_time") or ""),
            versions=dict(meta.get("versions") or {}),
            custom_metadata=meta.get("custom_metadata"),
        )

    # -- Transit -------------------------------------------------------------------------------------

    async def encrypt(self, identity: Identity, body: EncryptBody) -> EncryptOut:
        self.authorize(identity, "transit_encrypt")
        key = self.transit_key(identity, body.key)

        async def go(token: str) -> dict[str, Any]:
            return await self._vault.transit.encrypt(self._transit, key, body.plaintext, token=token)

        out = await self._call(identity, "the encryption", go)
        return EncryptOut(ciphertext=str(out.get("ciphertext") or ""), key_version=int(out.get("key_version") or 0))

    async def decrypt(self, identity: Identity, body: DecryptBody) -> DecryptOut:
        self.authorize(identity, "transit_decrypt")
        key = self.transit_key(identity, body.key)

        async def go(token: str) -> dict[str, Any]:
            return await self._vault.transit.decrypt(self._transit, key, body.ciphertext, token=token)

        out = await self._call(identity, "the decryption", go)
        return DecryptOut(plaintext=str(out.get("plaintext") or ""))

    # -- identity ------------------------------------------------------------------------------------

    def whoami(self, identity: Identity) -> WhoamiOut:
        return WhoamiOut(subject=identity.subject, auth_method=identity.auth_method,
                         scopes=sorted(identity.scopes),
                         vault_path_prefix=f"{self._mount}/data/{self._prefix}/{identity.subject}/")
