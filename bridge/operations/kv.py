"""KV v2 operations: an agent's versioned key/value secrets (:class:`~bridge.service.kv.KvService`)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from bridge import models as m
from bridge.operations.spec import AnyOperation, Changes, Operation, Param, RestBinding, hints
from bridge.paths import MAX_PATH_LENGTH, PATH_PATTERN, PREFIX_PATTERN
from bridge.service.capabilities import need
from bridge.service.kv import KvService

SECRET_PATH = Param("path", "path", {"type": "string", "pattern": PATH_PATTERN, "maxLength": MAX_PATH_LENGTH},
                    "The secret's path relative to your namespace (segments of letters, digits and _.=+@,- "
                    "separated by '/'; percent-encode '/' or send it literally).")
VERSION = Param("version", "query", {"type": "integer", "minimum": 0, "maximum": m.MAX_VERSION},
                "A specific version (0 or absent = latest).")
WRAP_TTL = Param("wrap_ttl", "query", {"type": "string", "pattern": m.WRAP_TTL_PATTERN},
                 "Wrapped delivery: answer a Vault response-wrapping token valid this long (60s, 5m; at most "
                 "WRAP_MAX_TTL) instead of the secret.")
PREFIX = Param("prefix", "query", {"type": "string", "maxLength": MAX_PATH_LENGTH, "pattern": PREFIX_PATTERN},
               "List below this relative prefix (empty = your root).")

DATA = "{kv}/data/{ns}/{probe}"
"""A secret of the agent (the representative path of a capability check, see bridge.service.capabilities)."""
CHANGES_SECRET = Changes("kv", "path")


def _secret(method: str, suffix: str = "", *, route: str, body: type[BaseModel] | None = None,
            errors: tuple[int, ...] = (404,), query: tuple[str, ...] = (), status: int = 200,
            params: tuple[Param, ...] = (SECRET_PATH,)) -> RestBinding:
    """A route on ``/secrets/{path}`` (``{path}`` is the rest of the URL, decoded once)."""
    return RestBinding(method, "/secrets/{path}" + suffix, route=route, tag="secrets", errors=errors, tail="path",
                       query=query, body=body, status=status, params=params)


def _read_details(args: m.KvReadArgs, out: m.KvReadOut | None) -> dict[str, Any]:
    """How a read answered (``values``, ``references``, ``wrapped``), and a wrapping token's accessor (an operator
    can look it up or revoke it; the token itself is never recorded)."""
    answer = out.root if out is not None else None
    if isinstance(answer, m.WrappedSecretOut):
        return {"answer": "wrapped", "wrap_ttl": answer.wrap_info.ttl, "wrap_accessor": answer.wrap_info.accessor}
    if isinstance(answer, m.SecretRefsOut):
        return {"answer": "references"}
    if isinstance(answer, m.SecretOut):
        return {"answer": "values"}
    return {"wrap_ttl": args.wrap_seconds} if args.wrap_ttl is not None else {}


OPERATIONS: tuple[AnyOperation, ...] = (
    Operation(
        name="kv_read", scope=("use", "read"), input=m.KvReadArgs, output=m.KvReadOut, service=KvService,
        run=KvService.read, title="Read a secret", summary="Read a secret (latest or ?version=N), or wrap it.",
        description=(
            "Read one secret (a JSON object of key/value pairs) from your namespace in Vault. 'path' names the "
            "secret; 'version' picks an older version (omit for the latest). With the 'read' scope you get the "
            "values ('data'); without it, or when the operator marked the secret bridge.reveal=never, you get "
            "'fields': per key a 'reference' (secret://<path>#<key>@<version>) to use in http_request "
            "placeholders or transit plaintext_ref/input_ref, and a 'fingerprint' (equal values, equal "
            "fingerprints). 'wrap_ttl' (e.g. '60s') returns a one-time Vault wrapping token instead, for another "
            "process to unwrap. Fails with not_found, secret_deleted (undelete it) or secret_destroyed."),
        annotations=hints(read_only=True, idempotent=True), audit=("path", "version"), audit_details=_read_details,
        rest=_secret("GET", route="secret_get", query=("version", "wrap_ttl"),
                     params=(SECRET_PATH, VERSION, WRAP_TTL)),
        needs=(need(DATA, "read"),)),
    Operation(
        name="kv_write", scope="write", input=m.KvWriteArgs, output=m.WriteOut, service=KvService, run=KvService.write,
        title="Write a secret", summary="Write a new version (optionally check-and-set).",
        description=(
            "Create or replace a secret: 'data' becomes the whole new version (keys not given are gone from "
            "it; older versions are kept). Use kv_patch to change some keys only. 'cas' (check-and-set) "
            "makes the write conditional: 0 = only if the secret does not exist, N = only if the current "
            "version is N (else cas_mismatch). Returns the new version number."),
        annotations=hints(read_only=False, destructive=True, idempotent=False), audit=("path", "cas"),
        rest=_secret("PUT", route="secret_put", body=m.WriteBody, errors=(409,)),
        needs=(need(DATA, "create", "update"),), changes=CHANGES_SECRET),
    Operation(
        name="kv_patch", scope="write", input=m.KvPatchArgs, output=m.PatchOut, service=KvService, run=KvService.patch,
        title="Update keys of a secret", summary="Merge-patch the latest version into a new one.",
        description=(
            "Change some keys of an existing secret (JSON merge patch): keys in 'data' are set, a key with "
            "value null is removed, other keys stay. Creates a new version. The secret must exist "
            "(not_found otherwise). Optional 'cas' = the version you expect to be current."),
        annotations=hints(read_only=False, destructive=True, idempotent=False), audit=("path", "cas"),
        rest=_secret("PATCH", route="secret_patch", body=m.PatchBody, errors=(404, 409)),
        needs=(need(DATA, "patch"),), changes=CHANGES_SECRET),
    Operation(
        name="kv_list", scope="list", input=m.KvListArgs, output=m.ListOut, service=KvService, run=KvService.list_keys,
        title="List secrets", summary="List keys below a prefix.",
        description=(
            "List the secret names in a folder of your namespace ('prefix', empty for the top level). "
            "Names ending in '/' are sub-folders: pass them as the next 'prefix' to look inside. An empty "
            "folder returns an empty list."),
        annotations=hints(read_only=True, idempotent=True), audit=("prefix",),
        rest=RestBinding("GET", "/secrets", route="secrets_list", tag="secrets", errors=(404,), query=("prefix",),
                         params=(PREFIX,)),
        needs=(need("{kv}/metadata/{ns}/", "list"),)),
    Operation(
        name="kv_delete", scope="delete", input=m.PathArgs, output=m.OkOut, service=KvService, run=KvService.delete,
        title="Delete a secret (recoverable)", summary="Soft-delete the latest version.",
        description=(
            "Soft-delete the latest version of a secret: reads then fail with secret_deleted until "
            "kv_undelete restores it; older versions are untouched. Use kv_destroy to remove data for good. "
            "Deleting an already deleted or missing secret succeeds."),
        annotations=hints(read_only=False, destructive=True, idempotent=True), audit=("path",),
        rest=_secret("DELETE", route="secret_delete", status=204),
        needs=(need(DATA, "delete"),), changes=CHANGES_SECRET),
    Operation(
        name="kv_undelete", scope="write", input=m.KvVersionsArgs, output=m.OkOut, service=KvService,
        run=KvService.undelete, title="Restore deleted versions", summary="Restore soft-deleted versions.",
        description=(
            "Restore soft-deleted versions of a secret. 'versions' lists the version numbers to restore "
            "(see kv_metadata for which are deleted). Destroyed versions cannot be restored."),
        annotations=hints(read_only=False, idempotent=True), audit=("path", "versions"),
        rest=_secret("POST", ":undelete", route="secret_post", body=m.VersionsBody),
        needs=(need("{kv}/undelete/{ns}/{probe}", "update"),), changes=CHANGES_SECRET),
    Operation(
        name="kv_destroy", scope="delete",  # permanent: at least what the recoverable soft delete needs
        input=m.KvVersionsArgs, output=m.OkOut, service=KvService, run=KvService.destroy,
        title="Destroy versions permanently", summary="Permanently destroy versions.",
        description=(
            "Permanently erase the data of the given 'versions' of a secret. This cannot be undone; prefer "
            "kv_delete unless the data must be gone (for example a leaked credential)."),
        annotations=hints(read_only=False, destructive=True, idempotent=True), audit=("path", "versions"),
        rest=_secret("POST", ":destroy", route="secret_post", body=m.VersionsBody),
        needs=(need("{kv}/destroy/{ns}/{probe}", "update"),), changes=CHANGES_SECRET),
    Operation(
        name="kv_metadata", scope=("use", "read"), input=m.PathArgs, output=m.MetadataOut, service=KvService,
        run=KvService.metadata, title="Secret versions and metadata",
        summary="Read a secret's metadata and version history.",
        description=(
            "Show a secret's version history without its values: current and oldest version, and for each "
            "version its creation time and whether it is deleted or destroyed. Use it before kv_undelete or "
            "kv_destroy, or to pick a 'version' for kv_read."),
        annotations=hints(read_only=True, idempotent=True), audit=("path",),
        rest=_secret("GET", ":metadata", route="secret_get"),
        needs=(need("{kv}/metadata/{ns}/{probe}", "read"),)),
)
