"""The app factory: ``create_app(settings)`` builds the whole service; resources live in ``cleanup_ctx``."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import aiohttp
import structlog
from aiohttp import web
from pydantic import SecretStr

from bridge.auth import build_auth_chain
from bridge.config import Settings
from bridge.edge import edge_middleware_for
from bridge.inflight import InflightLimiter
from bridge.keys import AUDIT, AUTH, INFLIGHT, KEEPER, LIMITER, METRICS, PROBE, PUBLIC_ROUTES, SERVICE, SETTINGS, VAULT
from bridge.logging import safe_url
from bridge.mcp.metadata import setup_metadata_routes
from bridge.mcp.server import setup_mcp_routes
from bridge.metrics import metrics_middleware
from bridge.middlewares import (
    error_renderer,
    identity_middleware,
    inflight_middleware,
    rate_limit_middleware,
    request_context,
)
from bridge.probe import VaultProbe, running
from bridge.ratelimit import MemoryRateLimiter
from bridge.ratelimit_redis import redis_limiter_ctx
from bridge.rest import setup_routes
from bridge.service import SecretService
from bridge.status import ops_vault_observer, setup_operations
from bridge.vault import TokenKeeper, VaultClient
from bridge.vault.auth import (
    AppRoleLogin,
    AuthMethod,
    StaticToken,
    secret_id_from_file,
    secret_id_from_wrapping_token,
    secret_id_value,
)
from bridge.vault.breaker import CircuitBreaker
from bridge.vault.childtokens import ChildTokenBroker

log = structlog.get_logger("bridge.app")


def _log_breaker(old: str, new: str) -> None:
    log.warning("vault.breaker.changed", old=old, new=new)


async def vault_ctx(app: web.Application) -> AsyncIterator[None]:
    """The Vault client, the token keeper's background task and the service layer."""
    settings = app[SETTINGS]
    breaker = CircuitBreaker(settings.vault_breaker_threshold, settings.vault_breaker_cooldown,
                             on_change=_log_breaker)
    client = VaultClient(settings.vault_addr, namespace=settings.vault_namespace, timeout=settings.vault_timeout,
                         cacert=settings.vault_cacert, pool_size=settings.vault_pool_size, breaker=breaker,
                         observer=ops_vault_observer(app))
    keeper = TokenKeeper(client, auth_method(settings, client), on_event=app[METRICS].token_event)
    children = None
    if settings.child_token_enabled:
        children = ChildTokenBroker(
            client, keeper, role=settings.child_role, token_type=settings.child_token_type,
            ttl=settings.child_token_ttl, policy_prefix=settings.child_token_policy_prefix,
            reuse_seconds=settings.child_reuse_seconds, cache_size=settings.child_token_cache_size)
        app[METRICS].watch_child_tokens(children.stats)
    app[VAULT] = client
    app[KEEPER] = keeper
    app[SERVICE] = SecretService(settings, client, keeper, audit_log=app[AUDIT], children=children)
    probe = app[PROBE] = VaultProbe(client, keeper, settings.ready_probe_interval)
    task = asyncio.create_task(keeper.run(), name="vault-token-keeper")
    log.info("bridge.started", vault_addr=safe_url(settings.vault_addr), auth_methods=app[AUTH].methods)
    try:
        async with running(probe, first_round_timeout=min(settings.vault_timeout, settings.ready_probe_interval)):
            yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        if children is not None:
            await children.close()  # revokes the cached service child tokens
        await keeper.revoke()  # an AppRole login token (never a static VAULT_TOKEN)
        await client.close()


async def jwks_ctx(app: web.Application) -> AsyncIterator[None]:
    """The JWK Set's HTTP session (URL source) and its first load; a failed load is retried on demand."""
    jwks = app[AUTH].jwks
    if jwks is None:
        yield
        return
    session = None
    if jwks.url:
        session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=jwks.timeout),
                                        headers={"User-Agent": "vault-mcp-bridge"})
        jwks.bind(session)
    try:
        await jwks.refresh(reason="startup")
        yield
    finally:
        jwks.bind(None)
        if session is not None:
            await session.close()


async def api_keys_file_ctx(app: web.Application) -> AsyncIterator[None]:
    """``API_KEYS_FILE``: its watcher task (re-reads the file when it changes; SIGHUP wakes it, see cli.serve)."""
    watcher = app[AUTH].api_keys_file
    if watcher is None:
        yield
        return
    await watcher.prime()
    task = asyncio.create_task(watcher.run(), name="api-keys-file-watcher")
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def auth_method(settings: Settings, client: VaultClient) -> AuthMethod:
    """How the bridge obtains its own token: AppRole (with its secret-id source) when a role id is set, else the
    static ``VAULT_TOKEN`` (the settings check guarantees one of them for ``serve``)."""
    if settings.vault_role_id:
        if settings.vault_secret_id_file:
            source = secret_id_from_file(settings.vault_secret_id_file)
        elif settings.vault_wrapped_secret_id is not None:
            source = secret_id_from_wrapping_token(client, settings.vault_wrapped_secret_id)
        else:
            assert settings.vault_secret_id is not None  # the settings check: one source with a role id
            source = secret_id_value(settings.vault_secret_id)
        return AppRoleLogin(settings.vault_role_id, source, mount=settings.vault_approle_mount)
    return StaticToken(settings.vault_token or SecretStr(""))


def create_app(settings: Settings) -> web.Application:
    app = web.Application(
        client_max_size=settings.max_body_bytes,
        middlewares=[request_context, error_renderer, metrics_middleware, edge_middleware_for(settings),
                     identity_middleware, rate_limit_middleware, inflight_middleware],
    )
    app[SETTINGS] = settings
    app[AUTH] = build_auth_chain(settings)
    app.cleanup_ctx.append(jwks_ctx)
    app.cleanup_ctx.append(api_keys_file_ctx)
    if settings.rate_limit_backend == "redis":
        app.cleanup_ctx.append(redis_limiter_ctx)  # sets app[LIMITER] at startup
    else:
        app[LIMITER] = MemoryRateLimiter(settings.rate_limit_quota, max_keys=settings.rate_limit_max_agents)
    app[INFLIGHT] = InflightLimiter(settings.agent_max_inflight, settings.agent_inflight_wait)
    public = setup_routes(app) | setup_metadata_routes(app) | setup_operations(app) | setup_mcp_routes(app)
    app[PUBLIC_ROUTES] = public
    app.cleanup_ctx.append(vault_ctx)
    return app
