"""The one place an operation is carried out: :class:`Executor`.

Every transport (REST, MCP, later stdio) hands an operation, the caller (:class:`Call`) and the operation's raw
arguments to :meth:`Executor.execute`, which in this order:

1. refuses a caller the ``admit`` hook refuses (a quarantined agent: 403 ``agent_quarantined``, whatever the
   transport), then checks the scope (and the operation's ``available`` hook): a refusal is 403
   (``insufficient_scope`` on MCP, ``forbidden`` elsewhere);
2. reads the arguments (a mapping, or an awaitable that reads them: REST reads the body only now, after the
   scope check) and validates them with the input model (400 ``invalid_request``);
3. asks the operation's cost and charges what the transport has not charged yet against the agent's rate-limit
   bucket (``billing.charge``: 400 ``batch_too_large``, 429 ``rate_limited``);
4. runs the service method;
5. writes the audit record (ok, or the error's code: ``denied`` for a refusal) and reports the outcome to the
   observer (metrics).

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

from pydantic import BaseModel

from bridge.audit import AuditLog, AuditUnavailableError, clip, now, outcome_of, request_fields
from bridge.auth.identity import Identity
from bridge.billing import charge
from bridge.errors import BridgeError, ForbiddenError
from bridge.models import parse
from bridge.operations.spec import AnyOperation, Registry
from bridge.ratelimit import Decision, RateLimiter

Arguments = Mapping[str, Any] | Callable[[], Awaitable[Mapping[str, Any]]]
"""An operation's raw arguments, or how to read them once the scope is checked."""
Observer = Callable[[str, str, str], None]
"""``(operation, transport, outcome)``: ``ok`` or the error code, once per executed operation."""

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
    result_version: str | None


def _bind(op: AnyOperation, services: Mapping[type[Any], Any]) -> _Bound:
    service = services.get(op.service)
    if service is None:
        raise ValueError(f"{op.name}: no {op.service.__name__} among the services")
    version = next((name for name in _RESULT_VERSION if name in op.output.model_fields), None)
    return _Bound(op, op.run.__get__(service), op.cost.__get__(service) if op.cost is not None else None,
                  op.available.__get__(service) if op.available is not None else None, op.audit, version)


class Executor:
    """Carries out the operations of ``registry`` with ``services`` (class → instance); writes to ``audit``,
    charges with ``limiter`` (``None``: rate limiting off), reports to ``observe``."""

    def __init__(self, registry: Registry, services: Mapping[type[Any], Any], *, audit: AuditLog | None = None,
                 limiter: RateLimiter | None = None, observe: Observer | None = None,
                 admit: Callable[[Identity], None] | None = None) -> None:
        self.registry = registry
        self._admit = admit  # raises to refuse the caller outright (a quarantined agent), before anything else
        self._bound = {op.name: _bind(op, services) for op in registry}
        self._audit = audit if audit is not None and audit.enabled else None
        self._limiter = limiter
        self._observe = observe

    async def allows(self, op: AnyOperation, identity: Identity) -> bool:
        """Whether ``identity`` may call ``op`` at all: its scope, and the operation's ``available`` hook (what
        ``tools/list`` shows)."""
        if not op.allowed(identity):
            return False
        available = self._bound[op.name].available
        return available is None or await available(identity)

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
                raise _scope_error(op, call)
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
            entry = self._entry(bound, identity, args, None)
            if bound.result_version is not None and "version" not in entry:
                value = getattr(out, bound.result_version)
                if isinstance(value, int):
                    entry["version"] = value
            entry.update(outcome="ok", vault_request_id=ids[-1] if ids else None,
                         duration_ms=round((time.perf_counter() - started) * 1000, 2))
            await audit.write(entry)  # fail closed: 503 audit_unavailable
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
        entry = self._entry(bound, call.identity, args, raw)
        entry.update(outcome=outcome_of(status) if isinstance(exc, BridgeError) else "error", code=code,
                     status=status, vault_request_id=ids[-1] if ids else None,
                     duration_ms=round((time.perf_counter() - started) * 1000, 2))
        with contextlib.suppress(AuditUnavailableError):  # logged and counted by the audit log
            await self._audit.write(entry)

    @staticmethod
    def _entry(bound: _Bound, identity: Identity, args: Any, raw: Mapping[str, Any] | None) -> dict[str, Any]:
        """The record's head and the operation's allow-listed fields: from the validated input, or from the raw
        arguments of a call refused before they were validated (only strings, integers and lists of them)."""
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
        return entry


def _scope_error(op: AnyOperation, call: Call) -> ForbiddenError:
    """The refusal of an operation outside the caller's scopes; on MCP it is ``insufficient_scope`` (the
    transport adds the ``WWW-Authenticate`` challenge)."""
    scope = op.scope
    have = ", ".join(sorted(call.identity.scopes)) or "none"
    if call.transport == "mcp":
        return ForbiddenError(f"The tool '{op.name}' needs the '{scope}' scope; this identity has: {have}.",
                              code="insufficient_scope", extra={"required_scope": scope})
    return ForbiddenError(f"This operation needs the '{scope}' scope; this identity has: {have}.",
                          extra={"required_scope": scope})
