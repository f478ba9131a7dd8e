"""KV v2 secrets of the calling agent, confined to ``{KV_MOUNT}/data/{DEFAULT_PREFIX}/{agent}/``.

A read answers values, references and fingerprints, or a wrapping token, by the rules of
:mod:`bridge.service.secrets`; a write or patch answers where and which version, never the data; custom metadata
is shown without ``bridge.canary``, and no operation writes it.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from bridge.auth.identity import Identity
from bridge.errors import BridgeError, ConflictError, ForbiddenError, InvalidRequestError, NotFoundError
from bridge.models import (
    FieldRef,
    KvListArgs,
    KvPatchArgs,
    KvReadArgs,
    KvReadOut,
    KvVersionsArgs,
    KvWriteArgs,
    ListOut,
    MetadataOut,
    OkOut,
    PatchOut,
    PathArgs,
    SecretOut,
    SecretRefsOut,
    WrapInfoOut,
    WrappedSecretOut,
    WriteOut,
)
from bridge.paths import validate_path, validate_prefix
from bridge.references import Reference
from bridge.secret_settings import SecretSettings, agent_view
from bridge.service.access import VaultAccess
from bridge.service.secrets import SecretValues, gone, referable, value_text, version_error
from bridge.vault.models import KvVersion, WrapInfo


class _Put(Protocol):
    """``KvV2.write`` or ``KvV2.patch``."""

    def __call__(self, mount: str, path: str, data: dict[str, Any], *, token: str,
                 cas: int | None = None) -> Awaitable[KvVersion]: ...


class KvService:
    def __init__(self, access: VaultAccess) -> None:
        self._access = access
        self._vault = access.vault
        self._mount = access.settings.kv_mount
        self._wrap_max = int(access.settings.wrap_max_ttl)
        self._values = SecretValues(access)

    async def read(self, identity: Identity, args: KvReadArgs) -> KvReadOut:
        """Values, references and fingerprints, or a wrapping token (see :mod:`bridge.service.secrets`)."""
        path = validate_path(args.path)
        if args.wrap_ttl is not None:
            return KvReadOut(await self._wrapped(identity, path, args))
        secret = await self._values.read(identity, path, args.version)
        meta = secret.metadata
        settings = SecretSettings.parse(meta.custom_metadata)
        if self._values.may_reveal(identity, settings):
            await self._values.tripwire(identity, settings, operation="kv_read", path=path, how="read")
            return KvReadOut(SecretOut(path=path, data=secret.data, version=meta.version,
                                       created_time=meta.created_time,
                                       custom_metadata=agent_view(meta.custom_metadata)))
        await self._values.tripwire(identity, settings, operation="kv_read", path=path, how="reference")
        names = list(secret.data)
        prints = await self._values.fingerprints([value_text(secret.data[name]) for name in names])
        fields = {name: FieldRef(fingerprint=fingerprint,
                                 reference=str(Reference(path, name, meta.version)) if referable(name) else None)
                  for name, fingerprint in zip(names, prints, strict=True)}
        return KvReadOut(SecretRefsOut(path=path, version=meta.version, fields=fields))

    async def _wrapped(self, identity: Identity, path: str, args: KvReadArgs) -> WrappedSecretOut:
        """Wrapped delivery: the read of the secret (latest or ``version``) wrapped by Vault, under the caller's own
        token (Vault applies the agent's policy), for ``wrap_ttl`` (at most ``WRAP_MAX_TTL``). Refused for a
        secret whose ``bridge.reveal`` is ``never``. The metadata is read first (settings, version, deletion);
        the wrapped read is pinned to that version, so the answer names the version that was wrapped."""
        ttl = args.wrap_seconds or 0
        if not 1 <= ttl <= self._wrap_max:
            raise InvalidRequestError(
                f"'wrap_ttl' must be from 1s to {self._wrap_max}s (WRAP_MAX_TTL).", code="invalid_wrap_ttl",
                extra={"max_seconds": self._wrap_max})
        meta = await self._values.metadata(identity, path)
        settings = SecretSettings.parse(meta.custom_metadata)
        await self._values.tripwire(identity, settings, operation="kv_read", path=path, how="wrap")  # even if refused
        if not settings.revealable:
            raise ForbiddenError(
                f"'{path}' is marked bridge.reveal=never: its values leave the bridge for no one, wrapped or not. "
                "Use it by reference (http_request, input_ref).", code="secret_not_revealable")
        version = args.version or meta.current_version
        entry = meta.versions.get(str(version))
        if meta.current_version == 0 or (args.version is None and not isinstance(entry, dict)):
            raise NotFoundError(f"No secret at '{path}'.")
        if not isinstance(entry, dict):
            raise version_error(path, version, meta.current_version, meta.oldest_version)
        version_meta = KvVersion.parse({**entry, "version": version})
        if version_meta.destroyed or version_meta.deletion_time:
            raise gone(path, version_meta)
        full = self._access.kv_path(identity, path)

        async def go(token: str) -> WrapInfo:
            return await self._vault.kv.read_wrapped(self._mount, full, token=token, version=version, wrap_ttl=ttl)

        try:
            wrap = await self._access.call(identity, "the wrapped read", go)
        except NotFoundError:  # deleted or destroyed since the metadata was read
            raise NotFoundError(f"Version {version} of '{path}' is no longer readable.") from None
        return WrappedSecretOut(path=path, version=version, wrap_info=WrapInfoOut(
            token=wrap.token.get_secret_value(), accessor=wrap.accessor, ttl=wrap.ttl,
            creation_time=wrap.creation_time, creation_path=wrap.creation_path))

    async def write(self, identity: Identity, args: KvWriteArgs) -> WriteOut:
        path, meta = await self._new_version(identity, args.path, args.cas, "the write", self._vault.kv.write,
                                             args.data)
        return WriteOut(path=path, version=meta.version, created_time=meta.created_time)  # never the data

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
        meta = await self._values.metadata(identity, validate_path(args.path))
        return MetadataOut(current_version=meta.current_version, oldest_version=meta.oldest_version,
                           created_time=meta.created_time, updated_time=meta.updated_time, versions=meta.versions,
                           custom_metadata=agent_view(meta.custom_metadata))

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

    async def _cas_conflict(self, identity: Identity, full: str, path: str, cas: int | None,
                            exc: ConflictError) -> BridgeError:
        """A check-and-set mismatch, naming the secret's current version (read from Vault after the conflict:
        Vault's message does not carry it)."""
        versions = await self._values.versions(identity, full)
        if versions is None:
            return exc
        current = versions[0]
        now = f"'{path}' does not exist yet (current version 0)" if current == 0 else \
            f"the current version of '{path}' is {current}"
        return ConflictError(
            f"Check-and-set failed: 'cas' was {cas} but {now}. Read the secret, then write with cas={current} "
            "(0 = only if it does not exist).", extra={"current_version": current})

