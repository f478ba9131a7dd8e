"""KV v2 secrets engine: ``{mount}/data|metadata|delete|undelete|destroy/{path}``; ``path`` is a full path below
the mount."""

from __future__ import annotations

from typing import Any

from bridge.vault.api import LIST, Requester, quote_path
from bridge.vault.errors import VaultInvalidRequestError, VaultNotFoundError, VaultServerError
from bridge.vault.models import KvMetadata, KvSecret, KvVersion, WrapInfo

CAS_MISMATCH = "check-and-set parameter did not match the current version"
"""Vault's 400 text when a ``cas`` write finds another version (for ``cas: 0``: the secret exists)."""


class KvV2:
    def __init__(self, requester: Requester) -> None:
        self._requester = requester

    async def read(self, mount: str, path: str, *, token: str, version: int | None = None) -> KvSecret:
        """The secret (latest, or ``version``). A missing secret or version raises :class:`VaultNotFoundError`;
        a deleted or destroyed version too, with that version's metadata in ``version_meta``."""
        params = {"version": str(version)} if version else None
        try:
            resp = await self._requester.request("GET", f"{mount}/data/{quote_path(path)}", operation="kv.read",
                                                 token=token, params=params)
        except VaultNotFoundError as exc:
            meta = ((exc.body or {}).get("data") or {}).get("metadata") if isinstance(exc.body, dict) else None
            if isinstance(meta, dict):
                exc.version_meta = KvVersion.parse(meta)
            raise
        return KvSecret.parse(resp.data)

    async def read_wrapped(self, mount: str, path: str, *, token: str, version: int, wrap_ttl: int) -> WrapInfo:
        """The read of ``version``, response-wrapped by Vault for ``wrap_ttl`` seconds (``X-Vault-Wrap-TTL``): the
        wrapping token's ``wrap_info``; the value never reaches the caller. An answer that Vault did not wrap (a
        proxy that drops the header) is refused as a :class:`VaultServerError`, its body left unread."""
        resp = await self._requester.request("GET", f"{mount}/data/{quote_path(path)}", operation="kv.read_wrapped",
                                             token=token, params={"version": str(version)},
                                             headers={"X-Vault-Wrap-TTL": str(wrap_ttl)})
        if resp.wrap_info is None:
            raise VaultServerError(resp.status, ["the answer of a wrapped read was not wrapped"])
        return resp.wrap_info

    async def write(self, mount: str, path: str, data: dict[str, Any], *, token: str,
                    cas: int | None = None) -> KvVersion:
        """Write a new version; its metadata (``version``, ``created_time``)."""
        body: dict[str, Any] = {"data": data}
        if cas is not None:
            body["options"] = {"cas": cas}
        resp = await self._requester.request("POST", f"{mount}/data/{quote_path(path)}", operation="kv.write",
                                             token=token, json_body=body)
        return KvVersion.parse(resp.data)

    async def patch(self, mount: str, path: str, data: dict[str, Any], *, token: str,
                    cas: int | None = None) -> KvVersion:
        """JSON merge patch; raises :class:`VaultNotFoundError` when the secret does not exist."""
        body: dict[str, Any] = {"data": data}
        if cas is not None:
            body["options"] = {"cas": cas}
        resp = await self._requester.request("PATCH", f"{mount}/data/{quote_path(path)}", operation="kv.patch",
                                             token=token, json_body=body,
                                             content_type="application/merge-patch+json")
        return KvVersion.parse(resp.data)

    async def create(self, mount: str, path: str, data: dict[str, Any], *, token: str) -> KvVersion | None:
        """Write version 1 only if the secret does not exist (``cas: 0``); ``None`` when it does. Of concurrent
        creates exactly one gets a version (verified on OpenBao 2.7.2: of 8, one)."""
        try:
            return await self.write(mount, path, data, token=token, cas=0)
        except VaultInvalidRequestError as exc:
            if any(CAS_MISMATCH in error for error in exc.errors):
                return None
            raise

    async def delete_latest(self, mount: str, path: str, *, token: str) -> None:
        await self._requester.request("DELETE", f"{mount}/data/{quote_path(path)}", operation="kv.delete",
                                      token=token)

    async def undelete(self, mount: str, path: str, versions: list[int], *, token: str) -> None:
        await self._requester.request("POST", f"{mount}/undelete/{quote_path(path)}", operation="kv.undelete",
                                      token=token, json_body={"versions": versions})

    async def destroy(self, mount: str, path: str, versions: list[int], *, token: str) -> None:
        await self._requester.request("POST", f"{mount}/destroy/{quote_path(path)}", operation="kv.destroy",
                                      token=token, json_body={"versions": versions})

    async def delete_metadata(self, mount: str, path: str, *, token: str) -> None:
        """Delete the secret with every version and its metadata (``DELETE {mount}/metadata/{path}``); Vault
        answers 204 also when there was nothing, so a later :meth:`create` succeeds again."""
        await self._requester.request("DELETE", f"{mount}/metadata/{quote_path(path)}", operation="kv.metadata.delete",
                                      token=token)

    async def list(self, mount: str, prefix: str, *, token: str) -> list[str]:
        """Keys below ``prefix``; an empty or missing prefix is ``[]``."""
        try:
            resp = await self._requester.request("GET", f"{mount}/metadata/{quote_path(prefix)}",
                                                 operation="kv.list", token=token, params=LIST)
        except VaultNotFoundError:
            return []
        keys = (resp.data or {}).get("keys")
        return [str(k) for k in keys] if isinstance(keys, list) else []

    async def metadata(self, mount: str, path: str, *, token: str) -> KvMetadata:
        resp = await self._requester.request("GET", f"{mount}/metadata/{quote_path(path)}",
                                             operation="kv.metadata", token=token)
        return KvMetadata.parse(resp.data)

    async def write_custom_metadata(self, mount: str, path: str, custom_metadata: dict[str, str | None], *,
                                    token: str, create: bool = False) -> None:
        """Merge ``custom_metadata`` into the secret's (a ``None`` value removes a key); ``create``: the secret has
        no metadata yet, so write it whole (a metadata write of a missing path makes an entry with no versions)."""
        path = f"{mount}/metadata/{quote_path(path)}"
        if create:
            values = {k: v for k, v in custom_metadata.items() if v is not None}
            await self._requester.request("POST", path, operation="kv.metadata.write", token=token,
                                          json_body={"custom_metadata": values})
        else:
            await self._requester.request("PATCH", path, operation="kv.metadata.patch", token=token,
                                          json_body={"custom_metadata": custom_metadata},
                                          content_type="application/merge-patch+json")
