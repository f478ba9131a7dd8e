"""REST routes: thin handlers that parse, call the service, render."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web
from pydantic import BaseModel

from bridge.billing import charge
from bridge.errors import (
    BridgeError,
    InvalidPathError,
    InvalidRequestError,
    MethodNotAllowedError,
    UnsupportedMediaError,
)
from bridge.jsonbody import JsonBodyError, load_json
from bridge.keys import IDENTITY, PROBE, SERVICE, SETTINGS
from bridge.models import (
    MAX_VERSION,
    CreateKeyBody,
    DecryptBody,
    EncryptBody,
    HmacBody,
    PatchBody,
    RandomBody,
    RewrapBody,
    SignBody,
    VerifyBody,
    VersionsBody,
    WriteBody,
    parse,
)
from bridge.paths import decode_raw

SECRETS_PREFIX = "/secrets/"
SUFFIXES = (":undelete", ":destroy", ":metadata")
REDACTED_HEADERS = frozenset({"authorization", "x-api-key", "cookie", "x-vault-token", "proxy-authorization",
                              "x-proxy-secret"})


def ok(model: BaseModel, status: int = 200) -> web.Response:
    return web.json_response(model.model_dump(mode="json"), status=status)


async def read_json(request: web.Request) -> Any:
    """The JSON body: 415 unless ``application/json``, 413 past MAX_BODY_BYTES, 400 when not JSON or beyond the
    limits of :mod:`bridge.jsonbody` (depth, NaN, unsafe numbers)."""
    if request.content_type != "application/json":
        raise UnsupportedMediaError("Send the body as JSON with 'Content-Type: application/json'.")
    limit = request.app[SETTINGS].max_body_bytes
    if request.content_length is not None and request.content_length > limit:
        raise web.HTTPRequestEntityTooLarge(max_size=limit, actual_size=request.content_length)
    raw = await request.read()
    try:
        return load_json(raw, max_depth=request.app[SETTINGS].max_json_depth)
    except JsonBodyError as exc:
        raise InvalidRequestError(str(exc)) from None


def raw_tail(request: web.Request) -> tuple[str, str]:
    """The secret path from the raw URL (decoded exactly once here) and its ``:suffix``."""
    raw = request.raw_path.split("?", 1)[0]
    if not raw.startswith(SECRETS_PREFIX):
        raise InvalidPathError("Invalid path: empty.")
    tail = decode_raw(raw[len(SECRETS_PREFIX):])
    for suffix in SUFFIXES:
        if tail.endswith(suffix):
            return tail[: -len(suffix)], suffix
    return tail, ""


def _version(request: web.Request) -> int | None:
    raw = request.query.get("version")
    if raw is None or raw == "":
        return None
    if not raw.isdigit() or len(raw) > len(str(MAX_VERSION)):
        raise InvalidRequestError(f"'version' must be an integer from 0 (latest) to {MAX_VERSION}.")
    return int(raw) or None


async def secret_get(request: web.Request) -> web.Response:
    path, suffix = raw_tail(request)
    svc, who = request.app[SERVICE], request[IDENTITY]
    if suffix == ":metadata":
        return ok(await svc.metadata(who, path))
    if suffix:
        raise MethodNotAllowedError(f"Use POST for {suffix}.")
    return ok(await svc.read(who, path, _version(request)))


async def secret_put(request: web.Request) -> web.Response:
    path, suffix = raw_tail(request)
    if suffix:
        raise MethodNotAllowedError(f"Use POST for {suffix}.")
    svc, who = request.app[SERVICE], request[IDENTITY]
    svc.authorize(who, "kv_write")
    return ok(await svc.write(who, path, parse(WriteBody, await read_json(request))))


async def secret_patch(request: web.Request) -> web.Response:
    path, suffix = raw_tail(request)
    if suffix:
        raise MethodNotAllowedError(f"Use POST for {suffix}.")
    svc, who = request.app[SERVICE], request[IDENTITY]
    svc.authorize(who, "kv_patch")
    return ok(await svc.patch(who, path, parse(PatchBody, await read_json(request))))


async def secret_delete(request: web.Request) -> web.Response:
    path, suffix = raw_tail(request)
    if suffix:
        raise MethodNotAllowedError(f"Use POST for {suffix}.")
    await request.app[SERVICE].delete(request[IDENTITY], path)
    return web.Response(status=204)


async def secret_post(request: web.Request) -> web.Response:
    path, suffix = raw_tail(request)
    svc, who = request.app[SERVICE], request[IDENTITY]
    if suffix == ":undelete":
        svc.authorize(who, "kv_undelete")
        return ok(await svc.undelete(who, path, parse(VersionsBody, await read_json(request))))
    if suffix == ":destroy":
        svc.authorize(who, "kv_destroy")
        return ok(await svc.destroy(who, path, parse(VersionsBody, await read_json(request))))
    raise MethodNotAllowedError("POST is only for '{path}:undelete' and '{path}:destroy'; use PUT to write.")


async def secrets_list(request: web.Request) -> web.Response:
    return ok(await request.app[SERVICE].list(request[IDENTITY], request.query.get("prefix")))


TRANSIT_OPS: dict[str, tuple[type[BaseModel], str]] = {
    # route suffix -> (body model, SecretService method); the operation (scope) is "transit_<op>"
    "encrypt": (EncryptBody, "encrypt"),
    "decrypt": (DecryptBody, "decrypt"),
    "rewrap": (RewrapBody, "rewrap"),
    "sign": (SignBody, "sign"),
    "verify": (VerifyBody, "verify"),
    "hmac": (HmacBody, "hmac"),
    "random": (RandomBody, "random"),
    "keys": (CreateKeyBody, "create_key"),
}


def transit_handler(op: str) -> Callable[[web.Request], Awaitable[web.Response]]:
    """``POST /transit/<op>``: scope check before the body is read, then the batch's cost is charged (it is known
    only now; the middleware charged 1), Vault's field names, no nulls in the answer."""
    model, method = TRANSIT_OPS[op]
    operation = "transit_create_key" if op == "keys" else f"transit_{op}"

    async def handler(request: web.Request) -> web.Response:
        svc, who = request.app[SERVICE], request[IDENTITY]
        svc.authorize(who, operation)
        body = parse(model, await read_json(request))
        await charge(request, svc.request_cost(body))
        out: BaseModel = await getattr(svc, method)(who, body)
        return web.json_response(out.model_dump(mode="json", exclude_none=True))

    return handler


async def transit_encrypt(request: web.Request) -> web.Response:
    return await transit_handler("encrypt")(request)


async def transit_decrypt(request: web.Request) -> web.Response:
    return await transit_handler("decrypt")(request)


async def whoami(request: web.Request) -> web.Response:
    return ok(request.app[SERVICE].whoami(request[IDENTITY]))


async def echo_headers(request: web.Request) -> web.Response:
    headers = {k: ("[redacted]" if k.lower() in REDACTED_HEADERS else v) for k, v in request.headers.items()}
    return web.json_response({"headers": headers})


async def healthz(request: web.Request) -> web.Response:
    """Liveness: answered from process state (the last probe round), never by calling Vault."""
    state = request.app[PROBE].state
    return web.json_response({"status": "ok" if state.vault_ok else "degraded", "vault": state.vault_view()})


async def readyz(request: web.Request) -> web.Response:
    """Readiness: the background probe's verdict (``bridge.probe``), at most one Vault call per interval."""
    state = request.app[PROBE].state
    body = {"ready": state.ready, "vault": state.vault_view(), "token_valid": state.token_valid}
    return web.json_response(body, status=200 if state.ready else 503)


_SECRET_OPERATIONS: dict[tuple[str, str], str] = {
    ("GET", ""): "kv_read", ("GET", ":metadata"): "kv_metadata", ("PUT", ""): "kv_write",
    ("PATCH", ""): "kv_patch", ("DELETE", ""): "kv_delete", ("POST", ":undelete"): "kv_undelete",
    ("POST", ":destroy"): "kv_destroy",
}


def rest_operation(request: web.Request) -> str | None:
    """The service operation a REST request asks for, from its route alone (the body is not read): named in
    the audit record of a request refused before its handler ran (rate limit, body limits ...)."""
    name = request.match_info.route.name or ""
    if name in ("secrets_list", "whoami") or name.startswith("transit_"):
        return "kv_list" if name == "secrets_list" else name
    if not name.startswith("secret_"):
        return None
    try:
        _path, suffix = raw_tail(request)
    except BridgeError:
        suffix = ""
    return _SECRET_OPERATIONS.get((request.method, suffix))


def setup_routes(app: web.Application) -> set[str]:
    """Add the REST routes; returns the names of the public (unauthenticated) ones."""
    r = app.router
    r.add_get("/healthz", healthz, name="healthz")
    r.add_get("/readyz", readyz, name="readyz")
    r.add_get("/whoami", whoami, name="whoami")
    r.add_get("/echo-headers", echo_headers, name="echo_headers")
    r.add_get("/secrets", secrets_list, name="secrets_list")
    # The tail matches any characters, newlines and the empty path included, so that every bad path reaches
    # the path check (400 invalid_path) instead of falling out of the router as a 404/405. ``GET /secrets/``
    # is such an empty path (400), not a list: listing is ``GET /secrets?prefix=``.
    r.add_get(r"/secrets/{tail:[\s\S]*}", secret_get, name="secret_get")
    r.add_put(r"/secrets/{tail:[\s\S]*}", secret_put, name="secret_put")
    r.add_patch(r"/secrets/{tail:[\s\S]*}", secret_patch, name="secret_patch")
    r.add_delete(r"/secrets/{tail:[\s\S]*}", secret_delete, name="secret_delete")
    r.add_post(r"/secrets/{tail:[\s\S]*}", secret_post, name="secret_post")
    for op in TRANSIT_OPS:
        r.add_post(f"/transit/{op}", transit_handler(op),
                   name="transit_create_key" if op == "keys" else f"transit_{op}")
    return {"healthz", "readyz"}
