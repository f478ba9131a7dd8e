"""Database passwords the bridge holds for agents that may not see them, and where they may be brokered to.

A ``use``-only identity asking for a database login (``db_creds``) gets its user name and a **lease reference**
(``lease://<lease_id>#password``, :mod:`bridge.references`) instead of the password; the bridge keeps the password
so that the agent can use it without seeing it (brokered HTTP, ``vault-mcp-bridge exec``). It keeps it here, in the
bridge state in Vault (:mod:`bridge.vault.state`): every replica sees it, a restart keeps it, and only the bridge's
own token reaches it (no agent policy grants ``_bridge/``).

**Documents.** ``lease-values/<agent>/<sha256 of the lease id, hex>`` (the lease id itself holds ``/`` and is
not a document name): ``{"lease_id", "role", "password", "fingerprint"}``. ``role`` is the agent's own role name;
``fingerprint`` is the password's Transit HMAC with ``FINGERPRINT_KEY`` (what a brokered answer shows in place of
the value). Written before ``db_creds`` answers; deleted when the lease's record goes
(:class:`bridge.leases.LeaseBook` tells :meth:`LeaseValues.forget`: a revocation, a quarantine, an idle
revocation, a dead lease token, an expired record dropped at the next write of the agent's lease document), when
all the agent's leases are revoked (:meth:`LeaseValues.forget_all`), and when a reference is resolved after its
lease expired. Whether a document may be used is decided by the agent's lease record, never by the document
alone: a document whose lease is gone is never answered.

``database-roles/<vault role>``: ``{"allowed_hosts": "host[:port],*.example.com,..."}``, written by ``vault-mcp-bridge
provision --dynamic`` from a database role's ``allowed_hosts`` (absent: the role's passwords cannot be brokered).
Same grammar as a secret's ``bridge.allowed_hosts`` (:mod:`bridge.broker.hosts`).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

import structlog

from bridge.vault.state import BridgeState

log = structlog.get_logger("bridge.leases")

VALUES_FOLDER = "lease-values"
ROLES_FOLDER = "database-roles"


def value_name(agent: str, lease_id: str) -> str:
    """The document of ``agent``'s held value for ``lease_id``."""
    return f"{VALUES_FOLDER}/{agent}/{hashlib.sha256(lease_id.encode()).hexdigest()}"


def role_name(vault_role: str) -> str:
    """The settings document of the database role ``vault_role`` (``mcp.alice.ro``)."""
    return f"{ROLES_FOLDER}/{vault_role}"


@dataclass(frozen=True, slots=True)
class HeldValue:
    """A database password held for an agent (see the module docstring)."""

    lease_id: str
    role: str
    password: str = field(repr=False)
    fingerprint: str

    def to_data(self) -> dict[str, Any]:
        return {"lease_id": self.lease_id, "role": self.role, "password": self.password,
                "fingerprint": self.fingerprint}

    @classmethod
    def from_data(cls, data: dict[str, Any]) -> HeldValue | None:
        values = [data.get(key) for key in ("lease_id", "role", "password", "fingerprint")]
        if not all(isinstance(value, str) for value in values):
            return None
        lease_id, role, password, fingerprint = (str(value) for value in values)
        return cls(lease_id, role, password, fingerprint)


class LeaseValues:
    """The held values and the database roles' ``allowed_hosts`` in the bridge state. Vault errors pass through
    (the caller translates them), except in :meth:`forget` and :meth:`forget_all`, which log them: a value whose
    lease is gone is never answered, so a document left behind is garbage, not a leak of access."""

    def __init__(self, state: BridgeState) -> None:
        self._state = state

    async def put(self, agent: str, value: HeldValue) -> None:
        await self._state.write(value_name(agent, value.lease_id), value.to_data())

    async def get(self, agent: str, lease_id: str) -> HeldValue | None:
        doc = await self._state.read(value_name(agent, lease_id))
        held = HeldValue.from_data(doc.data) if doc is not None and doc.data else None
        return held if held is not None and held.lease_id == lease_id else None

    async def delete(self, agent: str, lease_id: str) -> None:
        await self._state.delete(value_name(agent, lease_id))

    async def forget(self, agent: str, lease_ids: list[str]) -> None:
        """Delete the held values of ``lease_ids`` (leases whose records went); failures are logged."""
        for lease_id in lease_ids:
            try:
                await self.delete(agent, lease_id)
            except Exception as exc:  # a revocation must not fail for it
                log.warning("leases.value_delete_failed", agent=agent, lease_id=lease_id, error=type(exc).__name__)
            else:
                log.info("leases.value_deleted", agent=agent, lease_id=lease_id)

    async def forget_all(self, agent: str) -> int:
        """Delete every held value of ``agent`` (all its leases were revoked); how many. Failures are logged."""
        folder = f"{VALUES_FOLDER}/{agent}"
        try:
            names = await self._state.names(folder)
        except Exception as exc:
            log.warning("leases.value_delete_failed", agent=agent, error=type(exc).__name__)
            return 0
        deleted = 0
        for name in names:
            try:
                await self._state.delete(f"{folder}/{name}")
            except Exception as exc:
                log.warning("leases.value_delete_failed", agent=agent, error=type(exc).__name__)
            else:
                deleted += 1
        if deleted:
            log.info("leases.values_deleted", agent=agent, values=deleted)
        return deleted

    async def allowed_hosts(self, vault_role: str) -> str | None:
        """The database role's ``allowed_hosts`` as provisioned (``None``: not brokerable)."""
        doc = await self._state.read(role_name(vault_role))
        hosts = doc.data.get("allowed_hosts") if doc is not None else None
        return hosts if isinstance(hosts, str) and hosts else None


__all__ = ["ROLES_FOLDER", "VALUES_FOLDER", "HeldValue", "LeaseValues", "role_name", "value_name"]
