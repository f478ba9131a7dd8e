"""Prometheus metrics: one :class:`Metrics` per app (its own ``CollectorRegistry``), served at ``GET /metrics``.

Label values are always drawn from small, code-defined sets (route templates, HTTP methods, status codes,
auth methods, Vault operation names, error kinds, MCP tool names): never a secret, a path below the agent, a
key name or a token. Agent ids become a label only when ``METRICS_AGENT_LABELS=true``.

The ``observe_*`` methods are the hooks other parts call:

- :meth:`Metrics.observe_vault` is the ``VaultClient`` observer (``CallStats`` per Vault call);
- :meth:`Metrics.token_event` is the ``TokenKeeper`` ``on_event`` callback (``renewal`` / ``login``);
- :meth:`Metrics.watch_child_tokens` exports the child-token broker's mint / cache-hit / renewal counters;
- :meth:`Metrics.operation` is the executor's observer: MCP tool calls by tool and outcome;
- :meth:`Metrics.canary_tripped` is the canary watch's counter (``bridge_canary_trips_total{operation, how}``);
- :func:`metrics_middleware` records every HTTP request (and feeds the status page's
  :class:`~bridge.ops.stats.OpsStats`).
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator

from aiohttp import web
from aiohttp.typedefs import Middleware
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.registry import Collector

from bridge.errors import BridgeError, code_for_status
from bridge.ops.stats import OpsStats
from bridge.routing import ERROR_CODE, IDENTITY, REQUEST_ID, Handler, route_template
from bridge.vault.client import CallStats

REQUEST_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
VAULT_BUCKETS = (0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

_TOKEN_EVENTS = frozenset({"renewal", "login"})
_CHILD_EVENTS = (("mint", "mints"), ("cache_hit", "reuses"), ("renewal", "renewals"), ("revoke", "revocations"),
                 ("rejected", "rejected"))
_MCP_TOOL_RE = re.compile(r"^[a-z][a-z0-9_.-]{0,63}$")
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
_CANARY_HOWS = frozenset({"read", "reference", "wrap", "broker", "transit"})


class _ChildTokenCollector(Collector):
    """``bridge_child_token_events_total{event}`` from the broker's own counters (no hook in its hot path)."""

    def __init__(self) -> None:
        self.source: object | None = None

    def describe(self) -> list[Metric]:
        return [CounterMetricFamily("bridge_child_token_events", _CHILD_DOC, labels=["event"])]

    def collect(self) -> Iterator[Metric]:
        family = CounterMetricFamily("bridge_child_token_events", _CHILD_DOC, labels=["event"])
        for event, attr in _CHILD_EVENTS:
            value = getattr(self.source, attr, 0) if self.source is not None else 0
            family.add_metric([event], float(value if isinstance(value, int | float) else 0))
        yield family


_CHILD_DOC = "Child-token broker events: mints, cache hits (reuses), renewals, revocations, rejections."


def error_kind(outcome: str) -> str:
    """``VaultNotFoundError`` → ``not_found``; ``VaultError`` → ``error``; ``ok`` stays ``ok``."""
    if outcome == "ok":
        return "ok"
    core = outcome.removeprefix("Vault").removesuffix("Error") or "error"
    snake = re.sub(r"(?<!^)(?=[A-Z])", "_", core).lower()
    return snake if re.fullmatch(r"[a-z_]{1,40}", snake) else "other"


class Metrics:
    """The bridge's collectors, registered in a registry owned by this object (one per app)."""

    def __init__(self, *, agent_labels: bool = False) -> None:
        self.agent_labels = agent_labels
        self.registry = CollectorRegistry(auto_describe=True)
        agent = ["agent"] if agent_labels else []
        reg = self.registry
        self.requests = Counter(
            "bridge_http_requests", "HTTP requests by route template, method, status and auth method.",
            ["route", "method", "status", "auth_method", *agent], registry=reg)
        self.request_seconds = Histogram(
            "bridge_http_request_duration_seconds", "HTTP request latency by route template and method.",
            ["route", "method"], buckets=REQUEST_BUCKETS, registry=reg)
        self.vault_seconds = Histogram(
            "bridge_vault_request_duration_seconds", "Latency of calls to Vault by operation.",
            ["operation"], buckets=VAULT_BUCKETS, registry=reg)
        self.vault_errors = Counter(
            "bridge_vault_errors", "Failed Vault calls by operation and error kind.",
            ["operation", "kind"], registry=reg)
        self.token_events = Counter(
            "bridge_vault_token_events", "The bridge token's renewals and (re-)logins.", ["event"], registry=reg)
        self.child_tokens = _ChildTokenCollector()
        reg.register(self.child_tokens)
        self.rate_limited = Counter(
            "bridge_rate_limit_rejections", "Requests refused by the bridge's per-agent rate limit.",
            [*agent], registry=reg)
        self.mcp_calls = Counter(
            "bridge_mcp_tool_calls", "MCP tool calls by tool and outcome (ok or error code).",
            ["tool", "outcome"], registry=reg)
        self.audit_failures = Counter(
            "bridge_audit_write_failures", "Audit records that could not be written.", registry=reg)
        self.canary_trips = Counter(
            "bridge_canary_trips", "Canary secrets used by an agent, by operation and how (bridge/canary.py).",
            ["operation", "how"], registry=reg)
        for event in sorted(_TOKEN_EVENTS):
            self.token_events.labels(event=event)
        # each label set's children, looked up once: ``labels(**kw)`` validates and joins the values on every call.
        # Bounded as the label values are (code-defined sets; agents only with METRICS_AGENT_LABELS, as in the
        # collectors themselves).
        self._request_children: dict[tuple[str, str, int, str, str], tuple[Counter, Histogram]] = {}
        self._vault_children: dict[str, Histogram] = {}

    # -- hooks ---------------------------------------------------------------------------------------

    def observe_request(self, *, route: str, method: str, status: int, auth_method: str, agent: str,
                        duration: float) -> None:
        key = (route, method, status, auth_method, agent if self.agent_labels else "")
        children = self._request_children.get(key)
        if children is None:
            method = method if method in _METHODS else "OTHER"
            labels = {"route": route, "method": method, "status": str(status), "auth_method": auth_method}
            if self.agent_labels:
                labels["agent"] = agent
            children = self._request_children[key] = (self.requests.labels(**labels),
                                                       self.request_seconds.labels(route=route, method=method))
        children[0].inc()
        children[1].observe(duration)

    def observe_vault(self, stats: CallStats) -> None:
        """The ``VaultClient`` observer."""
        child = self._vault_children.get(stats.operation)
        if child is None:
            child = self._vault_children[stats.operation] = self.vault_seconds.labels(operation=stats.operation)
        child.observe(stats.duration)
        if stats.outcome != "ok":
            self.vault_errors.labels(operation=stats.operation, kind=error_kind(stats.outcome)).inc()

    def token_event(self, event: str) -> None:
        """The ``TokenKeeper`` ``on_event`` callback."""
        self.token_events.labels(event=event if event in _TOKEN_EVENTS else "other").inc()

    def watch_child_tokens(self, stats: object) -> None:
        """Export the child-token broker's counters (its ``BrokerStats``), read at scrape time."""
        self.child_tokens.source = stats

    def rate_limit_rejected(self, agent: str) -> None:
        if self.agent_labels:
            self.rate_limited.labels(agent=agent).inc()
        else:
            self.rate_limited.inc()

    def operation(self, name: str, transport: str, outcome: str) -> None:
        """The executor's observer: ``outcome`` is ``ok`` or a bridge error code. MCP tool calls are counted
        (REST requests are counted per route by ``bridge_http_requests``); unknown-looking names are folded."""
        if transport != "mcp":
            return
        self.mcp_calls.labels(tool=name if _MCP_TOOL_RE.match(name) else "other",
                              outcome=outcome if re.fullmatch(r"[a-z_]{1,40}", outcome) else "other").inc()

    def canary_tripped(self, operation: str, how: str) -> None:
        """The canary watch's counter hook (``bridge.canary.CanaryWatch``); names outside the known sets fold."""
        self.canary_trips.labels(operation=operation if _MCP_TOOL_RE.match(operation) else "other",
                                 how=how if how in _CANARY_HOWS else "other").inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)


def metrics_middleware(metrics: Metrics, stats: OpsStats) -> Middleware:
    """Records every request in ``metrics`` and ``stats``. Sits inside the error renderer so it sees a
    ``BridgeError``'s code (``rate_limited`` counts as a rate-limit rejection)."""
    @web.middleware
    async def record_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        started = time.perf_counter()
        status = 500
        code = "internal_error"
        try:
            response = await handler(request)
            status = response.status
            code = "" if status < 400 else request.get(ERROR_CODE) or code_for_status(status)
            return response
        except BridgeError as err:
            status, code = err.status, err.code
            raise
        except web.HTTPException as exc:
            status, code = exc.status, ("" if exc.status < 400 else code_for_status(exc.status))
            raise
        finally:
            identity = request.get(IDENTITY)
            agent = identity.subject if identity else ""
            route = route_template(request)
            metrics.observe_request(route=route, method=request.method, status=status,
                                    auth_method=identity.auth_method if identity else "none",
                                    agent=agent or "-", duration=time.perf_counter() - started)
            if code == "rate_limited":
                metrics.rate_limit_rejected(agent or "-")
            stats.record(agent=agent, status=status, code=code, request_id=request.get(REQUEST_ID, ""), route=route)

    return record_middleware


def metrics_handler(metrics: Metrics) -> Handler:
    """``GET /metrics``: the Prometheus text format."""

    async def serve_metrics(request: web.Request) -> web.Response:
        resp = web.Response(body=metrics.render())
        resp.headers["Content-Type"] = CONTENT_TYPE_LATEST
        return resp

    return serve_metrics
