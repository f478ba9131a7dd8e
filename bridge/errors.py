"""The bridge's own errors, and the one place Vault errors become bridge errors.

::

    BridgeError(status, code, message, extra, headers)
    ├── InvalidRequestError     400 invalid_request / invalid_path / batch_too_large / key_type_not_allowed
    │   └── InvalidReferenceError   400 invalid_reference (a ``secret://`` reference, bridge/references.py)
    ├── UnauthenticatedError    401 unauthenticated
    ├── ForbiddenError          403 forbidden / invalid_subject / insufficient_scope / origin_not_allowed
    ├── NotFoundError           404 not_found / secret_deleted / secret_destroyed / version_not_found /
    │                               key_not_found / intake_not_found
    ├── MethodNotAllowedError   405 method_not_allowed
    ├── RequestTimeoutError     408 request_timeout (the body did not arrive within BODY_READ_TIMEOUT)
    ├── ConflictError           409 cas_mismatch (+ current_version) / key_type_mismatch / key_limit_reached
    ├── PayloadTooLargeError    413 payload_too_large / broker_request_too_large
    ├── BrokerRefusedError      403 broker_not_brokerable / broker_host_not_allowed / broker_address_refused
    ├── BrokerUpstreamError     502 broker_connect_failed / broker_tls_failed / broker_bad_response /
    │                               broker_response_too_large; 504 broker_timeout (bridge/broker/)
    ├── IntakeError             404 intake_invalid, 410 intake_expired / intake_used / intake_cancelled, 403
    │   │                           intake_csrf_failed
    │   │                           (bridge/intake/; rendered as HTML pages for the human who opened the link)
    │   └── IntakeFormError         400 intake_form_invalid (a field left empty ...: the form is shown again)
    ├── UnsupportedMediaError   415
    ├── RateLimitedError        429 rate_limited / vault_rate_limited / too_many_concurrent_requests
    ├── RateLimiterUnavailableError  503 rate_limiter_unavailable (shared limiter down, fail mode closed)
    ├── AgentQuarantinedError   403 agent_quarantined (the kill switch, bridge/quarantine.py)
    └── VaultUnavailableBridgeError  503 vault_unavailable / vault_sealed, 504 vault_timeout, 502 vault_error /
                                     child_token_unavailable / lease_token_unavailable

Dynamic secrets and leases (bridge/service/dynamic.py) use the codes 404 ``lease_not_found``, 400
``lease_not_renewable`` / ``lease_not_revocable``, 409 ``lease_limit_reached`` and 503 ``lease_record_unavailable``.

Rendering happens in one place per protocol, ``bridge.middlewares.render_error``: REST JSON everywhere,
a JSON-RPC error body on ``/mcp`` (``bridge.mcp.protocol``); a failing MCP tool is an ``isError`` result
(``bridge.mcp.server``). No error text ever carries a secret value or a token, and Vault's own text of a 5xx
answer is logged, never relayed: the agent gets a fixed message and the request id.
"""

from __future__ import annotations

from typing import Any

import structlog

from bridge.vault import errors as v
from bridge.vault.breaker import CircuitOpenError, retry_after_header
from bridge.vault.childtokens import ChildTokenError
from bridge.vault.leasetokens import LeaseTokenError

log = structlog.get_logger("bridge.errors")


class BridgeError(Exception):
    status: int = 500
    code: str = "internal_error"

    def __init__(self, message: str, *, code: str | None = None, status: int | None = None,
                 extra: dict[str, Any] | None = None, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        if status is not None:
            self.status = status
        self.extra = extra or {}
        self.headers = headers or {}
        self.audited = False
        """Set once an audit record names this error, so that no second record is written for it."""

    def to_dict(self) -> dict[str, Any]:
        return {"error": {"code": self.code, "message": self.message, **self.extra}}


class InvalidRequestError(BridgeError):
    status = 400
    code = "invalid_request"


class InvalidPathError(InvalidRequestError):
    code = "invalid_path"


class UnauthenticatedError(BridgeError):
    status = 401
    code = "unauthenticated"


class ForbiddenError(BridgeError):
    status = 403
    code = "forbidden"


class NotFoundError(BridgeError):
    status = 404
    code = "not_found"


class MethodNotAllowedError(BridgeError):
    status = 405
    code = "method_not_allowed"


class RequestTimeoutError(BridgeError):
    status = 408
    code = "request_timeout"


class ConflictError(BridgeError):
    status = 409
    code = "cas_mismatch"


class PayloadTooLargeError(BridgeError):
    status = 413
    code = "payload_too_large"


class UnsupportedMediaError(BridgeError):
    status = 415
    code = "unsupported_media_type"


class RateLimitedError(BridgeError):
    status = 429
    code = "rate_limited"


class VaultUnavailableBridgeError(BridgeError):
    status = 503
    code = "vault_unavailable"


# -- issue 12 (use, don't reveal): references, brokered HTTP, intake --------------------------------------


class InvalidReferenceError(InvalidRequestError):
    """A malformed ``secret://<path>#<field>[@<version>]`` reference or ``{{…}}`` placeholder."""

    code = "invalid_reference"


class BrokerRefusedError(ForbiddenError):
    """A brokered request the bridge will not send: the secret cannot be brokered, the destination is not in
    every used secret's ``bridge.allowed_hosts``, or its address is one the bridge never connects to."""

    code = "broker_host_not_allowed"


class BrokerUpstreamError(BridgeError):
    """The brokered request was sent (or tried) and the destination failed: no connection, TLS, a malformed or
    oversized answer (502), or no complete answer within ``BROKER_TIMEOUT`` (504 ``broker_timeout``)."""

    status = 502
    code = "broker_connect_failed"


class IntakeError(BridgeError):
    """An intake link that cannot be used (forged, expired, used) or a submission that failed; the intake
    pages render it as HTML for the human who opened the link."""

    status = 404
    code = "intake_invalid"


class IntakeFormError(IntakeError):
    """A submission that does not fill the intake form correctly: the form is shown again with the message."""

    status = 400
    code = "intake_form_invalid"


class RateLimiterUnavailableError(BridgeError):
    """The shared rate limiter (Redis) cannot be reached and ``RATE_LIMIT_FAIL_MODE=closed``."""

    status = 503
    code = "rate_limiter_unavailable"


class AgentQuarantinedError(ForbiddenError):
    """Every request of a quarantined agent (``POST /admin/agents/{agent}:quarantine``, a tripped canary), on
    every replica, whichever identity or auth method it uses."""

    code = "agent_quarantined"


STATUS_CODES: dict[int, str] = {
    400: "invalid_request",
    401: "unauthenticated",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    406: "not_acceptable",
    409: "conflict",
    413: "payload_too_large",
    415: "unsupported_media_type",
    429: "rate_limited",
    500: "internal_error",
    502: "vault_error",
    503: "service_unavailable",
    504: "vault_timeout",
}


def code_for_status(status: int) -> str:
    """The bridge error code for an HTTP status raised outside our own errors (the router's 404/405,
    aiohttp's 413 ...): the same vocabulary as the API, never ``http_<status>``."""
    return STATUS_CODES.get(status, "invalid_request" if status < 500 else "internal_error")


def from_http_status(status: int, message: str) -> BridgeError:
    """A :class:`BridgeError` for an ``aiohttp`` HTTP exception (router, body size, bad request)."""
    return BridgeError(message, code=code_for_status(status), status=status)


def request_id_hint() -> str:
    """`` (request id …)`` for messages that send the reader to the log; empty outside a request."""
    request_id = structlog.contextvars.get_contextvars().get("request_id")
    return f" (request id {request_id})" if request_id else ""


def _vault_server_text(exc: v.VaultHTTPError, event: str) -> None:
    """Vault's own words about a 5xx go to the log (bound to the request id), never to the agent."""
    log.warning(event, vault_status=exc.status, vault_errors=[e[:300] for e in exc.errors[:3]])


_CAS_MISMATCH = "check-and-set parameter did not match"


def from_vault_error(exc: v.VaultError, *, what: str = "the request") -> BridgeError:
    """The one translation of Vault client errors into bridge errors. Never a 500.

    4xx texts of Vault (a rejected input) are passed on, they help the agent fix its request; the text of a
    5xx is logged and replaced by a fixed message with the request id.
    """
    if isinstance(exc, v.VaultTimeoutError):
        return VaultUnavailableBridgeError(
            "Vault did not answer in time; retry later.", code="vault_timeout", status=504)
    if isinstance(exc, CircuitOpenError):
        return VaultUnavailableBridgeError(
            "Vault is unreachable (failing fast until it answers again); retry later.",
            headers={"Retry-After": retry_after_header(exc.retry_after)})
    if isinstance(exc, v.VaultTransportError):
        return VaultUnavailableBridgeError(
            "Vault is unreachable; retry in a few seconds.", headers={"Retry-After": "5"})
    if isinstance(exc, ChildTokenError):
        return VaultUnavailableBridgeError(
            "The bridge could not obtain a Vault token for this agent; an operator must check the token role and "
            "the bridge's policy (see the bridge log).", code="child_token_unavailable", status=502)
    if isinstance(exc, LeaseTokenError):
        return VaultUnavailableBridgeError(
            "The bridge could not obtain this agent's lease token for dynamic secrets; an operator must check the "
            "mcp-agent-lease token role and the bridge's policy (see the bridge log).",
            code="lease_token_unavailable", status=502)
    if isinstance(exc, v.VaultCredentialError):
        log.warning("vault.credential_unusable", error=str(exc))
        return VaultUnavailableBridgeError(
            "The bridge has no usable Vault token of its own; retry in a few seconds (an operator must check its "
            "Vault credential" + request_id_hint() + ").", headers={"Retry-After": "5"})
    if isinstance(exc, v.VaultSealedError):
        return VaultUnavailableBridgeError(
            "Vault is sealed; an operator must unseal it.", code="vault_sealed", headers={"Retry-After": "10"})
    if isinstance(exc, v.VaultRateLimitedError):
        after = max(1, round(exc.retry_after or 1))
        return RateLimitedError("Vault's own rate limit quota was exceeded; slow down.",
                                code="vault_rate_limited", headers={"Retry-After": str(after)})
    if isinstance(exc, v.VaultPermissionDeniedError):
        return ForbiddenError(f"Vault denied {what} (permission denied).", code="forbidden")
    if isinstance(exc, v.VaultNotFoundError):
        return NotFoundError(f"Nothing found for {what}.")
    if isinstance(exc, v.VaultInvalidRequestError):
        detail = exc.detail
        if _CAS_MISMATCH in detail:
            return ConflictError(
                "Check-and-set failed: 'cas' must equal the secret's current version (0 = must not exist).",
                extra={"vault_message": detail})
        if "check-and-set" in detail:  # "error parsing check-and-set parameter", "... parameter required"
            return InvalidRequestError(f"Vault rejected {what}: {detail}. 'cas' is the version number the "
                                       "write expects to be current (0 = the secret must not exist).")
        if detail.endswith("key not found"):  # "encryption key not found", "signing key not found", ...
            return NotFoundError(f"No such Transit key for {what} (Vault: {detail}).", code="key_not_found")
        return InvalidRequestError(f"Vault rejected {what}: {detail}" if detail else f"Vault rejected {what}.")
    if isinstance(exc, v.VaultUnsupportedMediaError):
        return InvalidRequestError(f"Vault rejected {what}: {exc.detail}")
    if isinstance(exc, v.VaultUnavailableError):
        _vault_server_text(exc, "vault.unavailable")
        return VaultUnavailableBridgeError(
            "Vault is unavailable (down behind a proxy, starting, standby or stepping down); retry in a few seconds"
            + request_id_hint() + ".", headers={"Retry-After": "5"})
    if isinstance(exc, v.VaultHTTPError):
        _vault_server_text(exc, "vault.server_error")
    return VaultUnavailableBridgeError(
        "Vault failed to serve the request; retry later. The bridge log has Vault's answer"
        + request_id_hint() + ".", code="vault_error", status=502)
