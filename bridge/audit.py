"""The audit trail: one JSON line per agent operation, written before the response goes out.

``AUDIT_LOG`` names the target: empty (the default) turns auditing off, ``stdout`` writes to standard output,
anything else is a file path opened for appending. Each record holds the time, the bridge's request id (and
the client's ``X-Request-Id`` as ``client_request_id`` when it sent a well-formed one), agent, auth method,
operation, the relative path / list prefix / Transit key name, the version(s) involved, the outcome (``ok``,
``denied`` when the bridge or Vault refused the operation, ``error`` when it failed) with the bridge error
``code`` and HTTP status, and the id Vault gave its last call. Never a value, plaintext, ciphertext or
token: the record is built from an allow-list of fields, not from the request.

Durability: every record is written and flushed to the operating system before the operation returns,
so a write Vault acknowledged is in the audit file before the client hears about it, and survives a crash
of the bridge. With ``AUDIT_FSYNC=true`` the file is also ``fsync``-ed (in a worker thread) before
returning, which survives a crash of the host too, at the price of a disk sync per operation. If the record
cannot be written the operation answers ``503 audit_unavailable`` (fail closed) and
``bridge_audit_write_failures`` counts it.

Who writes: the executor (:mod:`bridge.operations.pipeline`) writes the record of every operation that reaches
it, whatever the transport (ok, its error, or its refusal: scope, input, cost); and :meth:`AuditLog.refusal` is
called by the error renderer for a refusal of an authenticated identity that never reached an operation (the
rate limit, the in-flight cap, a route's method ... in ``bridge.middlewares``). An error carries ``audited``
once a record names it, so no refusal is recorded twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sys
from collections.abc import Callable
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import IO, Any

import structlog

from bridge.auth.identity import Identity
from bridge.errors import BridgeError
from bridge.vault.client import CallStats

log = structlog.get_logger("bridge.audit")

MAX_FIELD = 512
DENIED_STATUSES = frozenset({400, 401, 403, 405, 406, 413, 415, 421, 429})
"""A refusal (``outcome: denied``): bad input, no scope or policy, limits. Other errors (404, 409, 5xx) are
``outcome: error``."""


def outcome_of(status: int) -> str:
    return "denied" if status in DENIED_STATUSES else "error"


def clip(value: str) -> str:
    """A field value as recorded: at most ``MAX_FIELD`` characters."""
    return value[:MAX_FIELD] + "…" if len(value) > MAX_FIELD else value


def request_fields() -> dict[str, Any]:
    """The bridge's request id, and the client's own when it sent one (both bound by the request context)."""
    bound = structlog.contextvars.get_contextvars()
    out: dict[str, Any] = {"request_id": bound.get("request_id")}
    if bound.get("client_request_id"):
        out["client_request_id"] = bound["client_request_id"]
    return out


def now() -> str:
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
        self.vault_ids: ContextVar[list[str] | None] = ContextVar(f"audit_vault_ids_{id(self)}", default=None)
        """The Vault request ids of the operation in progress (set by the executor, filled by
        :meth:`note_vault_call`)."""

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
        ids = self.vault_ids.get()
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
        """The record of a refusal that reached no operation (see the module docstring); a failed
        write is logged and counted, and the refusal's own answer stands."""
        if not self.enabled:
            return
        entry: dict[str, Any] = {
            "time": now(), "type": "audit", **request_fields(), "agent": identity.subject,
            "auth_method": identity.auth_method, "operation": operation, "route": route,
            "outcome": outcome_of(err.status), "code": err.code, "status": err.status,
        }
        with contextlib.suppress(AuditUnavailableError):
            await self.write(entry)
