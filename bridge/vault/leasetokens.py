"""Per-agent lease tokens: the tokens dynamic credentials are obtained with, so that their leases live their own
TTL (not the per-request child token's) while Vault still applies the agent's policy.

A lease token is minted with the bridge's own token through the ``mcp-agent-lease`` token role (orphan, periodic,
renewable service tokens carrying exactly ``{CHILD_TOKEN_POLICY_PREFIX}<agent>``; docs/dynamic.md, "The lease
token"). Facts this relies on (OpenBao 2.7.2): a service token's leases are not capped by the token's TTL but are
revoked when it expires or is revoked; ``renew-self`` resets a periodic token's TTL to its period; an orphan token
survives the revocation of the bridge's own token (at shutdown, at every re-login); the agent policy grants
``renew-self`` and ``revoke-self``, but not ``lookup-self``.

:class:`LeaseTokens` is a :class:`~bridge.vault.tokens.TokenSource`:

- one token per agent, shared by every replica and kept across restarts in the bridge state
  (``lease-tokens/<agent>``: the token, its accessor, a lower bound of its expiry). The first replica that needs
  one mints it and stores it with check-and-set ``cas=0``; a replica that loses that race revokes its own token
  and uses the stored one. It never leaves the bridge: no agent policy reaches the state subtree.
- :meth:`LeaseTokens.ensure` keeps it alive: before a lease of ``n`` seconds is obtained or renewed it renews the
  token (``renew-self``) unless it has ``n`` + :data:`RENEW_MARGIN` seconds left, and answers how long it has
  left, which caps the lease. With a period of at least ``LEASE_MAX_TTL`` the token outlives every lease even if
  no replica ever runs again, and an unused token expires one period after its last lease was obtained or
  renewed.
- a token Vault rejects (bare ``permission denied``: it expired or was revoked, with its leases) is forgotten, its
  record cleared if it still names it, and :func:`~bridge.vault.tokens.with_token` mints a new one. ``on_minted``
  tells the owner of the lease records, which drops the records of the dead token's leases.
- :meth:`LeaseTokens.revoke` revokes the agent's token with ``revoke-self`` (quarantine, idle agents): Vault
  revokes every lease obtained with it (database logins dropped, certificates on the CRL) in one call, with no
  right of the bridge's own.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import structlog

from bridge.vault.client import VaultClient
from bridge.vault.errors import VaultError, VaultPermissionDeniedError
from bridge.vault.state import BridgeState, StateConflictError
from bridge.vault.tokens import TokenSource, mint_with_role, token_rejected

log = structlog.get_logger("bridge.vault.lease_token")

LEASE_ROLE = "mcp-agent-lease"
RENEW_MARGIN = 30.0
"""A token is renewed before a lease unless it has the lease's TTL and this many seconds left."""
RECORDS = "lease-tokens"
"""``lease-tokens/<agent>`` in the bridge state."""


class LeaseTokenError(VaultError):
    """Vault refused to mint a lease token, or minted one that is not what the ``mcp-agent-lease`` role must make
    (not a renewable service token with the agent's policy). An operator has to fix the role or the bridge's
    policy (``vault-mcp-bridge provision``)."""


@dataclass(eq=False)
class LeaseToken:
    """An agent's lease token; ``expires_at`` (Unix time) is a lower bound: it lives at least that long unless
    revoked (another replica may have renewed it since)."""

    agent: str
    token: str = field(repr=False)
    accessor: str
    expires_at: float

    def remaining(self, now: float) -> float:
        return self.expires_at - now

    def to_data(self) -> dict[str, Any]:
        return {"token": self.token, "accessor": self.accessor, "expires_at": round(self.expires_at, 3)}

    @classmethod
    def from_data(cls, agent: str, data: dict[str, Any]) -> LeaseToken | None:
        token = data.get("token")
        if not isinstance(token, str) or not token:
            return None
        try:
            expires = float(data.get("expires_at") or 0)
        except (TypeError, ValueError):
            expires = 0.0
        return cls(agent, token, str(data.get("accessor") or ""), expires)


Minted = Callable[[str, str], Awaitable[None]]
"""``on_minted(agent, accessor)``: a new lease token replaced the agent's previous one (dead or never there)."""


class LeaseTokens:
    """The agents' lease tokens (see the module docstring): minted with ``parent``'s token through ``role``,
    stored in ``state``."""

    def __init__(self, client: VaultClient, parent: TokenSource[Any], state: BridgeState, *,
                 role: str = LEASE_ROLE, policy_prefix: str = "mcp-agent-", on_minted: Minted | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self._client = client
        self._parent = parent
        self._state = state
        self.role = role
        self.policy_prefix = policy_prefix
        self.on_minted = on_minted
        self._clock = clock
        self._cache: dict[str, LeaseToken] = {}
        self._inflight: dict[str, asyncio.Task[LeaseToken]] = {}
        self._background: set[asyncio.Task[None]] = set()

    @staticmethod
    def record(agent: str) -> str:
        return f"{RECORDS}/{agent}"

    def cached(self, agent: str) -> LeaseToken | None:
        return self._cache.get(agent)

    def handle_for(self, agent: str, token: str) -> LeaseToken:
        """The handle of ``token`` (handed out by :meth:`acquire`; a call under
        :func:`~bridge.vault.tokens.with_token` sees only the token itself)."""
        entry = self._cache.get(agent)
        if entry is not None and entry.token == token:
            return entry
        return LeaseToken(agent, token, "", 0.0)  # forgotten meanwhile: unknown expiry, so ensure() renews it

    # -- TokenSource ---------------------------------------------------------------------------------

    async def acquire(self, agent: str, auth_method: str) -> LeaseToken:
        entry = self._cache.get(agent)
        if entry is not None:
            return entry
        task = self._inflight.get(agent)
        if task is None:
            task = asyncio.create_task(self._load_or_mint(agent), name=f"lease-token-{agent}")
            self._inflight[agent] = task
            task.add_done_callback(functools.partial(self._loaded, agent))
        return await asyncio.shield(task)

    def release(self, handle: LeaseToken) -> None:
        return None

    async def rejected(self, handle: LeaseToken) -> bool:
        """Vault rejected the token (expired or revoked, its leases with it): forget it, and clear its record
        unless another token replaced it meanwhile."""
        log.warning("vault.lease_token.rejected", agent=handle.agent)
        self.forget(handle.agent, handle)
        await self._clear(handle.agent, handle.accessor)
        return True

    def _loaded(self, agent: str, task: asyncio.Task[LeaseToken]) -> None:
        if self._inflight.get(agent) is task:
            del self._inflight[agent]
        if not task.cancelled():
            task.exception()  # retrieved: every waiter gets it through the shield

    # -- keeping it -------------------------------------------------------------------------------------

    async def ensure(self, handle: LeaseToken, seconds: float) -> float:
        """Renew ``handle``'s token unless it has ``seconds`` + :data:`RENEW_MARGIN` left; the seconds it has left
        (a lease obtained now must not outlive it). Vault rejecting the token raises
        :class:`~bridge.vault.errors.VaultPermissionDeniedError` (``with_token`` then mints a new one)."""
        now = self._clock()
        if handle.remaining(now) >= seconds + RENEW_MARGIN:
            return handle.remaining(now)
        auth = await self._client.auth_token.renew_self(token=handle.token)
        handle.expires_at = now + float(auth.lease_duration)
        log.debug("vault.lease_token.renewed", agent=handle.agent, ttl=auth.lease_duration)
        return handle.remaining(now)

    def forget(self, agent: str, handle: LeaseToken | None = None) -> None:
        """Drop the cached token of ``agent`` (only ``handle``'s, when given): the next acquire reads the state."""
        if handle is None or self._cache.get(agent) is handle:
            self._cache.pop(agent, None)

    async def revoke(self, agent: str) -> str | None:
        """Revoke ``agent``'s lease token, and with it every lease obtained with it; the revoked token's accessor,
        or ``None`` when the agent had none (or it was dead already)."""
        self.forget(agent)
        doc = await self._state.read(self.record(agent))
        entry = LeaseToken.from_data(agent, doc.data) if doc is not None else None
        if entry is None:
            return None
        revoked: str | None = entry.accessor
        try:
            await self._client.auth_token.revoke_self(token=entry.token)
        except VaultPermissionDeniedError as exc:
            if not token_rejected(exc):
                raise
            revoked = None  # expired or revoked before: its leases went with it
        await self._clear(agent, entry.accessor)
        self.forget(agent)
        log.info("vault.lease_token.revoked", agent=agent, was_alive=revoked is not None)
        return revoked

    async def close(self) -> None:
        for task in list(self._inflight.values()):
            task.cancel()
        if self._background:
            await asyncio.gather(*self._background, return_exceptions=True)

    # -- loading and minting ----------------------------------------------------------------------------

    async def _load_or_mint(self, agent: str) -> LeaseToken:
        name = self.record(agent)
        for _ in range(3):
            doc = await self._state.read(name)
            stored = LeaseToken.from_data(agent, doc.data) if doc is not None else None
            if stored is not None:
                # used as stored even when its recorded expiry passed: another replica may have renewed it, and
                # Vault rejecting it is what proves it dead (replacing a live token would orphan its leases)
                self._cache[agent] = stored
                return stored
            entry = await self._mint(agent)
            try:
                await self._state.write(name, entry.to_data(), cas=doc.version if doc is not None else 0)
            except StateConflictError:
                self._revoke_later(entry)  # another replica stored its token first: use that one
                continue
            except BaseException:
                self._revoke_later(entry)
                raise
            if self.on_minted is not None:
                await self.on_minted(agent, entry.accessor)
            self._cache[agent] = entry
            return entry
        raise LeaseTokenError(f"the lease token of {agent} changed three times while being read")

    async def _mint(self, agent: str) -> LeaseToken:
        policy = f"{self.policy_prefix}{agent}"
        body = {"policies": [policy], "display_name": f"mcp-lease-{agent}",
                "meta": {"agent": agent, "issuer": "vault-mcp-bridge"}}
        started = self._clock()

        resp = await mint_with_role(self._client, self._parent, self.role, body, agent=agent, auth_method="",
                                    kind="lease_token", error=LeaseTokenError)
        auth = resp.auth
        if auth is None:
            raise LeaseTokenError("Vault returned no lease token")
        entry = LeaseToken(agent, auth.client_token.get_secret_value(), auth.accessor,
                           started + float(auth.lease_duration))
        problem = ""
        if auth.token_type != "service" or not auth.renewable:
            kind = "renewable" if auth.renewable else "non-renewable"
            problem = (f"token role '{self.role}' minted a {kind} {auth.token_type or 'unknown'} token, not a "
                       "renewable service token")
        elif policy not in auth.policies:
            problem = f"the lease token lacks the policy {policy}"
        elif auth.lease_duration <= 0:
            problem = "the lease token has no TTL (a periodic role is expected)"
        if problem:
            log.error("vault.lease_token.mismatch", agent=agent, role=self.role, problem=problem)
            self._revoke_later(entry)
            raise LeaseTokenError(problem)
        log.info("vault.lease_token.minted", agent=agent, ttl=auth.lease_duration)
        return entry

    async def _clear(self, agent: str, accessor: str) -> None:
        """Mark the agent's record empty if it still names ``accessor`` (check-and-set: a token another replica
        stored meanwhile is kept)."""

        def clear(data: dict[str, Any] | None) -> dict[str, Any] | None:
            if data is None or data.get("accessor") != accessor:
                return data
            return {"revoked_at": round(self._clock(), 3)}

        with contextlib.suppress(StateConflictError):
            await self._state.update(self.record(agent), clear)

    def _revoke_later(self, entry: LeaseToken) -> None:
        async def revoke() -> None:
            with contextlib.suppress(VaultError):
                await self._client.auth_token.revoke_self(token=entry.token)

        task = asyncio.create_task(revoke(), name=f"lease-token-revoke-{entry.agent}")
        self._background.add(task)
        task.add_done_callback(self._background.discard)
