"""What every service needs to call Vault for an agent: :class:`VaultAccess`.

It holds the Vault client, the settings, and the two token sources (:mod:`bridge.vault.tokens`): the agents'
(their child tokens when ``CHILD_TOKEN_ENABLED``, else the bridge's own token) and the bridge's own. Every Vault
call of a service goes through :meth:`VaultAccess.call` (or :meth:`VaultAccess.as_bridge`), which runs it under
the right token, retried once with a new token if Vault rejected the first, and turns Vault errors into bridge
errors in the one place that does (``bridge.errors.from_vault_error``).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from bridge.auth.identity import Identity
from bridge.broker import Broker
from bridge.canary import CanaryWatch
from bridge.config import Settings
from bridge.errors import from_vault_error
from bridge.paths import agent_path
from bridge.vault.client import VaultClient
from bridge.vault.errors import VaultError
from bridge.vault.tokens import TokenSource, with_token

T = TypeVar("T")


class VaultAccess:
    def __init__(self, settings: Settings, vault: VaultClient, *, bridge_tokens: TokenSource[Any],
                 agent_tokens: TokenSource[Any] | None = None, canary: CanaryWatch | None = None,
                 broker: Broker | None = None) -> None:
        self.settings = settings
        self.vault = vault
        self.bridge_tokens = bridge_tokens
        self.agent_tokens: TokenSource[Any] = agent_tokens if agent_tokens is not None else bridge_tokens
        self.canary = canary if canary is not None else CanaryWatch()
        self.broker = broker
        """Started and closed by ``bridge.broker.ctx.broker_ctx`` (``create_app`` makes and hands it over)."""

    async def call(self, identity: Identity, what: str, fn: Callable[[str], Awaitable[T]]) -> T:
        """``fn(token)`` with the agent's token; a Vault error becomes a bridge error about ``what``."""
        return await self.call_for(identity.subject, identity.auth_method, what, fn)

    async def call_for(self, agent: str, auth_method: str, what: str, fn: Callable[[str], Awaitable[T]]) -> T:
        """:meth:`call` for an agent that is not the caller of the request (an intake link's: the human who
        submits it is no agent identity; ``auth_method`` only labels the child token)."""
        try:
            return await with_token(self.agent_tokens, agent, auth_method, fn)
        except VaultError as exc:
            raise from_vault_error(exc, what=what) from None

    async def as_bridge(self, fn: Callable[[str], Awaitable[T]]) -> T:
        """``fn(token)`` with the bridge's own token (never an agent's); Vault errors are the caller's."""
        return await with_token(self.bridge_tokens, "", "", fn)

    def kv_path(self, identity: Identity, path: str) -> str:
        """The path below the KV mount: ``{DEFAULT_PREFIX}/{agent}/{path}``."""
        return agent_path(self.settings.default_prefix, identity.subject, path)
