"""Keeping the bridge's own Vault token alive (after the Go client's ``lifetime_watcher.go``).

The schedule is a pure function, :func:`plan_refresh`: given the remaining TTL it says what to do next
(renew, log in again, or nothing) and after how long. :class:`TokenKeeper` runs that plan in a background
task started from ``cleanup_ctx``; its clock, random source and sleep are injectable for tests.

- Static token (``VAULT_TOKEN``): looked up at start; renewed when renewable; root and non-renewable tokens
  are left alone.
- AppRole (``VAULT_ROLE_ID`` + ``VAULT_SECRET_ID``): logged in at start (and on demand while Vault was down),
  renewed about two thirds into its TTL, logged in again when renewal fails, when the max TTL caps renewal,
  or when Vault says the token is gone. At shutdown :meth:`TokenKeeper.revoke` revokes it (``revoke-self``),
  so a stopped bridge leaves no live token behind (nor the service child tokens minted under it). A static
  token belongs to the operator and is never revoked.
"""

from __future__ import annotations

import asyncio
import math
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import structlog

from bridge.vault.client import VaultClient, VaultResponse
from bridge.vault.errors import (
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


SecretIdSource = Callable[[], Awaitable[str]]
"""Where an AppRole secret id comes from when it is not in the environment."""


def secret_id_from_file(path: str) -> SecretIdSource:
    """``VAULT_SECRET_ID_FILE``: read at every login, so rewriting the file rotates the secret id."""

    async def read() -> str:
        try:
            text = await asyncio.to_thread(Path(path).read_text, encoding="utf-8")
        except OSError as exc:
            raise VaultInvalidRequestError(400, [f"cannot read VAULT_SECRET_ID_FILE ({exc.strerror})"]) from None
        secret = text.strip()
        if not secret:
            raise VaultInvalidRequestError(400, ["VAULT_SECRET_ID_FILE is empty"])
        return secret

    return read


def secret_id_from_wrapping_token(client: VaultClient, wrapping_token: str) -> SecretIdSource:
    """``VAULT_WRAPPED_SECRET_ID``: unwrapped once (``sys/wrapping/unwrap`` with the wrapping token as the
    request token), then kept in memory; a wrapping token works only once."""
    unwrapped: list[str] = []
    lock = asyncio.Lock()

    async def unwrap() -> str:
        async with lock:
            if not unwrapped:
                resp = await client.request("POST", "sys/wrapping/unwrap", operation="sys.wrapping.unwrap",
                                            token=wrapping_token)
                secret = str((resp.data or {}).get("secret_id") or "")
                if not secret:
                    raise VaultInvalidRequestError(400, ["the wrapping token did not wrap an AppRole secret id"])
                unwrapped.append(secret)
                log.info("vault.secret_id.unwrapped")
            return unwrapped[0]

    return unwrap


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
    token: str | None = None
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


class TokenKeeper:
    """Owns the bridge token: sets ``client.token`` and keeps it fresh."""

    def __init__(
        self,
        client: VaultClient,
        *,
        static_token: str | None = None,
        role_id: str = "",
        secret_id: str | None = None,
        approle_mount: str = "approle",
        clock: Callable[[], float] = time.monotonic,
        rng: Callable[[], float] = random.random,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        on_event: Callable[[str], None] | None = None,
        secret_id_source: SecretIdSource | None = None,
    ) -> None:
        self._client = client
        self._static = static_token
        self._role_id = role_id
        self._secret_id = secret_id
        self._secret_id_source = secret_id_source  # VAULT_SECRET_ID_FILE / VAULT_WRAPPED_SECRET_ID
        self._mount = approle_mount
        self._clock = clock
        self._rng = rng
        self._sleep = sleep
        self._on_event = on_event
        self._lock = asyncio.Lock()
        self.state = TokenState()
        self._wake = asyncio.Event()
        self._closed = False  # revoked at shutdown: no new login
        if static_token:
            self._set(static_token, ttl=0.0, renewable=False, verified=False)

    @property
    def can_login(self) -> bool:
        return bool(self._role_id and (self._secret_id or self._secret_id_source is not None))

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
        self.state.token = token
        self.state.ttl = ttl
        self.state.renewable = renewable
        self.state.obtained_at = self._clock()
        self.state.increment = increment
        self.state.is_root = is_root
        self.state.verified = verified
        self.state.last_error = ""
        self._client.token = token

    def _emit(self, event: str) -> None:
        if self._on_event is not None:
            self._on_event(event)

    # -- one-shot operations -------------------------------------------------------------------------

    async def login(self) -> str:
        """AppRole login; sets the new token."""
        if self._closed:
            raise VaultPermissionDeniedError(403, ["the bridge is shutting down; its token was revoked"])
        secret_id = self._secret_id
        if secret_id is None:
            assert self._secret_id_source is not None
            secret_id = await self._secret_id_source()
        resp = await self._client.approle.login(self._role_id, secret_id, mount=self._mount)
        auth = resp.auth or {}
        token = str(auth.get("client_token") or "")
        if not token:
            raise VaultInvalidRequestError(200, ["approle login returned no client token"])
        ttl = float(auth.get("lease_duration") or 0)
        self._set(token, ttl=ttl, renewable=bool(auth.get("renewable")), verified=True, increment=ttl or None)
        self.state.logins += 1
        self._emit("login")
        log.info("vault.token.logged_in", method="approle", ttl=ttl, renewable=self.state.renewable)
        return token

    async def lookup(self) -> None:
        """Learn TTL and renewability of the static token."""
        resp: VaultResponse = await self._client.auth_token.lookup_self()
        data = resp.data or {}
        policies = list(data.get("policies") or [])
        ttl = float(data.get("ttl") or 0)
        creation_ttl = float(data.get("creation_ttl") or 0) or None
        assert self.state.token is not None
        self._set(self.state.token, ttl=ttl, renewable=bool(data.get("renewable")), verified=True,
                  increment=creation_ttl, is_root="root" in policies)
        log.info("vault.token.looked_up", ttl=ttl, renewable=self.state.renewable, root=self.state.is_root)

    async def renew(self) -> None:
        inc = int(self.state.increment) if self.state.increment else None
        resp = await self._client.auth_token.renew_self(inc)
        auth = resp.auth or {}
        ttl = float(auth.get("lease_duration") or 0)
        assert self.state.token is not None
        self._set(self.state.token, ttl=ttl, renewable=bool(auth.get("renewable")), verified=True,
                  increment=self.state.increment, is_root=self.state.is_root)
        self.state.renewals += 1
        self._emit("renewal")
        log.info("vault.token.renewed", ttl=ttl)

    async def revoke(self) -> bool:
        """Shutdown: revoke the token this keeper logged in with (``auth/token/revoke-self``, which the
        provisioned bridge policy allows), waiting at most ``REVOKE_TIMEOUT``; no login happens after it. A static
        ``VAULT_TOKEN`` is the operator's and is left alone. True when Vault confirmed the revocation."""
        self._closed = True
        token = self.state.token
        if self._static or not token or not self.state.logins:
            return False
        self.state.token = None
        self.state.verified = False
        if self._client.token == token:
            self._client.token = None
        try:
            await asyncio.wait_for(self._client.auth_token.revoke_self(token=token), timeout=REVOKE_TIMEOUT)
        except (VaultError, TimeoutError) as exc:
            log.warning("vault.token.revoke_failed", error=type(exc).__name__)
            return False
        log.info("vault.token.revoked", method="approle")
        return True

    async def ensure(self) -> str:
        """The current token; with AppRole and no token yet, log in now (one login for all callers)."""
        token = self.state.token
        if token:
            return token
        if not self.can_login:
            raise VaultPermissionDeniedError(403, ["the bridge has no Vault token configured"])
        async with self._lock:
            if self.state.token:
                return self.state.token
            token = await self.login()
        self._wake.set()
        return token

    async def recover(self, failed_token: str) -> str | None:
        """Vault said ``failed_token`` is not valid: log in again (AppRole) and return the new token."""
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

    async def verify(self) -> bool:
        """Check the token with Vault now (lookup, or AppRole login when there is none); ``valid`` after."""
        try:
            async with self._lock:
                if self._static:
                    await self.lookup()
                elif self.can_login and not self.valid:
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
        if self._static:
            await self.lookup()
        elif self.can_login:
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
                if isinstance(exc, VaultHTTPError) and exc.status in (400, 403) and self._static and not started:
                    self.state.verified = False
                delay = retry_delay(failures, self._rng())
                self.state.next_action = "retry"
                self.state.next_at = self._clock() + delay
                log.warning("vault.token.refresh_failed", error=type(exc).__name__, retry_in=round(delay, 2))
                await self._sleep(delay)
