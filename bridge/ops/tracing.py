"""Optional OpenTelemetry tracing: on when ``OTEL_EXPORTER_OTLP_ENDPOINT`` is set (extra ``[otel]``).

One server span per HTTP request (``GET /secrets/{tail}``: the route template, never the concrete path), W3C
``traceparent`` honoured when a client sends one, and one client span per Vault call (``vault kv.read``) as its
child, built from the ``VaultClient`` observer's ``CallStats``. The trace id is bound into the structlog
context, so every log line of the request (the access log included) carries ``trace_id``. Spans are exported
with OTLP/HTTP (protobuf) to ``{OTEL_EXPORTER_OTLP_ENDPOINT}/v1/traces`` by a batch processor; its provider
belongs to the app (no global tracer provider is installed) and is flushed and shut down at cleanup.

Span attributes are allow-listed: method, route template, status, Vault operation, outcome and Vault request
id. No path, value, key name, header or token.
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, Any

import structlog
from aiohttp import web
from aiohttp.typedefs import Middleware

from bridge.routing import Handler, route_template
from bridge.vault.client import CallStats

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.trace import Tracer

log = structlog.get_logger("bridge.tracing")


def _require_otel() -> None:
    try:
        import opentelemetry.sdk.trace  # noqa: F401
    except ImportError as exc:
        raise RuntimeError("OTEL_EXPORTER_OTLP_ENDPOINT is set but OpenTelemetry is not installed: "
                           "pip install 'vault-mcp-bridge[otel]'") from exc


class Tracing:
    """The app's tracer and its provider (made by :meth:`start`, in ``cleanup_ctx``; flushed by
    :meth:`shutdown`)."""

    def __init__(self, endpoint: str, service_name: str, *, schedule_delay_ms: int = 2000) -> None:
        self.endpoint = endpoint
        self.service_name = service_name
        self._schedule_delay_ms = schedule_delay_ms
        self._provider: TracerProvider | None = None
        self._tracer: Tracer | None = None

    @property
    def tracer(self) -> Tracer:
        assert self._tracer is not None, "tracing is not started"
        return self._tracer

    def start(self) -> None:
        _require_otel()
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor

        provider = TracerProvider(resource=Resource.create({"service.name": self.service_name}))
        exporter = OTLPSpanExporter(endpoint=self.endpoint.rstrip("/") + "/v1/traces", timeout=5)
        provider.add_span_processor(BatchSpanProcessor(exporter, schedule_delay_millis=self._schedule_delay_ms))
        self._provider = provider
        self._tracer = provider.get_tracer("bridge")
        log.info("tracing.enabled", endpoint=self.endpoint)

    def vault_span(self, stats: CallStats) -> None:
        """A ``VaultClient`` observer: one client span per Vault call, child of the current request span."""
        from opentelemetry.trace import SpanKind, Status, StatusCode

        if self._tracer is None:
            return
        end = time.time_ns()
        span = self._tracer.start_span(
            f"vault {stats.operation}", kind=SpanKind.CLIENT, start_time=end - int(stats.duration * 1e9),
            attributes={"vault.operation": stats.operation, "vault.outcome": stats.outcome,
                        "vault.request_id": stats.request_id})
        if stats.outcome != "ok":
            span.set_status(Status(StatusCode.ERROR, stats.outcome))
        span.end(end_time=end)

    async def shutdown(self) -> None:
        if self._provider is not None:
            await asyncio.to_thread(self._provider.shutdown)  # flushes with blocking HTTP: off the event loop


def tracing_middleware(tracing: Tracing) -> Middleware:
    """Outermost middleware (when tracing is on): the request span and ``trace_id`` in the log context."""
    _require_otel()
    from opentelemetry.trace import SpanKind, Status, StatusCode
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    propagator = TraceContextTextMapPropagator()

    @web.middleware
    async def trace_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        carrier = {k.lower(): v for k, v in request.headers.items() if k.lower() in ("traceparent", "tracestate")}
        parent = propagator.extract(carrier)
        route = route_template(request)
        attributes: dict[str, Any] = {"http.request.method": request.method, "http.route": route,
                                      "url.scheme": request.scheme}
        with tracing.tracer.start_as_current_span(f"{request.method} {route}", context=parent,
                                                  kind=SpanKind.SERVER, attributes=attributes) as span:
            trace_id = format(span.get_span_context().trace_id, "032x")
            structlog.contextvars.bind_contextvars(trace_id=trace_id)
            status = 500
            try:
                response = await handler(request)
                status = response.status
                response.headers["traceparent"] = (
                    f"00-{trace_id}-{format(span.get_span_context().span_id, '016x')}-01")
                return response
            except web.HTTPException as exc:
                status = exc.status
                raise
            finally:
                span.set_attribute("http.response.status_code", status)
                if status >= 500:
                    span.set_status(Status(StatusCode.ERROR))
                structlog.contextvars.unbind_contextvars("trace_id")

    return trace_middleware
