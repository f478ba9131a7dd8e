"""The async Vault HTTP client: one transport, one request choke point, sub-APIs as attributes.

``VaultClient.request`` is the only place that talks HTTP to Vault. It builds the URL (path segments are
quoted, tokens travel only in the ``X-Vault-Token`` header), applies the timeout, retries an idempotent call
once after a connection failure, consults the circuit breaker, maps transport failures and error statuses to
:mod:`bridge.vault.errors`, and parses Vault's envelope into :class:`~bridge.vault.models.VaultResponse`. The
client holds no token: every call passes the one it runs under (the bridge's, an agent's child token, an
admin's), or none.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp
import orjson
import structlog
from yarl import URL

from bridge.vault.approle import AppRoleAPI
from bridge.vault.breaker import CircuitBreaker
from bridge.vault.dynamic import DatabaseAPI, LeasesAPI, PkiAPI, SshAPI
from bridge.vault.errors import (
    VaultConnectionError,
    VaultError,
    VaultTimeoutError,
    error_for_status,
)
from bridge.vault.kv import KvV2
from bridge.vault.logical import LogicalAPI
from bridge.vault.models import VaultResponse
from bridge.vault.sys import SysAPI
from bridge.vault.token import TokenAPI
from bridge.vault.transit import TransitAPI
from bridge.vault.transport import AiohttpTransport, Transport

log = structlog.get_logger("bridge.vault")

_IDEMPOTENT = frozenset({"GET", "LIST", "HEAD"})


@dataclass(frozen=True, slots=True)
class CallStats:
    """What one Vault call cost; handed to the observer (metrics, the audit trail's Vault request ids, tracing)."""

    operation: str
    duration: float
    outcome: str
    request_id: str = ""  # Vault's request id (successful calls), for the audit trail


class VaultClient:
    """Async client for the parts of Vault's HTTP API the bridge uses.

    Requests go through ``transport`` (default: :class:`~bridge.vault.transport.AiohttpTransport` over its own
    ``ClientSession``, or over ``session`` when one is passed in: the caller then closes it).
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
        transport: Transport | None = None,
        retry_backoff: float = 0.05,
        observer: Callable[[CallStats], None] | None = None,
        breaker: CircuitBreaker | None = None,
    ) -> None:
        self.addr = addr.rstrip("/")
        url = URL(self.addr)
        # for messages: never the user info of VAULT_ADDR (https://user:pass@vault)
        self.display_addr = str(url.with_user(None)) if url.user is not None or url.password is not None \
            else self.addr
        # fail fast while Vault is down (see bridge/vault/breaker.py)
        self.breaker = breaker if breaker is not None else CircuitBreaker()
        self.namespace = namespace
        self.timeout = timeout
        self.transport: Transport = transport if transport is not None else AiohttpTransport(
            timeout=timeout, pool_size=pool_size, cacert=cacert, https=self.addr.startswith("https://"),
            session=session)
        self._retry_backoff = retry_backoff
        self._observer = observer
        # Accept and Accept-Encoding as aiohttp would add them, minus compression (Vault's answers are small)
        self._headers: dict[str, str] = {"User-Agent": "vault-mcp-bridge", "X-Vault-Request": "true",
                                         "Accept": "*/*", "Accept-Encoding": "identity"}
        if namespace:
            self._headers["X-Vault-Namespace"] = namespace

        self.kv = KvV2(self)
        self.transit = TransitAPI(self)
        self.auth_token = TokenAPI(self)
        self.approle = AppRoleAPI(self)
        self.sys = SysAPI(self)
        self.logical = LogicalAPI(self)
        self.database = DatabaseAPI(self)
        self.pki = PkiAPI(self)
        self.ssh = SshAPI(self)
        self.leases = LeasesAPI(self)

    async def close(self) -> None:
        await self.transport.close()

    async def __aenter__(self) -> VaultClient:
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
        json_body: Any = None,
        params: Mapping[str, str] | None = None,
        headers: Mapping[str, str] | None = None,
        content_type: str | None = None,
        expensive: bool = False,
    ) -> VaultResponse:
        """The one choke point. ``path`` is already quoted (see :func:`bridge.vault.api.quote_path`); ``token``
        goes into ``X-Vault-Token`` (``None``: an unauthenticated call). ``expensive``: the call's cost is chosen
        by the caller's input (Transit), so its timeouts do not feed the circuit breaker."""
        hdrs = dict(self._headers)
        if token:
            hdrs["X-Vault-Token"] = token
        if headers:
            hdrs.update(headers)
        data: bytes | None = None
        if json_body is not None:
            data = _dumps(json_body)
            hdrs["Content-Type"] = content_type or "application/json"
        # ``path`` is quoted already: build the URL once, without yarl re-quoting it on every call
        url = URL(f"{self.addr}/v1/{path}", encoded=True)
        attempts = 2 if method in _IDEMPOTENT else 1
        started = time.perf_counter()
        outcome = "ok"
        vault_request_id = ""
        budget: float | None = None  # the first attempt has the full VAULT_TIMEOUT
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
        except VaultError as exc:
            outcome = type(exc).__name__
            raise
        finally:
            if self._observer is not None:
                self._observer(CallStats(operation, time.perf_counter() - started, outcome, vault_request_id))

    async def _once(self, method: str, url: URL, headers: dict[str, str], data: bytes | None,
                    params: Mapping[str, str] | None, path: str, budget: float | None) -> VaultResponse:
        try:
            answer = await self.transport.send(method, url, headers, data, params, budget)
        except TimeoutError:
            raise VaultTimeoutError(
                f"vault did not answer within {self.timeout:g}s ({method} {_template(path)})"
            ) from None
        except ConnectionError as exc:
            raise VaultConnectionError(f"cannot reach vault at {self.display_addr}: {exc}") from None
        status, raw = answer.status, answer.body
        body: dict[str, Any] | None = None
        if raw:
            try:
                loaded = _loads(raw)
            except ValueError:
                loaded = None
            if isinstance(loaded, dict):
                body = loaded
        if status < 300:
            return VaultResponse.from_body(status, body)
        if status < 400:
            # A redirect not followed (aiohttp gives up after 10): a standby node pointing elsewhere. Never a
            # success: the write did not happen.
            raise error_for_status(status, [f"vault answered a {status} redirect (standby node?)"])
        errors = [str(e) for e in (body or {}).get("errors") or []]
        if body is None and raw and status >= 500:
            errors = [raw[:200].decode("utf-8", "replace")]
        after: float | None = None
        if answer.retry_after is not None:
            try:
                after = float(answer.retry_after)
            except ValueError:
                after = None
        raise error_for_status(status, errors, body=body, retry_after=after)


def _dumps(value: Any) -> bytes:
    """A request body: orjson, or the standard library for what orjson refuses (an integer beyond 64 bits)."""
    try:
        return orjson.dumps(value)
    except TypeError:
        return json.dumps(value, separators=(",", ":")).encode()


_DIGITS_AS_ZERO = bytes(0x30 if 0x30 <= byte <= 0x39 else 0x78 for byte in range(256))
"""A ``bytes.translate`` table: every digit becomes ``0``, every other byte ``x``."""
_SIXTEEN_DIGITS = b"0" * 16


def _loads(raw: bytes) -> Any:
    """Vault's answer: orjson, unless the body has a run of 16 digits (orjson reads an integer beyond 64 bits as a
    float, and the standard library keeps it exact) or orjson refuses it (the standard library is more lenient):
    the same values as ``json.loads`` either way."""
    # a run of 16 digits, found by translating and a substring search: ~8x cheaper than re.search(rb"[0-9]{16}")
    if _SIXTEEN_DIGITS not in raw.translate(_DIGITS_AS_ZERO):
        try:
            return orjson.loads(raw)
        except orjson.JSONDecodeError:
            pass
    return json.loads(raw)


def _template(path: str) -> str:
    """The first two path segments: enough to say which API, never a secret path."""
    return "/".join(path.split("/")[:2]) + "/…"
