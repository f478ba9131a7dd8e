"""Brokered HTTP for the calling agent (``http_request``, ``POST /broker/http``): the request's
``{{secret://…}}`` placeholders are resolved with the agent's own identity (``use`` or ``read``, its own token,
:meth:`bridge.service.secrets.SecretValues.resolve`) and the request is sent by the app's
:class:`~bridge.broker.Broker`, which checks every used secret's ``bridge.allowed_hosts`` and redacts the answer
(docs/use-dont-reveal.md)."""

from __future__ import annotations

from bridge.auth.identity import Identity
from bridge.broker import Broker, BrokerHttpAnswer, BrokerHttpBody, ResolvedSecret
from bridge.errors import BridgeError
from bridge.references import Reference
from bridge.service.access import VaultAccess
from bridge.service.secrets import SecretValues


class BrokerService:
    def __init__(self, access: VaultAccess) -> None:
        self._broker: Broker | None = access.broker
        self._values = SecretValues(access)

    async def http_request(self, identity: Identity, args: BrokerHttpBody) -> BrokerHttpAnswer:
        if self._broker is None:  # create_app always hands one over; only a hand-built VaultAccess lacks it
            raise BridgeError("Brokered HTTP is not set up in this process.", code="internal_error")

        async def resolve(ref: Reference) -> ResolvedSecret:
            return await self._values.resolve(identity, ref, operation="http_request")

        return await self._broker.send(args, resolve)
