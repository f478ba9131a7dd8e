"""The async Vault HTTP client: one session, one request choke point, sub-APIs as attributes.

``VaultClient._request`` is the only place that talks HTTP to Vault. It builds the URL (path segments are
quoted, tokens travel only in the ``X-Vault-Token`` header), applies the timeout, maps transport failures and
error statuses to :mod:`bridge.vault.errors`, and parses Vault's envelope into :class:`VaultResponse`.
"""

from __future__ import annotations

import asyncio
import json
import random
import ssl
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote, urlencode

import aiohttp
import structlog
from yarl import URL

from bridge.vault.breaker import CircuitBreaker
from bridge.vault.errors import (
    VaultConnectionError,
    VaultError,
    VaultHTTPError,
    VaultTimeoutError,
    error_for_status,
)
from bridge.vault.transport import LeanTransport, TransportConnectionError, TransportTimeoutError

log = structlog.get_logger("bridge.vault")

_IDEMPOTENT = frozenset({"GET", "LIST", "HEAD"})


@dataclass(frozen=True, slots=True)
class VaultResponse:
    """Vault's one response envelope (like the Go client's ``Secret``)."""

    status: int
    data: dict[str, Any] | None = None
    auth: dict[str, Any] | None = None
    wrap_info: dict[str, Any] | None = None
    warnings: list[str] = field(default_factory=list)
    lease_duration: int = 0
    renewable: bool = False
    request_id: str = ""
    raw: dict[str, Any] | None = None

    @classmethod
    def from_body(cls, status: int, body: dict[str, Any] | None) -> VaultResponse:
        if not body:
            return cls(status=status)
        return cls(
            status=status,
            data=body.get("data"),
            auth=body.get("auth"),
            wrap_info=body.get("wrap_info"),
            warnings=list(body.get("warnings") or []),
            lease_duration=int(body.get("lease_duration") or 0),
            renewable=bool(body.get("renewable")),
            request_id=str(body.get("request_id") or ""),
            raw=body,
        )


def quote_path(path: str) -> str:
    """Quote each segment of an API path; ``/`` separates segments."""
    return quote(path, safe="/")


@dataclass(frozen=True, slots=True)
class CallStats:
    """What one Vault call cost; handed to the observer (metrics, later)."""

    operation: str
    duration: float
    outcome: str
    request_id: str = ""  # Vault's request id (successful calls), for the audit trail


class VaultClient:
    """Async client for the parts of Vault's HTTP API the bridge uses.

    Owns its ``aiohttp.ClientSession`` unless one is passed in (then the caller closes it).
    ``token`` is the bridge's own token, kept current by :class:`bridge.vault.lifetime.TokenKeeper`;
    each call may pass another token (a child token) instead.
    """

    def __init__(
        self,
        addr: str,
        *,
        namespace: str = "",
        timeout: float = 10.0,
        cacert: str = "",
        pool_size: int = 100,
        session: aiohttp.ClientSession | None = None,
        retry_backoff: float = 0.05,
        observer: Callable[[CallStats], None] | None = None,
        breaker: CircuitBreaker | None = None,
        http_client: str = "aiohttp",
    ) -> None:
        self.addr = addr.rstrip("/")
        url = URL(self.addr)
        # for messages: never the user info of VAULT_ADDR (https://user:pass@vault)
        self.display_addr = str(url.with_user(None)) if url.user is not None or url.password is not None \
            else self.addr
        # "aiohttp" (default) or "lean": bridge/vault/transport.py, a minimal keep-alive HTTP/1.1 transport
        self.http_client = http_client
        self._lean: LeanTransport | None = None
        # fail fast while Vault is down (see bridge/vault/breaker.py)
        self.breaker = breaker if breaker is not None else CircuitBreaker()
        self.namespace = namespace
        self.timeout = timeout
        self._cacert = cacert
        self._pool_size = pool_size
        self._session = session
        self._owns_session = session is None
        self._retry_backoff = retry_backoff
        self._observer = observer
        self.token: str | None = None

        from bridge.vault.approle import AppRoleAPI
        from bridge.vault.kv import KvV2
        from bridge.vault.sys import SysAPI
        from bridge.vault.token import TokenAPI
        from bridge.vault.transit import TransitAPI

        self.kv = KvV2(self)
        self.transit = TransitAPI(self)
        self.auth_token = TokenAPI(self)
        self.approle = AppRoleAPI(self)
        self.sys = SysAPI(self)

    async def start(self) -> None:
        if self._session is None:
            ssl_ctx: ssl.SSLContext | bool = True
            if self.addr.startswith("https://") and self._cacert:
                ssl_ctx = ssl.create_default_context(cafile=self._cacert)
            connector = aiohttp.TCPConnector(
                limit=self._pool_size, keepalive_timeout=30, ssl=ssl_ctx, ttl_dns_cache=60
            )
            self._session = aiohttp.ClientSession(
                connector=connector,
                cookie_jar=aiohttp.DummyCookieJar(),  # Vault sets no cookies: skip the jar on every call
                timeout=aiohttp.ClientTimeout(total=self.timeout),
                json_serialize=json.dumps,
                # our headers go with each request (no per-call merge of session defaults)
                skip_auto_headers=("User-Agent", "Accept", "Accept-Encoding"),
            )
        if self.http_client == "lean" and self._lean is None:
            ctx = ssl.create_default_context(cafile=self._cacert or None) if self.addr.startswith("https://") \
                else None
            self._lean = LeanTransport(self.addr, pool_size=self._pool_size, ssl_context=ctx)

    async def close(self) -> None:
        if self._session is not None and self._owns_session:
            await self._session.close()
        self._session = None
        if self._lean is not None:
            await self._lean.close()
            self._lean = None

    async def __aenter__(self) -> VaultClient:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def request(
        self,
        method: str,
        path: str,
        *,
        operation: str,
        token: str | None = None,
        use_token: bool = True,
        json_body: Any = None,
        params: Mapping[str, str] | None = None,
        headers: Mapping[str, str] | None = None,
        content_type: str | None = None,
        expensive: bool = False,
    ) -> VaultResponse:
        """The one choke point. ``path`` is already quoted (see :func:`quote_path`). ``expensive``: the call's
        cost is chosen by the caller's input (Transit), so its timeouts do not feed the circuit breaker."""
        if self._session is None:
            await self.start()
        assert self._session is not None
        hdrs: dict[str, str] = {"User-Agent": "vault-mcp-bridge", "X-Vault-Request": "true"}
        if self.namespace:
            hdrs["X-Vault-Namespace"] = self.namespace
        chosen = token if token is not None else (self.token if use_token else None)
        if use_token and chosen:
            hdrs["X-Vault-Token"] = chosen
        if headers:
            hdrs.update(headers)
        data: bytes | None = None
        if json_body is not None:
            data = json.dumps(json_body, separators=(",", ":")).encode()
            hdrs["Content-Type"] = content_type or "application/json"
        # ``path`` is quoted already: build the URL once, without yarl re-quoting it on every call
        url = URL(f"{self.addr}/v1/{path}", encoded=True)
        attempts = 2 if method in _IDEMPOTENT else 1
        started = time.perf_counter()
        outcome = "ok"
        vault_request_id = ""
        budget: float | None = None  # the first attempt has the session's full VAULT_TIMEOUT
        try:
            for attempt in range(attempts):
                probe = self.breaker.before_call()  # raises CircuitOpenError while Vault is known down
                try:
                    resp = await self._once(method, url, hdrs, data, params, path, budget)
                except BaseException as exc:
                    self.breaker.record(exc, probe, expensive=expensive)
                    if not isinstance(exc, VaultConnectionError) or attempt + 1 >= attempts:
                        raise
                    failed: VaultConnectionError = exc
                else:
                    self.breaker.on_success(probe)
                    vault_request_id = resp.request_id
                    return resp
                # Idempotent reads get one retry after a short jittered pause; writes never. The retry gets
                # what is left of VAULT_TIMEOUT, so the call as a whole never outlasts it.
                pause = self._retry_backoff * (0.5 + random.random())  # noqa: S311
                budget = self.timeout - (time.perf_counter() - started) - pause
                if budget < 0.05:
                    raise failed
                await asyncio.sleep(pause)
            raise AssertionError("unreachable")
        except VaultHTTPError as exc:
            outcome = type(exc).__name__
            raise
        except VaultError as exc:
            outcome = type(exc).__name__
            raise
        finally:
            if self._observer is not None:
                self._observer(CallStats(operation, time.perf_counter() - started, outcome, vault_request_id))

    async def _once(
        self,
        method: str,
        url: URL,
        headers: dict[str, str],
        data: bytes | None,
        params: Mapping[str, str] | None,
        path: str,
        budget: float | None = None,
    ) -> VaultResponse:
        assert self._session is not None
        try:
            if self._lean is not None:
                target = url.raw_path_qs if not params else str(url.raw_path) + "?" + urlencode(params)
                answer = await self._lean.request(method, target, headers, data,
                                                  self.timeout if budget is None else budget)
                raw, status, retry_after = answer.body, answer.status, answer.retry_after
            else:
                extra: dict[str, Any] = {} if budget is None else {"timeout": aiohttp.ClientTimeout(total=budget)}
                async with self._session.request(method, url, data=data, headers=headers, params=params,
                                                 **extra) as resp:
                    raw = await resp.read()
                    status = resp.status
                    retry_after = resp.headers.get("Retry-After")
        except (TimeoutError, TransportTimeoutError):
            raise VaultTimeoutError(
                f"vault did not answer within {self.timeout:g}s ({method} {_template(path)})"
            ) from None
        except (aiohttp.ClientError, TransportConnectionError) as exc:
            raise VaultConnectionError(
                f"cannot reach vault at {self.display_addr}: {type(exc).__name__}"
            ) from None
        body: dict[str, Any] | None = None
        if raw:
            try:
                loaded = json.loads(raw)
            except ValueError:
                loaded = None
            if isinstance(loaded, dict):
                body = loaded
        if status < 300:
            return VaultResponse.from_body(status, body)
        if status < 400:
            # A redirect not followed (the lean transport follows none; aiohttp gives up after 10): a standby
            # node pointing elsewhere. Never a success: the write did not happen.
            raise error_for_status(status, [f"vault answered a {status} redirect (standby node?)"])
        errors = [str(e) for e in (body or {}).get("errors") or []]
        if body is None and raw and status >= 500:
            errors = [raw[:200].decode("utf-8", "replace")]
        after: float | None = None
        if retry_after is not None:
            try:
                after = float(retry_after)
            except ValueError:
                after = None
        raise error_for_status(status, errors, body=body, retry_after=after)


def _template(path: str) -> str:
    """The first two path segments: enough to say which API, never a secret path."""
    return "/".join(path.split("/")[:2]) + "/…"
