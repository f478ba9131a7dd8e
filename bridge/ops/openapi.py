"""``GET /openapi.json``: the OpenAPI 3.1 document of every REST route.

Each operation of the registry with a REST binding is one row, derived from its declaration
(:mod:`bridge.operations`): method, path, summary, the URL's parameters, the body and response models (the one
source of truth, :mod:`bridge.models`). The few routes that are no operation (probes, metrics, the status page,
this document, the OAuth metadata, ``/echo-headers``) are the hand table :data:`ROUTES`. The JSON schemas come
from pydantic (JSON Schema 2020-12, which OpenAPI 3.1 uses as is). ``tests/ops/test_openapi.py`` fails when a
named route has no row, and runs schemathesis against a live bridge and a real OpenBao to check every response
against this document.

The MCP endpoint (JSON-RPC over Streamable HTTP) is not a REST route and is described in docs/mcp.md.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Literal

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field
from pydantic.json_schema import models_json_schema

import bridge
from bridge.models_dynamic import QuarantineBody, QuarantineOut
from bridge.operations import AnyOperation, Param, Registry
from bridge.operations.spec import AUTH_ERRORS
from bridge.routing import Handler

REF = "#/components/schemas/{model}"
INTAKE_TOKEN = Param("token", "path", {"type": "string", "pattern": r"^i1\.[A-Za-z0-9_-]{16,8000}\.[A-Za-z0-9_-]{43}$"},
                     "The link's token (i1.<payload>.<mac>), as kv_request_input made it.")
EXCLUDED_ROUTES = frozenset({"mcp", "mcp_get", "mcp_post", "mcp_delete", "mcp_options"})
"""Route names that are not REST (MCP's JSON-RPC endpoint)."""


# -- response shapes of routes that answer with plain dicts (kept here, checked against the live bridge) --

class VaultHealthOut(BaseModel):
    reachable: bool | None = Field(description="From the last probe round; null before the first one.")
    sealed: bool | None
    version: str | None
    initialized: bool | None = None
    checked_seconds_ago: float | None = Field(default=None, description="Age of the last probe round.")


class HealthOut(BaseModel):
    status: Literal["ok", "degraded"]
    vault: VaultHealthOut


class ReadyOut(BaseModel):
    model_config = ConfigDict(extra="allow")
    ready: bool
    vault: VaultHealthOut
    token_valid: bool


class EchoHeadersOut(BaseModel):
    headers: dict[str, str] = Field(description="The request headers; credentials are shown as [redacted].")


class ResourceMetadataOut(BaseModel):
    model_config = ConfigDict(extra="allow")
    resource: str
    authorization_servers: list[str] = Field(default_factory=list)
    scopes_supported: list[str] = Field(default_factory=list)


class ErrorDetail(BaseModel):
    model_config = ConfigDict(extra="allow")
    code: str = Field(description="Stable machine-readable error code, e.g. not_found, rate_limited.")
    message: str = Field(description="What went wrong and what to do; never contains a secret.")


class Error(BaseModel):
    error: ErrorDetail


# -- the route table -----------------------------------------------------------------------------------

AGENT = Param("agent", "path", {"type": "string", "pattern": "^[a-z0-9][a-z0-9_-]{0,63}$"}, "The agent id.")
ADMIN_ERRORS = (400, 401, 405, 408, 413, 415, 502, 503, 504)
"""The admin routes: a bad agent id or body, no admin key, Vault's state unavailable."""

EDGE_ERRORS = (403, 421)
"""What any route may answer before its handler: a foreign ``Origin`` (403) or ``Host`` (421)."""


@dataclass(frozen=True, slots=True)
class Op:
    """One documented route. ``route`` is the aiohttp route name it describes."""

    method: str
    path: str
    route: str
    summary: str
    tag: str
    response: type[BaseModel] | None = None
    status: int = 200
    body: type[BaseModel] | None = None
    public: bool = False
    params: tuple[Param, ...] = ()
    errors: tuple[int, ...] = AUTH_ERRORS
    media: str = "application/json"
    extra_responses: dict[int, str] = field(default_factory=dict)
    scopes: tuple[str, ...] = ()
    """The scopes any one of which allows the route (an operation's ``scopes``); documented as ``x-scopes``."""
    pages: tuple[int, ...] = ()
    """Error statuses the route answers with an HTML page (the intake pages): documented as ``text/html`` besides
    the JSON error the middlewares may answer with the same status."""

    @property
    def operation_id(self) -> str:
        suffix = self.path.rsplit(":", 1)[1] if ":" in self.path.rsplit("/", 1)[-1] else ""
        return f"{self.route}_{suffix}" if suffix else self.route


ROUTES: tuple[Op, ...] = (
    Op("GET", "/healthz", "healthz", "Liveness, with Vault's reachability and seal state from the background "
       "probe (never calls Vault).", "operations",
       HealthOut, public=True, errors=(405,)),
    Op("GET", "/readyz", "readyz", "Readiness from the background probe: Vault reachable, unsealed, and the "
       "bridge token valid.",
       "operations", ReadyOut, public=True, errors=(405,), extra_responses={503: "ReadyOut"}),
    Op("GET", "/openapi.json", "openapi", "This document.", "operations", public=True, errors=(405,),
       extra_responses={}),
    Op("GET", "/metrics", "metrics", "Prometheus metrics (text exposition format).", "operations",
       public=True, media="text/plain", errors=(405,)),
    Op("GET", "/status", "status", "Operator status page (HTML). Loopback / STATUS_ALLOWED_NETWORKS or an "
       "admin X-API-Key only.", "operations", public=True, media="text/html", errors=(403, 405)),
    Op("GET", "/.well-known/oauth-protected-resource", "oauth_protected_resource",
       "OAuth 2.0 protected resource metadata (RFC 9728) for the MCP endpoint.", "mcp", ResourceMetadataOut,
       public=True, errors=(404, 405)),
    Op("GET", "/.well-known/oauth-protected-resource/mcp", "oauth_protected_resource_mcp",
       "The same metadata at the path-suffixed location (RFC 9728 section 3.1).", "mcp", ResourceMetadataOut,
       public=True, errors=(404, 405)),
    Op("GET", "/echo-headers", "echo_headers", "The request headers as the bridge saw them (credentials "
       "redacted); for checking proxies.", "identity", EchoHeadersOut),
    # the kill switch (issue 13): the operator's, never an agent's
    Op("POST", "/admin/agents/{agent}:quarantine", "admin_quarantine", "Quarantine an agent on every replica "
       "within a second: every request of it is refused (403 agent_quarantined), its leases and cached child "
       "tokens revoked. Admin X-API-Key (ADMIN_API_KEYS) only; the body is optional.", "admin", QuarantineOut,
       body=QuarantineBody, public=True, params=(AGENT,), errors=ADMIN_ERRORS),
    Op("POST", "/admin/agents/{agent}:release", "admin_release", "Release a quarantined agent on every replica "
       "(what was revoked stays revoked). Admin X-API-Key (ADMIN_API_KEYS) only.", "admin", QuarantineOut,
       public=True, params=(AGENT,), errors=ADMIN_ERRORS),
    Op("POST", "/status/quarantine", "status_quarantine", "The status page's kill-switch buttons: an HTML form "
       "(agent, action = quarantine | release, reason, csrf) under the page's access rule; answers 303 to /status.",
       "operations", public=True, status=303, media="text/html", errors=(400, 403, 405, 413, 415, 502, 503, 504)),
    Op("GET", "/intake/{token}", "intake_form", "The intake form of a one-time link (HTML, for the human the "
       "agent asked for values; no credential: the link is the capability). Never consumes the link.", "intake",
       public=True, media="text/html", params=(INTAKE_TOKEN,), errors=(404, 405, 410, 503), pages=(404, 410, 503)),
    Op("POST", "/intake/{token}", "intake_submit", "Submit the intake form (application/x-www-form-urlencoded: "
       "'csrf' and 'f0', 'f1', ... from the form page, with its cookie): the values are written to the agent's "
       "secret once. HTML answers.", "intake", public=True, media="text/html", params=(INTAKE_TOKEN,),
       errors=(400, 403, 404, 405, 409, 410, 503), pages=(400, 403, 404, 409, 410, 503)),
)
"""The routes that are no operation."""


PAGE_TEXT = {
    400: "The form again: a field left empty, too long or with a forbidden character (HTML).",
    403: "The form was not sent from the link's own page (HTML), or a foreign Origin (JSON).",
    404: "The link is not valid (HTML), or no such route (JSON).",
    409: "The secret changed since the agent asked; nothing stored (HTML).",
    410: "The link expired, was used, or was withdrawn (HTML).",
    503: "Vault could not store the values just now: submit again (HTML).",
}


def operation_row(op: AnyOperation) -> Op:
    """An operation's row, from its declaration and REST binding."""
    rest = op.rest
    assert rest is not None
    return Op(rest.method, rest.path, rest.route, op.summary, rest.tag,
              None if rest.status == 204 else op.output, status=rest.status, body=rest.body, params=rest.params,
              errors=rest.statuses, scopes=op.scopes)


def rows(registry: Registry) -> tuple[Op, ...]:
    """Every documented route: the hand table, then the operations in registry order."""
    return (*ROUTES, *(operation_row(op) for op in registry.rest()))


ERROR_TEXT = {
    400: "Invalid request (bad JSON, path, parameter or body field).",
    401: "No or bad credential.",
    403: "Not allowed (scope, subject, Vault policy or network), or an Origin not in MCP_ALLOWED_ORIGINS.",
    404: "Not found (no such secret, version or Transit key; a deleted or destroyed version; or route).",
    405: "Method not allowed here.",
    408: "The body did not arrive within BODY_READ_TIMEOUT.",
    409: "Check-and-set mismatch (the error names the current version), or a key of another type.",
    413: "Body larger than MAX_BODY_BYTES.",
    415: "Body is not application/json.",
    421: "The Host is not one this bridge answers for (ALLOWED_HOSTS).",
    429: "Rate limited (the bridge's or Vault's); see Retry-After.",
    502: "Vault failed to serve the request.",
    503: "Vault unavailable or sealed, or the audit trail cannot be written.",
    504: "Vault did not answer in time.",
}


def _schemas(ops: tuple[Op, ...]) -> tuple[dict[Any, dict[str, Any]], dict[str, Any]]:
    pairs: list[tuple[type[BaseModel], Literal["validation", "serialization"]]] = [(Error, "serialization")]
    for op in ops:
        if op.body is not None:
            pairs.append((op.body, "validation"))
        if op.response is not None:
            pairs.append((op.response, "serialization"))
    unique = list(dict.fromkeys(pairs))
    refs, defs = models_json_schema(unique, ref_template=REF)
    out: dict[Any, dict[str, Any]] = dict(refs)
    return out, defs.get("$defs", {})


def build_openapi(registry: Registry, *, title: str = "Vault MCP Bridge") -> dict[str, Any]:
    ops = rows(registry)
    refs, components = _schemas(ops)
    error_ref = refs[(Error, "serialization")]
    paths: dict[str, dict[str, Any]] = {}
    for op in ops:
        responses: dict[str, Any] = {}
        if op.status == 204:
            responses["204"] = {"description": "Done; no body."}
        elif op.response is not None:
            ref = refs[(op.response, "serialization")]
            responses[str(op.status)] = {"description": "Success.", "content": {op.media: {"schema": ref}}}
            for code in op.extra_responses:
                responses[str(code)] = {"description": "See the body.", "content": {op.media: {"schema": ref}}}
        elif op.media == "application/json":
            responses[str(op.status)] = {"description": "Success.",
                                         "content": {op.media: {"schema": {"type": "object"}}}}
        else:
            responses[str(op.status)] = {"description": "Success.",
                                         "content": {op.media: {"schema": {"type": "string"}}}}
        for code in sorted(set(op.errors) | set(EDGE_ERRORS)):
            content: dict[str, Any] = {"application/json": {"schema": error_ref}}
            if code in op.pages:
                content["text/html"] = {"schema": {"type": "string"}}
            responses.setdefault(str(code), {
                "description": PAGE_TEXT[code] if code in op.pages else ERROR_TEXT[code],
                "content": content,
            })
        operation: dict[str, Any] = {
            "operationId": op.operation_id,
            "summary": op.summary,
            "tags": [op.tag],
            "responses": responses,
        }
        if op.params:
            operation["parameters"] = [
                {"name": p.name, "in": p.where, "required": p.where == "path", "description": p.description,
                 "schema": dict(p.schema)} for p in op.params]
        if op.body is not None:
            operation["requestBody"] = {"required": True, "content": {
                "application/json": {"schema": refs[(op.body, "validation")]}}}
        if op.scopes:
            operation["description"] = ("Needs the " + " or ".join(f"'{scope}'" for scope in op.scopes)
                                        + " scope" + (" (any one of them)." if len(op.scopes) > 1 else "."))
            operation["x-scopes"] = list(op.scopes)
        if op.public:
            operation["security"] = []
        paths.setdefault(op.path, {})[op.method.lower()] = operation
    return {
        "openapi": "3.1.0",
        "info": {
            "title": title,
            "version": bridge.__version__,
            "description": "Agents use Vault / OpenBao secrets without holding a Vault token. Every error "
                           "body is {\"error\": {\"code\", \"message\", ...}}. Paths are confined to the "
                           "caller's namespace.",
        },
        "paths": paths,
        "components": {
            "schemas": components,
            "securitySchemes": {
                "apiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key",
                           "description": "A key from API_KEYS_JSON."},
                "bearerJWT": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT",
                              "description": "A JWT whose subject is the agent id."},
            },
        },
        "security": [{"apiKey": []}, {"bearerJWT": []}],
        "tags": [{"name": t} for t in dict.fromkeys(op.tag for op in ops)],
    }


def documented_routes(registry: Registry) -> set[str]:
    return {op.route for op in rows(registry)}


def openapi_handler(document: dict[str, Any]) -> Handler:
    """``GET /openapi.json``: ``document``, encoded once."""
    text = json.dumps(document)

    async def serve_openapi(request: web.Request) -> web.Response:
        return web.json_response(text=text)

    return serve_openapi
