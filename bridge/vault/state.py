"""The bridge's own shared state in Vault: JSON documents below ``{KV_MOUNT}/data/{DEFAULT_PREFIX}/_bridge/``.

Every replica sees them and they survive restarts; no agent policy reaches them (docs/dynamic.md, "Bridge state
in Vault"). Every call is made with the bridge's own token; metrics and traces name them ``state.read``,
``state.write``, ``state.list`` and ``state.delete`` (not an agent's ``kv.*``). Concurrent replicas change a
document with check-and-set (:meth:`BridgeState.update`): read it with its version, compute the new content,
write it with ``cas`` = that version, and on a mismatch (another replica wrote first) read again and retry.

What lives here (issue 13): ``quarantine`` (the quarantined agents), ``lease-tokens/<agent>`` (each agent's lease
token), ``leases/<agent>`` (the leases the bridge obtained for the agent, and when it was last seen),
``lease-values/<agent>/<hash>`` (database passwords held for ``use``-only identities) and ``database-roles/<role>``
(a database role's ``allowed_hosts``, written by ``provision --dynamic``): see :mod:`bridge.lease_values`.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from bridge.vault.api import quote_path
from bridge.vault.client import VaultClient
from bridge.vault.errors import VaultError, VaultInvalidRequestError
from bridge.vault.models import KvSecret, KvVersion
from bridge.vault.tokens import TokenSource, with_token

STATE_DIR = "_bridge"
"""Below ``{KV_MOUNT}/data/{DEFAULT_PREFIX}/``; never an agent's namespace (agent ids start with ``[a-z0-9]``)."""
CAS_ATTEMPTS = 12
_CAS_MISMATCH = "check-and-set parameter did not match"


class StateConflictError(VaultError):
    """A check-and-set write lost to another writer (:meth:`BridgeState.write`), or :meth:`BridgeState.update`
    lost :data:`CAS_ATTEMPTS` times in a row."""


@dataclass(frozen=True, slots=True)
class StateDoc:
    """A document and the KV version it was read at (the ``cas`` of the next write)."""

    data: dict[str, Any]
    version: int


Change = Callable[[dict[str, Any] | None], dict[str, Any] | None]
"""``update``'s function: the current content (``None``: no document) → the new content; returning its argument
itself (``None`` included) writes nothing."""


class BridgeState:
    """Documents of the bridge state subtree, read and written with the bridge's own token (``tokens``)."""

    def __init__(self, vault: VaultClient, tokens: TokenSource[Any], *, mount: str, prefix: str) -> None:
        self._vault = vault
        self._tokens = tokens
        self._mount = mount
        self._base = f"{prefix}/{STATE_DIR}"

    def path(self, name: str) -> str:
        """``name``'s path below the KV mount (``mcp/_bridge/leases/alice``)."""
        return f"{self._base}/{name}"

    def _url(self, kind: str, name: str) -> str:
        return f"{self._mount}/{kind}/{quote_path(self.path(name))}"

    async def read(self, name: str) -> StateDoc | None:
        """The document, or ``None`` when there is none (or its latest version is deleted)."""

        async def go(token: str) -> StateDoc | None:
            data = await self._vault.logical.read(self._url("data", name), token=token, operation="state.read")
            if data is None:
                return None
            secret = KvSecret.parse(data)
            return StateDoc(secret.data, secret.metadata.version)

        return await with_token(self._tokens, "", "", go)

    async def write(self, name: str, data: dict[str, Any], *, cas: int | None = None) -> int:
        """Write a new version (``cas``: only if the current version is that, 0: only if there is none); the new
        version. A lost check-and-set raises :class:`StateConflictError`."""
        body: dict[str, Any] = {"data": data}
        if cas is not None:
            body["options"] = {"cas": cas}

        async def go(token: str) -> int:
            try:
                resp = await self._vault.logical.write(self._url("data", name), body, token=token,
                                                       operation="state.write")
            except VaultInvalidRequestError as exc:
                if _CAS_MISMATCH in exc.detail:
                    raise StateConflictError(f"{name} changed meanwhile") from None
                raise
            return KvVersion.parse(resp.data).version

        return await with_token(self._tokens, "", "", go)

    async def delete(self, name: str) -> None:
        """Delete the document with every version (no error when there is none)."""

        async def go(token: str) -> None:
            await self._vault.logical.delete(self._url("metadata", name), token=token, operation="state.delete")

        await with_token(self._tokens, "", "", go)

    async def names(self, folder: str) -> list[str]:
        """The document names in ``folder`` (``leases``): ``[]`` when there is none."""

        async def go(token: str) -> list[str]:
            return await self._vault.logical.list(self._url("metadata", folder), token=token,
                                                  operation="state.list")

        return [name for name in await with_token(self._tokens, "", "", go) if not name.endswith("/")]

    async def update(self, name: str, change: Change) -> dict[str, Any] | None:
        """Apply ``change`` with check-and-set until it sticks (a short random pause between attempts); the
        content now stored. A document is never deleted here (a delete cannot be made conditional, and would
        drop a concurrent writer's change): an emptied one is written empty."""
        for attempt in range(CAS_ATTEMPTS):
            doc = await self.read(name)
            current = doc.data if doc is not None else None
            new = change(current)
            if new is current or new is None:
                return current
            try:
                await self.write(name, new, cas=doc.version if doc is not None else 0)
            except StateConflictError:
                await asyncio.sleep(random.uniform(0.005, 0.02) * (attempt + 1))  # noqa: S311 - jitter
                continue
            return new
        raise StateConflictError(f"{name}: {CAS_ATTEMPTS} concurrent changes in a row")
