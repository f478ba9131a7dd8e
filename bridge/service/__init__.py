"""The service layer: what each operation does, shared by every transport. It knows nothing of aiohttp.

One class per area (:mod:`bridge.service.kv`, :mod:`bridge.service.transit`, :mod:`bridge.service.identity`,
:mod:`bridge.service.broker`, :mod:`bridge.service.dynamic`; what they share about using secret values:
:mod:`bridge.service.secrets`), made from a :class:`~bridge.service.access.VaultAccess`; each method
``async def method(self, identity, args) -> Out`` runs one operation of :mod:`bridge.operations`. Scope,
rate-limit cost and audit are the executor's (:mod:`bridge.operations.pipeline`); a service method confines the
agent to its namespace, calls Vault with the right token and answers the operation's output model.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from bridge.service.access import VaultAccess
from bridge.service.broker import BrokerService
from bridge.service.dynamic import DynamicService
from bridge.service.identity import IdentityService
from bridge.service.intake import IntakeService
from bridge.service.kv import KvService
from bridge.service.resources import ResourceService
from bridge.service.transit import TransitService

__all__ = ["BrokerService", "DynamicService", "IdentityService", "IntakeService", "KvService", "ResourceService",
           "TransitService", "VaultAccess", "build_services"]


def build_services(classes: Iterable[type[Any]], access: VaultAccess,
                   prebuilt: Mapping[type[Any], Any] | None = None) -> dict[type[Any], Any]:
    """One instance of each service class (those the registry's operations name), made from ``access`` (the
    executor binds each operation's method to its instance); ``prebuilt`` gives instances the app made itself
    (a service sharing state with other parts of the app, such as the dynamic secrets' lease keeper)."""
    made = dict(prebuilt or {})
    return {cls: made[cls] if cls in made else cls(access) for cls in dict.fromkeys(classes)}
