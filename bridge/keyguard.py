"""``TRANSIT_MAX_KEYS_PER_AGENT``: an agent may own at most that many Transit keys.

Keys are created by ``POST /transit/keys`` and, implicitly, by an encrypt with a key name that does not exist yet
(Vault upserts an ``aes256-gcm96`` key). Before either, :meth:`TransitKeyGuard.admit` makes sure the key exists
already or that the agent has room for one more:

1. a key this process has seen working is admitted at once (a bounded LRU set of names);
2. otherwise the key is looked up with the agent's own token (``GET {transit}/keys/{name}``): it exists →
   admitted;
3. otherwise the mount's keys are listed with the bridge's own token (``LIST {transit}/keys``: Vault cannot list
   by prefix, and an agent's token may not list the mount, it would see every agent's key names) and the
   agent's are counted by their ``{prefix}.{agent}.`` names. At the cap → 409 ``key_limit_reached``.

So the list, the one call whose size grows with the whole mount, runs only when a key is really about to be
created, which happens at most the cap's number of times per agent. Creation is serialised per agent within a
process (the count and the create happen under one lock); replicas that create keys for the same agent at the
same moment can overshoot by one each. ``TRANSIT_KEY_SCOPE=shared`` keys belong to no agent: no cap applies.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import structlog

from bridge.errors import ConflictError

log = structlog.get_logger("bridge.transit")

KNOWN_KEYS = 100_000
"""Key names remembered as existing (an LRU set; a forgotten name costs one lookup)."""


@dataclass(slots=True)
class _AgentLock:
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    users: int = 0


class TransitKeyGuard:
    """Counts an agent's keys before one is created. ``list_names`` lists the mount with the bridge's token."""

    def __init__(self, *, prefix: str, limit: int, list_names: Callable[[], Awaitable[list[str]]],
                 known_size: int = KNOWN_KEYS) -> None:
        self.limit = limit
        self._prefix = prefix
        self._list_names = list_names
        self._known: OrderedDict[str, None] = OrderedDict()
        self._known_size = known_size
        self._locks: dict[str, _AgentLock] = {}

    def _is_known(self, name: str) -> bool:
        if name in self._known:
            self._known.move_to_end(name)
            return True
        return False

    def _remember(self, name: str) -> None:
        self._known[name] = None
        self._known.move_to_end(name)
        if len(self._known) > self._known_size:
            self._known.popitem(last=False)

    @asynccontextmanager
    async def _agent_lock(self, agent: str) -> AsyncIterator[None]:
        """One agent's creations, one at a time; the lock exists only while someone holds or awaits it."""
        entry = self._locks.setdefault(agent, _AgentLock())
        entry.users += 1
        try:
            async with entry.lock:
                yield
        finally:
            entry.users -= 1
            if entry.users == 0:
                del self._locks[agent]

    async def count(self, agent: str) -> tuple[int, set[str]]:
        """How many keys ``agent`` owns, and the mount's names (for the existence check)."""
        names = set(await self._list_names())
        own = f"{self._prefix}.{agent}."
        return sum(1 for name in names if name.startswith(own)), names

    @asynccontextmanager
    async def admit(self, agent: str, name: str, exists: Callable[[], Awaitable[bool]]) -> AsyncIterator[None]:
        """Run the block that may create Vault key ``name`` of ``agent``, if the agent may own one more key.
        ``exists`` looks the key up with the agent's token (False when it cannot tell)."""
        if self.limit <= 0 or self._is_known(name):
            yield
            return
        async with self._agent_lock(agent):
            if not self._is_known(name) and not await exists():
                owned, names = await self.count(agent)
                if name not in names:
                    if owned >= self.limit:
                        log.info("transit.key_limit.reached", agent=agent, keys=owned, limit=self.limit)
                        raise ConflictError(
                            f"This agent already owns {owned} Transit keys, the most allowed "
                            f"(TRANSIT_MAX_KEYS_PER_AGENT={self.limit}); reuse one of them.",
                            code="key_limit_reached", extra={"limit": self.limit})
                    yield  # the create runs under the agent's lock: two creates cannot both see room for one
                    self._remember(name)
                    return
        self._remember(name)
        yield
