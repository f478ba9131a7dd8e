"""What every sub-API needs from the client: one request method (:class:`Requester`), and path quoting.

The sub-APIs (``kv``, ``transit``, ``token``, ``approle``, ``sys``, ``logical``) depend on this protocol, not on
:class:`bridge.vault.client.VaultClient`, so the client imports them and none of them imports the client.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol
from urllib.parse import quote

from bridge.vault.models import VaultResponse


class Requester(Protocol):
    async def request(
        self,
        method: str,
        path: str,
        *,
        operation: str,
        token: str | None = None,
        json_body: Any = None,
        params: Mapping[str, str] | None = None,
        headers: Mapping[str, str] | None = None,
        content_type: str | None = None,
        expensive: bool = False,
    ) -> VaultResponse:
        """One Vault call (see :meth:`bridge.vault.client.VaultClient.request`)."""


def quote_path(path: str) -> str:
    """Quote each segment of an API path; ``/`` separates segments."""
    return quote(path, safe="/")


LIST = {"list": "true"}
"""``GET …?list=true``: Vault's documented twin of the ``LIST`` verb, which passes proxies and HTTP parsers that
refuse non-standard methods (llhttp, hence aiohttp servers, answer ``LIST`` with 400)."""
