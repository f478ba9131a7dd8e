"""Client-certificate identity relayed by a TLS-terminating proxy (``AUTH_MTLS_ENABLED``, e.g. nginx).

The proxy verifies the client certificate and forwards it; the bridge believes the forwarded headers only when
all of these hold, and otherwise ignores them (logged as a warning; the request is then 401 unless another
credential authenticates it):

- the TCP peer is in ``MTLS_TRUSTED_PROXIES`` (no default; ``0.0.0.0/0`` and ``::/0`` stop start-up);
- the request carries ``X-Proxy-Secret`` equal to ``MTLS_PROXY_SECRET`` (compared in constant time), so a
  local process or a DNS-rebinding web page on the proxy's host cannot pose as the proxy.

The proxy then says ``SUCCESS`` in the verify header (``MTLS_VERIFY_HEADER``) and forwards the whole
certificate in ``MTLS_CERT_HEADER``: URL-encoded PEM (nginx's ``$ssl_client_escaped_cert``) or base64 DER.
It is parsed with ``cryptography`` and named by :func:`bridge.auth.peercert.certificate_agent`, the same rule
as native TLS (exactly one CN, or the SPIFFE ID). The subject DN string is never an identity source: hand-split
DNs let an OU of ``a/CN=agent_api``, a value ending in a backslash or a second CN name another agent.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import ipaddress
from urllib.parse import unquote

import structlog
from aiohttp import web
from cryptography import x509

from bridge.auth.identity import Identity
from bridge.auth.peercert import certificate_identity
from bridge.errors import UnauthenticatedError

log = structlog.get_logger("bridge.auth")

PROXY_SECRET_HEADER = "X-Proxy-Secret"
MAX_CERT_HEADER_CHARS = 32 * 1024
_PEM_BEGIN = "-----BEGIN CERTIFICATE-----"

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def decode_forwarded_certificate(value: str) -> x509.Certificate:
    """A certificate as a proxy forwards it: URL-encoded PEM, PEM, or base64 DER (URL-encoded or not).
    Raises ``ValueError`` when it is none of these."""
    if len(value) > MAX_CERT_HEADER_CHARS:
        raise ValueError("too large")
    text = unquote(value) if "%" in value else value
    if _PEM_BEGIN in text:
        return x509.load_pem_x509_certificate(text.encode("ascii", "strict"))
    try:
        der = base64.b64decode("".join(text.split()), validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("neither PEM nor base64 DER") from None
    return x509.load_der_x509_certificate(der)


def peer_address(request: web.Request) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """The direct TCP peer (never a forwarded header)."""
    transport = request.transport
    peer = transport.get_extra_info("peername") if transport is not None else None
    host = peer[0] if isinstance(peer, tuple) and peer else request.remote
    if not host:
        return None
    try:
        return ipaddress.ip_address(str(host).split("%")[0])
    except ValueError:
        return None


class TrustedProxy:
    """The configured TLS-terminating proxy: a peer in ``MTLS_TRUSTED_PROXIES`` that sends ``MTLS_PROXY_SECRET``
    in ``X-Proxy-Secret``. Used for header identity and, with or without it, to believe the client address the
    proxy appends to ``X-Forwarded-For`` (:mod:`bridge.auth.throttle`)."""

    def __init__(self, trusted: list[Network], secret: str) -> None:
        self._trusted = trusted
        self._secret_digest = hashlib.sha256(secret.encode()).digest()

    def peer_trusted(self, request: web.Request) -> bool:
        addr = peer_address(request)
        if addr is None:
            return False
        if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
            addr = addr.ipv4_mapped
        return any(addr in net for net in self._trusted)

    def secret_matches(self, request: web.Request) -> bool:
        presented = request.headers.get(PROXY_SECRET_HEADER)
        if presented is None:
            return False
        digest = hashlib.sha256(presented.encode("utf-8", "surrogateescape")).digest()
        return hmac.compare_digest(digest, self._secret_digest)

    def relayed(self, request: web.Request) -> bool:
        """Whether the request provably came through the proxy (trusted peer and matching secret)."""
        return self.peer_trusted(request) and self.secret_matches(request)


class MtlsHeaderAuthenticator:
    method = "mtls"

    def __init__(self, *, cert_header: str, verify_header: str, proxy: TrustedProxy,
                 spiffe_trust_domain: str = "") -> None:
        self._cert_header = cert_header
        self._verify_header = verify_header
        self.proxy = proxy
        self._trust_domain = spiffe_trust_domain
        self.headers: tuple[str, ...] = (PROXY_SECRET_HEADER, cert_header, verify_header)
        self.relay_headers: tuple[str, ...] = (PROXY_SECRET_HEADER, verify_header)

    def authenticate(self, request: web.Request) -> Identity | None:
        if not any(name in request.headers for name in self.headers):
            return None
        if not self.proxy.peer_trusted(request):
            log.warning("auth.mtls.untrusted_peer", peer=request.remote)
            return None
        if not self.proxy.secret_matches(request):
            log.warning("auth.mtls.proxy_secret_mismatch", peer=request.remote,
                        presented=PROXY_SECRET_HEADER in request.headers)
            return None
        verify = request.headers.get(self._verify_header, "")
        forwarded = request.headers.get(self._cert_header, "")
        if verify in ("", "NONE") and not forwarded:
            return None  # relayed by the proxy without a client certificate: another method may apply
        if verify != "SUCCESS":
            raise UnauthenticatedError("The client certificate was not verified by the proxy.")
        if not forwarded:
            raise UnauthenticatedError(f"The proxy did not forward the client certificate ({self._cert_header}).")
        try:
            cert = decode_forwarded_certificate(forwarded)
        except ValueError:
            raise UnauthenticatedError("The client certificate forwarded by the proxy could not be parsed.") from None
        return certificate_identity(cert, self._trust_domain)
