"""KV v2 secrets engine."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from bridge.vault.client import VaultResponse, quote_path
from bridge.vault.errors import VaultNotFoundError

if TYPE_CHECKING:
    from bridge.vault.client import VaultClient


class KvV2:
    """``{mount}/data|metadata|delete|undelete|destroy/{path}``; ``path`` is a full path below the mount."""

    def __init__(self, client: VaultClient) -> None:
        self._c = client

    async def read(self, mount: str, path: str, *, version: int | None = None,
                   token: str | None = None) -> dict[str, Any]:
        """``{"data": {...}, "metadata": {...}}``. A deleted or destroyed version raises
        :class:`VaultNotFoundError` whose ``body`` holds the metadata."""
        params = {"version": str(version)} if version else None
        resp = await self._c.request("GET", f"{mount}/data/{quote_path(path)}", operation="kv.read",
                                     token=token, params=params)
        return resp.data or {}

    async def write(self, mount: str, path: str, data: dict[str, Any], *, cas: int | None = None,
                    token: str | None = None) -> dict[str, Any]:
        """Returns the new version's metadata (``version``, ``created_time`` …)."""
        body: dict[str, Any] = {"data": data}
        if cas is not None:
            body["options"] = {"cas": cas}
        resp = await self._c.request("POST", f"{mount}/data/{quote_path(path)}", operation="kv.write",
                                     token=token, json_body=body)
        return resp.data or {}

    async def patch(self, mount: str, path: str, data: dict[str, Any], *, cas: int | None = None,
                    token: str | None = None) -> dict[str, Any]:
        """JSON merge patch; raises :class:`VaultNotFoundError` when the secret does not exist."""
        body: dict[str, Any] = {"data": data}
        if cas is not None:
            body["options"] = {"cas": cas}
        resp = await self._c.request("PATCH", f"{mount}/data/{quote_path(path)}", operation="kv.patch",
                                     token=token, json_body=body,
                                     content_type="application/merge-patch+json")
        return resp.data or {}

    async def delete_latest(self, mount: str, path: str, *, token: str | None = None) -> None:
        await self._c.request("DELETE", f"{mount}/data/{quote_path(path)}", operation="kv.delete",
                              token=token)

    async def undelete(self, mount: str, path: str, versions: list[int], *, token: str | None = None) -> None:
        await self._c.request("POST", f"{mount}/undelete/{quote_path(path)}", operation="kv.undelete",
                              token=token, json_body={"versions": versions})

    async def destroy(self, mount: str, path: str, versions: list[int], *, token: str | None = None) -> None:
        await self._c.request("POST", f"{mount}/destroy/{quote_path(path)}", operation="kv.destroy",
                              token=token, json_body={"versions": versions})

    async def list(self, mount: str, prefix: str, *, token: str | None = None) -> list[str]:
        """Keys below ``prefix``; an empty or missing prefix is ``[]``."""
        try:
            # GET ?list=true is Vault's documented twin of the LIST verb, and passes proxies and HTTP
            # parsers that refuse non-standard methods (llhttp, hence aiohttp servers, answer LIST with 400).
            resp: VaultResponse = await self._c.request(
                "GET", f"{mount}/metadata/{quote_path(prefix)}", operation="kv.list", token=token,
                params={"list": "true"},
            )
        except VaultNotFoundError:
            return []
        return [str(k) for k in (resp.data or {}).get("keys") or []]

    async def metadata(self, mount: str, path: str, *, token: str | None = None) -> dict[str, Any]:
        resp = await self._c.request("GET", f"{mount}/metadata/{quote_path(path)}", operation="kv.metadata",
                                     token=token)
        return resp.data or {}
