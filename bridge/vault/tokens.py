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
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

import structlog

from bridge.vault.errors import VaultError, VaultInvalidRequestError, VaultPermissionDeniedError
from bridge.vault.models import VaultResponse

if TYPE_CHECKING:
    from bridge.vault.client import VaultClient

log = structlog.get_logger("bridge.vault")

_MINT_EVENTS = {"child": ("vault.child.mint_denied", "vault.child.mint_refused"),
                "lease_token": ("vault.lease_token.mint_denied", "vault.lease_token.mint_refused")}
"""The log events of a denied and a refused :func:`mint_with_role`, by kind."""

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


async def mint_with_role(client: VaultClient, parent: TokenSource[H], role: str, body: dict[str, Any], *,
                         agent: str, auth_method: str, kind: str, error: type[VaultError]) -> VaultResponse:
    """A token minted through the token role ``role`` under a token of ``parent`` (the bridge's), for ``agent``:
    a child token or a lease token (``kind``: ``child`` or ``lease_token``, in the messages and log events).
    Vault's denial or refusal becomes ``error`` with what the operator must fix; the token is in the answer's
    ``auth`` (``None`` when Vault returned none), a missing policy in its ``warnings``."""
    what = kind.replace("_", " ")
    denied, refused = _MINT_EVENTS[kind]

    async def mint(token: str) -> VaultResponse:
        return await client.auth_token.create_with_role(role, body, token=token)

    try:
        return await with_token(parent, agent, auth_method, mint)
    except VaultPermissionDeniedError as exc:
        log.error(denied, agent=agent, role=role)
        raise error(f"the bridge token may not mint {what}s through token role '{role}' "
                    "(it needs update on auth/token/create/<role>)") from exc
    except VaultInvalidRequestError as exc:
        log.error(refused, agent=agent, role=role, vault_error=exc.detail)
        raise error(f"Vault refused to mint a {what} through role '{role}': {exc.detail}") from exc
