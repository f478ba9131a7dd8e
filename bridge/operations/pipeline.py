"""The one place an operation is carried out: :class:`Executor`.

Every transport (REST, MCP, later stdio) hands an operation, the caller (:class:`Call`) and the operation's raw
arguments to :meth:`Executor.execute`, which in this order:

1. refuses a caller the ``admit`` hook refuses (a quarantined agent: 403 ``agent_quarantined``, whatever the
   transport), then checks the scope (any one of the operation's scopes; and its ``available`` hook): a refusal
   is 403 (``insufficient_scope`` on MCP, ``forbidden`` elsewhere), naming the scopes;
2. reads the arguments (a mapping, or an awaitable that reads them: REST reads the body only now, after the
   scope check) and validates them with the input model (400 ``invalid_request``);
3. asks the operation's cost and charges what the transport has not charged yet against the agent's rate-limit
   bucket (``billing.charge``: 400 ``batch_too_large``, 429 ``rate_limited``);
4. runs the service method;
5. writes the audit record (ok, or the error's code: ``denied`` for a refusal; the allow-listed input fields and
   the operation's ``audit_details``) and reports the outcome to the observer (metrics);
6. after a success, reports the resource the operation changed (``Operation.changes``) to ``on_change``: the one
   place change notifications start from.

:meth:`Executor.allows` (what ``tools/list`` and ``GET /whoami`` show) adds the agent's Vault capabilities
(``Operation.needs``, asked of Vault by :class:`~bridge.service.capabilities.CapabilityCache`) to the scope; a call
is not refused for them (Vault refuses what its policy does not grant).

It knows nothing of aiohttp; the transports render its result or its :class:`~bridge.errors.BridgeError`. An
exception raised while the arguments are read that is not a ``BridgeError`` (a protocol error of the transport, a
dropped connection) is no outcome of the operation and passes through unrecorded. Everything per operation (the
bound service methods, the audit fields) is prepared once, at construction.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

import structlog
from pydantic import BaseModel, RootModel

from bridge.audit import AuditLog, AuditUnavailableError, clip, now, outcome_of, request_fields
from bridge.auth.identity import Identity
from bridge.billing import charge
from bridge.errors import BridgeError, ForbiddenError
from bridge.models import parse
from bridge.operations.spec import AnyOperation, Changes, Registry
from bridge.ratelimit import Decision, RateLimiter
from bridge.service.capabilities import CapabilityCache

log = structlog.get_logger("bridge.operations")

Arguments = Mapping[str, Any] | Callable[[], Awaitable[Mapping[str, Any]]]
"""An operation's raw arguments, or how to read them once the scope is checked."""
Observer = Callable[[str, str, str], None]
"""``(operation, transport, outcome)``: ``ok`` or the error code, once per executed operation."""
ChangeSink = Callable[[str, str, str], Awaitable[None]]
"""``(agent, kind, name)``: a successful operation changed the agent's ``kind`` (``kv``/``transit``) resource
``name``; awaited after the audit record, its failure logged, never the operation's."""

_NO_IDS: list[str] = []
"""Never filled (no audit, no Vault request ids kept)."""
_MAX_ITEMS = 100
"""The most items of a list field kept in a record (a refused request's raw list may be longer)."""
_RESULT_VERSION = ("version", "key_version", "current_version")
"""Output fields recorded as the audit record's ``version`` when the input did not name one."""


@dataclass(slots=True)
class Call:
    """Who calls, and how: ``transport`` is ``rest`` or ``mcp``; ``prepaid`` the rate-limit tokens the transport
    charged already (the middleware's 1); ``decision`` the latest rate-limit decision (the executor replaces it
    when it charges more), whose headers the transport puts on its answer."""

    identity: Identity
    transport: str
    prepaid: int = 0
    decision: Decision | None = None


@dataclass(frozen=True, slots=True)
class _Bound:
    """An operation with its service methods bound to the app's instances, and what its audit record needs."""

    op: AnyOperation
    run: Callable[[Identity, Any], Awaitable[BaseModel]]
    cost: Callable[[Any], int] | None
    available: Callable[[Identity], Awaitable[bool]] | None
    audit: tuple[str, ...]


def _bind(op: AnyOperation, services: Mapping[type[Any], Any]) -> _Bound:
    service = services.get(op.service)
    if service is None:
        raise ValueError(f"{op.name}: no {op.service.__name__} among the services")
    return _Bound(op, op.run.__get__(service), op.cost.__get__(service) if op.cost is not None else None,
                  op.available.__get__(service) if op.available is not None else None, op.audit)


def _result_version(out: BaseModel) -> int | None:
    """The output's ``version`` (or ``key_version``, ``current_version``); a union output (``RootModel``) is
    looked into."""
    target = out.root if isinstance(out, RootModel) else out
    for name in _RESULT_VERSION:
        value = getattr(target, name, None)
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    return None


class Executor:
    """Carries out the operations of ``registry`` with ``services`` (class → instance); writes to ``audit``,
    charges with ``limiter`` (``None``: rate limiting off), reports to ``observe``."""

    def __init__(self, registry: Registry, services: Mapping[type[Any], Any], *, audit: AuditLog | None = None,
                 limiter: RateLimiter | None = None, observe: Observer | None = None,
                 capabilities: CapabilityCache | None = None, on_change: ChangeSink | None = None,
                 admit: Callable[[Identity], None] | None = None) -> None:
        self.registry = registry
        self._admit = admit  # raises to refuse the caller outright (a quarantined agent), before anything else
        self._bound = {op.name: _bind(op, services) for op in registry}
        self._audit = audit if audit is not None and audit.enabled else None
        self._limiter = limiter
        self._observe = observe
        self._capabilities = capabilities
        self._on_change = on_change
        if capabilities is not None:
            capabilities.register(need for op in registry for need in op.needs)

    async def allows(self, op: AnyOperation, identity: Identity) -> bool:
        """Whether ``identity`` may call ``op`` at all: its scope, the operation's ``available`` hook and the
        Vault capabilities it needs (what ``tools/list`` and ``GET /whoami`` show)."""
        if not op.allowed(identity):
            return False
        available = self._bound[op.name].available
        if available is not None and not await available(identity):
            return False
        return self._capabilities is None or await self._capabilities.grants(identity, op.needs)

    async def usable(self, identity: Identity) -> list[AnyOperation]:
        """The operations open to ``identity`` (:meth:`allows`), in registry order."""
        return [op for op in self.registry if await self.allows(op, identity)]

    async def usable_names(self, identity: Identity) -> list[str]:
        """The names of the operations open to ``identity`` that a client can call (a REST route or a tool)."""
        return [op.name for op in await self.usable(identity) if op.rest is not None or op.mcp]

    async def execute(self, op: AnyOperation, call: Call, arguments: Arguments) -> BaseModel:
        bound = self._bound[op.name]
        identity = call.identity
        audit = self._audit
        started = time.perf_counter()
        ids: list[str] = [] if audit is not None else _NO_IDS  # Vault's request ids, for the audit record
        try:
            if self._admit is not None:
                self._admit(identity)
            if not op.allowed(identity):
                raise scope_error(op, call)
            if bound.available is not None and not await bound.available(identity):
                raise ForbiddenError(f"The operation '{op.name}' is not available to this identity.")
            if not isinstance(arguments, Mapping):
                arguments = await arguments()  # read only now: after the scope check
        except BridgeError as exc:
            await self._failed(bound, call, None, arguments, exc, started, ids)
            raise
        args: Any = None
        reset = audit.vault_ids.set(ids) if audit is not None else None
        try:
            args = parse(op.input, arguments)
            cost = bound.cost(args) if bound.cost is not None else 1
            if self._limiter is not None and cost > call.prepaid:
                call.decision = await charge(self._limiter, identity, cost, call.prepaid)
            out = await bound.run(identity, args)
        except BaseException as exc:
            await self._failed(bound, call, args, arguments, exc, started, ids)
            raise
        finally:
            if reset is not None and audit is not None:
                audit.vault_ids.reset(reset)
        if self._observe is not None:
            self._observe(op.name, call.transport, "ok")
        if audit is not None:
            entry = self._entry(bound, identity, args, None, out)
            if "version" not in entry and (version := _result_version(out)) is not None:
                entry["version"] = version
            entry.update(outcome="ok", vault_request_id=ids[-1] if ids else None,
                         duration_ms=round((time.perf_counter() - started) * 1000, 2))
            await audit.write(entry)  # fail closed: 503 audit_unavailable
        if op.changes is not None and self._on_change is not None:
            await _report_change(self._on_change, op, op.changes, identity, args)
        return out

    async def _failed(self, bound: _Bound, call: Call, args: Any, arguments: Arguments, exc: BaseException,
                      started: float, ids: list[str]) -> None:
        """Record a refused or failed operation (an audit failure leaves the original error standing)."""
        if isinstance(exc, BridgeError):
            exc.audited = True
            code, status = exc.code, exc.status
        elif isinstance(exc, asyncio.CancelledError):
            code, status = "cancelled", 499
        else:
            code, status = "internal_error", 500
        if self._observe is not None:
            self._observe(bound.op.name, call.transport, code)
        if self._audit is None:
            return
        raw = arguments if args is None and isinstance(arguments, Mapping) else None  # refused before validation
        entry = self._entry(bound, call.identity, args, raw, None)
        entry.update(outcome=outcome_of(status) if isinstance(exc, BridgeError) else "error", code=code,
                     status=status, vault_request_id=ids[-1] if ids else None,
                     duration_ms=round((time.perf_counter() - started) * 1000, 2))
        with contextlib.suppress(AuditUnavailableError):  # logged and counted by the audit log
            await self._audit.write(entry)

    @staticmethod
    def _entry(bound: _Bound, identity: Identity, args: Any, raw: Mapping[str, Any] | None,
               out: BaseModel | None) -> dict[str, Any]:
        """The record's head and the operation's allow-listed fields: from the validated input, or from the raw
        arguments of a call refused before they were validated (only strings, integers and lists of them); then
        the operation's ``audit_details`` of the validated input (and output), the same kinds of values."""
        entry: dict[str, Any] = {"time": now(), "type": "audit", **request_fields(), "agent": identity.subject,
                                 "auth_method": identity.auth_method, "operation": bound.op.name}
        for name in bound.audit:
            value = getattr(args, name, None) if args is not None else (raw or {}).get(name)
            if isinstance(value, str):
                entry[name] = clip(value)
            elif isinstance(value, int) and not isinstance(value, bool):
                entry[name] = value
            elif isinstance(value, list) and all(isinstance(v, int) and not isinstance(v, bool) for v in value):
                entry[name] = value[:_MAX_ITEMS]
        details = bound.op.audit_details
        if details is not None and args is not None:
            for name, value in details(args, out).items():
                if name not in entry and (kept := _audit_value(value)) is not None:
                    entry[name] = kept
        return entry


def _audit_value(value: Any) -> Any:
    """A detail as recorded: strings clipped, integers and booleans, lists of those (at most ``_MAX_ITEMS``)."""
    if isinstance(value, str):
        return clip(value)
    if isinstance(value, bool | int):
        return value
    if isinstance(value, list | tuple):
        return [clip(v) if isinstance(v, str) else v for v in value[:_MAX_ITEMS] if isinstance(v, str | int)]
    return None


def scope_phrase(scopes: tuple[str, ...]) -> str:
    """``the 'write' scope`` / ``the 'use' or 'read' scope``."""
    return "the " + " or ".join(f"'{scope}'" for scope in scopes) + " scope"
async def _report_change(sink: ChangeSink, op: AnyOperation, changes: Changes, identity: Identity, args: Any) -> None:
    name = getattr(args, changes.field, None)
    if not isinstance(name, str) or not name:
        return
    try:
        await sink(identity.subject, changes.kind, name)
    except Exception:  # the operation succeeded: a lost notification is logged, never the caller's error
        log.exception("operation.change_not_reported", operation=op.name, agent=identity.subject)


def scope_error(op: AnyOperation, call: Call) -> ForbiddenError:
    """The refusal of an operation outside the caller's scopes; on MCP it is ``insufficient_scope`` (the
    transport adds the ``WWW-Authenticate`` challenge). ``required_scope`` is the least privileged scope that
    allows it (the first declared); ``accepted_scopes`` lists every one when any of several will do."""
    scopes = op.scopes
    have = ", ".join(sorted(call.identity.scopes)) or "none"
    extra: dict[str, Any] = {"required_scope": scopes[0]}
    if len(scopes) > 1:
        extra["accepted_scopes"] = list(scopes)
    hint = f" {op.scope_hint}" if op.scope_hint else ""
    if call.transport == "mcp":
        return ForbiddenError(f"The tool '{op.name}' needs {scope_phrase(scopes)}; this identity has: {have}.{hint}",
                              code="insufficient_scope", extra=extra)
    return ForbiddenError(f"This operation needs {scope_phrase(scopes)}; this identity has: {have}.{hint}",
                          extra=extra)
