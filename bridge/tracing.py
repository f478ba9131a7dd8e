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
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Any

import structlog
from aiohttp import web

from bridge.vault.client import CallStats

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.trace import Tracer

log = structlog.get_logger("bridge.tracing")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class Tracing:
    """The app's tracer and provider."""

    def __init__(self, provider: TracerProvider, tracer: Tracer) -> None:
        self.provider = provider
        self.tracer = tracer

    @classmethod
    def create(cls, endpoint: str, service_name: str, *, schedule_delay_ms: int = 2000) -> Tracing:
        try:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
            from opentelemetry.sdk.resources import Resource
            from opentelemetry.sdk.trace import TracerProvider
            from opentelemetry.sdk.trace.export import BatchSpanProcessor
        except ImportError as exc:
            raise RuntimeError("OTEL_EXPORTER_OTLP_ENDPOINT is set but OpenTelemetry is not installed: "
                               "pip install 'vault-mcp-bridge[otel]'") from exc
        provider = TracerProvider(resource=Resource.create({"service.name": service_name}))
        exporter = OTLPSpanExporter(endpoint=endpoint.rstrip("/") + "/v1/traces", timeout=5)
        provider.add_span_processor(BatchSpanProcessor(exporter, schedule_delay_millis=schedule_delay_ms))
        return cls(provider, provider.get_tracer("bridge"))

    def vault_span(self, stats: CallStats) -> None:
        """A ``VaultClient`` observer: one client span per Vault call, child of the current request span."""
        from opentelemetry.trace import SpanKind, Status, StatusCode

        end = time.time_ns()
        span = self.tracer.start_span(
            f"vault {stats.operation}", kind=SpanKind.CLIENT, start_time=end - int(stats.duration * 1e9),
            attributes={"vault.operation": stats.operation, "vault.outcome": stats.outcome,
                        "vault.request_id": stats.request_id})
        if stats.outcome != "ok":
            span.set_status(Status(StatusCode.ERROR, stats.outcome))
        span.end(end_time=end)

    async def shutdown(self) -> None:
        await asyncio.to_thread(self.provider.shutdown)  # flushes with blocking HTTP: off the event loop


async def tracing_ctx(app: web.Application) -> AsyncIterator[None]:
    from bridge.keys import SETTINGS, TRACING

    settings = app[SETTINGS]
    tracing = Tracing.create(settings.otel_exporter_otlp_endpoint, settings.otel_service_name)
    app[TRACING] = tracing
    log.info("tracing.enabled", endpoint=settings.otel_exporter_otlp_endpoint)
    try:
        yield
    finally:
        await tracing.shutdown()


@web.middleware
async def tracing_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Outermost middleware (when tracing is on): the request span and ``trace_id`` in the log context."""
    from opentelemetry.trace import SpanKind, Status, StatusCode
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    from bridge.keys import TRACING
    from bridge.metrics import route_label

    tracing = request.app.get(TRACING)
    if tracing is None:
        return await handler(request)
    carrier = {k.lower(): v for k, v in request.headers.items() if k.lower() in ("traceparent", "tracestate")}
    parent = TraceContextTextMapPropagator().extract(carrier)
    route = route_label(request)
    attributes: dict[str, Any] = {"http.request.method": request.method, "http.route": route,
                                  "url.scheme": request.scheme}
    with tracing.tracer.start_as_current_span(f"{request.method} {route}", context=parent, kind=SpanKind.SERVER,
                                              attributes=attributes) as span:
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


def vault_observers(app: web.Application) -> list[Callable[[CallStats], None]]:
    """The tracing observer for the ``VaultClient`` when tracing is on."""
    from bridge.keys import TRACING

    tracing = app.get(TRACING)
    return [tracing.vault_span] if tracing is not None else []
