"""The bridge's own errors, and the one place Vault errors become bridge errors.

::

    BridgeError(status, code, message, extra, headers)
    ├── InvalidRequestError     400 invalid_request / invalid_path / batch_too_large / key_type_not_allowed
    ├── UnauthenticatedError    401 unauthenticated
    ├── ForbiddenError          403 forbidden / invalid_subject / insufficient_scope
    ├── NotFoundError           404 not_found / secret_deleted / secret_destroyed
    ├── RequestTimeoutError     408 request_timeout (the body did not arrive within BODY_READ_TIMEOUT)
    ├── ConflictError           409 cas_mismatch / key_type_mismatch / key_limit_reached
    ├── PayloadTooLargeError    413
    ├── UnsupportedMediaError   415
    ├── RateLimitedError        429 rate_limited / vault_rate_limited / too_many_concurrent_requests
    ├── RateLimiterUnavailableError  503 rate_limiter_unavailable (shared limiter down, fail mode closed)
    └── VaultUnavailableBridgeError  503 vault_unavailable / vault_sealed, 504 vault_timeout, 502 vault_error

Rendering happens in one place per protocol: ``bridge.middlewares`` (REST JSON) and ``bridge.mcp`` (JSON-RPC
tool results). No error text ever carries a secret value or a token.
"""

from __future__ import annotations

from typing import Any

from bridge.vault import errors as v
from bridge.vault.breaker import CircuitOpenError, retry_after_header


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


class RateLimiterUnavailableError(BridgeError):
    """The shared rate limiter (Redis) cannot be reached and ``RATE_LIMIT_FAIL_MODE=closed``."""

    status = 503
    code = "rate_limiter_unavailable"


def from_vault_error(exc: v.VaultError, *, what: str = "the request") -> BridgeError:
    """The one translation of Vault client errors into bridge errors. Never a 500."""
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
        if "check-and-set" in detail:
            return ConflictError(
                "Check-and-set failed: 'cas' must equal the secret's current version (0 = must not exist).",
                extra={"vault_message": detail})
        return InvalidRequestError(f"Vault rejected {what}: {detail}" if detail else f"Vault rejected {what}.")
    if isinstance(exc, v.VaultUnsupportedMediaError):
        return InvalidRequestError(f"Vault rejected {what}: {exc.detail}")
    if isinstance(exc, v.VaultUnavailableError):
        return VaultUnavailableBridgeError("Vault is unavailable; retry in a few seconds.",
                                           headers={"Retry-After": "5"})
    return VaultUnavailableBridgeError("Vault failed to serve the request; retry later.",
                                       code="vault_error", status=502)
