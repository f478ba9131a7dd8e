"""A circuit breaker for the Vault client: while Vault is down, fail fast instead of piling requests on it.

A pure state machine with an injectable clock (no I/O, no tasks), driven by :class:`bridge.vault.client.
VaultClient` around every HTTP call::

    closed ──(``threshold`` consecutive failures)──▶ open ──(``cooldown`` elapsed)──▶ half-open
      ▲                                                ▲                                  │
      └──────────────(the probe succeeds)──────────────┼──────────(the probe fails)───────┘

- **closed**: every call goes through; a success resets the failure count.
- **open**: every call fails at once with :class:`CircuitOpenError` (a :class:`VaultTransportError`, so it is
  rendered as 503 ``vault_unavailable``) carrying ``retry_after`` = seconds until the next probe.
- **half-open**: one call at a time (the probe) goes through to Vault; the others fail fast as while open.
  Success closes the breaker; failure opens it again for another ``cooldown``.

The breaker is shared by every agent, so only signs that Vault itself is down count as failures, never what
one agent's request brought on itself:

- counted: no HTTP answer on a connection (refused, reset, TLS, DNS); a 502/503/504 that is not "sealed"
  (a standby, a proxy in front of a dead Vault); a timeout on a *cheap* call (KV, tokens, sys): those take
  Vault milliseconds, so missing ``VAULT_TIMEOUT`` means Vault is hung or gone.
- not counted: any 4xx and Vault's own 500 (Vault answered: it is up; the request was bad), a sealed Vault
  (it answers quickly, with its own 503 and Retry-After), and a timeout or a gateway 504 on an *expensive*
  call (Transit: its cost is chosen by the agent, e.g. a large batch or an RSA key), which proves only that
  this request was slow. Such an outcome neither opens nor closes the breaker: a half-open probe that ends
  this way just frees the probe slot.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Literal

from bridge.vault.errors import (
    VaultError,
    VaultSealedError,
    VaultTimeoutError,
    VaultTransportError,
    VaultUnavailableError,
)

State = Literal["closed", "open", "half_open"]


class CircuitOpenError(VaultTransportError):
    """The breaker is open: Vault was not reachable recently, so the call was not attempted."""

    def __init__(self, retry_after: float) -> None:
        self.retry_after = retry_after
        super().__init__(f"vault is unreachable (circuit open); next probe in {retry_after:.1f}s")


def slow_answer(exc: BaseException) -> bool:
    """A timeout, or a gateway's 504: the call took too long, which may be the request's own cost."""
    return isinstance(exc, VaultTimeoutError) or (isinstance(exc, VaultUnavailableError) and exc.status == 504)


def counts_as_failure(exc: BaseException, *, expensive: bool = False) -> bool:
    """Whether ``exc`` says Vault itself is unavailable (as opposed to refusing, or being slow on, this one
    request). ``expensive``: the call's cost depends on what the agent sent (see the module docstring)."""
    if isinstance(exc, CircuitOpenError):
        return False
    if expensive and slow_answer(exc):
        return False
    if isinstance(exc, VaultTransportError):
        return True
    return isinstance(exc, VaultUnavailableError) and not isinstance(exc, VaultSealedError)


class CircuitBreaker:
    """Consecutive-failure breaker with one half-open probe at a time.

    ``threshold`` consecutive failures open it; after ``cooldown`` seconds one probe is let through.
    ``threshold <= 0`` disables it (always closed). ``on_change(old, new)`` is called on each transition.
    """

    def __init__(self, threshold: int = 5, cooldown: float = 2.0, *,
                 clock: Callable[[], float] = time.monotonic,
                 on_change: Callable[[State, State], None] | None = None) -> None:
        self.threshold = threshold
        self.cooldown = cooldown
        self._clock = clock
        self._on_change = on_change
        self._state: State = "closed"
        self._failures = 0
        self._opened_at = 0.0
        self._probing = False

    @property
    def enabled(self) -> bool:
        return self.threshold > 0

    @property
    def state(self) -> State:
        """The state now (an open breaker whose cooldown has passed reads as half-open)."""
        if self._state == "open" and self._clock() - self._opened_at >= self.cooldown:
            return "half_open"
        return self._state

    def retry_after(self) -> float:
        """Seconds until the next probe may go through (0 when calls are let through now)."""
        if self._state == "closed":
            return 0.0
        left = self.cooldown - (self._clock() - self._opened_at)
        if left > 0:
            return left
        return self.cooldown if self._probing else 0.0

    def _move(self, new: State) -> None:
        old = self._state
        self._state = new
        if old != new and self._on_change is not None:
            self._on_change(old, new)

    def before_call(self) -> bool:
        """Admit a call or raise :class:`CircuitOpenError`. Returns True when this call is the probe."""
        if not self.enabled or self._state == "closed":
            return False
        now = self._clock()
        if self._state == "open":
            if now - self._opened_at < self.cooldown:
                raise CircuitOpenError(self.cooldown - (now - self._opened_at))
            self._move("half_open")
        # half-open: a single probe at a time
        if self._probing:
            raise CircuitOpenError(self.cooldown)
        self._probing = True
        return True

    def on_success(self, probe: bool = False) -> None:
        """Vault answered (any status that is not an outage)."""
        if probe:
            self._probing = False
        self._failures = 0
        if self._state != "closed":
            self._move("closed")

    def on_failure(self, probe: bool = False) -> None:
        """Vault was not there."""
        if not self.enabled:
            return
        if probe:
            self._probing = False
        self._failures += 1
        if self._state == "half_open" or (self._state == "closed" and self._failures >= self.threshold):
            self._opened_at = self._clock()
            self._move("open")
        elif self._state == "open":
            # a call admitted before the breaker opened failed late: keep it open from now on
            self._opened_at = self._clock()

    def on_cancel(self, probe: bool = False) -> None:
        """The call was cancelled before Vault answered: free the probe slot, learn nothing."""
        if probe:
            self._probing = False

    def record(self, exc: BaseException | None, probe: bool = False, *, expensive: bool = False) -> None:
        """Feed the outcome of one call: ``None`` for success, else the exception it raised. ``expensive``:
        a slow answer to this call teaches nothing (see the module docstring)."""
        if exc is None:
            self.on_success(probe)
        elif counts_as_failure(exc, expensive=expensive):
            self.on_failure(probe)
        elif expensive and slow_answer(exc):
            self.on_cancel(probe)
        elif isinstance(exc, VaultError):
            self.on_success(probe)
        else:
            self.on_cancel(probe)


def retry_after_header(seconds: float) -> str:
    """A ``Retry-After`` value: whole seconds, at least 1."""
    return str(max(1, math.ceil(seconds)))
