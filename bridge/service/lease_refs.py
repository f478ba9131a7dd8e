"""Lease references resolved with the caller's identity: ``lease://<lease_id>#password`` names the password of a
database login the bridge made for the caller and holds for it (:mod:`bridge.lease_values`; docs/dynamic.md,
"Database passwords by reference").

A reference resolves only for the agent that holds the lease, only while its lease record is live: the agent's
own lease document (:class:`bridge.leases.LeaseBook`) decides, exactly as for ``lease_renew`` and
``lease_revoke``, so another agent's reference, an expired or revoked login's, and a made-up one are all 404
``lease_not_found``. A held value found for a lease that is no longer live is deleted on the spot. A lease that
is the caller's but whose password the bridge does not hold (handed out in plain text to an identity with
``read``, or a certificate) is 404 ``field_not_found``.

Used by brokered HTTP (:class:`~bridge.service.broker.BrokerService`: the value, its fingerprint and the role's
``allowed_hosts``) and by ``lease_resolve`` (``POST /leases:resolve``, ``read`` scope: what ``vault-mcp-bridge
exec`` calls).
"""

from __future__ import annotations

import structlog

from bridge.auth.identity import Identity
from bridge.broker import ResolvedSecret
from bridge.errors import NotFoundError, from_vault_error
from bridge.lease_values import HeldValue, LeaseValues
from bridge.leases import LeaseBook, LeaseRecord
from bridge.references import LeaseReference
from bridge.service.access import VaultAccess
from bridge.vault.errors import VaultError
from bridge.vault.state import BridgeState

log = structlog.get_logger("bridge.dynamic")


def lease_not_found() -> NotFoundError:
    return NotFoundError("You hold no live lease with that id (it expired, was revoked, or is not yours); "
                         "lease_list (GET /leases) shows yours.", code="lease_not_found")


class LeaseRefs:
    """Resolves the caller's lease references (see the module docstring). ``book`` is the app's lease book."""

    def __init__(self, book: LeaseBook, *, prefix: str, shared: bool) -> None:
        self._book = book
        self.values: LeaseValues = book.values
        self._prefix = prefix
        self._shared = shared

    @classmethod
    def from_access(cls, access: VaultAccess) -> LeaseRefs:
        """Over the bridge state of ``access``'s settings (a service made without the app's lease keeper)."""
        settings = access.settings
        state = BridgeState(access.vault, access.bridge_tokens, mount=settings.kv_mount,
                            prefix=settings.default_prefix)
        return cls(LeaseBook(state, limit=settings.lease_max_per_agent), prefix=settings.default_prefix,
                   shared=settings.dynamic_role_scope == "shared")

    def vault_role(self, identity: Identity, role: str) -> str:
        """The Vault role: ``{prefix}.{agent}.{role}`` (DYNAMIC_ROLE_SCOPE=agent) or ``role`` (shared)."""
        return role if self._shared else f"{self._prefix}.{identity.subject}.{role}"

    async def held(self, identity: Identity, ref: LeaseReference) -> tuple[HeldValue, LeaseRecord]:
        """The held value ``ref`` names and its lease record (see the module docstring for the 404s)."""
        agent = identity.subject
        try:
            record = await self._book.find(agent, ref.lease_id)
            if record is None:
                stale = await self.values.get(agent, ref.lease_id)
                if stale is not None:  # the lease expired (or its record went without it): never answered
                    await self.values.forget(agent, [ref.lease_id])
                raise lease_not_found()
            held = await self.values.get(agent, ref.lease_id) if record.held else None
        except VaultError as exc:
            raise from_vault_error(exc, what="the lease records") from None
        if held is None:
            why = ("its password was handed out in plain text (to an identity with the 'read' scope), the bridge "
                   "holds none" if record.kind == "database" else "lease references name database logins only")
            raise NotFoundError(f"{ref} does not exist: {why}.", code="field_not_found",
                                extra={"reference": str(ref)})
        return held, record

    async def resolve(self, identity: Identity, ref: LeaseReference, *, operation: str) -> ResolvedSecret:
        """The broker's resolver for a lease reference: the password, its fingerprint and the database role's
        ``allowed_hosts`` (``None``: not brokerable)."""
        held, record = await self.held(identity, ref)
        try:
            hosts = await self.values.allowed_hosts(self.vault_role(identity, record.role))
        except VaultError as exc:
            raise from_vault_error(exc, what="the database role's settings") from None
        log.info("dynamic.reference_used", agent=identity.subject, lease_id=ref.lease_id, operation=operation)
        return ResolvedSecret(value=held.password, fingerprint=held.fingerprint, allowed_hosts=hosts)


__all__ = ["LeaseRefs", "lease_not_found"]
