"""Client-certificate identity from the bridge's own TLS handshake (``TLS_CLIENT_CA_FILE``, see
:mod:`bridge.tls`). The certificate was already verified against the client CA; here the agent is read from
it:

- by default the subject's common name (exactly one CN);
- with ``MTLS_SPIFFE_TRUST_DOMAIN`` set, the SPIFFE ID instead: exactly one ``spiffe://`` URI SAN, in that
  trust domain, and the agent is the last segment of its path (``spiffe://example.org/ns/prod/sa/alice`` →
  ``alice``). A certificate from another trust domain, or with several SPIFFE IDs, is refused.

Either way the name must then be a valid agent id (``normalize_subject``). A connection without a peer
certificate (plain HTTP, or TLS without client auth) is not this authenticator's business.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

import structlog
from aiohttp import web

from bridge.auth.identity import Identity, normalize_subject
from bridge.config import SCOPES
from bridge.errors import UnauthenticatedError

log = structlog.get_logger("bridge.auth")


def peer_certificate(request: web.Request) -> dict[str, Any] | None:
    """The verified peer certificate as ``ssl.SSLSocket.getpeercert()`` decodes it, if any."""
    transport = request.transport
    ssl_object = transport.get_extra_info("ssl_object") if transport is not None else None
    if ssl_object is None:
        return None
    cert = ssl_object.getpeercert()
    return cert or None


def cert_common_names(cert: dict[str, Any]) -> list[str]:
    return [str(value) for rdn in cert.get("subject", ()) for (name, value) in rdn if name == "commonName"]


def spiffe_agent(cert: dict[str, Any], trust_domain: str) -> str:
    """The agent of the certificate's one SPIFFE ID in ``trust_domain``; raises when there is none."""
    ids = [str(v) for (kind, v) in cert.get("subjectAltName", ()) if kind == "URI" and str(v).startswith("spiffe://")]
    if len(ids) != 1:
        raise UnauthenticatedError("The client certificate must carry exactly one SPIFFE ID (URI SAN).")
    parts = urlsplit(ids[0])
    segments = [s for s in parts.path.split("/") if s]
    if (parts.netloc.lower() != trust_domain.lower() or not segments or parts.query or parts.fragment
            or "" in parts.path[1:].split("/")):
        log.warning("auth.mtls.spiffe_refused", trust_domain=parts.netloc)
        raise UnauthenticatedError("The client certificate's SPIFFE ID is not in this bridge's trust domain.")
    return segments[-1]


class PeerCertAuthenticator:
    method = "mtls"

    def __init__(self, *, spiffe_trust_domain: str = "") -> None:
        self._trust_domain = spiffe_trust_domain

    def authenticate(self, request: web.Request) -> Identity | None:
        cert = peer_certificate(request)
        if cert is None:
            return None
        if self._trust_domain:
            agent = spiffe_agent(cert, self._trust_domain)
        else:
            names = cert_common_names(cert)
            if len(names) != 1:
                raise UnauthenticatedError("The client certificate subject must have exactly one common name.")
            agent = names[0]
        return Identity(normalize_subject(agent, "mtls"), "mtls", frozenset(SCOPES))
