"""The intake flow, without HTTP: make a link, open it, take a submission in and write it once, and say how it went.

``IntakeFlow.request`` makes the link an agent's ``kv_request_input`` returns; ``open`` checks a link when the
human opens it; ``submit`` validates the values, claims the link in the :class:`~bridge.intake.store.IntakeStore`
(single use across replicas), hands the values to the writer callback (which writes them to Vault with the
agent's own token and the link's ``cas``), records the outcome (the new version and the values' fingerprints, or
the failure's code) and writes the audit record ``kv_request_input.submit``. The values exist only in the
submission and in the writer's call: they are never logged, put into an error, kept or audited.

``status`` says what became of a request (``pending``, ``stored``, ``failed``, ``declined``, ``cancelled``,
``expired``), from the store, so any replica can answer it; ``wait`` wakes a waiter of this process as soon as a
submission here settles (other replicas' submissions are seen by polling ``status``). ``decline`` voids a link the
human refused in the agent's MCP client; ``void_agent`` voids every link an agent holds (the quarantine hook).

Writer failures: a retryable one (a :class:`~bridge.errors.BridgeError` with status 429 or 5xx: Vault
unavailable, sealed, timing out) releases the claim, so the human can submit again; any other (409 the secret
changed since the agent asked, 403 the agent lost the right to write ...) leaves the link used, recorded
``failed`` with the error's code.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any, Literal

import structlog

from bridge.audit import AuditLog, clip, now, outcome_of, request_fields
from bridge.errors import BridgeError, IntakeError, IntakeFormError
from bridge.intake.store import IntakeKey, IntakeRecord, IntakeStore
from bridge.intake.token import IntakeCodec, IntakeField, IntakeRef, IntakeTicket

log = structlog.get_logger("bridge.intake")

MAX_VALUE_CHARS = 64 * 1024
SUBMIT_OPERATION = "kv_request_input.submit"
"""The audit record's ``operation`` of a submission (the write the human's values caused)."""
CLAIM_GRACE = 60.0
"""A submission still claimed this long after its link expired was interrupted (a replica stopped mid-write)."""
QUARANTINED = "quarantined"
"""The code of a request voided by :meth:`IntakeFlow.void_agent`."""

LINK_BASE: ContextVar[str] = ContextVar("intake_link_base", default="")
"""The base URL of links made in the current request when ``INTAKE_PUBLIC_URL`` is unset (set per request by
the web layer: ``MCP_RESOURCE_URL`` without its ``/mcp``, else the request's own origin)."""

Status = Literal["pending", "stored", "failed", "declined", "cancelled", "expired"]
TERMINAL: frozenset[str] = frozenset({"stored", "failed", "declined", "cancelled", "expired"})


@dataclass(frozen=True, slots=True)
class IntakeSubmission:
    """What the writer callback gets: the verified link and the values, by field name."""

    ticket: IntakeTicket
    values: dict[str, str] = field(repr=False)


@dataclass(frozen=True, slots=True)
class IntakeStored:
    """What the writer callback returns: the secret's new version and the values' fingerprints (field → keyed
    HMAC; empty when they could not be computed)."""

    version: int
    fingerprints: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class IntakeStatus:
    """What became of an intake request: ``status``; with ``stored`` the ``version`` and ``fingerprints``; with
    ``failed``, ``declined``, ``cancelled`` the ``code`` (the write's error code, ``declined``/``cancelled`` by
    the human in the agent's client, ``quarantined``, ``interrupted``)."""

    status: Status
    version: int | None = None
    fingerprints: dict[str, str] | None = None
    code: str | None = None

    @property
    def terminal(self) -> bool:
        return self.status in TERMINAL


IntakeWriter = Callable[[IntakeSubmission], Awaitable[IntakeStored]]
"""``async def write(submission) -> IntakeStored``: writes ``submission.values`` to the agent's secret
``submission.ticket.path`` with ``cas = submission.ticket.cas``, as that agent; raises bridge errors (409
``cas_mismatch``, 403, 503 ...)."""


class Waiters:
    """This process's waiters for intake requests, woken when one settles here (no polling delay for the common
    case of one replica)."""

    def __init__(self) -> None:
        self._events: dict[str, set[asyncio.Event]] = {}

    @contextlib.contextmanager
    def watch(self, intake_id: str) -> Iterator[asyncio.Event]:
        """An event set whenever the request ``intake_id`` changes (register before reading its status, so no
        change is missed)."""
        event = asyncio.Event()
        self._events.setdefault(intake_id, set()).add(event)
        try:
            yield event
        finally:
            events = self._events.get(intake_id)
            if events is not None:
                events.discard(event)
                if not events:
                    del self._events[intake_id]

    def wake(self, intake_id: str) -> None:
        for event in self._events.get(intake_id, ()):
            event.set()

    def wake_all(self) -> None:
        for events in self._events.values():
            for event in events:
                event.set()

    def __len__(self) -> int:
        return sum(len(events) for events in self._events.values())


def normalise_values(ticket: IntakeTicket, form: Mapping[str, str]) -> dict[str, str]:
    """The values of the ticket's fields from the submitted form (``form[f"f{i}"]`` for field ``i``). Every
    field is required; a single-line field has no line break; text areas' CRLF become LF. Raises
    :class:`IntakeFormError` naming the field (never its value)."""
    values: dict[str, str] = {}
    for index, spec in enumerate(ticket.fields):
        value = form.get(f"f{index}", "")
        if spec.multiline:
            value = value.replace("\r\n", "\n")
        if not value:
            raise IntakeFormError(f"Fill in {spec.name}.", extra={"field": spec.name})
        if len(value) > MAX_VALUE_CHARS:
            raise IntakeFormError(f"{spec.name} is longer than {MAX_VALUE_CHARS} characters.",
                                  extra={"field": spec.name})
        if "\0" in value or (not spec.multiline and ("\n" in value or "\r" in value)):
            raise IntakeFormError(f"{spec.name} has a character that cannot be stored (a NUL, or a line break in a "
                                  "single-line field).", extra={"field": spec.name})
        values[spec.name] = value
    return values


class IntakeFlow:
    """Links (``codec``), their single-use records (``store``), the write (``writer``), and the audit trail
    (``audit``: the app's :class:`~bridge.audit.AuditLog`, ``None`` when auditing is off)."""

    def __init__(self, codec: IntakeCodec, store: IntakeStore, writer: IntakeWriter, *, public_url: str = "",
                 audit: AuditLog | None = None) -> None:
        self.codec = codec
        self.store = store
        self.writer = writer
        self.public_url = public_url.rstrip("/")
        self.audit = audit if audit is not None and audit.enabled else None
        self.waiters = Waiters()

    # -- the agent's side ------------------------------------------------------------------------------------

    def request(self, *, agent: str, path: str, cas: int, fields: Sequence[IntakeField],
                description: str = "") -> IntakeTicket:
        """A new link for ``agent``'s secret ``path`` at version ``cas`` (400 for a request outside limits)."""
        ticket = self.codec.issue(agent=agent, path=path, cas=cas, fields=fields, description=description)
        log.info("intake.requested", agent=agent, path=path, cas=cas, fields=len(ticket.fields),
                 intake_id=ticket.intake_id, expires_at=ticket.expires_at)
        return ticket

    def url(self, ticket: IntakeTicket, base_url: str = "") -> str:
        """The link: ``{base}/intake/<token>`` (``base``: ``INTAKE_PUBLIC_URL``, else the one given, else the
        current request's :data:`LINK_BASE`)."""
        base = (self.public_url or base_url or LINK_BASE.get()).rstrip("/")
        return f"{base}/intake/{ticket.token}"

    async def status(self, key: IntakeKey, expires_at: float) -> IntakeStatus:
        """What became of the request (see :class:`IntakeStatus`); ``expires_at`` is its link's expiry."""
        record = await self.store.lookup(key)
        current = self.codec.now()
        if record is None:
            if await self._voided(key.agent, expires_at):
                return IntakeStatus("cancelled", code=QUARANTINED)
            return IntakeStatus("expired" if current >= expires_at else "pending")
        if record.state == "stored":
            return IntakeStatus("stored", version=record.version, fingerprints=record.fingerprints or {})
        if record.state == "failed":
            return IntakeStatus("failed", code=record.code)
        if record.state == "void":
            return IntakeStatus("declined" if record.code == "declined" else "cancelled", code=record.code)
        if current >= expires_at + CLAIM_GRACE:
            return IntakeStatus("failed", code="interrupted")
        return IntakeStatus("pending")  # claimed: the values are being written

    async def decline(self, key: IntakeKey, code: Literal["declined", "cancelled"]) -> bool:
        """The human refused (``declined``) or dismissed (``cancelled``) the request in the agent's client: void
        the link, unless it was submitted already. Whether it was voided."""
        voided = await self.store.void(key, code, self.codec.now())
        log.info("intake.declined", agent=key.agent, path=key.path, intake_id=key.intake_id, code=code,
                 voided=voided)
        self.waiters.wake(key.intake_id)
        return voided

    async def void_agent(self, agent: str) -> None:
        """Void every intake link ``agent`` holds now (the quarantine hook: call it when the agent is
        quarantined). Its unused links are refused (410 ``intake_cancelled``) on every replica, its requests'
        status becomes ``cancelled`` (code ``quarantined``), and waiting MCP calls end. Links made afterwards are
        not affected. Raises the store's Vault errors."""
        current = self.codec.now()
        await self.store.void_agent(agent, current, current + self.codec.ttl)
        log.warning("intake.agent_voided", agent=agent)
        self.waiters.wake_all()

    # -- the human's side ------------------------------------------------------------------------------------

    async def open(self, token: str) -> tuple[IntakeTicket, IntakeRecord | None]:
        """The link's ticket and record (``None``: unused). Raises :class:`IntakeError` (invalid, expired,
        withdrawn)."""
        ticket = self.codec.verify(token)
        record = await self.store.lookup(ticket)
        log.debug("intake.opened", agent=ticket.agent, path=ticket.path, intake_id=ticket.intake_id,
                  state=record.state if record is not None else None)
        if record is None and await self._voided(ticket.agent, ticket.expires_at):
            raise withdrawn_error()
        return ticket, record

    async def submit(self, token: str, form: Mapping[str, str]) -> tuple[IntakeTicket, IntakeStored]:
        """Validate, claim, write, record, audit. Raises :class:`IntakeError` (invalid, expired, used, withdrawn,
        form), the writer's :class:`BridgeError`, or 503 ``audit_unavailable`` (the values were stored)."""
        ticket = self.codec.verify(token)
        values = normalise_values(ticket, form)
        if await self._voided(ticket.agent, ticket.expires_at):
            log.warning("intake.refused", code="intake_cancelled", agent=ticket.agent, path=ticket.path,
                        intake_id=ticket.intake_id)
            raise withdrawn_error()
        if not await self.store.claim(ticket, self.codec.now()):
            log.warning("intake.refused", code="intake_used", agent=ticket.agent, path=ticket.path,
                        intake_id=ticket.intake_id)
            raise used_error(await self.store.lookup(ticket))
        started = time.perf_counter()
        ids: list[str] = []
        reset = self.audit.vault_ids.set(ids) if self.audit is not None else None
        try:
            stored = await self.writer(IntakeSubmission(ticket, values))
        except BridgeError as exc:
            retry = exc.status >= 500 or exc.status == 429
            if retry:
                await self.store.release(ticket)
            else:
                await self.store.fail(ticket, exc.code)
            self.waiters.wake(ticket.intake_id)
            log.warning("intake.write_failed", agent=ticket.agent, path=ticket.path, intake_id=ticket.intake_id,
                        code=exc.code, status=exc.status, released=retry)
            await self._audit(ticket, started, ids, {"outcome": outcome_of(exc.status), "code": exc.code,
                                                     "status": exc.status}, strict=False)
            raise
        except BaseException:
            await self.store.release(ticket)
            raise
        finally:
            if reset is not None and self.audit is not None:
                self.audit.vault_ids.reset(reset)
        await self.store.finish(ticket, stored.version, stored.fingerprints)
        self.waiters.wake(ticket.intake_id)
        log.info("intake.stored", agent=ticket.agent, path=ticket.path, version=stored.version,
                 intake_id=ticket.intake_id)
        await self._audit(ticket, started, ids, {"outcome": "ok", "version": stored.version}, strict=True)
        return ticket, stored

    async def _voided(self, agent: str, expires_at: float) -> bool:
        void = await self.store.agent_void(agent)
        return void is not None and void.voids(expires_at, self.codec.ttl)

    async def _audit(self, ticket: IntakeTicket, started: float, ids: list[str], outcome: dict[str, Any], *,
                     strict: bool) -> None:
        """The submission's audit record: who (the agent), which secret, which fields, the outcome; never a value.
        ``strict``: an unwritable record is 503 ``audit_unavailable`` (fail closed, as every operation's)."""
        if self.audit is None:
            return
        entry: dict[str, Any] = {
            "time": now(), "type": "audit", **request_fields(), "agent": ticket.agent, "auth_method": "intake",
            "operation": SUBMIT_OPERATION, "path": clip(ticket.path), "cas": ticket.cas,
            "fields": [clip(f.name) for f in ticket.fields], "intake_id": ticket.intake_id, **outcome,
            "vault_request_id": ids[-1] if ids else None,
            "duration_ms": round((time.perf_counter() - started) * 1000, 2)}
        if strict:
            await self.audit.write(entry)
            return
        with contextlib.suppress(BridgeError):  # the write's own error stands; the audit log counts its failure
            await self.audit.write(entry)

    # -- housekeeping -----------------------------------------------------------------------------------------

    async def purge(self) -> int:
        """Delete the records of expired links (and of agent voids that no longer matter)."""
        return await self.store.purge(self.codec.now())

    async def run_purge(self, interval: float) -> None:
        """:meth:`purge` every ``interval`` seconds, for ever (a background task of the app; a failed round is
        logged and the next one tries again)."""
        while True:
            await asyncio.sleep(interval)
            try:
                purged = await self.purge()
            except BridgeError as exc:
                log.warning("intake.purge_failed", code=exc.code)
                continue
            if purged:
                log.info("intake.purged", records=purged)

    def ref_id(self, ticket: IntakeTicket) -> str:
        return self.codec.ref_id(ticket)

    def read_ref(self, value: str, agent: str) -> IntakeRef | None:
        return self.codec.read_ref(value, agent)


def used_error(record: IntakeRecord | None) -> IntakeError:
    if record is not None and record.state == "stored":
        message = f"This link was used already: the values were stored (version {record.version})."
    elif record is not None and record.state == "void":
        return withdrawn_error(record.code)
    elif record is not None and record.state == "failed":
        message = "This link was used already, and the values could not be stored. Ask the agent for a new link."
    else:
        message = "This link was used already. If that was not you, tell whoever runs the agent."
    return IntakeError(message, code="intake_used", status=410)


def withdrawn_error(code: str | None = QUARANTINED) -> IntakeError:
    reason = {"declined": "it was declined in the agent's client",
              "cancelled": "it was cancelled in the agent's client"}.get(code or "", "the agent's access was suspended")
    return IntakeError(f"This request was withdrawn ({reason}); nothing can be stored with this link.",
                       code="intake_cancelled", status=410)


__all__ = ["CLAIM_GRACE", "LINK_BASE", "QUARANTINED", "SUBMIT_OPERATION", "TERMINAL", "IntakeFlow", "IntakeStatus",
           "IntakeStored", "IntakeSubmission", "IntakeWriter", "Status", "Waiters", "normalise_values", "used_error",
           "withdrawn_error"]
