"""Taking a secret in without the model seeing it: ``kv_request_input`` and ``kv_request_input_status``, the
Vault-backed single-use records, and the writer behind the human's form.

- :meth:`IntakeService.request` (``kv_request_input``, scope ``write``): reads the secret's current version with
  the agent's token (0 when it does not exist) and makes a one-time link bound to the agent, the path and that
  version (:mod:`bridge.intake.token`), valid for ``INTAKE_TTL``. Its answer: the link, the ``elicitation_id`` (a
  reference to the request, not the link) and the expected version. The MCP endpoint hands the link to a client
  that supports URL-mode elicitation instead of the model (:mod:`bridge.mcp.elicitation`).
- :meth:`IntakeService.status` (``kv_request_input_status``, scope ``write``): what became of a request, from its
  record: ``{stored, version, fingerprints}`` once stored. Any replica answers it.
- :meth:`IntakeService.write` (the :data:`~bridge.intake.flow.IntakeWriter` of the form): writes the submitted
  values with the **agent's** token (its child token with ``CHILD_TOKEN_ENABLED``) and ``cas`` = the bound
  version: a new secret (expected version 0) is written with ``cas: 0``; an existing one is merge-patched with
  ``cas: N``, so its other keys stay. Then it fingerprints the values (:mod:`bridge.service.fingerprint`). The
  flow records the outcome and writes the audit record ``kv_request_input.submit``; nothing of this runs through
  the executor (the human is no agent identity), and no value is logged, audited or answered.
- :class:`VaultIntakeStore`: :class:`~bridge.intake.store.IntakeStore` on KV v2 in the bridge's state subtree
  ``{KV_MOUNT}/data/{DEFAULT_PREFIX}/_bridge/intake/`` with the bridge's own token (the facts it relies on are in
  bridge/intake/store.py). Vault errors become bridge errors (the form shows "try again" for 503).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC, datetime
from typing import Any, TypeVar

import structlog

from bridge.auth.identity import Identity
from bridge.errors import BridgeError, ConflictError, NotFoundError, from_vault_error
from bridge.intake.flow import IntakeFlow, IntakeStored, IntakeSubmission
from bridge.intake.store import (
    AGENT_DIR,
    RECORD_DIR,
    AgentVoid,
    IntakeKey,
    IntakeRecord,
    agent_record_path,
    expired_record,
    record_path,
)
from bridge.intake.token import IntakeCodec, IntakeField, IntakeRef
from bridge.models import IntakeFieldSpec, IntakeOut, IntakeRequestArgs, IntakeStatusArgs
from bridge.paths import agent_path, validate_path
from bridge.service.access import VaultAccess
from bridge.service.secrets import SecretValues
from bridge.vault.errors import VaultError, VaultNotFoundError
from bridge.vault.models import KvMetadata, KvVersion

log = structlog.get_logger("bridge.intake")

T = TypeVar("T")
AUTH_METHOD = "intake"
"""How the writer's Vault calls are labelled (the child token's ``auth_method`` metadata, the audit record)."""


def iso(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, UTC).isoformat().replace("+00:00", "Z")


class VaultIntakeStore:
    """:class:`~bridge.intake.store.IntakeStore` on KV v2, with the bridge's own token."""

    def __init__(self, access: VaultAccess) -> None:
        self._access = access
        self._kv = access.vault.kv
        self._mount = access.settings.kv_mount
        self._prefix = access.settings.default_prefix

    async def _bridge(self, fn: Callable[[str], Awaitable[T]]) -> T:
        try:
            return await self._access.as_bridge(fn)
        except VaultError as exc:
            raise from_vault_error(exc, what="the intake record") from None

    async def _create(self, key: IntakeKey, record: IntakeRecord) -> bool:
        path = record_path(self._prefix, key)
        return await self._bridge(lambda token: self._kv.create(self._mount, path, record.to_data(),
                                                                token=token)) is not None

    async def _update(self, key: IntakeKey, **changes: Any) -> None:
        record = await self.lookup(key)
        if record is None or record.state != "claimed":
            return
        data = {**record.to_data(), **changes}
        path = record_path(self._prefix, key)
        await self._bridge(lambda token: self._kv.write(self._mount, path, data, cas=1, token=token))

    async def claim(self, key: IntakeKey, now: float) -> bool:
        return await self._create(key, IntakeRecord("claimed", key.agent, key.path, now))

    async def void(self, key: IntakeKey, code: str, now: float) -> bool:
        return await self._create(key, IntakeRecord("void", key.agent, key.path, now, code=code))

    async def finish(self, key: IntakeKey, version: int, fingerprints: Mapping[str, str] | None = None) -> None:
        changes: dict[str, Any] = {"state": "stored", "version": version}
        if fingerprints is not None:
            changes["fingerprints"] = dict(fingerprints)
        await self._update(key, **changes)

    async def fail(self, key: IntakeKey, code: str) -> None:
        await self._update(key, state="failed", code=code)

    async def release(self, key: IntakeKey) -> None:
        await self._delete(record_path(self._prefix, key))

    async def _delete(self, path: str) -> None:
        await self._bridge(lambda token: self._kv.delete_metadata(self._mount, path, token=token))

    async def lookup(self, key: IntakeKey) -> IntakeRecord | None:
        data = await self._read(record_path(self._prefix, key))
        return IntakeRecord.from_data(data) if data is not None else None

    async def void_agent(self, agent: str, now: float, until: float) -> None:
        path = agent_record_path(self._prefix, agent)
        await self._bridge(lambda token: self._kv.write(self._mount, path, {"voided_at": now, "until": until},
                                                        token=token))

    async def agent_void(self, agent: str) -> AgentVoid | None:
        data = await self._read(agent_record_path(self._prefix, agent))
        if data is None:
            return None
        try:
            return AgentVoid(float(data["voided_at"]), float(data["until"]))
        except (KeyError, TypeError, ValueError):
            return AgentVoid(float("inf"), float("inf"))  # unreadable: fail closed (every link of the agent is void)

    async def purge(self, now: float) -> int:
        base = f"{self._prefix}/{RECORD_DIR}"
        names = await self._bridge(lambda token: self._kv.list(self._mount, base, token=token))
        gone = [name for name in names if expired_record(name, now)]
        for name in gone:
            await self._delete(f"{base}/{name}")
        agents_dir = f"{self._prefix}/{AGENT_DIR}"
        agents = [name for name in await self._bridge(lambda token: self._kv.list(self._mount, agents_dir,
                                                                                 token=token))
                  if not name.endswith("/")]
        voids = 0
        for agent in agents:
            void = await self.agent_void(agent)
            if void is not None and void.until < now:
                await self._delete(agent_record_path(self._prefix, agent))
                voids += 1
        return len(gone) + voids

    async def _read(self, path: str) -> dict[str, Any] | None:
        async def go(token: str) -> dict[str, Any] | None:
            try:
                return (await self._kv.read(self._mount, path, token=token)).data
            except VaultNotFoundError:
                return None

        return await self._bridge(go)


def _field(spec: str | IntakeFieldSpec) -> IntakeField:
    if isinstance(spec, str):
        return IntakeField(spec)
    return IntakeField(spec.name, spec.multiline, spec.label or "", spec.description or "")


class IntakeService:
    """``kv_request_input`` and ``kv_request_input_status``; owns the app's :class:`IntakeFlow` (``flow``: the
    pages' too, and the quarantine hook ``flow.void_agent``)."""

    def __init__(self, access: VaultAccess) -> None:
        settings = access.settings
        self._access = access
        self._vault = access.vault
        self._mount = settings.kv_mount
        self._prefix = settings.default_prefix
        self._values = SecretValues(access)  # fingerprints of what a human stored
        self.on_change: Callable[[str, str, str], Awaitable[None]] | None = None
        """``on_change(agent, "kv", path)`` after a human's values were stored (the MCP change notifications)."""
        self.flow = IntakeFlow(IntakeCodec.from_settings(settings), VaultIntakeStore(access), self.write,
                               public_url=settings.intake_public_url)

    async def request(self, identity: Identity, args: IntakeRequestArgs) -> IntakeOut:
        path = validate_path(args.path)
        fields = [_field(spec) for spec in args.fields]
        full = self._access.kv_path(identity, path)

        async def go(token: str) -> KvMetadata:
            return await self._vault.kv.metadata(self._mount, full, token=token)

        try:
            cas = (await self._access.call(identity, "the metadata read", go)).current_version
        except NotFoundError:
            cas = 0
        ticket = self.flow.request(agent=identity.subject, path=path, cas=cas, fields=fields,
                                   description=args.description)
        return IntakeOut(path=path, status="pending", stored=False, url=self.flow.url(ticket),
                         elicitation_id=self.flow.ref_id(ticket), expected_version=cas,
                         expires_at=iso(ticket.expires_at))

    async def status(self, identity: Identity, args: IntakeStatusArgs) -> IntakeOut:
        path = validate_path(args.path)
        ref = self.flow.read_ref(args.id, identity.subject)
        if ref is None or ref.path != path:
            raise NotFoundError(f"No intake request with that id for '{path}' (ids come from kv_request_input, "
                                "for the same path and agent).", code="intake_not_found")
        return await self.outcome(ref)

    async def outcome(self, ref: IntakeRef) -> IntakeOut:
        """What became of the request ``ref`` (no audit record: the MCP endpoint's waiter asks this too)."""
        status = await self.flow.status(ref, ref.expires_at)
        return IntakeOut(path=ref.path, status=status.status, stored=status.status == "stored",
                         version=status.version, fingerprints=status.fingerprints, code=status.code,
                         expires_at=iso(ref.expires_at) if status.status == "pending" else None)

    async def write(self, submission: IntakeSubmission) -> IntakeStored:
        """The human's values into the agent's secret (see the module docstring)."""
        ticket = submission.ticket
        full = agent_path(self._prefix, ticket.agent, ticket.path)
        values: dict[str, Any] = dict(submission.values)

        async def go(token: str) -> KvVersion:
            if ticket.cas == 0:
                return await self._vault.kv.write(self._mount, full, values, cas=0, token=token)
            return await self._vault.kv.patch(self._mount, full, values, cas=ticket.cas, token=token)

        try:
            meta = await self._access.call_for(ticket.agent, AUTH_METHOD, "the write", go)
        except ConflictError:
            raise ConflictError("The secret was changed since the agent asked for the values; nothing was stored.",
                                extra={"expected_version": ticket.cas}) from None
        except NotFoundError:
            raise NotFoundError("The secret's latest version was deleted since the agent asked for the values; "
                                "nothing was stored.") from None
        if self.on_change is not None:
            await self.on_change(ticket.agent, "kv", ticket.path)  # never raises (ChangeHub.changed logs)
        try:
            names = list(submission.values)
            prints = dict(zip(names, await self._values.fingerprints([submission.values[n] for n in names]),
                              strict=True))
        except BridgeError as exc:
            log.warning("intake.fingerprint_failed", agent=ticket.agent, path=ticket.path, code=exc.code)
            prints = {}
        return IntakeStored(meta.version, prints)


__all__ = ["AUTH_METHOD", "IntakeService", "VaultIntakeStore"]
