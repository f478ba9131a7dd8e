"""The change hub without Vault or a network: URIs, per-agent delivery, the poller's baselines, the in-process
subscription store, a stream that falls behind. (End to end: test_subscriptions.py, test_replicas.py.)"""

from __future__ import annotations

import asyncio

import pytest

from bridge.auth.identity import Identity
from bridge.mcp.changes import (
    QUEUE_SIZE,
    ChangeHub,
    ListenListener,
    MemoryBus,
    MemorySubscriptionStore,
    Poller,
    SessionListener,
    parse_uri,
    resource_uri,
)

ALICE = Identity("alice", "api_key", frozenset({"read"}))
BOB = Identity("bob", "api_key", frozenset({"read"}))


@pytest.mark.parametrize(("uri", "parsed"), [
    ("vault://kv/db/prod", ("kv", "db/prod")),
    ("vault://kv/a%2Fb", ("kv", "a/b")),
    ("vault://transit/my-key", ("transit", "my-key")),
    ("vault://kv/../bob/x", None),
    ("vault://kv/", None),
    ("vault://kv/a%", None),
    ("vault://transit/Bad.Key", None),
    ("file:///etc/passwd", None),
    (None, None),
])
def test_uris(uri: str | None, parsed: tuple[str, str] | None) -> None:
    assert parse_uri(uri) == parsed
    if parsed is not None:
        assert parse_uri(resource_uri(*parsed)) == parsed


def _hub(poller: Poller | None = None) -> ChangeHub:
    return ChangeHub(bus=MemoryBus(), store=MemorySubscriptionStore(60), poller=poller, keepalive=1, max_uris=10)


async def test_a_change_reaches_its_agent_only() -> None:
    hub = _hub()
    mine, theirs = ListenListener(ALICE, {"vault://kv/x": ""}), ListenListener(BOB, {"vault://kv/x": ""})
    hub.attach(mine)
    hub.attach(theirs)
    await hub.deliver({"t": "change", "agent": "alice", "uri": "vault://kv/x"})
    await hub.deliver({"t": "change", "agent": "alice", "uri": "vault://kv/y"})  # not watched
    assert mine.queue.get_nowait() == "vault://kv/x"
    assert mine.queue.empty()
    assert theirs.queue.empty()
    hub.shutdown()
    assert mine.queue.get_nowait() is None
    assert theirs.queue.get_nowait() is None


async def test_session_streams_follow_the_store_and_supersede() -> None:
    hub = _hub()
    first = SessionListener(ALICE, "s1", hub.store, "one")
    await hub.open_session_stream(first)
    assert await hub.store.add("s1", "vault://kv/x", "1:t", limit=1)
    assert not await hub.store.add("s1", "vault://kv/y", "", limit=1)  # SUBSCRIPTION_MAX_URIS
    await hub.deliver({"t": "change", "agent": "alice", "uri": "vault://kv/x"})
    assert first.queue.get_nowait() == "vault://kv/x"
    second = SessionListener(ALICE, "s1", hub.store, "two")
    await hub.open_session_stream(second)  # a newer GET of the same session ends the older one
    assert first.queue.get_nowait() is None
    assert second.queue.empty()
    await hub.store.remove("s1", "vault://kv/x")
    await hub.deliver({"t": "change", "agent": "alice", "uri": "vault://kv/x"})
    assert second.queue.empty()


async def test_poller_baselines_and_resets() -> None:
    states = {"vault://kv/x": "1:a", "vault://kv/y": "absent"}

    async def state(identity: Identity, kind: str, name: str) -> str:
        return states[f"vault://{kind}/{name}"]

    poller = Poller(state, 1.0)
    # subscribed when x was at 1:a, y absent; x changed before the first round: found all the same
    listener = ListenListener(ALICE, {"vault://kv/x": "0:old", "vault://kv/y": "absent"})
    assert await poller.round([listener]) == [("alice", "vault://kv/x")]
    assert await poller.round([listener]) == []
    states["vault://kv/y"] = "1:b"  # created directly in Vault
    assert await poller.round([listener]) == [("alice", "vault://kv/y")]
    states["vault://kv/x"] = "2:c"
    poller.reset("alice", "vault://kv/x")  # announced over the bus already: not again
    assert await poller.round([listener]) == []
    states["vault://kv/x"] = "3:d"
    assert await poller.round([listener]) == [("alice", "vault://kv/x")]


async def test_a_stream_that_falls_behind_ends() -> None:
    listener = ListenListener(ALICE, {"vault://kv/x": ""})
    for _ in range(QUEUE_SIZE + 5):
        listener.push("vault://kv/x")
    assert listener.ended
    items = [listener.queue.get_nowait() for _ in range(listener.queue.qsize())]
    assert items[-1] is None
    assert len(items) == QUEUE_SIZE + 1


async def test_memory_store_expires_sessions() -> None:
    now = [0.0]
    store = MemorySubscriptionStore(10, clock=lambda: now[0])
    await store.add("s", "vault://kv/x", "", limit=5)
    assert await store.members("s") == {"vault://kv/x": ""}
    now[0] = 11.0
    assert await store.members("s") == {}


async def test_memory_bus_delivers_to_the_running_hub() -> None:
    hub = _hub()
    listener = ListenListener(ALICE, {"vault://kv/x": ""})
    hub.attach(listener)
    runner = asyncio.create_task(hub.run())
    await asyncio.sleep(0)
    await hub.changed("alice", "kv", "x")
    assert await asyncio.wait_for(listener.queue.get(), 5) == "vault://kv/x"
    runner.cancel()
    with pytest.raises(asyncio.CancelledError):
        await runner
