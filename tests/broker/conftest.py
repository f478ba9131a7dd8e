"""Fixtures for the broker tests: local HTTP(S) servers that record what they received, a fake DNS, a table of
resolved secrets standing in for the Vault side, and a small test PKI for HTTPS destinations."""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import gzip
import ipaddress
import json
import ssl
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote, quote_plus

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from bridge.broker import Broker, ResolvedSecret
from bridge.broker.hosts import IPAddress
from bridge.errors import NotFoundError
from bridge.references import AnyReference, Reference


@dataclass
class Received:
    method: str
    path_qs: str
    headers: dict[str, str]
    body: bytes


@dataclass
class Upstream:
    """A local HTTP server on 127.0.0.1; ``received`` lists every request that reached it."""

    server: TestServer
    received: list[Received] = field(default_factory=list)

    @property
    def port(self) -> int:
        port = self.server.port
        assert port is not None
        return port


def _forms(token: str) -> dict[str, str]:
    raw = token.encode()
    return {"b64": base64.b64encode(raw).decode(), "b64url_nopad": base64.urlsafe_b64encode(raw).decode().rstrip("="),
            "quote": quote(token, safe=""), "quote_plus": quote_plus(token),
            "basic": base64.b64encode(b"user:" + raw).decode(), "raw": token}


def upstream_app(received: list[Received]) -> web.Application:
    async def record(request: web.Request) -> Received:
        item = Received(request.method, request.path_qs, dict(request.headers), await request.read())
        received.append(item)
        return item

    async def echo(request: web.Request) -> web.Response:
        item = await record(request)
        token = request.headers.get("X-Token", "")
        payload = {"method": item.method, "path_qs": item.path_qs, "headers": item.headers,
                   "body": item.body.decode("utf-8", "replace"), "forms": _forms(token)}
        resp = web.json_response(payload)
        resp.headers["X-Echo-Token"] = quote(token, safe="")
        resp.headers["X-Echo-B64"] = base64.b64encode(token.encode()).decode()
        resp.set_cookie("sid", base64.urlsafe_b64encode(token.encode()).decode().rstrip("="))
        return resp

    async def html_page(request: web.Request) -> web.Response:
        await record(request)
        token = request.headers.get("X-Token", "")
        escaped = token.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace('"', "&quot;")
        return web.Response(text=f"<p title=\"{escaped}\">{escaped}</p>", content_type="text/html")

    async def binary(request: web.Request) -> web.Response:
        await record(request)
        token = request.headers.get("X-Token", "").encode()
        return web.Response(body=b"\x00\xff\xfe" + token + b"\x01" + base64.b64encode(token),
                            content_type="application/octet-stream")

    async def utf16(request: web.Request) -> web.Response:
        await record(request)
        token = request.headers.get("X-Token", "")
        return web.Response(body=f"token={token}".encode("utf-16"), headers={"Content-Type":
                                                                            "text/plain; charset=utf-16"})

    async def redirect(request: web.Request) -> web.Response:
        await record(request)
        raise web.HTTPFound(request.query["to"])

    async def slow(request: web.Request) -> web.Response:
        await record(request)
        await asyncio.sleep(60)
        return web.Response(text="late")

    async def trickle(request: web.Request) -> web.StreamResponse:
        await record(request)
        resp = web.StreamResponse()
        resp.content_type = "text/plain"
        await resp.prepare(request)
        for _ in range(600):  # a byte every 100 ms, for a minute: no read ever waits long, the whole call does
            await resp.write(b".")
            await asyncio.sleep(0.1)
        return resp

    async def big(request: web.Request) -> web.StreamResponse:
        await record(request)
        size = int(request.query["n"])
        if request.query.get("chunked"):
            resp = web.StreamResponse()
            resp.content_type = "text/plain"
            await resp.prepare(request)
            for start in range(0, size, 1000):
                await resp.write(b"x" * min(1000, size - start))
            await resp.write_eof()
            return resp
        return web.Response(body=b"x" * size, content_type="text/plain")

    async def gzip_bomb(request: web.Request) -> web.Response:
        await record(request)
        body = gzip.compress(b"0" * (8 * 1024 * 1024))
        return web.Response(body=body, headers={"Content-Encoding": "gzip", "Content-Type": "text/plain"})

    async def gzipped(request: web.Request) -> web.Response:
        await record(request)
        token = request.headers.get("X-Token", "")
        return web.Response(body=gzip.compress(f"gz {token} gz".encode()),
                            headers={"Content-Encoding": "gzip", "Content-Type": "text/plain"})

    async def brotli(request: web.Request) -> web.Response:
        await record(request)
        return web.Response(body=b"\x1b\x03\x00\xf8\xa5", headers={"Content-Encoding": "br",
                                                                   "Content-Type": "text/plain"})

    app = web.Application()
    for path, handler in (("/echo", echo), ("/html", html_page), ("/binary", binary), ("/utf16", utf16),
                          ("/redirect", redirect), ("/slow", slow), ("/trickle", trickle), ("/big", big),
                          ("/gzip-bomb", gzip_bomb), ("/gzipped", gzipped), ("/brotli", brotli)):
        app.router.add_route("*", path, handler)
    app.router.add_route("*", "/{tail:.*}", echo)
    return app


MakeUpstream = Callable[..., Awaitable[Upstream]]


@pytest.fixture
def make_upstream(aiohttp_server: Callable[..., Awaitable[TestServer]]) -> MakeUpstream:
    async def make(ssl_context: ssl.SSLContext | None = None, *, host: str = "127.0.0.1",
                   port: int | None = None) -> Upstream:
        received: list[Received] = []
        kwargs: dict[str, Any] = {"ssl": ssl_context} if ssl_context is not None else {}
        server = await aiohttp_server(upstream_app(received), host=host, port=port, **kwargs)
        return Upstream(server, received)

    return make


class FakeDNS:
    """A :class:`~bridge.broker.hosts.HostResolver` answering from a table; ``answers`` may give a list of
    answers per name, used one after the other (DNS rebinding); ``calls`` counts lookups per name."""

    def __init__(self, table: dict[str, list[str] | list[list[str]]] | None = None) -> None:
        self.table = dict(table or {})
        self.calls: dict[str, int] = {}

    async def resolve(self, host: str, port: int) -> list[IPAddress]:
        count = self.calls.get(host, 0)
        self.calls[host] = count + 1
        answer = self.table.get(host)
        if answer is None:
            raise OSError(f"no such host {host}")
        chosen: Any = answer[min(count, len(answer) - 1)] if answer and isinstance(answer[0], list) else answer
        return [ipaddress.ip_address(str(a)) for a in chosen]


class SecretTable:
    """Stands in for the wiring's resolver: ``(path, field) -> ResolvedSecret`` (a lease reference: ``(lease id,
    field)``); unknown ones are 404."""

    def __init__(self) -> None:
        self.secrets: dict[tuple[str, str], ResolvedSecret] = {}
        self.asked: list[AnyReference] = []

    def add(self, path: str, field_name: str, value: str, allowed_hosts: str | None,
            fingerprint: str | None = None) -> str:
        fp = fingerprint or f"vault:v1:fp-{path.replace('/', '-')}-{field_name}"
        self.secrets[(path, field_name)] = ResolvedSecret(value, fp, allowed_hosts)
        return fp

    async def resolve(self, ref: AnyReference) -> ResolvedSecret:
        self.asked.append(ref)
        where = ref.path if isinstance(ref, Reference) else ref.lease_id
        try:
            return self.secrets[(where, ref.field)]
        except KeyError:
            raise NotFoundError(f"Nothing found for {where}.") from None


@pytest.fixture
def secrets_table() -> SecretTable:
    return SecretTable()


@pytest.fixture
def dns() -> FakeDNS:
    return FakeDNS({"api.test": ["127.0.0.1"], "other.test": ["127.0.0.1"]})


@pytest.fixture
async def broker(dns: FakeDNS) -> Any:
    async with Broker(timeout=10, max_response_bytes=64 * 1024, max_request_bytes=16 * 1024, dns=dns) as b:
        yield b


# -- a small PKI for HTTPS destinations ---------------------------------------------------------------------


@dataclass
class Pki:
    ca_path: Path
    server_context: Callable[[Iterable[str]], ssl.SSLContext]


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "broker test CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(minutes=5))
          .not_valid_after(now + dt.timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .sign(ca_key, hashes.SHA256()))
    ca_path = tmp_path / "ca.pem"
    ca_path.write_bytes(ca.public_bytes(serialization.Encoding.PEM))

    def server_context(names: Iterable[str]) -> ssl.SSLContext:
        key = ec.generate_private_key(ec.SECP256R1())
        names = list(names)
        cert = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME,
                                                                                     names[0])]))
                .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
                .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=1))
                .add_extension(x509.SubjectAlternativeName([x509.DNSName(n) for n in names]), critical=False)
                .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
                .sign(ca_key, hashes.SHA256()))
        stem = tmp_path / names[0]
        (stem.with_suffix(".crt")).write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        (stem.with_suffix(".key")).write_bytes(key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(str(stem.with_suffix(".crt")), str(stem.with_suffix(".key")))
        return ctx

    return Pki(ca_path, server_context)


def answer_text(answer: Any) -> str:
    """Everything the agent would receive, as one string (the JSON of the answer model)."""
    return json.dumps(answer.model_dump(mode="json"), ensure_ascii=False)
