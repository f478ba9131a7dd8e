"""Client-certificate identity, and the one rule that turns a verified certificate into an agent.

:func:`certificate_agent` is used for both sources of a client certificate, so they cannot disagree:

- the bridge's own TLS handshake (``TLS_CLIENT_CA_FILE``, see :mod:`bridge.tls`): the certificate was verified
  against the client CA before any handler runs; :class:`PeerCertAuthenticator` reads it here;
- a TLS-terminating proxy that forwards the whole certificate (:mod:`bridge.auth.mtls`).

Both parse the DER/PEM certificate with ``cryptography``'s x509; no DN string is ever split by hand. The rule:

- by default the subject's common name: exactly one CN attribute (none, or two, is 401);
- with ``MTLS_SPIFFE_TRUST_DOMAIN`` set, the SPIFFE ID instead: exactly one ``spiffe://`` URI SAN, in that
  trust domain, and the agent is the last segment of its path (``spiffe://example.org/ns/prod/sa/alice`` →
  ``alice``). A certificate from another trust domain, or with several SPIFFE IDs, is refused.

Either way the name must then be a valid agent id (``normalize_subject``, else 403 ``invalid_subject``).
"""

from __future__ import annotations

from urllib.parse import urlsplit

import structlog
from aiohttp import web
from cryptography import x509
from cryptography.x509.oid import NameOID

from bridge.auth.identity import Identity, normalize_subject
from bridge.config import DEFAULT_SCOPES
from bridge.errors import UnauthenticatedError

log = structlog.get_logger("bridge.auth")


def common_names(cert: x509.Certificate) -> list[str]:
    """Every CN attribute of the subject, in any RDN (multi-valued ones included)."""
    return [str(attr.value) for attr in cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)]


def spiffe_ids(cert: x509.Certificate) -> list[str]:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    return [uri for uri in san.get_values_for_type(x509.UniformResourceIdentifier) if uri.startswith("spiffe://")]


def spiffe_agent(ids: list[str], trust_domain: str) -> str:
    """The agent of the one SPIFFE ID in ``trust_domain``; raises when there is not exactly one, or it is
    outside the trust domain or malformed."""
    if len(ids) != 1:
        raise UnauthenticatedError("The client certificate must carry exactly one SPIFFE ID (URI SAN).")
    parts = urlsplit(ids[0])
    segments = [s for s in parts.path.split("/") if s]
    if (parts.netloc.lower() != trust_domain.lower() or not segments or parts.query or parts.fragment
            or "" in parts.path[1:].split("/")):
        log.warning("auth.mtls.spiffe_refused", trust_domain=parts.netloc)
        raise UnauthenticatedError("The client certificate's SPIFFE ID is not in this bridge's trust domain.")
    return segments[-1]


def certificate_agent(cert: x509.Certificate, spiffe_trust_domain: str = "") -> str:
    """The agent id a verified client certificate names (not yet normalised); raises
    :class:`UnauthenticatedError` when the certificate does not name exactly one."""
    try:
        if spiffe_trust_domain:
            return spiffe_agent(spiffe_ids(cert), spiffe_trust_domain)
        names = common_names(cert)
    except ValueError:  # a malformed name or extension (cryptography parses some lazily)
        raise UnauthenticatedError("The client certificate could not be parsed.") from None
    if len(names) != 1:
        raise UnauthenticatedError("The client certificate subject must have exactly one common name.")
    return names[0]


def certificate_identity(cert: x509.Certificate, spiffe_trust_domain: str = "") -> Identity:
    """The identity of a verified client certificate: the agent of :func:`certificate_agent`, all scopes."""
    return Identity(normalize_subject(certificate_agent(cert, spiffe_trust_domain), "mtls"), "mtls",
                    frozenset(DEFAULT_SCOPES))


def peer_certificate(request: web.Request) -> x509.Certificate | None:
    """The peer certificate verified in the bridge's own TLS handshake, if any."""
    transport = request.transport
    ssl_object = transport.get_extra_info("ssl_object") if transport is not None else None
    if ssl_object is None:
        return None
    der = ssl_object.getpeercert(binary_form=True)
    if not der:
        return None
    try:
        return x509.load_der_x509_certificate(der)
    except ValueError:
        raise UnauthenticatedError("The client certificate could not be parsed.") from None


class PeerCertAuthenticator:
    """The certificate of the bridge's own TLS handshake. A connection without one (plain HTTP, or TLS
    without client auth) is not this authenticator's business."""

    method = "mtls"
    headers: tuple[str, ...] = ()

    def __init__(self, *, spiffe_trust_domain: str = "") -> None:
        self._trust_domain = spiffe_trust_domain

    def authenticate(self, request: web.Request) -> Identity | None:
        cert = peer_certificate(request)
        if cert is None:
            return None
        return certificate_identity(cert, self._trust_domain)
