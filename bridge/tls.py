"""Native TLS for the bridge's listener: ``TLS_CERT_FILE``/``TLS_KEY_FILE`` serve HTTPS; with
``TLS_CLIENT_CA_FILE`` every client must present a certificate issued by that CA (verified in the handshake,
so an unverified client never reaches a handler) and :class:`bridge.auth.peercert.PeerCertAuthenticator`
takes the agent from it.

TLS 1.2 is the minimum; Python's default server ciphers and options apply (no compression, no renegotiation).
"""

from __future__ import annotations

import ssl

from bridge.config import ConfigError, Settings


def server_ssl_context(cert_file: str, key_file: str, client_ca_file: str = "") -> ssl.SSLContext:
    """The listener's context; raises :class:`ConfigError` naming the setting when a file is unusable."""
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        ctx.load_cert_chain(cert_file, key_file)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"invalid setting TLS_CERT_FILE/TLS_KEY_FILE: cannot load ({_why(exc)})") from None
    if client_ca_file:
        try:
            ctx.load_verify_locations(cafile=client_ca_file)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(f"invalid setting TLS_CLIENT_CA_FILE: cannot load ({_why(exc)})") from None
        ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


def ssl_context_from_settings(settings: Settings) -> ssl.SSLContext | None:
    """``None`` for plain HTTP (no ``TLS_CERT_FILE``)."""
    if not settings.tls_cert_file:
        return None
    return server_ssl_context(settings.tls_cert_file, settings.tls_key_file, settings.tls_client_ca_file)


def _why(exc: BaseException) -> str:
    if isinstance(exc, ssl.SSLError):
        return exc.reason or type(exc).__name__
    if isinstance(exc, OSError):
        return exc.strerror or type(exc).__name__
    return type(exc).__name__
