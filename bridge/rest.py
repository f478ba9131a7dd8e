"""REST: a route for every operation with a :class:`~bridge.operations.spec.RestBinding`, made by one handler
factory, and the few routes that are no operation (``/healthz``, ``/readyz``, ``/echo-headers``).

A handler collects the operation's input from the URL (the ``tail`` field from the raw URL, percent-decoded
exactly once; query fields), lets the executor check the scope, then reads the JSON body (only now: a caller
without the scope never gets its body read), and renders the executor's result. Operations that share a method
and a path but for their ``:verb`` suffix (``GET /secrets/{path}`` and ``GET /secrets/{path}:metadata``) share
one aiohttp route, whose handler dispatches on the suffix.
"""

from __future__ import annotations

import re
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from bridge.errors import (
    BridgeError,
    InvalidPathError,
    InvalidRequestError,
    MethodNotAllowedError,
    PayloadTooLargeError,
    UnsupportedMediaError,
)
from bridge.jsonbody import JsonBodyError, dumps, load_json
from bridge.operations import AnyOperation, Call, Executor, Registry, RestBinding
from bridge.paths import decode_raw
from bridge.probe import VaultProbe
from bridge.routing import IDENTITY, RATE_DECISION, Handler

_FIELD = re.compile(r"\{(\w+)\}")
REDACTED_HEADERS = frozenset({"authorization", "x-api-key", "cookie", "x-vault-token", "proxy-authorization",
                              "x-proxy-secret"})


async def read_json(request: web.Request, *, max_bytes: int, max_depth: int) -> Any:
    """The JSON body: 415 unless ``application/json``, 413 past ``max_bytes``, 400 when not JSON or beyond the
    limits of :mod:`bridge.jsonbody` (depth, NaN, unsafe numbers)."""
    if request.content_type != "application/json":
        raise UnsupportedMediaError("Send the body as JSON with 'Content-Type: application/json'.")
    if request.content_length is not None and request.content_length > max_bytes:
        raise PayloadTooLargeError(f"The request body is larger than {max_bytes} bytes.")
    try:
        raw = await request.read()
    except web.HTTPRequestEntityTooLarge:  # no Content-Length: the limit held while reading
        raise PayloadTooLargeError(f"The request body is larger than {max_bytes} bytes.") from None
    try:
        return load_json(raw, max_depth=max_depth)
    except JsonBodyError as exc:
        raise InvalidRequestError(str(exc)) from None


def _integer(op: AnyOperation, name: str) -> int | None:
    """For a query field of integer type: the largest value its documented parameter allows (``-1``: no bound);
    ``None`` for any other field."""
    annotation = op.input.model_fields[name].annotation
    if annotation is not int and int not in typing.get_args(annotation):
        return None
    assert op.rest is not None
    schema = next((p.schema for p in op.rest.params if p.name == name), {})
    return int(schema.get("maximum", -1))


@dataclass(frozen=True, slots=True)
class _Route:
    """The operations of one method on one path, by ``:verb`` suffix (``""``: none); ``served`` says which
    methods serve each suffix of the path (for the 405 of a method that does not)."""

    method: str
    path: str
    ops: Mapping[str, tuple[AnyOperation, RestBinding]]
    fields: tuple[str, ...]  # the path's fields, in order
    tail: bool  # the last field is the rest of the URL
    served: Mapping[str, list[str]]

    def split(self, request: web.Request) -> tuple[dict[str, Any], str]:
        """The path's fields and the ``:verb`` suffix (stripped from the last field). A tail is read from the raw
        URL and decoded exactly once (the router's own decoding is not trusted); other fields are one segment
        each, as the router matched them."""
        if not self.fields:
            return {}, ""
        if self.tail:
            prefix = self.path[: self.path.index("{")]
            raw = request.raw_path.split("?", 1)[0]
            if not raw.startswith(prefix):
                raise InvalidPathError("Invalid path: empty.")
            values: dict[str, Any] = {self.fields[0]: decode_raw(raw[len(prefix):])}
        else:
            values = {name: request.match_info[name] for name in self.fields}
        last = self.fields[-1]
        for suffix in self.served:
            if suffix and values[last].endswith(suffix):
                values[last] = values[last][: -len(suffix)]
                return values, suffix
        return values, ""

    def refuse(self, suffix: str) -> MethodNotAllowedError:
        """405 for a suffix this method does not serve, naming what does."""
        if suffix:
            return MethodNotAllowedError(f"Use {' or '.join(self.served[suffix])} for {suffix}.")
        verbs = " and ".join(f"'{{path}}{s}'" for s in self.ops if s)
        return MethodNotAllowedError(f"{self.method} is only for {verbs} here; for '{{path}}' use "
                                     f"{', '.join(self.served.get('', []))}.")


class RestApi:
    """The REST routes of ``registry``'s operations, carried out by ``executor``."""

    def __init__(self, registry: Registry, executor: Executor, *, max_body_bytes: int, max_json_depth: int) -> None:
        self._executor = executor
        self._max_body_bytes = max_body_bytes
        self._max_depth = max_json_depth
        grouped: dict[tuple[str, str], dict[str, tuple[AnyOperation, RestBinding]]] = {}
        for op in registry.rest():
            assert op.rest is not None
            grouped.setdefault((op.rest.method, op.rest.resource), {})[op.rest.suffix] = (op, op.rest)
        served: dict[str, dict[str, list[str]]] = {}  # path → suffix → the methods serving it
        for (method, path), ops in grouped.items():
            for suffix in ops:
                served.setdefault(path, {}).setdefault(suffix, []).append(method)
        self._routes: dict[str, _Route] = {}
        for (method, path), ops in grouped.items():
            names = {binding.route for _, binding in ops.values()}
            if len(names) != 1:
                raise ValueError(f"{method} {path}: one route name for its operations, not {sorted(names)}")
            tail = any(binding.tail is not None for _, binding in ops.values())
            fields = tuple(_FIELD.findall(path))
            if tail and len(fields) != 1:
                raise ValueError(f"{path}: a tail is the path's only field")
            self._routes[names.pop()] = _Route(method, path, ops, fields, tail, served[path])
        self._integers = {(op.name, name): _integer(op, name)
                          for op in registry.rest() if op.rest is not None for name in op.rest.query}

    def add_routes(self, router: web.UrlDispatcher) -> None:
        for name, route in self._routes.items():
            path = route.path
            if route.tail:
                # The tail matches any characters, newlines and the empty path included, so that every bad path
                # reaches the path check (400 invalid_path) instead of falling out of the router as a 404/405.
                path = path[: path.index("{")] + r"{tail:[\s\S]*}"
            router.add_route(route.method, path, self._handler(route), name=name)

    def operation_of(self, request: web.Request) -> str | None:
        """The operation a request refused before it ran asks for (from its route and suffix; the body is not
        read), for the audit record of the refusal."""
        route = self._routes.get(request.match_info.route.name or "")
        if route is None:
            return None
        try:
            _, suffix = route.split(request)
        except BridgeError:
            suffix = ""
        entry = route.ops.get(suffix)
        return entry[0].name if entry is not None else None

    def _handler(self, route: _Route) -> Handler:
        execute = self._executor.execute

        async def handle(request: web.Request) -> web.StreamResponse:
            fields, suffix = route.split(request)
            entry = route.ops.get(suffix)
            if entry is None:
                raise route.refuse(suffix)
            op, binding = entry
            values = fields
            for name in binding.query:
                raw = request.query.get(name)
                if raw:
                    values[name] = self._query_value(op, name, raw)
            decision = request.get(RATE_DECISION)
            call = Call(request[IDENTITY], "rest", prepaid=1 if decision is not None else 0, decision=decision)
            try:
                if binding.body is None:
                    out = await execute(op, call, values)
                else:
                    out = await execute(op, call, lambda: self._with_body(request, binding, values))
            finally:
                if call.decision is not None:
                    request[RATE_DECISION] = call.decision
            if binding.status == 204:
                return web.Response(status=204)
            return web.Response(body=dumps(out.model_dump(mode="json", exclude_none=binding.exclude_none)),
                                status=binding.status, content_type="application/json", charset="utf-8")

        return handle

    def _query_value(self, op: AnyOperation, name: str, raw: str) -> Any:
        maximum = self._integers[(op.name, name)]
        if maximum is None:
            return raw
        if not raw.isdigit() or (maximum >= 0 and len(raw) > len(str(maximum))):
            bound = f" to {maximum}" if maximum >= 0 else ""
            raise InvalidRequestError(f"'{name}' must be an integer from 0{bound}.")
        return int(raw)

    async def _with_body(self, request: web.Request, binding: RestBinding,
                         values: dict[str, Any]) -> dict[str, Any]:
        body = await read_json(request, max_bytes=self._max_body_bytes, max_depth=self._max_depth)
        if not isinstance(body, dict):
            raise InvalidRequestError("The body must be a JSON object.")
        clash = [name for name in body if name in binding.url_fields]
        if clash:
            raise InvalidRequestError("Invalid request: " + "; ".join(
                f"{name}: Extra inputs are not permitted" for name in clash) + ".")
        return {**body, **values}


# -- the routes that are no operation ----------------------------------------------------------------------

def probe_handlers(probe: VaultProbe) -> tuple[Handler, Handler]:
    """``/healthz`` (liveness: the last probe round, never a Vault call) and ``/readyz`` (readiness: the
    background probe's verdict, :mod:`bridge.probe`)."""

    async def healthz(request: web.Request) -> web.Response:
        state = probe.state
        return web.json_response({"status": "ok" if state.vault_ok else "degraded", "vault": state.vault_view()})

    async def readyz(request: web.Request) -> web.Response:
        state = probe.state
        body = {"ready": state.ready, "vault": state.vault_view(), "token_valid": state.token_valid}
        return web.json_response(body, status=200 if state.ready else 503)

    return healthz, readyz


async def echo_headers(request: web.Request) -> web.Response:
    headers = {k: ("[redacted]" if k.lower() in REDACTED_HEADERS else v) for k, v in request.headers.items()}
    return web.json_response({"headers": headers})


def setup_routes(app: web.Application, api: RestApi, probe: VaultProbe) -> frozenset[str]:
    """Add the REST routes; returns the names of the public (unauthenticated) ones."""
    healthz, readyz = probe_handlers(probe)
    app.router.add_get("/healthz", healthz, name="healthz")
    app.router.add_get("/readyz", readyz, name="readyz")
    app.router.add_get("/echo-headers", echo_headers, name="echo_headers")
    api.add_routes(app.router)
    return frozenset({"healthz", "readyz"})
