"""Exceptions raised by the Vault client.

::

    VaultError                      root of everything the client raises
    ├── VaultTransportError         no HTTP answer at all
    │   ├── VaultConnectionError    connection refused / reset / DNS / TLS
    │   ├── VaultTimeoutError       VAULT_TIMEOUT elapsed
    │   └── CircuitOpenError        not attempted: Vault was unreachable recently (bridge/vault/breaker.py)
    ├── VaultCredentialError        the bridge has no usable credential of its own (no token, an unreadable
    │                               secret-id file, a login that returned no token, shut down); no HTTP status
    ├── ChildTokenError             a child token could not be minted as configured (bridge/vault/childtokens.py)
    └── VaultHTTPError              Vault answered with an error status (status, errors[])
        ├── VaultInvalidRequestError     400
        ├── VaultPermissionDeniedError   403
        ├── VaultNotFoundError           404 (a deleted or destroyed KV version: ``version_meta``)
        ├── VaultUnsupportedMediaError   415
        ├── VaultRateLimitedError        429 (``retry_after``)
        ├── VaultServerError             500, other 5xx
        ├── VaultSealedError             503 "Vault is sealed"
        └── VaultUnavailableError        502/503/504 otherwise (standby, down behind a proxy), a 5xx that
                                         says the node is not active yet / any more (starting, standby,
                                         stepping down), a redirect to another node

Messages carry Vault's own error strings and the request path template, never a token or body value.
"""

from __future__ import annotations

from typing import Any

from bridge.vault.models import KvVersion


class VaultError(Exception):
    """Root of the Vault client's exceptions."""


class VaultTransportError(VaultError):
    """No HTTP answer from Vault."""


class VaultConnectionError(VaultTransportError):
    """Vault could not be reached (refused, reset, DNS, TLS)."""


class VaultTimeoutError(VaultTransportError):
    """Vault did not answer within the configured timeout."""


class VaultCredentialError(VaultError):
    """The bridge's own Vault credential is missing or unusable: no token configured, a secret-id file that
    cannot be read, a wrapping token that wrapped no secret id, a login answer without a token, or the bridge is
    shutting down. Never an HTTP status: Vault did not answer this."""


class VaultHTTPError(VaultError):
    """Vault answered with an error status. ``body`` is its decoded JSON answer, for the sub-APIs (a Transit
    batch's per-item results travel in a 400)."""

    def __init__(self, status: int, errors: list[str], *, body: dict[str, Any] | None = None,
                 retry_after: float | None = None) -> None:
        self.status = status
        self.errors = errors
        self.body = body
        self.retry_after = retry_after
        detail = "; ".join(e.strip().replace("\n\t* ", " ").replace("\n", " ") for e in errors) or "no detail"
        super().__init__(f"vault answered {status}: {detail}")

    @property
    def detail(self) -> str:
        return "; ".join(" ".join(e.replace("*", " ").split()) for e in self.errors)


class VaultInvalidRequestError(VaultHTTPError):
    """400."""


class VaultPermissionDeniedError(VaultHTTPError):
    """403."""


class VaultNotFoundError(VaultHTTPError):
    """404. A KV read of a deleted or destroyed version carries that version's metadata in ``version_meta``
    (set by :meth:`bridge.vault.kv.KvV2.read`)."""

    version_meta: KvVersion | None = None


class VaultUnsupportedMediaError(VaultHTTPError):
    """415."""


class VaultRateLimitedError(VaultHTTPError):
    """429: a Vault rate-limit quota."""


class VaultServerError(VaultHTTPError):
    """500 and unexpected 5xx."""


class VaultSealedError(VaultHTTPError):
    """503 while Vault is sealed."""


class VaultUnavailableError(VaultHTTPError):
    """503/502/504 for other reasons (standby, maintenance, proxy)."""


_BY_STATUS: dict[int, type[VaultHTTPError]] = {
    400: VaultInvalidRequestError,
    403: VaultPermissionDeniedError,
    404: VaultNotFoundError,
    415: VaultUnsupportedMediaError,
    429: VaultRateLimitedError,
    500: VaultServerError,
    502: VaultUnavailableError,
    503: VaultUnavailableError,
    504: VaultUnavailableError,
}


_NOT_ACTIVE = (
    "standby",  # "Vault is in standby mode"
    "local node not active",  # "local node not active but active cluster node not found" (starting, electing)
    "active cluster node not found",
    "node is not the leader",  # Raft, stepping down
    "leadership lost",
    "leadership transfer in progress",
    "context canceled",  # the server cancelled the request: it is sealing or stepping down
)
"""What Vault/OpenBao say in a 5xx while a node starts, waits for an election or steps down (verified on
OpenBao 2.7.2 with Raft: ``500 local node not active but active cluster node not found`` right after an unseal,
``500 1 error occurred: * context canceled`` for a write in flight while it seals). Retrying shortly succeeds,
so these are ``VaultUnavailableError``, not a server fault."""


def not_active(errors: list[str]) -> bool:
    return any(sign in e.lower() for e in errors for sign in _NOT_ACTIVE)


def error_for_status(status: int, errors: list[str], *, body: dict[str, Any] | None = None,
                     retry_after: float | None = None) -> VaultHTTPError:
    """The one status → exception table."""
    if status == 503 and any("sealed" in e.lower() for e in errors):
        cls: type[VaultHTTPError] = VaultSealedError
    elif 300 <= status < 400 or (status >= 500 and not_active(errors)):
        cls = VaultUnavailableError
    elif status in _BY_STATUS:
        cls = _BY_STATUS[status]
    elif status >= 500:
        cls = VaultServerError
    else:
        cls = VaultInvalidRequestError
    return cls(status, errors, body=body, retry_after=retry_after)
