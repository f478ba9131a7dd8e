"""Every ``web.AppKey`` and ``web.RequestKey`` of the service, in one module."""

from __future__ import annotations

from aiohttp import web

from bridge.audit import AuditLog
from bridge.auth import AuthChain, Identity
from bridge.broker import Broker
from bridge.config import Settings
from bridge.inflight import InflightLimiter
from bridge.intake import IntakeFlow
from bridge.mcp.protocol import RpcPeek
from bridge.mcp.session import SessionCodec
from bridge.metrics import Metrics, OpsStats
from bridge.probe import VaultProbe
from bridge.ratelimit import Decision, RateLimiter
from bridge.service import SecretService
from bridge.tracing import Tracing
from bridge.vault import TokenKeeper, VaultClient

SETTINGS = web.AppKey("settings", Settings)
AUTH = web.AppKey("auth", AuthChain)
LIMITER = web.AppKey("limiter", RateLimiter)
INFLIGHT = web.AppKey("inflight", InflightLimiter)
VAULT = web.AppKey("vault", VaultClient)
KEEPER = web.AppKey("keeper", TokenKeeper)
SERVICE = web.AppKey("service", SecretService)
PUBLIC_ROUTES = web.AppKey("public_routes", set[str])
METRICS = web.AppKey("metrics", Metrics)
OPS_STATS = web.AppKey("ops_stats", OpsStats)
AUDIT = web.AppKey("audit", AuditLog)
TRACING = web.AppKey("tracing", Tracing)
MCP_SESSIONS = web.AppKey("mcp_sessions", SessionCodec)
PROBE = web.AppKey("vault_probe", VaultProbe)
BROKER = web.AppKey("broker", Broker)
"""Brokered HTTP (issue 12): made and closed by ``bridge.broker.ctx.broker_ctx``."""
INTAKE = web.AppKey("intake", IntakeFlow)
"""Intake links and pages (issue 12): set by ``bridge.intake.routes.setup_intake_routes``."""

REQUEST_ID = web.RequestKey("request_id", str)
IDENTITY = web.RequestKey("identity", Identity)
RATE_DECISION = web.RequestKey("rate_decision", Decision)
CLIENT_REQUEST_ID = web.RequestKey("client_request_id", str)
"""A client-sent, well-formed ``X-Request-Id``: logged and audited beside the bridge's own ``REQUEST_ID``."""
ERROR_CODE = web.RequestKey("error_code", str)
"""The bridge error code of a non-2xx answer made without raising (a JSON-RPC error of ``/mcp``), for metrics."""
MCP_MESSAGE = web.RequestKey("mcp_message", RpcPeek)
"""The ``/mcp`` message's id, method and tool once read (by the handler, or peeked to render a refusal)."""
