"""The broker's outbound HTTP client: one ``aiohttp.ClientSession`` whose connections go only where told.

The broker resolves a destination's name once, checks the addresses, and hands the ones it accepted to
:meth:`OutboundClient.fetch`. The session's connector has no DNS of its own: its resolver
(:class:`PinnedResolver`) answers only with the addresses pinned for the current call (a context variable, so
concurrent calls never see each other's pins) and fails for any other name. There is therefore no second lookup
between the check and the connection (no DNS rebinding, no time-of-check/time-of-use gap). The URL keeps the
host name, so the ``Host`` header, TLS SNI and certificate verification are for the name, not the address.

Connections are never reused (``force_close``): a pooled connection to a name was checked for another call's
secrets, whose allowed hosts may differ. There is no cookie jar (cookies of one agent's destination never reach
another call), no proxy from the environment, no redirect following, and only ``gzip``/``deflate`` content
encodings are asked for and accepted (a body the bridge cannot decode cannot be redacted).
"""

from __future__ import annotations

import socket
import ssl
from collections.abc import Mapping, Sequence
from contextvars import ContextVar
from dataclasses import dataclass

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult
from yarl import URL

from bridge.broker.hosts import IPAddress

ACCEPTED_ENCODINGS = frozenset({"", "identity", "gzip", "x-gzip", "deflate"})
MAX_CONNECTIONS = 100
_CHUNK = 64 * 1024

_PINS: ContextVar[Mapping[str, Sequence[IPAddress]] | None] = ContextVar("broker_pins", default=None)


class PinnedResolver(AbstractResolver):
    """Resolves only names pinned for the current call (:data:`_PINS`), to exactly the pinned addresses."""

    async def resolve(self, host: str, port: int = 0,
                      family: socket.AddressFamily = socket.AF_INET) -> list[ResolveResult]:
        pins = _PINS.get()
        addresses = pins.get(host.lower().removesuffix(".")) if pins else None
        if not addresses:
            raise OSError(f"{host} is not pinned by the broker")
        return [ResolveResult(hostname=host, host=str(ip), port=port,
                              family=socket.AF_INET6 if ip.version == 6 else socket.AF_INET,
                              proto=socket.IPPROTO_TCP, flags=socket.AI_NUMERICHOST)
                for ip in addresses]

    async def close(self) -> None:
        return None


class ResponseTooLargeError(Exception):
    def __init__(self, status: int) -> None:
        super().__init__(status)
        self.status = status


class UndecodableResponseError(Exception):
    def __init__(self, status: int) -> None:
        super().__init__(status)
        self.status = status


@dataclass(frozen=True, slots=True)
class RawAnswer:
    """The destination's answer, not yet redacted. Header names and values are decoded as UTF-8 when they are
    valid UTF-8, else as Latin-1 (what HTTP/1.1 carries)."""

    status: int
    reason: str
    headers: list[tuple[str, str]]
    body: bytes
    content_type: str
    charset: str | None


def _header_text(raw: bytes) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("latin-1")


class OutboundClient:
    """Owns the broker's ``ClientSession`` (made in :meth:`start`, closed in :meth:`close`)."""

    def __init__(self, *, ssl_context: ssl.SSLContext, max_connections: int = MAX_CONNECTIONS) -> None:
        self._ssl = ssl_context
        self._max_connections = max_connections
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        if self._session is not None:
            return
        connector = aiohttp.TCPConnector(resolver=PinnedResolver(), use_dns_cache=False, force_close=True,
                                         limit=self._max_connections, ssl=self._ssl)
        self._session = aiohttp.ClientSession(connector=connector, cookie_jar=aiohttp.DummyCookieJar(),
                                              trust_env=False, auto_decompress=True,
                                              timeout=aiohttp.ClientTimeout(total=None))

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def fetch(self, *, method: str, url: URL, headers: Mapping[str, str], body: bytes | None,
                    addresses: Sequence[IPAddress], max_response_bytes: int) -> RawAnswer:
        """Send one request to ``url`` connecting only to ``addresses``; read at most ``max_response_bytes``
        of decoded body. Raises ``aiohttp.ClientError``, :class:`ResponseTooLargeError`,
        :class:`UndecodableResponseError`. The caller bounds the time."""
        if self._session is None:
            raise RuntimeError("OutboundClient.start() was not called")
        host = (url.raw_host or "").lower().removesuffix(".")
        token = _PINS.set({host: tuple(addresses)})
        try:
            async with self._session.request(method, url, headers=dict(headers), data=body,
                                             allow_redirects=False, proxy=None, compress=None) as resp:
                encoding = resp.headers.get("Content-Encoding", "").strip().lower()
                if encoding not in ACCEPTED_ENCODINGS:
                    raise UndecodableResponseError(resp.status)
                chunks: list[bytes] = []
                total = 0
                async for chunk in resp.content.iter_chunked(_CHUNK):
                    total += len(chunk)
                    if total > max_response_bytes:
                        raise ResponseTooLargeError(resp.status)
                    chunks.append(chunk)
                return RawAnswer(
                    status=resp.status, reason=resp.reason or "",
                    headers=[(_header_text(k), _header_text(v)) for k, v in resp.raw_headers],
                    body=b"".join(chunks), content_type=resp.content_type, charset=resp.charset)
        finally:
            _PINS.reset(token)


def make_ssl_context(ca_file: str = "") -> ssl.SSLContext:
    """The system's trust store, plus ``ca_file`` (PEM) when given; hostname checks on."""
    context = ssl.create_default_context()
    if ca_file:
        context.load_verify_locations(cafile=ca_file)
    return context


__all__ = ["OutboundClient", "PinnedResolver", "RawAnswer", "ResponseTooLargeError", "UndecodableResponseError",
           "make_ssl_context"]
