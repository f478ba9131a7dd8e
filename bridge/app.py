"""The app factory: ``create_app(settings)`` builds the whole service; resources live in ``cleanup_ctx``."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import structlog
from aiohttp import web

from bridge.auth import build_auth_chain
from bridge.config import Settings
from bridge.keys import AUTH, KEEPER, LIMITER, PUBLIC_ROUTES, SERVICE, SETTINGS, VAULT
from bridge.mcp.metadata import setup_metadata_routes
from bridge.middlewares import error_renderer, identity_middleware, rate_limit_middleware, request_context
from bridge.ratelimit import MemoryRateLimiter
from bridge.rest import setup_routes
from bridge.service import SecretService
from bridge.vault import TokenKeeper, VaultClient

log = structlog.get_logger("bridge.app")


async def vault_ctx(app: web.Application) -> AsyncIterator[None]:
    """The Vault client, the token keeper's background task and the service layer."""
    settings = app[SETTINGS]
    client = VaultClient(settings.vault_addr, namespace=settings.vault_namespace, timeout=settings.vault_timeout,
                         cacert=settings.vault_cacert, pool_size=settings.vault_pool_size)
    await client.start()
    keeper = TokenKeeper(
        client,
        static_token=settings.vault_token.get_secret_value() if settings.vault_token else None,
        role_id=settings.vault_role_id,
        secret_id=settings.vault_secret_id.get_secret_value() if settings.vault_secret_id else None,
        approle_mount=settings.vault_approle_mount,
    )
    app[VAULT] = client
    app[KEEPER] = keeper
    app[SERVICE] = SecretService(settings, client, keeper)
    task = asyncio.create_task(keeper.run(), name="vault-token-keeper")
    log.info("bridge.started", vault_addr=settings.vault_addr, auth_methods=app[AUTH].methods)
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await client.close()


def create_app(settings: Settings) -> web.Application:
    app = web.Application(
        client_max_size=settings.max_body_bytes,
        middlewares=[request_context, error_renderer, identity_middleware, rate_limit_middleware],
    )
    app[SETTINGS] = settings
    app[AUTH] = build_auth_chain(settings)
    app[LIMITER] = MemoryRateLimiter(settings.rate_limit_requests, settings.rate_limit_window_seconds)
    public = setup_routes(app) | setup_metadata_routes(app)
    app[PUBLIC_ROUTES] = public
    app.cleanup_ctx.append(vault_ctx)
    return app
