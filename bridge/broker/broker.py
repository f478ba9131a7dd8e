"""Brokered HTTP: send a request that uses secrets, answer without them.

:meth:`Broker.send` takes the caller's request (``method``, ``url``, ``headers``, ``body``; any header value, the
URL's path and query, and the body may hold ``{{secret://<path>#<field>}}`` and ``{{lease://<lease_id>#password}}``
placeholders) and a resolver callback that turns a reference (:data:`~bridge.references.AnyReference`) into a
:class:`ResolvedSecret` (its value, fingerprint and allowed hosts) with the caller's own identity; the broker
knows nothing of Vault or of scopes. In order:

1. The request is checked (method, URL, header names, placeholders): 400 ``invalid_request`` /
   ``invalid_reference``. At least one reference is required (the bridge is no open proxy). References may not
   appear in the URL's scheme, host or port, and the URL has no user info.
2. A cloud-metadata host name or a refused IP literal is refused (403 ``broker_address_refused``) before any
   secret is resolved.
3. Each distinct reference is resolved through the callback (its errors pass through unchanged).
4. Every secret must be brokerable (403 ``broker_not_brokerable``: no or a malformed ``bridge.allowed_hosts``; for
   a lease reference, ``{{lease://<lease_id>#password}}``, its database role's ``allowed_hosts`` from ``provision
   --dynamic``) and list the destination (403 ``broker_host_not_allowed``), see :mod:`bridge.broker.hosts`.
5. Values are substituted: as they are in header values; percent-encoded (every character but
   ``A-Z a-z 0-9 - . _ ~``) in the URL; in the body JSON-string-escaped when the request's ``Content-Type`` is
   JSON (``application/json``, ``…+json``: placeholders belong inside JSON strings), ``quote_plus``-encoded for
   ``application/x-www-form-urlencoded``, as they are otherwise. A header value that would then hold a line
   break or another control character is refused (400) without naming the value; the body is capped by
   ``BROKER_MAX_REQUEST_BYTES`` and the URL by 8 KiB (413 ``broker_request_too_large``).
6. Within ``BROKER_TIMEOUT`` (504 ``broker_timeout``): the host name is resolved once, the addresses are
   classified (refused ones dropped, internal ones kept only when every secret lists the destination explicitly;
   none left: 403 ``broker_address_refused``), the connection is pinned to the accepted addresses, the request
   sent, and the whole answer read, at most ``BROKER_MAX_RESPONSE_BYTES`` of decoded body (else 502
   ``broker_response_too_large``: an answer is never truncated, since a cut could leave part of a value that no
   longer matches a whole form). No redirect is followed: a 3xx is the answer, with its ``Location``.
7. The answer's status line, header names and values and body are redacted (:mod:`bridge.broker.redact`),
   every value replaced by ``[redacted:<fingerprint>]``. A textual body (``text/*``, JSON, XML, form data,
   JavaScript, or no content type and valid UTF-8) is decoded with its charset (UTF-8 by default) and answered as
   text; any other body is redacted as bytes and answered base64-encoded (``body_encoding``).

Nothing the caller sent after substitution, and nothing the destination answered before redaction, is logged
or put into an error: log lines carry the method, host, port, status, sizes and the number of redactions.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import ipaddress
import json
import re
import ssl
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import quote, quote_plus

import aiohttp
import structlog
from pydantic import BaseModel, ConfigDict, Field
from yarl import URL

from bridge.broker.client import (
    OutboundClient,
    RawAnswer,
    ResponseTooLargeError,
    UndecodableResponseError,
    make_ssl_context,
)
from bridge.broker.hosts import (
    METADATA_HOSTS,
    AddressClass,
    AllowedHost,
    HostResolver,
    IPAddress,
    SystemResolver,
    classify,
    explicit_for_all,
    normalise_host,
    parse_allowed_hosts,
)
from bridge.broker.redact import Redactor
from bridge.config import Settings
from bridge.errors import (
    BridgeError,
    BrokerRefusedError,
    BrokerUpstreamError,
    InvalidRequestError,
    PayloadTooLargeError,
)
from bridge.references import AnyReference, LeaseReference, collect_references, find_placeholders, substitute

log = structlog.get_logger("bridge.broker")

METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")
"""Methods a brokered request may use (no ``TRACE``, which echoes the request, and no ``CONNECT``)."""
FORBIDDEN_HEADERS = frozenset({
    "host", "content-length", "transfer-encoding", "connection", "keep-alive", "upgrade", "te", "trailer",
    "proxy-authorization", "proxy-connection", "expect", "accept-encoding", "http2-settings",
})
"""Headers the caller may not set: the bridge frames the request, names the host and picks the encodings."""
MAX_HEADERS = 64
MAX_HEADER_VALUE = 8192
MAX_URL_LENGTH = 8192
MAX_REFERENCES = 16
"""The most distinct secret references one brokered request may use."""
USER_AGENT = "vault-mcp-bridge"
DEFAULT_TIMEOUT = 30.0
DEFAULT_MAX_RESPONSE_BYTES = 1024 * 1024
DEFAULT_MAX_REQUEST_BYTES = 1024 * 1024

_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]{1,256}")
_URL = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*)://(?P<authority>[^/?#]*)(?P<rest>[/?#].*)?", re.S)
_URL_REST = re.compile(r"(?:[A-Za-z0-9\-._~:/?#\[\]@!$&'()*+,;=]|%[0-9A-Fa-f]{2})*")
_BAD_HEADER_CHARS = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
_TEXT_TYPES = ("application/json", "application/xml", "application/x-www-form-urlencoded",
               "application/javascript", "application/x-ndjson", "application/yaml", "application/graphql")


@dataclass(frozen=True, slots=True)
class ResolvedSecret:
    """What the resolver callback returns for one reference.

    ``value``: the field's value (a non-string JSON value as its compact JSON text); ``fingerprint``: what the
    answer shows instead of it (the Transit HMAC of the value with ``FINGERPRINT_KEY``; letters, digits and
    ``_ . : + / = -``); ``allowed_hosts``: the secret's ``bridge.allowed_hosts`` custom metadata as stored (for a
    lease reference: its database role's ``allowed_hosts``), or ``None`` when absent (it cannot be brokered)."""

    value: str
    fingerprint: str
    allowed_hosts: str | None


SecretResolver = Callable[[AnyReference], Awaitable[ResolvedSecret]]
"""``async def resolve(ref) -> ResolvedSecret``: reads the secret (or the database password a lease reference
names) with the caller's own identity and checks its right to use it (``use`` or ``read``); raises the bridge's own
errors (403, 404 ...), which pass through."""


class BrokerHttpBody(BaseModel):
    """``POST /broker/http`` and the ``http_request`` tool."""

    model_config = ConfigDict(extra="forbid", strict=True)
    method: str = Field(description="GET, HEAD, POST, PUT, PATCH, DELETE or OPTIONS.")
    url: str = Field(max_length=MAX_URL_LENGTH,
                     description="http(s) URL, percent-encoded; placeholders in its path and query only.")
    headers: dict[str, str] = Field(default_factory=dict,
                                    description="Request headers; values may hold {{secret://<path>#<field>}}.")
    body: str | None = Field(default=None, description="Request body (text); may hold placeholders.")


class BrokerHttpAnswer(BaseModel):
    """The destination's answer with every used value (and its encoded forms) replaced by
    ``[redacted:<fingerprint>]``."""

    status: int
    reason: str
    headers: list[tuple[str, str]] = Field(description="Response headers in order, as [name, value] pairs.")
    body: str
    body_encoding: Literal["text", "base64"]
    redactions: int = Field(description="How many values or encoded forms were replaced.")


@dataclass(frozen=True, slots=True)
class _Destination:
    scheme: str
    host: str
    port: int
    authority: str
    rest: str

    @property
    def shown(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


_HOLE = "\ue000"  # stands for a placeholder while the URL's structure is checked


def _parse_url(template: str) -> _Destination:
    """The destination of a URL template. Placeholders are blanked out first (same length), so that a
    reference's own ``/``, ``#`` and ``@`` never look like URL structure."""
    spans = find_placeholders(template, where="url")
    blank = template
    for ph in spans:
        blank = blank[:ph.start] + _HOLE * (ph.end - ph.start) + blank[ph.end:]
    if any(ord(ch) < 0x21 or ord(ch) == 0x7F for ch in blank):
        raise InvalidRequestError("The URL has a space, a control character or a line break outside its "
                                  "placeholders; percent-encode it.")
    match = _URL.fullmatch(blank)
    if match is None:
        raise InvalidRequestError("The URL must be absolute: http(s)://host[:port]/path?query.")
    scheme, authority = match.group("scheme").lower(), match.group("authority")
    if scheme not in ("http", "https"):
        raise InvalidRequestError("Only http and https URLs can be brokered.")
    if "@" in authority:
        raise InvalidRequestError("The URL may not carry user info (user:password@); send credentials in a header, "
                                  "e.g. Authorization: Bearer {{secret://<path>#<field>}}.")
    if _HOLE in authority:
        raise InvalidRequestError("Secret references may appear in the URL's path and query, never in its host or "
                                  "port.")
    rest_start = match.start("rest") if match.group("rest") else len(blank)
    if not _URL_REST.fullmatch(blank[rest_start:].replace(_HOLE, "")):
        raise InvalidRequestError("The URL's path and query must be percent-encoded (no spaces, non-ASCII or other "
                                  "characters outside RFC 3986).")
    try:
        parsed = URL(f"{scheme}://{authority}/", encoded=True)
        raw_host = parsed.raw_host
        port = parsed.port
    except ValueError:
        raise InvalidRequestError("The URL's host or port is malformed.") from None
    if not raw_host or port is None or not 0 < port < 65536:
        raise InvalidRequestError("The URL's host or port is malformed.")
    try:
        host = normalise_host(raw_host)
    except ValueError as exc:
        raise InvalidRequestError(f"The URL's host is not usable: {exc}.") from None
    fragment = blank.find("#", rest_start)  # never sent: cut off, with any placeholder in it
    rest_end = fragment if fragment >= 0 else len(template)
    return _Destination(scheme, host, port, authority, template[rest_start:rest_end] or "/")


def _check_header_names(headers: Mapping[str, str]) -> None:
    if len(headers) > MAX_HEADERS:
        raise InvalidRequestError(f"At most {MAX_HEADERS} headers.")
    seen: set[str] = set()
    for name in headers:
        if not _TOKEN.fullmatch(name):
            raise InvalidRequestError("A header name must be an HTTP token (letters, digits, - and the like).")
        lower = name.lower()
        if lower in seen:
            raise InvalidRequestError(f"The header {name} is given twice (names are case-insensitive).")
        seen.add(lower)
        if lower in FORBIDDEN_HEADERS:
            raise InvalidRequestError(f"The header {name} is set by the bridge and may not be sent.",
                                      extra={"header": name})


def _body_encoder(content_type: str) -> Callable[[str], str] | None:
    """How values go into the body: JSON-string-escaped in a JSON body (placeholders sit inside JSON strings),
    ``quote_plus``-encoded in form data, as they are otherwise."""
    kind = content_type.split(";", 1)[0].strip().lower()
    if kind == "application/json" or kind.endswith("+json"):
        return lambda value: json.dumps(value)[1:-1]
    if kind == "application/x-www-form-urlencoded":
        return lambda value: quote_plus(value, safe="")
    return None


def _literal(host: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return None


def _is_text(answer: RawAnswer, declared: bool) -> bool:
    if not declared:
        return True  # no Content-Type: text if it decodes
    kind = answer.content_type.lower()
    return (kind.startswith("text/") or kind in _TEXT_TYPES or kind.endswith("+json") or kind.endswith("+xml"))


class Broker:
    """Brokered HTTP. Start it (or use ``async with``) before :meth:`send`; it owns the outbound session.

    ``dns`` resolves destination names (default: the operating system's); ``ssl_context`` verifies HTTPS
    destinations (default: the system trust store plus ``ca_file``).
    """

    def __init__(self, *, timeout: float = DEFAULT_TIMEOUT, max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES,
                 max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES, dns: HostResolver | None = None,
                 ssl_context: ssl.SSLContext | None = None, ca_file: str = "") -> None:
        self.timeout = timeout
        self.max_response_bytes = max_response_bytes
        self.max_request_bytes = max_request_bytes
        self._dns: HostResolver = dns if dns is not None else SystemResolver()
        self._client = OutboundClient(ssl_context=ssl_context or make_ssl_context(ca_file))

    @classmethod
    def from_settings(cls, settings: Settings, *, dns: HostResolver | None = None) -> Broker:
        """A broker configured by ``BROKER_TIMEOUT``, ``BROKER_MAX_RESPONSE_BYTES``, ``BROKER_MAX_REQUEST_BYTES``
        and ``BROKER_CACERT``."""
        return cls(timeout=settings.broker_timeout, max_response_bytes=settings.broker_max_response_bytes,
                   max_request_bytes=settings.broker_max_request_bytes, ca_file=settings.broker_cacert, dns=dns)

    async def start(self) -> None:
        await self._client.start()

    async def close(self) -> None:
        await self._client.close()

    async def __aenter__(self) -> Broker:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def send(self, request: BrokerHttpBody, resolve: SecretResolver) -> BrokerHttpAnswer:
        """Send ``request`` with its references resolved through ``resolve``; the redacted answer."""
        method = request.method.upper()
        if method not in METHODS:
            raise InvalidRequestError(f"Method {request.method[:16]!r} cannot be brokered; use one of "
                                      f"{', '.join(METHODS)}.")
        dest = _parse_url(request.url)
        _check_header_names(request.headers)
        texts = [("url", dest.rest)] + [(f"headers.{k}", v) for k, v in request.headers.items()]
        if request.body is not None:
            texts.append(("body", request.body))
        refs = collect_references(texts)
        if not refs:
            raise InvalidRequestError("A brokered request must use at least one secret reference "
                                      "({{secret://<path>#<field>}}); the bridge is no general HTTP proxy.")
        if len(refs) > MAX_REFERENCES:
            raise InvalidRequestError(f"At most {MAX_REFERENCES} distinct secret references per request.")
        self._refuse_fixed_destination(dest)
        resolved = await asyncio.gather(*(resolve(ref) for ref in refs))
        secrets = dict(zip(refs, resolved, strict=True))
        entries = self._check_hosts(dest, secrets)
        url, headers, body = self._substitute(dest, request, secrets)
        redactor = Redactor((s.value, s.fingerprint) for s in resolved)
        started = time.monotonic()
        try:
            async with asyncio.timeout(self.timeout):
                addresses = await self._addresses(dest, entries)
                raw = await self._fetch(method, url, headers, body, addresses, dest)
        except TimeoutError:
            log.warning("broker.request.failed", code="broker_timeout", method=method, host=dest.host,
                        port=dest.port, timeout=self.timeout)
            raise BrokerUpstreamError(
                f"{dest.shown} did not answer completely within BROKER_TIMEOUT ({self.timeout:g}s).",
                code="broker_timeout", status=504, extra={"host": dest.host, "port": dest.port}) from None
        answer = self._redacted(raw, redactor)
        log.info("broker.request.sent", method=method, host=dest.host, port=dest.port, status=raw.status,
                 response_bytes=len(raw.body), redactions=answer.redactions,
                 duration_ms=round((time.monotonic() - started) * 1000, 1))
        return answer

    # -- the steps ---------------------------------------------------------------------------------------------

    def _refuse_fixed_destination(self, dest: _Destination) -> None:
        """Metadata names and refused IP literals, whatever any secret lists."""
        if dest.host in METADATA_HOSTS:
            self._refused(dest, "broker_address_refused", f"{dest.host} is a cloud metadata service; the bridge "
                          "never connects to one.")
        address = _literal(dest.host)
        if address is not None and classify(address) is AddressClass.REFUSED:
            self._refused(dest, "broker_address_refused", f"{dest.host} is a link-local, metadata or non-unicast "
                          "address; the bridge never connects to one.", address_class="refused")

    def _refused(self, dest: _Destination, code: str, message: str, **extra: Any) -> None:
        log.warning("broker.request.refused", code=code, host=dest.host, port=dest.port)
        raise BrokerRefusedError(message, code=code, extra={"host": dest.host, "port": dest.port, **extra})

    def _check_hosts(self, dest: _Destination,
                     secrets: Mapping[AnyReference, ResolvedSecret]) -> list[tuple[AllowedHost, ...]]:
        per_secret: list[tuple[AllowedHost, ...]] = []
        for ref, secret in secrets.items():
            lease = isinstance(ref, LeaseReference)
            try:
                entries = parse_allowed_hosts(secret.allowed_hosts)
            except ValueError as exc:
                log.warning("broker.request.refused", code="broker_not_brokerable", reference=str(ref),
                            reason="malformed allowed_hosts" if lease else "malformed bridge.allowed_hosts")
                fix = ("the database role's allowed_hosts are malformed ({exc}); an operator must fix them "
                       "(vault-mcp-bridge provision --dynamic)" if lease else
                       "its bridge.allowed_hosts is malformed ({exc}); an operator must fix it (vault-mcp-bridge "
                       "secret-policy)").format(exc=exc)
                raise BrokerRefusedError(f"{ref} cannot be brokered: {fix}.", code="broker_not_brokerable",
                                         extra={"reference": str(ref)}) from None
            if entries is None:
                log.warning("broker.request.refused", code="broker_not_brokerable", reference=str(ref))
                why = ("its database role has no allowed_hosts (an operator lists them for the role in the "
                       "provision --dynamic file)" if lease else
                       "the secret has no bridge.allowed_hosts (an operator sets it with vault-mcp-bridge "
                       "secret-policy)")
                raise BrokerRefusedError(f"{ref} cannot be brokered: {why}.", code="broker_not_brokerable",
                                         extra={"reference": str(ref)})
            if not any(entry.matches(dest.host, dest.port, dest.scheme) for entry in entries):
                self._refused(dest, "broker_host_not_allowed",
                              f"{dest.shown} is not in the allowed hosts of {ref} (every secret a request uses "
                              "must allow its destination).", reference=str(ref))
            per_secret.append(entries)
        return per_secret

    def _substitute(self, dest: _Destination, request: BrokerHttpBody,
                    secrets: Mapping[AnyReference, ResolvedSecret]) -> tuple[URL, dict[str, str], bytes | None]:
        values = {ref: secret.value for ref, secret in secrets.items()}
        rest = substitute(dest.rest, values, where="url", encode=lambda v: quote(v, safe=""))  # no fragment
        full = f"{dest.scheme}://{dest.authority}{rest}"
        if len(full) > MAX_URL_LENGTH:
            raise PayloadTooLargeError(f"The URL is longer than {MAX_URL_LENGTH} characters once the secrets are "
                                       "in it.", code="broker_request_too_large")
        headers: dict[str, str] = {"User-Agent": USER_AGENT, "Accept-Encoding": "gzip, deflate"}
        for name, template in request.headers.items():
            value = substitute(template, values, where=f"headers.{name}")
            if _BAD_HEADER_CHARS.search(value) or len(value) > MAX_HEADER_VALUE:
                raise InvalidRequestError(f"The header {name} would hold a line break or control character, or be "
                                          f"longer than {MAX_HEADER_VALUE} characters, once its secrets are in it.",
                                          extra={"header": name})
            if name.lower() == "user-agent":
                del headers["User-Agent"]
            headers[name] = value
        body: bytes | None = None
        if request.body is not None:
            encode = _body_encoder(next((v for k, v in request.headers.items() if k.lower() == "content-type"), ""))
            body = substitute(request.body, values, where="body", encode=encode).encode("utf-8")
            if len(body) > self.max_request_bytes:
                raise PayloadTooLargeError(f"The body is larger than BROKER_MAX_REQUEST_BYTES "
                                           f"({self.max_request_bytes}) once the secrets are in it.",
                                           code="broker_request_too_large", extra={"limit": self.max_request_bytes})
        return URL(full, encoded=True), headers, body

    async def _addresses(self, dest: _Destination, entries: Sequence[tuple[AllowedHost, ...]]) -> list[IPAddress]:
        """The addresses to connect to: the IP literal, or the name resolved once and filtered."""
        explicit = explicit_for_all(entries, dest.host, dest.port, dest.scheme)
        literal = _literal(dest.host)
        if literal is not None:
            candidates = [literal]
        else:
            try:
                candidates = await self._dns.resolve(dest.host, dest.port)
            except OSError:
                log.warning("broker.request.failed", code="broker_connect_failed", host=dest.host, port=dest.port,
                            reason="dns")
                raise BrokerUpstreamError(f"{dest.host} does not resolve.", code="broker_connect_failed",
                                          extra={"host": dest.host, "port": dest.port}) from None
        classes = [classify(address) for address in candidates]
        accepted = [address for address, kind in zip(candidates, classes, strict=True)
                    if kind is AddressClass.PUBLIC or (kind is AddressClass.INTERNAL and explicit)]
        if not accepted:
            seen = sorted({kind.value for kind in classes})
            why = ("a link-local, metadata or non-unicast address" if "refused" in seen else
                   "an internal (loopback or private) address, allowed only when every secret lists this host "
                   "by its exact name or IP, not through a *. entry")
            self._refused(dest, "broker_address_refused", f"{dest.host} resolves only to {why}.",
                          address_classes=seen)
        return accepted

    async def _fetch(self, method: str, url: URL, headers: Mapping[str, str], body: bytes | None,
                     addresses: Sequence[IPAddress], dest: _Destination) -> RawAnswer:
        where = {"host": dest.host, "port": dest.port}
        try:
            return await self._client.fetch(method=method, url=url, headers=headers, body=body, addresses=addresses,
                                            max_response_bytes=self.max_response_bytes)
        except ResponseTooLargeError as exc:
            log.warning("broker.request.failed", code="broker_response_too_large", upstream_status=exc.status,
                        **where)
            raise BrokerUpstreamError(
                f"The answer of {dest.shown} is larger than BROKER_MAX_RESPONSE_BYTES ({self.max_response_bytes}); "
                "it is not returned (the request was sent).", code="broker_response_too_large",
                extra={**where, "upstream_status": exc.status, "limit": self.max_response_bytes}) from None
        except UndecodableResponseError as exc:
            log.warning("broker.request.failed", code="broker_bad_response", upstream_status=exc.status,
                        reason="content-encoding", **where)
            raise BrokerUpstreamError(
                f"{dest.shown} answered with a content encoding other than gzip or deflate; the bridge cannot "
                "redact it, so it is not returned (the request was sent).", code="broker_bad_response",
                extra={**where, "upstream_status": exc.status}) from None
        except aiohttp.ClientSSLError as exc:
            log.warning("broker.request.failed", code="broker_tls_failed", error=type(exc).__name__, **where)
            raise BrokerUpstreamError(
                f"TLS with {dest.shown} failed (certificate not trusted or not for {dest.host}, or no common "
                "protocol).", code="broker_tls_failed", extra=where) from None
        except aiohttp.ClientConnectorError as exc:
            log.warning("broker.request.failed", code="broker_connect_failed", error=type(exc).__name__, **where)
            raise BrokerUpstreamError(f"Could not connect to {dest.shown}.", code="broker_connect_failed",
                                      extra=where) from None
        except aiohttp.ClientError as exc:
            log.warning("broker.request.failed", code="broker_bad_response", error=type(exc).__name__, **where)
            raise BrokerUpstreamError(f"{dest.shown} closed the connection or sent a malformed answer.",
                                      code="broker_bad_response", extra=where) from None

    def _redacted(self, raw: RawAnswer, redactor: Redactor) -> BrokerHttpAnswer:
        count = 0
        headers: list[tuple[str, str]] = []
        for name, value in raw.headers:
            clean_name, n1 = redactor.redact_text(name)
            clean_value, n2 = redactor.redact_text(value)
            headers.append((clean_name, clean_value))
            count += n1 + n2
        reason, n = redactor.redact_text(raw.reason)
        count += n
        declared = any(name.lower() == "content-type" for name, _ in raw.headers)
        text: str | None = None
        if _is_text(raw, declared):
            try:
                text = raw.body.decode(raw.charset or "utf-8")
            except (UnicodeDecodeError, LookupError):
                text = None
        encoding: Literal["text", "base64"]
        if text is not None:
            body, n = redactor.redact_text(text)
            encoding = "text"
        else:
            data, n = redactor.redact_bytes(raw.body)
            body, encoding = base64.b64encode(data).decode("ascii"), "base64"
        count += n
        return BrokerHttpAnswer(status=raw.status, reason=reason, headers=headers, body=body,
                                body_encoding=encoding, redactions=count)


def audit_fields(request: BrokerHttpBody, answer: BrokerHttpAnswer | None = None) -> dict[str, Any]:
    """What an audit record says about a brokered request: the method, the destination's host and port, the
    references used (and the answer's status and redaction count); never the URL's path or query, a header or the
    body. Whatever part is malformed is left out (the refusal's code says why)."""
    out: dict[str, Any] = {"method": request.method.upper()[:16]}
    try:
        dest = _parse_url(request.url)
    except BridgeError:
        return out
    out.update(host=dest.host, port=dest.port)
    texts = [("url", dest.rest), *((f"headers.{k}", v) for k, v in request.headers.items())]
    if request.body is not None:
        texts.append(("body", request.body))
    with contextlib.suppress(BridgeError):  # a malformed placeholder: the refusal says where
        out["references"] = [str(ref) for ref in collect_references(texts)][:MAX_REFERENCES + 1]
    if answer is not None:
        out.update(upstream_status=answer.status, redactions=answer.redactions)
    return out


__all__ = ["METHODS", "Broker", "BrokerHttpAnswer", "BrokerHttpBody", "ResolvedSecret", "SecretResolver",
           "audit_fields"]
