"""An in-process fake Vault for fault tests: an aiohttp app served by pytest-aiohttp's ``aiohttp_server``.

By default it behaves like a tiny, well-mannered Vault (the parts the bridge uses, with the envelopes and
error bodies recorded in ``/work/shared/vault-api-notes.md``): ``sys/health``, token lookup/renew/revoke,
AppRole login, KV v2 (data, metadata, delete, undelete, destroy, LIST) and Transit encrypt/decrypt. A test
then overrides what any route does::

    fake.set("secret/data/*", status=500, body={"errors": ["boom"]})   # glob over the path below /v1/
    fake.set("sys/health", delay=2.0)                                   # answer late (timeouts)
    fake.set("secret/*", method="GET", close=True, times=1)             # drop the connection, once
    fake.set("secret/*", status=429, headers={"Retry-After": "7"})      # Vault's own rate limit
    gate = fake.hold("secret/data/mcp/alice/*"); ...; gate.set()        # hold answers until released
    fake.seal()                                                         # 503 {"errors":["Vault is sealed"]}
    await fake.stop(); ...; await fake.start(aiohttp_server, port=fake.port)   # connection refused, then back

Every request is recorded (``fake.requests``, ``fake.calls(prefix)``), so a test can prove that nothing
reached Vault. Tests use the ``fake_vault`` fixture (``tests/support/vault.py``), or build one themselves::

    fake = FakeVault()
    await fake.start(aiohttp_server)
    settings = Settings.from_env({}, vault_addr=fake.addr, vault_token=fake.root_token)
"""

from __future__ import annotations

import asyncio
import base64
import fnmatch
import json
import secrets
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from aiohttp import web
from aiohttp.test_utils import TestServer

AiohttpServer = Callable[..., Awaitable[TestServer]]

SEALED_BODY = {"errors": ["Vault is sealed"]}
DENIED_BODY = {"errors": ["permission denied"]}
POLICY_DENIED_BODY = {"errors": ["1 error occurred:\n\t* permission denied\n\n"]}


@dataclass
class Behaviour:
    """What one overridden route does. ``times=None``: until cleared; else for the next ``times`` requests."""

    pattern: str
    method: str | None = None
    status: int = 200
    body: Any = None  # dict/list → JSON; str/bytes → sent as is; None → empty body
    headers: Mapping[str, str] = field(default_factory=dict)
    delay: float = 0.0
    close: bool = False
    times: int | None = None
    passthrough: bool = False  # only delay (and count), then behave normally
    gate: asyncio.Event | None = None  # wait for it to be set before answering (see FakeVault.hold)

    def matches(self, method: str, path: str) -> bool:
        if self.method is not None and self.method.upper() != method:
            return False
        return fnmatch.fnmatchcase(path, self.pattern)


@dataclass(frozen=True)
class RecordedRequest:
    method: str
    path: str  # below /v1/, as sent (still percent-encoded)
    query: dict[str, str]
    headers: dict[str, str]
    body: bytes

    @property
    def json(self) -> Any:
        return json.loads(self.body) if self.body else None

    @property
    def token(self) -> str | None:
        return self.headers.get("X-Vault-Token")


@dataclass
class FakeToken:
    token: str
    policies: list[str]
    ttl: int = 0  # 0: never expires (root)
    renewable: bool = False
    renewals: int = 0


@dataclass
class _Version:
    data: dict[str, Any] | None
    created_time: str
    deletion_time: str = ""
    destroyed: bool = False


def _now() -> str:
    return datetime.now(UTC).isoformat().replace("+00:00", "Z")


class FakeVault:
    """A fake Vault server. State lives on this object; ``start`` builds a fresh app each time."""

    def __init__(self, *, root_token: str | None = None, role_id: str = "fake-role-id",
                 secret_id: str = "fake-secret-id",  # noqa: S107 - the fake's own test credential
                 approle_ttl: int = 3600, kv_mount: str = "secret",
                 transit_mount: str = "transit", version: str = "2.7.2-fake") -> None:
        self.root_token = root_token or "fake-root-" + secrets.token_hex(8)
        self.role_id = role_id
        self.secret_id = secret_id
        self.approle_ttl = approle_ttl
        self.kv_mount = kv_mount
        self.transit_mount = transit_mount
        self.version = version
        self.sealed = False
        self.requests: list[RecordedRequest] = []
        self.behaviours: list[Behaviour] = []
        self.tokens: dict[str, FakeToken] = {self.root_token: FakeToken(self.root_token, ["root"])}
        self.kv: dict[str, list[_Version]] = {}
        self.server: TestServer | None = None
        self.port: int | None = None

    # -- serving -------------------------------------------------------------------------------------

    @property
    def addr(self) -> str:
        assert self.port is not None, "start() the fake Vault first"
        return f"http://127.0.0.1:{self.port}"

    def make_app(self) -> web.Application:
        app = web.Application()
        app.router.add_route("*", "/v1/{path:.*}", self._handle)
        return app

    async def start(self, aiohttp_server: AiohttpServer, *, port: int | None = None) -> FakeVault:
        """Serve on 127.0.0.1 (``port``: the same one again after :meth:`stop`)."""
        self.server = await aiohttp_server(self.make_app(), port=port)
        self.port = self.server.port
        return self

    async def stop(self) -> None:
        """Stop listening: clients now get ``connection refused`` on :attr:`addr`."""
        if self.server is not None:
            await self.server.close()
            self.server = None

    # -- test controls -------------------------------------------------------------------------------

    def set(self, pattern: str, *, method: str | None = None, status: int = 200, body: Any = None,
            headers: Mapping[str, str] | None = None, delay: float = 0.0, close: bool = False,
            times: int | None = None) -> Behaviour:
        """Override the routes matching ``pattern`` (a glob over the path below ``/v1/``). Newest wins."""
        b = Behaviour(pattern, method, status, body, dict(headers or {}), delay, close, times)
        self.behaviours.insert(0, b)
        return b

    def slow(self, pattern: str, delay: float, *, method: str | None = None, times: int | None = None) -> Behaviour:
        """Answer normally, but only after ``delay`` seconds."""
        b = Behaviour(pattern, method, delay=delay, times=times, passthrough=True)
        self.behaviours.insert(0, b)
        return b

    def hold(self, pattern: str, *, method: str | None = None) -> asyncio.Event:
        """Answer normally, but only once the returned event is set (requests pile up until then)."""
        gate = asyncio.Event()
        self.behaviours.insert(0, Behaviour(pattern, method, passthrough=True, gate=gate))
        return gate

    def clear(self) -> None:
        """Remove every override (sealing is separate: :meth:`unseal`)."""
        self.behaviours.clear()

    def seal(self) -> None:
        self.sealed = True

    def unseal(self) -> None:
        self.sealed = False

    def issue_token(self, *, policies: list[str] | None = None, ttl: int = 0, renewable: bool = False) -> str:
        token = "s." + secrets.token_urlsafe(18)
        self.tokens[token] = FakeToken(token, policies or ["default"], ttl, renewable)
        return token

    def revoke(self, token: str) -> None:
        self.tokens.pop(token, None)

    def calls(self, prefix: str = "", *, method: str | None = None, state: bool = False) -> list[RecordedRequest]:
        """Recorded requests whose path starts with ``prefix`` (and, if given, with that method). The bridge's
        reads and writes of its own state (``…/_bridge/…``: the quarantine poll every half second, lease records)
        are left out unless ``state``: they are no agent's operation."""
        return [r for r in self.requests
                if r.path.startswith(prefix) and (method is None or r.method == method.upper())
                and (state or "/_bridge/" not in r.path)]

    def calls_except(self, *prefixes: str, state: bool = False) -> list[RecordedRequest]:
        """Recorded requests outside the given path prefixes (e.g. all but ``sys/health`` and ``auth/``); the
        bridge's own state is left out unless ``state`` (see :meth:`calls`)."""
        return [r for r in self.requests if not r.path.startswith(prefixes) and (state or "/_bridge/" not in r.path)]

    # -- the server ----------------------------------------------------------------------------------

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        raw = request.raw_path.split("?", 1)[0]
        path = raw[len("/v1/"):]
        body = await request.read()
        self.requests.append(RecordedRequest(request.method, path, dict(request.query),
                                             dict(request.headers), body))
        for b in list(self.behaviours):
            if not b.matches(request.method, path):
                continue
            if b.times is not None:
                b.times -= 1
                if b.times <= 0:
                    self.behaviours.remove(b)
            if b.delay:
                await asyncio.sleep(b.delay)
            if b.gate is not None:
                await b.gate.wait()
            if b.close:
                assert request.transport is not None
                request.transport.close()
                return web.Response()
            if b.passthrough:
                break
            return _respond(b.status, b.body, b.headers)
        if self.sealed:
            if path == "sys/health" or path == "sys/seal-status":
                status = 200 if request.query.get("sealedcode") == "200" or path == "sys/seal-status" else 503
                return _respond(status, self._health())
            return _respond(503, SEALED_BODY)
        try:
            return await self._vault(request, path, body)
        except _Answer as ans:
            return _respond(ans.status, ans.body)

    def _health(self) -> dict[str, Any]:
        return {"initialized": True, "sealed": self.sealed, "standby": self.sealed, "version": self.version,
                "cluster_name": "fake"}

    def _auth(self, request: web.Request) -> FakeToken:
        token = request.headers.get("X-Vault-Token")
        if not token:
            auth = request.headers.get("Authorization", "")
            token = auth.removeprefix("Bearer ").strip() or None
        found = self.tokens.get(token or "")
        if found is None:
            raise _Answer(403, DENIED_BODY)
        return found

    async def _vault(self, request: web.Request, path: str, raw: bytes) -> web.StreamResponse:
        method = request.method
        body: Any = json.loads(raw) if raw else {}
        if path == "sys/health":
            return _respond(200, self._health())
        if path == "auth/approle/login" and method in ("POST", "PUT"):
            if body.get("role_id") != self.role_id or body.get("secret_id") != self.secret_id:
                return _respond(400, {"errors": ["invalid role or secret ID"]})
            token = self.issue_token(policies=["default", "bridge"], ttl=self.approle_ttl, renewable=True)
            return _respond(200, _envelope(auth={
                "client_token": token, "accessor": secrets.token_hex(8), "policies": ["default", "bridge"],
                "lease_duration": self.approle_ttl, "renewable": True, "orphan": True}))
        tok = self._auth(request)
        if path == "auth/token/lookup-self":
            return _respond(200, _envelope(data={
                "id": tok.token, "policies": tok.policies, "ttl": tok.ttl, "creation_ttl": tok.ttl,
                "renewable": tok.renewable, "type": "service", "expire_time": None if not tok.ttl else _now()}))
        if path == "auth/token/renew-self":
            if not tok.renewable:
                return _respond(400, {"errors": ["lease is not renewable"]})
            tok.renewals += 1
            return _respond(200, _envelope(auth={"client_token": tok.token, "lease_duration": tok.ttl,
                                                 "renewable": True, "policies": tok.policies}))
        if path == "auth/token/revoke-self":
            self.revoke(tok.token)
            return web.Response(status=204)
        if path.startswith(self.kv_mount + "/"):
            return self._kv(request, path[len(self.kv_mount) + 1:], body)
        if path.startswith(self.transit_mount + "/"):
            return self._transit(path[len(self.transit_mount) + 1:], body)
        return _respond(404, {"errors": [f'no handler for route "{path}". route entry not found.']})

    # -- KV v2 ---------------------------------------------------------------------------------------

    def _kv(self, request: web.Request, rest: str, body: Any) -> web.StreamResponse:
        kind, _, key = rest.partition("/")
        method = request.method
        versions = self.kv.get(key)
        if kind == "metadata" and (method == "LIST" or request.query.get("list") == "true"):
            base = key.rstrip("/") + "/" if key.rstrip("/") else ""
            keys = sorted({k[len(base):].split("/", 1)[0] + ("/" if "/" in k[len(base):] else "")
                           for k in self.kv if k.startswith(base) and k != base})
            return _respond(200, _envelope(data={"keys": keys})) if keys else _respond(404, {"errors": []})
        if kind == "data" and method == "GET":
            if not versions:
                return _respond(404, {"errors": []})
            want = int(request.query.get("version") or 0) or len(versions)
            if want > len(versions):
                return _respond(404, {"errors": []})
            v = versions[want - 1]
            env = _envelope(data={"data": v.data if not (v.deletion_time or v.destroyed) else None,
                                  "metadata": _meta(v, want)})
            return _respond(404 if (v.deletion_time or v.destroyed) else 200, env)
        if kind == "data" and method in ("POST", "PUT"):
            if not isinstance(body.get("data"), dict):
                return _respond(400, {"errors": ["no data provided"]})
            cas = (body.get("options") or {}).get("cas")
            if cas is not None and cas != len(versions or []):
                return _respond(400, {"errors": ["check-and-set parameter did not match the current version"]})
            return self._new_version(key, dict(body["data"]))
        if kind == "data" and method == "PATCH":
            if request.content_type != "application/merge-patch+json":
                return _respond(415, {"errors": ["PATCH requires Content-Type of application/merge-patch+json"]})
            if not versions or versions[-1].data is None or versions[-1].deletion_time:
                return web.Response(status=404, content_type="application/json")
            merged = dict(versions[-1].data)
            for k, val in (body.get("data") or {}).items():
                if val is None:
                    merged.pop(k, None)
                else:
                    merged[k] = val
            return self._new_version(key, merged)
        if kind == "data" and method == "DELETE":
            if versions:
                versions[-1].deletion_time = _now()
            return web.Response(status=204)
        if kind in ("delete", "undelete", "destroy") and method in ("POST", "PUT"):
            wanted = body.get("versions") or []
            if not wanted:
                return _respond(400, {"errors": ["No version number provided"]})
            for n in wanted:
                if versions and 1 <= n <= len(versions):
                    v = versions[n - 1]
                    if kind == "delete":
                        v.deletion_time = v.deletion_time or _now()
                    elif kind == "undelete" and not v.destroyed:
                        v.deletion_time = ""
                    elif kind == "destroy":
                        v.destroyed, v.data = True, None
            return web.Response(status=204)
        if kind == "metadata" and method == "GET":
            if not versions:
                return _respond(404, {"errors": []})
            return _respond(200, _envelope(data={
                "current_version": len(versions), "oldest_version": 1, "max_versions": 0,
                "created_time": versions[0].created_time, "updated_time": versions[-1].created_time,
                "custom_metadata": None, "cas_required": False,
                "versions": {str(i + 1): {"created_time": v.created_time, "deletion_time": v.deletion_time,
                                          "destroyed": v.destroyed} for i, v in enumerate(versions)}}))
        return _respond(405, {"errors": ["1 error occurred:\n\t* unsupported operation\n\n"]})

    def _new_version(self, key: str, data: dict[str, Any]) -> web.Response:
        versions = self.kv.setdefault(key, [])
        versions.append(_Version(data, _now()))
        return _respond(200, _envelope(data=_meta(versions[-1], len(versions))))

    # -- Transit (reversible, NOT encryption: only the envelope is faithful) ------------------------

    def _transit(self, rest: str, body: Any) -> web.StreamResponse:
        op, _, key = rest.partition("/")
        if op == "encrypt":
            try:
                base64.b64decode(str(body.get("plaintext", "")), validate=True)
            except ValueError:
                return _respond(400, {"errors": ["illegal base64 data at input byte 0"]})
            blob = base64.b64encode(f"{key}\0{body['plaintext']}".encode()).decode()
            return _respond(200, _envelope(data={"ciphertext": "vault:v1:" + blob, "key_version": 1}))
        if op == "decrypt":
            ct = str(body.get("ciphertext", ""))
            try:
                owner, plaintext = base64.b64decode(ct.removeprefix("vault:v1:")).decode().split("\0", 1)
            except ValueError:
                return _respond(400, {"errors": ["invalid ciphertext: no prefix"]})
            if owner != key:
                return _respond(400, {"errors": ["cipher: message authentication failed"]})
            return _respond(200, _envelope(data={"plaintext": plaintext}))
        return _respond(404, {"errors": []})


class _Answer(Exception):
    def __init__(self, status: int, body: Any) -> None:
        super().__init__(status)
        self.status = status
        self.body = body


def _meta(v: _Version, number: int) -> dict[str, Any]:
    return {"created_time": v.created_time, "custom_metadata": None, "deletion_time": v.deletion_time,
            "destroyed": v.destroyed, "version": number}


def _envelope(*, data: Any = None, auth: Any = None) -> dict[str, Any]:
    return {"request_id": secrets.token_hex(8), "lease_id": "", "renewable": False, "lease_duration": 0,
            "data": data, "wrap_info": None, "warnings": None, "auth": auth}


def _respond(status: int, body: Any, headers: Mapping[str, str] | None = None) -> web.Response:
    if body is None:
        return web.Response(status=status, headers=dict(headers or {}))
    if isinstance(body, bytes | str):
        return web.Response(status=status, body=body.encode() if isinstance(body, str) else body,
                            headers=dict(headers or {}))
    return web.json_response(body, status=status, headers=dict(headers or {}))
