"""A lean HTTP/1.1 transport for the Vault client (``VAULT_HTTP_CLIENT=lean``; aiohttp is the default).

Vault's API is narrow: JSON requests, JSON answers with ``Content-Length`` (or chunked for large ones), one
host. This transport does just that over asyncio streams with a keep-alive pool, and so skips most of what a
general client does per call (request objects, cookie jar, header multidicts, tracing, redirects). In the
benchmark that is most of the ~40 % of the bridge's CPU that aiohttp's client took per proxied read
(docs/scale.md).

Errors: :class:`TransportConnectionError` (refused, reset, closed early, malformed answer) and
:class:`TransportTimeoutError`; the client maps them to its own exceptions. A connection is reused only after
a complete answer without ``Connection: close``, and dropped when idle longer than ``keepalive`` seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import time
from collections import deque
from dataclasses import dataclass
from urllib.parse import urlsplit


class TransportConnectionError(Exception):
    """No usable answer: connection refused or reset, closed before the answer was complete, malformed."""


class TransportTimeoutError(Exception):
    """The answer did not arrive in time."""


@dataclass(slots=True)
class _Conn:
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    last_used: float

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.writer.close()


@dataclass(frozen=True, slots=True)
class RawResponse:
    status: int
    retry_after: str | None
    body: bytes


_NO_BODY = frozenset({204, 304})


class LeanTransport:
    def __init__(self, addr: str, *, pool_size: int = 100, ssl_context: ssl.SSLContext | None = None,
                 keepalive: float = 30.0) -> None:
        parts = urlsplit(addr)
        self._tls = parts.scheme == "https"
        self._host = parts.hostname or "127.0.0.1"
        self._port = parts.port or (443 if self._tls else 80)
        host_header = self._host if parts.port is None else f"{self._host}:{parts.port}"
        self._host_line = f"Host: {host_header}\r\n".encode()
        self._ssl = (ssl_context or ssl.create_default_context()) if self._tls else None
        self._keepalive = keepalive
        self._idle: deque[_Conn] = deque()
        self._slots = asyncio.Semaphore(pool_size)
        self._closed = False

    async def _acquire(self) -> _Conn:
        now = time.monotonic()
        while self._idle:
            conn = self._idle.pop()
            if now - conn.last_used < self._keepalive and not conn.reader.at_eof():
                return conn
            conn.close()
        try:
            reader, writer = await asyncio.open_connection(
                self._host, self._port, ssl=self._ssl, server_hostname=self._host if self._tls else None,
                limit=2 ** 20)
        except (OSError, ssl.SSLError) as exc:
            raise TransportConnectionError(type(exc).__name__) from None
        return _Conn(reader, writer, now)

    async def request(self, method: str, target: str, headers: dict[str, str], body: bytes | None,
                      deadline: float) -> RawResponse:
        """Send ``method target`` (``/v1/…?query``, encoded); the answer within ``deadline`` seconds."""
        if self._closed:
            raise TransportConnectionError("transport closed")
        head = [f"{method} {target} HTTP/1.1\r\n".encode(), self._host_line]
        for name, value in headers.items():
            if "\r" in value or "\n" in value or "\r" in name or "\n" in name:
                raise ValueError(f"header {name!r} contains a line break")  # never splice a request
            head.append(f"{name}: {value}\r\n".encode())
        if body is not None:
            head.append(b"Content-Length: %d\r\n" % len(body))
        elif method in ("POST", "PUT", "PATCH"):
            head.append(b"Content-Length: 0\r\n")
        head.append(b"\r\n")
        if body:
            head.append(body)
        payload = b"".join(head)
        conn: _Conn | None = None
        try:
            # the deadline covers waiting for a free pool slot too, as aiohttp's total timeout does
            async with asyncio.timeout(deadline), self._slots:
                conn = await self._acquire()
                conn.writer.write(payload)
                response, reusable = await self._read(conn.reader, method)
                if reusable and not self._closed:
                    conn.last_used = time.monotonic()
                    self._idle.append(conn)
                else:
                    conn.close()
                return response
        except TimeoutError:
            if conn is not None:
                conn.close()
            raise TransportTimeoutError() from None
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError) as exc:
            if conn is not None:
                conn.close()
            raise TransportConnectionError(type(exc).__name__) from None
        except BaseException:
            if conn is not None:
                conn.close()  # cancelled mid-answer: the stream is in an unknown state
            raise

    async def _read(self, reader: asyncio.StreamReader, method: str) -> tuple[RawResponse, bool]:
        raw_head = await reader.readuntil(b"\r\n\r\n")
        lines = raw_head[:-4].split(b"\r\n")
        version, _, rest = lines[0].partition(b" ")
        status = int(rest[:3])
        length: int | None = None
        chunked = False
        close = version != b"HTTP/1.1"
        retry_after: str | None = None
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            key = name.strip().lower()
            if key == b"content-length":
                length = int(value.strip())
            elif key == b"transfer-encoding":
                chunked = b"chunked" in value.lower()
            elif key == b"connection":
                close = close or b"close" in value.lower()
            elif key == b"retry-after":
                retry_after = value.strip().decode("latin-1")
        if method == "HEAD" or status in _NO_BODY or 100 <= status < 200:
            body = b""
        elif chunked:
            parts = []
            while True:
                size_line = await reader.readuntil(b"\r\n")
                size = int(size_line.split(b";", 1)[0].strip(), 16)
                if size == 0:
                    while (await reader.readuntil(b"\r\n")) != b"\r\n":
                        pass  # trailers
                    break
                parts.append((await reader.readexactly(size + 2))[:-2])
            body = b"".join(parts)
        elif length is not None:
            body = await reader.readexactly(length)
        else:
            body = await reader.read()  # delimited by close
            close = True
        return RawResponse(status, retry_after, body), not close

    async def close(self) -> None:
        self._closed = True
        while self._idle:
            conn = self._idle.pop()
            conn.close()
            with contextlib.suppress(Exception):
                await conn.writer.wait_closed()
