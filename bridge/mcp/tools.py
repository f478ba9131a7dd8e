"""The MCP tool registry: one :class:`ToolSpec` per tool, in one table (:data:`TOOLS`).

Each entry names the tool, describes it for a model, points at the ``SecretService`` operation it runs (its
scope comes from ``bridge.service.OPERATION_SCOPES``), and gives the pydantic input and output models the
``inputSchema``/``outputSchema`` are built from, the annotations, and the call. Adding a tool is adding one
entry: define its argument model (usually a REST body model from ``bridge.models``, plus ``path`` when the REST
route takes one from the URL) and a small ``async def`` that calls the service.

Arguments are validated with ``bridge.models.parse`` (the same 400 ``invalid_request`` as REST); the service
does the rest (path confinement, Vault call, error translation), so MCP and REST cannot drift apart.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from bridge.auth.identity import Identity
from bridge.models import (
    MAX_VERSION,
    CreateKeyBody,
    DecryptBody,
    DecryptOut,
    EncryptBody,
    EncryptOut,
    HmacBody,
    HmacOut,
    KeyOut,
    ListOut,
    MetadataOut,
    OkOut,
    PatchBody,
    PatchOut,
    RandomBody,
    RandomOut,
    RewrapBody,
    RewrapOut,
    SecretOut,
    SignBody,
    SignOut,
    VerifyBody,
    VerifyOut,
    VersionsBody,
    WhoamiOut,
    WriteBody,
    WriteOut,
)
from bridge.service import OPERATION_SCOPES, SecretService

ToolCall = Callable[[SecretService, Identity, Any], Awaitable[BaseModel]]

PATH_DESCRIPTION = (
    "Secret path relative to your own namespace, e.g. 'db/prod'. Segments of letters, digits and "
    "_ . = + @ , - separated by single '/'; no leading '/', no '..'; at most 16 segments, 512 characters."
)

ERROR_SCHEMA: dict[str, Any] = {
    "type": "object",
    "description": "Present instead of the result when the tool failed (isError is true).",
    "properties": {
        "code": {"type": "string", "description": "Stable error code, the same as the REST API's."},
        "message": {"type": "string", "description": "What went wrong and what to do about it."},
    },
    "required": ["code", "message"],
    "additionalProperties": True,
}


# -- argument models (the REST bodies, plus what REST carries in the URL) ------------------------------

class _Args(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class NoArgs(_Args):
    pass


class PathArgs(_Args):
    path: str = Field(description=PATH_DESCRIPTION)


class KvReadArgs(PathArgs):
    version: int | None = Field(default=None, ge=0, le=MAX_VERSION,  # as REST's ?version= (nine digits)
                                description="Version to read; omit (or 0) for the latest version.")


class KvListArgs(_Args):
    prefix: str | None = Field(default=None, description=(
        "Folder to list, relative to your namespace (e.g. 'db/'); omit for your top level. "
        "Names ending in '/' are folders."))


class KvWriteArgs(WriteBody):
    path: str = Field(description=PATH_DESCRIPTION)


class KvPatchArgs(PatchBody):
    path: str = Field(description=PATH_DESCRIPTION)


class KvVersionsArgs(VersionsBody):
    path: str = Field(description=PATH_DESCRIPTION)


# -- calls --------------------------------------------------------------------------------------------

async def _kv_read(svc: SecretService, who: Identity, args: KvReadArgs) -> BaseModel:
    return await svc.read(who, args.path, args.version or None)


async def _kv_write(svc: SecretService, who: Identity, args: KvWriteArgs) -> BaseModel:
    return await svc.write(who, args.path, WriteBody(data=args.data, cas=args.cas))


async def _kv_patch(svc: SecretService, who: Identity, args: KvPatchArgs) -> BaseModel:
    return await svc.patch(who, args.path, PatchBody(data=args.data, cas=args.cas))


async def _kv_list(svc: SecretService, who: Identity, args: KvListArgs) -> BaseModel:
    return await svc.list(who, args.prefix)


async def _kv_delete(svc: SecretService, who: Identity, args: PathArgs) -> BaseModel:
    await svc.delete(who, args.path)
    return OkOut(ok=True)


async def _kv_undelete(svc: SecretService, who: Identity, args: KvVersionsArgs) -> BaseModel:
    return await svc.undelete(who, args.path, VersionsBody(versions=args.versions))


async def _kv_destroy(svc: SecretService, who: Identity, args: KvVersionsArgs) -> BaseModel:
    return await svc.destroy(who, args.path, VersionsBody(versions=args.versions))


async def _kv_metadata(svc: SecretService, who: Identity, args: PathArgs) -> BaseModel:
    return await svc.metadata(who, args.path)


async def _transit_encrypt(svc: SecretService, who: Identity, args: EncryptBody) -> BaseModel:
    return await svc.encrypt(who, args)


async def _transit_decrypt(svc: SecretService, who: Identity, args: DecryptBody) -> BaseModel:
    return await svc.decrypt(who, args)


async def _transit_rewrap(svc: SecretService, who: Identity, args: RewrapBody) -> BaseModel:
    return await svc.rewrap(who, args)


async def _transit_sign(svc: SecretService, who: Identity, args: SignBody) -> BaseModel:
    return await svc.sign(who, args)


async def _transit_verify(svc: SecretService, who: Identity, args: VerifyBody) -> BaseModel:
    return await svc.verify(who, args)


async def _transit_hmac(svc: SecretService, who: Identity, args: HmacBody) -> BaseModel:
    return await svc.hmac(who, args)


async def _transit_random(svc: SecretService, who: Identity, args: RandomBody) -> BaseModel:
    return await svc.random(who, args)


async def _transit_create_key(svc: SecretService, who: Identity, args: CreateKeyBody) -> BaseModel:
    return await svc.create_key(who, args)


async def _whoami(svc: SecretService, who: Identity, args: NoArgs) -> BaseModel:
    return svc.whoami(who)


# -- the registry ---------------------------------------------------------------------------------------

def hints(*, read_only: bool, destructive: bool = False, idempotent: bool) -> dict[str, bool]:
    """MCP ``ToolAnnotations``. Every tool acts on the caller's own Vault namespace only (closed world).

    ``destructive`` is true for anything that changes what a reader of the latest version sees (write and
    patch replace or drop values, even though KV v2 keeps older versions) or removes data (delete, destroy):
    clients use it to ask a human before the call.
    """
    return {"readOnlyHint": read_only, "destructiveHint": destructive, "idempotentHint": idempotent,
            "openWorldHint": False}


def _strip_titles(schema: Any) -> Any:
    """Drop pydantic's generated ``title`` keywords (noise for a model); keep properties named 'title'."""
    if isinstance(schema, dict):
        out: dict[str, Any] = {}
        for key, value in schema.items():
            if key == "title" and isinstance(value, str):
                continue
            if key in ("properties", "$defs") and isinstance(value, dict):
                out[key] = {name: _strip_titles(sub) for name, sub in value.items()}
            else:
                out[key] = _strip_titles(value)
        return out
    if isinstance(schema, list):
        return [_strip_titles(item) for item in schema]
    return schema


def input_schema(model: type[BaseModel]) -> dict[str, Any]:
    schema: dict[str, Any] = _strip_titles(model.model_json_schema())
    schema.setdefault("properties", {})
    return schema


def _not_null(prop: dict[str, Any]) -> dict[str, Any]:
    """An optional output field (``X | None = None``) without its ``null`` branch: results leave a field that
    does not apply out (``exclude_none``), they never send it as ``null``."""
    branches = prop.get("anyOf")
    if prop.get("default", ...) is not None or not isinstance(branches, list):
        return prop
    kept = [b for b in branches if b != {"type": "null"}]
    if len(kept) == len(branches):
        return prop
    rest = {k: v for k, v in prop.items() if k not in ("anyOf", "default")}
    return {**rest, **kept[0]} if len(kept) == 1 else {**rest, "anyOf": kept}


def output_schema(model: type[BaseModel]) -> dict[str, Any]:
    """An object schema admitting the success shape (``model``) and the ``{"error": {...}}`` shape."""
    success: dict[str, Any] = _strip_titles(model.model_json_schema(mode="serialization"))
    defs = success.pop("$defs", None)
    properties = {name: _not_null(prop) for name, prop in success.get("properties", {}).items()}
    schema: dict[str, Any] = {
        "type": "object",
        "properties": {**properties, "error": ERROR_SCHEMA},
        "anyOf": [{"required": success.get("required", [])}, {"required": ["error"]}],
    }
    if defs:
        schema["$defs"] = defs
    return schema


@dataclass(frozen=True)
class ToolSpec:
    name: str
    title: str
    description: str
    operation: str
    """Key of ``OPERATION_SCOPES``: the scope the caller needs."""
    input_model: type[BaseModel]
    output_model: type[BaseModel]
    annotations: dict[str, bool]
    call: ToolCall = field(repr=False)

    @property
    def scope(self) -> str | None:
        return OPERATION_SCOPES[self.operation]

    def allowed(self, identity: Identity) -> bool:
        return self.scope is None or self.scope in identity.scopes

    @cached_property
    def definition(self) -> dict[str, Any]:
        """The ``Tool`` object of ``tools/list``."""
        return {
            "name": self.name,
            "title": self.title,
            "description": self.description,
            "inputSchema": input_schema(self.input_model),
            "outputSchema": output_schema(self.output_model),
            "annotations": {"title": self.title, **self.annotations},
        }


TOOLS: list[ToolSpec] = [
    ToolSpec(
        name="kv_read", title="Read a secret", operation="kv_read",
        description=(
            "Read one secret (a JSON object of key/value pairs) from your namespace in Vault. Use it when you "
            "need a credential or setting you stored before. 'path' names the secret; 'version' picks an older "
            "version (omit for the latest). Fails with not_found, secret_deleted (undelete it) or "
            "secret_destroyed."),
        input_model=KvReadArgs, output_model=SecretOut,
        annotations=hints(read_only=True, idempotent=True), call=_kv_read),
    ToolSpec(
        name="kv_write", title="Write a secret", operation="kv_write",
        description=(
            "Create or replace a secret: 'data' becomes the whole new version (keys not given are gone from "
            "it; older versions are kept). Use kv_patch to change some keys only. 'cas' (check-and-set) "
            "makes the write conditional: 0 = only if the secret does not exist, N = only if the current "
            "version is N (else cas_mismatch). Returns the new version number."),
        input_model=KvWriteArgs, output_model=WriteOut,
        annotations=hints(read_only=False, destructive=True, idempotent=False), call=_kv_write),
    ToolSpec(
        name="kv_patch", title="Update keys of a secret", operation="kv_patch",
        description=(
            "Change some keys of an existing secret (JSON merge patch): keys in 'data' are set, a key with "
            "value null is removed, other keys stay. Creates a new version. The secret must exist "
            "(not_found otherwise). Optional 'cas' = the version you expect to be current."),
        input_model=KvPatchArgs, output_model=PatchOut,
        annotations=hints(read_only=False, destructive=True, idempotent=False), call=_kv_patch),
    ToolSpec(
        name="kv_list", title="List secrets", operation="kv_list",
        description=(
            "List the secret names in a folder of your namespace ('prefix', empty for the top level). "
            "Names ending in '/' are sub-folders: pass them as the next 'prefix' to look inside. An empty "
            "folder returns an empty list."),
        input_model=KvListArgs, output_model=ListOut,
        annotations=hints(read_only=True, idempotent=True), call=_kv_list),
    ToolSpec(
        name="kv_delete", title="Delete a secret (recoverable)", operation="kv_delete",
        description=(
            "Soft-delete the latest version of a secret: reads then fail with secret_deleted until "
            "kv_undelete restores it; older versions are untouched. Use kv_destroy to remove data for good. "
            "Deleting an already deleted or missing secret succeeds."),
        input_model=PathArgs, output_model=OkOut,
        annotations=hints(read_only=False, destructive=True, idempotent=True), call=_kv_delete),
    ToolSpec(
        name="kv_undelete", title="Restore deleted versions", operation="kv_undelete",
        description=(
            "Restore soft-deleted versions of a secret. 'versions' lists the version numbers to restore "
            "(see kv_metadata for which are deleted). Destroyed versions cannot be restored."),
        input_model=KvVersionsArgs, output_model=OkOut,
        annotations=hints(read_only=False, idempotent=True), call=_kv_undelete),
    ToolSpec(
        name="kv_destroy", title="Destroy versions permanently", operation="kv_destroy",
        description=(
            "Permanently erase the data of the given 'versions' of a secret. This cannot be undone; prefer "
            "kv_delete unless the data must be gone (for example a leaked credential)."),
        input_model=KvVersionsArgs, output_model=OkOut,
        annotations=hints(read_only=False, destructive=True, idempotent=True), call=_kv_destroy),
    ToolSpec(
        name="kv_metadata", title="Secret versions and metadata", operation="kv_metadata",
        description=(
            "Show a secret's version history without its values: current and oldest version, and for each "
            "version its creation time and whether it is deleted or destroyed. Use it before kv_undelete or "
            "kv_destroy, or to pick a 'version' for kv_read."),
        input_model=PathArgs, output_model=MetadataOut,
        annotations=hints(read_only=True, idempotent=True), call=_kv_metadata),
    ToolSpec(
        name="transit_encrypt", title="Encrypt data", operation="transit_encrypt",
        description=(
            "Encrypt data with one of your Vault Transit keys; the key never leaves Vault. 'plaintext' is "
            "the base64 of the bytes to encrypt; 'key' names your key (created on first use; lower-case "
            "letters, digits, '_' and '-'). Returns a 'vault:vN:...' ciphertext to store anywhere; "
            "transit_decrypt with the same key reverses it."),
        input_model=EncryptBody, output_model=EncryptOut,
        annotations=hints(read_only=False, idempotent=True), call=_transit_encrypt),
    ToolSpec(
        name="transit_decrypt", title="Decrypt data", operation="transit_decrypt",
        description=(
            "Decrypt a 'vault:vN:...' ciphertext made by transit_encrypt with the same 'key'. Returns the "
            "plaintext as base64 (decode it to get the original bytes)."),
        input_model=DecryptBody, output_model=DecryptOut,
        annotations=hints(read_only=True, idempotent=True), call=_transit_decrypt),
    ToolSpec(
        name="transit_rewrap", title="Re-encrypt with the latest key version", operation="transit_rewrap",
        description=(
            "Re-encrypt a 'vault:vN:...' ciphertext of your 'key' with the key's latest version, without "
            "ever showing the plaintext; use it after a key rotation. 'batch_input' takes a list of "
            "{ciphertext, reference} and answers per item."),
        input_model=RewrapBody, output_model=RewrapOut,
        annotations=hints(read_only=False, idempotent=False), call=_transit_rewrap),
    ToolSpec(
        name="transit_sign", title="Sign data", operation="transit_sign",
        description=(
            "Sign base64 'input' with your signing key (create one first with transit_create_key, type "
            "ed25519, ecdsa-p256 or rsa-2048). Returns a 'vault:vN:...' signature for transit_verify. "
            "'hash_algorithm' (default sha2-256) applies to ECDSA and RSA keys. 'batch_input' signs a list "
            "of {input, reference}, answered per item."),
        input_model=SignBody, output_model=SignOut,
        annotations=hints(read_only=False, idempotent=True), call=_transit_sign),
    ToolSpec(
        name="transit_verify", title="Verify a signature or HMAC", operation="transit_verify",
        description=(
            "Check a 'signature' (from transit_sign) or an 'hmac' (from transit_hmac) over base64 'input' "
            "with your 'key'; answers valid true or false. Use the same 'hash_algorithm' as when signing. "
            "'batch_input' checks a list of {input, signature or hmac, reference}."),
        input_model=VerifyBody, output_model=VerifyOut,
        annotations=hints(read_only=True, idempotent=True), call=_transit_verify),
    ToolSpec(
        name="transit_hmac", title="HMAC data", operation="transit_hmac",
        description=(
            "Compute a keyed HMAC of base64 'input' with your 'key' (an encryption key works; created on "
            "first use by transit_encrypt or transit_create_key). Returns 'vault:vN:...'; "
            "transit_verify with 'hmac' checks it. 'batch_input' takes a list of {input, reference}."),
        input_model=HmacBody, output_model=HmacOut,
        annotations=hints(read_only=False, idempotent=True), call=_transit_hmac),
    ToolSpec(
        name="transit_random", title="Random bytes", operation="transit_random",
        description=(
            "Get cryptographically secure random bytes from Vault: 'bytes' (1-4096, default 32) in 'format' "
            "base64 (default) or hex. Good for passwords, tokens and nonces."),
        input_model=RandomBody, output_model=RandomOut,
        annotations=hints(read_only=True, idempotent=False), call=_transit_random),
    ToolSpec(
        name="transit_create_key", title="Create a Transit key", operation="transit_create_key",
        description=(
            "Create your Transit key 'key' of 'type': aes256-gcm96 (default; encrypt, decrypt, HMAC), "
            "ed25519 / ecdsa-p256 / rsa-2048 to sign, or hmac with 'key_size' (bytes); the operator decides "
            "which types are allowed (key_type_not_allowed) and how many keys you may own (key_limit_reached). "
            "Idempotent: an existing key of the same type is returned unchanged (with its public keys); another "
            "type is key_type_mismatch. The key material never leaves Vault."),
        input_model=CreateKeyBody, output_model=KeyOut,
        annotations=hints(read_only=False, idempotent=True), call=_transit_create_key),
    ToolSpec(
        name="whoami", title="Who am I", operation="whoami",
        description=(
            "Show the identity this connection acts as: agent id, how it authenticated, its scopes (read, "
            "write, delete, list) and where its secrets live in Vault. Takes no arguments."),
        input_model=NoArgs, output_model=WhoamiOut,
        annotations=hints(read_only=True, idempotent=True), call=_whoami),
]


def tools_by_name() -> dict[str, ToolSpec]:
    return {spec.name: spec for spec in TOOLS}


def visible_tools(identity: Identity) -> list[ToolSpec]:
    """The tools the caller's scopes allow, in table order (deterministic, for stable pagination)."""
    return [spec for spec in TOOLS if spec.allowed(identity)]


def result_content(structured: dict[str, Any], *, is_error: bool) -> dict[str, Any]:
    """A ``CallToolResult``: the structured JSON plus the same JSON as a text block."""
    return {
        "content": [{"type": "text", "text": json.dumps(structured, ensure_ascii=False)}],
        "structuredContent": structured,
        "isError": is_error,
    }
