"""Vault's JSON, typed: the one response envelope and the results the sub-APIs return.

Nothing outside ``bridge/vault/`` takes Vault JSON apart: the sub-APIs (:mod:`bridge.vault.kv`,
:mod:`bridge.vault.transit`, :mod:`bridge.vault.token`, :mod:`bridge.vault.approle`, :mod:`bridge.vault.sys`) turn
each answer into one of these. They are plain frozen dataclasses built by hand from the decoded JSON (cheap: a
KV read is on the path of every request), tolerant of missing or ``null`` fields as Vault's own Go client is.

Tokens are :class:`pydantic.SecretStr` (``AuthInfo.client_token``, ``WrapInfo.token``): no ``repr``, log line or
exception text can show one. ``get_secret_value()`` is called only where a token goes into a request header.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pydantic import SecretStr


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _int(value: Any) -> int:
    try:
        return int(value or 0)
    except (TypeError, ValueError):
        return 0


def _str(value: Any) -> str:
    return str(value) if value is not None else ""


def _strings(value: Any) -> tuple[str, ...]:
    return tuple(str(v) for v in value) if isinstance(value, list) else ()


def _string_map(value: Any) -> dict[str, str] | None:
    return {str(k): str(v) for k, v in value.items()} if isinstance(value, dict) else None


@dataclass(frozen=True, slots=True)
class AuthInfo:
    """The ``auth`` block of a login, a token creation or a renewal."""

    client_token: SecretStr
    accessor: str = ""
    policies: tuple[str, ...] = ()
    metadata: dict[str, str] = field(default_factory=dict)
    lease_duration: int = 0
    renewable: bool = False
    token_type: str = ""

    @classmethod
    def parse(cls, raw: Any) -> AuthInfo | None:
        """``None`` when there is no auth block or it carries no token."""
        block = _dict(raw)
        token = _str(block.get("client_token"))
        if not token:
            return None
        return cls(client_token=SecretStr(token), accessor=_str(block.get("accessor")),
                   policies=_strings(block.get("policies")), metadata=_string_map(block.get("metadata")) or {},
                   lease_duration=_int(block.get("lease_duration")), renewable=bool(block.get("renewable")),
                   token_type=_str(block.get("token_type")))


@dataclass(frozen=True, slots=True)
class WrapInfo:
    """``wrap_info`` of a response-wrapped answer (``X-Vault-Wrap-TTL``)."""

    token: SecretStr
    accessor: str = ""
    ttl: int = 0
    creation_time: str = ""
    creation_path: str = ""

    @classmethod
    def parse(cls, raw: Any) -> WrapInfo | None:
        block = _dict(raw)
        token = _str(block.get("token"))
        if not token:
            return None
        return cls(token=SecretStr(token), accessor=_str(block.get("accessor")), ttl=_int(block.get("ttl")),
                   creation_time=_str(block.get("creation_time")), creation_path=_str(block.get("creation_path")))


@dataclass(frozen=True, slots=True)
class VaultResponse:
    """Vault's one response envelope (the Go client's ``Secret``). ``data`` is the endpoint's own result; token
    endpoints answer in ``auth``; a wrapped answer in ``wrap_info``."""

    status: int
    data: dict[str, Any] | None = None
    auth: AuthInfo | None = None
    wrap_info: WrapInfo | None = None
    warnings: tuple[str, ...] = ()
    lease_id: str = ""
    lease_duration: int = 0
    renewable: bool = False
    request_id: str = ""
    raw: dict[str, Any] | None = field(default=None, repr=False)
    """The whole decoded body, for the endpoints that answer without an envelope (``sys/health``)."""

    @classmethod
    def from_body(cls, status: int, body: dict[str, Any] | None) -> VaultResponse:
        if not body:
            return cls(status=status)
        data = body.get("data")
        return cls(
            status=status,
            data=data if isinstance(data, dict) else None,
            auth=AuthInfo.parse(body.get("auth")) if body.get("auth") else None,
            wrap_info=WrapInfo.parse(body.get("wrap_info")) if body.get("wrap_info") else None,
            warnings=_strings(body.get("warnings")),
            lease_id=_str(body.get("lease_id")),
            lease_duration=_int(body.get("lease_duration")),
            renewable=bool(body.get("renewable")),
            request_id=_str(body.get("request_id")),
            raw=body,
        )


# -- KV v2 -------------------------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class KvVersion:
    """One version's metadata, as a read, a write or a patch returns it."""

    version: int
    created_time: str = ""
    deletion_time: str = ""
    destroyed: bool = False
    custom_metadata: dict[str, str] | None = None

    @classmethod
    def parse(cls, raw: Any) -> KvVersion:
        meta = _dict(raw)
        return cls(version=_int(meta.get("version")), created_time=_str(meta.get("created_time")),
                   deletion_time=_str(meta.get("deletion_time")), destroyed=bool(meta.get("destroyed")),
                   custom_metadata=_string_map(meta.get("custom_metadata")))


@dataclass(frozen=True, slots=True)
class KvSecret:
    """A read secret: its key/value pairs and the version's metadata."""

    data: dict[str, Any]
    metadata: KvVersion

    @classmethod
    def parse(cls, raw: Any) -> KvSecret:
        body = _dict(raw)
        return cls(data=_dict(body.get("data")), metadata=KvVersion.parse(body.get("metadata")))


@dataclass(frozen=True, slots=True)
class KvMetadata:
    """A secret's metadata: its version history (``versions``: number → Vault's per-version fields) and the
    custom metadata its operator set (``secret-policy``)."""

    current_version: int
    oldest_version: int
    created_time: str
    updated_time: str
    versions: dict[str, Any]
    custom_metadata: dict[str, str] | None = None

    @classmethod
    def parse(cls, raw: Any) -> KvMetadata:
        meta = _dict(raw)
        return cls(current_version=_int(meta.get("current_version")), oldest_version=_int(meta.get("oldest_version")),
                   created_time=_str(meta.get("created_time")), updated_time=_str(meta.get("updated_time")),
                   versions=_dict(meta.get("versions")), custom_metadata=_string_map(meta.get("custom_metadata")))


# -- Transit -----------------------------------------------------------------------------------------------

_TRANSIT_FIELDS = ("ciphertext", "plaintext", "signature", "hmac", "valid", "key_version")


@dataclass(frozen=True, slots=True)
class TransitItem:
    """One Transit result: of a single-item call, or one ``batch_results`` entry (then ``error`` and
    ``reference`` may be set). Only the fields of the operation are present."""

    ciphertext: str | None = None
    plaintext: str | None = None
    signature: str | None = None
    hmac: str | None = None
    valid: bool | None = None
    key_version: int | None = None
    error: str | None = None
    reference: str | None = None

    @classmethod
    def parse(cls, raw: Any) -> TransitItem:
        item = _dict(raw)
        version = item.get("key_version")
        valid = item.get("valid")
        return cls(ciphertext=item.get("ciphertext") or None, plaintext=item.get("plaintext") or None,
                   signature=item.get("signature") or None, hmac=item.get("hmac") or None,
                   valid=valid if isinstance(valid, bool) else None,
                   key_version=version if isinstance(version, int) and not isinstance(version, bool) else None,
                   error=_str(item.get("error")) or None, reference=_str(item.get("reference")) or None)

    def fields(self) -> dict[str, Any]:
        """The fields that are set, Vault's names: a failed item is ``{"error", "reference"?}``."""
        if self.error:
            out: dict[str, Any] = {"error": self.error}
        else:
            out = {name: value for name in _TRANSIT_FIELDS if (value := getattr(self, name)) is not None}
        if self.reference:
            out["reference"] = self.reference
        return out


@dataclass(frozen=True, slots=True)
class TransitResult:
    """A Transit operation's answer: ``single`` for a one-item call, ``batch`` (in input order) for
    ``batch_input``."""

    single: TransitItem | None = None
    batch: tuple[TransitItem, ...] | None = None

    @classmethod
    def parse(cls, data: Any, *, batch: bool) -> TransitResult:
        body = _dict(data)
        if batch:
            raw = body.get("batch_results")
            return cls(batch=tuple(TransitItem.parse(item) for item in raw) if isinstance(raw, list) else ())
        return cls(single=TransitItem.parse(body))


@dataclass(frozen=True, slots=True)
class TransitKey:
    """A Transit key's description (``GET {mount}/keys/{name}``, and the answer of its creation)."""

    name: str
    type: str
    latest_version: int
    supports_encryption: bool
    supports_decryption: bool
    supports_signing: bool
    public_keys: dict[str, str]
    """Version → public key, for signing keys."""

    @classmethod
    def parse(cls, raw: Any) -> TransitKey:
        info = _dict(raw)
        versions = _dict(info.get("keys"))
        public = {str(v): str(k["public_key"]) for v, k in versions.items()
                  if isinstance(k, dict) and k.get("public_key")}
        return cls(name=_str(info.get("name")), type=_str(info.get("type")),
                   latest_version=_int(info.get("latest_version")),
                   supports_encryption=bool(info.get("supports_encryption")),
                   supports_decryption=bool(info.get("supports_decryption")),
                   supports_signing=bool(info.get("supports_signing")), public_keys=public)


# -- tokens and the system backend -------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class TokenLookup:
    """``auth/token/lookup-self``: what Vault knows of the calling token (``ttl`` is what is left; 0: no expiry)."""

    accessor: str
    policies: tuple[str, ...]
    ttl: int
    creation_ttl: int
    renewable: bool
    token_type: str
    metadata: dict[str, str]

    @classmethod
    def parse(cls, raw: Any) -> TokenLookup:
        data = _dict(raw)
        return cls(accessor=_str(data.get("accessor")), policies=_strings(data.get("policies")),
                   ttl=_int(data.get("ttl")), creation_ttl=_int(data.get("creation_ttl")),
                   renewable=bool(data.get("renewable")), token_type=_str(data.get("type")),
                   metadata=_string_map(data.get("meta")) or {})

    @property
    def is_root(self) -> bool:
        return "root" in self.policies


@dataclass(frozen=True, slots=True)
class Health:
    """``sys/health`` (asked to answer 200 in every state, so the body always comes back)."""

    initialized: bool
    sealed: bool
    standby: bool
    version: str

    @classmethod
    def parse(cls, raw: Any) -> Health:
        body = _dict(raw)
        return cls(initialized=bool(body.get("initialized", True)), sealed=bool(body.get("sealed")),
                   standby=bool(body.get("standby")), version=_str(body.get("version")))


@dataclass(frozen=True, slots=True)
class MountInfo:
    """One entry of ``sys/mounts`` or ``sys/auth``: its engine type and options (KV's ``version``)."""

    type: str
    options: dict[str, str]

    @classmethod
    def parse(cls, raw: Any) -> MountInfo:
        entry = _dict(raw)
        return cls(type=_str(entry.get("type")), options=_string_map(entry.get("options")) or {})


# -- dynamic secrets and leases ----------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Lease:
    """A lease as Vault's envelope states it (``lease_id``, ``lease_duration``, ``renewable``); an empty
    ``lease_id`` means the answer is no lease (an SSH certificate, a PKI role without ``generate_lease``)."""

    lease_id: str
    lease_duration: int
    renewable: bool

    @classmethod
    def of(cls, resp: VaultResponse) -> Lease:
        return cls(lease_id=resp.lease_id, lease_duration=resp.lease_duration, renewable=resp.renewable)


@dataclass(frozen=True, slots=True)
class DatabaseCredential:
    """``GET {mount}/creds/<role>``: a database login made now (the password is a :class:`SecretStr`)."""

    username: str
    password: SecretStr
    lease: Lease

    @classmethod
    def parse(cls, resp: VaultResponse) -> DatabaseCredential:
        data = resp.data or {}
        return cls(username=_str(data.get("username")), password=SecretStr(_str(data.get("password"))),
                   lease=Lease.of(resp))


@dataclass(frozen=True, slots=True)
class Certificate:
    """``POST {mount}/issue/<role>`` (with ``private_key``) or ``{mount}/sign/<role>`` (without): the PEM
    certificate, its issuer and chain, its serial (``48:73:…``), its expiry (Unix time) and, with the role's
    ``generate_lease``, its lease."""

    certificate: str
    issuing_ca: str
    ca_chain: tuple[str, ...]
    serial_number: str
    expiration: int
    lease: Lease
    private_key: SecretStr | None = None
    private_key_type: str = ""

    @classmethod
    def parse(cls, resp: VaultResponse) -> Certificate:
        data = resp.data or {}
        key = _str(data.get("private_key"))
        return cls(certificate=_str(data.get("certificate")), issuing_ca=_str(data.get("issuing_ca")),
                   ca_chain=_strings(data.get("ca_chain")), serial_number=_str(data.get("serial_number")),
                   expiration=_int(data.get("expiration")), lease=Lease.of(resp),
                   private_key=SecretStr(key) if key else None,
                   private_key_type=_str(data.get("private_key_type")))


@dataclass(frozen=True, slots=True)
class SshCertificate:
    """``POST {mount}/sign/<role>``: the signed OpenSSH certificate (``…-cert-v01@openssh.com …``) and its serial
    (hex, no colons). Not a lease: it cannot be revoked."""

    signed_key: str
    serial_number: str

    @classmethod
    def parse(cls, resp: VaultResponse) -> SshCertificate:
        data = resp.data or {}
        return cls(signed_key=_str(data.get("signed_key")), serial_number=_str(data.get("serial_number")))


@dataclass(frozen=True, slots=True)
class LeaseLookup:
    """``sys/leases/lookup``: what Vault knows of a live lease (``ttl`` left in seconds; times RFC 3339)."""

    lease_id: str
    issue_time: str
    expire_time: str
    renewable: bool
    ttl: int

    @classmethod
    def parse(cls, raw: Any) -> LeaseLookup:
        data = _dict(raw)
        return cls(lease_id=_str(data.get("id")), issue_time=_str(data.get("issue_time")),
                   expire_time=_str(data.get("expire_time")), renewable=bool(data.get("renewable")),
                   ttl=_int(data.get("ttl")))
