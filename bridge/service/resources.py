"""The agent's secrets and Transit keys as a catalog: names, versions and times, never a value or key material.

MCP serves them as resources (``vault://kv/<path>``, ``vault://transit/<key>``; :mod:`bridge.mcp.resources`) and
completes paths from them. A page of secrets is found by walking the agent's KV folders depth first in Vault's
(sorted) order, which is the order of the full paths, so a page resumes after the last path seen without
listing the folders before it again; each secret of a page gets its metadata read (current version and times).
Secrets whose latest version is deleted or destroyed, and metadata-only entries, are left out: every listed
secret can be read. A page walks at most :data:`MAX_FOLDERS` folders; it then ends early with a cursor.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from bridge.auth.identity import Identity
from bridge.errors import BridgeError, InvalidPathError, NotFoundError
from bridge.models import (
    SecretEntry,
    SecretsPageArgs,
    SecretsPageOut,
    TransitKeyArgs,
    TransitKeyInfo,
    TransitKeysArgs,
    TransitKeysOut,
)
from bridge.paths import validate_path
from bridge.service.access import VaultAccess
from bridge.vault.errors import VaultError
from bridge.vault.models import KvMetadata, TransitKey

MAX_FOLDERS = 200
"""The most folders one page lists (a namespace with more folders is paged by this bound too)."""
CONCURRENCY = 8
"""Metadata reads (or key reads) of one page in flight at once."""


class _Walk:
    """The depth-first walk of one page: paths after ``after``, folders counted against :data:`MAX_FOLDERS`."""

    def __init__(self, service: ResourceService, identity: Identity, after: str) -> None:
        self.service = service
        self.identity = identity
        self.after = after
        self.folders = 0
        self.truncated = False
        self.last = after

    async def paths(self, prefix: str = "") -> AsyncIterator[str]:
        if self.folders >= MAX_FOLDERS:
            self.truncated = True
            return
        self.folders += 1
        for key in sorted(await self.service.list_folder(self.identity, prefix)):
            full = prefix + key
            if key.endswith("/"):
                if full < self.after and not self.after.startswith(full):
                    continue  # every path below sorts before the cursor
                async for path in self.paths(full):
                    yield path
                if self.truncated:
                    return
            elif full > self.after:
                self.last = full
                yield full


class ResourceService:
    def __init__(self, access: VaultAccess) -> None:
        settings = access.settings
        self._access = access
        self._vault = access.vault
        self._kv = settings.kv_mount
        self._transit = settings.transit_mount
        self._shared = settings.transit_key_scope == "shared"
        self._key_prefix = f"{settings.default_prefix}.{{agent}}."

    async def secrets(self, identity: Identity, args: SecretsPageArgs) -> SecretsPageOut:
        """A page of the agent's readable secrets after ``args.after``, in path order."""
        walk = _Walk(self, identity, args.after)
        found: list[SecretEntry] = []
        batch: list[str] = []
        more = False
        async for path in walk.paths():
            try:
                batch.append(validate_path(path))
            except InvalidPathError:
                continue  # written to Vault directly with a name the bridge cannot address
            if len(batch) >= args.limit - len(found):
                found.extend(await self._entries(identity, batch))
                batch = []
                if len(found) >= args.limit:
                    more = True
                    break
        found.extend(await self._entries(identity, batch))
        if walk.truncated:
            more = True
        next_after = (found[-1].path if len(found) >= args.limit else walk.last) if more else None
        return SecretsPageOut(secrets=found[:args.limit], next_after=next_after)

    async def list_folder(self, identity: Identity, prefix: str) -> list[str]:
        full = self._access.kv_path(identity, prefix)

        async def go(token: str) -> list[str]:
            return await self._vault.kv.list(self._kv, full, token=token)

        return await self._access.call(identity, "the list", go)

    async def _entries(self, identity: Identity, paths: list[str]) -> list[SecretEntry]:
        gate = asyncio.Semaphore(CONCURRENCY)

        async def one(path: str) -> SecretEntry | None:
            full = self._access.kv_path(identity, path)

            async def go(token: str) -> KvMetadata:
                return await self._vault.kv.metadata(self._kv, full, token=token)

            async with gate:
                try:
                    meta = await self._access.call(identity, "the metadata read", go)
                except NotFoundError:
                    return None
            latest = meta.versions.get(str(meta.current_version))
            if meta.current_version == 0 or not isinstance(latest, dict) or latest.get("destroyed") \
                    or latest.get("deletion_time"):
                return None
            return SecretEntry(path=path, version=meta.current_version, created_time=meta.created_time,
                               updated_time=meta.updated_time)

        return [entry for entry in await asyncio.gather(*(one(p) for p in paths)) if entry is not None]

    async def transit_keys(self, identity: Identity, args: TransitKeysArgs) -> TransitKeysOut:
        """A page of the agent's Transit keys after ``args.after`` (every key of the mount with
        ``TRANSIT_KEY_SCOPE=shared``), each described; the names are listed with the bridge's own token (an
        agent's may not list the mount), the descriptions read with the agent's."""

        async def names(token: str) -> list[str]:
            return await self._vault.transit.list_keys(self._transit, token=token)

        try:
            every = await self._access.as_bridge(names)
        except VaultError:
            every = []  # the bridge may not list the mount: no keys to show (using them works all the same)
        prefix = self._key_prefix.format(agent=identity.subject)
        own = sorted(name if self._shared else name[len(prefix):] for name in every
                     if self._shared or name.startswith(prefix))
        own = [name for name in own if name > args.after]
        page, rest = own[:args.limit], own[args.limit:]
        gate = asyncio.Semaphore(CONCURRENCY)

        async def one(name: str) -> TransitKeyInfo | None:
            async with gate:
                try:
                    return await self.transit_key(identity, TransitKeyArgs(key=name))
                except BridgeError:  # gone since the listing, or denied (the fingerprint key of shared keys)
                    return None

        keys = [k for k in await asyncio.gather(*(one(n) for n in page if _key_name_ok(n))) if k is not None]
        return TransitKeysOut(keys=keys, next_after=page[-1] if rest else None)

    async def transit_key(self, identity: Identity, args: TransitKeyArgs) -> TransitKeyInfo:
        """One of the agent's Transit keys: its type and versions (never key material)."""
        name = args.key if self._shared else f"{self._key_prefix.format(agent=identity.subject)}{args.key}"

        async def go(token: str) -> TransitKey:
            return await self._vault.transit.read_key(self._transit, name, token=token)

        try:
            info = await self._access.call(identity, "the key read", go)
        except NotFoundError:
            raise NotFoundError(f"You have no Transit key '{args.key}'.", code="key_not_found",
                                extra={"key": args.key}) from None
        return TransitKeyInfo(key=args.key, type=info.type, latest_version=info.latest_version,
                              supports_encryption=info.supports_encryption,
                              supports_decryption=info.supports_decryption, supports_signing=info.supports_signing)

    async def state(self, identity: Identity, kind: str, name: str) -> str:
        """A fingerprint of the state of the agent's secret (``kind="kv"``) or Transit key: what the change
        poller compares (current version, update time, the latest version's deletion; ``absent``). Metadata only,
        read with the agent's token; no operation, so neither audited nor charged."""
        if kind == "transit":
            try:
                info = await self.transit_key(identity, TransitKeyArgs(key=name))
            except NotFoundError:
                return "absent"
            return f"{info.type}:{info.latest_version}"
        full = self._access.kv_path(identity, validate_path(name))

        async def go(token: str) -> KvMetadata:
            return await self._vault.kv.metadata(self._kv, full, token=token)

        try:
            meta = await self._access.call(identity, "the metadata read", go)
        except NotFoundError:
            return "absent"
        latest = meta.versions.get(str(meta.current_version))
        latest = latest if isinstance(latest, dict) else {}
        gone = f"{latest.get('deletion_time') or ''}:{bool(latest.get('destroyed'))}"
        return f"{meta.current_version}:{meta.updated_time}:{gone}"


def _key_name_ok(name: str) -> bool:
    try:
        TransitKeyArgs(key=name)
    except ValueError:
        return False
    return True
