"""What an operation is: one :class:`Operation` declaration, from which everything else is derived.

An operation is something an agent asks the bridge to do (``kv_read``, ``transit_encrypt``, ``whoami`` ...). Its
declaration names it once (the MCP tool name, the audit ``operation``, the metrics label), says which scope it
needs, which pydantic models carry its input (every argument, the URL's included) and its output, how it is
described (title, one-line summary, a description for a model), its MCP hints, which input fields the audit trail
records, what it costs against the rate limit, and which service method runs it. From that:

- :mod:`bridge.rest` makes its route (:class:`RestBinding`: method, path, where each input field comes from);
- :mod:`bridge.mcp.tools` makes its tool (name, title, ``inputSchema``/``outputSchema``, annotations);
- :mod:`bridge.ops.openapi` makes its OpenAPI row;
- :class:`bridge.operations.pipeline.Executor` checks its scope, charges its cost, writes its audit record, counts
  it and runs it, for every transport alike.

A :class:`Registry` holds the operations in a fixed order (the order of ``tools/list`` pages and of the OpenAPI
document). ``default_registry()`` (:mod:`bridge.operations`) builds the bridge's own from the per-area modules.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Generic, Literal, TypeVar

from pydantic import BaseModel

from bridge.auth.identity import Identity
from bridge.service.capabilities import VaultNeed

Scope = Literal["read", "write", "delete", "list", "use"]
S = TypeVar("S")
In = TypeVar("In", bound=BaseModel)
Out = TypeVar("Out", bound=BaseModel)

_PARAM = re.compile(r"\{(\w+)\}")

AUTH_ERRORS = (400, 401, 403, 405, 429, 502, 503, 504)
"""What any authenticated route may answer (documented on every OpenAPI row of an operation)."""
BODY_ERRORS = (408, 413, 415)
"""What a route that reads a body may answer besides."""


def hints(*, read_only: bool, destructive: bool = False, idempotent: bool,
          open_world: bool = False) -> dict[str, bool]:
    """MCP ``ToolAnnotations``. An operation acts on the caller's own Vault namespace only (closed world), unless
    ``open_world`` (brokered HTTP reaches outside hosts).

    ``destructive`` is true for anything that changes what a reader of the latest version sees (write and
    patch replace or drop values, even though KV v2 keeps older versions) or removes data (delete, destroy):
    clients use it to ask a human before the call.
    """
    return {"readOnlyHint": read_only, "destructiveHint": destructive, "idempotentHint": idempotent,
            "openWorldHint": open_world}


@dataclass(frozen=True, slots=True)
class Param:
    """An input field carried in the URL, as the OpenAPI document describes it."""

    name: str
    where: Literal["path", "query"]
    schema: Mapping[str, Any]
    description: str = ""


@dataclass(frozen=True, slots=True)
class RestBinding:
    """How an operation is served over REST.

    ``path`` is the documented template, ``{field}`` for an input field taken from the URL and an optional
    ``:verb`` suffix (``/secrets/{path}:undelete``). ``tail`` names the one field that is the rest of the URL,
    slashes included (a secret path): it is read from the raw URL and percent-decoded exactly once, and
    operations that differ only by their ``:verb`` share its route. ``query`` names the fields taken from the
    query string (an integer field is parsed as one). ``body`` is the part of the input sent as the JSON body
    (the input model is that plus the URL's fields; a body field that the URL carries is refused); ``None``: no
    body is read. ``status`` is the success status (204: no body); ``exclude_none`` leaves fields that do not
    apply out of the answer. ``route`` is the aiohttp route name (shared by the operations of one method on one
    path, e.g. ``secret_get``), ``params`` documents the URL's fields, ``tag`` and ``errors`` the OpenAPI row.
    """

    method: str
    path: str
    route: str
    tag: str
    errors: tuple[int, ...]
    tail: str | None = None
    query: tuple[str, ...] = ()
    body: type[BaseModel] | None = None
    status: int = 200
    exclude_none: bool = False
    params: tuple[Param, ...] = ()

    @property
    def statuses(self) -> tuple[int, ...]:
        """Every error status of the OpenAPI row."""
        return tuple(sorted({*AUTH_ERRORS, *self.errors, *(BODY_ERRORS if self.body is not None else ())}))

    @property
    def url_fields(self) -> tuple[str, ...]:
        """The input fields the URL carries (path template and query)."""
        return (*_PARAM.findall(self.path), *self.query)

    @property
    def resource(self) -> str:
        """The path without its ``:verb`` suffix: the operations of one resource share a route per method."""
        return self.path[: -len(self.suffix)] if self.suffix else self.path

    @property
    def suffix(self) -> str:
        last = self.path.rsplit("/", 1)[-1]
        verb = last.rsplit("}", 1)[-1] if "}" in last else ""
        return verb if verb.startswith(":") else ""


@dataclass(frozen=True, slots=True)
class Changes:
    """The resource a successful call changes: the caller's KV secret (``kind="kv"``) or Transit key
    (``"transit"``) named by the input field ``field``. The executor reports it (``Executor(on_change=...)``) after
    the call succeeded: change notifications come from this one place."""

    kind: Literal["kv", "transit"]
    field: str


@dataclass(frozen=True, eq=False)
class Operation(Generic[S, In, Out]):
    """One operation, declared once (see the module docstring).

    ``scope`` is the scope the caller needs, or a tuple of scopes any one of which will do (``("use", "read")``:
    the service then answers according to the one the caller holds, e.g. ``kv_read`` answers values to ``read``
    and references to ``use``); list the least privileged first: it is the one a refusal's challenge asks for.
    ``None``: any identity. ``run`` is the service method, unbound: ``async def method(self, identity, args) ->
    Out`` of ``service`` (the executor binds it to the app's instance). ``cost`` (a method of ``service`` too) is
    what one call costs against the rate limit, known once the input is parsed (a Transit batch: its items);
    ``None`` costs 1.
    ``available`` (a method of ``service``) says whether the operation is open to an identity beyond its scope
    (e.g. the agent's Vault capabilities); ``None``: whenever the scope allows. ``audit`` names the input fields
    the audit record keeps (never a value: paths, names, versions); ``audit_details(args, out)`` (a plain function
    of the validated input and the output, ``None`` when the operation failed) adds fields derived from them
    (a brokered request's host and references, how a read answered): strings, integers, booleans and lists of
    them, never a value. ``rest``/``mcp``: whether (and how) it is served over REST and as an MCP tool.
    ``needs``: what the agent's Vault policy must grant on its own paths for the operation to be listed
    (``tools/list``, ``GET /whoami``; :mod:`bridge.service.capabilities`); ``changes``: the resource a successful
    call changes (:class:`Changes`), for change notifications. ``scope_hint`` ends the message of a refusal for
    want of scope (what to do instead, e.g. ``pki_sign`` for a ``use``-only identity asking ``pki_issue``).
    """

    name: str
    scope: Scope | tuple[Scope, ...] | None
    input: type[In]
    output: type[Out]
    service: type[S]
    run: Callable[[S, Identity, In], Awaitable[Out]] = field(repr=False)
    title: str
    summary: str
    description: str
    annotations: Mapping[str, bool] = field(default_factory=lambda: hints(read_only=True, idempotent=True))
    audit: tuple[str, ...] = ()
    audit_details: Callable[[In, Out | None], Mapping[str, Any]] | None = field(default=None, repr=False)
    cost: Callable[[S, In], int] | None = field(default=None, repr=False)
    available: Callable[[S, Identity], Awaitable[bool]] | None = field(default=None, repr=False)
    rest: RestBinding | None = None
    mcp: bool = True
    needs: tuple[VaultNeed, ...] = ()
    changes: Changes | None = None
    scope_hint: str = ""

    @property
    def scopes(self) -> tuple[Scope, ...]:
        """The scopes any one of which allows the operation (empty: any identity), least privileged first."""
        if self.scope is None:
            return ()
        return (self.scope,) if isinstance(self.scope, str) else self.scope

    def allowed(self, identity: Identity) -> bool:
        """Whether the identity's scopes allow the operation (the ``available`` hook is the executor's)."""
        scopes = self.scopes
        return not scopes or any(scope in identity.scopes for scope in scopes)


AnyOperation = Operation[Any, Any, Any]


class Registry:
    """The operations, by name, in declaration order. Checks at construction that names are unique, that REST
    bindings do not collide, and that each binding's URL and body fields together are its input."""

    def __init__(self, operations: Iterable[AnyOperation]) -> None:
        self._ops: dict[str, AnyOperation] = {}
        routes: dict[tuple[str, str], str] = {}
        for op in operations:
            if op.name in self._ops:
                raise ValueError(f"operation {op.name} is declared twice")
            if isinstance(op.scope, tuple) and (not op.scope or len(set(op.scope)) != len(op.scope)):
                raise ValueError(f"{op.name}: any-of scopes must be distinct and at least one")
            if op.rest is not None:
                _check_binding(op, op.rest)
                key = (op.rest.method, op.rest.path)
                if key in routes:
                    raise ValueError(f"{op.name} and {routes[key]} are both {key[0]} {key[1]}")
                routes[key] = op.name
            self._ops[op.name] = op

    def __iter__(self) -> Iterator[AnyOperation]:
        return iter(self._ops.values())

    def __len__(self) -> int:
        return len(self._ops)

    def __contains__(self, name: object) -> bool:
        return name in self._ops

    def get(self, name: str) -> AnyOperation | None:
        return self._ops.get(name)

    def __getitem__(self, name: str) -> AnyOperation:
        return self._ops[name]

    def tools(self) -> list[AnyOperation]:
        return [op for op in self if op.mcp]

    def rest(self) -> list[AnyOperation]:
        return [op for op in self if op.rest is not None]

    def with_operations(self, *extra: AnyOperation) -> Registry:
        """This registry plus ``extra`` (tests, and later issues' optional areas)."""
        return Registry([*self, *extra])


def _check_binding(op: AnyOperation, rest: RestBinding) -> None:
    fields = set(op.input.model_fields)
    url = rest.url_fields
    if not set(url) <= fields:
        raise ValueError(f"{op.name}: URL fields {sorted(set(url) - fields)} are not fields of {op.input.__name__}")
    if rest.tail is not None and rest.tail not in _PARAM.findall(rest.path):
        raise ValueError(f"{op.name}: the tail field {rest.tail} is not in {rest.path}")
    body = set(rest.body.model_fields) if rest.body is not None else set()
    if body & set(url) or body | set(url) != fields:
        raise ValueError(f"{op.name}: the URL fields {sorted(url)} and the body's {sorted(body)} must together be "
                         f"the fields of {op.input.__name__} ({sorted(fields)}), each once")
