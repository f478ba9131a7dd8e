"""Per-agent child tokens: every agent operation runs under a short-lived token carrying only that agent's
policy, so Vault itself enforces isolation and its audit log names the agent.

Tokens are minted through a token role (``auth/token/create/<role>``): the bridge's own token needs only
``update`` on that path and nothing on any secret or key. Facts this relies on (checked on OpenBao 2.7):

- a batch role cannot cap the TTL and roles ignore ``token_ttl``, so every mint sends ``ttl`` and the answer
  is checked: the ``token_type`` must be the one configured and ``lease_duration`` at most the TTL asked for;
- batch tokens cost about one KV read to mint and write nothing to storage, but cannot be revoked;
- service tokens can be capped and revoked (``revoke-self``, allowed by every agent policy) but cost about
  ten storage commits each.

:class:`ChildTokenBroker` hands out tokens:

- ``batch``: a fresh token per operation, or one reused per agent for ``reuse_seconds`` (default TTL/3);
- ``service``: one cached token per agent, renewed (when Vault says it is renewable) or replaced once a third
  of its TTL is left; a replaced or evicted token is revoked with ``revoke-self`` as soon as no operation
  uses it any more, and every cached token is revoked at shutdown (:meth:`ChildTokenBroker.close`).

Concurrent operations of one agent share one mint (single flight). The clock is injectable for tests.

The broker is a :class:`~bridge.vault.tokens.TokenSource` (an agent's operations run through
:func:`~bridge.vault.tokens.with_token`: a child token Vault rejects is retired and the call retried once with a
new one), and it mints with another source, the bridge's own token, through the same function.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import structlog

from bridge.vault.client import VaultClient
from bridge.vault.errors import (
    VaultError,
    VaultHTTPError,
)
from bridge.vault.tokens import TokenSource, mint_with_role

log = structlog.get_logger("bridge.vault.child")

TokenType = Literal["batch", "service"]

REVOKE_TIMEOUT = 5.0


class ChildTokenError(VaultError):
    """Vault refused to mint a child token, or minted one that does not match the configuration (wrong type,
    longer TTL, missing policy). An operator has to fix the token role or the bridge's policy."""


@dataclass(eq=False)
class ChildToken:
    agent: str
    token: str = field(repr=False)
    token_type: str
    ttl: float
    renewable: bool
    minted_at: float
    expires_at: float
    users: int = 0
    retired: bool = False
    revocable: bool = True

    def remaining(self, now: float) -> float:
        return self.expires_at - now


@dataclass
class BrokerStats:
    mints: int = 0
    reuses: int = 0
    renewals: int = 0
    revocations: int = 0
    rejected: int = 0


class ChildTokenBroker:
    """Mints (with ``parent``'s token), caches and revokes the per-agent child tokens (see the module docstring)."""

    def __init__(
        self,
        client: VaultClient,
        parent: TokenSource[Any],
        *,
        role: str,
        token_type: TokenType = "batch",  # noqa: S107 - a token kind, not a secret
        ttl: float = 90.0,
        policy_prefix: str = "mcp-agent-",
        reuse_seconds: float | None = None,
        cache_size: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._client = client
        self._parent = parent
        self.role = role
        self.token_type: TokenType = token_type
        self.ttl = float(ttl)
        self.policy_prefix = policy_prefix
        self.reuse_seconds = self.ttl / 3 if reuse_seconds is None else float(reuse_seconds)
        self._cache_size = cache_size
        self._clock = clock
        self._cache: OrderedDict[str, ChildToken] = OrderedDict()
        self._inflight: dict[str, asyncio.Task[ChildToken]] = {}
        self._revoking: set[asyncio.Task[None]] = set()
        self._closed = False
        self.stats = BrokerStats()

    # -- policy --------------------------------------------------------------------------------------

    @property
    def caching(self) -> bool:
        return self.token_type == "service" or self.reuse_seconds > 0

    @property
    def _margin(self) -> float:
        """A cached token is handed out only with at least this much TTL left."""
        if self.token_type == "service":
            return self.ttl / 3
        return min(10.0, self.ttl / 3)

    def _usable(self, entry: ChildToken, now: float) -> bool:
        if entry.retired or entry.remaining(now) <= self._margin:
            return False
        return self.token_type == "service" or now - entry.minted_at < self.reuse_seconds

    def cached(self, agent: str) -> ChildToken | None:
        return self._cache.get(agent)

    # -- TokenSource ---------------------------------------------------------------------------------

    async def acquire(self, agent: str, auth_method: str) -> ChildToken:
        """A token for ``agent``; pair every call with :meth:`release`."""
        if self._closed:
            raise ChildTokenError("the child token broker is closed")
        now = self._clock()
        entry = self._cache.get(agent)
        if entry is not None and self._usable(entry, now):
            self._cache.move_to_end(agent)
            self.stats.reuses += 1
            entry.users += 1
            return entry
        task = self._inflight.get(agent)
        if task is None:
            task = asyncio.create_task(self._refresh(agent, auth_method, entry), name=f"child-token-{agent}")
            self._inflight[agent] = task
            task.add_done_callback(functools.partial(self._mint_done, agent))
        fresh = await asyncio.shield(task)
        fresh.users += 1
        return fresh

    def release(self, entry: ChildToken) -> None:
        entry.users = max(0, entry.users - 1)
        if entry.retired and entry.users == 0:
            self._schedule_revoke(entry)

    async def rejected(self, entry: ChildToken) -> bool:
        """Vault rejected ``entry``: retire it (a later :meth:`acquire` mints a new one)."""
        self.stats.rejected += 1
        log.warning("vault.child.rejected", agent=entry.agent, token_type=entry.token_type)
        entry.revocable = False  # already invalid: nothing to revoke
        self._retire(entry)
        return True

    def _mint_done(self, agent: str, task: asyncio.Task[ChildToken]) -> None:
        if self._inflight.get(agent) is task:
            del self._inflight[agent]
        if not task.cancelled():
            task.exception()  # mark retrieved: every waiter gets it through the shield

    # -- minting, renewal, caching -------------------------------------------------------------------

    async def _refresh(self, agent: str, auth_method: str, old: ChildToken | None) -> ChildToken:
        if old is not None and not old.retired and old.renewable and old.remaining(self._clock()) > 1:
            renewed = await self._renew(old)
            if renewed:
                return old
        entry = await self._mint(agent, auth_method)
        if self.caching:
            previous = self._cache.pop(agent, None)
            if previous is not None and previous is not entry:
                self._retire(previous)
            self._cache[agent] = entry
            while len(self._cache) > self._cache_size:
                _, evicted = self._cache.popitem(last=False)
                log.info("vault.child.evicted", agent=evicted.agent)
                self._retire(evicted)
        return entry

    async def _renew(self, entry: ChildToken) -> bool:
        try:
            auth = await self._client.auth_token.renew_self(int(self.ttl), token=entry.token)
        except VaultHTTPError as exc:
            log.info("vault.child.renew_failed", agent=entry.agent, status=exc.status)
            return False
        granted = float(auth.lease_duration)
        if granted < self.ttl / 2:  # the explicit max TTL is near: replace instead
            return False
        entry.expires_at = self._clock() + granted
        self.stats.renewals += 1
        log.info("vault.child.renewed", agent=entry.agent, ttl=granted)
        return True

    async def _mint(self, agent: str, auth_method: str) -> ChildToken:
        policy = f"{self.policy_prefix}{agent}"
        body = {
            "policies": [policy],
            "ttl": f"{int(self.ttl)}s",
            "display_name": f"mcp-{agent}",
            "meta": {"agent": agent, "auth_method": auth_method, "issuer": "vault-mcp-bridge"},
        }
        started = self._clock()

        resp = await mint_with_role(self._client, self._parent, self.role, body, agent=agent,
                                    auth_method=auth_method, kind="child", error=ChildTokenError)
        auth = resp.auth
        token = auth.client_token.get_secret_value() if auth is not None else ""
        token_type = auth.token_type if auth is not None else ""
        lease = float(auth.lease_duration) if auth is not None else 0.0
        policies = auth.policies if auth is not None else ()
        entry = ChildToken(agent=agent, token=token, token_type=token_type, ttl=lease,
                           renewable=auth is not None and auth.renewable, minted_at=started,
                           expires_at=started + lease, revocable=token_type == "service")
        problem = ""
        if not token:
            problem = "Vault returned no client token"
        elif token_type != self.token_type:
            problem = f"token role '{self.role}' minted a {token_type or 'unknown'} token, not {self.token_type}"
        elif not 0 < lease <= self.ttl:
            problem = f"the child token lives {lease:g}s, not at most the {self.ttl:g}s asked for"
        elif policy not in policies:
            problem = f"the child token lacks the policy {policy}"
        if problem:
            log.error("vault.child.mismatch", agent=agent, role=self.role, problem=problem)
            if token and entry.revocable:
                self._schedule_revoke(entry)
            raise ChildTokenError(problem)
        for warning in resp.warnings:
            if "does not exist" in warning:
                log.warning("vault.child.policy_missing", agent=agent, policy=policy)
        self.stats.mints += 1
        log.debug("vault.child.minted", agent=agent, token_type=token_type, ttl=lease, auth_method=auth_method)
        return entry

    # -- retirement and revocation -------------------------------------------------------------------

    def drop(self, agent: str) -> int:
        """Forget ``agent``'s cached token now (quarantine): it is never handed out again, and a service token is
        revoked as soon as no call uses it (a batch token cannot be revoked: it expires within its TTL). A token
        being minted for the agent is dropped as soon as it lands. How many cached tokens were dropped."""
        dropped = 0
        entry = self._cache.get(agent)
        if entry is not None:
            self._retire(entry)
            dropped = 1
        task = self._inflight.get(agent)
        if task is not None:
            task.add_done_callback(self._drop_minted)
        log.info("vault.child.dropped", agent=agent, dropped=dropped)
        return dropped

    def _drop_minted(self, task: asyncio.Task[ChildToken]) -> None:
        if not task.cancelled() and task.exception() is None:
            self._retire(task.result())

    def _retire(self, entry: ChildToken) -> None:
        if self._cache.get(entry.agent) is entry:
            del self._cache[entry.agent]
        if entry.retired:
            return
        entry.retired = True
        if entry.users == 0:
            self._schedule_revoke(entry)

    def _schedule_revoke(self, entry: ChildToken) -> None:
        if not entry.revocable or entry.token_type != "service" or entry.remaining(self._clock()) <= 0:
            return
        entry.revocable = False  # once
        task = asyncio.create_task(self._revoke(entry), name=f"child-revoke-{entry.agent}")
        self._revoking.add(task)
        task.add_done_callback(self._revoking.discard)

    async def _revoke(self, entry: ChildToken) -> None:
        try:
            await self._client.auth_token.revoke_self(token=entry.token)
        except VaultError as exc:
            log.warning("vault.child.revoke_failed", agent=entry.agent, error=type(exc).__name__)
            return
        self.stats.revocations += 1
        log.debug("vault.child.revoked", agent=entry.agent)

    async def close(self) -> None:
        """Stop minting; revoke every cached service token (bounded wait)."""
        self._closed = True
        for task in list(self._inflight.values()):
            task.cancel()
        for entry in list(self._cache.values()):
            entry.users = 0
            self._retire(entry)
        self._cache.clear()
        if self._revoking:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.gather(*self._revoking, return_exceptions=True),
                                       timeout=REVOKE_TIMEOUT)
