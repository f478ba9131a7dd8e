"""Canary secrets: decoys whose use by an agent is the tripwire for a prompt-injected agent going through secrets
it has no business with (issue 13).

An operator marks a secret with ``bridge.canary=true`` in its KV custom metadata (``vault-mcp-bridge
secret-policy AGENT PATH --canary true``); agents can neither set nor see the mark (:mod:`bridge.secret_settings`).
Every place that uses a secret for an agent asks :meth:`CanaryWatch.trip` when the secret is a canary:

============  =================================================================================
``how``       where
============  =================================================================================
``read``      ``kv_read`` answering values
``reference`` ``kv_read`` answering references and fingerprints (``use`` scope, or ``bridge.reveal=never``)
``wrap``      ``kv_read`` with ``wrap_ttl`` (wrapped delivery)
``broker``    a ``{{secret://…}}`` placeholder of ``http_request`` resolved (before the destination is checked)
``transit``   ``plaintext_ref`` / ``input_ref`` of ``transit_encrypt``, ``transit_hmac``, ``transit_sign``
============  =================================================================================

(No operation lists values: ``kv_list`` answers names only.) The answer the agent gets is exactly what any other
secret's would be; meanwhile the watch

1. writes an audit record with ``outcome: canary_tripped`` (``operation``, ``path``, ``how``; never a value),
2. counts ``bridge_canary_trips_total{operation, how}`` (bounded labels: no agent, no path),
3. logs ``canary.tripped`` at error level (agent, operation, path, how),
4. awaits the :data:`CanaryAction`, if one is set (``None`` by default; the lead connects the quarantine of
   issue 13 here). A failing action is logged (``canary.action_failed``) and never changes the answer.

An audit record that cannot be written is logged and counted by the audit log; the operation's own record then
fails closed as usual.
"""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable
from typing import Any, Literal

import structlog

from bridge.audit import AuditLog, AuditUnavailableError, clip, now, request_fields
from bridge.auth.identity import Identity

log = structlog.get_logger("bridge.canary")

How = Literal["read", "reference", "wrap", "broker", "transit"]
HOWS: tuple[str, ...] = ("read", "reference", "wrap", "broker", "transit")

CanaryAction = Callable[[str, str, str], Awaitable[None]]
"""``async def action(agent, path, how) -> None``: what to do about an agent that used a canary (quarantine it,
alert someone). ``path`` is relative to the agent's namespace; ``how`` one of :data:`HOWS`."""
Counter = Callable[[str, str], None]
"""``count(operation, how)``: the metric hook (``Metrics.canary_tripped``)."""


class CanaryWatch:
    """Created once per app (``create_app``) and shared by every service through ``VaultAccess.canary``.

    ``audit``: the audit log (``None`` or a disabled one: no record); ``count``: the metric hook; ``action``: the
    :data:`CanaryAction` (settable later, e.g. by the code that builds the quarantine)."""

    def __init__(self, audit: AuditLog | None = None, *, count: Counter | None = None,
                 action: CanaryAction | None = None) -> None:
        self._audit = audit if audit is not None and audit.enabled else None
        self._count = count
        self.action = action
        self.trips = 0
        """How many trips this process has seen (tests, the status page)."""

    async def trip(self, identity: Identity, *, operation: str, path: str, how: How) -> None:
        """Record that ``identity`` used the canary at ``path`` (relative) through ``operation`` (see the module
        docstring). Returns normally whatever happens: the caller answers as for any secret."""
        self.trips += 1
        log.error("canary.tripped", agent=identity.subject, auth_method=identity.auth_method, operation=operation,
                  path=path, how=how)
        if self._count is not None:
            self._count(operation, how)
        if self._audit is not None:
            entry: dict[str, Any] = {
                "time": now(), "type": "audit", **request_fields(), "agent": identity.subject,
                "auth_method": identity.auth_method, "operation": operation, "path": clip(path), "how": how,
                "outcome": "canary_tripped",
            }
            with contextlib.suppress(AuditUnavailableError):  # logged and counted by the audit log
                await self._audit.write(entry)
        if self.action is not None:
            try:
                await self.action(identity.subject, path, how)
            except Exception as exc:  # the action is someone else's code: the answer stands
                log.error("canary.action_failed", agent=identity.subject, path=path, how=how,
                          error=type(exc).__name__)


__all__ = ["HOWS", "CanaryAction", "CanaryWatch", "How"]
