"""Per-agent concurrency cap (``AGENT_MAX_INFLIGHT``): one agent cannot hold every Vault connection.

Each agent has at most ``limit`` requests in progress in this process. A request over the cap waits up to
``wait`` seconds for one of the agent's own slots (FIFO), then is refused with 429
``too_many_concurrent_requests``; at most ``limit`` requests of one agent wait at a time, more are refused at
once. Slots are per agent, so other agents never queue behind a busy one. State exists only for agents with a
request in progress (an entry is dropped when its last request ends), so memory follows concurrency, not the
number of agents.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

from bridge.errors import RateLimitedError


class Slot:
    """A held slot; :meth:`release` gives it back before the request ends (a long-lived notification stream,
    which waits for Vault changes rather than on Vault). Releasing twice is harmless."""

    __slots__ = ("_release",)

    def __init__(self, release: Callable[[], None] | None) -> None:
        self._release = release

    def release(self) -> None:
        release, self._release = self._release, None
        if release is not None:
            release()


@dataclass(slots=True)
class _Agent:
    slots: asyncio.Semaphore
    users: int = 0  # requests holding or waiting for a slot
    waiting: int = 0


@dataclass(slots=True)
class InflightLimiter:
    """``limit`` concurrent requests per key (0: no cap), waiting at most ``wait`` seconds for a slot."""

    limit: int
    wait: float
    _agents: dict[str, _Agent] = field(default_factory=dict)

    def active(self, key: str) -> int:
        """Requests of ``key`` holding a slot now."""
        entry = self._agents.get(key)
        return 0 if entry is None else entry.users - entry.waiting

    def __len__(self) -> int:
        return len(self._agents)

    def _busy(self) -> RateLimitedError:
        return RateLimitedError(
            f"This agent already has {self.limit} requests in progress (AGENT_MAX_INFLIGHT); wait for some to "
            "finish, then retry.", code="too_many_concurrent_requests", headers={"Retry-After": "1"})

    async def acquire(self, key: str) -> Slot:
        """A slot of ``key`` (waiting up to ``wait`` for one), or 429 ``too_many_concurrent_requests``. The caller
        calls :meth:`done` once the request ends, whatever happened (:meth:`slot` does both). A free slot is taken
        without suspending: the hot path of every request."""
        if self.limit <= 0:
            return Slot(None)
        entry = self._agents.get(key)
        if entry is None:
            entry = self._agents[key] = _Agent(asyncio.Semaphore(self.limit))
        if not entry.slots.locked():
            entry.users += 1
            await entry.slots.acquire()  # a free slot: returns at once
            return Slot(entry.slots.release)
        if entry.waiting >= self.limit or self.wait <= 0:
            raise self._busy()
        entry.users += 1
        entry.waiting += 1
        try:
            await asyncio.wait_for(entry.slots.acquire(), self.wait)
        except TimeoutError:
            self._left(key, entry)
            raise self._busy() from None
        except BaseException:  # cancelled while waiting
            self._left(key, entry)
            raise
        finally:
            entry.waiting -= 1
        return Slot(entry.slots.release)

    def done(self, key: str, held: Slot) -> None:
        """The request of ``held`` (from :meth:`acquire`) ended: its slot goes back, if not given back already."""
        held.release()
        if self.limit > 0:
            entry = self._agents.get(key)
            if entry is not None:
                self._left(key, entry)

    def _left(self, key: str, entry: _Agent) -> None:
        entry.users -= 1
        if entry.users == 0 and self._agents.get(key) is entry:
            del self._agents[key]

    @asynccontextmanager
    async def slot(self, key: str) -> AsyncIterator[Slot]:
        held = await self.acquire(key)
        try:
            yield held
        finally:
            self.done(key, held)
