"""The operations' input and output models, shared by REST, MCP and the OpenAPI document.

An input model holds every argument of an operation, the ones REST carries in the URL included (``path``,
``version``, ``prefix``): REST validates the URL's fields and the JSON body together with it, MCP the tool's
``arguments``, both with :func:`parse` (the same 400 ``invalid_request``, naming fields, never values).
"""

from __future__ import annotations

import base64
import binascii
from typing import Annotated, Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, RootModel, ValidationError, field_validator, model_validator

from bridge.config import IDENT_RE, MAX_TRANSIT_BATCH
from bridge.errors import InvalidRequestError

M = TypeVar("M", bound=BaseModel)

MAX_VERSIONS = 100
MAX_VERSION = 999_999_999
"""The largest version number (and ``cas``) accepted, REST and MCP alike: nine digits, as ``?version=``."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


PATH_DESCRIPTION = (
    "Secret path relative to your own namespace, e.g. 'db/prod'. Segments of letters, digits and "
    "_ . = + @ , - separated by single '/'; no leading '/', no '..'; at most 16 segments, 512 characters."
)


class NoArgs(_Strict):
    pass


class PathArgs(_Strict):
    path: str = Field(description=PATH_DESCRIPTION)


WRAP_TTL_PATTERN = r"^[0-9]{1,6}[smh]?$"
_WRAP_UNITS = {"s": 1, "m": 60, "h": 3600, "": 1}


class KvReadArgs(PathArgs):
    version: int | None = Field(default=None, ge=0, le=MAX_VERSION,  # as REST's ?version= (nine digits)
                                description="Version to read; omit (or 0) for the latest version.")
    wrap_ttl: str | None = Field(default=None, pattern=WRAP_TTL_PATTERN, description=(
        "Wrapped delivery: instead of the secret, return a Vault response-wrapping token valid this long (e.g. "
        "'60s', '5m'; at most WRAP_MAX_TTL) for another process to unwrap at Vault, once."))

    @field_validator("version")
    @classmethod
    def _latest(cls, value: int | None) -> int | None:
        return value or None  # 0 is the latest version, as an omitted one

    @property
    def wrap_seconds(self) -> int | None:
        """``wrap_ttl`` in seconds (``None``: not a wrapped read)."""
        if self.wrap_ttl is None:
            return None
        unit = self.wrap_ttl[-1] if self.wrap_ttl[-1] in "smh" else ""
        return int(self.wrap_ttl.removesuffix(unit)) * _WRAP_UNITS[unit]


class KvListArgs(_Strict):
    prefix: str | None = Field(default=None, description=(
        "Folder to list, relative to your namespace (e.g. 'db/'); omit for your top level. "
        "Names ending in '/' are folders."))

    @field_validator("prefix")
    @classmethod
    def _root(cls, value: str | None) -> str:
        return value or ""  # an omitted prefix is the agent's top level


class WriteBody(_Strict):
    data: dict[str, Any] = Field(description="The secret's key/value pairs (any JSON values).")
    cas: int | None = Field(default=None, ge=0, le=MAX_VERSION,
                            description="Check-and-set: the current version the write expects (0 = create only).")


class PatchBody(_Strict):
    data: dict[str, Any] = Field(description="JSON merge patch: keys to set; a null value removes the key.")
    cas: int | None = Field(default=None, ge=0, le=MAX_VERSION,
                            description="Check-and-set: expected current version.")


class VersionsBody(_Strict):
    versions: list[int] = Field(min_length=1, max_length=MAX_VERSIONS, description="Version numbers (>= 1).",
                                json_schema_extra={"items": {"type": "integer", "minimum": 1,
                                                             "maximum": MAX_VERSION}})

    @field_validator("versions")
    @classmethod
    def _positive(cls, value: list[int]) -> list[int]:
        if any(v < 1 or v > MAX_VERSION for v in value):
            raise ValueError(f"versions are integers from 1 to {MAX_VERSION}")
        return sorted(set(value))


class KvWriteArgs(WriteBody):
    path: str = Field(description=PATH_DESCRIPTION)


class KvPatchArgs(PatchBody):
    path: str = Field(description=PATH_DESCRIPTION)


class KvVersionsArgs(VersionsBody):
    path: str = Field(description=PATH_DESCRIPTION)


def _key_name(value: str) -> str:
    if not IDENT_RE.match(value):
        raise ValueError("key names match ^[a-z0-9][a-z0-9_-]{0,63}$")
    return value


# -- Transit ----------------------------------------------------------------------------------------------
# Field names are Vault's own. Every operation takes either its single-item fields or ``batch_input`` (a list
# of items, answered per item in ``batch_results``: a failed item carries ``error``, the others succeed).

MAX_BATCH = MAX_TRANSIT_BATCH  # the schema's bound; TRANSIT_MAX_BATCH (default 100) is enforced by the service
KeyType = Literal["aes128-gcm96", "aes256-gcm96", "chacha20-poly1305", "ed25519", "ecdsa-p256", "ecdsa-p384",
                  "ecdsa-p521", "rsa-2048", "rsa-3072", "rsa-4096", "hmac"]
HMAC_KEY_SIZES = (32, 512)  # bytes; Vault's own bounds for an hmac key
HashAlgorithm = Literal["sha1", "sha2-224", "sha2-256", "sha2-384", "sha2-512", "sha3-224", "sha3-256",
                        "sha3-384", "sha3-512", "none"]
_MAX_B64 = 4 * 1024 * 1024
_MAX_CIPHERTEXT = 8 * 1024 * 1024


def _b64(value: str | None) -> str | None:
    if value is None:
        return None
    try:
        base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("must be base64") from None
    return value


def _one_of(body: BaseModel, *singles: str) -> None:
    given = [name for name in (*singles, "batch_input") if getattr(body, name, None) is not None]
    if len(given) != 1:
        names = ", ".join(f"'{name}'" for name in singles)
        raise ValueError(f"give exactly one of {names} or 'batch_input'")


REF_MAX_LENGTH = 4096


def _ref(description: str) -> Any:
    return Field(default=None, max_length=REF_MAX_LENGTH, description=description)


KEY_DESCRIPTION = ("Your Transit key name (lower-case letters, digits, '_' and '-'); it is yours alone: "
                   "other agents' keys cannot be named.")
def _reference() -> Any:
    return Field(default=None, max_length=128, description="Echoed back in this item's result.")


def _context() -> Any:
    return Field(default=None, max_length=4096, description="Base64 key-derivation context (derived keys only).")


class _Item(_Strict):
    reference: str | None = _reference()


class BatchItemError(BaseModel):
    """A ``batch_input`` item that failed validation: answered in its own ``batch_results`` entry (``error``,
    and its ``reference`` when that was readable), never sent to Vault. The other items are processed."""

    error: str
    reference: str | None = None


def _batch_of(item: type[_Item]) -> Any:
    """``field_validator`` for ``batch_input``: the list itself (the envelope) must be a list of 1..MAX_BATCH
    (else the request is a 400); each item is validated on its own, a bad one becomes a :class:`BatchItemError`.
    The JSON schema stays that of ``list[item]``."""

    def validate(cls: type[BaseModel], value: Any) -> list[Any] | None:
        if value is None:
            return None
        if not isinstance(value, list):
            raise ValueError("must be a list of items")
        if not 1 <= len(value) <= MAX_BATCH:
            raise ValueError(f"must hold 1 to {MAX_BATCH} items")
        out: list[Any] = []
        for raw in value:
            try:
                out.append(item.model_validate(raw))
            except ValidationError as exc:
                ref = raw.get("reference") if isinstance(raw, dict) else None
                out.append(BatchItemError(error="Invalid item: " + describe_errors(exc, whole="item"),
                                          reference=ref if isinstance(ref, str) and len(ref) <= 128 else None))
        return out

    schema = Annotated[list[item], Field(min_length=1, max_length=MAX_BATCH)] | None  # type: ignore[valid-type]
    return field_validator("batch_input", mode="plain", json_schema_input_type=schema)(classmethod(validate))


class PlaintextItem(_Item):
    plaintext: str | None = Field(default=None, description="Base64 of the bytes to encrypt.", max_length=_MAX_B64)
    plaintext_ref: str | None = _ref("Instead of 'plaintext': a secret reference secret://<path>#<field>[@<version>] "
                                     "whose value is encrypted (needs the 'use' or 'read' scope).")
    context: str | None = _context()

    _p = field_validator("plaintext")(_b64)
    _c = field_validator("context")(_b64)

    @model_validator(mode="after")
    def _either(self) -> PlaintextItem:
        if (self.plaintext is None) == (self.plaintext_ref is None):
            raise ValueError("give either 'plaintext' or 'plaintext_ref'")
        return self


class CiphertextItem(_Item):
    ciphertext: str = Field(min_length=1, max_length=_MAX_CIPHERTEXT, description="A vault:vN:… ciphertext.")
    context: str | None = _context()

    _c = field_validator("context")(_b64)


class InputItem(_Item):
    input: str = Field(description="Base64 of the data.", max_length=_MAX_B64)
    context: str | None = _context()

    _i = field_validator("input")(_b64)
    _c = field_validator("context")(_b64)


class InputRefItem(_Item):
    """An item of ``transit_sign`` / ``transit_hmac``: ``input``, or ``input_ref``, a secret reference."""

    input: str | None = Field(default=None, description="Base64 of the data.", max_length=_MAX_B64)
    input_ref: str | None = _ref("Instead of 'input': a secret reference secret://<path>#<field>[@<version>] whose "
                                 "value is used (needs the 'use' or 'read' scope).")
    context: str | None = _context()

    _i = field_validator("input")(_b64)
    _c = field_validator("context")(_b64)

    @model_validator(mode="after")
    def _either(self) -> InputRefItem:
        if (self.input is None) == (self.input_ref is None):
            raise ValueError("give either 'input' or 'input_ref'")
        return self


class VerifyItem(InputItem):
    signature: str | None = Field(default=None, max_length=16384, description="vault:vN:… signature to check.")
    hmac: str | None = Field(default=None, max_length=16384, description="vault:vN:… HMAC to check.")

    @model_validator(mode="after")
    def _either(self) -> VerifyItem:
        if (self.signature is None) == (self.hmac is None):
            raise ValueError("give either 'signature' or 'hmac'")
        return self


class EncryptBody(_Strict):
    key: str = Field(description=KEY_DESCRIPTION + " Created (aes256-gcm96) on first use.")
    plaintext: str | None = Field(default=None, description="Base64 of the bytes to encrypt.",
                                  max_length=_MAX_B64)
    plaintext_ref: str | None = _ref(
        "Instead of 'plaintext': a secret reference secret://<path>#<field>[@<version>]; the bridge encrypts that "
        "value without it passing through you (needs the 'use' or 'read' scope; refused for a secret whose "
        "bridge.reveal is never).")
    context: str | None = _context()
    key_version: int | None = Field(default=None, ge=1, le=MAX_VERSION,
                                    description="Encrypt with this key version.")
    batch_input: list[PlaintextItem | BatchItemError] | None = None

    _k = field_validator("key")(_key_name)
    _p = field_validator("plaintext")(_b64)
    _c = field_validator("context")(_b64)
    _b = _batch_of(PlaintextItem)

    @model_validator(mode="after")
    def _shape(self) -> EncryptBody:
        _one_of(self, "plaintext", "plaintext_ref")
        return self


class DecryptBody(_Strict):
    key: str = Field(description="The Transit key name used to encrypt.")
    ciphertext: str | None = Field(default=None, description="Ciphertext as returned by encrypt (vault:vN:…).",
                                   min_length=1, max_length=_MAX_CIPHERTEXT)
    context: str | None = _context()
    batch_input: list[CiphertextItem | BatchItemError] | None = None

    _k = field_validator("key")(_key_name)
    _c = field_validator("context")(_b64)
    _b = _batch_of(CiphertextItem)

    @model_validator(mode="after")
    def _shape(self) -> DecryptBody:
        _one_of(self, "ciphertext")
        return self


class RewrapBody(DecryptBody):
    key_version: int | None = Field(default=None, ge=1, le=MAX_VERSION,
                                    description="Rewrap to this key version (default latest).")


class SignBody(_Strict):
    key: str = Field(description=KEY_DESCRIPTION + " Must be a signing key (ed25519, ecdsa-*, rsa-*).")
    input: str | None = Field(default=None, description="Base64 of the data to sign.", max_length=_MAX_B64)
    input_ref: str | None = _ref("Instead of 'input': a secret reference secret://<path>#<field>[@<version>] whose "
                                 "value is signed without passing through you (needs the 'use' or 'read' scope).")
    context: str | None = _context()
    hash_algorithm: HashAlgorithm | None = Field(default=None, description="Default sha2-256 (ignored by ed25519).")
    signature_algorithm: Literal["pss", "pkcs1v15"] | None = Field(default=None, description="RSA keys only.")
    marshaling_algorithm: Literal["asn1", "jws"] | None = Field(default=None, description="ECDSA keys only.")
    prehashed: bool | None = Field(default=None, description="'input' is already a hash.")
    key_version: int | None = Field(default=None, ge=1, le=MAX_VERSION,
                                    description="Sign with this key version.")
    batch_input: list[InputRefItem | BatchItemError] | None = None

    _k = field_validator("key")(_key_name)
    _i = field_validator("input")(_b64)
    _c = field_validator("context")(_b64)
    _b = _batch_of(InputRefItem)

    @model_validator(mode="after")
    def _shape(self) -> SignBody:
        _one_of(self, "input", "input_ref")
        return self


class VerifyBody(_Strict):
    key: str = Field(description=KEY_DESCRIPTION)
    input: str | None = Field(default=None, description="Base64 of the signed data.", max_length=_MAX_B64)
    signature: str | None = Field(default=None, max_length=16384, description="vault:vN:… signature to check.")
    hmac: str | None = Field(default=None, max_length=16384, description="vault:vN:… HMAC to check.")
    context: str | None = _context()
    hash_algorithm: HashAlgorithm | None = Field(default=None, description="As used to sign or HMAC.")
    signature_algorithm: Literal["pss", "pkcs1v15"] | None = None
    marshaling_algorithm: Literal["asn1", "jws"] | None = None
    prehashed: bool | None = None
    batch_input: list[VerifyItem | BatchItemError] | None = None

    _k = field_validator("key")(_key_name)
    _i = field_validator("input")(_b64)
    _c = field_validator("context")(_b64)
    _b = _batch_of(VerifyItem)

    @model_validator(mode="after")
    def _shape(self) -> VerifyBody:
        _one_of(self, "input")
        if self.batch_input is None and (self.signature is None) == (self.hmac is None):
            raise ValueError("give either 'signature' or 'hmac'")
        if self.batch_input is not None and (self.signature is not None or self.hmac is not None):
            raise ValueError("with 'batch_input', put 'signature'/'hmac' in each item")
        return self


class HmacBody(_Strict):
    key: str = Field(description=KEY_DESCRIPTION + " Any key type that supports HMAC (aes*, chacha20, hmac).")
    input: str | None = Field(default=None, description="Base64 of the data.", max_length=_MAX_B64)
    input_ref: str | None = _ref("Instead of 'input': a secret reference secret://<path>#<field>[@<version>] whose "
                                 "value is HMACed without passing through you (needs the 'use' or 'read' scope).")
    hash_algorithm: HashAlgorithm | None = Field(default=None, description="Default sha2-256.")
    key_version: int | None = Field(default=None, ge=1, le=MAX_VERSION)
    batch_input: list[InputRefItem | BatchItemError] | None = None

    _k = field_validator("key")(_key_name)
    _i = field_validator("input")(_b64)
    _b = _batch_of(InputRefItem)

    @model_validator(mode="after")
    def _shape(self) -> HmacBody:
        _one_of(self, "input", "input_ref")
        return self


class RandomBody(_Strict):
    bytes: int = Field(default=32, ge=1, le=4096, description="How many random bytes.")
    format: Literal["base64", "hex"] = Field(default="base64")


class CreateKeyBody(_Strict):
    key: str = Field(description=KEY_DESCRIPTION)
    type: KeyType = Field(default="aes256-gcm96", description="Key type: aes256-gcm96 (default) to encrypt; "
                          "ed25519, ecdsa-p256 or rsa-2048 … to sign; hmac (with key_size) for HMACs. The "
                          "operator decides which types are allowed (TRANSIT_ALLOWED_KEY_TYPES).")
    key_size: int | None = Field(default=None, ge=HMAC_KEY_SIZES[0], le=HMAC_KEY_SIZES[1],
                                 description="Key size in bytes: required for (and only for) type hmac.")

    _k = field_validator("key")(_key_name)

    @model_validator(mode="after")
    def _size(self) -> CreateKeyBody:
        if (self.type == "hmac") != (self.key_size is not None):
            raise ValueError("'key_size' (32-512 bytes) is required for type hmac and only for it")
        return self


class SecretOut(BaseModel):
    """A read that shows values: the caller has ``read`` and the secret's ``bridge.reveal`` is ``allow``."""

    path: str
    data: dict[str, Any]
    version: int
    created_time: str
    custom_metadata: dict[str, str] | None = None


class FieldRef(BaseModel):
    fingerprint: str = Field(description=(
        "hmac-sha256:v<key version>:<base64url>: a keyed HMAC of the value computed by Vault with the bridge's own "
        "key; equal values have equal fingerprints (under one key version), the value cannot be learnt from it."))
    reference: str | None = Field(default=None, description=(
        "secret://<path>#<field>@<version>: use it in place of the value (http_request placeholders, plaintext_ref "
        "/ input_ref). Absent for a field name no reference can name (over 256 characters, control characters)."))


class SecretRefsOut(BaseModel):
    """A read without the right to see values (``use`` without ``read``, or ``bridge.reveal=never``): a reference
    and a fingerprint per field, never a value."""

    path: str
    version: int
    fields: dict[str, FieldRef]


class WrapInfoOut(BaseModel):
    token: str = Field(description="The response-wrapping token: hand it to the process that needs the value; "
                                   "it unwraps it once at Vault (sys/wrapping/unwrap).")
    accessor: str
    ttl: int = Field(description="Seconds the token can be unwrapped.")
    creation_time: str
    creation_path: str = Field(description="Vault's path of the wrapped read; check it with sys/wrapping/lookup "
                                           "before unwrapping.")


class WrappedSecretOut(BaseModel):
    """A wrapped read (``wrap_ttl``): Vault's response-wrapping token instead of the value."""

    path: str
    version: int
    wrap_info: WrapInfoOut


class KvReadOut(RootModel[SecretOut | SecretRefsOut | WrappedSecretOut]):
    """``kv_read``: values (:class:`SecretOut`), references and fingerprints (:class:`SecretRefsOut`), or a
    wrapping token (:class:`WrappedSecretOut`)."""


class WriteOut(BaseModel):
    """A write's answer: where and which version, never the data."""

    path: str
    version: int
    created_time: str


class PatchOut(WriteOut):
    """A patch's answer, as a write's."""


class ListOut(BaseModel):
    prefix: str
    keys: list[str]


class OkOut(BaseModel):
    ok: bool


class MetadataOut(BaseModel):
    current_version: int
    oldest_version: int
    created_time: str
    updated_time: str
    versions: dict[str, Any]
    custom_metadata: dict[str, str] | None = None


def _batch_results() -> Any:
    return Field(default=None, description=(
        "With batch_input: one result per item, in order; a failed item has 'error' (and its 'reference'), "
        "the others the single-item fields."))


class EncryptOut(BaseModel):
    ciphertext: str | None = None
    key_version: int | None = None
    batch_results: list[dict[str, Any]] | None = _batch_results()


class DecryptOut(BaseModel):
    plaintext: str | None = None
    batch_results: list[dict[str, Any]] | None = _batch_results()


class RewrapOut(BaseModel):
    ciphertext: str | None = None
    key_version: int | None = None
    batch_results: list[dict[str, Any]] | None = _batch_results()


class SignOut(BaseModel):
    signature: str | None = None
    key_version: int | None = None
    batch_results: list[dict[str, Any]] | None = _batch_results()


class VerifyOut(BaseModel):
    valid: bool | None = None
    batch_results: list[dict[str, Any]] | None = _batch_results()


class HmacOut(BaseModel):
    hmac: str | None = None
    batch_results: list[dict[str, Any]] | None = _batch_results()


class RandomOut(BaseModel):
    random_bytes: str
    format: str


class KeyOut(BaseModel):
    key: str
    type: str
    latest_version: int
    supports_encryption: bool
    supports_decryption: bool
    supports_signing: bool
    public_keys: dict[str, str] | None = Field(default=None, description="Version -> public key (signing keys).")


class WhoamiOut(BaseModel):
    subject: str
    auth_method: str
    scopes: list[str]
    vault_path_prefix: str
    capabilities: list[str] = Field(default_factory=list, description=(
        "The operations (tools) this identity can use now: its scopes allow them and its Vault policy grants "
        "what they need (asked of Vault, cached for CAPABILITIES_TTL)."))


# -- MCP resources (issue 14): the agent's secrets and Transit keys as a listing, never a value --------------

class SecretsPageArgs(_Strict):
    after: str = Field(default="", max_length=512, description="List the paths after this one (sorted order).")
    limit: int = Field(default=50, ge=1, le=1000)


class SecretEntry(BaseModel):
    path: str
    version: int
    created_time: str
    updated_time: str


class SecretsPageOut(BaseModel):
    secrets: list[SecretEntry]
    next_after: str | None = Field(default=None, description="Pass as 'after' for the next page; absent: done.")


class TransitKeysArgs(_Strict):
    after: str = Field(default="", max_length=64)
    limit: int = Field(default=50, ge=1, le=1000)


class TransitKeyArgs(_Strict):
    key: str = Field(description=KEY_DESCRIPTION)

    _k = field_validator("key")(_key_name)


class TransitKeyInfo(BaseModel):
    """A Transit key's description without any key material (not even public keys)."""

    key: str
    type: str
    latest_version: int
    supports_encryption: bool
    supports_decryption: bool
    supports_signing: bool


class TransitKeysOut(BaseModel):
    keys: list[TransitKeyInfo]
    next_after: str | None = None


# -- intake (issue 12): a human types values into a one-time form; the agent learns only that they were stored ---

class IntakeFieldSpec(_Strict):
    name: str = Field(min_length=1, max_length=128, description="The key the value is stored under.")
    multiline: bool = Field(default=False, description=(
        "A text area (PEM keys, certificates) instead of a one-line password input."))
    label: str | None = Field(default=None, max_length=64, description="Shown on the form instead of the name.")
    description: str | None = Field(default=None, max_length=200, description="A hint shown under the field.")


class IntakeRequestBody(_Strict):
    fields: list[str | IntakeFieldSpec] = Field(min_length=1, max_length=16, description=(
        "The values to ask for: key names, or objects with 'name' and optional 'multiline', 'label', "
        "'description' (1-16 fields; names, labels and descriptions together at most 2048 characters)."))
    description: str = Field(default="", max_length=500, description=(
        "A note for the human: what the values are for (shown on the form as your note, unchecked)."))


class IntakeRequestArgs(IntakeRequestBody):
    path: str = Field(description=PATH_DESCRIPTION)


class IntakeStatusArgs(_Strict):
    path: str = Field(description=PATH_DESCRIPTION)
    id: str = Field(min_length=1, max_length=2000, description=(
        "The elicitation_id kv_request_input returned."))


IntakeStatusName = Literal["pending", "stored", "failed", "declined", "cancelled", "expired"]


class IntakeOut(BaseModel):
    path: str
    status: IntakeStatusName = Field(description=(
        "pending: waiting for the human; stored: the values are in the secret as 'version'; failed: the write "
        "failed ('code', e.g. cas_mismatch: the secret changed since you asked); declined/cancelled: the human "
        "refused or dismissed it (or 'code' quarantined); expired: nobody submitted in time."))
    stored: bool = Field(description="Whether the values are stored.")
    version: int | None = Field(default=None, description="The secret's new version (stored).")
    fingerprints: dict[str, str] | None = Field(default=None, description=(
        "Field -> keyed HMAC of its value (hmac-sha256:v<N>:...): equal values have equal fingerprints; the "
        "values themselves are never shown."))
    url: str | None = Field(default=None, description=(
        "The one-time link to give the human (pending): it works once, until 'expires_at'."))
    elicitation_id: str | None = Field(default=None, description=(
        "Pass it as 'id' to kv_request_input_status to learn the outcome."))
    expected_version: int | None = Field(default=None, description=(
        "The write checks that the secret is still at this version (0: it must not exist yet)."))
    expires_at: str | None = Field(default=None, description="When the link stops working (UTC, ISO 8601).")
    code: str | None = Field(default=None, description="Why it failed or was cancelled.")


def parse(model: type[M], obj: Any) -> M:
    """Validate ``obj`` into ``model``; a failure is a 400 naming the fields (never their values)."""
    if not isinstance(obj, dict):
        raise InvalidRequestError("The body must be a JSON object.")
    try:
        return model.model_validate(obj)
    except ValidationError as exc:
        raise InvalidRequestError("Invalid request: " + describe_errors(exc) + ".") from None


def describe_errors(exc: ValidationError, *, whole: str = "body") -> str:
    """The first few failures as ``field: reason``, never the values (``whole`` names the object itself)."""
    parts = []
    for err in exc.errors()[:5]:
        loc = ".".join(str(p) for p in err["loc"]) or whole
        parts.append(f"{loc}: {err['msg'].removeprefix('Value error, ')}")
    return "; ".join(parts)
