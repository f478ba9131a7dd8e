"""Transit operations with the agent's own keys (:class:`~bridge.service.transit.TransitService`). Each answers
with Vault's field names, without fields that do not apply; a ``batch_input`` costs its items."""

from __future__ import annotations

from pydantic import BaseModel

from bridge.models import (
    CreateKeyBody,
    DecryptBody,
    DecryptOut,
    EncryptBody,
    EncryptOut,
    HmacBody,
    HmacOut,
    KeyOut,
    RandomBody,
    RandomOut,
    RewrapBody,
    RewrapOut,
    SignBody,
    SignOut,
    VerifyBody,
    VerifyOut,
)
from bridge.operations.spec import AnyOperation, Operation, RestBinding, hints
from bridge.service.transit import TransitService


def _post(op: str, name: str, body: type[BaseModel]) -> RestBinding:
    """``POST /transit/<op>`` with the operation's input as the body."""
    return RestBinding("POST", f"/transit/{op}", route=name, tag="transit", errors=(404, 409), body=body,
                       exclude_none=True)


OPERATIONS: tuple[AnyOperation, ...] = (
    Operation(
        name="transit_encrypt", scope="write", input=EncryptBody, output=EncryptOut, service=TransitService,
        run=TransitService.encrypt, cost=TransitService.cost, title="Encrypt data",
        summary="Encrypt with your Transit key (created on first use); single item or batch.",
        description=(
            "Encrypt data with one of your Vault Transit keys; the key never leaves Vault. 'plaintext' is "
            "the base64 of the bytes to encrypt; 'key' names your key (created on first use; lower-case "
            "letters, digits, '_' and '-'). Returns a 'vault:vN:...' ciphertext to store anywhere; "
            "transit_decrypt with the same key reverses it."),
        annotations=hints(read_only=False, idempotent=True), audit=("key",),
        rest=_post("encrypt", "transit_encrypt", EncryptBody)),
    Operation(
        name="transit_decrypt", scope="read", input=DecryptBody, output=DecryptOut, service=TransitService,
        run=TransitService.decrypt, cost=TransitService.cost, title="Decrypt data",
        summary="Decrypt ciphertexts made with your Transit key; single item or batch.",
        description=(
            "Decrypt a 'vault:vN:...' ciphertext made by transit_encrypt with the same 'key'. Returns the "
            "plaintext as base64 (decode it to get the original bytes)."),
        annotations=hints(read_only=True, idempotent=True), audit=("key",),
        rest=_post("decrypt", "transit_decrypt", DecryptBody)),
    Operation(
        name="transit_rewrap", scope="write", input=RewrapBody, output=RewrapOut, service=TransitService,
        run=TransitService.rewrap, cost=TransitService.cost, title="Re-encrypt with the latest key version",
        summary="Re-encrypt ciphertexts with the key's latest version, without revealing the plaintext.",
        description=(
            "Re-encrypt a 'vault:vN:...' ciphertext of your 'key' with the key's latest version, without "
            "ever showing the plaintext; use it after a key rotation. 'batch_input' takes a list of "
            "{ciphertext, reference} and answers per item."),
        annotations=hints(read_only=False, idempotent=False), audit=("key",),
        rest=_post("rewrap", "transit_rewrap", RewrapBody)),
    Operation(
        name="transit_sign", scope="write", input=SignBody, output=SignOut, service=TransitService,
        run=TransitService.sign, cost=TransitService.cost, title="Sign data",
        summary="Sign data with your asymmetric Transit key.",
        description=(
            "Sign base64 'input' with your signing key (create one first with transit_create_key, type "
            "ed25519, ecdsa-p256 or rsa-2048). Returns a 'vault:vN:...' signature for transit_verify. "
            "'hash_algorithm' (default sha2-256) applies to ECDSA and RSA keys. 'batch_input' signs a list "
            "of {input, reference}, answered per item."),
        annotations=hints(read_only=False, idempotent=True), audit=("key",),
        rest=_post("sign", "transit_sign", SignBody)),
    Operation(
        name="transit_verify", scope="read", input=VerifyBody, output=VerifyOut, service=TransitService,
        run=TransitService.verify, cost=TransitService.cost, title="Verify a signature or HMAC",
        summary="Verify a signature or HMAC made with your Transit key.",
        description=(
            "Check a 'signature' (from transit_sign) or an 'hmac' (from transit_hmac) over base64 'input' "
            "with your 'key'; answers valid true or false. Use the same 'hash_algorithm' as when signing. "
            "'batch_input' checks a list of {input, signature or hmac, reference}."),
        annotations=hints(read_only=True, idempotent=True), audit=("key",),
        rest=_post("verify", "transit_verify", VerifyBody)),
    Operation(
        name="transit_hmac", scope="write", input=HmacBody, output=HmacOut, service=TransitService,
        run=TransitService.hmac_of, cost=TransitService.cost, title="HMAC data",
        summary="HMAC of data with your Transit key.",
        description=(
            "Compute a keyed HMAC of base64 'input' with your 'key' (an encryption key works; created on "
            "first use by transit_encrypt or transit_create_key). Returns 'vault:vN:...'; "
            "transit_verify with 'hmac' checks it. 'batch_input' takes a list of {input, reference}."),
        annotations=hints(read_only=False, idempotent=True), audit=("key",),
        rest=_post("hmac", "transit_hmac", HmacBody)),
    Operation(
        name="transit_random", scope="read", input=RandomBody, output=RandomOut, service=TransitService,
        run=TransitService.random_bytes, title="Random bytes", summary="Random bytes from Vault.",
        description=(
            "Get cryptographically secure random bytes from Vault: 'bytes' (1-4096, default 32) in 'format' "
            "base64 (default) or hex. Good for passwords, tokens and nonces."),
        annotations=hints(read_only=True, idempotent=False),
        rest=_post("random", "transit_random", RandomBody)),
    Operation(
        name="transit_create_key", scope="write", input=CreateKeyBody, output=KeyOut, service=TransitService,
        run=TransitService.create_key, title="Create a Transit key",
        summary="Create one of your Transit keys (idempotent for the same type; another type is a 409).",
        description=(
            "Create your Transit key 'key' of 'type': aes256-gcm96 (default; encrypt, decrypt, HMAC), "
            "ed25519 / ecdsa-p256 / rsa-2048 to sign, or hmac with 'key_size' (bytes); the operator decides "
            "which types are allowed (key_type_not_allowed) and how many keys you may own (key_limit_reached). "
            "Idempotent: an existing key of the same type is returned unchanged (with its public keys); another "
            "type is key_type_mismatch. The key material never leaves Vault."),
        annotations=hints(read_only=False, idempotent=True), audit=("key",),
        rest=_post("keys", "transit_create_key", CreateKeyBody)),
)
