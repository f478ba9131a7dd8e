"""Every ``web.AppKey`` of the service, in one module: the state ``create_app`` builds (request-scoped keys are
in :mod:`bridge.routing`). Only the web layer imports this module; nothing it imports imports it."""

from __future__ import annotations

from aiohttp import web

from bridge.audit import AuditLog
from bridge.auth import AuthChain
from bridge.broker import Broker
from bridge.canary import CanaryWatch
from bridge.config import Settings
from bridge.inflight import InflightLimiter
from bridge.intake import IntakeFlow
from bridge.leases import LeaseKeeper
from bridge.mcp.changes import ChangeHub
from bridge.mcp.methods import McpMethods
from bridge.operations import Executor, Registry
from bridge.ops.metrics import Metrics
from bridge.ops.stats import OpsStats
from bridge.probe import VaultProbe
from bridge.quarantine import Quarantine
from bridge.ratelimit import RateLimiter
from bridge.vault import TokenKeeper, VaultClient
from bridge.vault.childtokens import ChildTokenBroker

SETTINGS = web.AppKey("settings", Settings)
AUTH = web.AppKey("auth", AuthChain)
LIMITER = web.AppKey("limiter", RateLimiter)
INFLIGHT = web.AppKey("inflight", InflightLimiter)
VAULT = web.AppKey("vault", VaultClient)
KEEPER = web.AppKey("keeper", TokenKeeper)
CHILD_TOKENS = web.AppKey("child_tokens", ChildTokenBroker)
"""Only with ``CHILD_TOKEN_ENABLED``."""
REGISTRY = web.AppKey("registry", Registry)
EXECUTOR = web.AppKey("executor", Executor)
PUBLIC_ROUTES = web.AppKey("public_routes", frozenset[str])
METRICS = web.AppKey("metrics", Metrics)
OPS_STATS = web.AppKey("ops_stats", OpsStats)
AUDIT = web.AppKey("audit", AuditLog)
PROBE = web.AppKey("vault_probe", VaultProbe)
BROKER = web.AppKey("broker", Broker)
"""Brokered HTTP (issue 12): made and closed by ``bridge.broker.ctx.broker_ctx``."""
CANARY = web.AppKey("canary", CanaryWatch)
"""The canary watch (issues 12, 13): every use of a ``bridge.canary`` secret; its ``action`` is settable."""
INTAKE = web.AppKey("intake", IntakeFlow)
"""Intake links and pages (issue 12): set by ``bridge.intake.routes.setup_intake_routes``."""
CHANGES = web.AppKey("changes", ChangeHub)
"""Change notifications (issue 14): the streams of this replica, the bus to the others, the poller."""
MCP_METHODS = web.AppKey("mcp_methods", McpMethods)
"""The MCP methods, shared by ``/mcp`` and ``vault-mcp-bridge stdio``."""
LEASES = web.AppKey("leases", LeaseKeeper)
"""Dynamic secrets (issue 13): the agents' lease tokens and lease records."""
QUARANTINE = web.AppKey("quarantine", Quarantine)
"""The kill switch (issue 13): the quarantined agents, on every replica."""
STATUS_CSRF_KEY = web.AppKey("status_csrf_key", bytes)
"""Keys the CSRF tokens of the status page's forms."""
