"""Input and output models of the dynamic-secret and lease operations (:mod:`bridge.operations.dynamic`).

Field names and forms are Vault's own: ``alt_names``, ``ip_sans`` and ``valid_principals`` are comma-separated
strings, as Vault takes them; a ``ttl`` (or ``increment``) is a Vault duration (``"15m"``, ``"1h"``, ``"90s"``) or
whole seconds. A role is the agent's own role name, which the bridge maps to the Vault role
(``{DEFAULT_PREFIX}.{agent}.{role}`` with ``DYNAMIC_ROLE_SCOPE=agent``).
"""

from __future__ import annotations

import math
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, WithJsonSchema, field_validator

from bridge.config import IDENT_RE, parse_duration

MAX_TTL_SECONDS = 10 * 365 * 86400


class _Strict(BaseModel):
    """As the other operations' models: unknown fields and wrong types are refused (400)."""

    model_config = ConfigDict(extra="forbid", strict=True)

_TTL_PATTERN = r"^[0-9]{1,10}(\.[0-9]+)?(ms|s|m|h|d)?$"


def _seconds(value: Any) -> int | None:
    """A Vault duration or whole seconds → whole seconds (rounded up), at least 1."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise ValueError("expected a duration such as '15m', '1h' or whole seconds")
    seconds = math.ceil(parse_duration(value))
    if not 1 <= seconds <= MAX_TTL_SECONDS:
        raise ValueError("must be from 1s to 87600h")
    return seconds


def _duration_schema(description: str) -> WithJsonSchema:
    return WithJsonSchema({"anyOf": [{"type": "string", "pattern": _TTL_PATTERN}, {"type": "integer", "minimum": 1},
                                     {"type": "null"}], "description": description})


Ttl = Annotated[int | None, BeforeValidator(_seconds), _duration_schema(
    "How long it should live: a duration such as '15m', '1h', '90s', or whole seconds. Default and maximum are the "
    "operator's (LEASE_DEFAULT_TTL, LEASE_MAX_TTL); the role's own max_ttl caps it too. The answer's 'ttl' is what "
    "was granted.")]
Increment = Annotated[int | None, BeforeValidator(_seconds), _duration_schema(
    "How long from now the lease should live, as 'ttl' (default LEASE_DEFAULT_TTL, at most LEASE_MAX_TTL; the "
    "role's max_ttl, counted from the lease's issue, caps it too).")]

ROLE_DESCRIPTION = ("Your role's name (lower-case letters, digits, '_' and '-'), as the operator provisioned it "
                    "for you; other agents' roles cannot be named.")
LEASE_ID_DESCRIPTION = "A lease id from db_creds, pki_issue, pki_sign or lease_list (yours only)."


def _role(value: str) -> str:
    if not IDENT_RE.match(value):
        raise ValueError("role names match ^[a-z0-9][a-z0-9_-]{0,63}$")
    return value


def _names(value: str | None) -> str | None:
    """A comma-separated list as Vault takes it (``a.example,b.example``): no blanks, no control characters."""
    if value is None:
        return None
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in value):
        raise ValueError("must not contain control characters")
    parts = [p.strip() for p in value.split(",")]
    if any(not p for p in parts):
        raise ValueError("a comma-separated list of names without empty entries")
    return ",".join(parts)


class RoleArgs(_Strict):
    role: str = Field(description=ROLE_DESCRIPTION)

    _r = field_validator("role")(_role)


class DbCredsBody(_Strict):
    ttl: Ttl = None


class DbCredsArgs(DbCredsBody, RoleArgs):
    pass


class PkiIssueBody(_Strict):
    common_name: str = Field(min_length=1, max_length=255, description="The certificate's common name (a DNS "
                             "name the role allows).")
    alt_names: str | None = Field(default=None, max_length=4096, description="More DNS names, comma-separated "
                                  "(Vault's form: 'a.example,b.example').")
    ip_sans: str | None = Field(default=None, max_length=1024, description="IP addresses, comma-separated (if "
                                "the role allows IP SANs).")
    ttl: Ttl = None

    _a = field_validator("alt_names", "ip_sans")(_names)


class PkiIssueArgs(PkiIssueBody, RoleArgs):
    pass


class PkiSignBody(_Strict):
    csr: str = Field(min_length=1, max_length=65536, description="A PEM certificate signing request; the private "
                     "key stays with you.")
    common_name: str | None = Field(default=None, min_length=1, max_length=255,
                                    description="Overrides the CSR's common name.")
    alt_names: str | None = Field(default=None, max_length=4096, description="More DNS names, comma-separated.")
    ip_sans: str | None = Field(default=None, max_length=1024, description="IP addresses, comma-separated.")
    ttl: Ttl = None

    _a = field_validator("alt_names", "ip_sans")(_names)

    @field_validator("csr")
    @classmethod
    def _pem(cls, value: str) -> str:
        if "-----BEGIN" not in value or "REQUEST-----" not in value:
            raise ValueError("expected a PEM certificate request (-----BEGIN CERTIFICATE REQUEST-----)")
        return value


class PkiSignArgs(PkiSignBody, RoleArgs):
    pass


class SshSignBody(_Strict):
    public_key: str = Field(min_length=1, max_length=16384, description="Your OpenSSH public key "
                            "('ssh-ed25519 AAAA…'); the private key stays with you.")
    valid_principals: str | None = Field(default=None, max_length=4096, description="Login names, comma-separated "
                                         "(Vault's form); default: the role's default user.")
    ttl: Ttl = None

    _p = field_validator("valid_principals")(_names)

    @field_validator("public_key")
    @classmethod
    def _one_line(cls, value: str) -> str:
        value = value.strip()
        if "\n" in value or "\r" in value or not value.startswith(("ssh-", "ecdsa-", "sk-")):
            raise ValueError("expected one OpenSSH public key line ('ssh-ed25519 AAAA…')")
        return value


class SshSignArgs(SshSignBody, RoleArgs):
    pass


class LeaseIdBody(_Strict):
    lease_id: str = Field(min_length=1, max_length=512, description=LEASE_ID_DESCRIPTION)


class LeaseRenewBody(LeaseIdBody):
    increment: Increment = None


# -- answers ------------------------------------------------------------------------------------------------

class DbCredsOut(BaseModel):
    """A database login. The password itself only for an identity that may see values (the ``read`` scope);
    otherwise a reference to it and its fingerprint (docs/dynamic.md, "Database passwords by reference")."""

    username: str
    password: str | None = Field(default=None, description="The password, for an identity with the 'read' scope "
                                 "only; absent otherwise (see password_reference).")
    password_reference: str | None = Field(
        default=None, description="Without the 'read' scope, instead of the password: lease://<lease_id>#password, "
        "to use in http_request placeholders ({{lease://…#password}}, sent only to the hosts the operator allowed "
        "for the role) or with vault-mcp-bridge exec --env NAME=lease://…#password. It is yours only and dies "
        "with the lease.")
    password_fingerprint: str | None = Field(
        default=None, description="With password_reference: the password's keyed fingerprint (what a brokered "
        "answer shows in place of the value).")
    lease_id: str
    ttl: int = Field(description="Seconds the login lives unless renewed (lease_renew) or revoked.")
    renewable: bool


class CertificateOut(BaseModel):
    certificate: str
    issuing_ca: str
    ca_chain: list[str]
    private_key: str | None = Field(default=None, description="pki_issue only; never kept by the bridge.")
    private_key_type: str | None = None
    serial_number: str
    expiration: int = Field(description="Unix time the certificate expires.")
    lease_id: str | None = Field(default=None, description="Revoke the certificate with lease_revoke (it goes on "
                                 "the CRL); absent when the role makes no leases.")
    ttl: int


class SshCertificateOut(BaseModel):
    signed_key: str = Field(description="The OpenSSH certificate ('…-cert-v01@openssh.com …'): save it beside "
                            "your key as <key>-cert.pub.")
    serial_number: str
    valid_principals: list[str]
    expiration: int = Field(description="Unix time the certificate expires (SSH certificates cannot be revoked).")
    ttl: int


class LeaseOut(BaseModel):
    lease_id: str | None = Field(default=None, description="Absent for SSH certificates (no lease).")
    kind: Literal["database", "pki", "ssh"]
    role: str
    issue_time: str
    expire_time: str
    ttl: int
    renewable: bool
    revocable: bool
    username: str | None = None
    password_reference: str | None = Field(default=None, description="A database login whose password the bridge "
                                           "holds for you: its lease://…#password reference.")
    serial_number: str | None = None
    common_name: str | None = None
    valid_principals: list[str] | None = None


class LeaseListOut(BaseModel):
    leases: list[LeaseOut]


class LeaseRenewOut(BaseModel):
    lease_id: str
    ttl: int
    expire_time: str
    renewable: bool


class LeaseRevokeOut(BaseModel):
    lease_id: str
    revoked: bool


class LeaseResolveBody(_Strict):
    reference: str = Field(min_length=1, max_length=8192, description="A lease reference, "
                           "lease://<lease_id>#password, from db_creds or lease_list (yours only).")


class LeaseResolveOut(BaseModel):
    reference: str
    lease_id: str
    field: str
    value: str = Field(description="The value the reference names (a database password).")


# -- the kill switch (admin API, not an agent operation) -------------------------------------------------------

class QuarantineBody(_Strict):
    reason: str | None = Field(default=None, max_length=256, description="Why (kept in the quarantine record "
                               "and the audit trail).")


class QuarantineOut(BaseModel):
    agent: str
    quarantined: bool
    changed: bool = Field(description="False when the agent already was (or was not) quarantined.")
    since: int | None = Field(default=None, description="Unix time the quarantine began.")
    reason: str | None = None
    actor: str | None = None
    leases_revoked: int = Field(default=0, description="Live leases the bridge held for the agent, now revoked.")
    child_tokens_dropped: int = Field(default=0, description="Cached child tokens dropped on this replica.")
