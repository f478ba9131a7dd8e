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

Only "Vault is not there" counts as a failure: no HTTP answer (connection refused, reset, timeout) or a
502/503/504 that is not "sealed". A sealed Vault answers quickly with its own 503, and a 4xx is the caller's
problem, so neither opens the breaker.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from bridge.vault.errors import (
    VaultError,
    VaultSealedError,
    VaultTransportError,
    VaultUnavailableError,
)

State = Literal["closed", "open", "half_open"]


class CircuitOpenError(VaultTransportError):
    """The breaker is open: Vault was not reachable recently, so the call was not attempted."""

    def __init__(self, retry_after: float) -> None:
        self.retry_after = retry_after
        super().__init__(f"vault is unreachable (circuit open); next probe in {retry_after:.1f}s")


def counts_as_failure(exc: BaseException) -> bool:
    """Whether ``exc`` says Vault itself is unavailable (as opposed to refusing this one request)."""
    if isinstance(exc, CircuitOpenError):
        return False
    if isinstance(exc, VaultTransportError):
        return True
    return isinstance(exc, VaultUnavailableError) and not isinstance(exc, VaultSealedError)


@dataclass(frozen=True, slots=True)
class BreakerSnapshot:
    state: State
    failures: int
    opened_at: float | None
    retry_after: float


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

    def snapshot(self) -> BreakerSnapshot:
        return BreakerSnapshot(self.state, self._failures, self._opened_at if self._state != "closed" else None,
                               self.retry_after())

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

    def record(self, exc: BaseException | None, probe: bool = False) -> None:
        """Feed the outcome of one call: ``None`` for success, else the exception it raised."""
        if exc is None:
            self.on_success(probe)
        elif counts_as_failure(exc):
            self.on_failure(probe)
        elif isinstance(exc, VaultError):
            self.on_success(probe)
        else:
            self.on_cancel(probe)


def retry_after_header(seconds: float) -> str:
    """A ``Retry-After`` value: whole seconds, at least 1."""
    return str(max(1, math.ceil(seconds)))
