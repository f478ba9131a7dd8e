"""The consumed-nonce record: what makes an intake link single-use across replicas.

A submission first **claims** the link: it creates the record ``<expires_at>.<nonce>`` (the ticket's
``intake_id``) if and only if it does not exist. Only the claimant writes the values; any other submission of the
same link, on any replica, finds the record and is refused (410 ``intake_used``). The record then says what became
of the link (``finish``: stored as version N). A claim is **released** (the record deleted) only when the write
failed in a way a retry can fix (Vault unavailable), so that the human can submit again.

:class:`IntakeStore` is the protocol; :class:`MemoryIntakeStore` is the single-process implementation (tests, one
replica). The Vault implementation (done with the bridge's own token where the app is wired) keeps records in the
bridge's state subtree, which every replica sees and no agent can reach (docs/dynamic.md, "Bridge state in
Vault"), using these KV v2 facts (verified on OpenBao 2.7.2 by tests/intake/test_store.py):

- claim: ``POST {KV_MOUNT}/data/{DEFAULT_PREFIX}/_bridge/intake/<intake_id>`` with
  ``{"options": {"cas": 0}, "data": {…}}``: 200 when the record did not exist (version 1); when it exists, 400
  ``check-and-set parameter did not match the current version`` (→ ``claim`` returns ``False``);
- finish: the same path with ``{"options": {"cas": 1}, "data": {…, "state": "stored", "version": N}}``;
- lookup: ``GET …/data/…/intake/<intake_id>`` (404: no record);
- release and purge: ``DELETE {KV_MOUNT}/metadata/{DEFAULT_PREFIX}/_bridge/intake/<intake_id>`` (every version
  and the key itself go, so a later ``cas: 0`` claim succeeds again; 204 also when absent);
- purge lists ``LIST {KV_MOUNT}/metadata/{DEFAULT_PREFIX}/_bridge/intake`` (404 when empty) and deletes the
  records whose name starts with an ``expires_at`` in the past, reading none of them. A record outlives its link
  only until a purge: a link past its expiry is refused by its signature's time already.

Record data: ``state``, ``agent``, ``path``, ``claimed_at`` (Unix seconds) and, by state: ``stored`` with
``version`` and ``fingerprints`` (field → keyed HMAC, never a value); ``failed`` with ``code`` (the write's error
code: the link stays used); ``void`` with ``code`` (``declined``, ``cancelled``: the agent's client said the human
refused; the link can no longer be submitted). A record never holds a value.

An agent's links can be voided all at once (:meth:`IntakeStore.void_agent`, the quarantine hook): one record per
agent below ``_bridge/intake/agents/<agent>`` says since when (``voided_at``) and until when it matters
(``until``: the last expiry of a link made before); every link of that agent that expires by ``voided_at`` plus
``INTAKE_TTL`` (made at or before ``voided_at``) is refused. Purge drops it after ``until``.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Literal, Protocol

RECORD_DIR = "_bridge/intake"
"""Below ``{KV_MOUNT}/data/{DEFAULT_PREFIX}/``."""
AGENT_DIR = f"{RECORD_DIR}/agents"
"""The per-agent void records (:meth:`IntakeStore.void_agent`)."""
_RECORD_NAME = re.compile(r"(\d{1,12})\.[A-Za-z0-9_-]{22}")

RecordState = Literal["claimed", "stored", "failed", "void"]
_STATES: tuple[RecordState, ...] = ("claimed", "stored", "failed", "void")


class IntakeKey(Protocol):
    """What names a link's record: an :class:`~bridge.intake.token.IntakeTicket` or an
    :class:`~bridge.intake.token.IntakeRef`."""

    @property
    def agent(self) -> str: ...

    @property
    def path(self) -> str: ...

    @property
    def intake_id(self) -> str: ...


@dataclass(frozen=True, slots=True)
class IntakeRecord:
    state: RecordState
    agent: str
    path: str
    claimed_at: float
    version: int | None = None
    fingerprints: dict[str, str] | None = None
    code: str | None = None

    def to_data(self) -> dict[str, object]:
        data: dict[str, object] = {"state": self.state, "agent": self.agent, "path": self.path,
                                   "claimed_at": self.claimed_at}
        if self.version is not None:
            data["version"] = self.version
        if self.fingerprints is not None:
            data["fingerprints"] = dict(self.fingerprints)
        if self.code is not None:
            data["code"] = self.code
        return data

    @classmethod
    def from_data(cls, data: dict[str, object]) -> IntakeRecord:
        version = data.get("version")
        state = data.get("state")
        prints = data.get("fingerprints")
        code = data.get("code")
        return cls(state if state in _STATES else "claimed", str(data.get("agent", "")),
                   str(data.get("path", "")), float(str(data.get("claimed_at", 0))),
                   int(str(version)) if version is not None else None,
                   {str(k): str(v) for k, v in prints.items()} if isinstance(prints, dict) else None,
                   str(code) if code is not None else None)


@dataclass(frozen=True, slots=True)
class AgentVoid:
    """Every link of ``agent`` made at or before ``voided_at`` is void; the record matters until ``until``."""

    voided_at: float
    until: float

    def voids(self, expires_at: float, ttl: float) -> bool:
        """Whether a link expiring at ``expires_at`` (made ``ttl`` before) was made by ``voided_at``."""
        return expires_at - ttl <= self.voided_at


def record_path(prefix: str, key: IntakeKey) -> str:
    """The record's path below the KV mount: ``{prefix}/_bridge/intake/<intake_id>``."""
    return f"{prefix}/{RECORD_DIR}/{key.intake_id}"


def agent_record_path(prefix: str, agent: str) -> str:
    """An agent's void record below the KV mount: ``{prefix}/_bridge/intake/agents/<agent>``."""
    return f"{prefix}/{AGENT_DIR}/{agent}"


def expired_record(name: str, now: float) -> bool:
    """Whether a listed record name belongs to a link that expired before ``now`` (``purge``)."""
    match = _RECORD_NAME.fullmatch(name)
    return match is not None and int(match.group(1)) < now


class IntakeStore(Protocol):
    """Where consumed links are recorded, shared by every replica."""

    async def claim(self, key: IntakeKey, now: float) -> bool:
        """Create the link's record (state ``claimed``) if it does not exist; ``False`` when it does."""
        ...

    async def finish(self, key: IntakeKey, version: int, fingerprints: Mapping[str, str] | None = None) -> None:
        """Mark the claimed record ``stored`` with the secret's new version (and the values' fingerprints)."""
        ...

    async def fail(self, key: IntakeKey, code: str) -> None:
        """Mark the claimed record ``failed`` with the write's error code (the link stays used)."""
        ...

    async def void(self, key: IntakeKey, code: str, now: float) -> bool:
        """Create the link's record in state ``void`` (``code``: why) if it does not exist; ``False`` when it
        does (the human was first)."""
        ...

    async def release(self, key: IntakeKey) -> None:
        """Delete the record (the write failed and may be retried)."""
        ...

    async def lookup(self, key: IntakeKey) -> IntakeRecord | None:
        """The link's record, or ``None`` when it was never claimed (or released)."""
        ...

    async def void_agent(self, agent: str, now: float, until: float) -> None:
        """Void every link of ``agent`` made until ``now`` (see the module docstring)."""
        ...

    async def agent_void(self, agent: str) -> AgentVoid | None:
        """The agent's void record, if any."""
        ...

    async def purge(self, now: float) -> int:
        """Delete the records of links that expired before ``now`` (and agent void records past their
        ``until``); how many."""
        ...


class MemoryIntakeStore:
    """:class:`IntakeStore` in this process's memory (one replica, tests)."""

    def __init__(self) -> None:
        self._records: dict[str, IntakeRecord] = {}
        self._agents: dict[str, AgentVoid] = {}
        self._lock = asyncio.Lock()

    async def _create(self, key: IntakeKey, record: IntakeRecord) -> bool:
        async with self._lock:
            if key.intake_id in self._records:
                return False
            self._records[key.intake_id] = record
            return True

    async def claim(self, key: IntakeKey, now: float) -> bool:
        return await self._create(key, IntakeRecord("claimed", key.agent, key.path, now))

    async def void(self, key: IntakeKey, code: str, now: float) -> bool:
        return await self._create(key, IntakeRecord("void", key.agent, key.path, now, code=code))

    async def _settle(self, key: IntakeKey, **changes: object) -> None:
        async with self._lock:
            record = self._records.get(key.intake_id)
            if record is not None and record.state == "claimed":
                self._records[key.intake_id] = replace(record, **changes)  # type: ignore[arg-type]

    async def finish(self, key: IntakeKey, version: int, fingerprints: Mapping[str, str] | None = None) -> None:
        await self._settle(key, state="stored", version=version,
                           fingerprints=dict(fingerprints) if fingerprints is not None else None)

    async def fail(self, key: IntakeKey, code: str) -> None:
        await self._settle(key, state="failed", code=code)

    async def release(self, key: IntakeKey) -> None:
        async with self._lock:
            self._records.pop(key.intake_id, None)

    async def lookup(self, key: IntakeKey) -> IntakeRecord | None:
        return self._records.get(key.intake_id)

    async def void_agent(self, agent: str, now: float, until: float) -> None:
        async with self._lock:
            self._agents[agent] = AgentVoid(now, until)

    async def agent_void(self, agent: str) -> AgentVoid | None:
        return self._agents.get(agent)

    async def purge(self, now: float) -> int:
        async with self._lock:
            gone = [name for name in self._records if expired_record(name, now)]
            for name in gone:
                del self._records[name]
            agents = [agent for agent, void in self._agents.items() if void.until < now]
            for agent in agents:
                del self._agents[agent]
            return len(gone) + len(agents)


__all__ = ["AGENT_DIR", "RECORD_DIR", "AgentVoid", "IntakeKey", "IntakeRecord", "IntakeStore", "MemoryIntakeStore",
           "RecordState", "agent_record_path", "expired_record", "record_path"]
