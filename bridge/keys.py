"""Every ``web.AppKey`` and ``web.RequestKey`` of the service, in one module."""

from __future__ import annotations

from aiohttp import web

from bridge.auth import AuthChain, Identity
from bridge.config import Settings
from bridge.ratelimit import Decision, RateLimiter
from bridge.service import SecretService
from bridge.vault import TokenKeeper, VaultClient

SETTINGS = web.AppKey("settings", Settings)
AUTH = web.AppKey("auth", AuthChain)
LIMITER = web.AppKey("limiter", RateLimiter)
VAULT = web.AppKey("vault", VaultClient)
KEEPER = web.AppKey("keeper", TokenKeeper)
SERVICE = web.AppKey("service", SecretService)
PUBLIC_ROUTES = web.AppKey("public_routes", set[str])

REQUEST_ID = web.RequestKey("request_id", str)
IDENTITY = web.RequestKey("identity", Identity)
RATE_DECISION = web.RequestKey("rate_decision", Decision)
