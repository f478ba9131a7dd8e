"""The leases the bridge obtained for each agent: their records, and revoking them all.

**Records** (:class:`LeaseBook`). One document per agent in the bridge state, ``leases/<agent>``
(``{KV_MOUNT}/data/{DEFAULT_PREFIX}/_bridge/leases/<agent>``): ``{"leases": "<JSON list of records>",
"last_seen": <unix>}`` (the list is one string: OpenBao refuses request bodies of more than 1000 strings).
A record names the lease (``lease_id``; none for an SSH certificate, which is no lease), its kind (``database``,
``pki``, ``ssh``), the agent's role, when it was issued and expires, whether it is renewable, the accessor of the
lease token it was obtained with, and what identifies the credential without being it (the database user name,
the certificate's serial and common name, the SSH certificate's serial and principals). Never a password, a key or
a token. Every replica reads the same document; changes are check-and-set (:meth:`BridgeState.update`), so two
replicas adding a lease for one agent at once both land. Expired records are dropped whenever the document is
written, and hidden when it is read. Why one document per agent rather than one per lease: listing, and the
ownership check of every renew and revoke, is one read instead of a LIST plus one read per lease, and an agent's
own concurrent obtains are the only writers that contend (docs/dynamic.md has the measurements).
``LEASE_MAX_PER_AGENT`` bounds the document.

**Held values.** When a ``use``-only identity obtains a database login, the bridge keeps its password in a
document of its own (:mod:`bridge.lease_values`) and the record says so (``details["password_reference"]``).
Whenever a change of the agent's lease document drops such a record (a revocation, a dead lease token, an expired
record left out of the new document), the held value is deleted with it (:meth:`LeaseBook._change`).

**Revocation** (:class:`LeaseKeeper`). :meth:`LeaseKeeper.revoke_all` revokes the agent's lease token (Vault revokes
every lease obtained with it) and drops the records of everything but SSH certificates, which cannot be revoked and
stay listed until they expire, and deletes every password held for the agent. The quarantine calls it; so does the
idle watch when ``LEASE_REVOKE_ON_IDLE`` is set: each replica notes the agents it serves (:meth:`LeaseKeeper.saw`,
on every authenticated request) and writes ``last_seen`` into the lease documents of the agents that hold leases at
most once per tick; every tick, each replica reads the lease documents and revokes everything of an agent whose
latest ``last_seen`` (over every replica) is older than the setting. A tick is a quarter of the setting (0.5 s to 30
s), so an idle agent loses its leases between the setting and the setting plus two ticks after its last request.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Literal

import structlog

from bridge.audit import AuditLog, AuditUnavailableError
from bridge.audit import now as now_text
from bridge.errors import ConflictError, VaultUnavailableBridgeError
from bridge.lease_values import LeaseValues
from bridge.vault.client import VaultClient
from bridge.vault.errors import VaultError
from bridge.vault.leasetokens import LeaseTokens
from bridge.vault.state import BridgeState, StateConflictError
from bridge.vault.tokens import TokenSource

log = structlog.get_logger("bridge.leases")

Kind = Literal["database", "pki", "ssh"]
FOLDER = "leases"
MIN_TICK = 0.5
MAX_TICK = 30.0


@dataclass(frozen=True, slots=True)
class LeaseRecord:
    """One credential the bridge obtained for an agent (see the module docstring)."""

    kind: Kind
    role: str
    issued_at: float
    expires_at: float
    lease_id: str | None = None
    renewable: bool = False
    token: str = ""
    """The accessor of the lease token it was obtained with."""
    details: dict[str, Any] = field(default_factory=dict)
    """``username`` (database; and ``password_reference`` when the bridge holds the password for a ``use``-only
    identity), ``serial_number`` and ``common_name`` (pki), ``serial_number`` and ``valid_principals`` (ssh)."""

    @property
    def revocable(self) -> bool:
        return self.lease_id is not None

    @property
    def held(self) -> bool:
        """Whether the bridge holds this database login's password (``details["password_reference"]``)."""
        return bool(self.details.get("password_reference"))

    def to_data(self) -> dict[str, Any]:
        data: dict[str, Any] = {"kind": self.kind, "role": self.role, "issued_at": round(self.issued_at, 3),
                                "expires_at": round(self.expires_at, 3), "renewable": self.renewable,
                                "token": self.token, "details": self.details}
        if self.lease_id is not None:
            data["lease_id"] = self.lease_id
        return data

    @classmethod
    def from_data(cls, data: Any) -> LeaseRecord | None:
        if not isinstance(data, dict) or data.get("kind") not in ("database", "pki", "ssh"):
            return None
        try:
            issued, expires = float(data.get("issued_at") or 0), float(data.get("expires_at") or 0)
        except (TypeError, ValueError):
            return None
        lease_id = data.get("lease_id")
        details = data.get("details")
        return cls(kind=data["kind"], role=str(data.get("role") or ""), issued_at=issued, expires_at=expires,
                   lease_id=str(lease_id) if isinstance(lease_id, str) and lease_id else None,
                   renewable=bool(data.get("renewable")), token=str(data.get("token") or ""),
                   details=details if isinstance(details, dict) else {})


@dataclass(frozen=True, slots=True)
class AgentLeases:
    """An agent's lease document as read: its live records and when it was last seen (Unix time, 0: never)."""

    records: tuple[LeaseRecord, ...]
    last_seen: float


def _parse(data: dict[str, Any] | None, now: float) -> AgentLeases:
    if data is None:
        return AgentLeases((), 0.0)
    try:
        raw = json.loads(str(data.get("leases") or "[]"))
    except ValueError:
        raw = []
    records = tuple(r for r in (LeaseRecord.from_data(item) for item in (raw if isinstance(raw, list) else []))
                    if r is not None and r.expires_at > now)
    try:
        seen = float(data.get("last_seen") or 0)
    except (TypeError, ValueError):
        seen = 0.0
    return AgentLeases(records, seen)


def _every_record(data: dict[str, Any] | None) -> tuple[LeaseRecord, ...]:
    """Every record of a document, expired ones included."""
    return _parse(data, float("-inf")).records


def _document(records: Iterable[LeaseRecord], last_seen: float) -> dict[str, Any]:
    """The records as one JSON string: OpenBao refuses a request body with more than 1000 strings (keys
    included), which a list of objects would reach at about 60 leases."""
    leases = json.dumps([r.to_data() for r in records], separators=(",", ":"), sort_keys=True)
    return {"leases": leases, "last_seen": round(last_seen, 3)}


def _count(data: dict[str, Any]) -> int:
    """How many records (live or expired) a document holds."""
    try:
        raw = json.loads(str(data.get("leases") or "[]"))
    except ValueError:
        return 0
    return len(raw) if isinstance(raw, list) else 0


def _unavailable(exc: StateConflictError) -> VaultUnavailableBridgeError:
    log.warning("leases.record_contended", error=str(exc))
    return VaultUnavailableBridgeError("The lease records changed too often at once; retry in a moment.",
                                       code="lease_record_unavailable", headers={"Retry-After": "1"})


class LeaseBook:
    """The agents' lease documents in the bridge state (see the module docstring). Vault errors pass through
    (the caller translates them); a check-and-set lost too often is 503 ``lease_record_unavailable``."""

    def __init__(self, state: BridgeState, *, limit: int = 100, clock: Callable[[], float] = time.time,
                 values: LeaseValues | None = None) -> None:
        self._state = state
        self.limit = limit
        self._clock = clock
        self._locks: dict[str, asyncio.Lock] = {}
        self.values = values if values is not None else LeaseValues(state)
        """The passwords held for ``use``-only identities (:mod:`bridge.lease_values`): a record that goes takes
        its held value with it (:meth:`_change`)."""

    @staticmethod
    def name(agent: str) -> str:
        return f"{FOLDER}/{agent}"

    async def read(self, agent: str) -> AgentLeases:
        doc = await self._state.read(self.name(agent))
        return _parse(doc.data if doc is not None else None, self._clock())

    async def find(self, agent: str, lease_id: str) -> LeaseRecord | None:
        return next((r for r in (await self.read(agent)).records if r.lease_id == lease_id), None)

    async def agents(self) -> list[str]:
        """The agents with a lease document (live leases or not)."""
        return await self._state.names(FOLDER)

    async def check_room(self, agent: str) -> None:
        """409 ``lease_limit_reached`` when the agent holds ``LEASE_MAX_PER_AGENT`` live credentials (asked
        before one is obtained; :meth:`add` checks again)."""
        if len((await self.read(agent)).records) >= self.limit:
            raise self._full()

    def _full(self) -> ConflictError:
        return ConflictError(
            f"You hold {self.limit} live credentials already (LEASE_MAX_PER_AGENT): revoke some (lease_revoke, "
            "POST /leases:revoke) or let them expire.", code="lease_limit_reached", extra={"limit": self.limit})

    async def add(self, agent: str, record: LeaseRecord) -> None:
        """Record a credential just obtained (and that the agent was seen now)."""
        full = False

        def add(data: dict[str, Any] | None) -> dict[str, Any] | None:
            nonlocal full
            now = self._clock()
            current = _parse(data, now)
            full = len(current.records) >= self.limit
            if full:
                return data
            return _document((*current.records, record), max(current.last_seen, now))

        await self._change(agent, add)
        if full:
            raise self._full()

    async def renewed(self, agent: str, lease_id: str, expires_at: float) -> None:
        def renew(data: dict[str, Any] | None) -> dict[str, Any] | None:
            current = _parse(data, self._clock())
            if not any(r.lease_id == lease_id for r in current.records):
                return data
            records = [_with_expiry(r, expires_at) if r.lease_id == lease_id else r for r in current.records]
            return _document(records, current.last_seen)

        await self._change(agent, renew)

    async def remove(self, agent: str, lease_ids: Iterable[str]) -> None:
        gone = set(lease_ids)

        def remove(data: dict[str, Any] | None) -> dict[str, Any] | None:
            current = _parse(data, self._clock())
            if not any(r.lease_id in gone for r in current.records):
                return data
            return _document([r for r in current.records if r.lease_id not in gone], current.last_seen)

        await self._change(agent, remove)

    async def drop_revocable(self, agent: str, *, except_token: str | None = None) -> int:
        """Drop the records of every lease (SSH certificates stay: they cannot be revoked), or only of those not
        obtained with the lease token ``except_token`` (they died with their token); how many were live."""
        dropped = 0

        def drop(data: dict[str, Any] | None) -> dict[str, Any] | None:
            nonlocal dropped
            current = _parse(data, self._clock())
            keep = [r for r in current.records if not r.revocable or (except_token and r.token == except_token)]
            dropped = len(current.records) - len(keep)
            if data is None or (not dropped and _count(data) == len(keep)):
                return data
            return _document(keep, current.last_seen)

        await self._change(agent, drop)
        return dropped

    async def seen(self, agent: str, at: float) -> None:
        """Raise the agent's ``last_seen`` to ``at`` (never lowers it: replicas write in any order)."""

        def touch(data: dict[str, Any] | None) -> dict[str, Any] | None:
            if data is None:
                return data
            current = _parse(data, self._clock())
            if current.last_seen >= at:
                return data
            return _document(current.records, at)

        await self._change(agent, touch)

    async def _change(self, agent: str, change: Callable[[dict[str, Any] | None], dict[str, Any] | None]) -> None:
        """Apply ``change`` to the agent's document; then delete the held values of the records it dropped
        (removed, or expired and left out of the new document)."""
        before: tuple[LeaseRecord, ...] = ()

        def tracked(data: dict[str, Any] | None) -> dict[str, Any] | None:
            nonlocal before
            before = _every_record(data)
            return change(data)

        lock = self._locks.setdefault(agent, asyncio.Lock())  # this process's own writers take turns
        try:
            async with lock:
                stored = await self._state.update(self.name(agent), tracked)
        except StateConflictError as exc:
            raise _unavailable(exc) from None
        kept = {r.lease_id for r in _every_record(stored)}
        gone = [r.lease_id for r in before if r.held and r.lease_id is not None and r.lease_id not in kept]
        if gone:
            await self.values.forget(agent, gone)


def _with_expiry(record: LeaseRecord, expires_at: float) -> LeaseRecord:
    return LeaseRecord(record.kind, record.role, record.issued_at, expires_at, record.lease_id, record.renewable,
                       record.token, record.details)


class LeaseKeeper:
    """The agents' lease tokens and lease records together: revoking everything of an agent, and the idle watch
    (see the module docstring)."""

    def __init__(self, tokens: LeaseTokens, book: LeaseBook, *, revoke_on_idle: float | None = None,
                 audit: AuditLog | None = None, clock: Callable[[], float] = time.time) -> None:
        self.tokens = tokens
        self.book = book
        self.revoke_on_idle = revoke_on_idle
        self._audit = audit if audit is not None and audit.enabled else None
        self._clock = clock
        self._seen: dict[str, float] = {}
        self._holders: set[str] = set()
        tokens.on_minted = self._minted

    @property
    def tick(self) -> float:
        idle = self.revoke_on_idle or 0.0
        return min(max(idle / 4, MIN_TICK), MAX_TICK)

    def saw(self, agent: str) -> None:
        """An authenticated request of ``agent`` (cheap: a dict write; flushed to Vault by :meth:`run`)."""
        if self.revoke_on_idle is not None:
            self._seen[agent] = self._clock()

    def holds(self, agent: str) -> None:
        """``agent`` now has a lease document (its ``last_seen`` is worth writing)."""
        self._holders.add(agent)

    async def _minted(self, agent: str, accessor: str) -> None:
        """A new lease token replaced a dead one: the leases of the dead one are gone."""
        with contextlib.suppress(VaultError, VaultUnavailableBridgeError):
            dropped = await self.book.drop_revocable(agent, except_token=accessor)
            if dropped:
                log.info("leases.token_replaced", agent=agent, records_dropped=dropped)

    async def revoke_all(self, agent: str, why: str) -> int:
        """Revoke every lease of ``agent`` (its lease token) and drop their records; how many live leases the
        records held. SSH certificates stay listed until they expire."""
        accessor = await self.tokens.revoke(agent)
        dropped = await self.book.drop_revocable(agent)
        await self.book.values.forget_all(agent)  # whatever a dropped record did not take with it
        log.info("leases.revoked_all", agent=agent, why=why, leases=dropped, token_was_alive=accessor is not None)
        return dropped

    async def run(self) -> None:
        """The idle watch (only with ``LEASE_REVOKE_ON_IDLE``): every tick, flush ``last_seen`` and revoke what
        idle agents hold. Errors are logged and the next tick tries again."""
        idle = self.revoke_on_idle
        if idle is None:
            return
        while True:
            await asyncio.sleep(self.tick)
            try:
                await self._flush()
                await self._sweep(idle)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the watch must outlive a Vault outage
                log.warning("leases.idle_watch_failed", error=type(exc).__name__)

    async def _flush(self) -> None:
        seen, self._seen = self._seen, {}
        for agent, at in seen.items():
            if agent in self._holders:
                await self.book.seen(agent, at)

    async def _sweep(self, idle: float) -> None:
        now = self._clock()
        agents = await self.book.agents()
        self._holders = set(agents)
        for agent in agents:
            held = await self.book.read(agent)
            revocable = [r for r in held.records if r.revocable]
            if not revocable:
                continue
            last = max([held.last_seen, *(r.issued_at for r in held.records), self._seen.get(agent, 0.0)])
            if now - last > idle:
                log.info("leases.idle", agent=agent, idle_seconds=round(now - last, 1))
                revoked = await self.revoke_all(agent, "idle")
                await self._record(agent, revoked, round(now - last, 1))

    async def _record(self, agent: str, revoked: int, idle: float) -> None:
        """The audit record of an idle agent's revocation (no request, no identity: the bridge acted)."""
        if self._audit is None:
            return
        with contextlib.suppress(AuditUnavailableError):  # done already: the audit log logs and counts its failure
            await self._audit.write({"time": now_text(), "type": "audit", "agent": agent, "auth_method": "bridge",
                                     "operation": "lease_revoke_idle", "leases_revoked": revoked,
                                     "idle_seconds": idle, "outcome": "ok"})


def build_leases(vault: VaultClient, bridge_tokens: TokenSource[Any], *, mount: str, prefix: str,
                 policy_prefix: str, role: str, limit: int, revoke_on_idle: float | None,
                 audit: AuditLog | None = None) -> LeaseKeeper:
    """The lease keeper of one app: lease tokens and records in the bridge state of ``mount``/``prefix``."""
    state = BridgeState(vault, bridge_tokens, mount=mount, prefix=prefix)
    tokens = LeaseTokens(vault, bridge_tokens, state, role=role, policy_prefix=policy_prefix)
    return LeaseKeeper(tokens, LeaseBook(state, limit=limit), revoke_on_idle=revoke_on_idle, audit=audit)
