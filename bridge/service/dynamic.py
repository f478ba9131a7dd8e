"""Dynamic secrets for agents: database logins, certificates and SSH certificates made on demand, and the leases
the bridge keeps for them (docs/dynamic.md, "The bridge at run time").

Every credential is obtained with the agent's **lease token** (:mod:`bridge.vault.leasetokens`), never with the
per-request child token: Vault applies the agent's own policy (its roles only) and the lease lives its own TTL.
The agent's role ``r`` is the Vault role ``{DEFAULT_PREFIX}.{agent}.{r}`` (``DYNAMIC_ROLE_SCOPE=agent``) or ``r``
(``shared``). TTLs: what the agent asks for (``ttl``, ``increment``), else ``LEASE_DEFAULT_TTL``, at most
``LEASE_MAX_TTL`` and at most what the lease token has left (it is renewed first, so that only happens when its
period is shorter than ``LEASE_MAX_TTL``); the role's ``max_ttl`` caps it in Vault. A database role takes no TTL
when the login is made: when the role's ``default_ttl`` is not the TTL wanted, the new lease is renewed to it at
once (Vault shortens a lease renewed with a smaller increment).

**Who sees a database password.** An identity with the ``read`` scope gets the password, as Vault made it. Any
other (``use`` without ``read``) gets ``password_reference`` (``lease://<lease_id>#password``) and
``password_fingerprint`` instead: the bridge keeps the password in its own state (:mod:`bridge.lease_values`),
written before the answer, and resolves the reference for the same agent only (:mod:`bridge.service.lease_refs`:
brokered HTTP to the role's ``allowed_hosts``, ``lease_resolve`` for ``exec``). ``pki_issue`` answers a private
key and therefore needs ``read``; ``pki_sign`` and ``ssh_sign`` answer public material only and take ``use``.

Each credential is recorded in the agent's lease document (:class:`bridge.leases.LeaseBook`) before it is
handed out; when that fails, or the agent was quarantined meanwhile, the lease is revoked and the call fails.
``lease_list``, ``lease_renew`` and ``lease_revoke`` act on those records only, so another agent's lease id is
404 whatever Vault would say. SSH certificates are no leases: listed until they expire, never renewed or revoked.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import TypeVar

import structlog
from cryptography.hazmat.primitives import serialization

from bridge.auth.identity import Identity
from bridge.errors import (
    AgentQuarantinedError,
    BridgeError,
    InvalidRequestError,
    NotFoundError,
    from_vault_error,
)
from bridge.lease_values import HeldValue
from bridge.leases import LeaseKeeper, LeaseRecord, build_leases
from bridge.models import NoArgs
from bridge.models_dynamic import (
    CertificateOut,
    DbCredsArgs,
    DbCredsOut,
    LeaseIdBody,
    LeaseListOut,
    LeaseOut,
    LeaseRenewBody,
    LeaseRenewOut,
    LeaseResolveBody,
    LeaseResolveOut,
    LeaseRevokeOut,
    PkiIssueArgs,
    PkiSignArgs,
    SshCertificateOut,
    SshSignArgs,
)
from bridge.references import LeaseReference, parse_any_reference
from bridge.service.access import VaultAccess
from bridge.service.lease_refs import LeaseRefs, lease_not_found
from bridge.service.secrets import SecretValues
from bridge.vault.errors import VaultError, VaultInvalidRequestError
from bridge.vault.leasetokens import LeaseToken
from bridge.vault.models import Certificate, Lease
from bridge.vault.tokens import with_token

log = structlog.get_logger("bridge.dynamic")

T = TypeVar("T")
_GONE = ("lease not found", "invalid lease")
"""What Vault says of a lease that expired or was revoked."""


def rfc3339(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def ssh_validity(signed_key: str) -> tuple[float, list[str]] | None:
    """``valid_before`` (Unix time) and the principals of an OpenSSH certificate, or ``None`` if unreadable."""
    try:
        cert = serialization.load_ssh_public_identity(signed_key.strip().encode())
    except (ValueError, TypeError):
        return None
    if not isinstance(cert, serialization.SSHCertificate):
        return None
    return float(cert.valid_before), [p.decode("utf-8", "replace") for p in cert.valid_principals]


class DynamicService:
    """Dynamic credentials and the agent's leases (see the module docstring). ``leases`` is the app's lease keeper
    (shared with the quarantine); ``blocked`` says whether an agent is quarantined (checked again once a credential
    is recorded, so a quarantine that lands meanwhile revokes it)."""

    def __init__(self, access: VaultAccess, leases: LeaseKeeper | None = None,
                 blocked: Callable[[str], bool] | None = None, *, clock: Callable[[], float] = time.time) -> None:
        settings = access.settings
        self._vault = access.vault
        self.leases = leases if leases is not None else build_leases(
            access.vault, access.bridge_tokens, mount=settings.kv_mount, prefix=settings.default_prefix,
            policy_prefix=settings.child_token_policy_prefix, role=settings.lease_token_role,
            limit=settings.lease_max_per_agent, revoke_on_idle=settings.lease_revoke_on_idle)
        self._tokens = self.leases.tokens
        self._book = self.leases.book
        self.refs = LeaseRefs(self._book, prefix=settings.default_prefix,
                              shared=settings.dynamic_role_scope == "shared")
        """Lease references resolved for this app's services (brokered HTTP shares it)."""
        self._values = SecretValues(access)
        self._blocked = blocked or (lambda agent: False)
        self._clock = clock
        self._db = settings.database_mount
        self._pki = settings.pki_mount
        self._ssh = settings.ssh_mount
        self._default_ttl = int(settings.lease_default_ttl)
        self._max_ttl = int(settings.lease_max_ttl)

    def vault_role(self, identity: Identity, role: str) -> str:
        """The Vault role: ``{prefix}.{agent}.{role}`` (DYNAMIC_ROLE_SCOPE=agent) or ``role`` (shared)."""
        return self.refs.vault_role(identity, role)

    def target(self, ttl: int | None) -> int:
        """The TTL to ask for: the agent's, else ``LEASE_DEFAULT_TTL``; at most ``LEASE_MAX_TTL``."""
        return min(ttl or self._default_ttl, self._max_ttl)

    # -- obtaining ----------------------------------------------------------------------------------------

    async def db_creds(self, identity: Identity, args: DbCredsArgs) -> DbCredsOut:
        agent = identity.subject
        role = self.vault_role(identity, args.role)
        wanted = self.target(args.ttl)
        await self._room(agent)

        async def go(token: str) -> tuple[LeaseToken, int, str, str, Lease]:
            handle = self._tokens.handle_for(agent, token)
            goal = min(wanted, int(await self._tokens.ensure(handle, wanted)))
            cred = await self._vault.database.creds(self._db, role, token=token)
            return handle, goal, cred.username, cred.password.get_secret_value(), cred.lease

        handle, goal, username, password, lease = await self._call(identity, "the database credentials", go,
                                                                    role=("database", args.role))
        if lease.lease_duration != goal and lease.renewable:
            try:  # the role's default_ttl is not what is wanted: renew the new lease to it (shorter or longer)
                lease = await self._vault.leases.renew(lease.lease_id, goal, token=handle.token)
            except VaultError as exc:
                if lease.lease_duration <= self._max_ttl:
                    log.warning("dynamic.ttl_adjust_failed", agent=agent, error=type(exc).__name__)
                else:  # never hand out more than LEASE_MAX_TTL
                    await self._revoke_quietly(lease.lease_id, handle)
                    raise from_vault_error(exc, what="the database credentials") from None
        now = self._clock()
        record = LeaseRecord(
            kind="database", role=args.role, issued_at=now, expires_at=now + lease.lease_duration,
            lease_id=lease.lease_id, renewable=lease.renewable, token=handle.accessor,
            details={"username": username})
        if "read" in identity.scopes:  # may see values (as kv_read: use alone never does)
            await self._keep(identity, handle, record)
            return DbCredsOut(username=username, password=password, lease_id=lease.lease_id,
                              ttl=lease.lease_duration, renewable=lease.renewable)
        reference = str(LeaseReference(lease.lease_id))
        fingerprint = await self._hold(identity, handle, lease.lease_id, args.role, password)
        record.details["password_reference"] = reference
        try:
            await self._keep(identity, handle, record)
        except BaseException:
            with contextlib.suppress(Exception):
                await self.refs.values.delete(agent, lease.lease_id)
            raise
        return DbCredsOut(username=username, password_reference=reference, password_fingerprint=fingerprint,
                          lease_id=lease.lease_id, ttl=lease.lease_duration, renewable=lease.renewable)

    async def _hold(self, identity: Identity, handle: LeaseToken, lease_id: str, role: str, password: str) -> str:
        """Keep a password for an identity that may not see it, with its fingerprint, before the answer; the
        fingerprint. When that fails, the lease is revoked and the call fails."""
        try:
            (fingerprint,) = await self._values.fingerprints([password])
            await self.refs.values.put(identity.subject, HeldValue(lease_id, role, password, fingerprint))
        except BaseException as exc:
            await self._revoke_quietly(lease_id, handle)
            if isinstance(exc, VaultError):
                raise from_vault_error(exc, what="the lease records") from None
            raise
        return fingerprint

    async def pki_issue(self, identity: Identity, args: PkiIssueArgs) -> CertificateOut:
        body: dict[str, object] = {"common_name": args.common_name}
        body.update({k: v for k, v in (("alt_names", args.alt_names), ("ip_sans", args.ip_sans)) if v})
        return await self._certificate(identity, args.role, args.ttl, body, issue=True)

    async def pki_sign(self, identity: Identity, args: PkiSignArgs) -> CertificateOut:
        body: dict[str, object] = {"csr": args.csr}
        body.update({k: v for k, v in (("common_name", args.common_name), ("alt_names", args.alt_names),
                                       ("ip_sans", args.ip_sans)) if v})
        return await self._certificate(identity, args.role, args.ttl, body, issue=False)

    async def _certificate(self, identity: Identity, name: str, ttl: int | None, body: dict[str, object], *,
                           issue: bool) -> CertificateOut:
        agent = identity.subject
        role = self.vault_role(identity, name)
        wanted = self.target(ttl)
        await self._room(agent)

        async def go(token: str) -> tuple[LeaseToken, Certificate]:
            handle = self._tokens.handle_for(agent, token)
            goal = min(wanted, int(await self._tokens.ensure(handle, wanted)))
            ask = {**body, "ttl": f"{goal}s"}
            api = self._vault.pki
            cert = await (api.issue if issue else api.sign)(self._pki, role, ask, token=token)
            return handle, cert

        handle, cert = await self._call(identity, "the certificate", go, role=("PKI", name))
        lease_id = cert.lease.lease_id or None
        now = self._clock()
        await self._keep(identity, handle, LeaseRecord(
            kind="pki", role=name, issued_at=now, expires_at=float(cert.expiration or now + cert.lease.lease_duration),
            lease_id=lease_id, renewable=False, token=handle.accessor,
            details={"serial_number": cert.serial_number, "common_name": str(body.get("common_name") or "")}))
        return CertificateOut(
            certificate=cert.certificate, issuing_ca=cert.issuing_ca, ca_chain=list(cert.ca_chain),
            private_key=cert.private_key.get_secret_value() if cert.private_key is not None else None,
            private_key_type=cert.private_key_type or None, serial_number=cert.serial_number,
            expiration=cert.expiration, lease_id=lease_id, ttl=max(0, int(cert.expiration - now)))

    async def ssh_sign(self, identity: Identity, args: SshSignArgs) -> SshCertificateOut:
        agent = identity.subject
        role = self.vault_role(identity, args.role)
        goal = self.target(args.ttl)  # not a lease: the token's life does not bound it, LEASE_MAX_TTL does
        await self._room(agent)
        body: dict[str, object] = {"public_key": args.public_key, "ttl": f"{goal}s", "cert_type": "user"}
        if args.valid_principals:
            body["valid_principals"] = args.valid_principals

        async def go(token: str) -> tuple[LeaseToken, str, str]:
            handle = self._tokens.handle_for(agent, token)
            await self._tokens.ensure(handle, 0)
            cert = await self._vault.ssh.sign(self._ssh, role, body, token=token)
            return handle, cert.signed_key, cert.serial_number

        handle, signed_key, serial = await self._call(identity, "the SSH certificate", go,
                                                     role=("SSH", args.role))
        now = self._clock()
        validity = ssh_validity(signed_key)
        expires, principals = validity if validity is not None else (now + goal, [])
        await self._keep(identity, handle, LeaseRecord(
            kind="ssh", role=args.role, issued_at=now, expires_at=expires, token=handle.accessor,
            details={"serial_number": serial, "valid_principals": principals}))
        return SshCertificateOut(signed_key=signed_key, serial_number=serial, valid_principals=principals,
                                 expiration=int(expires), ttl=max(0, int(expires - now)))

    # -- the agent's leases ---------------------------------------------------------------------------------

    async def lease_list(self, identity: Identity, args: NoArgs) -> LeaseListOut:
        held = await self._records(identity)
        now = self._clock()
        return LeaseListOut(leases=[_lease_out(r, now) for r in sorted(held, key=lambda r: r.issued_at)])

    async def lease_renew(self, identity: Identity, args: LeaseRenewBody) -> LeaseRenewOut:
        agent = identity.subject
        record = await self._own(identity, args.lease_id)
        if not record.renewable:
            raise InvalidRequestError(
                f"The {_KIND[record.kind]} cannot be renewed: obtain a new one before it expires.",
                code="lease_not_renewable")
        wanted = self.target(args.increment)

        async def go(token: str) -> Lease:
            handle = self._tokens.handle_for(agent, token)
            goal = min(wanted, int(await self._tokens.ensure(handle, wanted)))
            return await self._vault.leases.renew(args.lease_id, goal, token=token)

        lease = await self._call(identity, "the renewal", go, lease_id=args.lease_id)
        expires = self._clock() + lease.lease_duration
        await self._recorded(self._book.renewed(agent, args.lease_id, expires))
        return LeaseRenewOut(lease_id=args.lease_id, ttl=lease.lease_duration, expire_time=rfc3339(expires),
                             renewable=lease.renewable)

    async def lease_resolve(self, identity: Identity, args: LeaseResolveBody) -> LeaseResolveOut:
        """The value a lease reference names, for an identity that may see it (``read``; ``vault-mcp-bridge exec``
        calls it). Secret references are read with ``GET /secrets/<path>``."""
        ref = parse_any_reference(args.reference, where="reference")
        if not isinstance(ref, LeaseReference):
            raise InvalidRequestError("This resolves lease references (lease://<lease_id>#password) only; read a "
                                      "secret:// reference's secret with GET /secrets/<path> (kv_read).",
                                      code="invalid_reference")
        held, _record = await self.refs.held(identity, ref)
        log.info("dynamic.reference_resolved", agent=identity.subject, lease_id=ref.lease_id)
        return LeaseResolveOut(reference=str(ref), lease_id=ref.lease_id, field=ref.field, value=held.password)

    async def lease_revoke(self, identity: Identity, args: LeaseIdBody) -> LeaseRevokeOut:
        agent = identity.subject
        await self._own(identity, args.lease_id)

        async def go(token: str) -> None:
            await self._vault.leases.revoke(args.lease_id, token=token)

        await self._call(identity, "the revocation", go)
        await self._recorded(self._book.remove(agent, [args.lease_id]))
        log.info("dynamic.revoked", agent=agent, lease_id=args.lease_id)
        return LeaseRevokeOut(lease_id=args.lease_id, revoked=True)

    # -- plumbing ---------------------------------------------------------------------------------------------

    async def _call(self, identity: Identity, what: str, fn: Callable[[str], Awaitable[T]], *,
                    lease_id: str | None = None, role: tuple[str, str] | None = None) -> T:
        """``fn(token)`` under the agent's lease token (a new one if Vault rejected it); Vault errors become bridge
        errors. With ``lease_id``: Vault saying that lease is gone is 404 ``lease_not_found`` (its record goes);
        with ``role`` (the engine, the agent's name for the role): Vault not knowing the role is 404
        ``role_not_found``."""
        if self._blocked(identity.subject):
            raise _quarantined()
        try:
            return await with_token(self._tokens, identity.subject, identity.auth_method, fn)
        except VaultInvalidRequestError as exc:
            if lease_id is not None and any(gone in exc.detail for gone in _GONE):
                with contextlib.suppress(BridgeError, VaultError):
                    await self._book.remove(identity.subject, [lease_id])
                raise _lease_not_found() from None
            if role is not None and "unknown role" in exc.detail.lower():
                raise NotFoundError(f"You have no {role[0]} role '{role[1]}': ask the operator to provision it "
                                    "(vault-mcp-bridge provision --dynamic).", code="role_not_found",
                                    extra={"role": role[1]}) from None
            raise from_vault_error(exc, what=what) from None
        except VaultError as exc:
            raise from_vault_error(exc, what=what) from None

    async def _records(self, identity: Identity) -> tuple[LeaseRecord, ...]:
        try:
            return (await self._book.read(identity.subject)).records
        except VaultError as exc:
            raise from_vault_error(exc, what="the lease records") from None

    async def _own(self, identity: Identity, lease_id: str) -> LeaseRecord:
        """The caller's record of ``lease_id``; 404 ``lease_not_found`` when it has none (another agent's lease,
        an expired or revoked one, an SSH certificate)."""
        record = next((r for r in await self._records(identity) if r.lease_id == lease_id), None)
        if record is None:
            raise _lease_not_found()
        return record

    async def _room(self, agent: str) -> None:
        if self._blocked(agent):
            raise _quarantined()
        await self._recorded(self._book.check_room(agent))

    async def _recorded(self, change: Awaitable[None]) -> None:
        try:
            await change
        except VaultError as exc:
            raise from_vault_error(exc, what="the lease records") from None

    async def _keep(self, identity: Identity, handle: LeaseToken, record: LeaseRecord) -> None:
        """Record a credential just obtained. When it cannot be recorded, or the agent was quarantined meanwhile,
        the lease is revoked (an SSH certificate cannot be) and the call fails."""
        agent = identity.subject
        try:
            await self._recorded(self._book.add(agent, record))
        except Exception:
            if record.lease_id is not None:
                await self._revoke_quietly(record.lease_id, handle)
            raise
        self.leases.holds(agent)
        log.info("dynamic.obtained", agent=agent, kind=record.kind, role=record.role, lease_id=record.lease_id,
                 ttl=round(record.expires_at - record.issued_at))
        if self._blocked(agent):
            if record.lease_id is not None:
                await self._revoke_quietly(record.lease_id, handle)
                with contextlib.suppress(BridgeError, VaultError):
                    await self._book.remove(agent, [record.lease_id])
            raise _quarantined()

    async def _revoke_quietly(self, lease_id: str, handle: LeaseToken) -> None:
        try:
            await self._vault.leases.revoke(lease_id, token=handle.token)
        except VaultError as exc:
            log.warning("dynamic.revoke_failed", lease_id=lease_id, error=type(exc).__name__)


_KIND = {"database": "database login", "pki": "certificate", "ssh": "SSH certificate"}


def _lease_not_found() -> NotFoundError:
    return lease_not_found()


def _quarantined() -> AgentQuarantinedError:
    return AgentQuarantinedError("This agent is quarantined: an operator must release it.")


def _lease_out(record: LeaseRecord, now: float) -> LeaseOut:
    details = record.details
    principals = details.get("valid_principals")
    return LeaseOut(lease_id=record.lease_id, kind=record.kind, role=record.role,
                    issue_time=rfc3339(record.issued_at), expire_time=rfc3339(record.expires_at),
                    ttl=max(0, int(record.expires_at - now)), renewable=record.renewable,
                    revocable=record.revocable, username=details.get("username") or None,
                    password_reference=details.get("password_reference") or None,
                    serial_number=details.get("serial_number") or None,
                    common_name=details.get("common_name") or None,
                    valid_principals=[str(p) for p in principals] if isinstance(principals, list) else None)
