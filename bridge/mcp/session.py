"""Stateless ``Mcp-Session-Id`` values for the handshake era.

An id is ``v1.<agent>.<protocol version>.<issued at>.<nonce>.<HMAC-SHA256>`` (the MAC, base64url, covers
everything before it) keyed by ``MCP_SESSION_SECRET``; a session with flags (what the client declared in
``initialize`` that later requests depend on: ``u`` = URL-mode elicitation, :mod:`bridge.mcp.elicitation`) is
``v2.<agent>.<protocol version>.<issued at>.<flags>.<nonce>.<HMAC-SHA256>``. Every replica that shares the
secret validates it with no shared store. An id is accepted only for the agent it was issued to and only until
``issued + MCP_SESSION_TTL``; anything else (forged, altered, expired, someone else's) is "unknown", which the
transport answers with 404 as the spec asks.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass

from bridge.mcp.protocol import HANDSHAKE_VERSIONS

_FORMAT = re.compile(r"^v1\.([a-z0-9][a-z0-9_-]{0,63})\.(\d{4}-\d{2}-\d{2})\.(\d{1,12})\.([A-Za-z0-9_-]{16})"
                     r"\.([A-Za-z0-9_-]{43})$")
_FORMAT_FLAGS = re.compile(r"^v2\.([a-z0-9][a-z0-9_-]{0,63})\.(\d{4}-\d{2}-\d{2})\.(\d{1,12})\.([a-z]{1,8})"
                           r"\.([A-Za-z0-9_-]{16})\.([A-Za-z0-9_-]{43})$")
_FLAGS = re.compile(r"[a-z]{1,8}")


@dataclass(frozen=True, slots=True)
class McpSession:
    agent: str
    protocol_version: str
    issued_at: int
    flags: str = ""


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


class SessionCodec:
    """Issues and verifies signed session ids. ``clock`` is injectable for the expiry tests."""

    def __init__(self, key: bytes, ttl_seconds: float, *, clock: Callable[[], float] = time.time) -> None:
        if len(key) < 16:
            raise ValueError("the session key must be at least 16 bytes")
        self._key = key
        self._ttl = ttl_seconds
        self._clock = clock

    @classmethod
    def from_secret(cls, secret: str | None, ttl_seconds: float) -> SessionCodec:
        """A codec keyed by ``MCP_SESSION_SECRET``; a random per-process key when it is unset."""
        key = hashlib.sha256(secret.encode()).digest() if secret else secrets.token_bytes(32)
        return cls(key, ttl_seconds)

    def _mac(self, body: str) -> str:
        return _b64(hmac.new(self._key, body.encode(), hashlib.sha256).digest())

    def issue(self, agent: str, protocol_version: str, *, flags: str = "") -> str:
        nonce = _b64(secrets.token_bytes(12))
        if flags:
            if not _FLAGS.fullmatch(flags):
                raise ValueError("session flags are 1-8 lower-case letters")
            body = f"v2.{agent}.{protocol_version}.{int(self._clock())}.{flags}.{nonce}"
        else:
            body = f"v1.{agent}.{protocol_version}.{int(self._clock())}.{nonce}"
        return f"{body}.{self._mac(body)}"

    def verify(self, value: str, agent: str) -> McpSession | None:
        """The session, or ``None`` when the id is malformed, forged, expired or issued to another agent."""
        match = _FORMAT.match(value)
        flags = ""
        if match is None:
            match = _FORMAT_FLAGS.match(value)
            if match is None:
                return None
            flags = match.group(4)
        body, mac = value.rsplit(".", 1)
        if not hmac.compare_digest(mac, self._mac(body)):
            return None
        owner, version, issued_raw = match.group(1), match.group(2), int(match.group(3))
        now = self._clock()
        if owner != agent or version not in HANDSHAKE_VERSIONS:
            return None
        if issued_raw > now + 60 or now - issued_raw >= self._ttl:
            return None
        return McpSession(owner, version, issued_raw, flags)
