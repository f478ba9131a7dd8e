"""The :class:`Identity` value and the one subject rule."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import structlog

from bridge.config import IDENT_RE
from bridge.errors import ForbiddenError
from bridge.ratelimit import Quota

log = structlog.get_logger("bridge.auth")

AuthMethod = Literal["api_key", "jwt", "mtls"]


@dataclass(frozen=True, slots=True)
class Identity:
    subject: str
    auth_method: AuthMethod
    scopes: frozenset[str]
    # the identity's own rate limit (an API key entry's "rate_limit"); None: RATE_LIMIT_*. Never from a JWT's
    # claims: a token cannot raise its own limit.
    rate_limit: Quota | None = None


def normalize_subject(raw: str, method: AuthMethod) -> str:
    """Lower-case; then it must match ``^[a-z0-9][a-z0-9_-]{0,63}$`` (it becomes a Vault path segment,
    a policy name and part of key names)."""
    # No strip() and ASCII only before lower(): " alice" or "\u212aate" (Kelvin sign) would otherwise
    # collide with the agents "alice" and "kate".
    subject = raw.lower() if raw.isascii() else ""
    if not IDENT_RE.match(subject):
        log.warning("auth.subject.invalid", auth_method=method, length=len(raw))
        raise ForbiddenError(
            "The authenticated subject is not a valid agent id: after lower-casing it must match "
            "^[a-z0-9][a-z0-9_-]{0,63}$ (letters, digits, '_' and '-'; no '.', '@' or '/').",
            code="invalid_subject",
        )
    return subject
