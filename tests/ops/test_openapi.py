"""``GET /openapi.json``: a valid OpenAPI 3.1 document covering every REST route, fuzzed with schemathesis
against a live bridge and a real OpenBao (no 5xx; every status, content type and body matches the document)."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

import pytest
from openapi_spec_validator import validate

from bridge.keys import PUBLIC_ROUTES
from bridge.operations import default_registry
from bridge.ops.openapi import EXCLUDED_ROUTES, build_openapi, documented_routes, rows
from tests.conftest import API_KEY_ALICE, OpsClient

FUZZ_SEED = os.environ.get("OPS_FUZZ_SEED", "20261128")
FUZZ_EXAMPLES = os.environ.get("OPS_FUZZ_EXAMPLES", "10")
FUZZ_TIMEOUT = 60.0
REGISTRY = default_registry()
OPERATIONS = rows(REGISTRY)


def test_document_is_valid_openapi_31() -> None:
    doc = build_openapi(REGISTRY)
    validate(doc)  # raises on any violation of the OpenAPI 3.1 schema
    assert doc["openapi"] == "3.1.0"
    schemes = doc["components"]["securitySchemes"]
    assert schemes["apiKey"] == {"type": "apiKey", "in": "header", "name": "X-API-Key",
                                 "description": "A key from API_KEYS_JSON."}
    assert schemes["bearerJWT"]["scheme"] == "bearer"
    assert schemes["bearerJWT"]["bearerFormat"] == "JWT"
    ids = [op["operationId"] for item in doc["paths"].values() for op in item.values()]
    assert len(ids) == len(set(ids)) == len(OPERATIONS)
    for item in doc["paths"].values():
        for op in item.values():
            for status, resp in op["responses"].items():
                if (int(status) >= 400 and "content" in resp and status != "503") or status in ("401", "404"):
                    assert resp["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/Error"}


def test_models_are_the_source_of_the_schemas() -> None:
    from bridge.models import WriteBody, WriteOut

    schemas = build_openapi(REGISTRY)["components"]["schemas"]
    assert schemas["WriteOut"]["properties"].keys() == WriteOut.model_fields.keys()
    assert schemas["WriteBody"]["required"] == ["data"]
    assert schemas["WriteBody"]["additionalProperties"] is False
    assert set(WriteBody.model_fields) == set(schemas["WriteBody"]["properties"])


async def test_every_named_route_is_documented(ops_client: OpsClient) -> None:
    client = await ops_client()
    app = client.app
    named = {r.name for r in app.router.routes() if r.name}
    missing = named - documented_routes(REGISTRY) - EXCLUDED_ROUTES
    assert not missing, f"routes without an OpenAPI row in bridge/ops/openapi.py: {sorted(missing)}"
    doc = build_openapi(REGISTRY)
    for op in OPERATIONS:
        assert op.route in named, f"{op.route} is documented but not registered"
        operation = doc["paths"][op.path][op.method.lower()]
        assert (operation.get("security") == []) == (op.route in app[PUBLIC_ROUTES]), op.route


async def test_served_document(ops_client: OpsClient) -> None:
    client = await ops_client()
    resp = await client.get("/openapi.json")
    assert resp.status == 200
    assert await resp.json() == build_openapi(REGISTRY)


@pytest.mark.integration
async def test_schemathesis_against_live_bridge(ops_client: OpsClient, tmp_path: Path) -> None:
    client = await ops_client(jwt_issuer="https://issuer.example", jwt_audience="vault-mcp-bridge")
    url = str(client.make_url("/openapi.json"))
    st = Path(sys.executable).parent / "st"
    proc = await asyncio.create_subprocess_exec(
        str(st), "run", url,
        "--checks", "not_a_server_error,status_code_conformance,content_type_conformance,"
                    "response_schema_conformance",
        "-H", f"X-API-Key: {API_KEY_ALICE}",
        "--max-examples", FUZZ_EXAMPLES, "--seed", FUZZ_SEED, "--workers", "1",
        "--request-timeout", "10", "--generation-database", "none", "--no-color",
        "--phases", "examples,coverage,fuzzing",
        "--report", "junit", "--report-junit-path", str(tmp_path / "schemathesis.xml"),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT, cwd=tmp_path,
        env={**os.environ, "SCHEMATHESIS_HOOKS": ""},
    )
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), FUZZ_TIMEOUT)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        pytest.fail(f"schemathesis did not finish within {FUZZ_TIMEOUT}s")
    text = out.decode(errors="replace")
    summary = text[text.rfind("SUMMARY"):] if "SUMMARY" in text else text[-4000:]
    assert proc.returncode == 0, text[-12000:]
    assert "passed" in summary, summary
    assert "Tested:" in summary, summary
    tested = int(summary.split("Tested:")[1].split()[0])
    # every documented operation but the document itself (schemathesis does not fuzz the schema's own URL)
    assert tested == len({(op.method, op.path) for op in OPERATIONS if op.path != "/openapi.json"}), summary
