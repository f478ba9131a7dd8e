"""How the bridge gets its own Vault token: a small login protocol (the Go client's ``AuthMethod``).

- :class:`StaticToken` (``VAULT_TOKEN``): the operator's token, usable at once; its "login" is a lookup
  (``auth/token/lookup-self``) that learns its TTL and renewability. It is never replaced, never revoked.
- :class:`AppRoleLogin` (``VAULT_ROLE_ID`` and a secret id): a real login, repeated whenever a new token is
  needed. The secret id comes from a :data:`SecretIdSource`: a value (``VAULT_SECRET_ID``), a file read at every
  login (``VAULT_SECRET_ID_FILE``, so rewriting it rotates the secret id), or a response-wrapping token unwrapped
  once (``VAULT_WRAPPED_SECRET_ID``).

:class:`bridge.vault.lifetime.TokenKeeper` takes one method and keeps its token alive.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import structlog
from pydantic import SecretStr

from bridge.vault.errors import VaultCredentialError

if TYPE_CHECKING:
    from bridge.vault.client import VaultClient

log = structlog.get_logger("bridge.vault.token")

SecretIdSource = Callable[[], Awaitable[str]]
"""Where an AppRole secret id comes from, asked at every login."""


@dataclass(frozen=True, slots=True)
class Login:
    """What a login (or a static token's lookup) gives the keeper."""

    token: SecretStr
    ttl: float  # seconds left; 0: no expiry (root)
    renewable: bool
    increment: float | None  # the TTL to ask for when renewing (None: the token's own)
    is_root: bool = False


class AuthMethod(Protocol):
    name: str
    """``token`` or ``approle`` (status page, logs)."""
    relogin: bool
    """A new token can be had by logging in again (AppRole): a rejected or expiring token is replaced, and the
    token is revoked at shutdown. False: the token is the operator's (static)."""
    preset: SecretStr | None
    """A token usable before any Vault call (a static token), else ``None``."""

    async def login(self, client: VaultClient) -> Login: ...


class StaticToken:
    name = "token"
    relogin = False

    def __init__(self, token: SecretStr) -> None:
        self.preset: SecretStr | None = token

    async def login(self, client: VaultClient) -> Login:
        assert self.preset is not None
        me = await client.auth_token.lookup_self(token=self.preset.get_secret_value())
        return Login(self.preset, float(me.ttl), me.renewable, float(me.creation_ttl) or None, me.is_root)


class AppRoleLogin:
    name = "approle"
    relogin = True
    preset: SecretStr | None = None

    def __init__(self, role_id: str, secret_id: SecretIdSource, *, mount: str = "approle") -> None:
        self.role_id = role_id
        self._secret_id = secret_id
        self.mount = mount

    async def login(self, client: VaultClient) -> Login:
        auth = await client.approle.login(self.role_id, await self._secret_id(), mount=self.mount)
        ttl = float(auth.lease_duration)
        return Login(auth.client_token, ttl, auth.renewable, ttl or None)


def secret_id_value(secret_id: SecretStr) -> SecretIdSource:
    """``VAULT_SECRET_ID``: the same value at every login."""

    async def value() -> str:
        return secret_id.get_secret_value()

    return value


def secret_id_from_file(path: str) -> SecretIdSource:
    """``VAULT_SECRET_ID_FILE``: read at every login, so rewriting the file rotates the secret id."""

    async def read() -> str:
        try:
            text = await asyncio.to_thread(Path(path).read_text, encoding="utf-8")
        except OSError as exc:
            raise VaultCredentialError(f"cannot read VAULT_SECRET_ID_FILE ({exc.strerror})") from None
        secret = text.strip()
        if not secret:
            raise VaultCredentialError("VAULT_SECRET_ID_FILE is empty")
        return secret

    return read


def secret_id_from_wrapping_token(client: VaultClient, wrapping_token: SecretStr) -> SecretIdSource:
    """``VAULT_WRAPPED_SECRET_ID``: unwrapped once (``sys/wrapping/unwrap`` with the wrapping token as the request
    token), then kept in memory; a wrapping token works only once."""
    unwrapped: list[str] = []
    lock = asyncio.Lock()

    async def unwrap() -> str:
        async with lock:
            if not unwrapped:
                data = await client.sys.unwrap(wrapping_token.get_secret_value())
                secret = str(data.get("secret_id") or "")
                if not secret:
                    raise VaultCredentialError("the wrapping token did not wrap an AppRole secret id")
                unwrapped.append(secret)
                log.info("vault.secret_id.unwrapped")
            return unwrapped[0]

    return unwrap
