"""The audit trail: one JSON line per agent operation, written before the response goes out.

``AUDIT_LOG`` names the target: empty (the default) turns auditing off, ``stdout`` writes to standard output,
anything else is a file path opened for appending. Each record holds the time, the bridge's request id (and
the client's ``X-Request-Id`` as ``client_request_id`` when it sent a well-formed one), agent, auth method,
operation, the relative path / list prefix / Transit key name, the version(s) involved, the outcome (``ok``,
``denied`` when the bridge or Vault refused the operation, ``error`` when it failed) with the bridge error
``code`` and HTTP status, and the id Vault gave its last call. Never a value, plaintext, ciphertext or
token: the record is built from an allow-list of fields, not from the request.

Durability: every record is written and flushed to the operating system before the service method returns,
so a write Vault acknowledged is in the audit file before the client hears about it, and survives a crash
of the bridge. With ``AUDIT_FSYNC=true`` the file is also ``fsync``-ed (in a worker thread) before
returning, which survives a crash of the host too, at the price of a disk sync per operation. If the record
cannot be written the operation answers ``503 audit_unavailable`` (fail closed) and
``bridge_audit_write_failures`` counts it.

The hooks: :func:`audited`, a decorator on the public methods of :class:`bridge.service.SecretService`, so
REST and MCP are audited alike; and :meth:`AuditLog.refusal`, called by the error renderer for a refusal of
an authenticated identity that never reached (or was refused before) a service method: a missing scope, the
rate limit, a body too large ... (``bridge.middlewares``). An error carries ``audited`` once a record names
it, so no refusal is recorded twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import inspect
import json
import os
import sys
import time
from collections.abc import Awaitable, Callable
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import IO, Any, Concatenate, ParamSpec, Protocol, TypeVar

import structlog

from bridge.auth.identity import Identity
from bridge.errors import BridgeError
from bridge.vault.client import CallStats

log = structlog.get_logger("bridge.audit")

P = ParamSpec("P")
R = TypeVar("R")

MAX_FIELD = 512
DENIED_STATUSES = frozenset({400, 401, 403, 405, 406, 413, 415, 421, 429})
"""A refusal (``outcome: denied``): bad input, no scope or policy, limits. Other errors (404, 409, 5xx) are
``outcome: error``."""


def outcome_of(status: int) -> str:
    return "denied" if status in DENIED_STATUSES else "error"


def _request_fields() -> dict[str, Any]:
    """The bridge's request id, and the client's own when it sent one (both bound by the request context)."""
    bound = structlog.contextvars.get_contextvars()
    out: dict[str, Any] = {"request_id": bound.get("request_id")}
    if bound.get("client_request_id"):
        out["client_request_id"] = bound["client_request_id"]
    return out


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class AuditUnavailableError(BridgeError):
    status = 503
    code = "audit_unavailable"


class AuditLog:
    """Appends JSON lines to ``target`` (a path, ``stdout``, or empty = off). Open with :meth:`open`."""

    def __init__(self, target: str, *, fsync: bool = False,
                 on_failure: Callable[[], None] | None = None) -> None:
        self.target = target.strip()
        self.fsync = fsync
        self._on_failure = on_failure
        self._stream: IO[str] | None = None  # stdout
        self._fd: int | None = None  # a file, written without user-space buffering
        self._vault_ids: ContextVar[list[str] | None] = ContextVar(f"audit_vault_ids_{id(self)}", default=None)

    @property
    def enabled(self) -> bool:
        return bool(self.target)

    def open(self) -> None:
        """Open the target (a file is created with mode 0600 if missing). Raises ``OSError`` at startup."""
        if not self.enabled or self._stream is not None or self._fd is not None:
            return
        if self.target.lower() == "stdout":
            self._stream = sys.stdout
            return
        self._fd = os.open(self.target, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
        self._fd = None
        self._stream = None

    def _emit(self, line: str) -> None:
        """One unbuffered ``write(2)`` per record on a file (``O_APPEND``: lines never interleave)."""
        if self._fd is not None:
            data = line.encode()
            while data:
                written = os.write(self._fd, data)
                data = data[written:]
            return
        assert self._stream is not None
        self._stream.write(line)
        self._stream.flush()

    # -- Vault request ids of the operation in progress ---------------------------------------------

    def note_vault_call(self, stats: CallStats) -> None:
        """A ``VaultClient`` observer: remembers Vault's request id for the current operation."""
        ids = self._vault_ids.get()
        if ids is not None and stats.request_id:
            ids.append(stats.request_id)

    # -- writing -------------------------------------------------------------------------------------

    async def write(self, entry: dict[str, Any]) -> None:
        """Write one record and flush it (and ``fsync`` it when configured) before returning."""
        if self._stream is None and self._fd is None:
            self.open()
        line = json.dumps(entry, separators=(",", ":"), ensure_ascii=False, default=str) + "\n"
        try:
            self._emit(line)
            if self.fsync and self._fd is not None:
                await asyncio.to_thread(os.fsync, self._fd)
        except (OSError, ValueError) as exc:
            if self._on_failure is not None:
                self._on_failure()
            log.error("audit.write_failed", error=type(exc).__name__, operation=entry.get("operation"))
            raise AuditUnavailableError(
                "The operation was carried out but its audit record could not be written; an operator must "
                "fix AUDIT_LOG. Check the result (e.g. read the secret) before retrying.") from None

    async def refusal(self, identity: Identity, operation: str | None, err: BridgeError, *, route: str) -> None:
        """The record of an operation refused outside a service method (see the module docstring); a failed
        write is logged and counted, and the refusal's own answer stands."""
        if not self.enabled:
            return
        entry: dict[str, Any] = {
            "time": _now(), "type": "audit", **_request_fields(), "agent": identity.subject,
            "auth_method": identity.auth_method, "operation": operation, "route": route,
            "outcome": outcome_of(err.status), "code": err.code, "status": err.status,
        }
        with contextlib.suppress(AuditUnavailableError):
            await self.write(entry)


class Audited(Protocol):
    """What :func:`audited` needs from the object whose methods it wraps."""

    audit_log: AuditLog | None


S = TypeVar("S", bound=Audited)


def _clip(value: Any) -> Any:
    if isinstance(value, str) and len(value) > MAX_FIELD:
        return value[:MAX_FIELD] + "…"
    return value


def _describe(bound: inspect.BoundArguments) -> dict[str, Any]:
    """The allow-listed fields of an operation's arguments: path, prefix, key name, versions, cas."""
    out: dict[str, Any] = {}
    args = bound.arguments
    if "path" in args:
        out["path"] = _clip(args["path"])
    if "prefix" in args:
        out["prefix"] = _clip(args["prefix"] or "")
    if args.get("version") is not None:
        out["version"] = args["version"]
    body = args.get("body")
    if body is not None:
        key = getattr(body, "key", None)
        if isinstance(key, str):
            out["key"] = _clip(key)
        versions = getattr(body, "versions", None)
        if isinstance(versions, list):
            out["versions"] = [int(v) for v in versions]
        cas = getattr(body, "cas", None)
        if isinstance(cas, int):
            out["cas"] = cas
    return out


def _result_version(result: Any) -> int | None:
    for attr in ("version", "key_version", "current_version"):
        value = getattr(result, attr, None)
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    return None


def audited(operation: str) -> Callable[[Callable[Concatenate[S, Identity, P], Awaitable[R]]],
                                        Callable[Concatenate[S, Identity, P], Awaitable[R]]]:
    """Audit every call of a service method: one record after it finished, before its result is used."""

    def decorate(fn: Callable[Concatenate[S, Identity, P], Awaitable[R]]
                 ) -> Callable[Concatenate[S, Identity, P], Awaitable[R]]:
        signature = inspect.signature(fn)

        @functools.wraps(fn)
        async def wrapper(self: S, identity: Identity, /, *args: P.args, **kwargs: P.kwargs) -> R:
            audit = self.audit_log
            if audit is None or not audit.enabled:
                return await fn(self, identity, *args, **kwargs)
            try:
                fields = _describe(signature.bind(self, identity, *args, **kwargs))
            except TypeError:
                fields = {}
            ids: list[str] = []
            reset = audit._vault_ids.set(ids)
            started = time.perf_counter()
            entry: dict[str, Any] = {
                "time": _now(),
                "type": "audit",
                **_request_fields(),
                "agent": identity.subject,
                "auth_method": identity.auth_method,
                "operation": operation,
                **fields,
            }
            try:
                result = await fn(self, identity, *args, **kwargs)
            except BaseException as exc:
                if isinstance(exc, BridgeError):
                    exc.audited = True
                    entry.update(outcome=outcome_of(exc.status), code=exc.code, status=exc.status)
                elif isinstance(exc, asyncio.CancelledError):
                    entry.update(outcome="error", code="cancelled", status=499)
                else:
                    entry.update(outcome="error", code="internal_error", status=500)
                entry.update(vault_request_id=ids[-1] if ids else None,
                             duration_ms=round((time.perf_counter() - started) * 1000, 2))
                audit._vault_ids.reset(reset)
                with contextlib.suppress(AuditUnavailableError):  # the original error stands (logged, counted)
                    await audit.write(entry)
                raise
            audit._vault_ids.reset(reset)
            version = _result_version(result)
            if version is not None and "version" not in entry:
                entry["version"] = version
            entry.update(outcome="ok", vault_request_id=ids[-1] if ids else None,
                         duration_ms=round((time.perf_counter() - started) * 1000, 2))
            await audit.write(entry)
            return result

        return wrapper

    return decorate
