"""The caller's own identity, as the bridge sees it."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from bridge.auth.identity import Identity
from bridge.models import NoArgs, WhoamiOut
from bridge.service.access import VaultAccess

Catalog = Callable[[Identity], Awaitable[list[str]]]
"""The names of the operations an identity can use now (``Executor.usable``)."""


class IdentityService:
    def __init__(self, access: VaultAccess) -> None:
        self._prefix = f"{access.settings.kv_mount}/data/{access.settings.default_prefix}/"
        self._catalog: Catalog | None = None

    def bind_catalog(self, catalog: Catalog) -> None:
        """Where ``capabilities`` comes from: the executor, made after the services (``create_app``)."""
        self._catalog = catalog

    async def whoami(self, identity: Identity, args: NoArgs) -> WhoamiOut:
        capabilities = await self._catalog(identity) if self._catalog is not None else []
        return WhoamiOut(subject=identity.subject, auth_method=identity.auth_method, scopes=sorted(identity.scopes),
                         vault_path_prefix=f"{self._prefix}{identity.subject}/", capabilities=capabilities)
