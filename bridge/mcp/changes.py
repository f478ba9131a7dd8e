"""Change notifications: who is listening, what they asked for, and how a change reaches them on every replica.

- A **change** is ``(agent, uri)``: the agent's ``vault://kv/<path>`` or ``vault://transit/<key>`` changed. Changes
  made through the bridge are reported by the executor after any successful operation that declares
  ``changes`` (:class:`bridge.operations.spec.Changes`: write, patch, delete, undelete, destroy, key creation), and
  published on the :class:`Bus`; writes made to Vault directly are found by the :class:`Poller`.
- The **bus** carries changes to every replica: in-process (:class:`MemoryBus`, one process) or Redis pub/sub
  (:class:`RedisBus`, with ``REDIS_URL``: every replica, every ``WORKERS`` process). Each replica hands a change to
  its own listeners of that agent only: a change of agent A never reaches a stream of agent B.
- A **listener** is one open notification stream: a 2026-07-28 ``subscriptions/listen`` stream (its URIs fixed at
  the ack) or a 2025-11-25 session's ``GET /mcp`` stream, whose URIs are the session's subscriptions in the
  :class:`SubscriptionStore` (Redis with ``REDIS_URL``, so that ``resources/subscribe`` answered by one replica
  counts on the replica that holds the stream). A newer GET stream of a session supersedes the older one on any
  replica (the bus carries that too).
- The **poller** reads the metadata of every URI the listeners of this replica watch each
  ``SUBSCRIPTION_POLL_INTERVAL`` (with the agent's own token) and tells its local listeners when it changed; a
  change that came over the bus resets its baseline, so a bridge write is announced once.

Nothing here knows aiohttp; the transports (``bridge.mcp.server``, ``bridge.mcp.stdio``) write the streams.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol
from urllib.parse import quote, unquote

import structlog

from bridge.auth.identity import Identity
from bridge.config import IDENT_RE, Settings
from bridge.errors import BridgeError, InvalidPathError
from bridge.paths import validate_path

log = structlog.get_logger("bridge.mcp.changes")

KV_SCHEME = "vault://kv/"
TRANSIT_SCHEME = "vault://transit/"
QUEUE_SIZE = 256
"""Notifications waiting on one stream; a stream that falls this far behind is ended (the client re-listens)."""
POLL_CONCURRENCY = 8


# -- URIs ---------------------------------------------------------------------------------------------------

def resource_uri(kind: str, name: str) -> str:
    """``vault://kv/<path>`` or ``vault://transit/<key>`` (the path's safe set needs no escaping but is quoted
    anyway, so the URI is RFC 3986 whatever reaches it)."""
    scheme = KV_SCHEME if kind == "kv" else TRANSIT_SCHEME
    return scheme + quote(name, safe="/=+@,")


def parse_uri(uri: Any) -> tuple[str, str] | None:
    """``("kv", path)`` or ``("transit", key)`` of one of our URIs (relative to the caller's namespace), ``None``
    for anything else (another scheme, a path outside the safe set, a bad key name)."""
    if not isinstance(uri, str) or len(uri) > 1024:
        return None
    for kind, scheme in (("kv", KV_SCHEME), ("transit", TRANSIT_SCHEME)):
        if uri.startswith(scheme):
            try:
                name = unquote(uri[len(scheme):], errors="strict")
            except UnicodeDecodeError:
                return None
            if kind == "kv":
                try:
                    return kind, validate_path(name)
                except InvalidPathError:
                    return None
            return (kind, name) if IDENT_RE.match(name) else None
    return None


# -- listeners -----------------------------------------------------------------------------------------------

Watched = dict[str, str]
"""URI → the resource's state when it was subscribed to (the poller's first baseline; ``""``: unknown)."""


class Listener:
    """One open notification stream of ``identity``'s agent. ``queue`` receives the URIs to announce, and
    ``None`` when the stream must end (shutdown, superseded, fallen behind)."""

    def __init__(self, identity: Identity) -> None:
        self.identity = identity
        self.agent = identity.subject
        self.queue: asyncio.Queue[str | None] = asyncio.Queue(QUEUE_SIZE + 1)
        self.ended = False

    async def watched(self) -> Watched:
        """The URIs this stream is told about, with their state when subscribed."""
        raise NotImplementedError

    def push(self, uri: str | None) -> None:
        if self.ended:
            return
        if uri is None or self.queue.qsize() >= QUEUE_SIZE:
            self.ended = True
            uri = None
        self.queue.put_nowait(uri)


class ListenListener(Listener):
    """A ``subscriptions/listen`` stream: the URIs acknowledged when it opened (and their states then)."""

    def __init__(self, identity: Identity, watched: Watched) -> None:
        super().__init__(identity)
        self._watched = dict(watched)

    async def watched(self) -> Watched:
        return self._watched


class SessionListener(Listener):
    """A handshake-era session's ``GET /mcp`` stream: the session's subscriptions, as stored (possibly by
    another replica)."""

    def __init__(self, identity: Identity, session: str, store: SubscriptionStore, stream_id: str) -> None:
        super().__init__(identity)
        self.session = session
        self.stream_id = stream_id
        self._store = store

    async def watched(self) -> Watched:
        return await self._store.members(self.session)


def session_key(session_id: str) -> str:
    """What a session's subscriptions are stored under: a digest of its (signed) id."""
    return hashlib.sha256(session_id.encode()).hexdigest()[:40]


# -- the subscription store (handshake era) ---------------------------------------------------------------------

class SubscriptionStore(Protocol):
    """A session's subscribed URIs (with the resource's state at subscription), kept for ``MCP_SESSION_TTL`` after
    the last change."""

    async def add(self, session: str, uri: str, state: str, limit: int) -> bool:
        """Add ``uri``; false when the session has ``limit`` URIs already."""

    async def remove(self, session: str, uri: str) -> None: ...

    async def members(self, session: str) -> Watched: ...

    async def close(self) -> None: ...


@dataclass
class MemorySubscriptionStore:
    """In-process: one replica (and one process)."""

    ttl: float
    clock: Callable[[], float] = time.monotonic
    _sessions: dict[str, tuple[float, Watched]] = field(default_factory=dict)

    def _live(self, session: str) -> Watched | None:
        entry = self._sessions.get(session)
        if entry is None:
            return None
        if entry[0] <= self.clock():
            del self._sessions[session]
            return None
        return entry[1]

    async def add(self, session: str, uri: str, state: str, limit: int) -> bool:
        uris = self._live(session) or {}
        if uri not in uris and len(uris) >= limit:
            return False
        uris[uri] = state
        self._sessions[session] = (self.clock() + self.ttl, uris)
        if len(self._sessions) > 100_000:  # expired sessions are dropped lazily; keep memory bounded anyway
            now = self.clock()
            for key in [k for k, (expiry, _) in self._sessions.items() if expiry <= now]:
                del self._sessions[key]
        return True

    async def remove(self, session: str, uri: str) -> None:
        uris = self._live(session)
        if uris is not None:
            uris.pop(uri, None)

    async def members(self, session: str) -> Watched:
        return dict(self._live(session) or {})

    async def close(self) -> None:
        self._sessions.clear()


class RedisSubscriptionStore:
    """A Redis hash per session (``<prefix>sub:<digest>``: URI → state), expiring ``ttl`` after its last change:
    every replica sees every session's subscriptions."""

    def __init__(self, client: Any, prefix: str, ttl: float) -> None:
        self._redis = client
        self._prefix = prefix + "sub:"
        self._ttl = max(1, int(ttl))

    async def add(self, session: str, uri: str, state: str, limit: int) -> bool:
        key = self._prefix + session
        if not await self._redis.hexists(key, uri) and await self._redis.hlen(key) >= limit:
            return False
        async with self._redis.pipeline(transaction=True) as pipe:
            await pipe.hset(key, uri, state).expire(key, self._ttl).execute()
        return True

    async def remove(self, session: str, uri: str) -> None:
        await self._redis.hdel(self._prefix + session, uri)

    async def members(self, session: str) -> Watched:
        raw = await self._redis.hgetall(self._prefix + session)
        return {_text(k): _text(v) for k, v in raw.items()}

    async def close(self) -> None:
        return None  # the client is the hub's (shared with the bus)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


# -- the bus ---------------------------------------------------------------------------------------------------

Deliver = Callable[[dict[str, str]], Awaitable[None]]


class Bus(Protocol):
    """Carries messages (``{"t": "change", "agent", "uri"}``, ``{"t": "stream", "session", "stream"}``) to every
    replica, this one included, each to the ``deliver`` it was bound to."""

    def bind(self, deliver: Deliver) -> None: ...

    async def publish(self, message: dict[str, str]) -> None: ...

    async def run(self) -> None:
        """Receive until cancelled (what other replicas publish)."""

    async def close(self) -> None: ...


class MemoryBus:
    """One process: a message is delivered at once."""

    def __init__(self) -> None:
        self._deliver: Deliver | None = None

    def bind(self, deliver: Deliver) -> None:
        self._deliver = deliver

    async def publish(self, message: dict[str, str]) -> None:
        if self._deliver is not None:
            await self._deliver(message)

    async def run(self) -> None:
        await asyncio.Event().wait()

    async def close(self) -> None:
        return None


class RedisBus:
    """Redis pub/sub on one channel (``<prefix>changes``). The subscriber has a connection of its own (it blocks
    waiting); it reconnects after a failure (changes published meanwhile are lost, and found by the poller)."""

    def __init__(self, client: Any, url: str, prefix: str, *, timeout: float) -> None:
        self._redis = client
        self._url = url
        self._channel = prefix + "changes"
        self._timeout = timeout
        self._deliver: Deliver | None = None
        self.connected = asyncio.Event()

    def bind(self, deliver: Deliver) -> None:
        self._deliver = deliver

    async def publish(self, message: dict[str, str]) -> None:
        await self._redis.publish(self._channel, json.dumps(message, separators=(",", ":")))

    async def run(self) -> None:
        import redis.asyncio as aioredis
        from redis.exceptions import RedisError

        backoff = 0.1
        while True:
            client = aioredis.Redis.from_url(self._url, socket_connect_timeout=self._timeout, socket_timeout=None,
                                             health_check_interval=30)
            pubsub: Any = client.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(self._channel)
                self.connected.set()
                backoff = 0.1
                while True:
                    message = await pubsub.get_message(timeout=1.0)
                    if message is None or message.get("type") != "message":
                        continue
                    try:
                        body = json.loads(message["data"])
                    except (ValueError, TypeError):
                        continue
                    if isinstance(body, dict) and self._deliver is not None:
                        await self._deliver({str(k): str(v) for k, v in body.items()})
            except (RedisError, OSError) as exc:
                self.connected.clear()
                log.warning("mcp.changes.bus_lost", error=type(exc).__name__, retry_in=backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)
            finally:
                with contextlib.suppress(Exception):
                    await pubsub.aclose()
                with contextlib.suppress(Exception):
                    await client.aclose()

    async def close(self) -> None:
        await self._redis.aclose()  # the publishing client, shared with the subscription store


# -- the poller --------------------------------------------------------------------------------------------------

State = Callable[[Identity, str, str], Awaitable[str]]
"""``(identity, kind, name)`` → a fingerprint of the resource's state (version and update time; ``absent``)."""


class Poller:
    """Finds changes made to Vault directly: each round, the state of every URI this replica's listeners watch,
    compared with the last one seen (at first: the state when it was subscribed to, so a write between the
    subscription and the first round is not missed)."""

    def __init__(self, state: State, interval: float) -> None:
        self._state = state
        self.interval = interval
        self._seen: dict[tuple[str, str], str] = {}
        self._quiet: set[tuple[str, str]] = set()

    async def state(self, identity: Identity, uri: str) -> str:
        """The state of one of our URIs now (``""`` when it cannot be told)."""
        parsed = parse_uri(uri)
        if parsed is None:
            return ""
        try:
            return await self._state(identity, *parsed)
        except BridgeError:
            return ""

    def reset(self, agent: str, uri: str) -> None:
        """A change of ``uri`` came over the bus (and was announced): the next round only remembers its state."""
        self._quiet.add((agent, uri))

    async def round(self, listeners: Iterable[Listener]) -> list[tuple[str, str]]:
        """The ``(agent, uri)`` that changed since the last round."""
        watched: dict[tuple[str, str], tuple[Identity, str]] = {}
        for listener in listeners:
            if listener.ended:
                continue
            try:
                uris = await listener.watched()
            except Exception as exc:  # a store error: this listener's URIs are polled next round
                log.debug("mcp.changes.poll_uris_failed", error=type(exc).__name__)
                continue
            for uri, baseline in uris.items():
                watched.setdefault((listener.agent, uri), (listener.identity, baseline))
        for key in [k for k in self._seen if k not in watched]:
            del self._seen[key]
        gate = asyncio.Semaphore(POLL_CONCURRENCY)

        async def one(key: tuple[str, str], identity: Identity, baseline: str) -> tuple[str, str] | None:
            async with gate:
                state = await self.state(identity, key[1])
            if not state:
                return None  # Vault unavailable, forbidden ...: keep the last state
            quiet = key in self._quiet
            self._quiet.discard(key)
            before = self._seen.get(key, baseline)
            self._seen[key] = state
            return key if before and before != state and not quiet else None

        found = await asyncio.gather(*(one(key, *value) for key, value in watched.items()))
        self._quiet.intersection_update(watched)
        return [key for key in found if key is not None]


# -- the hub -------------------------------------------------------------------------------------------------------

class ChangeHub:
    """The listeners of this replica, the bus to the others, the subscription store and the poller."""

    def __init__(self, *, bus: Bus, store: SubscriptionStore, poller: Poller | None, keepalive: float,
                 max_uris: int) -> None:
        self.bus = bus
        self.store = store
        self.poller = poller
        self.keepalive = keepalive
        self.max_uris = max_uris
        self.closing = False
        self._by_agent: dict[str, set[Listener]] = {}
        bus.bind(self.deliver)

    # the executor's on_change
    async def changed(self, agent: str, kind: str, name: str) -> None:
        """An operation changed the agent's resource: tell every replica."""
        try:
            await self.bus.publish({"t": "change", "agent": agent, "uri": resource_uri(kind, name)})
        except Exception as exc:  # the write succeeded; its notification is lost (the poller finds it later)
            log.warning("mcp.changes.publish_failed", agent=agent, error=type(exc).__name__)

    async def states(self, identity: Identity, uris: Iterable[str]) -> Watched:
        """The current state of each URI (the poller's first baseline), ``""`` each when polling is off."""
        uris = list(uris)
        if self.poller is None or not uris:
            return dict.fromkeys(uris, "")
        gate = asyncio.Semaphore(POLL_CONCURRENCY)
        poller = self.poller

        async def one(uri: str) -> str:
            async with gate:
                return await poller.state(identity, uri)

        return dict(zip(uris, await asyncio.gather(*(one(uri) for uri in uris)), strict=True))

    def attach(self, listener: Listener) -> None:
        if self.closing:
            listener.push(None)
        self._by_agent.setdefault(listener.agent, set()).add(listener)

    def detach(self, listener: Listener) -> None:
        listener.ended = True
        own = self._by_agent.get(listener.agent)
        if own is not None:
            own.discard(listener)
            if not own:
                del self._by_agent[listener.agent]

    def listeners(self) -> list[Listener]:
        return [listener for own in self._by_agent.values() for listener in own]

    def count(self, agent: str) -> int:
        return len(self._by_agent.get(agent, ()))

    async def open_session_stream(self, listener: SessionListener) -> None:
        """A GET stream for a session: supersede the session's older stream on every replica."""
        self.attach(listener)
        try:
            await self.bus.publish({"t": "stream", "session": listener.session, "stream": listener.stream_id})
        except Exception as exc:
            log.warning("mcp.changes.publish_failed", error=type(exc).__name__)

    async def deliver(self, message: dict[str, str]) -> None:
        """A message from the bus (any replica's)."""
        kind = message.get("t")
        if kind == "change":
            agent, uri = message.get("agent", ""), message.get("uri", "")
            if self.poller is not None:
                self.poller.reset(agent, uri)
            await self._announce(agent, uri)
        elif kind == "stream":
            for listener in self.listeners():
                if isinstance(listener, SessionListener) and listener.session == message.get("session") \
                        and listener.stream_id != message.get("stream"):
                    listener.push(None)

    async def _announce(self, agent: str, uri: str) -> None:
        for listener in list(self._by_agent.get(agent, ())):
            try:
                wanted = uri in await listener.watched()
            except Exception as exc:
                log.warning("mcp.changes.store_failed", error=type(exc).__name__)
                continue
            if wanted:
                listener.push(uri)

    async def run(self) -> None:
        """The bus subscriber and the poller, until cancelled."""
        async with asyncio.TaskGroup() as group:
            group.create_task(self.bus.run())
            if self.poller is not None and self.poller.interval > 0:
                group.create_task(self._poll())

    async def _poll(self) -> None:
        assert self.poller is not None
        while True:
            await asyncio.sleep(self.poller.interval)
            for agent, uri in await self.poller.round(self.listeners()):
                await self._announce(agent, uri)

    def shutdown(self) -> None:
        """End every stream (their transports send the graceful close); streams opened later end at once."""
        self.closing = True
        for listener in self.listeners():
            listener.push(None)

    async def close(self) -> None:
        await self.bus.close()
        await self.store.close()


def build_hub(settings: Settings, state: State) -> ChangeHub:
    """The hub for ``settings``: Redis (bus and subscription store) with ``REDIS_URL``, else in-process; the
    poller every ``SUBSCRIPTION_POLL_INTERVAL`` (0: none) with ``state``."""
    poller = Poller(state, settings.subscription_poll_interval) if settings.subscription_poll_interval > 0 else None
    bus: Bus
    store: SubscriptionStore
    if settings.redis_url is not None:
        from bridge.ratelimit_redis import connect

        url = settings.redis_url.get_secret_value()
        client = connect(url, timeout=settings.redis_timeout)
        prefix = settings.redis_key_prefix + "mcp:"
        bus = RedisBus(client, url, prefix, timeout=settings.redis_timeout)
        store = RedisSubscriptionStore(client, prefix, settings.mcp_session_ttl)
        log.info("mcp.changes.backend", backend="redis")
    else:
        bus = MemoryBus()
        store = MemorySubscriptionStore(settings.mcp_session_ttl)
    return ChangeHub(bus=bus, store=store, poller=poller, keepalive=settings.subscription_keepalive,
                     max_uris=settings.subscription_max_uris)
