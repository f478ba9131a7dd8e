"""Client-certificate identity passed by a TLS-terminating proxy in headers.

Trusted only when the TCP peer is in ``MTLS_TRUSTED_PROXIES`` and the verify header says ``SUCCESS``; the
same headers from any other peer are ignored (and logged as a warning). The agent is the certificate's CN,
from either DN form: ``CN=a,O=b`` (RFC 4514, nginx ``$ssl_client_s_dn``) or ``/O=b/CN=a`` (legacy).
"""

from __future__ import annotations

import ipaddress
import re

import structlog
from aiohttp import web

from bridge.auth.identity import Identity, normalize_subject
from bridge.config import SCOPES
from bridge.errors import UnauthenticatedError

log = structlog.get_logger("bridge.auth")

_RDN_SPLIT = re.compile(r"(?<!\\),")


def common_name(dn: str, prefix: str = "CN=") -> str | None:
    """The CN of a subject DN in either form; ``None`` when there is none."""
    dn = dn.strip()
    parts = [p for p in dn.split("/") if p] if dn.startswith("/") else _RDN_SPLIT.split(dn)
    want = prefix.lower()
    for part in parts:
        part = part.strip()
        if part.lower().startswith(want):
            return part[len(prefix):].replace("\\,", ",").strip()
    return None


class MtlsHeaderAuthenticator:
    method = "mtls"

    def __init__(self, *, identity_header: str, verify_header: str, cn_prefix: str,
                 trusted: list[ipaddress.IPv4Network | ipaddress.IPv6Network]) -> None:
        self._id_header = identity_header
        self._verify_header = verify_header
        self._prefix = cn_prefix
        self._trusted = trusted

    def present(self, request: web.Request) -> bool:
        return self._id_header in request.headers or self._verify_header in request.headers

    def _peer_trusted(self, request: web.Request) -> bool:
        peer = request.transport.get_extra_info("peername") if request.transport else None
        host = peer[0] if isinstance(peer, tuple) and peer else request.remote
        if not host:
            return False
        try:
            addr = ipaddress.ip_address(host.split("%")[0])
        except ValueError:
            return False
        return any(addr in net for net in self._trusted)

    def authenticate(self, request: web.Request) -> Identity | None:
        if not self.present(request):
            return None
        if not self._peer_trusted(request):
            log.warning("auth.mtls.untrusted_peer", peer=request.remote)
            return None
        if request.headers.get(self._verify_header, "") != "SUCCESS":
            raise UnauthenticatedError("The client certificate was not verified by the proxy.")
        cn = common_name(request.headers.get(self._id_header, ""), self._prefix)
        if not cn:
            raise UnauthenticatedError("The client certificate subject has no common name.")
        return Identity(normalize_subject(cn, "mtls"), "mtls", frozenset(SCOPES))
