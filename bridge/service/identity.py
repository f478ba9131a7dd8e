"""The caller's own identity, as the bridge sees it."""

from __future__ import annotations

from bridge.auth.identity import Identity
from bridge.models import NoArgs, WhoamiOut
from bridge.service.access import VaultAccess


class IdentityService:
    def __init__(self, access: VaultAccess) -> None:
        self._prefix = f"{access.settings.kv_mount}/data/{access.settings.default_prefix}/"

    async def whoami(self, identity: Identity, args: NoArgs) -> WhoamiOut:
        return WhoamiOut(subject=identity.subject, auth_method=identity.auth_method, scopes=sorted(identity.scopes),
                         vault_path_prefix=f"{self._prefix}{identity.subject}/")
