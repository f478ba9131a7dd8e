"""Transit operations with the agent's own keys (:class:`~bridge.service.transit.TransitService`). Each answers
with Vault's field names, without fields that do not apply; a ``batch_input`` costs its items."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from pydantic import BaseModel

from bridge import models as m
from bridge.auth.identity import Identity
from bridge.operations.spec import AnyOperation, Changes, Operation, RestBinding, Scope, hints
from bridge.service.capabilities import VaultNeed, need
from bridge.service.transit import TransitService


def _transit(name: str, scope: Scope, input_model: type[BaseModel], output_model: type[BaseModel],
             run: Callable[[TransitService, Identity, Any], Awaitable[BaseModel]], *, route: str, title: str,
             summary: str, description: str, annotations: Mapping[str, bool], batch: bool = True,
             needs: VaultNeed | None = None, changes: Changes | None = None) -> AnyOperation:
    """A Transit operation: ``POST /transit/<route>`` with its input as the body; the key name is audited, a
    batch (``batch``) costs its items. It needs ``update`` on ``{transit}/<route>/<one of the agent's keys>``
    unless ``needs`` says otherwise."""
    return Operation(
        name=name, scope=scope, input=input_model, output=output_model, service=TransitService, run=run,
        cost=TransitService.cost if batch else None, title=title, summary=summary, description=description,
        annotations=annotations, audit=("key",) if "key" in input_model.model_fields else (),
        rest=RestBinding("POST", f"/transit/{route}", route=name, tag="transit", errors=(404, 409), body=input_model,
                         exclude_none=True),
        needs=(needs or need(f"{{transit}}/{route}/{{key}}", "update"),), changes=changes)


OPERATIONS: tuple[AnyOperation, ...] = (
    _transit(
        "transit_encrypt", "write", m.EncryptBody, m.EncryptOut, TransitService.encrypt, route="encrypt",
        needs=need("{transit}/encrypt/{key}", "create", "update"),
        title="Encrypt data", summary="Encrypt with your Transit key (created on first use); single item or batch.",
        description=(
            "Encrypt data with one of your Vault Transit keys; the key never leaves Vault. 'plaintext' is "
            "the base64 of the bytes to encrypt; 'key' names your key (created on first use; lower-case "
            "letters, digits, '_' and '-'). Returns a 'vault:vN:...' ciphertext to store anywhere; "
            "transit_decrypt with the same key reverses it."),
        annotations=hints(read_only=False, idempotent=True)),
    _transit(
        "transit_decrypt", "read", m.DecryptBody, m.DecryptOut, TransitService.decrypt, route="decrypt",
        title="Decrypt data", summary="Decrypt ciphertexts made with your Transit key; single item or batch.",
        description=(
            "Decrypt a 'vault:vN:...' ciphertext made by transit_encrypt with the same 'key'. Returns the "
            "plaintext as base64 (decode it to get the original bytes)."),
        annotations=hints(read_only=True, idempotent=True)),
    _transit(
        "transit_rewrap", "write", m.RewrapBody, m.RewrapOut, TransitService.rewrap, route="rewrap",
        title="Re-encrypt with the latest key version",
        summary="Re-encrypt ciphertexts with the key's latest version, without revealing the plaintext.",
        description=(
            "Re-encrypt a 'vault:vN:...' ciphertext of your 'key' with the key's latest version, without "
            "ever showing the plaintext; use it after a key rotation. 'batch_input' takes a list of "
            "{ciphertext, reference} and answers per item."),
        annotations=hints(read_only=False, idempotent=False)),
    _transit(
        "transit_sign", "write", m.SignBody, m.SignOut, TransitService.sign, route="sign",
        title="Sign data", summary="Sign data with your asymmetric Transit key.",
        description=(
            "Sign base64 'input' with your signing key (create one first with transit_create_key, type "
            "ed25519, ecdsa-p256 or rsa-2048). Returns a 'vault:vN:...' signature for transit_verify. "
            "'hash_algorithm' (default sha2-256) applies to ECDSA and RSA keys. 'batch_input' signs a list "
            "of {input, reference}, answered per item."),
        annotations=hints(read_only=False, idempotent=True)),
    _transit(
        "transit_verify", "read", m.VerifyBody, m.VerifyOut, TransitService.verify, route="verify",
        title="Verify a signature or HMAC", summary="Verify a signature or HMAC made with your Transit key.",
        description=(
            "Check a 'signature' (from transit_sign) or an 'hmac' (from transit_hmac) over base64 'input' "
            "with your 'key'; answers valid true or false. Use the same 'hash_algorithm' as when signing. "
            "'batch_input' checks a list of {input, signature or hmac, reference}."),
        annotations=hints(read_only=True, idempotent=True)),
    _transit(
        "transit_hmac", "write", m.HmacBody, m.HmacOut, TransitService.hmac_of, route="hmac",
        title="HMAC data", summary="HMAC of data with your Transit key.",
        description=(
            "Compute a keyed HMAC of base64 'input' with your 'key' (an encryption key works; created on "
            "first use by transit_encrypt or transit_create_key). Returns 'vault:vN:...'; "
            "transit_verify with 'hmac' checks it. 'batch_input' takes a list of {input, reference}."),
        annotations=hints(read_only=False, idempotent=True)),
    _transit(
        "transit_random", "read", m.RandomBody, m.RandomOut, TransitService.random_bytes, route="random",
        title="Random bytes", summary="Random bytes from Vault.", batch=False,
        needs=need("{transit}/random", "update"),
        description=(
            "Get cryptographically secure random bytes from Vault: 'bytes' (1-4096, default 32) in 'format' "
            "base64 (default) or hex. Good for passwords, tokens and nonces."),
        annotations=hints(read_only=True, idempotent=False)),
    _transit(
        "transit_create_key", "write", m.CreateKeyBody, m.KeyOut, TransitService.create_key, route="keys",
        title="Create a Transit key", batch=False, needs=need("{transit}/keys/{key}", "create", "update"),
        changes=Changes("transit", "key"),
        summary="Create one of your Transit keys (idempotent for the same type; another type is a 409).",
        description=(
            "Create your Transit key 'key' of 'type': aes256-gcm96 (default; encrypt, decrypt, HMAC), "
            "ed25519 / ecdsa-p256 / rsa-2048 to sign, or hmac with 'key_size' (bytes); the operator decides "
            "which types are allowed (key_type_not_allowed) and how many keys you may own (key_limit_reached). "
            "Idempotent: an existing key of the same type is returned unchanged (with its public keys); another "
            "type is key_type_mismatch. The key material never leaves Vault."),
        annotations=hints(read_only=False, idempotent=True)),
)
