"""Keeping the bridge's own Vault token alive (after the Go client's ``lifetime_watcher.go``).

The schedule is a pure function, :func:`plan_refresh`: given the remaining TTL it says what to do next
(renew, log in again, or nothing) and after how long. :class:`TokenKeeper` runs that plan in a background
task started from ``cleanup_ctx``; its clock, random source and sleep are injectable for tests. It takes one
:class:`~bridge.vault.auth.AuthMethod`:

- a static token (``VAULT_TOKEN``): looked up at start; renewed when renewable; root and non-renewable tokens
  are left alone.
- AppRole (``VAULT_ROLE_ID`` and a secret id): logged in at start (and on demand while Vault was down),
  renewed about two thirds into its TTL, logged in again when renewal fails, when the max TTL caps renewal,
  or when Vault says the token is gone. At shutdown :meth:`TokenKeeper.revoke` revokes it (``revoke-self``),
  so a stopped bridge leaves no live token behind (nor the service child tokens minted under it). A static
  token belongs to the operator and is never revoked.

The keeper is a :class:`~bridge.vault.tokens.TokenSource`: every call made with the bridge's token gets it
through :func:`~bridge.vault.tokens.with_token`, which asks the keeper to log in again when Vault rejects it.
"""

from __future__ import annotations

import asyncio
import math
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Literal

import structlog

from bridge.vault.auth import AuthMethod, Login
from bridge.vault.client import VaultClient
from bridge.vault.errors import (
    VaultCredentialError,
    VaultError,
    VaultHTTPError,
    VaultInvalidRequestError,
    VaultPermissionDeniedError,
)

log = structlog.get_logger("bridge.vault.token")

RENEW_FRACTION = 2.0 / 3.0
JITTER_FRACTION = 0.1
MIN_DELAY = 0.5
RETRY_MIN = 0.5
RETRY_MAX = 30.0
REVOKE_TIMEOUT = 5.0


@dataclass(frozen=True, slots=True)
class Plan:
    action: Literal["renew", "login", "idle"]
    delay: float


def plan_refresh(ttl: float, *, renewable: bool, can_login: bool, rand: float,
                 increment: float | None = None) -> Plan:
    """What to do next with a token that has ``ttl`` seconds left.

    ``rand`` is in [0, 1): the jitter moves the renewal earlier by up to 10 % of the TTL so that replicas
    sharing a role do not renew in lock step. ``increment`` is the TTL we asked for at the last renewal; a
    grant below half of it means the max TTL is near, so renewing further is pointless and we log in again.
    """
    if ttl <= 0:
        return Plan("idle", math.inf)  # root or no expiry: nothing to do
    delay = max(MIN_DELAY, ttl * RENEW_FRACTION - ttl * JITTER_FRACTION * rand)
    if renewable and not (increment is not None and can_login and ttl < increment / 2):
        return Plan("renew", delay)
    if can_login:
        return Plan("login", delay)
    return Plan("idle", math.inf)  # non-renewable static token: leave it alone


def retry_delay(failures: int, rand: float) -> float:
    """Exponential back-off with full jitter, between RETRY_MIN and RETRY_MAX seconds."""
    ceiling = min(RETRY_MAX, RETRY_MIN * float(2 ** max(0, failures - 1)))
    return max(RETRY_MIN, ceiling * (0.5 + rand / 2))


@dataclass(slots=True)
class TokenState:
    token: str | None = field(default=None, repr=False)
    ttl: float = 0.0
    renewable: bool = False
    obtained_at: float = 0.0
    increment: float | None = None
    is_root: bool = False
    verified: bool = False  # Vault confirmed the token (lookup, login or renewal)
    last_error: str = ""
    next_action: str = "idle"
    next_at: float = math.inf
    renewals: int = 0
    logins: int = 0


@dataclass(frozen=True, slots=True)
class BridgeToken:
    """The keeper's :class:`~bridge.vault.tokens.TokenHandle`: one per token obtained (a renewal keeps it)."""

    token: str = field(repr=False)


class TokenKeeper:
    """Owns the bridge token (obtained with ``method``) and keeps it fresh."""

    def __init__(
        self,
        client: VaultClient,
        method: AuthMethod,
        *,
        clock: Callable[[], float] = time.monotonic,
        rng: Callable[[], float] = random.random,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        on_event: Callable[[str], None] | None = None,
    ) -> None:
        self._client = client
        self.method = method
        self._clock = clock
        self._rng = rng
        self._sleep = sleep
        self._on_event = on_event
        self._lock = asyncio.Lock()
        self.state = TokenState()
        self._handle: BridgeToken | None = None
        self._wake = asyncio.Event()
        self._closed = False  # revoked at shutdown: no new login
        if method.preset is not None and method.preset.get_secret_value():
            self._set(method.preset.get_secret_value(), ttl=0.0, renewable=False, verified=False)

    @property
    def can_login(self) -> bool:
        return self.method.relogin

    @property
    def token(self) -> str | None:
        return self.state.token

    def remaining(self) -> float | None:
        """Seconds of TTL left, ``None`` for a token without expiry."""
        if self.state.ttl <= 0:
            return None
        return max(0.0, self.state.ttl - (self._clock() - self.state.obtained_at))

    @property
    def valid(self) -> bool:
        left = self.remaining()
        return bool(self.state.token) and self.state.verified and (left is None or left > 0)

    def _set(self, token: str, *, ttl: float, renewable: bool, verified: bool,
             increment: float | None = None, is_root: bool = False) -> None:
        if self.state.token != token:
            self._handle = BridgeToken(token)
        self.state.token = token
        self.state.ttl = ttl
        self.state.renewable = renewable
        self.state.obtained_at = self._clock()
        self.state.increment = increment
        self.state.is_root = is_root
        self.state.verified = verified
        self.state.last_error = ""

    def _emit(self, event: str) -> None:
        if self._on_event is not None:
            self._on_event(event)

    # -- one-shot operations -------------------------------------------------------------------------

    async def login(self) -> str:
        """Obtain the token with the method (an AppRole login; a static token's lookup) and set it."""
        if self._closed and self.method.relogin:
            raise VaultCredentialError("the bridge is shutting down; its token was revoked")
        got: Login = await self.method.login(self._client)
        token = got.token.get_secret_value()
        self._set(token, ttl=got.ttl, renewable=got.renewable, verified=True, increment=got.increment,
                  is_root=got.is_root)
        if self.method.relogin:
            self.state.logins += 1
            self._emit("login")
            log.info("vault.token.logged_in", method=self.method.name, ttl=got.ttl, renewable=got.renewable)
        else:
            log.info("vault.token.looked_up", ttl=got.ttl, renewable=got.renewable, root=got.is_root)
        return token

    async def renew(self) -> None:
        token = self.state.token
        assert token is not None
        inc = int(self.state.increment) if self.state.increment else None
        auth = await self._client.auth_token.renew_self(inc, token=token)
        ttl = float(auth.lease_duration)
        self._set(token, ttl=ttl, renewable=auth.renewable, verified=True, increment=self.state.increment,
                  is_root=self.state.is_root)
        self.state.renewals += 1
        self._emit("renewal")
        log.info("vault.token.renewed", ttl=ttl)

    async def revoke(self) -> bool:
        """Shutdown: revoke the token this keeper logged in with (``auth/token/revoke-self``, which the
        provisioned bridge policy allows), waiting at most ``REVOKE_TIMEOUT``; no login happens after it. A static
        ``VAULT_TOKEN`` is the operator's and is left alone. True when Vault confirmed the revocation."""
        self._closed = True
        token = self.state.token
        if not self.method.relogin or not token or not self.state.logins:
            return False
        self.state.token = None
        self.state.verified = False
        self._handle = None
        try:
            await asyncio.wait_for(self._client.auth_token.revoke_self(token=token), timeout=REVOKE_TIMEOUT)
        except (VaultError, TimeoutError) as exc:
            log.warning("vault.token.revoke_failed", error=type(exc).__name__)
            return False
        log.info("vault.token.revoked", method=self.method.name)
        return True

    async def ensure(self) -> str:
        """The current token; with AppRole and no token yet, log in now (one login for all callers)."""
        return (await self.acquire()).token

    async def recover(self, failed_token: str) -> str | None:
        """Vault said ``failed_token`` is not valid: log in again (AppRole) and return the new token; ``None``
        when there is no other token to be had (a static token: it is marked not valid)."""
        if not self.can_login:
            self.state.verified = False
            self.state.last_error = "token rejected by vault"
            return None
        async with self._lock:
            if self.state.token and self.state.token != failed_token:
                return self.state.token  # somebody else already logged in again
            log.warning("vault.token.rejected", action="login")
            token = await self.login()
        self._wake.set()
        return token

    # -- TokenSource -----------------------------------------------------------------------------------

    async def acquire(self, agent: str = "", auth_method: str = "") -> BridgeToken:
        """The bridge token (the same for every agent); with AppRole and none yet, log in now."""
        handle = self._handle
        if handle is not None:
            return handle
        if not self.can_login:
            raise VaultCredentialError("the bridge has no Vault token configured")
        async with self._lock:
            if self._handle is None:
                await self.login()
        self._wake.set()
        assert self._handle is not None
        return self._handle

    def release(self, handle: BridgeToken) -> None:
        """Nothing to do: the bridge token is shared."""

    async def rejected(self, handle: BridgeToken) -> bool:
        return await self.recover(handle.token) is not None

    async def verify(self) -> bool:
        """Check the token with Vault now (lookup, or AppRole login when there is none); ``valid`` after."""
        try:
            async with self._lock:
                if not self.method.relogin or not self.valid:
                    await self.login()
        except VaultError as exc:
            self.state.last_error = type(exc).__name__
            if isinstance(exc, VaultHTTPError) and exc.status in (400, 403):
                self.state.verified = False
            return False
        self._wake.set()
        return self.valid

    # -- the background task -------------------------------------------------------------------------

    async def _start(self) -> None:
        async with self._lock:
            if not self.state.verified:
                await self.login()
    async def _step(self) -> None:
        plan = plan_refresh(self.remaining() or 0.0, renewable=self.state.renewable and not self.state.is_root,
                            can_login=self.can_login, rand=self._rng(), increment=self.state.increment)
        self.state.next_action = plan.action
        self.state.next_at = self._clock() + plan.delay
        if math.isinf(plan.delay):
            await self._wake.wait()
            self._wake.clear()
            return
        self._wake.clear()
        try:
            await asyncio.wait_for(self._wake.wait(), timeout=plan.delay)
            return  # woken by a login elsewhere: plan again
        except TimeoutError:
            pass
        if plan.action == "renew":
            try:
                await self.renew()
            except (VaultPermissionDeniedError, VaultInvalidRequestError) as exc:
                log.warning("vault.token.renew_failed", error=str(exc))
                if not self.can_login:
                    self.state.verified = False
                    raise
                async with self._lock:
                    await self.login()
        elif plan.action == "login":
            async with self._lock:
                await self.login()

    async def run(self) -> None:
        """Start (lookup or login), then follow the plan forever; errors back off and retry."""
        failures = 0
        started = False
        while True:
            try:
                if not started:
                    await self._start()
                    started = True
                await self._step()
                failures = 0
            except asyncio.CancelledError:
                raise
            except VaultError as exc:
                failures += 1
                self.state.last_error = type(exc).__name__
                if (isinstance(exc, VaultHTTPError) and exc.status in (400, 403) and not self.method.relogin
                        and not started):
                    self.state.verified = False
                delay = retry_delay(failures, self._rng())
                self.state.next_action = "retry"
                self.state.next_at = self._clock() + delay
                log.warning("vault.token.refresh_failed", error=type(exc).__name__, retry_in=round(delay, 2))
                await self._sleep(delay)
