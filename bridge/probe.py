"""What ``/healthz`` and ``/readyz`` answer from: a background probe of Vault, never a call per request.

A probe flood (many replicas' kubelets, a load balancer, an attacker on an open port) must not turn into a
Vault flood, and the liveness probe must answer while Vault hangs. So the handlers only read
:class:`VaultProbe.state`; one background task (started from ``cleanup_ctx``) makes **one** Vault call per
``READY_PROBE_INTERVAL``, chosen by what is known:

1. Vault's state unknown, unreachable or sealed: ``sys/health`` (reachability, seal state, version);
2. else, the bridge token rejected or not yet confirmed: the keeper's own check (``lookup-self`` for a static
   token; an AppRole login, which replaces a revoked token);
3. else ``auth/token/lookup-self`` with the bridge token: a revoked token (403) turns the bridge not-ready.

Ready = reachable, unsealed, and the token confirmed by the last call that could tell.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from dataclasses import asdict, dataclass

import structlog

from bridge.vault import TokenKeeper, VaultClient
from bridge.vault.errors import VaultError, VaultPermissionDeniedError, VaultSealedError

log = structlog.get_logger("bridge.probe")


@dataclass(frozen=True, slots=True)
class ProbeState:
    """The last known state of Vault and of the bridge token."""

    reachable: bool | None = None  # None: not probed yet
    sealed: bool | None = None
    initialized: bool | None = None
    version: str | None = None
    token_valid: bool = False
    checked_at: float = 0.0  # time.monotonic() of the last probe call
    error: str = ""  # the class name of the last failure

    @property
    def vault_ok(self) -> bool:
        return bool(self.reachable) and self.sealed is False

    @property
    def ready(self) -> bool:
        return self.vault_ok and self.token_valid

    def vault_view(self) -> dict[str, object]:
        """The ``vault`` object of the ``/healthz`` and ``/readyz`` bodies."""
        view = {k: v for k, v in asdict(self).items() if k in ("reachable", "sealed", "initialized", "version")}
        view["checked_seconds_ago"] = (round(time.monotonic() - self.checked_at, 2) if self.checked_at else None)
        return view


class VaultProbe:
    """One probe call per interval; :attr:`state` is what the handlers read."""

    def __init__(self, client: VaultClient, keeper: TokenKeeper, interval: float) -> None:
        self._client = client
        self._keeper = keeper
        self.interval = interval
        self.state = ProbeState()
        self.calls = 0  # probe rounds made (each is at most one Vault call)
        self._rejected: str | None = None  # the token Vault last rejected

    async def probe_once(self) -> ProbeState:
        """One round: exactly one of the three calls of the module docstring."""
        self.calls += 1
        old = self.state
        keeper = self._keeper
        try:
            if not old.vault_ok or old.version is None:
                health = await self._client.sys.health()
                new = self._with(old, reachable=True, sealed=health.sealed, initialized=health.initialized,
                                 version=health.version or None, token_valid=keeper.valid)
            elif not (old.token_valid and keeper.valid):
                new = self._with(old, token_valid=await self._confirm_token())
            else:
                token = keeper.token
                try:
                    await self._client.auth_token.lookup_self(token=token or "")
                except VaultPermissionDeniedError:
                    self._rejected = token
                    if token and not keeper.can_login:
                        await keeper.recover(token)  # a static token: marks it rejected (no Vault call)
                    raise
                new = self._with(old, token_valid=True)
        except VaultPermissionDeniedError as exc:
            new = self._with(old, token_valid=False, error=type(exc).__name__)
        except VaultSealedError as exc:
            new = self._with(old, reachable=True, sealed=True, token_valid=False, error=type(exc).__name__)
        except VaultError as exc:  # unreachable, timeout, circuit open, standby, 5xx: not serving
            new = self._with(old, reachable=False, sealed=None, token_valid=False, error=type(exc).__name__)
        if new.ready != old.ready and old.checked_at:
            log.warning("vault.readiness.changed", ready=new.ready, reachable=new.reachable, sealed=new.sealed,
                        token_valid=new.token_valid, error=new.error or None)
        self.state = new
        return new

    async def _confirm_token(self) -> bool:
        rejected, self._rejected = self._rejected, None
        if rejected and self._keeper.can_login:
            # AppRole: log in again, unless a request already replaced the rejected token
            return await self._keeper.recover(rejected) is not None
        return await self._keeper.verify()  # static: lookup-self; AppRole without a valid token: login

    @staticmethod
    def _with(old: ProbeState, **changes: object) -> ProbeState:
        fields = asdict(old)
        fields.update(error="", checked_at=time.monotonic())
        fields.update(changes)
        return ProbeState(**fields)

    async def run(self) -> None:
        """Probe forever, one round per interval (a round that takes longer delays the next)."""
        while True:
            await asyncio.sleep(self.interval)
            await self.probe_once()


@contextlib.asynccontextmanager
async def running(probe: VaultProbe, first_round_timeout: float) -> AsyncIterator[None]:
    """Before serving, up to two rounds (Vault's state, then the token), bounded so that a hanging Vault does
    not hold start-up; then the background task."""

    async def first() -> None:
        state = await probe.probe_once()
        if state.vault_ok and not state.token_valid:
            await probe.probe_once()

    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(first(), timeout=first_round_timeout)
    task = asyncio.create_task(probe.run(), name="vault-ready-probe")
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
