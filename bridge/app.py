"""The app factory: ``create_app(settings)`` builds the whole service.

It makes all core state (the Vault client, the bridge's token keeper, the child-token broker, the services, the
operation registry and its executor, the limiters, metrics, audit, tracing), defines the middleware order once,
and lets the ``setup_*`` functions add routes. ``cleanup_ctx`` only starts and stops what runs in the background
(the token keeper, the readiness probe, the ``API_KEYS_FILE`` watcher, the JWK Set session) and closes resources
at shutdown. Nothing is module-level: two apps in one process share nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any

import aiohttp
import structlog
from aiohttp import web
from aiohttp.typedefs import Middleware
from pydantic import SecretStr

from bridge.admin import setup_admin_routes
from bridge.audit import AuditLog
from bridge.auth import AuthChain, build_auth_chain
from bridge.auth.jwks import JwksCache
from bridge.auth.keyfile import ApiKeyFile
from bridge.broker import Broker
from bridge.broker.ctx import broker_ctx
from bridge.canary import CanaryAction, CanaryWatch
from bridge.config import Settings
from bridge.edge import edge_middleware
from bridge.inflight import InflightLimiter
from bridge.intake import IntakeFlow
from bridge.intake.routes import PAGE_ROUTES, link_base_middleware, setup_intake_routes
from bridge.keys import (
    AUDIT,
    AUTH,
    BROKER,
    CANARY,
    CHANGES,
    CHILD_TOKENS,
    EXECUTOR,
    INFLIGHT,
    KEEPER,
    LEASES,
    LIMITER,
    MCP_METHODS,
    METRICS,
    OPS_STATS,
    PROBE,
    PUBLIC_ROUTES,
    QUARANTINE,
    REGISTRY,
    SETTINGS,
    STATUS_CSRF_KEY,
    VAULT,
)
from bridge.leases import LeaseKeeper, build_leases
from bridge.logging import safe_url
from bridge.mcp.changes import ChangeHub, build_hub
from bridge.mcp.elicitation import Elicitations
from bridge.mcp.metadata import Challenges, setup_metadata_routes
from bridge.mcp.methods import McpMethods
from bridge.mcp.prompts import Prompts
from bridge.mcp.resources import McpResources
from bridge.mcp.server import McpEndpoint, session_codec, setup_mcp_routes
from bridge.mcp.tools import McpTools
from bridge.middlewares import (
    error_middleware,
    identity_middleware,
    inflight_middleware,
    is_mcp,
    quarantine_middleware,
    rate_limit_middleware,
    request_context_middleware,
)
from bridge.operations import Executor, Registry, default_registry
from bridge.ops.metrics import Metrics, metrics_middleware
from bridge.ops.openapi import build_openapi
from bridge.ops.stats import OpsStats
from bridge.ops.status import setup_ops_routes, setup_templates, status_csrf_key
from bridge.ops.tracing import Tracing, tracing_middleware
from bridge.probe import VaultProbe, running
from bridge.quarantine import CHANNEL, Notifier, Quarantine
from bridge.quarantine import canary_action as quarantine_canary_action
from bridge.ratelimit import MemoryRateLimiter, RateLimiter
from bridge.ratelimit_redis import redis_limiter
from bridge.rest import RestApi, setup_routes
from bridge.routing import MCP_MESSAGE
from bridge.service import (
    BrokerService,
    DynamicService,
    IdentityService,
    IntakeService,
    ResourceService,
    VaultAccess,
    build_services,
)
from bridge.service.capabilities import CapabilityCache
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
from bridge.vault.client import CallStats
from bridge.vault.state import BridgeState

log = structlog.get_logger("bridge.app")


def create_app(settings: Settings, *, registry: Registry | None = None,
               limiter: RateLimiter | None = None, canary_action: CanaryAction | None = None) -> web.Application:
    """The service for ``settings``. ``registry`` defaults to the bridge's own operations, ``limiter`` to the one
    ``RATE_LIMIT_BACKEND`` names (tests add operations, or a limiter with their own clock); ``canary_action`` is
    what the canary watch does about an agent that used a canary (``app[CANARY].action`` can be set later too)."""
    registry = registry if registry is not None else default_registry()
    app = web.Application(client_max_size=settings.max_body_bytes)
    app[SETTINGS] = settings
    app[REGISTRY] = registry
    auth = app[AUTH] = build_auth_chain(settings)
    metrics = app[METRICS] = Metrics(agent_labels=settings.metrics_agent_labels)
    stats = app[OPS_STATS] = OpsStats()
    audit = app[AUDIT] = AuditLog(settings.audit_log, fsync=settings.audit_fsync, on_failure=metrics.audit_failures.inc)
    tracing = Tracing(settings.otel_exporter_otlp_endpoint, settings.otel_service_name) \
        if settings.otel_exporter_otlp_endpoint else None
    limiter = app[LIMITER] = limiter if limiter is not None else _limiter(settings)
    inflight = app[INFLIGHT] = InflightLimiter(settings.agent_max_inflight, settings.agent_inflight_wait)

    # Vault: the client, the bridge's token, the agents' tokens, the services and the one executor
    observers = [metrics.observe_vault, audit.note_vault_call, *([tracing.vault_span] if tracing else [])]
    vault = app[VAULT] = VaultClient(
        settings.vault_addr, namespace=settings.vault_namespace, timeout=settings.vault_timeout,
        cacert=settings.vault_cacert, pool_size=settings.vault_pool_size, observer=_fan_out(*observers),
        breaker=CircuitBreaker(settings.vault_breaker_threshold, settings.vault_breaker_cooldown,
                               on_change=_log_breaker))
    keeper = app[KEEPER] = TokenKeeper(vault, auth_method(settings, vault), on_event=metrics.token_event)
    children = None
    if settings.child_token_enabled:
        children = app[CHILD_TOKENS] = ChildTokenBroker(
            vault, keeper, role=settings.child_role, token_type=settings.child_token_type,
            ttl=settings.child_token_ttl, policy_prefix=settings.child_token_policy_prefix,
            reuse_seconds=settings.child_reuse_seconds, cache_size=settings.child_token_cache_size)
        metrics.watch_child_tokens(children.stats)
    # dynamic secrets and the kill switch (issue 13): state shared by every replica, in Vault
    leases = app[LEASES] = build_leases(
        vault, keeper, mount=settings.kv_mount, prefix=settings.default_prefix,
        policy_prefix=settings.child_token_policy_prefix, role=settings.lease_token_role,
        limit=settings.lease_max_per_agent, revoke_on_idle=settings.lease_revoke_on_idle, audit=audit)
    quarantine = app[QUARANTINE] = Quarantine(
        BridgeState(vault, keeper, mount=settings.kv_mount, prefix=settings.default_prefix), leases=leases,
        children=children, audit=audit, notifier=_notifier(settings),
        poll_interval=settings.quarantine_poll_interval)
    app[STATUS_CSRF_KEY] = status_csrf_key(settings)
    # canaries (issues 12, 13): every use of a bridge.canary secret is audited, counted and logged, then acted on
    # (CANARY_ACTION: quarantine the agent, the default, or alert only)
    action = canary_action if canary_action is not None else quarantine_canary_action(settings, quarantine)
    canary = app[CANARY] = CanaryWatch(audit, count=metrics.canary_tripped, action=action)
    broker = app[BROKER] = Broker.from_settings(settings)  # its outbound session: broker_ctx
    access = VaultAccess(settings, vault, bridge_tokens=keeper, agent_tokens=children, canary=canary,
                         broker=broker)
    dynamic = DynamicService(access, leases, quarantine.is_quarantined)
    services = build_services((op.service for op in registry), access,
                              {DynamicService: dynamic, BrokerService: BrokerService(access, dynamic.refs)})
    # change notifications (MCP streams): fed by the executor, by every replica (Redis) and by polling Vault
    hub = app[CHANGES] = build_hub(settings, ResourceService(access).state)
    executor = app[EXECUTOR] = Executor(registry, services, audit=audit,
                                        limiter=limiter if settings.rate_limit_enabled else None,
                                        observe=metrics.operation,
                                        capabilities=CapabilityCache(access, settings.capabilities_ttl),
                                        on_change=hub.changed,
                                        admit=lambda identity: quarantine.check(identity.subject))
    identities = services.get(IdentityService)
    if identities is not None:  # GET /whoami's capabilities: what tools/list would show
        identities.bind_catalog(executor.usable_names)
    intake: IntakeService = services.get(IntakeService) or IntakeService(access)  # the intake flow and its pages
    intake.flow.audit = audit if audit.enabled else None
    quarantine.on_quarantine.append(intake.flow.void_agent)  # a quarantined agent's intake links die with it
    intake.on_change = hub.changed  # a human's values stored: subscribers of the secret hear of it
    probe = app[PROBE] = VaultProbe(vault, keeper, settings.ready_probe_interval)
    setup_templates(app)

    # routes
    rest = RestApi(registry, executor, max_body_bytes=settings.max_body_bytes,
                   max_json_depth=settings.max_json_depth)
    tools = McpTools(registry, executor)
    challenges = Challenges(settings)
    methods = app[MCP_METHODS] = McpMethods(tools, executor, McpResources(executor, settings.mcp_page_size),
                                            Prompts(), hub, settings.mcp_page_size)
    elicitations = Elicitations(intake)
    app.on_shutdown.append(elicitations.on_shutdown)  # waiting kv_request_input calls answer "pending" at once
    endpoint = McpEndpoint(settings, methods, session_codec(settings), challenges, hub, elicitations=elicitations)
    public = app[PUBLIC_ROUTES] = (
        setup_routes(app, rest, probe) | setup_metadata_routes(app, settings)
        | setup_ops_routes(app, build_openapi(registry)) | setup_admin_routes(app)
        | setup_mcp_routes(app, endpoint) | setup_intake_routes(app, flow=intake.flow))

    def operation_of(request: web.Request) -> str | None:
        if is_mcp(request):
            peek = request.get(MCP_MESSAGE)
            op = tools.get(peek.tool or "") if peek is not None else None
            return op.name if op is not None else None
        return rest.operation_of(request)

    # the middlewares, outermost first: the one place their order is defined
    middlewares: list[Middleware] = [
        *([tracing_middleware(tracing)] if tracing is not None else []),  # its trace id is in the access line
        request_context_middleware,
        error_middleware(max_body_bytes=settings.max_body_bytes, audit=audit, operation_of=operation_of),
        metrics_middleware(metrics, stats),  # inside the renderer: it sees the error codes
        edge_middleware(settings, origin_exempt=PAGE_ROUTES),  # Host and Origin, before any credential
        link_base_middleware(settings),  # where intake links made in this request point
        identity_middleware(auth, public, challenges),
        quarantine_middleware(quarantine, leases.saw),  # right after the identity: the kill switch
        *([rate_limit_middleware(limiter)] if settings.rate_limit_enabled else []),
        inflight_middleware(inflight),
    ]
    app.middlewares.extend(middlewares)

    app.cleanup_ctx.append(_resource_ctx(audit.open, audit.close))  # an unwritable AUDIT_LOG stops start-up
    if tracing is not None:
        app.cleanup_ctx.append(_resource_ctx(tracing.start, tracing.shutdown))
    if auth.jwks is not None:
        app.cleanup_ctx.append(_jwks_ctx(auth.jwks))
    if auth.api_keys_file is not None:
        app.cleanup_ctx.append(_api_keys_file_ctx(auth.api_keys_file))
    close_limiter = getattr(limiter, "close", None)  # a shared limiter's pool (Redis)
    if close_limiter is not None:
        app.cleanup_ctx.append(_resource_ctx(lambda: None, close_limiter))
    app.cleanup_ctx.append(broker_ctx)
    app.cleanup_ctx.append(_vault_ctx(settings, auth, vault, keeper, children, probe))
    app.cleanup_ctx.append(_changes_ctx(hub))

    async def end_streams(app: web.Application) -> None:
        hub.shutdown()  # before aiohttp waits for handlers: open streams send their graceful close and end

    app.on_shutdown.append(end_streams)
    app.cleanup_ctx.append(_quarantine_ctx(quarantine, leases))  # after the keeper starts, before it stops
    app.cleanup_ctx.append(_intake_ctx(intake.flow))
    return app


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


def _notifier(settings: Settings) -> Notifier | None:
    """Redis pub/sub for quarantine changes when ``REDIS_URL`` is set (and the redis package installed)."""
    if settings.redis_url is None:
        return None
    try:
        return Notifier(settings.redis_url.get_secret_value(), f"{settings.redis_key_prefix}{CHANNEL}",
                        timeout=settings.redis_timeout)
    except ImportError:
        log.warning("quarantine.redis_unavailable", hint="pip install 'vault-mcp-bridge[redis]'; polling only")
        return None


def _limiter(settings: Settings) -> RateLimiter:
    if settings.rate_limit_backend == "redis":
        assert settings.redis_url is not None  # the settings check
        return redis_limiter(settings.redis_url.get_secret_value(), settings.rate_limit_quota,
                             timeout=settings.redis_timeout, prefix=settings.redis_key_prefix,
                             fail_mode=settings.rate_limit_fail_mode)
    return MemoryRateLimiter(settings.rate_limit_quota, max_keys=settings.rate_limit_max_agents)


def _fan_out(*observers: Callable[[CallStats], None]) -> Callable[[CallStats], None]:
    """One ``VaultClient`` observer calling several (metrics, the audit trail's Vault request ids, tracing)."""

    def observe(stats: CallStats) -> None:
        for observer in observers:
            observer(stats)

    return observe


def _log_breaker(old: str, new: str) -> None:
    log.warning("vault.breaker.changed", old=old, new=new)


CleanupCtx = Callable[[web.Application], AsyncIterator[None]]


def _resource_ctx(start: Callable[[], object], stop: Callable[[], object]) -> CleanupCtx:
    """``start()`` at startup (raising stops it), ``stop()`` at cleanup (awaited when it is a coroutine)."""

    async def ctx(app: web.Application) -> AsyncIterator[None]:
        start()
        try:
            yield
        finally:
            stopped = stop()
            if inspect.isawaitable(stopped):
                await stopped

    return ctx


def _jwks_ctx(jwks: JwksCache) -> CleanupCtx:
    """The JWK Set's HTTP session (URL source) and its first load; a failed load is retried on demand."""

    async def ctx(app: web.Application) -> AsyncIterator[None]:
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

    return ctx


def _api_keys_file_ctx(watcher: ApiKeyFile) -> CleanupCtx:
    """``API_KEYS_FILE``: its watcher task (re-reads the file when it changes; SIGHUP wakes it, see cli.serve)."""

    async def ctx(app: web.Application) -> AsyncIterator[None]:
        await watcher.prime()
        async with _background(watcher.run(), "api-keys-file-watcher"):
            yield

    return ctx


def _vault_ctx(settings: Settings, auth: AuthChain, vault: VaultClient, keeper: TokenKeeper,
               children: ChildTokenBroker | None, probe: VaultProbe) -> CleanupCtx:
    """The token keeper's background task and the readiness probe; at shutdown the cached child tokens and the
    bridge's own AppRole token are revoked and the Vault pool closed."""

    async def ctx(app: web.Application) -> AsyncIterator[None]:
        log.info("bridge.started", vault_addr=safe_url(settings.vault_addr), auth_methods=auth.methods)
        try:
            first_round = min(settings.vault_timeout, settings.ready_probe_interval)
            async with _background(keeper.run(), "vault-token-keeper"), running(probe, first_round):
                yield
        finally:
            if children is not None:
                await children.close()  # revokes the cached service child tokens
            await keeper.revoke()  # an AppRole login token (never a static VAULT_TOKEN)
            await vault.close()

    return ctx


def _changes_ctx(hub: ChangeHub) -> CleanupCtx:
    """The change hub's bus subscriber and poller; its Redis connections closed at shutdown."""

    async def ctx(app: web.Application) -> AsyncIterator[None]:
        try:
            async with _background(hub.run(), "mcp-changes"):
                yield
        finally:
            hub.shutdown()
            await hub.close()

    return ctx


def _quarantine_ctx(quarantine: Quarantine, leases: LeaseKeeper) -> CleanupCtx:
    """The quarantine state, loaded before the first request and followed (polling, Redis); the idle-lease watch."""

    async def ctx(app: web.Application) -> AsyncIterator[None]:
        await quarantine.start()
        try:
            async with _background(quarantine.run(), "quarantine-watch"), \
                    _background(leases.run(), "lease-idle-watch"):
                yield
        finally:
            await quarantine.close()
            await leases.tokens.close()

    return ctx


def _intake_ctx(flow: IntakeFlow) -> CleanupCtx:
    """Deletes the records of expired intake links now and then (every half ``INTAKE_TTL``, 30 s to 5 min)."""
    interval = min(max(flow.codec.ttl / 2, 30.0), 300.0)

    async def ctx(app: web.Application) -> AsyncIterator[None]:
        async with _background(flow.run_purge(interval), "intake-purge"):
            yield

    return ctx


@contextlib.asynccontextmanager
async def _background(job: Coroutine[Any, Any, None], name: str) -> AsyncIterator[None]:
    """Run ``job`` as a task while the block runs; cancel and await it after."""
    task = asyncio.create_task(job, name=name)
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
