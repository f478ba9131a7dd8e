"""Who sends one MCP message, and how: :class:`McpContext`, shared by the method layer and its transports."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel

from bridge.auth.identity import Identity
from bridge.operations import Call, Executor
from bridge.ratelimit import Decision


@dataclass(slots=True)
class McpContext:
    """One message's caller: ``identity``, its era (``modern``: 2026-07-28), the rate-limit tokens its transport
    charged already (``prepaid``: the HTTP middleware's 1, which the message's first operation uses), the latest
    rate-limit decision (for the transport's headers) and, in the handshake era, its session id.
    ``access_logged``: the transport's own access line names the call (HTTP's ``http.request`` carries
    ``mcp_method`` and ``tool``), so a successful tool call writes no second info line."""

    identity: Identity
    modern: bool
    prepaid: int = 0
    decision: Decision | None = None
    session: str | None = None
    access_logged: bool = False

    async def execute(self, executor: Executor, name: str, arguments: Any) -> BaseModel:
        """The operation ``name`` with ``arguments``, carried out by the executor for this caller (scope, cost,
        audit and metrics as every operation); its :class:`~bridge.errors.BridgeError` passes through."""
        call = Call(self.identity, "mcp", prepaid=self.prepaid, decision=self.decision)
        self.prepaid = 0
        try:
            return await executor.execute(executor.registry[name], call, arguments)
        finally:
            self.decision = call.decision
