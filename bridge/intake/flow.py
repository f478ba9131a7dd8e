"""The intake flow, without HTTP: make a link, open it, take a submission in and write it once.

``IntakeFlow.request`` makes the link an agent's ``kv_request_input`` returns; ``open`` checks a link when the
human opens it; ``submit`` validates the values, claims the link in the :class:`~bridge.intake.store.IntakeStore`
(single use across replicas), hands the values to the writer callback (which writes them to Vault with the
agent's own token and the link's ``cas``) and records the outcome. The values exist only in the submission and
in the writer's call: they are never logged, put into an error, or kept.

Writer failures: a retryable one (a :class:`~bridge.errors.BridgeError` with status 429 or 5xx: Vault
unavailable, sealed, timing out) releases the claim, so the human can submit again; any other (409 the secret
changed since the agent asked, 403 the agent lost the right to write ...) leaves the link used.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field

import structlog

from bridge.errors import BridgeError, IntakeError, IntakeFormError
from bridge.intake.store import IntakeRecord, IntakeStore
from bridge.intake.token import IntakeCodec, IntakeField, IntakeTicket

log = structlog.get_logger("bridge.intake")

MAX_VALUE_CHARS = 64 * 1024


@dataclass(frozen=True, slots=True)
class IntakeSubmission:
    """What the writer callback gets: the verified link and the values, by field name."""

    ticket: IntakeTicket
    values: dict[str, str] = field(repr=False)


@dataclass(frozen=True, slots=True)
class IntakeStored:
    """What the writer callback returns: the secret's new version."""

    version: int


IntakeWriter = Callable[[IntakeSubmission], Awaitable[IntakeStored]]
"""``async def write(submission) -> IntakeStored``: writes ``submission.values`` to the agent's secret
``submission.ticket.path`` with ``cas = submission.ticket.cas``, as that agent; raises bridge errors (409
``cas_mismatch``, 403, 503 ...). It may also notify the agent (MCP ``notifications/elicitation/complete``)."""


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
    """Links (``codec``), their single-use records (``store``), and the write (``writer``)."""

    def __init__(self, codec: IntakeCodec, store: IntakeStore, writer: IntakeWriter, *, public_url: str = "") -> None:
        self.codec = codec
        self.store = store
        self.writer = writer
        self.public_url = public_url.rstrip("/")

    def request(self, *, agent: str, path: str, cas: int, fields: Sequence[IntakeField],
                description: str = "") -> IntakeTicket:
        """A new link for ``agent``'s secret ``path`` at version ``cas`` (400 for a request outside limits)."""
        ticket = self.codec.issue(agent=agent, path=path, cas=cas, fields=fields, description=description)
        log.info("intake.requested", agent=agent, path=path, cas=cas, fields=len(ticket.fields),
                 intake_id=ticket.intake_id, expires_at=ticket.expires_at)
        return ticket

    def url(self, ticket: IntakeTicket, base_url: str = "") -> str:
        """The link: ``{base}/intake/<token>`` (``base``: ``INTAKE_PUBLIC_URL``, else the one given)."""
        base = (self.public_url or base_url).rstrip("/")
        return f"{base}/intake/{ticket.token}"

    async def open(self, token: str) -> tuple[IntakeTicket, IntakeRecord | None]:
        """The link's ticket and record (``None``: unused). Raises :class:`IntakeError` (invalid, expired)."""
        ticket = self.codec.verify(token)
        return ticket, await self.store.lookup(ticket)

    async def submit(self, token: str, form: Mapping[str, str]) -> tuple[IntakeTicket, IntakeStored]:
        """Validate, claim, write, record. Raises :class:`IntakeError` (invalid, expired, used, form) or the
        writer's :class:`BridgeError`."""
        ticket = self.codec.verify(token)
        values = normalise_values(ticket, form)
        if not await self.store.claim(ticket, self.codec.now()):
            log.warning("intake.refused", code="intake_used", agent=ticket.agent, path=ticket.path,
                        intake_id=ticket.intake_id)
            raise used_error(await self.store.lookup(ticket))
        try:
            stored = await self.writer(IntakeSubmission(ticket, values))
        except BridgeError as exc:
            retry = exc.status >= 500 or exc.status == 429
            if retry:
                await self.store.release(ticket)
            log.warning("intake.write_failed", agent=ticket.agent, path=ticket.path, intake_id=ticket.intake_id,
                        code=exc.code, status=exc.status, released=retry)
            raise
        except BaseException:
            await self.store.release(ticket)
            raise
        await self.store.finish(ticket, stored.version)
        log.info("intake.stored", agent=ticket.agent, path=ticket.path, version=stored.version,
                 intake_id=ticket.intake_id)
        return ticket, stored


def used_error(record: IntakeRecord | None) -> IntakeError:
    if record is not None and record.state == "stored":
        message = f"This link was used already: the values were stored (version {record.version})."
    else:
        message = "This link was used already. If that was not you, tell whoever runs the agent."
    return IntakeError(message, code="intake_used", status=410)


__all__ = ["IntakeFlow", "IntakeStored", "IntakeSubmission", "IntakeWriter", "normalise_values",
           "used_error"]
