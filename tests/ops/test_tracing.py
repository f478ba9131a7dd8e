"""OpenTelemetry tracing, exported with OTLP/HTTP to an in-process collector and decoded with the OTLP protos."""

from __future__ import annotations

import secrets
from collections.abc import Callable
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from bridge.app import create_app
from bridge.config import Settings
from tests.conftest import API_KEY_ALICE

pytest.importorskip("opentelemetry.sdk")
pytest.importorskip("opentelemetry.exporter.otlp.proto.http")

pytestmark = pytest.mark.integration


async def test_request_and_vault_spans_reach_the_collector(
    aiohttp_server: Callable[..., Any], aiohttp_client: Callable[..., Any], make_settings: Callable[..., Settings],
    capsys: pytest.CaptureFixture[str],
) -> None:
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

    received: list[ExportTraceServiceRequest] = []

    async def traces(request: web.Request) -> web.Response:
        msg = ExportTraceServiceRequest()
        msg.ParseFromString(await request.read())
        received.append(msg)
        return web.Response(body=b"", content_type="application/x-protobuf")

    collector_app = web.Application()
    collector_app.router.add_post("/v1/traces", traces)
    collector: TestServer = await aiohttp_server(collector_app)

    client = await aiohttp_client(create_app(make_settings(
        otel_exporter_otlp_endpoint=str(collector.make_url("")).rstrip("/"), otel_service_name="bridge-test")))
    path = f"trace-{secrets.token_hex(4)}/db"
    incoming_trace = secrets.token_hex(16)
    headers = {"X-API-Key": API_KEY_ALICE, "traceparent": f"00-{incoming_trace}-{secrets.token_hex(8)}-01"}
    resp = await client.put(f"/secrets/{path}", json={"data": {"pw": "trace-canary"}}, headers=headers)
    assert resp.status == 200
    assert resp.headers["traceparent"].split("-")[1] == incoming_trace
    assert (await client.get(f"/secrets/{path}", headers={"X-API-Key": API_KEY_ALICE})).status == 200
    await client.close()  # cleanup flushes the batch processor to the collector

    spans = [(span, rs.resource) for msg in received for rs in msg.resource_spans for ss in rs.scope_spans
             for span in ss.spans]
    by_name: dict[str, list[Any]] = {}
    for span, _ in spans:
        by_name.setdefault(span.name, []).append(span)
    assert {"PUT /secrets/{tail}", "GET /secrets/{tail}", "vault kv.write", "vault kv.read"} <= set(by_name)
    put = by_name["PUT /secrets/{tail}"][0]
    write = by_name["vault kv.write"][0]
    assert put.trace_id.hex() == incoming_trace
    assert write.trace_id == put.trace_id
    assert write.parent_span_id == put.span_id
    attrs = {a.key: a.value for a in put.attributes}
    assert attrs["http.route"].string_value == "/secrets/{tail}"
    assert attrs["http.response.status_code"].int_value == 200
    resource = {a.key: a.value.string_value for a in spans[0][1].attributes}
    assert resource["service.name"] == "bridge-test"
    dump = b"".join(m.SerializeToString() for m in received)
    assert path.encode() not in dump
    assert b"trace-canary" not in dump
    assert API_KEY_ALICE.encode() not in dump
    # the trace id is in the request's log lines (the access log included)
    out = capsys.readouterr().out
    assert any(incoming_trace in line and "http.request" in line for line in out.splitlines())
