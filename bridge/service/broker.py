"""Brokered HTTP for the calling agent (``http_request``, ``POST /broker/http``): the request's
``{{secret://…}}`` and ``{{lease://…}}`` placeholders are resolved with the agent's own identity (``use`` or
``read``): a secret with the agent's own token (:meth:`bridge.service.secrets.SecretValues.resolve`), a database
password the bridge holds for the agent from its lease records (:meth:`bridge.service.lease_refs.LeaseRefs.resolve`).
The request is sent by the app's :class:`~bridge.broker.Broker`, which checks every used value's allowed hosts (a
secret's ``bridge.allowed_hosts``, a database role's ``allowed_hosts``) and redacts the answer
(docs/use-dont-reveal.md, docs/dynamic.md)."""

from __future__ import annotations

from bridge.auth.identity import Identity
from bridge.broker import Broker, BrokerHttpAnswer, BrokerHttpBody, ResolvedSecret
from bridge.errors import BridgeError
from bridge.references import AnyReference, LeaseReference
from bridge.service.access import VaultAccess
from bridge.service.lease_refs import LeaseRefs
from bridge.service.secrets import SecretValues


class BrokerService:
    """``leases``: the app's lease references (shared with the dynamic secrets); made over the bridge state of
    ``access``'s settings when not given."""

    def __init__(self, access: VaultAccess, leases: LeaseRefs | None = None) -> None:
        self._broker: Broker | None = access.broker
        self._values = SecretValues(access)
        self._leases = leases if leases is not None else LeaseRefs.from_access(access)

    async def http_request(self, identity: Identity, args: BrokerHttpBody) -> BrokerHttpAnswer:
        if self._broker is None:  # create_app always hands one over; only a hand-built VaultAccess lacks it
            raise BridgeError("Brokered HTTP is not set up in this process.", code="internal_error")

        async def resolve(ref: AnyReference) -> ResolvedSecret:
            if isinstance(ref, LeaseReference):
                return await self._leases.resolve(identity, ref, operation="http_request")
            return await self._values.resolve(identity, ref, operation="http_request")

        return await self._broker.send(args, resolve)
