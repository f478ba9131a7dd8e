"""How the Vault client's bytes travel: a small :class:`Transport` protocol and its one implementation over
aiohttp's ``ClientSession`` (a kept-alive pool to Vault).

:class:`bridge.vault.client.VaultClient` builds every request (URL, headers, body) and reads every answer
(status → exception, the envelope); a transport only moves one request and its answer. Unit tests can plug an
in-memory transport (``devtools.memvault``) and so test the client and everything above it without a socket.

A transport raises ``TimeoutError`` when the answer did not arrive in time, and
``ConnectionError`` when there was no usable answer (refused, reset, DNS, TLS); the client turns both into its
own :mod:`bridge.vault.errors`.
"""

from __future__ import annotations

import json
import ssl
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import aiohttp
from yarl import URL


@dataclass(frozen=True, slots=True)
class RawAnswer:
    """One HTTP answer, undecoded."""

    status: int
    body: bytes
    retry_after: str | None = None


class Transport(Protocol):
    async def send(self, method: str, url: URL, headers: Mapping[str, str], body: bytes | None,
                   params: Mapping[str, str] | None, budget: float | None) -> RawAnswer:
        """Send one request to ``url`` (absolute, already quoted) and return its answer. ``budget``: the seconds
        this request may take, ``None`` for the transport's default timeout."""

    async def close(self) -> None: ...


class AiohttpTransport:
    """Requests through an ``aiohttp.ClientSession``: ours (a pool of ``pool_size`` kept-alive connections,
    closed by :meth:`close`) unless ``session`` is given (the caller owns and closes it)."""

    def __init__(self, *, timeout: float, pool_size: int = 100, cacert: str = "", https: bool = False,
                 session: aiohttp.ClientSession | None = None) -> None:
        self._timeout = timeout
        self._pool_size = pool_size
        self._ssl: ssl.SSLContext | bool = ssl.create_default_context(cafile=cacert) if https and cacert else True
        self._session = session
        self._owns_session = session is None

    def _open(self) -> aiohttp.ClientSession:
        connector = aiohttp.TCPConnector(limit=self._pool_size, keepalive_timeout=30, ssl=self._ssl,
                                         ttl_dns_cache=60)
        self._session = aiohttp.ClientSession(
            connector=connector,
            cookie_jar=aiohttp.DummyCookieJar(),  # Vault sets no cookies: skip the jar on every call
            timeout=aiohttp.ClientTimeout(total=self._timeout),
            json_serialize=json.dumps,
            # no skip_auto_headers: it sends every request down aiohttp's slow header path; the client's headers
            # carry User-Agent, Accept and Accept-Encoding instead (see VaultClient)
        )
        return self._session

    async def send(self, method: str, url: URL, headers: Mapping[str, str], body: bytes | None,
                   params: Mapping[str, str] | None, budget: float | None) -> RawAnswer:
        session = self._session or self._open()
        extra: dict[str, Any] = {} if budget is None else {"timeout": aiohttp.ClientTimeout(total=budget)}
        try:
            async with session.request(method, url, data=body, headers=headers, params=params, **extra) as resp:
                return RawAnswer(resp.status, await resp.read(), resp.headers.get("Retry-After"))
        except TimeoutError:
            raise  # aiohttp's timeouts are TimeoutErrors (some are ClientErrors too)
        except aiohttp.ClientError as exc:
            raise ConnectionError(type(exc).__name__) from None

    async def close(self) -> None:
        if self._session is not None and self._owns_session:
            await self._session.close()
        self._session = None
