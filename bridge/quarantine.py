"""The kill switch: a quarantined agent is refused everything, everywhere, within a second, and loses what it
holds.

**State.** One document in the bridge state, ``quarantine`` (``{KV_MOUNT}/data/{DEFAULT_PREFIX}/_bridge/
quarantine``): ``{"agents": "<JSON: {agent: {since, reason, actor}}>"}`` (one string: OpenBao refuses request
bodies of more than 1000 strings), changed with check-and-set. It is the only source of truth: it survives the
restart of every replica, and each replica loads it before it serves.

**Propagation.** Each replica keeps the set in memory (:meth:`Quarantine.is_quarantined` is a set lookup on every
request) and re-reads the document every ``QUARANTINE_POLL_INTERVAL`` (0.5 s), so every replica refuses a newly
quarantined agent within that interval plus one Vault read, Redis or not. With ``REDIS_URL`` a change is also
published on ``{REDIS_KEY_PREFIX}quarantine``; every replica re-reads the document as soon as it hears it (the
message only wakes the reader: what counts is Vault's document, so a forged message can neither quarantine nor
release anyone). Polling goes on with Redis, as the safety net for a lost message.

**What a quarantine does.** On the replica that is asked: write the document, then revoke the agent's lease
token (Vault revokes every lease obtained with it: database logins dropped, certificates on the CRL) and drop the
lease records. On every replica, as soon as it learns of it (the asking one at once): refuse every request of the
agent with 403 ``agent_quarantined`` (the check runs right after the identity is resolved, for every identity
and auth method of that agent, REST and MCP alike, audited as denied), drop its cached child tokens (a service
token is revoked; a batch token cannot be, it expires within ``CHILD_TOKEN_TTL`` and is never used again), run
the ``on_quarantine`` callbacks (pending intake links), and make sure the lease token is gone (so a replica that
stopped half-way, or a credential obtained in the same instant on another replica, loses its leases too).
Releasing removes the agent from the document: service resumes on every replica within the same bound; what was
revoked stays revoked.

**Canaries.** :func:`canary_action` builds the ``CanaryAction`` callback from ``CANARY_ACTION``: ``quarantine``
(the default) quarantines the agent that tripped a canary, ``alert`` only logs.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import structlog

from bridge.audit import AuditLog, AuditUnavailableError, clip, now, request_fields
from bridge.config import IDENT_RE, Settings
from bridge.errors import AgentQuarantinedError, InvalidRequestError
from bridge.leases import LeaseKeeper
from bridge.vault.childtokens import ChildTokenBroker
from bridge.vault.errors import VaultError
from bridge.vault.state import BridgeState

log = structlog.get_logger("bridge.quarantine")

DOCUMENT = "quarantine"
MAX_REASON = 256
CHANNEL = "quarantine"
"""The Redis channel, after ``REDIS_KEY_PREFIX``."""

OnQuarantine = Callable[[str], Awaitable[None]]
"""``on_quarantine(agent)``: called once on every replica when it learns that ``agent`` is quarantined."""
CanaryAction = Callable[[str, str, str], Awaitable[None]]
"""``action(agent, path, how)``: what to do when ``agent`` used the canary secret ``path`` (``how``: read, list,
broker, wrap, transit …); called by the canary watch (bridge/canary.py)."""


@dataclass(frozen=True, slots=True)
class QuarantineEntry:
    agent: str
    since: float
    reason: str
    actor: str

    def to_data(self) -> dict[str, Any]:
        return {"since": round(self.since, 3), "reason": self.reason, "actor": self.actor}

    @classmethod
    def from_data(cls, agent: str, data: Any) -> QuarantineEntry:
        item = data if isinstance(data, dict) else {}
        try:
            since = float(item.get("since") or 0)
        except (TypeError, ValueError):
            since = 0.0
        return cls(agent, since, str(item.get("reason") or ""), str(item.get("actor") or ""))


@dataclass(frozen=True, slots=True)
class QuarantineResult:
    """The answer of :meth:`Quarantine.quarantine` / :meth:`Quarantine.release`. ``changed`` is false when the
    agent already was (or was not) quarantined; ``leases_revoked`` counts the live leases the records held."""

    agent: str
    quarantined: bool
    changed: bool
    entry: QuarantineEntry | None = None
    leases_revoked: int = 0
    child_tokens_dropped: int = 0


def _entries(data: dict[str, Any] | None) -> dict[str, QuarantineEntry]:
    try:
        agents = json.loads(str((data or {}).get("agents") or "{}"))
    except ValueError:
        log.error("quarantine.document_unreadable")
        agents = {}
    if not isinstance(agents, dict):
        return {}
    return {agent: QuarantineEntry.from_data(agent, item) for agent, item in agents.items()
            if isinstance(agent, str) and IDENT_RE.match(agent)}


def _document(entries: dict[str, QuarantineEntry]) -> dict[str, Any]:
    """The agents as one JSON string (OpenBao refuses request bodies of more than 1000 strings)."""
    return {"agents": json.dumps({a: e.to_data() for a, e in sorted(entries.items())}, separators=(",", ":"))}


def check_agent(agent: str) -> str:
    if not IDENT_RE.match(agent):
        raise InvalidRequestError("The agent id must match ^[a-z0-9][a-z0-9_-]{0,63}$.")
    return agent


class Notifier:
    """Redis pub/sub for quarantine changes: :meth:`publish` after a change, :meth:`listen` calls ``wake`` on every
    message (reconnecting with a growing pause while Redis is away)."""

    def __init__(self, url: str, channel: str, *, timeout: float) -> None:
        import redis.asyncio as aioredis

        self.channel = channel
        self._timeout = timeout
        self._client: Any = aioredis.Redis.from_url(url, socket_connect_timeout=timeout)

    async def publish(self, agent: str, action: str) -> None:
        payload = json.dumps({"agent": agent, "action": action})
        try:
            await asyncio.wait_for(self._client.publish(self.channel, payload), self._timeout)
        except Exception as exc:  # polling covers a lost message
            log.warning("quarantine.publish_failed", error=type(exc).__name__)

    async def listen(self, wake: Callable[[], None]) -> None:
        pause = 0.2
        while True:
            pubsub = self._client.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(self.channel)
                pause = 0.2
                while True:
                    message = await pubsub.get_message(timeout=1.0)
                    if message is not None:
                        wake()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # Redis away: polling goes on, retry later
                log.warning("quarantine.subscribe_failed", error=type(exc).__name__)
                await asyncio.sleep(pause)
                pause = min(pause * 2, 10.0)
            finally:
                with contextlib.suppress(Exception):
                    await pubsub.aclose()

    async def close(self) -> None:
        await self._client.aclose()


class Quarantine:
    """The quarantined agents (see the module docstring). ``leases`` revokes what an agent holds, ``children`` its
    cached child tokens; ``audit`` records quarantines and releases; ``notifier`` (Redis) speeds up propagation."""

    def __init__(self, state: BridgeState, *, leases: LeaseKeeper | None = None,
                 children: ChildTokenBroker | None = None, audit: AuditLog | None = None,
                 notifier: Notifier | None = None, poll_interval: float = 0.5,
                 clock: Callable[[], float] = time.time) -> None:
        self._state = state
        self._leases = leases
        self._children = children
        self._audit = audit if audit is not None and audit.enabled else None
        self._notifier = notifier
        self.poll_interval = poll_interval
        self._clock = clock
        self._entries: dict[str, QuarantineEntry] = {}
        self.loaded = False
        """Whether the document was read at least once (a replica that could not read it at start-up serves
        until it can; see :meth:`run`)."""
        self.on_quarantine: list[OnQuarantine] = []
        self._wake = asyncio.Event()
        self._writing = asyncio.Lock()
        self._tasks: set[asyncio.Task[None]] = set()
        self._unenforced: set[str] = set()
        """Quarantined agents whose leases could not be revoked yet."""

    # -- asking -------------------------------------------------------------------------------------------

    def is_quarantined(self, agent: str) -> bool:
        return agent in self._entries

    def check(self, agent: str) -> None:
        """403 ``agent_quarantined`` for a quarantined agent."""
        entry = self._entries.get(agent)
        if entry is not None:
            raise AgentQuarantinedError(
                "This agent is quarantined: every request is refused until an operator releases it.",
                extra={"since": int(entry.since)})

    def entries(self) -> list[QuarantineEntry]:
        return sorted(self._entries.values(), key=lambda e: e.agent)

    def entry(self, agent: str) -> QuarantineEntry | None:
        return self._entries.get(agent)

    # -- changing -------------------------------------------------------------------------------------------

    async def quarantine(self, agent: str, reason: str, actor: str) -> QuarantineResult:
        """Quarantine ``agent`` everywhere (idempotent: quarantining again keeps the first entry, and revokes
        again whatever the agent may have obtained since)."""
        check_agent(agent)
        entry = QuarantineEntry(agent, self._clock(), clip(reason.strip())[:MAX_REASON] if reason else "",
                                actor[:MAX_REASON])
        changed = False

        def add(data: dict[str, Any] | None) -> dict[str, Any] | None:
            nonlocal changed
            current = _entries(data)
            changed = agent not in current
            if not changed:
                return data
            current[agent] = entry
            return _document(current)

        async with self._writing:  # changes and reads of this process take turns (see refresh)
            written = await self._state.update(DOCUMENT, add)
            entries = _entries(written)
            dropped = self._apply(entries, enforce_here={agent})
        if changed and self._notifier is not None:
            await self._notifier.publish(agent, "quarantine")
        revoked = await self._enforce(agent)
        stored = entries.get(agent, entry)
        log.warning("quarantine.agent_quarantined", agent=agent, actor=actor, changed=changed,
                    leases_revoked=revoked, child_tokens_dropped=dropped)
        await self._record("agent_quarantine", agent, actor, reason=stored.reason, leases_revoked=revoked)
        return QuarantineResult(agent, True, changed, stored, revoked, dropped)

    async def release(self, agent: str, actor: str) -> QuarantineResult:
        check_agent(agent)
        changed = False

        def remove(data: dict[str, Any] | None) -> dict[str, Any] | None:
            nonlocal changed
            current = _entries(data)
            changed = agent in current
            if not changed:
                return data
            del current[agent]
            return _document(current)

        async with self._writing:
            written = await self._state.update(DOCUMENT, remove)
            self._apply(_entries(written))
        if changed and self._notifier is not None:
            await self._notifier.publish(agent, "release")
        log.warning("quarantine.agent_released", agent=agent, actor=actor, changed=changed)
        await self._record("agent_release", agent, actor)
        return QuarantineResult(agent, False, changed)

    # -- learning -------------------------------------------------------------------------------------------

    async def refresh(self) -> None:
        """Read the document and apply it (raises Vault's errors: the caller logs them). It takes turns with this
        process's own changes, so a read from before a change is never applied after it (which would undo the
        change here until the next read)."""
        async with self._writing:
            doc = await self._state.read(DOCUMENT)
            self._apply(_entries(doc.data if doc is not None else None))
        self.loaded = True

    def _apply(self, entries: dict[str, QuarantineEntry], *, enforce_here: set[str] | None = None) -> int:
        """Take ``entries`` as the quarantined set: newly quarantined agents lose their cached child tokens now
        and are enforced in the background (unless the caller enforces them itself); how many child tokens were
        dropped."""
        new = [agent for agent in entries if agent not in self._entries]
        released = [agent for agent in self._entries if agent not in entries]
        self._entries = entries
        dropped = 0
        for agent in new:
            if self._children is not None:
                dropped += self._children.drop(agent)
            if agent not in (enforce_here or set()):
                self._spawn(self._enforce(agent), f"quarantine-{agent}")
        for agent in released:
            log.info("quarantine.released_here", agent=agent)
        return dropped

    async def _enforce(self, agent: str, *, callbacks: bool = True) -> int:
        """Revoke what ``agent`` holds (its lease token) and run the callbacks; the leases its records held."""
        revoked = 0
        if self._leases is not None:
            try:
                revoked = await self._leases.revoke_all(agent, "quarantine")
                self._unenforced.discard(agent)
            except Exception as exc:  # Vault down, the records contended: tried again at every poll (run)
                log.error("quarantine.revoke_failed", agent=agent, error=type(exc).__name__)
                self._unenforced.add(agent)
        for callback in self.on_quarantine if callbacks else ():
            try:
                await callback(agent)
            except Exception:  # one hook's failure must not stop the others
                log.exception("quarantine.callback_failed", agent=agent)
        return revoked

    def _spawn(self, job: Awaitable[Any], name: str) -> None:
        async def run() -> None:
            await job

        task = asyncio.create_task(run(), name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _record(self, operation: str, agent: str, actor: str, **fields: Any) -> None:
        if self._audit is None:
            return
        entry = {"time": now(), "type": "audit", **request_fields(), "agent": agent, "auth_method": "admin",
                 "operation": operation, "actor": actor, **fields, "outcome": "ok"}
        with contextlib.suppress(AuditUnavailableError):  # done already: the audit log logs and counts its failure
            await self._audit.write(entry)

    # -- running --------------------------------------------------------------------------------------------

    async def start(self) -> None:
        """Load the document before serving; when Vault cannot be read, serve and keep trying (logged)."""
        try:
            await self.refresh()
        except VaultError as exc:
            log.error("quarantine.load_failed", error=type(exc).__name__)
            return
        for entry in self.entries():  # a replica that stopped half-way: make sure nothing is left
            self._spawn(self._enforce(entry.agent), f"quarantine-{entry.agent}")

    async def run(self) -> None:
        """Re-read the document every ``poll_interval`` (jittered a little), or at once when Redis says it
        changed."""
        listener = None
        if self._notifier is not None:
            listener = asyncio.create_task(self._notifier.listen(self._wake.set), name="quarantine-listener")
        failures = 0
        try:
            while True:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), self.poll_interval * random.uniform(0.9, 1.0))  # noqa: S311
                self._wake.clear()
                try:
                    await self.refresh()
                    failures = 0
                    for agent in sorted(self._unenforced & set(self._entries)):
                        await self._enforce(agent, callbacks=False)
                except VaultError as exc:
                    failures += 1
                    if failures == 1 or failures % 100 == 0:
                        log.warning("quarantine.refresh_failed", error=type(exc).__name__, failures=failures)
        finally:
            if listener is not None:
                listener.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await listener

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._notifier is not None:
            await self._notifier.close()


def canary_action(settings: Settings, quarantine: Quarantine) -> CanaryAction:
    """The ``CanaryAction`` of ``CANARY_ACTION``: ``quarantine`` quarantines the agent (actor ``canary``), ``alert``
    only logs (the canary watch has audited and counted the trip already)."""

    if settings.canary_action == "quarantine":
        async def quarantine_reader(agent: str, path: str, how: str) -> None:
            await quarantine.quarantine(agent, f"canary tripped: {how} of {path}", "canary")

        return quarantine_reader

    async def alert(agent: str, path: str, how: str) -> None:
        log.error("canary.alert_only", agent=agent, path=path, how=how, canary_action="alert")

    return alert
