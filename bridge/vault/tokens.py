"""The tokens the bridge calls Vault with, behind one interface, and the one re-login-and-retry rule.

Two sources hand out tokens: :class:`bridge.vault.lifetime.TokenKeeper` (the bridge's own token, the same for
every agent) and :class:`bridge.vault.childtokens.ChildTokenBroker` (a short-lived child token per agent, minted
with the bridge's token). Both are a :class:`TokenSource`; :func:`with_token` runs one Vault call under a token
from a source and is the only place that handles "Vault rejected the token": the source forgets it (logs in
again, mints a new child token) and the call is made once more.

Vault's bare ``permission denied`` (:func:`token_rejected`) means the token itself is not valid (expired,
revoked); a policy denial says more (``1 error occurred: * permission denied``) and is never retried.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Protocol, TypeVar

from bridge.vault.errors import VaultPermissionDeniedError

T = TypeVar("T")


class TokenHandle(Protocol):
    """A token handed out by a :class:`TokenSource`; ``token`` goes into ``X-Vault-Token``."""

    @property
    def token(self) -> str: ...


H = TypeVar("H", bound=TokenHandle)


class TokenSource(Protocol[H]):
    async def acquire(self, agent: str, auth_method: str) -> H:
        """A token to call Vault with for ``agent`` (authenticated by ``auth_method``); pair with :meth:`release`."""

    def release(self, handle: H) -> None:
        """The call made with ``handle`` is over."""

    async def rejected(self, handle: H) -> bool:
        """Vault rejected ``handle``'s token: forget it. True when acquiring again may give a token worth one
        more try (False: there is no other, e.g. a static token)."""


def token_rejected(exc: VaultPermissionDeniedError) -> bool:
    """Vault's bare ``permission denied`` means the token itself is bad; a policy denial is wrapped."""
    return exc.errors == ["permission denied"]


async def with_token(source: TokenSource[H], agent: str, auth_method: str, call: Callable[[str], Awaitable[T]]) -> T:
    """``call(token)`` under a token of ``source``; once more with a new token if Vault rejected the first."""
    handle = await source.acquire(agent, auth_method)
    try:
        return await call(handle.token)
    except VaultPermissionDeniedError as exc:
        if not token_rejected(exc) or not await source.rejected(handle):
            raise
    finally:
        source.release(handle)
    handle = await source.acquire(agent, auth_method)
    try:
        return await call(handle.token)
    finally:
        source.release(handle)
