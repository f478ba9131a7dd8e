"""Prometheus metrics: one :class:`Metrics` per app (its own ``CollectorRegistry``), served at ``GET /metrics``.

Label values are always drawn from small, code-defined sets (route templates, HTTP methods, status codes,
auth methods, Vault operation names, error kinds, MCP tool names): never a secret, a path below the agent, a
key name or a token. Agent ids become a label only when ``METRICS_AGENT_LABELS=true``.

The ``observe_*`` methods are the hooks other parts call:

- :meth:`Metrics.observe_vault` is the ``VaultClient`` observer (``CallStats`` per Vault call);
- :meth:`Metrics.token_event` is the ``TokenKeeper`` ``on_event`` callback (``renewal`` / ``login``);
- :meth:`Metrics.watch_child_tokens` exports the child-token broker's mint / cache-hit / renewal counters;
- :meth:`Metrics.mcp_call` counts MCP tool calls by tool and outcome;
- :func:`metrics_middleware` records every HTTP request (and feeds the status page's :class:`OpsStats`, the
  small bounded in-memory per-minute/per-agent statistics kept here too).
"""

from __future__ import annotations

import re
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.registry import Collector

from bridge.errors import BridgeError, code_for_status
from bridge.vault.client import CallStats

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

REQUEST_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
VAULT_BUCKETS = (0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

_TOKEN_EVENTS = frozenset({"renewal", "login"})
_CHILD_EVENTS = (("mint", "mints"), ("cache_hit", "reuses"), ("renewal", "renewals"), ("revoke", "revocations"),
                 ("rejected", "rejected"))
_MCP_TOOL_RE = re.compile(r"^[a-z][a-z0-9_.-]{0,63}$")
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


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
        for event in sorted(_TOKEN_EVENTS):
            self.token_events.labels(event=event)

    # -- hooks ---------------------------------------------------------------------------------------

    def observe_request(self, *, route: str, method: str, status: int, auth_method: str, agent: str,
                        duration: float) -> None:
        method = method if method in _METHODS else "OTHER"
        labels = {"route": route, "method": method, "status": str(status), "auth_method": auth_method}
        if self.agent_labels:
            labels["agent"] = agent
        self.requests.labels(**labels).inc()
        self.request_seconds.labels(route=route, method=method).observe(duration)

    def observe_vault(self, stats: CallStats) -> None:
        """The ``VaultClient`` observer."""
        self.vault_seconds.labels(operation=stats.operation).observe(stats.duration)
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

    def mcp_call(self, tool: str, outcome: str) -> None:
        """MCP hook: ``outcome`` is ``ok`` or a bridge error code. Unknown-looking tool names are folded."""
        self.mcp_calls.labels(tool=tool if _MCP_TOOL_RE.match(tool) else "other",
                              outcome=outcome if re.fullmatch(r"[a-z_]{1,40}", outcome) else "other").inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)


def route_label(request: web.Request) -> str:
    """The route's template (``/secrets/{tail}``), never the concrete path."""
    resource = request.match_info.route.resource
    return resource.canonical if resource is not None else "<unmatched>"


@dataclass(slots=True)
class _AgentCount:
    requests: int = 0
    rejections: int = 0
    errors: int = 0


@dataclass(slots=True)
class _Minute:
    minute: int
    requests: int = 0
    errors: int = 0
    rejections: int = 0
    agents: dict[str, _AgentCount] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class AgentRow:
    agent: str
    requests: int
    rejections: int
    errors: int
    last_seen: float


@dataclass(frozen=True, slots=True)
class ErrorRow:
    at: float
    status: int
    code: str
    request_id: str
    route: str


@dataclass(frozen=True, slots=True)
class MinuteRow:
    minute_start: float
    requests: int
    errors: int
    rejections: int


OTHER_AGENTS = "(other)"


class OpsStats:
    """Small, bounded, in-memory request statistics for the status page.

    Per-minute buckets for the last ``minutes`` minutes (requests, errors, rate-limit rejections, and per
    agent), the last-seen time of at most ``max_agents`` agents, and the last ``max_errors`` errors (status,
    code, route template and request id only). Agents beyond ``max_agents`` in a minute count as ``(other)``.
    """

    def __init__(self, *, minutes: int = 30, max_agents: int = 500, max_errors: int = 50,
                 clock: Callable[[], float] = time.time) -> None:
        self.minutes = minutes
        self.max_agents = max_agents
        self._clock = clock
        self._buckets: deque[_Minute] = deque(maxlen=minutes)
        self._last_seen: dict[str, float] = {}
        self._errors: deque[ErrorRow] = deque(maxlen=max_errors)
        self.total = 0

    def _bucket(self, now: float) -> _Minute:
        minute = int(now // 60)
        if not self._buckets or self._buckets[-1].minute != minute:
            self._buckets.append(_Minute(minute))
        return self._buckets[-1]

    def record(self, *, agent: str, status: int, code: str, request_id: str, route: str) -> None:
        now = self._clock()
        bucket = self._bucket(now)
        self.total += 1
        bucket.requests += 1
        rejected = code == "rate_limited"
        failed = status >= 400
        bucket.rejections += rejected
        bucket.errors += failed
        if agent:
            key = agent if (agent in bucket.agents or len(bucket.agents) < self.max_agents) else OTHER_AGENTS
            count = bucket.agents.setdefault(key, _AgentCount())
            count.requests += 1
            count.rejections += rejected
            count.errors += failed
            if agent not in self._last_seen and len(self._last_seen) >= self.max_agents:
                del self._last_seen[min(self._last_seen, key=self._last_seen.__getitem__)]
            self._last_seen[agent] = now
        if failed:
            self._errors.append(ErrorRow(now, status, code or code_for_status(status), request_id, route))

    def per_minute(self) -> list[MinuteRow]:
        """One row per minute of the window, oldest first, zeros where nothing happened."""
        current = int(self._clock() // 60)
        by_minute = {b.minute: b for b in self._buckets}
        rows = []
        for minute in range(current - self.minutes + 1, current + 1):
            b = by_minute.get(minute)
            rows.append(MinuteRow(minute * 60.0, b.requests if b else 0, b.errors if b else 0,
                                  b.rejections if b else 0))
        return rows

    def agents(self) -> list[AgentRow]:
        """Agents active in the window, busiest first."""
        horizon = int(self._clock() // 60) - self.minutes
        totals: dict[str, _AgentCount] = {}
        for b in self._buckets:
            if b.minute <= horizon:
                continue
            for agent, c in b.agents.items():
                t = totals.setdefault(agent, _AgentCount())
                t.requests += c.requests
                t.rejections += c.rejections
                t.errors += c.errors
        rows = [AgentRow(a, c.requests, c.rejections, c.errors, self._last_seen.get(a, 0.0))
                for a, c in totals.items()]
        return sorted(rows, key=lambda r: (-r.requests, r.agent))

    def recent_errors(self) -> list[ErrorRow]:
        """Most recent first."""
        return list(reversed(self._errors))


@web.middleware
async def metrics_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Records every request in the app's :class:`Metrics` and :class:`OpsStats`.

    Sits inside the error renderer so it sees a ``BridgeError``'s code (``rate_limited`` counts as a
    rate-limit rejection).
    """
    from bridge.keys import ERROR_CODE, IDENTITY, METRICS, OPS_STATS, REQUEST_ID

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
        route = route_label(request)
        metrics = request.app[METRICS]
        metrics.observe_request(route=route, method=request.method, status=status,
                                auth_method=identity.auth_method if identity else "none",
                                agent=agent or "-", duration=time.perf_counter() - started)
        if code == "rate_limited":
            metrics.rate_limit_rejected(agent or "-")
        request.app[OPS_STATS].record(agent=agent, status=status, code=code,
                                      request_id=request.get(REQUEST_ID, ""), route=route)


async def metrics_handler(request: web.Request) -> web.Response:
    from bridge.keys import METRICS

    body = request.app[METRICS].render()
    resp = web.Response(body=body)
    resp.headers["Content-Type"] = CONTENT_TYPE_LATEST
    return resp


def fan_out(*observers: Callable[[CallStats], None]) -> Callable[[CallStats], None]:
    """One ``VaultClient`` observer calling several (metrics, audit)."""

    def observe(stats: CallStats) -> None:
        for observer in observers:
            observer(stats)

    return observe
