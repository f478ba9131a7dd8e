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

Record data: ``state`` (``claimed``/``stored``), ``agent``, ``path``, ``claimed_at`` (Unix seconds) and, once
stored, ``version``. It never holds a value.
"""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass, replace
from typing import Literal, Protocol

from bridge.intake.token import IntakeTicket

RECORD_DIR = "_bridge/intake"
"""Below ``{KV_MOUNT}/data/{DEFAULT_PREFIX}/``."""
_RECORD_NAME = re.compile(r"(\d{1,12})\.[A-Za-z0-9_-]{22}")


@dataclass(frozen=True, slots=True)
class IntakeRecord:
    state: Literal["claimed", "stored"]
    agent: str
    path: str
    claimed_at: float
    version: int | None = None

    def to_data(self) -> dict[str, object]:
        data: dict[str, object] = {"state": self.state, "agent": self.agent, "path": self.path,
                                   "claimed_at": self.claimed_at}
        if self.version is not None:
            data["version"] = self.version
        return data

    @classmethod
    def from_data(cls, data: dict[str, object]) -> IntakeRecord:
        version = data.get("version")
        state = data.get("state")
        return cls("stored" if state == "stored" else "claimed", str(data.get("agent", "")),
                   str(data.get("path", "")), float(str(data.get("claimed_at", 0))),
                   int(str(version)) if version is not None else None)


def record_path(prefix: str, ticket: IntakeTicket) -> str:
    """The record's path below the KV mount: ``{prefix}/_bridge/intake/<intake_id>``."""
    return f"{prefix}/{RECORD_DIR}/{ticket.intake_id}"


def expired_record(name: str, now: float) -> bool:
    """Whether a listed record name belongs to a link that expired before ``now`` (``purge``)."""
    match = _RECORD_NAME.fullmatch(name)
    return match is not None and int(match.group(1)) < now


class IntakeStore(Protocol):
    """Where consumed links are recorded, shared by every replica."""

    async def claim(self, ticket: IntakeTicket, now: float) -> bool:
        """Create the link's record (state ``claimed``) if it does not exist; ``False`` when it does."""
        ...

    async def finish(self, ticket: IntakeTicket, version: int) -> None:
        """Mark the claimed record ``stored`` with the secret's new version."""
        ...

    async def release(self, ticket: IntakeTicket) -> None:
        """Delete the record (the write failed and may be retried)."""
        ...

    async def lookup(self, ticket: IntakeTicket) -> IntakeRecord | None:
        """The link's record, or ``None`` when it was never claimed (or released)."""
        ...

    async def purge(self, now: float) -> int:
        """Delete the records of links that expired before ``now``; how many."""
        ...


class MemoryIntakeStore:
    """:class:`IntakeStore` in this process's memory (one replica, tests)."""

    def __init__(self) -> None:
        self._records: dict[str, IntakeRecord] = {}
        self._lock = asyncio.Lock()

    async def claim(self, ticket: IntakeTicket, now: float) -> bool:
        async with self._lock:
            if ticket.intake_id in self._records:
                return False
            self._records[ticket.intake_id] = IntakeRecord("claimed", ticket.agent, ticket.path, now)
            return True

    async def finish(self, ticket: IntakeTicket, version: int) -> None:
        async with self._lock:
            record = self._records.get(ticket.intake_id)
            if record is not None:
                self._records[ticket.intake_id] = replace(record, state="stored", version=version)

    async def release(self, ticket: IntakeTicket) -> None:
        async with self._lock:
            self._records.pop(ticket.intake_id, None)

    async def lookup(self, ticket: IntakeTicket) -> IntakeRecord | None:
        return self._records.get(ticket.intake_id)

    async def purge(self, now: float) -> int:
        async with self._lock:
            gone = [name for name in self._records if expired_record(name, now)]
            for name in gone:
                del self._records[name]
            return len(gone)


__all__ = ["RECORD_DIR", "IntakeRecord", "IntakeStore", "MemoryIntakeStore", "expired_record", "record_path"]
