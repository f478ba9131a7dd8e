"""Operating the bridge: Prometheus metrics (:mod:`~bridge.ops.metrics`), the status page and its request
statistics (:mod:`~bridge.ops.status`, :mod:`~bridge.ops.stats`), OpenTelemetry tracing
(:mod:`~bridge.ops.tracing`) and the OpenAPI document (:mod:`~bridge.ops.openapi`)."""
