"""KV v2 secrets of the calling agent, confined to ``{KV_MOUNT}/data/{DEFAULT_PREFIX}/{agent}/``."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from bridge.auth.identity import Identity
from bridge.errors import BridgeError, ConflictError, NotFoundError
from bridge.models import (
    KvListArgs,
    KvPatchArgs,
    KvReadArgs,
    KvVersionsArgs,
    KvWriteArgs,
    ListOut,
    MetadataOut,
    OkOut,
    PatchOut,
    PathArgs,
    SecretOut,
    WriteOut,
)
from bridge.paths import validate_path, validate_prefix
from bridge.service.access import VaultAccess
from bridge.vault.errors import VaultNotFoundError
from bridge.vault.models import KvMetadata, KvSecret, KvVersion


class _Put(Protocol):
    """``KvV2.write`` or ``KvV2.patch``."""

    def __call__(self, mount: str, path: str, data: dict[str, Any], *, token: str,
                 cas: int | None = None) -> Awaitable[KvVersion]: ...


class KvService:
    def __init__(self, access: VaultAccess) -> None:
        self._access = access
        self._vault = access.vault
        self._mount = access.settings.kv_mount

    async def read(self, identity: Identity, args: KvReadArgs) -> SecretOut:
        path = validate_path(args.path)
        full = self._access.kv_path(identity, path)
        version = args.version

        async def go(token: str) -> KvSecret:
            try:
                return await self._vault.kv.read(self._mount, full, version=version, token=token)
            except VaultNotFoundError as exc:
                meta = exc.version_meta
                if meta is None or not (meta.destroyed or meta.deletion_time):
                    raise
                raise _gone(path, meta) from None

        try:
            result = await self._access.call(identity, "the read", go)
        except NotFoundError as exc:
            if exc.code != "not_found":
                raise  # deleted or destroyed
            err: BridgeError = NotFoundError(f"No secret at '{path}'.")
            if version:
                err = await self._version_not_found(identity, full, path, version) or err
            raise err from None
        meta = result.metadata
        return SecretOut(path=path, data=result.data, version=meta.version, created_time=meta.created_time,
                         custom_metadata=meta.custom_metadata)

    async def write(self, identity: Identity, args: KvWriteArgs) -> WriteOut:
        path, meta = await self._new_version(identity, args.path, args.cas, "the write", self._vault.kv.write,
                                             args.data)
        return WriteOut(path=path, data=args.data, version=meta.version, created_time=meta.created_time)

    async def patch(self, identity: Identity, args: KvPatchArgs) -> PatchOut:
        try:
            path, meta = await self._new_version(identity, args.path, args.cas, "the patch", self._vault.kv.patch,
                                                 args.data)
        except NotFoundError:
            raise NotFoundError(f"No secret at '{args.path}' to patch (or its latest version is deleted); "
                                "write it first.") from None
        return PatchOut(path=path, version=meta.version, created_time=meta.created_time)

    async def delete(self, identity: Identity, args: PathArgs) -> OkOut:
        return await self._change(identity, args.path, "the delete",
                                  lambda full, token: self._vault.kv.delete_latest(self._mount, full, token=token))

    async def undelete(self, identity: Identity, args: KvVersionsArgs) -> OkOut:
        return await self._change(identity, args.path, "the undelete", lambda full, token: self._vault.kv.undelete(
            self._mount, full, args.versions, token=token))

    async def destroy(self, identity: Identity, args: KvVersionsArgs) -> OkOut:
        return await self._change(identity, args.path, "the destroy", lambda full, token: self._vault.kv.destroy(
            self._mount, full, args.versions, token=token))

    async def list_keys(self, identity: Identity, args: KvListArgs) -> ListOut:
        prefix = validate_prefix(args.prefix)
        full = self._access.kv_path(identity, prefix)

        async def go(token: str) -> list[str]:
            return await self._vault.kv.list(self._mount, full, token=token)

        return ListOut(prefix=prefix, keys=await self._access.call(identity, "the list", go))

    async def metadata(self, identity: Identity, args: PathArgs) -> MetadataOut:
        path = validate_path(args.path)
        full = self._access.kv_path(identity, path)

        async def go(token: str) -> KvMetadata:
            return await self._vault.kv.metadata(self._mount, full, token=token)

        try:
            meta = await self._access.call(identity, "the metadata read", go)
        except NotFoundError:
            raise NotFoundError(f"No secret at '{path}'.") from None
        return MetadataOut(current_version=meta.current_version, oldest_version=meta.oldest_version,
                           created_time=meta.created_time, updated_time=meta.updated_time, versions=meta.versions,
                           custom_metadata=meta.custom_metadata)

    async def _new_version(self, identity: Identity, path: str, cas: int | None, what: str, put: _Put,
                           data: dict[str, Any]) -> tuple[str, KvVersion]:
        """A new version by ``put`` (write or patch): the validated path and the version's metadata; a
        check-and-set mismatch names the secret's current version."""
        path = validate_path(path)
        full = self._access.kv_path(identity, path)
        try:
            meta = await self._access.call(identity, what,
                                           lambda token: put(self._mount, full, data, cas=cas, token=token))
        except ConflictError as exc:
            raise await self._cas_conflict(identity, full, path, cas, exc) from None
        return path, meta

    async def _change(self, identity: Identity, path: str, what: str,
                      change: Callable[[str, str], Awaitable[None]]) -> OkOut:
        """``change(full_path, token)`` on the agent's secret at ``path`` (an answer without data)."""
        full = self._access.kv_path(identity, validate_path(path))
        await self._access.call(identity, what, lambda token: change(full, token))
        return OkOut(ok=True)

    # -- telling errors apart ------------------------------------------------------------------------------

    async def _versions(self, identity: Identity, full: str) -> tuple[int, int] | None:
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


def _gone(path: str, meta: KvVersion) -> NotFoundError:
    """The read version is destroyed or deleted (Vault's 404 carries its metadata)."""
    if meta.destroyed:
        return NotFoundError(f"Version {meta.version} of '{path}' was destroyed and cannot be recovered.",
                             code="secret_destroyed",
                             extra={"version": meta.version, "deletion_time": meta.deletion_time or None})
    return NotFoundError(f"Version {meta.version} of '{path}' is deleted; undelete it to read it again.",
                         code="secret_deleted", extra={"version": meta.version, "deletion_time": meta.deletion_time})
