"""An in-memory :class:`~bridge.vault.transport.Transport` for the Vault client: unit tests of the client and of
everything above it, without a socket.

``MemoryTransport(handler)`` calls ``handler(request)`` for every request the client sends and returns its answer;
the handler may also raise ``TimeoutError`` or ``ConnectionError`` to stand for a Vault that does not answer or
cannot be reached. Every request is kept in ``requests``::

    def vault(request: MemoryRequest) -> RawAnswer:
        if request.path == "secret/data/mcp/alice/db":
            return answer(200, {"data": {"data": {"pw": "x"}, "metadata": {"version": 3}}})
        return answer(404, {"errors": []})

    client = VaultClient("http://vault.test", transport=MemoryTransport(vault))
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

from yarl import URL

from bridge.vault.transport import RawAnswer


@dataclass(frozen=True, slots=True)
class MemoryRequest:
    method: str
    path: str  # below /v1/, as sent (still percent-encoded)
    query: dict[str, str]
    headers: dict[str, str]
    body: Any  # the decoded JSON body, or None

    @property
    def token(self) -> str | None:
        return self.headers.get("X-Vault-Token")


MemoryHandler = Callable[[MemoryRequest], RawAnswer | Awaitable[RawAnswer]]


def answer(status: int = 200, body: Any = None, *, retry_after: str | None = None) -> RawAnswer:
    """An answer with ``body`` as JSON (bytes as they are; ``None``: empty)."""
    raw = body if isinstance(body, bytes) else (b"" if body is None else json.dumps(body).encode())
    return RawAnswer(status, raw, retry_after)


class MemoryTransport:
    def __init__(self, handler: MemoryHandler) -> None:
        self._handler = handler
        self.requests: list[MemoryRequest] = []
        self.closed = False

    async def send(self, method: str, url: URL, headers: Mapping[str, str], body: bytes | None,
                   params: Mapping[str, str] | None, budget: float | None) -> RawAnswer:
        request = MemoryRequest(method, url.raw_path.removeprefix("/v1/"), {**url.query, **(params or {})},
                                dict(headers), json.loads(body) if body else None)
        self.requests.append(request)
        result = self._handler(request)
        return result if isinstance(result, RawAnswer) else await result

    async def close(self) -> None:
        self.closed = True
