"""Dynamic secrets and the agent's leases (:class:`~bridge.service.dynamic.DynamicService`): database logins,
certificates and SSH certificates made on demand for the agent's own roles, and its leases listed, renewed and
revoked. Obtaining and renewing need ``read``, or ``use``: a ``use``-only identity gets a database login's password
as a reference (``lease://<lease_id>#password``) it can use in brokered HTTP and ``exec``, never the value; signing
(``pki_sign``, ``ssh_sign``) answers public material only, the same to both. ``pki_issue`` answers a private key and
needs ``read``. Revoking needs ``delete``; ``lease_resolve`` (REST only, for ``exec``) gives a lease reference's
value to an identity with ``read``."""

from __future__ import annotations

from pydantic import BaseModel

from bridge import models_dynamic as d
from bridge.models import NoArgs
from bridge.operations.spec import AnyOperation, Operation, Param, RestBinding, Scope, hints
from bridge.service.capabilities import need
from bridge.service.dynamic import DynamicService

ROLE = Param("role", "path", {"type": "string", "pattern": "^[a-z0-9][a-z0-9_-]{0,63}$"},
             "Your role's name (the bridge maps it to your own Vault role).")
_OBTAIN = hints(read_only=False, idempotent=False)
USE: tuple[Scope, ...] = ("use", "read")
"""Obtaining and renewing: either scope (``use`` is answered with references where a value would be)."""


def _rest(method: str, path: str, route: str, *, body: type[BaseModel] | None = None,
          errors: tuple[int, ...] = (404, 409)) -> RestBinding:
    """A route of this area: fields that do not apply are left out of the answer."""
    return RestBinding(method, path, route=route, tag="dynamic", errors=errors, body=body, exclude_none=True,
                       params=(ROLE,) if "{role}" in path else ())

OPERATIONS: tuple[AnyOperation, ...] = (
    Operation(
        name="db_creds", scope=USE, input=d.DbCredsArgs, output=d.DbCredsOut, service=DynamicService,
        run=DynamicService.db_creds, title="Database login",
        summary="A database login made now for your role; it lives 'ttl' seconds unless renewed or revoked.",
        description=(
            "Get a fresh database username and password from your database role 'role' (made now, for you "
            "only). It stops working after 'ttl' seconds (ask with 'ttl', e.g. '15m'; the operator caps it), or "
            "when you revoke it with lease_revoke and its 'lease_id'; lease_renew extends it. With the 'read' "
            "scope you get 'password'; without it, 'password_reference' (lease://<lease_id>#password) and "
            "'password_fingerprint' instead: put {{lease://<lease_id>#password}} into an http_request to a host "
            "the operator allowed for the role, or hand the reference to vault-mcp-bridge exec."),
        annotations=_OBTAIN, audit=("role",),
        rest=_rest("POST", "/dynamic/database/{role}", "dynamic_database", body=d.DbCredsBody),
        needs=(need("{database}/creds/{role}", "read"),)),
    Operation(
        name="pki_issue", scope="read", input=d.PkiIssueArgs, output=d.CertificateOut, service=DynamicService,
        run=DynamicService.pki_issue, title="Issue a certificate",
        summary="A certificate and its private key from your PKI role.",
        description=(
            "Issue an X.509 certificate with a new private key from your PKI role 'role' for 'common_name' "
            "(and 'alt_names', comma-separated), valid for 'ttl'. Returns the PEM certificate, chain, private "
            "key, serial and expiry; lease_revoke with its 'lease_id' revokes it (it goes on the CRL). Prefer "
            "pki_sign when you can keep the key yourself."),
        annotations=_OBTAIN, audit=("role", "common_name"),
        scope_hint=("It answers a private key, which a 'use'-only identity never receives: make a key and a CSR "
                    "yourself and call pki_sign (POST /dynamic/pki/{role}:sign), which needs 'use' only."),
        rest=_rest("POST", "/dynamic/pki/{role}", "dynamic_pki", body=d.PkiIssueBody),
        needs=(need("{pki}/issue/{role}", "update"),)),
    Operation(
        name="pki_sign", scope=USE, input=d.PkiSignArgs, output=d.CertificateOut, service=DynamicService,
        run=DynamicService.pki_sign, title="Sign a certificate request",
        summary="A certificate for your CSR from your PKI role (the private key never leaves you).",
        description=(
            "Sign a PEM certificate signing request 'csr' with your PKI role 'role' (optionally overriding "
            "'common_name', adding 'alt_names'), valid for 'ttl'. The private key stays with you. Returns the "
            "certificate, chain, serial and expiry; lease_revoke with its 'lease_id' revokes it."),
        annotations=_OBTAIN, audit=("role", "common_name"),
        rest=_rest("POST", "/dynamic/pki/{role}:sign", "dynamic_pki", body=d.PkiSignBody),
        needs=(need("{pki}/sign/{role}", "update"),)),
    Operation(
        name="ssh_sign", scope=USE, input=d.SshSignArgs, output=d.SshCertificateOut, service=DynamicService,
        run=DynamicService.ssh_sign, title="Sign an SSH key",
        summary="An SSH user certificate for your public key from your SSH role.",
        description=(
            "Sign your OpenSSH 'public_key' with your SSH role 'role' for the logins 'valid_principals' "
            "(comma-separated; default: the role's user), valid for 'ttl'. SSH certificates cannot be revoked: "
            "ask for no longer than you need."),
        annotations=_OBTAIN, audit=("role",),
        rest=_rest("POST", "/dynamic/ssh/{role}", "dynamic_ssh", body=d.SshSignBody),
        needs=(need("{ssh}/sign/{role}", "update"),)),
    Operation(
        name="lease_list", scope=USE, input=NoArgs, output=d.LeaseListOut, service=DynamicService,
        run=DynamicService.lease_list, title="List your leases",
        summary="Your live database logins, certificates and SSH certificates.",
        description=(
            "List the credentials the bridge obtained for you that are still live: database logins (username), "
            "certificates (serial, common name) and SSH certificates (serial, principals; listed until they "
            "expire, not revocable), with their lease ids, expiry and remaining ttl; a database login whose "
            "password the bridge holds for you shows its password_reference. Takes no arguments."),
        annotations=hints(read_only=True, idempotent=True),
        rest=_rest("GET", "/leases", "lease_list", errors=())),
    Operation(
        name="lease_renew", scope=USE, input=d.LeaseRenewBody, output=d.LeaseRenewOut, service=DynamicService,
        run=DynamicService.lease_renew, title="Renew a lease",
        summary="Extend one of your database logins by 'increment' from now.",
        description=(
            "Extend your lease 'lease_id' (a database login) to live 'increment' from now (e.g. '30m'; the "
            "operator and the role cap it). Certificates cannot be renewed."),
        annotations=hints(read_only=False, idempotent=False), audit=("lease_id",),
        rest=_rest("POST", "/leases:renew", "lease_renew", body=d.LeaseRenewBody, errors=(404,)),
        needs=(need("sys/leases/renew/{database}/creds/{role}", "update"),)),
    Operation(
        name="lease_revoke", scope="delete", input=d.LeaseIdBody, output=d.LeaseRevokeOut, service=DynamicService,
        run=DynamicService.lease_revoke, title="Revoke a lease",
        summary="Revoke one of your database logins or certificates now.",
        description=(
            "Revoke your lease 'lease_id' now: a database login stops working, a certificate goes on the CRL. "
            "Use it as soon as you no longer need the credential."),
        annotations=hints(read_only=False, destructive=True, idempotent=True), audit=("lease_id",),
        rest=_rest("POST", "/leases:revoke", "lease_revoke", body=d.LeaseIdBody, errors=(404,)),
        needs=(need("sys/leases/revoke/{database}/creds/{role}", "update"),)),
    Operation(
        name="lease_resolve", scope="read", input=d.LeaseResolveBody, output=d.LeaseResolveOut,
        service=DynamicService, run=DynamicService.lease_resolve, title="Resolve a lease reference",
        summary="The value a lease reference (lease://<lease_id>#password) of yours names.",
        description=(
            "The password of one of your database logins that the bridge holds for you (db_creds answered a "
            "password_reference to an identity without 'read'), for a process that needs it, such as "
            "vault-mcp-bridge exec. Needs 'read'; another agent's reference, or one whose lease ended, is 404 "
            "lease_not_found. Not an MCP tool: a model that may see values got the password from db_creds."),
        annotations=hints(read_only=True, idempotent=True), audit=("reference",), mcp=False,
        rest=_rest("POST", "/leases:resolve", "lease_resolve", body=d.LeaseResolveBody, errors=(404,))),
)
"""Every credential is obtained with the agent's lease token under its own policy, recorded in the bridge state
before it is handed out, and revoked with the agent (quarantine, idle): see bridge/service/dynamic.py."""
