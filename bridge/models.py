"""Request and response models shared by REST and MCP (and, later, the OpenAPI document)."""

from __future__ import annotations

import base64
import binascii
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from bridge.config import IDENT_RE
from bridge.errors import InvalidRequestError

M = TypeVar("M", bound=BaseModel)

MAX_VERSIONS = 100


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class WriteBody(_Strict):
    data: dict[str, Any] = Field(description="The secret's key/value pairs (any JSON values).")
    cas: int | None = Field(default=None, ge=0,
                            description="Check-and-set: the current version the write expects (0 = create only).")


class PatchBody(_Strict):
    data: dict[str, Any] = Field(description="JSON merge patch: keys to set; a null value removes the key.")
    cas: int | None = Field(default=None, ge=0, description="Check-and-set: expected current version.")


class VersionsBody(_Strict):
    versions: list[int] = Field(min_length=1, max_length=MAX_VERSIONS, description="Version numbers (>= 1).")

    @field_validator("versions")
    @classmethod
    def _positive(cls, value: list[int]) -> list[int]:
        if any(v < 1 for v in value):
            raise ValueError("versions are positive integers")
        return sorted(set(value))


def _key_name(value: str) -> str:
    if not IDENT_RE.match(value):
        raise ValueError("key names match ^[a-z0-9][a-z0-9_-]{0,63}$")
    return value


class EncryptBody(_Strict):
    key: str = Field(description="Your Transit key name (created on first use).")
    plaintext: str = Field(description="Base64 of the bytes to encrypt.", max_length=4 * 1024 * 1024)

    _k = field_validator("key")(_key_name)

    @field_validator("plaintext")
    @classmethod
    def _b64(cls, value: str) -> str:
        try:
            base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError):
            raise ValueError("plaintext must be base64") from None
        return value


class DecryptBody(_Strict):
    key: str = Field(description="The Transit key name used to encrypt.")
    ciphertext: str = Field(description="Ciphertext as returned by encrypt (vault:vN:…).", min_length=1,
                            max_length=8 * 1024 * 1024)

    _k = field_validator("key")(_key_name)


class SecretOut(BaseModel):
    path: str
    data: dict[str, Any]
    version: int
    created_time: str
    custom_metadata: dict[str, str] | None = None


class WriteOut(BaseModel):
    path: str
    data: dict[str, Any]
    version: int
    created_time: str


class PatchOut(BaseModel):
    path: str
    version: int
    created_time: str


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


class EncryptOut(BaseModel):
    ciphertext: str
    key_version: int


class DecryptOut(BaseModel):
    plaintext: str


class WhoamiOut(BaseModel):
    subject: str
    auth_method: str
    scopes: list[str]
    vault_path_prefix: str


def parse(model: type[M], obj: Any) -> M:
    """Validate ``obj`` into ``model``; a failure is a 400 naming the fields (never their values)."""
    if not isinstance(obj, dict):
        raise InvalidRequestError("The body must be a JSON object.")
    try:
        return model.model_validate(obj)
    except ValidationError as exc:
        parts = []
        for err in exc.errors()[:5]:
            loc = ".".join(str(p) for p in err["loc"]) or "body"
            parts.append(f"{loc}: {err['msg'].removeprefix('Value error, ')}")
        raise InvalidRequestError("Invalid request: " + "; ".join(parts) + ".") from None
